#!/usr/bin/env python
"""Rebuild ``pxpermute/data/cellcycle_sample.npz`` from the original MLCP montages.

The sample holds up to ``--per-class`` cells of every cell-cycle phase of the
Blasi et al. (2016) Jurkat data (all cells of phases that have fewer), chosen
evenly spaced along each phase's montage order (tile ``floor(j * n / m)`` for
``j = 0..m-1``), so the selection needs no random numbers and is the same on
every machine.  Images are stored losslessly as ``uint16`` split into a
low-byte and a high-byte plane (this compresses ~20 % better than plain
``uint16``); the zip entries carry a fixed timestamp, so the same inputs give
a byte-identical file.

Usage::

    python scripts/build_cellcycle_sample.py --data-dir ../shared/data          # use local copies
    python scripts/build_cellcycle_sample.py                                    # download (pooch cache)

The originals are BSD-3-Clause (github.com/minh-doan/MLCP); the licence is
copied next to the sample as ``cellcycle_sample.LICENSE``.
"""
from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np

from pxpermute.datasets.cellcycle import CELLCYCLE_CHANNELS, CELLCYCLE_PHASES, SAMPLE_FILE, load_cellcycle

DEFAULT_PER_CLASS = 140
OUT_DIR = Path(__file__).resolve().parents[1] / "pxpermute" / "data"


def evenly_spaced(n: int, m: int) -> np.ndarray:
    """``m`` (at most ``n``) indices spread evenly over ``range(n)``."""
    m = min(n, m)
    return (np.arange(m, dtype=np.int64) * n) // m


def select(labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the full data set kept in the sample and their tile index within their phase."""
    rows, tiles = [], []
    for c in range(len(CELLCYCLE_PHASES)):
        members = np.flatnonzero(labels == c)  # in tile order (load_cellcycle keeps it)
        pick = evenly_spaced(len(members), per_class)
        rows.append(members[pick])
        tiles.append(pick)
    return np.concatenate(rows), np.concatenate(tiles)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr, order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def build(data_dir: str | None, per_class: int = DEFAULT_PER_CLASS, out_dir: Path = OUT_DIR) -> Path:
    ds = load_cellcycle(data_dir=data_dir, download=True, drop_duplicates=False)  # the file keeps both copies
    rows, tiles = select(ds.labels, per_class)
    images = ds.images[rows]
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 65535:
        raise RuntimeError("images are not uint16 values; did load_cellcycle change?")
    u16 = images.astype(np.uint16)
    planes = np.stack([(u16 & 0xFF).astype(np.uint8), (u16 >> 8).astype(np.uint8)])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SAMPLE_FILE
    _write_npz(
        path,
        {
            "images_bytes": planes,
            "labels": ds.labels[rows].astype(np.uint8),
            "tile_index": tiles.astype(np.uint16),
            "max_per_class": np.asarray(per_class, np.int64),
            "class_names": np.asarray(CELLCYCLE_PHASES),
            "channel_names": np.asarray([c[0] for c in CELLCYCLE_CHANNELS]),
        },
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder holding blasi2016_cellcycle/ (default: pooch cache)")
    ap.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS, help="cells per phase at most")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = ap.parse_args()
    path = build(args.data_dir, args.per_class, args.out_dir)
    labels = np.load(path)["labels"]
    counts = dict(zip(CELLCYCLE_PHASES, np.bincount(labels, minlength=len(CELLCYCLE_PHASES)).tolist()))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {counts}")


if __name__ == "__main__":
    main()
