"""Jurkat cell-cycle imaging flow cytometry data (Blasi et al. 2016), real images.

The data are the "Experiment_1" montages of the MLCP repository
(github.com/minh-doan/MLCP, BSD-3-Clause): Jurkat cells imaged on an
ImageStream, sorted into seven cell-cycle phases by their DNA stain.  For each
phase and channel there is one 1200 x 1200 ``uint16`` TIFF that holds a 30 x 30
grid of 40 x 40 single-cell tiles, filled column by column (tile ``i`` sits in
grid column ``i // 30`` and grid row ``i % 30``).

Channels (in the order returned):

=====  ====  ==========================  ===========
name   file  content                     stain-free
=====  ====  ==========================  ===========
BF     Ch3   brightfield                 yes
DNA    Ch4   DNA stain (fluorescent)     no
DF     Ch6   darkfield (side scatter)    yes
=====  ====  ==========================  ===========

Padding rule
------------
Montages of the rare phases are not full; the stitching tool filled the
remaining grid places with a *background strip*: a tile whose 40 pixel rows are
all identical (vertical stripes, no cell).  A tile is treated as padding when,
in every loaded channel, each of its rows equals its first row.  No real cell
comes close (the smallest mean absolute difference between neighbouring rows
of a real cell is above 2 grey levels in every channel), padding tiles only
occur after the last cell, and all padding tiles of a montage are byte-identical
copies of each other.  Applied to the published files this keeps

========  =====  =====  =======  ========  =========  ========  =========
phase     G1     S      G2       Prophase  Metaphase  Anaphase  Telophase
cells     900    900    900      606       69         16        28
========  =====  =====  =======  ========  =========  ========  =========

(3,419 cells), which matches the grid by eye (see the test-suite and the
tutorial's montage figure).

Duplicates
----------
Two Anaphase tiles (tiles 12 and 15 of the Anaphase montage, counting from 0;
cells 3387 and 3390 with ``drop_duplicates=False``) are byte-identical in all three
channels: the same cell stored twice.  A copy in a training fold and one in a
test fold would inflate that fold's score, so the loaders drop exact duplicates
by default (``drop_duplicates=True``, 3,418 cells, Anaphase 15; the number
dropped is recorded in ``provenance["duplicates_dropped"]``).  Two more pairs
(one Metaphase, one Telophase) differ only in their first pixel column -- near
duplicates, reported by :func:`pxpermute.diagnostics.check_dataset` and left in
place.  No two different cells are identical in any single channel, so the
same cell is dropped whichever channels are loaded.

References
----------
Blasi T. et al. (2016) Label-free cell cycle analysis for high-throughput
imaging flow cytometry. Nat. Commun. 7, 10256. doi:10.1038/ncomms10256.
Hennig H. et al. (2017) An open-source solution for advanced imaging flow
cytometry data analysis using machine learning. Methods 112, 201-210.
doi:10.1016/j.ymeth.2016.08.018.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from importlib import resources

import numpy as np

from ._dedup import duplicate_mask
from ._download import RemoteFile, fetch_file
from .base import IFCDataset, resolve_channels

__all__ = [
    "load_cellcycle",
    "load_cellcycle_sample",
    "CELLCYCLE_PHASES",
    "CELLCYCLE_CHANNELS",
    "CELLCYCLE_REGISTRY",
    "CELLCYCLE_PROVENANCE",
]

#: Class names (the folder names of the source), in cell-cycle order.
CELLCYCLE_PHASES: tuple[str, ...] = ("G1", "S_phase", "G2", "Prophase", "Metaphase", "Anaphase", "Telophase")
#: Channel names, source file prefix and stain-free flag.
CELLCYCLE_CHANNELS: tuple[tuple[str, str, bool], ...] = (
    ("BF", "Ch3", True),
    ("DNA", "Ch4", False),
    ("DF", "Ch6", True),
)

_COMMIT = "4b4d93606e6b"
_URL_ROOT = "https://github.com/minh-doan/MLCP/raw/master/images/Experiment_1"
_RELPATH_ROOT = "blasi2016_cellcycle/Experiment_1"
GRID = 30
TILE = 40

# montage number of each phase's files and SHA-256 of (Ch3, Ch4, Ch6)
_FILES: dict[str, tuple[str, tuple[str, str, str]]] = {
    "Anaphase": ("CP0001", (
        "7787d8f0cd533398a18756f79a4f69cfb7b21e8ab6bfd814601b85503cf25a98",
        "6b53d036937ce353c4769f2867e8fbdb5a5dd08c323d2beb92c85468a2551a97",
        "231ee02a0b25b854380bc94a38a0d363e75aa54b8ced6cf8d3107c2bd374403e",
    )),
    "G1": ("CP0008", (
        "373d146c82ce923b953c64165c243bfee48562793cb8bfe170cfca96e3d05f26",
        "1d3c32de96b4ebbbeeae98688f1025d81e29b248f30d3b1cc8147fa10b36f519",
        "94054f1682116c6cbf4864b577f5dd8e6d3c35c9760e9623c2b2e7828b2f9e6b",
    )),
    "G2": ("CP0008", (
        "b4040fdbf5049c2fbd37058e5eddb5472257fc6c90045ec4f840c707a934ab22",
        "5fb64b41126ae95028c64b5e0b4b12029fb842d55ddf5042338c2c32515c1be4",
        "5519c06824fdaa6e0bed054ee4b93a7a53b4ccd0761ef6d7da1d60974f97a6f1",
    )),
    "Metaphase": ("CP0001", (
        "f3929672e88443e41053383a18aa87164f472a75c107e8c7309d81a148335aa6",
        "df1f5d922c54ff593434f2ec518ca36b719686538368de23dc2fa505e3488ef4",
        "51acc1daff25785a16605aba9cf48048b714a12dd4e41aba8c461fd81457ee3a",
    )),
    "Prophase": ("CP0001", (
        "502b80326fa58cc11169b447fd633946493dd7c8368263bd67d6b1ecae1445cd",
        "667bd7b1e0af933535d78ee3d908981489ae83ab47c214ee7ac813ecf1778a6e",
        "a7807c2727ce0d6b345ee5a402530e324129c810550274d576b29646dfe00e21",
    )),
    "S_phase": ("CP0009", (
        "0e9b52c6bbf4f9e6e90340112b9eacb56cac63f909cd8f4b97e91911a764d73f",
        "8d8649e779e944f8d40c6e4a0d739952799a410b4242f5f47719d8b91f020178",
        "66374337c59d451fca4f089fb95b4cd3d667c3adafd964c91ed442d9ad45ec42",
    )),
    "Telophase": ("CP0001", (
        "48a09ef683702b48931b0a6c241b85da71ec833e4361c18865ef3ea4ee343787",
        "97fc175c7cb2253a33bedcea6fdfc7d5fbf67272a0bb11b378e3e901c54e0bfc",
        "1b25f04ddae9be6139803fe64261b02665d77cb8e1e9ab9b2d87bf2c80286e50",
    )),
}


def _build_registry() -> dict[tuple[str, str], RemoteFile]:
    reg: dict[tuple[str, str], RemoteFile] = {}
    for phase, (montage, hashes) in _FILES.items():
        for (name, prefix, _), digest in zip(CELLCYCLE_CHANNELS, hashes):
            fname = f"{prefix}_{montage}.tif"
            reg[(phase, name)] = RemoteFile(
                relpath=f"{_RELPATH_ROOT}/{phase}/{fname}",
                url=f"{_URL_ROOT}/{phase}/{fname}",
                sha256=digest,
            )
    return reg


#: ``(phase, channel name) -> RemoteFile`` for the 21 montages.
CELLCYCLE_REGISTRY: dict[tuple[str, str], RemoteFile] = _build_registry()

CELLCYCLE_PROVENANCE: dict[str, object] = {
    "name": "cellcycle",
    "title": "Jurkat cell cycle (Blasi et al. 2016), imaging flow cytometry",
    "source": "github.com/minh-doan/MLCP, images/Experiment_1",
    "url": "https://github.com/minh-doan/MLCP",
    "commit": _COMMIT,
    "licence": "BSD-3-Clause (Copyright (c) 2017, minh-doan)",
    "doi": "10.1038/ncomms10256",
    "citation": (
        "Blasi T. et al. Label-free cell cycle analysis for high-throughput imaging flow cytometry. "
        "Nat. Commun. 7, 10256 (2016); Hennig H. et al. An open-source solution for advanced imaging flow "
        "cytometry data analysis using machine learning. Methods 112, 201-210 (2017)."
    ),
    "padding_rule": "tiles whose 40 rows are all identical in every channel are background padding and dropped",
}


# -- montage handling ---------------------------------------------------------------------------
def _montage_to_tiles(montage: np.ndarray, *, grid: int = GRID, tile: int = TILE) -> np.ndarray:
    """Cut a ``(grid*tile, grid*tile)`` montage into ``(grid*grid, tile, tile)`` tiles, column by column."""
    montage = np.asarray(montage)
    if montage.shape != (grid * tile, grid * tile):
        raise ValueError(
            f"expected a {grid * tile}x{grid * tile} montage ({grid}x{grid} tiles of {tile}x{tile}), "
            f"got shape {montage.shape}"
        )
    # (row, y, col, x) -> (col, row, y, x): tile index = col * grid + row (column-major fill)
    return montage.reshape(grid, tile, grid, tile).transpose(2, 0, 1, 3).reshape(grid * grid, tile, tile)


def _padding_mask(tiles: np.ndarray) -> np.ndarray:
    """``True`` for padding tiles.

    ``tiles`` has shape ``(N, C, H, W)``; a tile is padding when every row of
    every channel equals that channel's first row (a vertical background strip).
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 4:
        raise ValueError(f"tiles must have shape (N, C, H, W), got {tiles.shape}")
    return np.all(tiles == tiles[:, :, :1, :], axis=(1, 2, 3))


