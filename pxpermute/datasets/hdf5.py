"""Lazy, HDF5-backed image stacks that stream instead of loading into memory.

Two array-likes plug straight into :class:`~pxpermute.datasets.IFCDataset`
(``IFCDataset(images=LazyHDF5Array(...), labels=...)``):

* :class:`LazyHDF5Array` -- one HDF5 dataset holding all images, ``N x C x H x W``
  or ``N x H x W x C`` on disk.  Rows are read in contiguous runs (few large
  reads instead of many small ones), the channel axis is moved to position 1 and
  every image is centre-padded or centre-cropped to a target size on the fly.
* :class:`HDF5CellFiles` -- one small HDF5 file per cell (``image`` ``H x W x C``,
  ``mask``, ``label``), the layout the scifAI pipeline writes (synapse formation
  data set, Dryad doi:10.5061/dryad.ht76hdrk7).  Cells of different sizes are
  padded/cropped to one size when read.

Both keep no open file handle across ``pickle`` / ``fork``: the handle is
(re)opened in whichever process reads, so ``torch.utils.data.DataLoader``
workers (fork or spawn) each get their own.  Memory use of a pass over the data
is bounded by the batch being read, not by the file size.

:func:`write_hdf5_dataset` writes such a file block by block (so it can be
larger than memory) and :func:`load_hdf5_dataset` opens one as a lazy
``IFCDataset``, reading channel/class names stored as attributes.

Exact duplicate cells (byte-identical in every channel) are dropped by
:func:`load_hdf5_dataset` by default (``drop_duplicates=True``), as by the
in-memory loaders (:func:`~pxpermute.datasets.cellcycle.load_cellcycle`): a copy
of one cell in a training fold and a test fold inflates the test score.  Finding
them costs one pass over the file (read in blocks, so memory stays bounded); the
data set stays lazy (a row view of the file, :meth:`LazyHDF5Array.take`) and the
count is in ``provenance["duplicates_dropped"]``.  :func:`drop_duplicate_cells`
does the same for any data set, e.g. one built on :class:`HDF5CellFiles`.

Normalization (1st/99th percentile, fitted on training data) is deliberately
*not* done here: :func:`pxpermute.models.fit_percentile_normalization` fits it on the
training split (see :mod:`pxpermute.training`) and it is applied as the
dataset's ``transform``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._dedup import duplicate_mask
from ._download import DataIntegrityError
from .base import IFCDataset

__all__ = [
    "LazyHDF5Array",
    "HDF5CellFiles",
    "pad_or_crop",
    "write_hdf5_dataset",
    "load_hdf5_dataset",
    "open_hdf5",
    "drop_duplicate_cells",
]

_PAD_MODES = ("constant", "mean", "edge")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def open_hdf5(path: str | os.PathLike, mode: str = "r"):
    """Open an HDF5 file, turning h5py's terse errors into ones that name the file.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    DataIntegrityError
        The file exists but is not a readable HDF5 file (truncated, corrupted,
        an HTML error page or a Git LFS pointer saved instead of the data).
    """
    import h5py

    path = Path(path)
    if "r" in mode and not path.exists():
        raise FileNotFoundError(f"HDF5 file {path} does not exist")
    try:
        if mode == "r":  # a 16 MiB chunk cache: whole chunks of typical IFC stacks stay cached between reads
            return h5py.File(path, mode, rdcc_nbytes=16 << 20)
        return h5py.File(path, mode)
    except OSError as err:
        hint = ""
        try:
            with open(path, "rb") as fh:
                head = fh.read(200)
            if head.startswith(b"version https://git-lfs"):
                hint = " It is a Git LFS pointer, not the data: download the real file (media.githubusercontent.com)."
            elif head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
                hint = " It is an HTML page, not the data (the download URL probably returned an error page)."
        except OSError:
            pass
        size = path.stat().st_size if path.exists() else 0
        raise DataIntegrityError(
            f"{path} ({size} bytes) is not a readable HDF5 file ({err}); it is probably truncated or corrupted."
            f"{hint} Delete it and download or copy it again."
        ) from err


def _target_hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        size = tuple(int(s) for s in size)
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size}")
        h, w = size
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {(h, w)}")
    return h, w


def _offsets(n: int, target: int) -> tuple[int, int, int, int]:
    """(crop_start, crop_stop, pad_before, pad_after) to centre ``n`` pixels in ``target``.

    Odd differences put the extra row/column after the content when padding and
    drop it at the end when cropping (same convention as the scifAI pipeline).
    """
    if n >= target:
        start = (n - target) // 2
        return start, start + target, 0, 0
    before = (target - n) // 2
    return 0, n, before, target - n - before


def pad_or_crop(
    images: np.ndarray,
    size: int | Sequence[int],
    *,
    mode: str = "constant",
    value: float = 0.0,
) -> np.ndarray:
    """Centre-pad or centre-crop the last two axes of ``images`` to ``size``.

    Parameters
    ----------
    images : np.ndarray, shape (..., H, W)
        E.g. one image ``C x H x W`` or a batch ``B x C x H x W``.
    size : int or (int, int)
        Target height and width.
    mode : {"constant", "mean", "edge"}
        Padding value: ``value`` (``"constant"``), the mean of each image
        channel after cropping (``"mean"``, what the published synapse pipeline
        used) or the border pixels (``"edge"``).
    value : float
        Fill value for ``mode="constant"``.

    Returns
    -------
    np.ndarray, shape (..., size_h, size_w)
        Same dtype as the input, except ``mode="mean"`` which returns float32.

    Examples
    --------
    >>> import numpy as np
    >>> pad_or_crop(np.ones((2, 3, 5)), 4).shape
    (2, 4, 4)
    """
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {_PAD_MODES}, got {mode!r}")
    hw = _target_hw(size)
    assert hw is not None
    arr = np.asarray(images)
    if arr.ndim < 2:
        raise ValueError(f"images need at least 2 dimensions (H, W), got shape {arr.shape}")
    h, w = arr.shape[-2:]
    hs, he, hb, ha = _offsets(h, hw[0])
    ws, we, wb, wa = _offsets(w, hw[1])
    arr = arr[..., hs:he, ws:we]
    if hb == ha == wb == wa == 0:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(hb, ha), (wb, wa)]
    if mode == "constant":
        return np.pad(arr, pad, mode="constant", constant_values=value)
    if mode == "edge":
        return np.pad(arr, pad, mode="edge")
    arr = arr.astype(np.float32)
    out = np.empty(arr.shape[:-2] + hw, np.float32)
    out[...] = arr.mean(axis=(-2, -1), keepdims=True) if arr.size else 0.0
    out[..., hb : hb + arr.shape[-2], wb : wb + arr.shape[-1]] = arr
    return out


def _normalize_rows(key: Any, n: int) -> tuple[np.ndarray | slice | int, bool]:
    """Row part of an index -> (int | slice(step 1) | int array, squeeze?)."""
    if isinstance(key, (int, np.integer)):
        k = int(key)
        if not -n <= k < n:
            raise IndexError(f"index {k} out of range for {n} images")
        return k % n, True
    if isinstance(key, slice):
        start, stop, step = key.indices(n)
        if step == 1:
            return slice(start, max(start, stop)), False
        return np.arange(start, stop, step, dtype=np.int64), False
    idx = np.asarray(key)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise IndexError(f"boolean index must have shape ({n},), got {idx.shape}")
        return np.flatnonzero(idx), False
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise IndexError(f"row indices must be integers, slices or a boolean mask, got dtype {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"row index out of range for {n} images (got [{idx.min()}, {idx.max()}])")
    return idx % n if idx.size else idx, False


def _read_rows(read_block, idx: np.ndarray, *, max_gap_factor: float = 4.0) -> np.ndarray:
    """Read rows ``idx`` (any order, duplicates allowed) via few contiguous reads.

    ``read_block(start, stop)`` returns rows ``start:stop`` as an array.
    """
    uniq, inverse = np.unique(idx, return_inverse=True)
    span = int(uniq[-1]) - int(uniq[0]) + 1
    if span <= max_gap_factor * uniq.size:
        block = read_block(int(uniq[0]), int(uniq[-1]) + 1)
        data = block[uniq - uniq[0]]
    else:
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        parts = [read_block(int(run[0]), int(run[-1]) + 1) for run in np.split(uniq, breaks)]
        data = np.concatenate(parts, axis=0)
    return data[inverse]


# ---------------------------------------------------------------------------
# one dataset holding all images
# ---------------------------------------------------------------------------
class LazyHDF5Array:
    """Read-on-demand view of an HDF5 image dataset as ``N x C x H x W``.

    Parameters
    ----------
    path : str or path-like
        HDF5 file.
    key : str
        Name of the image dataset inside the file.
    channel_axis : {1, 3, -1}
        Position of the channel axis on disk: 1 for ``N x C x H x W``, 3 (or -1)
        for ``N x H x W x C`` (transposed to ``N x C x H x W`` when read).
    size : int or (int, int), optional
        Centre-pad/crop every image to this height and width when read.
    pad_mode, pad_value
        How to pad (see :func:`pad_or_crop`).
    dtype : numpy dtype, optional
        Cast read blocks to this dtype (default: the on-disk dtype, or float32
        with ``pad_mode="mean"``).
    rows : sequence of int, optional
        Expose only these rows of the file, in this order (a lazy view; default
        all rows).  :meth:`take` builds such views.

    Notes
    -----
    The object holds the file path, not an open handle, when pickled; each
    process opens its own handle on first read, so it is safe with
    ``DataLoader(num_workers>0)``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "cells.h5")
    >>> _ = write_hdf5_dataset(path, np.zeros((10, 2, 30, 30), np.uint16), np.zeros(10, int))
    >>> arr = LazyHDF5Array(path, size=32)
    >>> arr.shape, arr[[3, 1]].shape
    ((10, 2, 32, 32), (2, 2, 32, 32))
    """

    def __init__(
        self,
        path: str | os.PathLike,
        key: str = "images",
        *,
        channel_axis: int = 1,
        size: int | Sequence[int] | None = None,
        pad_mode: str = "constant",
        pad_value: float = 0.0,
        dtype: Any = None,
        rows: Sequence[int] | None = None,
    ) -> None:
        if channel_axis not in (1, 3, -1):
            raise ValueError(f"channel_axis must be 1 (N,C,H,W) or 3/-1 (N,H,W,C), got {channel_axis}")
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {_PAD_MODES}, got {pad_mode!r}")
        self.path = Path(path)
        self.key = key
        self.channel_axis = 1 if channel_axis == 1 else 3
        self.size = _target_hw(size)
        self.pad_mode = pad_mode
        self.pad_value = float(pad_value)
        with open_hdf5(self.path) as fh:
            if key not in fh:
                raise KeyError(f"{self.path} has no dataset {key!r}; it contains {sorted(fh.keys())}")
            ds = fh[key]
            if not hasattr(ds, "shape") or len(ds.shape) != 4:
                raise ValueError(
                    f"{self.path}:{key} must be a 4-D image array (N, C, H, W) or (N, H, W, C); "
                    f"got shape {getattr(ds, 'shape', None)}"
                )
            self.disk_shape = tuple(int(s) for s in ds.shape)
            self.disk_dtype = np.dtype(ds.dtype)
            self.chunks = ds.chunks
        if not np.issubdtype(self.disk_dtype, np.number):
            raise TypeError(f"{self.path}:{key} must hold numbers, got dtype {self.disk_dtype}")
        n = self.disk_shape[0]
        self.rows: np.ndarray | None = None
        if rows is not None:
            sel = np.asarray(rows, dtype=np.int64).reshape(-1)
            if sel.size and (sel.min() < 0 or sel.max() >= n):
                raise IndexError(f"rows must lie in [0, {n}) for {self.path}:{key}, got [{sel.min()}, {sel.max()}]")
            self.rows = sel
            n = int(sel.size)
        if self.channel_axis == 1:
            c, h, w = self.disk_shape[1:]
        else:
            h, w, c = self.disk_shape[1:]
        self._hw_disk = (h, w)
        hw = self.size or (h, w)
        self.shape = (n, c, hw[0], hw[1])
        pads = self.size is not None and (h < hw[0] or w < hw[1])
        if dtype is not None:
            self.dtype = np.dtype(dtype)
        elif pad_mode == "mean" and pads:
            self.dtype = np.dtype(np.float32)
        else:
            self.dtype = self.disk_dtype
        self.ndim = 4
        self._h5 = None
        self._pid: int | None = None

    # -- file handle (one per process) ----------------------------------------
    def _dataset(self):
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = open_hdf5(self.path)
            self._pid = os.getpid()
        return self._h5[self.key]

    def close(self) -> None:
        """Close this process's file handle (it is reopened on the next read)."""
        if self._h5 is not None and self._pid == os.getpid():
            try:
                self._h5.close()
            except Exception:  # pragma: no cover - closing twice is harmless
                pass
        self._h5 = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- array protocol --------------------------------------------------------
    def __len__(self) -> int:
        return self.shape[0]

    def _finish(self, block: np.ndarray) -> np.ndarray:
        if self.channel_axis == 3:
            block = np.transpose(block, (0, 3, 1, 2))
        if self.size is not None and block.shape[-2:] != self.size:
            block = pad_or_crop(block, self.size, mode=self.pad_mode, value=self.pad_value)
        return np.ascontiguousarray(block, dtype=self.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        rows, squeeze = _normalize_rows(key, self.shape[0])
        if self.rows is not None:  # a row view: translate to rows of the file
            rows = self.rows[rows]
            if isinstance(rows, np.integer):
                rows = int(rows)
        ds = self._dataset()
        if isinstance(rows, int):
            block = ds[rows : rows + 1]
        elif isinstance(rows, slice):
            block = ds[rows]
        elif rows.size == 0:
            block = np.zeros((0, *self.disk_shape[1:]), self.disk_dtype)
        else:
            block = _read_rows(lambda a, b: ds[a:b], rows)
        out = self._finish(np.asarray(block))
        if squeeze:
            return out[0][rest] if rest else out[0]
        return out[(slice(None),) + rest] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def take(self, indices: Sequence[int]) -> LazyHDF5Array:
        """A lazy view of rows ``indices`` (of this array, not of the file); nothing is read.

        Examples
        --------
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "cells.h5")
        >>> _ = write_hdf5_dataset(path, np.arange(5)[:, None, None, None] * np.ones((5, 1, 2, 2)), np.zeros(5, int))
        >>> LazyHDF5Array(path).take([4, 0])[:, 0, 0, 0].tolist()
        [4.0, 0.0]
        """
        idx, _ = _normalize_rows(np.asarray(indices, dtype=np.int64).reshape(-1), self.shape[0])
        file_rows = idx if self.rows is None else self.rows[idx]
        out = LazyHDF5Array.__new__(LazyHDF5Array)
        out.__dict__.update(self.__getstate__())
        out.rows = np.asarray(file_rows, dtype=np.int64)
        out.shape = (int(out.rows.size), *self.shape[1:])
        return out

    def __repr__(self) -> str:
        return (
            f"LazyHDF5Array({str(self.path)!r}, key={self.key!r}, shape={self.shape}, dtype={self.dtype}, "
            f"disk_shape={self.disk_shape}" + (f", {self.shape[0]} of its rows" if self.rows is not None else "") + ")"
        )


# ---------------------------------------------------------------------------
# one small file per cell (scifAI layout)
# ---------------------------------------------------------------------------
class HDF5CellFiles:
    """Lazy ``N x C x H x W`` view of one-HDF5-file-per-cell data (scifAI layout).

    Every file holds ``image`` (``H x W x C``, any H and W), usually ``mask``
    and ``label``; images are centre-padded/cropped to ``size`` when read.

    Parameters
    ----------
    files : sequence of path-like
        One file per cell, in data set order.
    size : int or (int, int)
        Output height and width (the synapse data set uses 128).
    key : str
        Image dataset name in each file.
    channel_axis : {-1, 0}
        Channel axis of the stored image: -1 (``H x W x C``, scifAI) or 0.
    n_channels : int, optional
        Expected channel count (default: read from the first file).
    pad_mode, pad_value
        See :func:`pad_or_crop`; ``"mean"`` pads each channel with its mean, as
        the published scifAI data loader does.
    dtype : numpy dtype
        Output dtype (default float32).

    Examples
    --------
    >>> arr = HDF5CellFiles(["cell_1.h5", "cell_2.h5"], size=128)  # doctest: +SKIP
    >>> arr[0].shape  # doctest: +SKIP
    (8, 128, 128)
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        *,
        size: int | Sequence[int],
        key: str = "image",
        channel_axis: int = -1,
        n_channels: int | None = None,
        pad_mode: str = "mean",
        pad_value: float = 0.0,
        dtype: Any = np.float32,
    ) -> None:
        if channel_axis not in (-1, 0, 2):
            raise ValueError(f"channel_axis must be -1 (H,W,C) or 0 (C,H,W), got {channel_axis}")
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {_PAD_MODES}, got {pad_mode!r}")
        self.files = [str(f) for f in files]
        self.key = key
        self.channel_axis = 0 if channel_axis == 0 else -1
        self.size = _target_hw(size)
        if self.size is None:
            raise ValueError("HDF5CellFiles needs a size: cells differ in size and must be padded/cropped to one")
        self.pad_mode = pad_mode
        self.pad_value = float(pad_value)
        self.dtype = np.dtype(dtype)
        if n_channels is None:
            if not self.files:
                raise ValueError("no files given and n_channels unknown")
            n_channels = self._read_one(self.files[0], check_channels=None).shape[0]
        self.n_channels = int(n_channels)
        self.shape = (len(self.files), self.n_channels, self.size[0], self.size[1])
        self.ndim = 4

    def _read_one(self, path: str, check_channels: int | None) -> np.ndarray:
        with open_hdf5(path) as fh:
            if self.key not in fh:
                raise KeyError(f"{path} has no dataset {self.key!r}; it contains {sorted(fh.keys())}")
            img = np.asarray(fh[self.key][()])
        if img.ndim != 3:
            raise ValueError(f"{path}:{self.key} must be a 3-D image (H, W, C); got shape {img.shape}")
        if self.channel_axis == -1:
            img = np.moveaxis(img, -1, 0)
        if check_channels is not None and img.shape[0] != check_channels:
            raise ValueError(f"{path}:{self.key} has {img.shape[0]} channels, expected {check_channels} (shape {img.shape})")
        return img

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        rows, squeeze = _normalize_rows(key, self.shape[0])
        if isinstance(rows, int):
            idx = np.array([rows])
        elif isinstance(rows, slice):
            idx = np.arange(rows.start, rows.stop)
        else:
            idx = rows
        out = np.empty((idx.size, *self.shape[1:]), self.dtype)
        for j, i in enumerate(idx):
            img = self._read_one(self.files[int(i)], check_channels=self.n_channels)
            out[j] = pad_or_crop(img, self.size, mode=self.pad_mode, value=self.pad_value)
        if squeeze:
            return out[0][rest] if rest else out[0]
        return out[(slice(None),) + rest] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def take(self, indices: Sequence[int]) -> HDF5CellFiles:
        """The same reader over the files of cells ``indices`` (lazy; nothing is read)."""
        idx, _ = _normalize_rows(np.asarray(indices, dtype=np.int64).reshape(-1), self.shape[0])
        out = HDF5CellFiles.__new__(HDF5CellFiles)
        out.__dict__.update(self.__dict__)
        out.files = [self.files[int(i)] for i in idx]
        out.shape = (len(out.files), *self.shape[1:])
        return out

    def __repr__(self) -> str:
        return f"HDF5CellFiles({len(self.files)} files, shape={self.shape}, pad_mode={self.pad_mode!r})"


# ---------------------------------------------------------------------------
# writing / reading whole data sets
# ---------------------------------------------------------------------------
def _encode_labels(labels: Any, class_names: Sequence[str] | None) -> tuple[np.ndarray, list[str] | None]:
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    if lab.dtype.kind in "USO":
        strs = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in lab])
        names = list(class_names) if class_names is not None else sorted(set(strs.tolist()))
        lookup = {c: i for i, c in enumerate(names)}
        missing = sorted(set(strs.tolist()) - set(lookup))
        if missing:
            raise ValueError(f"labels {missing} are not among class_names {names}")
        return np.array([lookup[s] for s in strs], np.int64), names
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be integers or strings, got dtype {lab.dtype}")
    return lab.astype(np.int64), (list(class_names) if class_names is not None else None)


def write_hdf5_dataset(
    path: str | os.PathLike,
    images: Any,
    labels: Any,
    *,
    channel_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    stain_free: Sequence[bool] | None = None,
    layout: str = "NCHW",
    images_key: str = "images",
    labels_key: str = "labels",
    chunk: int | None = None,
    compression: str | None = None,
    block_bytes: int = 64 << 20,
    extra: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write images + labels into one HDF5 file that :func:`load_hdf5_dataset` reads lazily.

    Parameters
    ----------
    path : path-like
        Output file.
    images : array-like, shape (N, C, H, W) or (N, H, W, C)
        Anything with ``shape`` and slice indexing (``np.ndarray``, ``np.memmap``,
        ``h5py.Dataset``, :class:`LazyHDF5Array`); copied block by block, so it
        may be larger than memory.
    labels : array-like, shape (N,)
        Integer class indices or class-name strings.
    channel_names, class_names, stain_free : optional
        Stored as file attributes (JSON) and restored by :func:`load_hdf5_dataset`.
    layout : {"NCHW", "NHWC"}
        Axis order of ``images``; stored as given (attribute ``layout``).
    images_key, labels_key : str
        Dataset names.
    chunk : int, optional
        Images per HDF5 chunk (default: about 1 MiB per chunk).  Reads are
        fastest when a batch spans whole chunks.
    compression : {None, "gzip", "lzf"}
        HDF5 compression filter (none by default: fastest random reads).
    block_bytes : int
        Size of the blocks copied from ``images`` (bounds memory use).
    extra : mapping of str -> 1-D array, optional
        Further per-cell datasets (e.g. ``{"fnames": [...]}``).
    attrs : mapping, optional
        Further file attributes (JSON-serialisable values).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = write_hdf5_dataset(os.path.join(tempfile.mkdtemp(), "d.h5"),
    ...                        np.zeros((4, 2, 8, 8), np.float32), ["a", "b", "a", "b"],
    ...                        channel_names=["BF", "DNA"])
    >>> load_hdf5_dataset(p).class_names
    ['a', 'b']
    """
    import h5py

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    layout = layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    shape = tuple(int(s) for s in getattr(images, "shape", ()))
    if len(shape) != 4:
        raise ValueError(f"images must have 4 dimensions ({layout}); got shape {shape}")
    n = shape[0]
    c = shape[1] if layout == "NCHW" else shape[3]
    lab, names = _encode_labels(labels, class_names)
    if lab.shape[0] != n:
        raise ValueError(f"{n} images but {lab.shape[0]} labels")
    if channel_names is not None and len(channel_names) != c:
        raise ValueError(f"{len(channel_names)} channel names for {c} channels")
    if stain_free is not None and len(stain_free) != c:
        raise ValueError(f"stain_free needs one flag per channel ({c}), got {len(stain_free)}")
    dtype = np.dtype(getattr(images, "dtype", np.float32))
    per_image = int(np.prod(shape[1:])) * dtype.itemsize
    if chunk is None:
        chunk = max(1, min(n, (1 << 20) // max(per_image, 1))) if n else 1
    chunk = int(max(1, min(chunk, max(n, 1))))
    block = max(chunk, (block_bytes // max(per_image, 1)) // chunk * chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        ds = fh.create_dataset(
            images_key, shape=shape, dtype=dtype, chunks=(chunk, *shape[1:]) if n else None, compression=compression
        )
        for start in range(0, n, block):
            stop = min(n, start + block)
            part = np.asarray(images[start:stop], dtype=dtype)
            if part.shape != (stop - start, *shape[1:]):
                raise ValueError(f"images[{start}:{stop}] has shape {part.shape}, expected {(stop - start, *shape[1:])}")
            ds[start:stop] = part
        fh.create_dataset(labels_key, data=lab)
        for key, values in (extra or {}).items():
            arr = np.asarray(values)
            if arr.shape[:1] != (n,):
                raise ValueError(f"extra[{key!r}] must have one entry per image ({n}), got shape {arr.shape}")
            if arr.dtype.kind in "UO":
                arr = np.array([str(v) for v in arr], dtype=h5py.string_dtype())
            fh.create_dataset(key, data=arr)
        fh.attrs["layout"] = layout
        fh.attrs["images_key"] = images_key
        fh.attrs["labels_key"] = labels_key
        if channel_names is not None:
            fh.attrs["channel_names"] = json.dumps(list(channel_names))
        if names is not None:
            fh.attrs["class_names"] = json.dumps(list(names))
        if stain_free is not None:
            fh.attrs["stain_free"] = json.dumps([bool(s) for s in stain_free])
        for key, value in (attrs or {}).items():
            fh.attrs[key] = json.dumps(value)
    return path


def _json_attr(attrs: Any, key: str) -> Any:
    if key not in attrs:
        return None
    value = attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.tolist() if isinstance(value, np.ndarray) else value


def guess_channel_axis(shape: Sequence[int], n_channels: int | None = None) -> int:
    """Channel axis (1 or 3) of a 4-D image array, from ``n_channels`` or the shape."""
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(f"expected a 4-D image array, got shape {shape}")
    if n_channels is not None:
        hits = [ax for ax in (1, 3) if shape[ax] == n_channels]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise ValueError(f"no axis of shape {shape} has the expected {n_channels} channels (axis 1 or 3)")
    if shape[1] < min(shape[2], shape[3]) and shape[3] >= shape[1]:
        return 1
    if shape[3] < min(shape[1], shape[2]):
        return 3
    raise ValueError(f"cannot tell the channel axis of shape {shape}; pass channel_axis=1 or 3")


def load_hdf5_dataset(
    path: str | os.PathLike,
    *,
    images_key: str | None = None,
    labels_key: str | None = None,
    channel_axis: int | None = None,
    size: int | Sequence[int] | None = None,
    pad_mode: str = "constant",
    pad_value: float = 0.0,
    channel_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    stain_free: Sequence[bool] | None = None,
    name: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    expected_channels: int | None = None,
    drop_duplicates: bool = True,
) -> IFCDataset:
    """Open an HDF5 image file as a lazy :class:`IFCDataset` (images stay on disk).

    Names not given are taken from the file's attributes (as written by
    :func:`write_hdf5_dataset`), otherwise they default to ``ch0, ...`` /
    ``class0, ...``.  Labels stored as strings are mapped to ``class_names``
    (sorted unique strings by default).

    Parameters
    ----------
    path : path-like
        HDF5 file.
    images_key, labels_key : str, optional
        Dataset names (default: the file's ``images_key``/``labels_key``
        attributes, else ``"images"``/``"labels"``).
    channel_axis : {1, 3}, optional
        Channel axis on disk (default: the ``layout`` attribute, else guessed).
    size : int or (int, int), optional
        Pad/crop to this size when reading.
    pad_mode, pad_value
        See :func:`pad_or_crop`.
    channel_names, class_names, stain_free, name, provenance
        Metadata for the returned dataset.
    expected_channels : int, optional
        Fail with a clear error unless the images have this many channels.
    drop_duplicates : bool, default True
        Drop cells that repeat an earlier cell byte for byte (images as read, all
        channels), keeping the first copy, as the in-memory loaders do.  Costs one
        pass over the file (in blocks); ``False`` skips it.  The number dropped
        goes to ``provenance["duplicates_dropped"]`` (0 when none; ``None`` when
        not checked) and their file rows to ``provenance["duplicate_rows"]``.

    Returns
    -------
    IFCDataset
        With a :class:`LazyHDF5Array` as ``images`` (a row view of the file when
        duplicates were dropped).

    Examples
    --------
    >>> ds = load_hdf5_dataset("wbc.h5", size=64)  # doctest: +SKIP
    """
    with open_hdf5(path) as fh:
        images_key = images_key or _json_attr(fh.attrs, "images_key") or "images"
        labels_key = labels_key or _json_attr(fh.attrs, "labels_key") or "labels"
        for key in (images_key, labels_key):
            if key not in fh:
                raise KeyError(f"{path} has no dataset {key!r}; it contains {sorted(fh.keys())}")
        shape = tuple(fh[images_key].shape)
        if len(shape) != 4:
            raise ValueError(f"{path}:{images_key} must be 4-D (N, C, H, W) or (N, H, W, C); got shape {shape}")
        raw_labels = np.asarray(fh[labels_key][()])
        layout = _json_attr(fh.attrs, "layout")
        file_channels = _json_attr(fh.attrs, "channel_names")
        file_classes = _json_attr(fh.attrs, "class_names")
        file_stain_free = _json_attr(fh.attrs, "stain_free")
    if channel_axis is None:
        if layout in ("NCHW", "NHWC"):
            channel_axis = 1 if layout == "NCHW" else 3
        else:
            channel_axis = guess_channel_axis(shape, expected_channels or (len(channel_names) if channel_names else None))
    n_ch = shape[1] if channel_axis == 1 else shape[3]
    if expected_channels is not None and n_ch != expected_channels:
        raise ValueError(
            f"{path}:{images_key} has {n_ch} channels (shape {shape}, channel axis {channel_axis}), "
            f"expected {expected_channels}"
        )
    if raw_labels.ndim != 1 or raw_labels.shape[0] != shape[0]:
        raise ValueError(f"{path}:{labels_key} must hold one label per image ({shape[0]}), got shape {raw_labels.shape}")
    if (
        class_names is not None
        and file_classes is not None
        and list(class_names) != list(file_classes)
        and np.issubdtype(raw_labels.dtype, np.integer)
    ):
        # integer labels index the file's own class list: translate them by name
        if raw_labels.size and (raw_labels.min() < 0 or raw_labels.max() >= len(file_classes)):
            raise ValueError(f"{path}:{labels_key} holds labels outside the file's {len(file_classes)} class names")
        raw_labels = np.array([file_classes[i] for i in raw_labels], dtype=object)
    if not isinstance(drop_duplicates, bool):
        raise TypeError(f"drop_duplicates must be True or False, got {drop_duplicates!r}")
    labels, names = _encode_labels(raw_labels, class_names if class_names is not None else file_classes)
    images = LazyHDF5Array(path, images_key, channel_axis=channel_axis, size=size, pad_mode=pad_mode, pad_value=pad_value)
    prov = {"path": str(path)}
    prov.update(provenance or {})
    prov["duplicates_dropped"] = None
    if drop_duplicates:
        dup = duplicate_mask(images, block_size=_block_rows(images))
        prov["duplicates_dropped"] = int(dup.sum())
        prov["duplicate_rows"] = np.flatnonzero(dup).tolist()
        if dup.any():
            keep = np.flatnonzero(~dup)
            images = images.take(keep)
            labels = labels[keep]
    return IFCDataset(
        images,
        labels,
        channel_names=channel_names if channel_names is not None else file_channels,
        class_names=names,
        stain_free=stain_free if stain_free is not None else file_stain_free,
        provenance=prov,
        name=name or Path(path).stem,
    )



def _block_rows(images: Any, block_bytes: int = 64 << 20) -> int:
    """Cells per block so that one block of ``images`` is about ``block_bytes``."""
    per_cell = int(np.prod(images.shape[1:])) * np.dtype(getattr(images, "dtype", np.float32)).itemsize
    return max(1, block_bytes // max(per_cell, 1))


def drop_duplicate_cells(dataset: IFCDataset, *, block_bytes: int = 64 << 20) -> IFCDataset:
    """``dataset`` without cells that repeat an earlier cell byte for byte (first copy kept).

    The same rule as the loaders' ``drop_duplicates=True`` (:func:`load_hdf5_dataset`,
    :func:`~pxpermute.datasets.cellcycle.load_cellcycle`).  Lazy images
    (:class:`LazyHDF5Array`, :class:`HDF5CellFiles`) are read once in blocks of about
    ``block_bytes`` and stay lazy (a view of the kept cells); in-memory images are indexed.
    ``provenance["duplicates_dropped"]`` gets the count (added to an earlier count, if any).

    Examples
    --------
    >>> import numpy as np
    >>> from pxpermute.datasets import IFCDataset
    >>> x = np.arange(4 * 2 * 2 * 2, dtype=np.float32).reshape(4, 2, 2, 2); x[3] = x[0]
    >>> ds = drop_duplicate_cells(IFCDataset(x, np.array([0, 1, 0, 0])))
    >>> len(ds), ds.provenance["duplicates_dropped"]
    (3, 1)
    """
    if not isinstance(dataset, IFCDataset):
        raise TypeError(f"dataset must be an IFCDataset, got {type(dataset).__name__}")
    images = dataset.images
    dup = duplicate_mask(images, block_size=_block_rows(images, block_bytes))
    prov = dict(dataset.provenance or {})
    prov["duplicates_dropped"] = int(prov.get("duplicates_dropped") or 0) + int(dup.sum())
    if not dup.any():
        return dataset._replace(images, dataset.labels, provenance=prov)
    keep = np.flatnonzero(~dup)
    if isinstance(images, (LazyHDF5Array, HDF5CellFiles)):
        return dataset._replace(images.take(keep), dataset.labels[keep], provenance=prov)
    if dataset.is_lazy:  # another lazy back end: read the kept cells into memory
        sub = dataset.subset(keep)
        return sub._replace(sub.images, sub.labels, provenance=prov)
    return dataset._replace(np.asarray(images)[keep], dataset.labels[keep], provenance=prov)
