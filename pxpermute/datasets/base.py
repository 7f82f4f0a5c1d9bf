"""The dataset object every part of pxpermute understands.

An :class:`IFCDataset` is a labelled stack of multichannel single-cell images
(``N x C x H x W``) plus everything a channel-importance study needs to know
about it: channel names, which channels are stain-free (brightfield,
darkfield), class names, where the data came from and, for synthetic data, the
planted ground truth.  It is a ``torch.utils.data.Dataset`` (items are
``(float32 tensor C x H x W, int label)``) and additionally offers
:meth:`IFCDataset.get_batch` for fast block reads, which the importance engine
uses.  ``images`` may be an in-memory ``numpy`` array or any lazily indexed
array-like with ``shape``, ``dtype`` and numpy-style ``__getitem__`` (an
``h5py.Dataset`` for example): nothing is loaded until it is indexed.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["IFCDataset", "GroundTruth", "resolve_channels", "as_dataset"]


@dataclass
class GroundTruth:
    """Planted channel relevance of a synthetic data set.

    Attributes
    ----------
    relevance : np.ndarray, shape (C,)
        Non-negative planted importance per channel (higher = more informative).
        Channels with equal relevance are tied in the expected ranking.
    roles : list of str
        One role per channel, e.g. ``"shape"``, ``"intensity"``, ``"redundant"``,
        ``"noise"``, ``"empty"``.
    notes : str
        Free text describing how the relevance was planted.
    """

    relevance: np.ndarray
    roles: list[str]
    notes: str = ""

    def __post_init__(self) -> None:
        self.relevance = np.asarray(self.relevance, dtype=float)
        if self.relevance.ndim != 1 or len(self.roles) != len(self.relevance):
            raise ValueError("GroundTruth needs one relevance value and one role per channel")

    @property
    def informative(self) -> np.ndarray:
        """Boolean mask of channels with relevance > 0."""
        return self.relevance > 0

    def to_dict(self) -> dict[str, Any]:
        return {"relevance": self.relevance.tolist(), "roles": list(self.roles), "notes": self.notes}


def resolve_channels(channels: Sequence[int | str] | int | str, names: Sequence[str]) -> list[int]:
    """Turn channel names and/or indices into a list of indices, with clear errors."""
    if isinstance(channels, (int, np.integer, str)):
        channels = [channels]
    out: list[int] = []
    for ch in channels:
        if isinstance(ch, str):
            if ch not in names:
                raise ValueError(f"unknown channel name {ch!r}; known channels: {list(names)}")
            out.append(list(names).index(ch))
        elif isinstance(ch, (int, np.integer)):
            if not -len(names) <= int(ch) < len(names):
                raise ValueError(f"channel index {ch} out of range for {len(names)} channels")
            out.append(int(ch) % len(names))
        else:
            raise TypeError(f"channels must be names (str) or indices (int), got {type(ch).__name__}")
    if len(set(out)) != len(out):
        raise ValueError(f"channel list contains duplicates: {channels}")
    return out


class IFCDataset(Dataset):
    """Labelled multichannel IFC images with channel/class metadata.

    Parameters
    ----------
    images : array-like, shape (N, C, H, W)
        In-memory array or lazily indexed array (e.g. ``h5py.Dataset``).
    labels : array-like of int, shape (N,)
        Class indices in ``[0, n_classes)``.
    channel_names, class_names : sequence of str, optional
        Default to ``"ch0", ...`` and ``"class0", ...``.
    stain_free : sequence of bool, optional
        ``True`` for channels that need no stain (brightfield, darkfield).
    ground_truth : GroundTruth, optional
        Planted relevance (synthetic data only).
    provenance : mapping, optional
        ``source``, ``url``, ``doi``, ``citation``, ``licence`` ... of the data.
    name : str, optional
        Short name used in figure titles.
    transform : callable, optional
        Applied to every float32 batch ``(B, C, H, W) -> (B, C, H, W)``
        (e.g. a fitted percentile normalizer).

    Examples
    --------
    >>> import numpy as np
    >>> ds = IFCDataset(np.zeros((4, 2, 8, 8), np.float32), [0, 1, 0, 1], channel_names=["BF", "DNA"])
    >>> ds.n_channels, ds.n_classes, len(ds)
    (2, 2, 4)
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        *,
        channel_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        stain_free: Sequence[bool] | None = None,
        ground_truth: GroundTruth | None = None,
        provenance: Mapping[str, Any] | None = None,
        name: str | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        shape = tuple(getattr(images, "shape", ()))
        if len(shape) != 4:
            raise ValueError(f"images must have shape (N, C, H, W); got shape {shape}")
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
                labels = labels.astype(np.int64)
            else:
                raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if len(labels) != shape[0]:
            raise ValueError(f"{shape[0]} images but {len(labels)} labels")
        n_ch = shape[1]
        self.images = images
        self.labels = labels
        self.channel_names = list(channel_names) if channel_names is not None else [f"ch{i}" for i in range(n_ch)]
        if len(self.channel_names) != n_ch:
            raise ValueError(f"{len(self.channel_names)} channel names for {n_ch} channels")
        if class_names is None:
            k = int(labels.max()) + 1 if labels.size else 0
            class_names = [f"class{i}" for i in range(k)]
        self.class_names = list(class_names)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must lie in [0, {len(self.class_names)}) for {len(self.class_names)} classes; "
                f"found range [{labels.min()}, {labels.max()}]"
            )
        self.stain_free = np.zeros(n_ch, bool) if stain_free is None else np.asarray(stain_free, bool)
        if self.stain_free.shape != (n_ch,):
            raise ValueError(f"stain_free needs one flag per channel ({n_ch}), got {self.stain_free.shape}")
        if ground_truth is not None and len(ground_truth.relevance) != n_ch:
            raise ValueError("ground_truth must have one relevance value per channel")
        self.ground_truth = ground_truth
        self.provenance = dict(provenance or {})
        self.name = name or self.provenance.get("name", "dataset")
        self.transform = transform

    # -- sizes ---------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def is_lazy(self) -> bool:
        return not isinstance(self.images, np.ndarray)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return dict(zip(self.class_names, counts.tolist()))

    # -- reading -------------------------------------------------------------
    def get_batch(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Read images ``indices`` as float32 ``(B, C, H, W)`` plus their labels.

        Lazy back ends are read in sorted order (h5py requires it) and returned
        in the order asked for.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.zeros((0, *self.image_shape), np.float32), np.zeros(0, np.int64)
        if self.is_lazy:
            if idx.size > 1 and np.all(np.diff(idx) == 1):
                x = np.asarray(self.images[int(idx[0]) : int(idx[-1]) + 1])
            else:
                order = np.argsort(idx, kind="stable")
                uniq, inverse = np.unique(idx[order], return_inverse=True)
                block = np.asarray(self.images[uniq])
                x = np.empty((idx.size, *block.shape[1:]), block.dtype)
                x[order] = block[inverse]
        else:
            x = self.images[idx]
        x = np.asarray(x, dtype=np.float32)
        if self.transform is not None:
            x = np.asarray(self.transform(x), dtype=np.float32)
        return x, self.labels[idx]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.get_batch([int(index)])
        return torch.from_numpy(x[0]), int(y[0])

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images (float32, transform applied) and labels in memory."""
        return self.get_batch(np.arange(len(self)))

    # -- views ---------------------------------------------------------------
    def _replace(self, images: Any, labels: np.ndarray, **changes: Any) -> IFCDataset:
        kw = dict(
            channel_names=self.channel_names,
            class_names=self.class_names,
            stain_free=self.stain_free,
            ground_truth=self.ground_truth,
            provenance=self.provenance,
            name=self.name,
            transform=self.transform,
        )
        kw.update(changes)
        return IFCDataset(images, labels, **kw)

    def subset(self, indices: Any) -> IFCDataset:
        """A dataset restricted to ``indices`` (loaded into memory for lazy back ends)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.is_lazy:
            order = np.argsort(idx, kind="stable")
            uniq, inverse = np.unique(idx[order], return_inverse=True)
            block = np.asarray(self.images[uniq]) if uniq.size else np.zeros((0, *self.image_shape), np.float32)
            images = np.empty((idx.size, *self.image_shape), block.dtype)
            images[order] = block[inverse]
        else:
            images = self.images[idx]
        return self._replace(images, self.labels[idx])

    def select_channels(self, channels: Sequence[int | str]) -> IFCDataset:
        """A dataset with only ``channels`` (names or indices), in the order given."""
        ch = resolve_channels(channels, self.channel_names)
        images = self.images[:, ch] if not self.is_lazy else np.asarray(self.images)[:, ch]
        gt = None
        if self.ground_truth is not None:
            gt = GroundTruth(self.ground_truth.relevance[ch], [self.ground_truth.roles[i] for i in ch], self.ground_truth.notes)
        return self._replace(
            images,
            self.labels,
            channel_names=[self.channel_names[i] for i in ch],
            stain_free=self.stain_free[ch],
            ground_truth=gt,
        )

    def with_transform(self, transform: Callable[[np.ndarray], np.ndarray] | None) -> IFCDataset:
        """The same data with another batch transform (e.g. a fitted normalizer)."""
        return self._replace(self.images, self.labels, transform=transform)

    def __repr__(self) -> str:
        from .._text import fill, glue, name_list

        counts = ", ".join(glue(f"{k}: {v}") for k, v in self.class_counts().items())
        lazy = " lazy" if self.is_lazy else ""
        return fill(  # lines of at most 100 characters (the book's width)
            f"IFCDataset({self.name!r}, {len(self)} cells{lazy}, {self.n_channels} channels "
            f"{name_list(self.channel_names)}, image {self.image_shape[1]}x{self.image_shape[2]}, classes {{{counts}}})"
        )


def as_dataset(data: Any, *, what: str = "data") -> IFCDataset:
    """The one coercion of the package's data arguments to an :class:`IFCDataset`.

    Accepts an :class:`IFCDataset` (returned as is) or an ``(images, labels)``
    pair of arrays or tensors (images ``(N, C, H, W)``, labels ``(N,)``; tensors
    are moved to the CPU, array-likes with a ``shape`` such as lazy HDF5 arrays
    are kept as they are).  Anything else raises a ``TypeError`` naming the
    argument (``what``) and the type that arrived.

    Examples
    --------
    >>> import numpy as np
    >>> ds = as_dataset((np.zeros((4, 2, 8, 8), "float32"), np.array([0, 1, 0, 1])))
    >>> ds.n_channels, len(ds)
    (2, 4)
    >>> as_dataset([1, 2, 3], what="dataset")
    Traceback (most recent call last):
    ...
    TypeError: dataset must be an IFCDataset or an (images, labels) pair; got list of length 3
    """
    if isinstance(data, IFCDataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        return IFCDataset(x, np.asarray(y))
    got = type(data).__name__ + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
    raise TypeError(f"{what} must be an IFCDataset or an (images, labels) pair; got {got}")
