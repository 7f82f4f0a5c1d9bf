"""Loaders for the three published IFC data sets analysed in the PXPermute paper.

=================  ==========================================  ========  ====  =========
name               source                                       channels  size  classes
=================  ==========================================  ========  ====  =========
``apoptotic``      Kranich et al. 2020, theislab/dali           2         32    2
``synapse``        Shetab Boushehri et al. 2023, Dryad          8         128   9
``wbc``            Lippeveld et al. 2020                        12        64    8
=================  ==========================================  ========  ====  =========

Every loader returns an :class:`~pxpermute.datasets.IFCDataset` whose images stay
on disk (lazy HDF5 reads, see :mod:`pxpermute.datasets.hdf5`), with channel
names, stain-free flags, class names and provenance (source, URL/DOI, citation,
licence).

Where the files come from
-------------------------
Files live under a cache folder: the ``data_dir`` argument, else the
``PXPERMUTE_DATA_DIR`` environment variable, else ``pooch.os_cache("pxpermute")``.
Put a file there by hand (or pass ``path=``) and nothing is downloaded.

Hashes, honestly: this package was written on a machine without internet
access, so the SHA-256 of the apoptotic-cell file and of the Dryad archive could
not be computed; their registry entries say ``sha256=None``.  For such files
the loader records the SHA-256 the first time it uses the file (in
``<file>.sha256-first-use``, printed in the log) and refuses the file later if
it has changed (trust on first use).  Files with a known hash (the real example
synapse cell from the marrlab/pxpermute repository) are always checked against
it.  A download that is not a readable HDF5 file (truncated, an HTML error
page, a Git LFS pointer) is rejected with a message naming the file, where it
should be and how to get it by hand.

The white-blood-cell images were not found at a stable public URL; the loader
reads a local copy in one of the two layouts described in :func:`load_wbc`.
"""
from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._download import (
    ENV_VAR,
    DataIntegrityError,
    DataUnavailableError,
    RemoteFile,
    cache_dir,
    fetch_file,
    sha256sum,
)
from .base import IFCDataset
from .hdf5 import HDF5CellFiles, LazyHDF5Array, guess_channel_axis, load_hdf5_dataset, open_hdf5

__all__ = [
    "load_apoptotic",
    "load_synapse",
    "load_wbc",
    "load_scifai_cells",
    "fetch_sample_cell",
    "REGISTRY",
    "DATASET_INFO",
    "APOPTOTIC_CHANNELS",
    "APOPTOTIC_CLASSES",
    "SYNAPSE_CHANNELS",
    "SYNAPSE_CLASSES",
    "WBC_CHANNELS",
    "WBC_CLASSES",
]

log = logging.getLogger(__name__)

PXPERMUTE_CITATION = (
    "Shetab Boushehri S, Gruber A, Kazeminia S, Matek C, Spiliopoulou K, Essig K, Marr C. "
    "Optimizing IFC experiments with PXPermute. Cell Reports Methods 4, 100715 (2024). "
    "doi:10.1016/j.crmeth.2024.100715"
)

# -- channels and classes ------------------------------------------------------
APOPTOTIC_CHANNELS = ["BF", "FL"]
APOPTOTIC_STAIN_FREE = [True, False]
#: label 0 = apoptotic, 1 = non-apoptotic (as documented in the theislab/dali notebook that writes X_M1.h5)
APOPTOTIC_CLASSES = ["apoptotic", "non-apoptotic"]

SYNAPSE_CHANNELS = ["BF", "Ab", "CD18", "F-actin", "MHCII", "CD3", "P-CD3zeta", "Live/Dead"]
SYNAPSE_STAIN_FREE = [True, False, False, False, False, False, False, False]
#: the nine labelled classes, in the sorted order the published notebooks index them
SYNAPSE_CLASSES = [
    "B_T_cell_in_one_layer",
    "B_cell",
    "Multiplets",
    "No_cell_cell_interaction",
    "Synapses_with_signaling",
    "Synapses_without_signaling",
    "T_cell",
    "T_cell_with_B_cell_fragments",
    "T_cell_with_signaling",
]