def _read_tiff(path: os.PathLike | str) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def load_cellcycle(
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    channels: Sequence[str | int] | None = None,
    drop_empty: bool = True,
    drop_duplicates: bool = True,
) -> IFCDataset:
    """Load the Jurkat cell-cycle data of Blasi et al. (2016): 7 phases, BF/DNA/DF, 40x40.

    The 21 montages (7 phases x 3 channels, ~60 MB) are read from
    ``<data_dir>/blasi2016_cellcycle/Experiment_1/<Phase>/Ch*_CP*.tif``,
    downloaded there from GitHub (minh-doan/MLCP) when missing, and checked
    against pinned SHA-256 hashes.  The cache folder is ``data_dir``, else the
    ``PXPERMUTE_DATA_DIR`` environment variable, else pooch's user cache.

    Parameters
    ----------
    data_dir : path, optional
        Folder holding (or receiving) ``blasi2016_cellcycle/...``.
    download : bool, default True
        Download missing files.  With ``False`` a missing file raises
        :class:`~pxpermute.datasets._download.DataUnavailableError`.
    channels : sequence of str or int, optional
        Subset/order of ``["BF", "DNA", "DF"]`` (names or indices); only those
        files are read.  Default: all three.
    drop_empty : bool, default True
        Drop the background padding tiles (see the module's padding rule).
        With ``False`` all 900 grid places of every phase are returned.
    drop_duplicates : bool, default True
        Drop cells that are byte-identical to an earlier cell in every loaded
        channel (one Anaphase cell in the published files; see the module's
        Duplicates section).  The count goes to ``provenance["duplicates_dropped"]``.
        ``False`` keeps them (e.g. to show them in a diagnostics lesson).

    Returns
    -------
    IFCDataset
        ``float32`` images ``(N, C, 40, 40)`` with the raw detector values,
        labels ordered by phase (G1, S_phase, G2, Prophase, Metaphase,
        Anaphase, Telophase) and, within a phase, by tile index in the
        montage; BF and DF flagged stain-free.

    Raises
    ------
    DataUnavailableError
        A file is missing and cannot be downloaded (offline or ``download=False``).
    DataIntegrityError
        A file's SHA-256 differs from the published one.

    Examples
    --------
    >>> ds = load_cellcycle(data_dir="../shared/data", download=False)  # doctest: +SKIP
    >>> ds.class_counts()["Anaphase"]  # doctest: +SKIP
    16
    """
    if not isinstance(download, bool):
        raise TypeError(f"download must be True or False, got {download!r}")
    if not isinstance(drop_empty, bool):
        raise TypeError(f"drop_empty must be True or False, got {drop_empty!r}")
    if not isinstance(drop_duplicates, bool):
        raise TypeError(f"drop_duplicates must be True or False, got {drop_duplicates!r}")
    all_names = [c[0] for c in CELLCYCLE_CHANNELS]
    ch_idx = list(range(len(all_names))) if channels is None else resolve_channels(channels, all_names)
    if not ch_idx:
        raise ValueError("channels must name at least one of " + str(all_names))
    names = [all_names[i] for i in ch_idx]

    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for label, phase in enumerate(CELLCYCLE_PHASES):
        stack = np.stack(
            [_montage_to_tiles(_read_tiff(fetch_file(CELLCYCLE_REGISTRY[(phase, n)], data_dir=data_dir, download=download)))
             for n in names],
            axis=1,
        )  # (900, C, 40, 40) uint16
        if drop_empty:
            pad = _padding_mask(stack)
            n_cells = int(np.count_nonzero(~pad))
            if pad[:n_cells].any():
                warnings.warn(
                    f"{phase}: background padding tiles found between cells; they are dropped all the same",
                    RuntimeWarning,
                    stacklevel=2,
                )
            stack = stack[~pad]
        images.append(stack)
        labels.append(np.full(len(stack), label, np.int64))

    all_images = np.concatenate(images)
    all_labels = np.concatenate(labels)
    provenance = dict(CELLCYCLE_PROVENANCE)
    if drop_duplicates:
        dup = duplicate_mask(all_images)
        all_images, all_labels = all_images[~dup], all_labels[~dup]
        provenance["duplicates_dropped"] = int(dup.sum())
        provenance["duplicate_rule"] = "cells byte-identical to an earlier cell in every loaded channel are dropped"
    else:
        provenance["duplicates_dropped"] = 0
    return IFCDataset(
        all_images.astype(np.float32),
        all_labels,
        channel_names=names,
        class_names=list(CELLCYCLE_PHASES),
        stain_free=[CELLCYCLE_CHANNELS[i][2] for i in ch_idx],
        provenance=provenance,
        name="cellcycle",
    )


