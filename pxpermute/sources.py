"""Data sources: one random-access view over everything the engine accepts.

:func:`as_source` wraps an ``(X, y)`` pair of arrays or tensors, an
:class:`~pxpermute.datasets.IFCDataset` (lazy HDF5 included), a torch
``Dataset`` yielding ``(image, label)`` or a ``DataLoader``; the engine then reads
blocks of samples by index, in order, optionally prefetched by DataLoader workers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .datasets.base import IFCDataset

__all__ = ["as_source", "DataSource", "check_labels"]


class _Source:
    """Uniform random-access view of the data the engine evaluates."""

    def __init__(self, n: int, image_shape: tuple[int, int, int], labels: np.ndarray | None,
                 reader: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 channel_names: list[str] | None, class_names: list[str] | None, name: str | None,
                 num_workers: int = 0) -> None:
        self.n = n
        self.image_shape = image_shape
        self.labels = labels
        self.reader = reader
        self.channel_names = channel_names
        self.class_names = class_names
        self.name = name
        self.num_workers = num_workers

    @property
    def n_channels(self) -> int:
        return self.image_shape[0]

    def read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.reader(idx)
        return np.asarray(x, dtype=np.float32), np.asarray(y)

    def fetch(self, idx: np.ndarray, chans: Sequence[int]) -> torch.Tensor:
        """Channels ``chans`` of samples ``idx`` (any order, repeats allowed) as a float32 tensor."""
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        uniq, inv = np.unique(idx[order], return_inverse=True)
        xs, _ = self.read(uniq)
        out = np.empty((len(idx), len(chans), *self.image_shape[1:]), np.float32)
        out[order] = xs[:, list(chans)][inv]
        return torch.from_numpy(out)

    def blocks(self, indices: np.ndarray, block: int):
        """Yield (idx, x, y) blocks in order, optionally prefetched by DataLoader workers."""
        chunks = [indices[i : i + block] for i in range(0, len(indices), block)]
        if self.num_workers > 0:
            loader = DataLoader(_BlockDataset(self, chunks), batch_size=None, shuffle=False,
                                num_workers=self.num_workers)
            for idx, (x, y) in zip(chunks, loader):
                yield idx, np.asarray(x), np.asarray(y)
        else:
            for idx in chunks:
                x, y = self.read(idx)
                yield idx, x, y


class _BlockDataset(Dataset):
    def __init__(self, source: _Source, chunks: list[np.ndarray]) -> None:
        self.source, self.chunks = source, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        return self.source.read(self.chunks[i])


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def check_labels(y: Any, where: str = "labels") -> np.ndarray:
    """Labels as a 1-D int64 array of class indices, or a clear error (the one label check of every data path).

    Integer dtypes pass; floats pass only when every value is a whole number
    (``1.0``); fractional floats (``0.9``), NaN, strings, booleans-as-objects and
    per-sample vectors (one-hot or probabilities) are rejected with the fix.
    """
    try:
        arr = _to_numpy(y)
    except (ValueError, TypeError) as err:
        raise TypeError(f"{where} must be integer class indices; they could not be read as an array ({err})") from None
    if arr.ndim == 2 and arr.shape[0] and arr.shape[1] > 1 and np.issubdtype(arr.dtype, np.number):
        raise ValueError(
            f"{where} have shape {arr.shape}: one vector of {arr.shape[1]} values per sample (one-hot or "
            "probabilities?); pass integer class indices, e.g. y.argmax(1)"
        )
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{where} must be 1-D (one class index per sample), got shape {arr.shape}")
    if arr.size == 0 or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        whole = finite & (np.mod(np.where(finite, arr, 0), 1) == 0)
        if whole.all():
            return arr.astype(np.int64)
        bad = arr[~whole][:3].tolist()
        raise TypeError(
            f"{where} must be integer class indices, got float values such as {bad}; labels are not "
            "rounded or truncated: pass class indices (0, 1, ...), e.g. (y > 0.5).astype(int) for scores"
        )
    if arr.dtype.kind in "USO":
        raise TypeError(
            f"{where} must be integer class indices, got {arr.dtype.kind == 'O' and 'objects' or 'strings'} such as "
            f"{arr[:3].tolist()}; map class names to indices, e.g. np.unique(y, return_inverse=True)[1], "
            "and pass the names as class_names="
        )
    raise TypeError(f"{where} must be integer class indices, got dtype {arr.dtype}")


def as_source(data: Any, labels: Any = None, *, num_workers: int = 0) -> _Source:
    """Wrap arrays, an (X, y) pair, an IFCDataset, a torch Dataset or a DataLoader."""
    if isinstance(data, DataLoader):
        if num_workers == 0:
            num_workers = data.num_workers
        data = data.dataset  # our own sequential, deterministic batching replaces the loader's
    if isinstance(data, IFCDataset):
        if labels is not None:
            raise ValueError("labels come from the IFCDataset; do not pass labels= as well")
        return _Source(len(data), data.image_shape, data.labels, data.get_batch, data.channel_names,
                       data.class_names, data.name, num_workers)
    if isinstance(data, tuple) and len(data) == 2 and labels is None:
        data, labels = data
    if isinstance(data, Dataset):
        if labels is not None:
            raise ValueError("labels come from the Dataset's items; do not pass labels= as well")
        if isinstance(data, IterableDataset) or not hasattr(data, "__len__"):
            raise TypeError(
                f"{type(data).__name__} is {'an IterableDataset' if isinstance(data, IterableDataset) else 'a Dataset without __len__'}: "
                "the engine needs random access by sample index (permutations are keyed by index, and 'sample' "
                "reads donor images); pass a map-style Dataset with __len__ and __getitem__, arrays (X, y), or "
                "an IFCDataset (lazy HDF5 for data that do not fit in memory)"
            )
        n = len(data)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("the data set is empty (0 samples)")
        first = data[0]
        if not isinstance(first, (tuple, list)) or len(first) < 2:
            raise TypeError("a torch Dataset must yield (image, label) pairs")
        shape = tuple(_to_numpy(first[0]).shape)
        if len(shape) != 3:
            raise ValueError(f"Dataset images must have shape (C, H, W), got {shape}")

        def reader(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            items = [data[int(i)] for i in idx]
            try:
                lab = np.stack([_to_numpy(it[1]) for it in items])
            except ValueError as err:  # labels of different shapes / types
                raise TypeError(f"the Dataset's labels must be integer class indices; items {idx[:3].tolist()}... "
                                f"gave labels that do not stack ({err})") from None
            return (np.stack([_to_numpy(it[0]) for it in items]),
                    check_labels(lab, f"labels from {type(data).__name__}[i][1]"))

        return _Source(n, shape, None, reader, None, None, type(data).__name__, num_workers)
    if labels is None:
        raise ValueError("labels are required when data is an array (pass labels=y or data=(X, y))")
    X = data.detach().cpu() if isinstance(data, torch.Tensor) else data
    if not hasattr(X, "shape") or not hasattr(X, "__getitem__"):
        X = np.asarray(X)
    if len(X.shape) != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got shape {tuple(X.shape)}")
    y = check_labels(labels)
    if len(y) != X.shape[0]:
        raise ValueError(f"mismatched lengths: {X.shape[0]} images but {len(y)} labels")

    def reader(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = X[torch.from_numpy(idx)] if isinstance(X, torch.Tensor) else X[idx]
        return _to_numpy(x), y[idx]

    return _Source(int(X.shape[0]), tuple(int(s) for s in X.shape[1:]), y.astype(np.int64), reader,
                   None, None, None, num_workers)


DataSource = _Source