WBC_CHANNELS = ["BF1", "CD15", "SigL8", "CD14", "CD19", "DF", "CD3", "CD45", "BF2", "CD4", "CD56", "CD8"]
WBC_STAIN_FREE = [c in ("BF1", "DF", "BF2") for c in WBC_CHANNELS]
#: the eight labelled classes ("unknown" cells are dropped), sorted as in the published notebooks
WBC_CLASSES = ["CD14+ monocyte", "CD15+ neutrophil", "CD19+ B", "CD4+ T", "CD56+ NK", "CD8+ T", "NKT", "eosinophil"]

# -- registry --------------------------------------------------------------------
REGISTRY: dict[str, RemoteFile] = {
    # Hash unknown: written offline. Recorded and re-checked on first use (see module docstring).
    "apoptotic": RemoteFile(
        relpath="apoptotic_cells/X_M1.h5",
        url="https://github.com/theislab/dali/raw/master/data/X_M1.h5",
        sha256=None,
    ),
    # Whole Dryad data set as one zip archive (Dryad API v2 download); hash unknown, see above.
    "synapse": RemoteFile(
        relpath="synapse_formation/dryad_ht76hdrk7.zip",
        url="https://datadryad.org/api/v2/datasets/doi%3A10.5061%2Fdryad.ht76hdrk7/download",
        sha256=None,
    ),
    # One real synapse-formation cell in the scifAI layout (hash verified on the real file); it is part of the
    # reference outputs of marrlab/pxpermute, so it lives next to them in the data folder.
    "synapse_sample_cell": RemoteFile(
        relpath="pxpermute_reference/sample_image.h5",  # the same file as the reference outputs (REFERENCE_REGISTRY)
        url="https://github.com/marrlab/pxpermute/raw/main/sample_image/sample_image.h5",
        sha256="6d68bb06828e91838a9c5d5c4dccf2017a323fc3f7bd0ba7d1f2b39d74139809",
        size=753968,
    ),
}

DATASET_INFO: dict[str, dict[str, Any]] = {
    "apoptotic": {
        "name": "apoptotic",
        "title": "Apoptotic vs non-apoptotic cells (imaging flow cytometry)",
        "source": "theislab/dali GitHub repository, file data/X_M1.h5",
        "url": REGISTRY["apoptotic"].url,
        "doi": "10.1080/20013078.2020.1792683",
        "citation": (
            "Kranich J, Chlis NK, Rausch L, et al. In vivo identification of apoptotic and extracellular "
            "vesicle-bound live cells using image-based deep learning. J Extracell Vesicles 9(1):1792683 (2020). "
            "doi:10.1080/20013078.2020.1792683"
        ),
        "licence": "see the theislab/dali repository (not verified offline)",
        "layout": "one HDF5 file: X (images), y (0 = apoptotic, 1 = non-apoptotic), fnames",
        "image_size": 32,
        "used_in": PXPERMUTE_CITATION,
    },
    "synapse": {
        "name": "synapse",
        "title": "Immunological synapse formation (imaging flow cytometry)",
        "source": "Dryad",
        "url": "https://datadryad.org/dataset/doi:10.5061/dryad.ht76hdrk7",
        "doi": "10.5061/dryad.ht76hdrk7",
        "citation": (
            "Shetab Boushehri S, Essig K, Chlis NK, et al. Explainable machine learning for profiling the "
            "immunological synapse and functional characterization of therapeutic antibodies. "
            "Nature Communications 14 (2023). doi:10.1038/s41467-023-43429-2"
        ),
        "licence": "CC0 1.0 (Dryad)",
        "layout": "one HDF5 file per cell (image H x W x 8, mask, label) plus a metadata CSV (scifAI)",
        "image_size": 128,
        "used_in": PXPERMUTE_CITATION,
    },
    "wbc": {
        "name": "wbc",
        "title": "Human white blood cells, 9-colour panel (imaging flow cytometry)",
        "source": "Lippeveld et al. 2020 (no stable public download URL found; local copy required)",
        "url": None,
        "doi": "10.1002/cyto.a.23920",
        "citation": (
            "Lippeveld M, Knill C, Ladlow E, et al. Classification of human white blood cells using machine "
            "learning for stain-free imaging flow cytometry. Cytometry A 97(3):308-319 (2020). "
            "doi:10.1002/cyto.a.23920"
        ),
        "licence": "see the publication's data availability statement (not verified offline)",
        "layout": "HDF5 file (images N x 12 x H x W or N x H x W x 12, labels) or scifAI per-cell files",
        "image_size": 64,
        "n_images_published": 98013,
        "used_in": PXPERMUTE_CITATION,
    },
}


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _manual_hint(entry: RemoteFile | None, target: Path, what: str) -> str:
    if entry is None:
        return f"Place {what} at {target} (or pass path=..., data_dir=... or set {ENV_VAR})."
    return (
        f"Download it by hand from {entry.url} and save it as {target} "
        f"(or pass path=..., data_dir=... or set {ENV_VAR})."
    )