# -- embedded sample ------------------------------------------------------------------------------
SAMPLE_FILE = "cellcycle_sample.npz"


def _decode_sample(npz: np.lib.npyio.NpzFile) -> tuple[np.ndarray, np.ndarray]:
    """Undo the byte-plane split used to store the sample (lossless uint16)."""
    planes = npz["images_bytes"]  # (2, N, C, H, W) uint8: low bytes, high bytes
    images = planes[0].astype(np.uint16) | (planes[1].astype(np.uint16) << 8)
    return images, npz["labels"].astype(np.int64)


def load_cellcycle_sample(
    *, channels: Sequence[str | int] | None = None, drop_duplicates: bool = True
) -> IFCDataset:
    """A balanced real subset of the Jurkat cell-cycle data, shipped inside the package.

    Up to 140 evenly spaced cells per phase (all cells of the rare mitotic
    phases: 69 Metaphase, 16 Anaphase, 28 Telophase), exactly the tiles of
    :func:`load_cellcycle`, stored losslessly (~2.8 MB).  Works offline.  The
    file is rebuilt by ``scripts/build_cellcycle_sample.py``; its licence
    (BSD-3-Clause, MLCP) sits next to it in ``pxpermute/data``.

    Parameters
    ----------
    channels : sequence of str or int, optional
        Subset/order of ``["BF", "DNA", "DF"]``; default all three.
    drop_duplicates : bool, default True
        Drop exact duplicate cells, as :func:`load_cellcycle` does (the sample
        holds both copies of the duplicated Anaphase cell); the count goes to
        ``provenance["duplicates_dropped"]``.

    Returns
    -------
    IFCDataset
        ``float32`` images ``(N, C, 40, 40)``, same label order as
        :func:`load_cellcycle`.

    Examples
    --------
    >>> ds = load_cellcycle_sample()
    >>> ds.channel_names, ds.n_classes
    (['BF', 'DNA', 'DF'], 7)
    """
    all_names = [c[0] for c in CELLCYCLE_CHANNELS]
    ch_idx = list(range(len(all_names))) if channels is None else resolve_channels(channels, all_names)
    ref = resources.files("pxpermute").joinpath("data", SAMPLE_FILE)
    with resources.as_file(ref) as path:
        if not path.exists():
            raise FileNotFoundError(
                f"the embedded sample {path} is missing from this installation; reinstall pxpermute or rebuild it "
                "with scripts/build_cellcycle_sample.py"
            )
        with np.load(path, allow_pickle=False) as npz:
            images, labels = _decode_sample(npz)
            per_class = int(npz["max_per_class"])
            stored = (list(npz["class_names"]), list(npz["channel_names"]))
    if stored != (list(CELLCYCLE_PHASES), all_names):
        raise ValueError(f"embedded sample has classes/channels {stored}, expected {(list(CELLCYCLE_PHASES), all_names)}")
    if not isinstance(drop_duplicates, bool):
        raise TypeError(f"drop_duplicates must be True or False, got {drop_duplicates!r}")
    provenance = dict(CELLCYCLE_PROVENANCE)
    provenance.update(
        name="cellcycle_sample",
        subset=f"up to {per_class} evenly spaced cells per phase (scripts/build_cellcycle_sample.py)",
    )
    images = images[:, ch_idx]
    dup = duplicate_mask(images) if drop_duplicates else np.zeros(len(images), bool)
    provenance["duplicates_dropped"] = int(dup.sum())
    images, labels = images[~dup], labels[~dup]
    return IFCDataset(
        images.astype(np.float32),
        labels,
        channel_names=[all_names[i] for i in ch_idx],
        class_names=list(CELLCYCLE_PHASES),
        stain_free=[CELLCYCLE_CHANNELS[i][2] for i in ch_idx],
        provenance=provenance,
        name="cellcycle_sample",
    )


def reference_results() -> dict:
    """The reference results on the full cell-cycle data, as ``benchmarks/realdata_cellcycle.py`` stored them.

    A dict (schema ``pxpermute-cellcycle-reference/1``) read from the package data: the recipe, the
    cross-validated scores per fold and class (``performance``, e.g. ``"small_cnn/all"`` and
    ``"small_cnn/stain_free"``), the paired test of all channels vs stain-free (``stain_free_test``),
    remove-and-retrain runs (``remove_and_retrain``) and ``stages`` saying which stages ran and which
    did not (with the reason).  Nothing here is recomputed; the tutorials show these numbers next to
    what they compute themselves.

    Examples
    --------
    >>> ref = reference_results()
    >>> ref["schema"], len(ref["performance"]["small_cnn/all"]["f1_macro"])
    ('pxpermute-cellcycle-reference/1', 5)
    """
    import json

    text = resources.files("pxpermute").joinpath("data", "cellcycle_reference.json").read_text()
    doc = json.loads(text)
    if doc.get("schema") != "pxpermute-cellcycle-reference/1":
        raise ValueError(f"cellcycle_reference.json has schema {doc.get('schema')!r}, "
                         "expected 'pxpermute-cellcycle-reference/1'")
    return doc