def _check_first_use(path: Path) -> str:
    """Trust-on-first-use SHA-256 for files whose hash is not pinned in the registry.

    Records ``sha256 size mtime_ns`` next to the file on first use and raises
    :class:`DataIntegrityError` if the content changes later.  Returns the hash.
    """
    st = path.stat()
    marker = path.with_name(path.name + ".sha256-first-use")
    recorded: list[str] = []
    try:
        recorded = marker.read_text().split()
    except OSError:
        pass
    if len(recorded) == 3 and recorded[1:] == [str(st.st_size), str(st.st_mtime_ns)]:
        return recorded[0]
    digest = sha256sum(path)
    if recorded and recorded[0] != digest:
        raise DataIntegrityError(
            f"{path} changed since it was first used: SHA-256 {digest} (size {st.st_size}), "
            f"first seen as {recorded[0]} (size {recorded[1] if len(recorded) > 1 else '?'}). "
            f"It may be truncated or corrupted; delete it and {marker.name} and get the file again."
        )
    try:
        marker.write_text(f"{digest} {st.st_size} {st.st_mtime_ns}")
        if not recorded:
            log.info("first use of %s: SHA-256 %s recorded in %s", path, digest, marker)
    except OSError:  # read-only location: nothing to remember
        pass
    return digest


def _resolve_file(
    key: str,
    path: str | os.PathLike | None,
    data_dir: str | os.PathLike | None,
    download: bool,
    verify: bool,
) -> Path:
    entry = REGISTRY[key]
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataUnavailableError(f"{p} does not exist. " + _manual_hint(entry, p, "the file"))
        return p
    p = fetch_file(entry, data_dir=data_dir, download=download, verify=verify)
    if entry.sha256 is None and verify:
        _check_first_use(p)
    return p


def _open_checked(path: Path, entry: RemoteFile | None):
    try:
        return open_hdf5(path)
    except DataIntegrityError as err:
        hint = _manual_hint(entry, path, "the file") if entry is not None else ""
        raise DataIntegrityError(f"{err} {hint}".strip()) from err


def _provenance(name: str, path: Path | str) -> dict[str, Any]:
    prov = dict(DATASET_INFO[name])
    prov["path"] = str(path)
    return prov


# ---------------------------------------------------------------------------
# apoptotic cells
# ---------------------------------------------------------------------------
def load_apoptotic(
    path: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    size: int | None = 32,
    in_memory: bool = False,
    verify: bool = True,
    return_metadata: bool = False,
) -> IFCDataset | tuple[IFCDataset, Any]:
    """Apoptotic vs non-apoptotic cells (Kranich et al. 2020): 2 channels (BF, FL), 32x32.

    The file ``X_M1.h5`` from the theislab/dali repository holds ``X`` (all
    images, 2 channels; channel-first or channel-last, detected from the
    shape), ``y`` (0 = apoptotic, 1 = non-apoptotic) and ``fnames``.

    Parameters
    ----------
    path : path-like, optional
        A local ``X_M1.h5``; default: ``<cache>/apoptotic_cells/X_M1.h5``,
        downloaded if missing and ``download=True``.
    data_dir : path-like, optional
        Cache folder (else ``$PXPERMUTE_DATA_DIR``, else the pooch cache).
    download : bool
        Allow downloading a missing file.
    size : int or None
        Centre-crop/pad images to ``size x size`` (32 as published); ``None``
        keeps the stored size.
    in_memory : bool
        Load all images into memory instead of reading lazily.
    verify : bool
        Check (or record, on first use) the file's SHA-256.
    return_metadata : bool
        Also return a ``pandas.DataFrame`` with one row per cell
        (``fname``, ``label``).

    Returns
    -------
    IFCDataset or (IFCDataset, pandas.DataFrame)

    Examples
    --------
    >>> ds = load_apoptotic(data_dir="~/data", download=False)  # doctest: +SKIP
    >>> ds.channel_names, ds.class_names  # doctest: +SKIP
    (['BF', 'FL'], ['apoptotic', 'non-apoptotic'])
    """
    entry = REGISTRY["apoptotic"]
    p = _resolve_file("apoptotic", path, data_dir, download, verify)
    with _open_checked(p, entry) as fh:
        missing = [k for k in ("X", "y") if k not in fh]
        if missing:
            raise ValueError(
                f"{p} is not in the X_M1.h5 layout: datasets {missing} are missing (found {sorted(fh.keys())}); "
                "expected X (images), y (labels) and fnames"
            )
        shape = tuple(fh["X"].shape)
        if len(shape) != 4:
            raise ValueError(f"{p}:X must be 4-D (N, 2, H, W) or (N, H, W, 2); got shape {shape}")
        y = np.asarray(fh["y"][()])
        if y.ndim == 2 and y.shape[1] == 2 and np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1):
            y = y.argmax(axis=1)  # one-hot labels
        y = y.reshape(-1) if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1) else None
        fnames = None
        if "fnames" in fh:
            fnames = [f.decode() if isinstance(f, bytes) else str(f) for f in np.asarray(fh["fnames"][()]).reshape(-1)]
    if y is None or y.shape[0] != shape[0]:
        raise ValueError(f"{p}:y must hold one label per image ({shape[0]}), got {None if y is None else y.shape}")
    channel_axis = guess_channel_axis(shape, n_channels=len(APOPTOTIC_CHANNELS))
    if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() > 1)):
        raise ValueError(f"{p}:y must hold 0 (apoptotic) / 1 (non-apoptotic); got dtype {y.dtype}, values {np.unique(y)[:5]}")
    images: Any = LazyHDF5Array(p, "X", channel_axis=channel_axis, size=size)
    if in_memory:
        images = images[:]
    ds = IFCDataset(
        images,
        y.astype(np.int64),
        channel_names=APOPTOTIC_CHANNELS,
        class_names=APOPTOTIC_CLASSES,
        stain_free=APOPTOTIC_STAIN_FREE,
        provenance=_provenance("apoptotic", p),
        name="apoptotic",
    )
    if not return_metadata:
        return ds
    import pandas as pd

    meta = pd.DataFrame({"fname": fnames if fnames is not None else [None] * len(y), "label": [APOPTOTIC_CLASSES[i] for i in y]})
    return ds, meta


# ---------------------------------------------------------------------------
# scifAI per-cell folders (synapse formation, and the WBC copy used in the paper)
# ---------------------------------------------------------------------------
_COLUMN_ALIASES = {
    "file": ("file", "path", "filename", "file_path"),
    "label": ("label",),
    "set": ("set", "state"),
    "experiment": ("experiment",),
    "donor": ("donor",),
    "condition": ("condition", "antibody_or_condition"),
    "object_number": ("object_number",),
}


def _normalize_metadata(df: Any, source: str) -> Any:
    lower = {c.lower(): c for c in df.columns}
    rename = {}
    for canon, aliases in _COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in lower:
                rename[lower[alias]] = canon
                break
    df = df.rename(columns=rename)
    missing = [c for c in ("file", "label") if c not in df.columns]
    if missing:
        raise ValueError(
            f"metadata table {source} lacks column(s) {missing}; expected the scifAI columns "
            "file, experiment, donor, condition, object_number, set, label"
        )
    df = df.copy()
    df["label"] = [x.decode() if isinstance(x, bytes) else str(x) for x in df["label"]]
    return df


def _resolve_cell_path(raw: str, roots: Sequence[Path]) -> Path | None:
    """Find a per-cell file listed with another machine's absolute path.

    Tries the path itself, then its last 1..5 components under each root
    (``Experiment_x/Donor_y/condition/cell_123.h5`` survives moving the folder).
    """
    p = Path(raw)
    if p.is_absolute() and p.exists():
        return p
    parts = Path(str(raw).replace("\\", "/")).parts
    for root in roots:
        if not p.is_absolute() and (root / p).exists():
            return root / p
        for k in range(min(5, len(parts)), 0, -1):
            cand = root.joinpath(*parts[-k:])
            if cand.exists():
                return cand
    return None


def _read_label(path: Path) -> tuple[str, str]:
    with open_hdf5(path) as fh:
        if "label" not in fh:
            return "-1", "unlabeled"
        lab = fh["label"][()]
    if isinstance(lab, np.ndarray):
        lab = lab.reshape(-1)[0] if lab.size else "-1"
    lab = lab.decode() if isinstance(lab, bytes) else str(lab)
    return lab, "labeled"


def _scan_cells(root: Path) -> Any:
    """Metadata table built by reading every ``*.h5`` under ``root`` (slow for big sets)."""
    import pandas as pd

    rows = []
    for f in sorted(root.rglob("*.h5")):
        rel = f.relative_to(root).parts
        label, state = _read_label(f)
        rows.append(
            {
                "file": str(f),
                "experiment": rel[-4] if len(rel) >= 4 else None,
                "donor": rel[-3] if len(rel) >= 3 else None,
                "condition": rel[-2] if len(rel) >= 2 else None,
                "object_number": f.stem.split("_")[-1],
                "set": state,
                "label": label,
            }
        )
    return pd.DataFrame(rows, columns=["file", "experiment", "donor", "condition", "object_number", "set", "label"])


def _find_metadata_csv(root: Path) -> Path | None:
    import pandas as pd

    candidates = sorted(root.glob("*.csv")) + sorted(root.glob("*.csv.gz"))
    if not candidates:
        candidates = sorted(root.rglob("*.csv")) + sorted(root.rglob("*.csv.gz"))
    for c in candidates:
        try:
            cols = {x.lower() for x in pd.read_csv(c, nrows=0).columns}
        except Exception:
            continue
        if cols & set(_COLUMN_ALIASES["file"]) and "label" in cols:
            return c
    return None


def load_scifai_cells(
    source: str | os.PathLike | Any,
    *,
    class_names: Sequence[str],
    channel_names: Sequence[str] | None = None,
    stain_free: Sequence[bool] | None = None,
    size: int = 128,
    pad_mode: str = "mean",
    sets: Sequence[str] | None = None,
    name: str = "scifai",
    provenance: Mapping[str, Any] | None = None,
    return_metadata: bool = False,
) -> IFCDataset | tuple[IFCDataset, Any]:
    """Lazy dataset over one-HDF5-file-per-cell data as the scifAI pipeline writes it.

    Each cell file holds ``image`` (``H x W x C``), ``mask`` and ``label`` (a
    string).  Files sit in ``<root>/<Experiment>/<Donor>/<condition>/*_<object>.h5``
    and a metadata CSV lists them with the columns ``file, experiment, donor,
    condition, object_number, set, label`` (``scifAI.metadata_generator``);
    capitalised variants (``Path``, ``Label``, ``State``, ...) are accepted too.
    Paths in the CSV written on another machine are re-rooted by matching their
    last components under the CSV's folder.

    Parameters
    ----------
    source : path-like or pandas.DataFrame
        A metadata CSV, a folder (its metadata CSV is used, or every ``*.h5`` is
        scanned if there is none), a single cell file, or a metadata table.
    class_names : sequence of str
        Classes to keep, in label-index order; cells with other labels
        (unlabelled, ``"unknown"``, ...) are dropped.
    channel_names, stain_free : optional
        Channel metadata; their length must match the stored channel count.
    size : int
        Pad/crop every cell to ``size x size``.
    pad_mode : {"mean", "constant", "edge"}
        ``"mean"`` pads each channel with its mean (the published data loader).
    sets : sequence of str, optional
        Keep only rows whose ``set`` column is one of these (e.g. ``["train"]``).
    name, provenance
        Dataset name and provenance.
    return_metadata : bool
        Also return the (filtered) metadata table.

    Examples
    --------
    >>> ds = load_scifai_cells("synapse_formation/metadata.csv", class_names=SYNAPSE_CLASSES)  # doctest: +SKIP
    """
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        meta, roots, where = _normalize_metadata(source, "DataFrame"), [Path.cwd()], "DataFrame"
    else:
        src = Path(source).expanduser()
        if not src.exists():
            raise DataUnavailableError(f"{src} does not exist")
        if src.is_file() and src.suffix == ".h5":
            label, state = _read_label(src)
            meta = pd.DataFrame([{"file": str(src), "set": state, "label": label}])
            roots, where = [src.parent], str(src)
        elif src.is_file():
            meta, roots, where = _normalize_metadata(pd.read_csv(src), str(src)), [src.parent], str(src)
        else:
            csv = _find_metadata_csv(src)
            if csv is not None:
                meta, roots, where = _normalize_metadata(pd.read_csv(csv), str(csv)), [csv.parent, src], str(csv)
            else:
                meta, roots, where = _scan_cells(src), [src], str(src)
                if meta.empty:
                    raise DataUnavailableError(f"{src} holds no metadata CSV and no *.h5 cell files")
    keep = meta["label"].isin(list(class_names))
    if sets is not None:
        if "set" not in meta.columns:
            raise ValueError(f"sets={list(sets)} given but the metadata from {where} has no set/state column")
        keep &= meta["set"].isin(list(sets))
    meta = meta.loc[keep].reset_index(drop=True)
    if meta.empty:
        raise ValueError(f"no cells with labels {list(class_names)} in {where}")
    files, missing = [], []
    for raw in meta["file"]:
        found = _resolve_cell_path(str(raw), roots)
        if found is None:
            missing.append(str(raw))
        files.append(found)
    if missing:
        raise DataUnavailableError(
            f"{len(missing)} of {len(meta)} cell files listed in {where} were not found under "
            f"{[str(r) for r in roots]} (first: {missing[:3]}). Keep the Experiment/Donor/condition folders "
            "next to the metadata CSV."
        )
    meta["file"] = [str(f) for f in files]
    n_ch = len(channel_names) if channel_names is not None else None
    images = HDF5CellFiles(files, size=size, pad_mode=pad_mode, n_channels=None)
    if n_ch is not None and images.n_channels != n_ch:
        raise ValueError(
            f"{files[0]}: image has {images.n_channels} channels, expected {n_ch} ({list(channel_names or [])})"
        )
    lookup = {c: i for i, c in enumerate(class_names)}
    labels = np.array([lookup[x] for x in meta["label"]], np.int64)
    prov = {"path": where}
    prov.update(provenance or {})
    ds = IFCDataset(
        images,
        labels,
        channel_names=channel_names,
        class_names=list(class_names),
        stain_free=stain_free,
        provenance=prov,
        name=name,
    )
    return (ds, meta) if return_metadata else ds


def _extract_zip(archive: Path, dest: Path) -> None:
    """Extract ``archive`` (and zips nested inside it, one level) into ``dest``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DataIntegrityError(f"{archive} is corrupted (first bad member: {bad}); delete it and download again")
            zf.extractall(dest)
    except zipfile.BadZipFile as err:
        raise DataIntegrityError(f"{archive} is not a valid zip archive ({err}); it is probably truncated") from err
    for inner in sorted(dest.rglob("*.zip")):
        if inner.resolve() == archive.resolve():
            continue
        marker = inner.with_suffix(".extracted")
        if not marker.exists():
            _extract_zip(inner, inner.parent)
            marker.write_text("ok")


def fetch_sample_cell(*, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Path of one real synapse-formation cell (marrlab/pxpermute ``sample_image.h5``, SHA-256 pinned).

    Examples
    --------
    >>> p = fetch_sample_cell(download=False)  # doctest: +SKIP
    """
    return fetch_file(REGISTRY["synapse_sample_cell"], data_dir=data_dir, download=download)


def load_synapse(
    path: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    size: int = 128,
    pad_mode: str = "mean",
    sets: Sequence[str] | None = None,
    verify: bool = True,
    return_metadata: bool = False,
) -> IFCDataset | tuple[IFCDataset, Any]:
    """Immunological synapse formation (Shetab Boushehri et al. 2023; Dryad doi:10.5061/dryad.ht76hdrk7).

    8 channels (BF, Ab, CD18, F-actin, MHCII, CD3, P-CD3zeta, Live/Dead; only BF
    is stain-free), 9 classes, every cell padded (or centre-cropped) to
    ``size x size`` (128 as published).  Data are scifAI per-cell HDF5 files
    plus a metadata CSV (see :func:`load_scifai_cells`).

    Parameters
    ----------
    path : path-like, optional
        The metadata CSV, the folder holding the data, or a single cell file.
        Default: ``<cache>/synapse_formation``.
    data_dir : path-like, optional
        Cache folder (else ``$PXPERMUTE_DATA_DIR``, else the pooch cache).
    download : bool
        If the cache folder holds no cell files, download the Dryad archive
        (hash not pinned: recorded on first use) and extract it there.
    size, pad_mode
        Output size and padding (``"mean"``: per-channel mean, as published).
    sets : sequence of str, optional
        Keep only cells of these metadata ``set`` values (e.g. ``["test"]``).
    verify : bool
        Check/record the archive's SHA-256.
    return_metadata : bool
        Also return the metadata table (one row per returned cell).

    Examples
    --------
    >>> ds = load_synapse(data_dir="~/data", download=False)  # doctest: +SKIP
    >>> ds.image_shape  # doctest: +SKIP
    (8, 128, 128)
    """
    entry = REGISTRY["synapse"]
    if path is not None:
        src = Path(path).expanduser()
        if not src.exists():
            raise DataUnavailableError(f"{src} does not exist. " + _manual_hint(entry, src, "the extracted Dryad data"))
    else:
        src = cache_dir(data_dir) / "synapse_formation"
        has_cells = src.is_dir() and (
            any(src.rglob("*.csv")) or any(src.rglob("*.csv.gz")) or any(p.name != "sample_image.h5" for p in src.rglob("*.h5"))
        )
        if not has_cells:
            if not download:
                raise DataUnavailableError(
                    f"no synapse-formation data in {src} and download=False. "
                    f"Get the Dryad data set doi:10.5061/dryad.ht76hdrk7 ({DATASET_INFO['synapse']['url']}), "
                    f"extract it into {src} (cell files in Experiment/Donor/condition folders plus the metadata CSV), "
                    f"or pass path=... / data_dir=... / set {ENV_VAR}."
                )
            archive = fetch_file(entry, data_dir=data_dir, download=True, verify=verify)
            if verify:
                _check_first_use(archive)
            _extract_zip(archive, src)
    return load_scifai_cells(
        src,
        class_names=SYNAPSE_CLASSES,
        channel_names=SYNAPSE_CHANNELS,
        stain_free=SYNAPSE_STAIN_FREE,
        size=size,
        pad_mode=pad_mode,
        sets=sets,
        name="synapse",
        provenance=_provenance("synapse", src),
        return_metadata=return_metadata,
    )


# ---------------------------------------------------------------------------
# white blood cells
# ---------------------------------------------------------------------------
WBC_FILENAME = "wbc.h5"


def load_wbc(
    path: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    size: int = 64,
    pad_mode: str = "constant",
    sets: Sequence[str] | None = None,
    return_metadata: bool = False,
) -> IFCDataset | tuple[IFCDataset, Any]:
    """Human white blood cells (Lippeveld et al. 2020): 12 channels, 8 classes, 64x64.

    Channels: BF1, CD15, SigL8, CD14, CD19, DF, CD3, CD45, BF2, CD4, CD56, CD8
    (BF1, DF and BF2 are stain-free).  The published set has 98,013 images
    (about 19 GB as float32 at 64x64); they are read lazily.

    No stable public download URL for these images was found when this loader
    was written, so it reads a local copy in either layout:

    1. one HDF5 file (default ``<cache>/white_blood_cells/wbc.h5``) with
       ``images`` (``N x 12 x H x W`` or ``N x H x W x 12``) and ``labels``
       (class indices into :data:`WBC_CLASSES`, or class-name strings), as
       written by :func:`~pxpermute.datasets.hdf5.write_hdf5_dataset`;
    2. a folder of scifAI per-cell files plus metadata CSV (how the PXPermute
       authors stored it); cells labelled ``"unknown"`` are dropped.

    Parameters
    ----------
    path : path-like, optional
        The HDF5 file, the per-cell folder or its metadata CSV.  Default:
        ``<cache>/white_blood_cells/wbc.h5``, else that folder.
    data_dir : path-like, optional
        Cache folder (else ``$PXPERMUTE_DATA_DIR``, else the pooch cache).
    download : bool
        Must stay ``False``: there is nothing pinned to download (``True``
        raises :class:`DataUnavailableError` saying so when no local copy exists).
    size, pad_mode
        Centre-pad/crop to ``size x size`` (64 as published).
    sets : sequence of str, optional
        Per-cell layout only: keep these metadata ``set`` values.
    return_metadata : bool
        Per-cell layout only: also return the metadata table.

    Examples
    --------
    >>> ds = load_wbc(data_dir="~/data")  # doctest: +SKIP
    >>> ds.n_channels, ds.n_classes  # doctest: +SKIP
    (12, 8)
    """
    if path is not None:
        src = Path(path).expanduser()
    else:
        folder = cache_dir(data_dir) / "white_blood_cells"
        src = folder / WBC_FILENAME if (folder / WBC_FILENAME).exists() else folder
    if not src.exists() or (src.is_dir() and not any(src.iterdir())):
        why = "download=True was requested but " if download else ""
        raise DataUnavailableError(
            f"{why}no white-blood-cell data at {src}: this data set has no pinned public download. "
            f"Obtain it via Lippeveld et al. 2020 (doi:{DATASET_INFO['wbc']['doi']}) "
            f"and save it as {src if src.suffix else src / WBC_FILENAME} "
            "(HDF5 with 'images' N x 12 x H x W and 'labels'; see pxpermute.datasets.write_hdf5_dataset) "
            f"or as scifAI per-cell files with a metadata CSV in that folder; or pass path=... / set {ENV_VAR}."
        )
    if src.is_file() and src.suffix in (".h5", ".hdf5"):
        with _open_checked(src, None) as fh:
            single_cell = "image" in fh and "images" not in fh
        if not single_cell:
            ds = load_hdf5_dataset(
                src,
                size=size,
                pad_mode=pad_mode,
                channel_names=WBC_CHANNELS,
                stain_free=WBC_STAIN_FREE,
                class_names=WBC_CLASSES,
                expected_channels=len(WBC_CHANNELS),
                name="wbc",
                provenance=_provenance("wbc", src),
            )
            if return_metadata:
                import pandas as pd

                return ds, pd.DataFrame({"label": [WBC_CLASSES[i] for i in ds.labels]})
            return ds
    return load_scifai_cells(
        src,
        class_names=WBC_CLASSES,
        channel_names=WBC_CHANNELS,
        stain_free=WBC_STAIN_FREE,
        size=size,
        pad_mode=pad_mode,
        sets=sets,
        name="wbc",
        provenance=_provenance("wbc", src),
        return_metadata=return_metadata,
    )
