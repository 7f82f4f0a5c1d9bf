"""Training classifiers the way the PXPermute paper did, and cross-validating them.

The published recipe (Shetab Boushehri et al., Cell Reports Methods 2024):
torchvision ResNet18 adapted to ``C`` channels / ``K`` classes, skorch
``NeuralNetClassifier``, 1st/99th-percentile min-max normalization fitted on the
training data, random horizontal/vertical flips and Gaussian noise (std 0.01),
cross-entropy, AdamW (lr 1e-3), batch 128, ``ReduceLROnPlateau`` (factor 0.5,
patience 5) and early stopping on validation F1-macro, minority-class
oversampling, stratified 5-fold cross-validation with a 20 % validation split and
seed 42.

* :func:`make_classifier` -- the unfitted skorch net (:class:`IFCClassifier`).
* :func:`train_classifier` -- split off a validation set, fit the normalization on
  the training part, put it into the network as its first layer and train.  The
  fitted ``net.module_`` (and ``net.predict``) therefore takes *raw* images.
* :func:`cross_validate` -- stratified k-fold training/evaluation returning a
  :class:`CVResult`; the retraining routine used by remove-and-retrain, panel
  comparison and leave-one-channel-out.

Everything a quick tutorial needs (few epochs, a small network, a channel
subset) is a parameter of these functions; there is no second code path.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import EarlyStopping, EpochScoring, LRScheduler
from skorch.dataset import ValidSplit
from skorch.helper import predefined_split
from skorch.utils import to_tensor
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    WeightedRandomSampler,
)

from ._progress import progress_bar
from ._protocol import SavableResult, ragged_from_bundle, ragged_to_bundle
from ._text import fill, glue, name_list
from .datasets.base import IFCDataset, as_dataset, resolve_channels
from .models import MODEL_NAMES, PercentileNormalization, build_model, fit_percentile_normalization

__all__ = [
    "IFCClassifier",
    "build_network",
    "make_classifier",
    "train_classifier",
    "cross_validate",
    "cross_validate_many",
    "run_trainings",
    "CVResult",
]

# ---------------------------------------------------------------------------
# network = normalization + model
# ---------------------------------------------------------------------------
def build_network(
    n_channels: int,
    n_classes: int,
    *,
    model: Any = "resnet18",
    model_kwargs: dict[str, Any] | None = None,
    normalizer: PercentileNormalization | None = None,
) -> nn.Sequential:
    """``nn.Sequential(normalize=<normalizer or Identity>, model=<network>)``.

    Parameters
    ----------
    n_channels, n_classes : int
        Input channels and classes.
    model : str, callable or nn.Module, default "resnet18"
        A name known to :func:`pxpermute.models.build_model` (``"resnet18"``,
        ``"small_cnn"``), a callable ``model(n_channels, n_classes, **model_kwargs)``
        returning an ``nn.Module`` that maps ``(B, C, H, W)`` to ``(B, K)`` logits
        (a module class works), or an ``nn.Module`` instance (deep-copied, so every
        call starts from the same weights).
    model_kwargs : dict, optional
        Extra keyword arguments for the model builder (e.g. ``{"width": 16}``).
    normalizer : PercentileNormalization, optional
        First layer (deep-copied); ``None`` -> ``nn.Identity``.

    Examples
    --------
    >>> net = build_network(3, 2, model="small_cnn", model_kwargs={"width": 8})
    >>> [name for name, _ in net.named_children()]
    ['normalize', 'model']
    """
    kwargs = dict(model_kwargs or {})
    if isinstance(model, str):
        body = build_model(model, n_channels, n_classes, **kwargs)
    elif isinstance(model, nn.Module):
        if kwargs:
            raise ValueError("model_kwargs cannot be used with an nn.Module instance as model")
        body = copy.deepcopy(model)
    elif callable(model):
        body = model(n_channels, n_classes, **kwargs)
        if not isinstance(body, nn.Module):
            raise TypeError(f"the model builder must return an nn.Module, got {type(body).__name__}")
    else:
        raise TypeError(
            "model must be a model name ('resnet18', 'small_cnn'), a callable "
            f"(n_channels, n_classes, **kw) -> nn.Module, or an nn.Module; got {type(model).__name__}"
        )
    if normalizer is None:
        norm: nn.Module = nn.Identity()
    else:
        if not isinstance(normalizer, PercentileNormalization):
            raise TypeError(f"normalizer must be a PercentileNormalization, got {type(normalizer).__name__}")
        if normalizer.n_channels != n_channels:
            raise ValueError(
                f"normalizer was fitted for {normalizer.n_channels} channels but the network takes {n_channels}"
            )
        norm = copy.deepcopy(normalizer)
    return nn.Sequential(OrderedDict(normalize=norm, model=body))


# ---------------------------------------------------------------------------
# data access
# ---------------------------------------------------------------------------
class _BatchView(Dataset):
    """Rows ``indices`` and channels ``channels`` of an :class:`IFCDataset`.

    Indexing with a list/array of positions reads the whole block at once (one
    read for lazy back ends) and returns ``(float32 tensor (B, C', H, W), int64
    tensor (B,))``; with an int it returns one item.  Batches are checked for
    NaN/inf.
    """

    def __init__(self, dataset: IFCDataset, indices: Any = None, channels: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        n = len(dataset)
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        self.channels = None if channels is None else [int(c) for c in channels]
        if self.channels is not None and self.channels == list(range(dataset.n_channels)):
            self.channels = None
        self.labels = dataset.labels[self.indices]

    @property
    def n_channels(self) -> int:
        return self.dataset.n_channels if self.channels is None else len(self.channels)

    def __len__(self) -> int:
        return int(self.indices.size)

    def read(self, positions: Any) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.dataset.get_batch(self.indices[np.asarray(positions, dtype=np.int64)])
        if self.channels is not None:
            x = x[:, self.channels]
        if not np.isfinite(x).all():
            raise ValueError("images contain NaN or inf values; clean or drop these cells before training")
        return np.ascontiguousarray(x, dtype=np.float32), y

    def __getitem__(self, item: Any):
        if isinstance(item, (int, np.integer)):
            x, y = self.read([int(item)])
            return torch.from_numpy(x[0]), int(y[0])
        x, y = self.read(item)
        return torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))


def _labels_of(dataset: Any) -> np.ndarray | None:
    """Class labels of a dataset handed to the iterator, if they can be known cheaply."""
    if isinstance(dataset, _BatchView):
        return dataset.labels
    if isinstance(dataset, Subset):
        inner = _labels_of(dataset.dataset)
        return None if inner is None else inner[np.asarray(dataset.indices)]
    y = getattr(dataset, "y", None)
    if y is not None:
        return np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).reshape(-1)
    labels = getattr(dataset, "labels", None)
    return None if labels is None else np.asarray(labels).reshape(-1)


# ---------------------------------------------------------------------------
# the skorch net
# ---------------------------------------------------------------------------
class IFCClassifier(NeuralNetClassifier):
    """skorch ``NeuralNetClassifier`` with the PXPermute training recipe built in.

    Differences from the plain skorch class (all parameters of it still apply):

    * ``augment``: during training only, random horizontal and vertical flips (each
      with probability 0.5, per image) and additive Gaussian noise with standard
      deviation ``noise_std`` are applied to each batch *after* the network's
      first layer (the normalization), i.e. on the ``[0, 1]`` scale.  The module
      must be ``nn.Sequential(normalize, model)`` (see :func:`build_network`).
    * ``oversample``: training batches are drawn with replacement with
      probability proportional to ``1 / class count`` (minority-class
      oversampling), one epoch = as many draws as training samples.
    * ``random_state``: :meth:`fit` seeds torch (weights, sampling, augmentation)
      inside :func:`torch.random.fork_rng`, so the global RNG state of the caller
      is left untouched and the same seed gives the same network on the same
      hardware.
    * ``X`` may be an :class:`~pxpermute.IFCDataset` (lazy ones included, read one
      batch at a time) or an ``(N, C, H, W)`` array/tensor of raw images.

    Built by :func:`make_classifier`; see there for an example.
    """

    def __init__(
        self,
        module: Any,
        *args: Any,
        augment: bool = True,
        noise_std: float = 0.01,
        oversample: bool = True,
        random_state: int | None = 42,
        **kwargs: Any,
    ) -> None:
        super().__init__(module, *args, **kwargs)
        self.augment = augment
        self.noise_std = noise_std
        self.oversample = oversample
        self.random_state = random_state

    # -- randomness ------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        gen = getattr(self, "generator_", None)
        if gen is None:
            gen = torch.Generator()
            if self.random_state is None:
                gen.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
            else:
                gen.manual_seed(int(self.random_state) + 1)
            self.generator_ = gen
        return gen

    @contextmanager
    def _seeded(self) -> Iterator[None]:
        self.generator_ = None
        try:
            if self.random_state is None:  # fresh randomness from torch's global RNG
                yield
                return
            devices: list[int] = []
            if torch.cuda.is_available() and str(self.device).startswith("cuda"):
                devices = [torch.device(self.device).index or torch.cuda.current_device()]
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(int(self.random_state))
                yield
        finally:
            self.generator_ = None  # a Generator cannot be pickled/cloned

    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> IFCClassifier:
        """Fit on ``X`` (IFCDataset, array of raw images) and ``y`` (labels, if ``X`` is an array)."""
        with self._seeded():
            return super().fit(X, y, **fit_params)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        split = state.get("train_split")
        if isinstance(getattr(split, "keywords", None), dict) and isinstance(split.keywords.get("valid_ds"), _BatchView):
            # the validation view references the whole data set (maybe an open HDF5 file):
            # a pickled net keeps the weights, not the data
            state["train_split"] = None
        return state

    # -- data --------------------------------------------------------------------
    def _expected_channels(self) -> int | None:
        n = getattr(self, "module__n_channels", None)
        return None if n is None else int(n)

    def get_dataset(self, X: Any, y: Any = None) -> Any:
        if isinstance(X, IFCDataset):
            if y is not None:
                raise ValueError("pass either an IFCDataset (labels inside) or X and y, not an IFCDataset and y")
            X = _BatchView(X)
        elif isinstance(X, (np.ndarray, torch.Tensor)):
            if X.ndim != 4:
                raise ValueError(f"images must have shape (N, C, H, W); got shape {tuple(X.shape)}")
            if isinstance(X, torch.Tensor):
                X = X.detach().cpu().numpy()
            X = np.asarray(X, dtype=np.float32)
            if not np.isfinite(X).all():
                raise ValueError("images contain NaN or inf values; clean or drop these cells first")
        expected = self._expected_channels()
        n_ch = X.n_channels if isinstance(X, _BatchView) else (X.shape[1] if isinstance(X, np.ndarray) else None)
        if expected is not None and n_ch is not None and n_ch != expected:
            trained = getattr(self, "channel_names_", None)
            hint = f" (trained on channels {trained}; use dataset.select_channels({trained}))" if trained else ""
            raise ValueError(f"the network takes {expected} channels but the images have {n_ch}{hint}")
        return super().get_dataset(X, y)

    def get_iterator(self, dataset: Any, training: bool = False) -> DataLoader:
        if training:
            kwargs = self.get_params_for("iterator_train")
        else:
            kwargs = self.get_params_for("iterator_valid")
        batch_size = int(kwargs.pop("batch_size", self.batch_size))
        kwargs.pop("shuffle", None)
        kwargs.pop("sampler", None)
        kwargs.pop("batch_sampler", None)
        n = len(dataset)
        if batch_size == -1:
            batch_size = max(n, 1)
        if training:
            gen = self._generator()
            # never leave a batch of one image (BatchNorm cannot train on it)
            n_draw = n - 1 if (n > 1 and n % batch_size == 1) else n
            labels = _labels_of(dataset) if self.oversample else None
            if labels is not None and labels.size == n:
                counts = np.bincount(labels)
                weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
                sampler: Any = WeightedRandomSampler(weights, num_samples=n_draw, replacement=True, generator=gen)
            else:
                sampler = RandomSampler(dataset, num_samples=n_draw, generator=gen)
        else:
            sampler = SequentialSampler(dataset)
        if isinstance(dataset, _BatchView):
            return DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=False), **kwargs)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)

    # -- forward -------------------------------------------------------------------
    def _augment_batch(self, x: torch.Tensor) -> torch.Tensor:
        gen = self._generator()
        b = x.shape[0]
        flip_h = (torch.rand(b, generator=gen) < 0.5).view(b, 1, 1, 1).to(x.device)
        flip_v = (torch.rand(b, generator=gen) < 0.5).view(b, 1, 1, 1).to(x.device)
        x = torch.where(flip_h, x.flip(-1), x)
        x = torch.where(flip_v, x.flip(-2), x)
        if self.noise_std:
            x = x + float(self.noise_std) * torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
        return x

    def infer(self, x: Any, **fit_params: Any) -> torch.Tensor:
        x = to_tensor(x, device=self.device)
        if isinstance(x, torch.Tensor) and x.dtype != torch.float32:
            x = x.float()
        module = self.module_
        if (
            self.augment
            and module.training
            and isinstance(x, torch.Tensor)
            and isinstance(module, nn.Sequential)
            and len(module) == 2
        ):
            return module[1](self._augment_batch(module[0](x)), **fit_params)
        return super().infer(x, **fit_params)


def _plateau_scheduler(monitor: str, mode: str, patience: int) -> tuple[str, Any]:
    """ReduceLROnPlateau (factor 0.5, as published) watching ``monitor``."""
    return (
        "lr_scheduler",
        LRScheduler(policy=torch.optim.lr_scheduler.ReduceLROnPlateau, monitor=monitor, mode=mode, factor=0.5,
                    patience=int(patience)),
    )


def _callbacks(has_valid: bool, patience: int | None, early_stopping: int | None) -> list[tuple[str, Any]]:
    cbs: list[tuple[str, Any]] = []
    if has_valid:
        cbs.append(("valid_f1", EpochScoring("f1_macro", lower_is_better=False, name="valid_f1")))
        if patience is not None:
            cbs.append(_plateau_scheduler("valid_f1", "max", patience))
        if early_stopping is not None:
            cbs.append(
                (
                    "early_stopping",
                    EarlyStopping(monitor="valid_f1", lower_is_better=False, patience=int(early_stopping), load_best=True),
                )
            )
    elif patience is not None:
        cbs.append(_plateau_scheduler("train_loss", "min", patience))
    return cbs


def _check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        expected = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def make_classifier(
    n_channels: int,
    n_classes: int,
    *,
    model: Any = "resnet18",
    model_kwargs: dict[str, Any] | None = None,
    normalizer: PercentileNormalization | None = None,
    max_epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 128,
    patience: int | None = 5,
    early_stopping: int | None = 10,
    augment: bool = True,
    noise_std: float = 0.01,
    oversample: bool = True,
    valid_fraction: float | None = 0.2,
    device: str = "cpu",
    random_state: int | None = 42,
    verbose: int = 0,
    callbacks: Sequence[Any] | None = None,
    **skorch_kwargs: Any,
) -> IFCClassifier:
    """An unfitted skorch classifier following the PXPermute recipe.

    Parameters
    ----------
    n_channels, n_classes : int
        Input channels ``C`` and classes ``K``.
    model : str, callable or nn.Module, default "resnet18"
        See :func:`build_network` (``"resnet18"``, ``"small_cnn"`` or your own).
    model_kwargs : dict, optional
        E.g. ``{"pretrained": True}`` for ResNet18, ``{"width": 16}`` for SmallCNN.
    normalizer : PercentileNormalization, optional
        First layer of the network (``None``: identity).  :func:`train_classifier`
        fits it on the training part for you.
    max_epochs : int, default 100
        Upper bound; early stopping usually ends training before.
    lr, weight_decay : float
        AdamW learning rate (1e-3, as published) and weight decay (AdamW's default).
    batch_size : int, default 128
    patience : int or None, default 5
        ``ReduceLROnPlateau`` patience (factor 0.5) on validation F1-macro
        (on training loss without a validation split); ``None`` disables it.
    early_stopping : int or None, default 10
        Stop after this many epochs without validation F1-macro improvement and
        restore the best weights; ``None`` disables it.
    augment : bool, default True
        Random flips + Gaussian noise (``noise_std``) on training batches.
    noise_std : float, default 0.01
    oversample : bool, default True
        Minority-class oversampling of training batches.
    valid_fraction : float or None, default 0.2
        Stratified validation split used when you call ``net.fit(X, y)`` yourself
        (:func:`train_classifier` makes its own split).  ``None``/0: no validation.
    device : str, default "cpu"
        Torch device, e.g. ``"cuda"``.
    random_state : int or None, default 42
        Seeds weights, sampling, augmentation and the validation split.
    verbose : int, default 0
        skorch's per-epoch log when > 0.
    callbacks : list, optional
        Extra skorch callbacks (appended).
    **skorch_kwargs
        Any other :class:`skorch.NeuralNetClassifier` parameter.

    Returns
    -------
    IFCClassifier

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((40, 2, 16, 16)).astype("float32")
    >>> y = np.arange(40) % 2
    >>> net = make_classifier(2, 2, model="small_cnn", model_kwargs={"width": 4}, max_epochs=1)
    >>> net.fit(x, y).predict(x).shape
    (40,)
    """
    if isinstance(n_channels, bool) or not isinstance(n_channels, (int, np.integer)) or n_channels < 1:
        raise ValueError(f"n_channels must be a positive int, got {n_channels!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    _check_positive_int("max_epochs", max_epochs)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("patience", patience, allow_none=True)
    _check_positive_int("early_stopping", early_stopping, allow_none=True)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(noise_std, (int, float)) and noise_std >= 0):
        raise ValueError(f"noise_std must be a number >= 0, got {noise_std!r}")
    train_split = skorch_kwargs.pop("train_split", "auto")
    if isinstance(train_split, str) and train_split == "auto":
        if valid_fraction:
            if not 0 < valid_fraction < 1:
                raise ValueError(f"valid_fraction must be in (0, 1) or None, got {valid_fraction!r}")
            train_split = ValidSplit(float(valid_fraction), stratified=True, random_state=random_state)
        else:
            train_split = None
    has_valid = train_split is not None
    cbs = _callbacks(has_valid, patience, early_stopping) + list(callbacks or [])
    if isinstance(model, str) and model.lower().replace("-", "_") not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODEL_NAMES)} or pass a callable/nn.Module")
    return IFCClassifier(
        build_network,
        module__n_channels=int(n_channels),
        module__n_classes=int(n_classes),
        module__model=model,
        module__model_kwargs=dict(model_kwargs or {}),
        module__normalizer=normalizer,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW,
        optimizer__weight_decay=weight_decay,
        lr=lr,
        max_epochs=int(max_epochs),
        batch_size=int(batch_size),
        train_split=train_split,
        classes=list(range(int(n_classes))),
        callbacks=cbs,
        device=device,
        verbose=verbose,
        augment=augment,
        noise_std=noise_std,
        oversample=oversample,
        random_state=random_state,
        **skorch_kwargs,
    )


# ---------------------------------------------------------------------------
# train_classifier
# ---------------------------------------------------------------------------
def _as_dataset(data: Any) -> IFCDataset:
    return as_dataset(data, what="data")


def _check_finite(ds: IFCDataset, indices: np.ndarray) -> None:
    """Up-front NaN/inf check for in-memory data (lazy data are checked per batch)."""
    if ds.is_lazy or not np.issubdtype(np.dtype(ds.images.dtype), np.floating):
        return
    for start in range(0, indices.size, 4096):
        block = ds.images[indices[start : start + 4096]]
        if not np.isfinite(block).all():
            bad = indices[start : start + 4096][~np.isfinite(block).reshape(len(block), -1).all(axis=1)]
            raise ValueError(
                f"images contain NaN or inf values ({bad.size} cells in this block, e.g. index {int(bad[0])}); "
                "clean or drop these cells before training"
            )


def _check_stratifiable(labels: np.ndarray, class_names: Sequence[str], fraction: float, what: str) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    too_few = [f"{class_names[c]} ({n})" for c, n in zip(classes, counts) if n < 2]
    if too_few:
        raise ValueError(
            f"a stratified {what} needs at least 2 cells per class; too few in: {', '.join(too_few)}. "
            "Add cells, drop or merge these classes, or set valid_fraction=None"
        )
    n = labels.size
    n_valid = math.ceil(fraction * n)
    if n_valid < classes.size or n - n_valid < classes.size:
        raise ValueError(
            f"a stratified {what} of {n} cells with valid_fraction={fraction} gives {n_valid} validation and "
            f"{n - n_valid} training cells, but each part needs at least one cell of each of the "
            f"{classes.size} classes; use more cells or another valid_fraction"
        )


def _split_train_valid(
    labels: np.ndarray, indices: np.ndarray, valid_fraction: float | None, random_state: int | None, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    if not valid_fraction:
        return indices, np.zeros(0, np.int64)
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1) or None, got {valid_fraction!r}")
    from sklearn.model_selection import train_test_split

    y = labels[indices]
    _check_stratifiable(y, class_names, valid_fraction, "validation split")
    tr, va = train_test_split(indices, test_size=valid_fraction, stratify=y, random_state=random_state)
    return np.sort(tr), np.sort(va)


def train_classifier(
    dataset: Any,
    *,
    train_indices: Any = None,
    valid_fraction: float | None = 0.2,
    channels: Sequence[int | str] | int | str | None = None,
    normalize: bool = True,
    random_state: int | None = 42,
    normalization_samples: int | None = 1000,
    normalization_high: str = "image_max",
    **kwargs: Any,
) -> IFCClassifier:
    """Train a classifier on (part of) a data set, the PXPermute way.

    1. Take the cells ``train_indices`` (default: all) and split off a stratified
       validation set (``valid_fraction``, seed ``random_state``).
    2. Fit a 1st/99th-percentile :class:`~pxpermute.models.PercentileNormalization`
       on the training part only.
    3. Build ``nn.Sequential(normalize=<that layer>, model=<network>)`` and train it
       with :func:`make_classifier`'s recipe.  Early stopping and the learning-rate
       schedule watch validation F1-macro.

    The fitted ``net.module_`` -- and ``net.predict`` / ``net.predict_proba`` --
    therefore take **raw** images (of the selected channels).  Lazy (HDF5-backed)
    data sets are read one batch at a time; they are never loaded whole.

    Parameters
    ----------
    dataset : IFCDataset or (images, labels)
        Data; arrays of shape ``(N, C, H, W)`` and ``(N,)`` are wrapped into an
        :class:`~pxpermute.IFCDataset`.
    train_indices : array-like of int, optional
        Cells used for training + validation (e.g. the training folds of a CV).
    valid_fraction : float or None, default 0.2
        Stratified validation fraction; ``None`` trains on everything without
        validation (no early stopping).
    channels : names or indices, optional
        Train on this channel subset, in this order (default: all channels).
    normalize : bool, default True
        Fit and prepend the percentile normalization (else identity).
    random_state : int or None, default 42
        Seed of the validation split and of training.
    normalization_samples : int or None, default 1000
        Training images sampled to fit the normalization (``None``: all).
    normalization_high : {"image_max", "pixels"}, default "image_max"
        Upper value of the normalization: the 99th percentile of the training
        images' per-channel maxima (default), or of all their pixels
        (``"pixels"``, the earlier default).  Why: on the real Jurkat data
        the pixel percentile lies inside the bright cells' intensity range
        (cells cover a small part of each tile), so clipping at it flattened
        the condensed chromatin of mitotic cells (98 of the ~150 DNA pixels of
        a metaphase cell on average) and the DNA content of G2 cells; a
        logistic regression on intensity features of the clipped images loses
        0.05 F1-macro (prophase F1 0.63 -> 0.47, metaphase 0.46 -> 0.24), the
        ``"image_max"`` scaling loses nothing (stage ``normalization`` of
        benchmarks/realdata_cellcycle.py).
    **kwargs
        Passed to :func:`make_classifier` (``model``, ``model_kwargs``,
        ``max_epochs``, ``lr``, ``batch_size``, ``patience``, ``early_stopping``,
        ``augment``, ``oversample``, ``device``, ``verbose`` ...).

    Returns
    -------
    IFCClassifier
        Fitted; additionally carries ``channels_`` (indices into ``dataset``'s
        channels), ``channel_names_``, ``class_names_``, ``train_indices_`` and
        ``valid_indices_``.  Its ``train_split`` refers to the validation cells
        of ``dataset``; a pickled copy drops that reference (``train_split=None``)
        so that it holds the weights, not the data.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((60, 3, 16, 16)).astype("float32"); y = np.arange(60) % 2
    >>> x[y == 1, 0, :8, :8] += 2
    >>> net = train_classifier((x, y), model="small_cnn", model_kwargs={"width": 8}, max_epochs=2)
    >>> net.predict(x).shape
    (60,)
    """
    ds = _as_dataset(dataset)
    for bad in ("normalizer", "train_split", "n_channels", "n_classes"):
        if bad in kwargs:
            raise TypeError(f"train_classifier() sets {bad!r} itself; do not pass it")
    ch = list(range(ds.n_channels)) if channels is None else resolve_channels(channels, ds.channel_names)
    if not ch:
        raise ValueError("channels is empty; pass at least one channel")
    if train_indices is None:
        idx = np.arange(len(ds))
    else:
        idx = np.asarray(train_indices).reshape(-1)
        if idx.dtype == bool:
            if idx.size != len(ds):
                raise ValueError(f"boolean train_indices must have length {len(ds)}, got {idx.size}")
            idx = np.flatnonzero(idx)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"train_indices must be integer indices, got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(ds)):
            raise ValueError(f"train_indices must lie in [0, {len(ds)}); got range [{idx.min()}, {idx.max()}]")
        if np.unique(idx).size != idx.size:
            raise ValueError("train_indices contains duplicates")
    if idx.size < 2:
        raise ValueError(f"need at least 2 training cells, got {idx.size}")
    if np.unique(ds.labels[idx]).size < 2:
        raise ValueError("the training cells contain a single class; a classifier needs at least two")
    _check_finite(ds, idx)

    tr, va = _split_train_valid(ds.labels, idx, valid_fraction, random_state, ds.class_names)
    normalizer = None
    if normalize:
        full = fit_percentile_normalization(
            ds, indices=tr, max_samples=normalization_samples, random_state=random_state,
            high_from=normalization_high,
        )
        normalizer = PercentileNormalization(full.low[ch], full.high[ch], clip=full.clip)

    net = make_classifier(
        len(ch),
        ds.n_classes,
        normalizer=normalizer,
        random_state=random_state,
        train_split=predefined_split(_BatchView(ds, va, ch)) if va.size else None,
        **kwargs,
    )
    net.fit(_BatchView(ds, tr, ch))
    net.channels_ = list(ch)
    net.channel_names_ = [ds.channel_names[i] for i in ch]
    net.class_names_ = list(ds.class_names)
    net.train_indices_ = tr
    net.valid_indices_ = va
    return net


# ---------------------------------------------------------------------------
# cross-validation
# ---------------------------------------------------------------------------
@dataclass(repr=False)
class CVResult(SavableResult):
    """Outcome of :func:`cross_validate`.

    The result protocol: :meth:`to_frame` (tidy), :meth:`summary` (text),
    :meth:`summary_frame` (mean and std per metric), :meth:`plot`,
    :meth:`save` / :meth:`load` (scores, folds and predictions; the fitted
    networks are not saved, a loaded result has ``None`` in their place).

    Attributes
    ----------
    models : list of IFCClassifier
        One fitted net per fold (takes raw images of ``channels``).
    train_indices, test_indices : list of np.ndarray
        Cells used for training (incl. validation) and held out, per fold; the
        test indices of all folds partition the data set.
    f1_macro, accuracy : np.ndarray, shape (n_splits,)
        Held-out scores per fold.
    f1_per_class : np.ndarray, shape (n_splits, K)
        Held-out F1 per class and fold (0 for a class absent from a test fold and
        never predicted).
    y_pred : list of np.ndarray
        Held-out predictions per fold (aligned with ``test_indices``).
    channels : list of str
        Channel names the models were trained on.
    channel_indices : list of int
        Their indices in the original data set.
    class_names : list of str
    random_state : int or None
    """

    models: list[Any]
    train_indices: list[np.ndarray]
    test_indices: list[np.ndarray]
    f1_macro: np.ndarray
    accuracy: np.ndarray
    f1_per_class: np.ndarray
    y_pred: list[np.ndarray]
    channels: list[str]
    channel_indices: list[int]
    class_names: list[str]
    random_state: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_splits(self) -> int:
        return len(self.models)

    @property
    def f1_macro_mean(self) -> float:
        return float(np.mean(self.f1_macro))

    @property
    def f1_macro_std(self) -> float:
        return float(np.std(self.f1_macro, ddof=1)) if self.n_splits > 1 else 0.0

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def accuracy_std(self) -> float:
        return float(np.std(self.accuracy, ddof=1)) if self.n_splits > 1 else 0.0

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (fold, metric, class).

        Columns ``fold``, ``metric`` (``"f1_macro"``, ``"accuracy"``, ``"f1"``),
        ``class`` (class name for per-class F1, ``None`` otherwise), ``value``,
        ``n_test`` and ``channels`` (comma-joined names).
        """
        rows = []
        chans = ",".join(self.channels)
        for k in range(self.n_splits):
            n_test = int(self.test_indices[k].size)
            rows.append(dict(fold=k, metric="f1_macro", **{"class": None}, value=float(self.f1_macro[k]), n_test=n_test, channels=chans))
            rows.append(dict(fold=k, metric="accuracy", **{"class": None}, value=float(self.accuracy[k]), n_test=n_test, channels=chans))
            for c, name in enumerate(self.class_names):
                rows.append(dict(fold=k, metric="f1", **{"class": name}, value=float(self.f1_per_class[k, c]),
                                 n_test=n_test, channels=chans))
        return pd.DataFrame(rows, columns=["fold", "metric", "class", "value", "n_test", "channels"])

    def summary_frame(self) -> pd.DataFrame:
        """Mean and standard deviation (over folds) of every metric (and class)."""
        df = self.to_frame()
        df["class"] = df["class"].fillna("")
        out = df.groupby(["metric", "class"], sort=False)["value"].agg(["mean", "std"]).reset_index()
        out["class"] = out["class"].replace("", None)
        return out

    def summary(self) -> str:
        """Printable text: F1-macro, accuracy and per-class F1, mean ± std over the folds."""
        from .stats import t_interval

        lines = [f"{self.n_splits}-fold cross-validation, channels {', '.join(map(glue, self.channels))}, "
                 f"seed={self.random_state}" + (f", model={self.params['model']}" if "model" in self.params else "")]
        for name, values in (("F1-macro", self.f1_macro), ("accuracy", self.accuracy)):
            t = t_interval(values)
            lines.append(f"  {name:<9} {t.mean:.3f} ± {t.std:.3f} (95 % t-interval over folds "
                         f"[{t.low:.3f}, {t.high:.3f}])")
        for c, name in enumerate(self.class_names):
            v = self.f1_per_class[:, c]
            lines.append(f"  F1[{name}] {np.mean(v):.3f} ± {np.std(v, ddof=1) if v.size > 1 else 0.0:.3f}")
        return fill("\n".join(lines), indent="    ")

    def plot(self, ax=None, **kwargs):
        """Per-fold F1 per class and F1-macro (see :func:`pxpermute.plotting.plot_cv_result`)."""
        from .plotting import plot_cv_result

        return plot_cv_result(self, ax=ax, **kwargs)

    def _to_bundle(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {f"{prefix}.f1_macro": self.f1_macro, f"{prefix}.accuracy": self.accuracy,
                  f"{prefix}.f1_per_class": self.f1_per_class}
        arrays.update(ragged_to_bundle(self.train_indices, f"{prefix}.train"))
        arrays.update(ragged_to_bundle(self.test_indices, f"{prefix}.test"))
        arrays.update(ragged_to_bundle(self.y_pred, f"{prefix}.y_pred"))
        meta = {"channels": self.channels, "channel_indices": self.channel_indices, "class_names": self.class_names,
                "random_state": self.random_state, "params": self.params, "n_folds": len(self.test_indices)}
        return meta, arrays

    @classmethod
    def _from_bundle(cls, meta: Any, arrays: Any, prefix: str) -> CVResult:
        n = int(meta["n_folds"])
        tests = ragged_from_bundle(arrays, f"{prefix}.test")
        if len(tests) != n:
            raise ValueError(f"{len(tests)} test folds for {n} folds")
        return cls(models=[None] * n, train_indices=ragged_from_bundle(arrays, f"{prefix}.train"), test_indices=tests,
                   f1_macro=arrays[f"{prefix}.f1_macro"], accuracy=arrays[f"{prefix}.accuracy"],
                   f1_per_class=arrays[f"{prefix}.f1_per_class"], y_pred=ragged_from_bundle(arrays, f"{prefix}.y_pred"),
                   channels=list(meta["channels"]), channel_indices=[int(i) for i in meta["channel_indices"]],
                   class_names=list(meta["class_names"]), random_state=meta.get("random_state"),
                   params=dict(meta.get("params") or {}))

    def __repr__(self) -> str:
        return fill(  # lines of at most 100 characters (the book's width)
            f"CVResult({self.n_splits} folds, channels {name_list(self.channels)}, "
            + glue(f"F1-macro {self.f1_macro_mean:.3f} ± {self.f1_macro_std:.3f}") + ", "
            + glue(f"accuracy {self.accuracy_mean:.3f} ± {self.accuracy_std:.3f}") + ")"
        )


def _threads_for(n_workers: int) -> int | None:
    """Torch / BLAS threads per training when ``n_workers`` trainings run at once (``None``: the worker's own).

    Workers on this machine (joblib's loky and multiprocessing backends) get
    joblib's ``inner_max_num_threads`` when the active ``parallel_config`` sets
    it, else ``cores // n_workers`` (at least 1).  Workers elsewhere (a Dask
    cluster) keep their own setting: Dask starts every worker process with
    ``OMP_NUM_THREADS=1`` (``distributed.nanny.pre-spawn-environ``), and this
    machine's core count says nothing about theirs.
    """
    from joblib import cpu_count
    from joblib._parallel_backends import LokyBackend, MultiprocessingBackend
    from joblib.parallel import get_active_backend

    backend = get_active_backend()[0]
    if not isinstance(backend, (LokyBackend, MultiprocessingBackend)):
        return None
    inner = getattr(backend, "inner_max_num_threads", None)
    if inner:
        return int(inner)
    return max(1, int(cpu_count()) // max(1, int(n_workers)))


@contextmanager
def _limited_threads(n_threads: int | None) -> Iterator[None]:
    """Run the body with ``n_threads`` torch and BLAS/OpenMP threads (``None``: leave them alone)."""
    if n_threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(int(n_threads))
    try:
        with threadpool_limits(limits=int(n_threads)):
            yield
    finally:
        torch.set_num_threads(before)


def _fit_fold(
    ds: IFCDataset,
    train: np.ndarray,
    test: np.ndarray,
    channels: list[int],
    valid_fraction: float | None,
    random_state: int | None,
    train_kwargs: dict[str, Any],
    n_threads: int | None,
) -> tuple[Any, np.ndarray]:
    """One training of a cross-validation (a joblib task): the fitted net and its held-out predictions.

    Everything random inside depends on ``random_state`` only (the task's seed),
    never on the worker that runs it.
    """
    with _limited_threads(n_threads):
        net = train_classifier(ds, train_indices=train, valid_fraction=valid_fraction, channels=channels,
                               random_state=random_state, **train_kwargs)
        y_pred = np.asarray(net.predict(_BatchView(ds, test, channels)))
    return net, y_pred


def run_trainings(
    fn: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    *,
    n_jobs: int | None = None,
    progress: bool = True,
    desc: str = "trainings",
) -> list[Any]:
    """Run ``fn(*task, n_threads)`` for every task, in this process or through joblib; results in task order.

    The package's one way to run independent trainings in parallel.  With
    ``n_jobs`` in (None, 1) and no parallel joblib backend configured, the tasks
    run one after another here (``n_threads=None``: torch keeps its threads).
    Otherwise they go to ``joblib.Parallel(n_jobs)`` -- worker processes (loky)
    by default, a Dask cluster inside ``joblib.parallel_config(backend="dask")``
    -- and every task on this machine gets ``n_threads = max(1, cores //
    workers)`` torch/BLAS threads (or joblib's ``inner_max_num_threads`` when
    the active ``parallel_config`` sets it), so the workers do not
    oversubscribe the cores; on a Dask cluster every task keeps its worker's
    setting (``n_threads=None``; Dask runs worker processes with
    ``OMP_NUM_THREADS=1``).  A tqdm bar counts finished tasks.

    Reproducibility: a task's randomness comes from its own arguments (seeds
    fixed per task, never per worker), so the results do not depend on
    ``n_jobs`` or on which worker ran a task -- bit for bit when every training
    runs with the same number of torch threads.  Torch's CPU kernels sum in an
    order that depends on the thread count (a ResNet18 trained with 1 and with
    2 threads differs by ~1e-3 in its weights), so for bit-identical results
    between a serial and a parallel run give both the same count, e.g.
    ``torch.set_num_threads(1)`` for the serial run and
    ``joblib.parallel_config(backend="loky", inner_max_num_threads=1)`` for the
    parallel one (on 2 cores with ``n_jobs=2`` that is the default anyway).

    Parameters
    ----------
    fn : callable
        Module-level function (it is pickled to the workers); called as
        ``fn(*task, n_threads)``.
    tasks : sequence of tuples
    n_jobs : int or None
        joblib's ``n_jobs`` (``-1``: all cores / all Dask workers).
    progress : bool
    desc : str
        Label of the progress bar.

    Examples
    --------
    >>> def square(x, n_threads):
    ...     return x * x
    >>> run_trainings(square, [(1,), (2,), (3,)], progress=False)
    [1, 4, 9]
    """
    import joblib

    tasks = list(tasks)
    if not tasks:
        return []
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0):
        raise ValueError(f"n_jobs must be a non-zero int (-1: all cores) or None, got {n_jobs!r}")
    bar = progress_bar(total=len(tasks), progress=progress, desc=desc, unit="training")
    try:
        workers = joblib.effective_n_jobs(n_jobs)
        if workers == 1 or len(tasks) == 1:
            out = []
            for task in tasks:
                out.append(fn(*task, None))
                if bar is not None:
                    bar.update(1)
            return out
        threads = _threads_for(min(workers, len(tasks)))
        results: list[Any] = [None] * len(tasks)
        parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        for i, value in parallel(joblib.delayed(_indexed)(fn, i, task, threads) for i, task in enumerate(tasks)):
            results[i] = value
            if bar is not None:
                bar.update(1)
        return results
    finally:
        if bar is not None:
            bar.close()


def _indexed(fn: Callable[..., Any], i: int, task: tuple[Any, ...], n_threads: int | None) -> tuple[int, Any]:
    return i, fn(*task, n_threads)


def cross_validate_many(
    dataset: Any,
    channel_subsets: Sequence[Sequence[int | str] | None],
    *,
    n_splits: int = 5,
    valid_fraction: float | None = 0.2,
    folds: Sequence[int] | None = None,
    random_state: int | None = 42,
    n_jobs: int | None = None,
    progress: bool = True,
    desc: str = "cross-validation",
    **train_kwargs: Any,
) -> list[CVResult]:
    """:func:`cross_validate` for several channel subsets on the same folds, all trainings in one parallel batch.

    Every (subset, fold) pair is one task for :func:`run_trainings`; with
    ``n_jobs > 1`` they spread over the workers together, which keeps all
    workers busy even with few folds.  Parameters as in :func:`cross_validate`;
    ``channel_subsets`` lists channel names/indices per subset (``None``: all
    channels).  Returns one :class:`CVResult` per subset, in order.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((60, 2, 16, 16)).astype("float32"); y = np.arange(60) % 2
    >>> cvs = cross_validate_many((x, y), [[0], [1]], n_splits=2, model="small_cnn", model_kwargs={"width": 4},
    ...                           max_epochs=1, progress=False)
    >>> [cv.channels for cv in cvs]
    [['ch0'], ['ch1']]
    """
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold

    ds = _as_dataset(dataset)
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits must be an int >= 2, got {n_splits!r}")
    if "train_indices" in train_kwargs:
        raise TypeError("cross_validate() chooses the training cells itself; do not pass train_indices")
    labels = ds.labels
    present, counts = np.unique(labels, return_counts=True)
    if present.size < 2:
        raise ValueError("the data set contains a single class; cross-validation needs at least two")
    if counts.min() < n_splits:
        small = [f"{ds.class_names[c]} ({n})" for c, n in zip(present, counts) if n < n_splits]
        raise ValueError(
            f"n_splits={n_splits} is larger than the number of cells in the smallest class(es): "
            f"{', '.join(small)}; every test fold needs a cell of every class. Use n_splits <= {counts.min()}"
        )
    if folds is None:
        fold_ids = list(range(int(n_splits)))
    else:
        fold_ids = [int(f) for f in folds]
        bad = [f for f in fold_ids if not 0 <= f < n_splits]
        if not fold_ids or bad or len(set(fold_ids)) != len(fold_ids):
            raise ValueError(f"folds must be distinct fold numbers in [0, {n_splits - 1}], got {list(folds)!r}")
    subsets = [list(range(ds.n_channels)) if ch is None else resolve_channels(ch, ds.channel_names)
               for ch in channel_subsets]
    if not subsets:
        raise ValueError("channel_subsets is empty")
    for ch in subsets:
        if not ch:
            raise ValueError("a channel subset is empty; every model needs at least one channel")

    skf = StratifiedKFold(n_splits=int(n_splits), shuffle=True, random_state=random_state)
    split = list(skf.split(np.zeros(len(ds)), labels))
    tasks = [(ds, split[f][0], split[f][1], ch, valid_fraction, random_state, train_kwargs)
             for ch in subsets for f in fold_ids]
    fitted = run_trainings(_fit_fold, tasks, n_jobs=n_jobs, progress=progress, desc=desc)

    k = ds.n_classes
    params = {"n_splits": int(n_splits), "valid_fraction": valid_fraction}
    if folds is not None:
        params["folds"] = fold_ids
    params.update({key: val for key, val in train_kwargs.items() if isinstance(val, (int, float, str, bool, type(None)))})
    out = []
    for s, ch in enumerate(subsets):
        part = fitted[s * len(fold_ids):(s + 1) * len(fold_ids)]
        f1m, acc, f1c = np.zeros(len(fold_ids)), np.zeros(len(fold_ids)), np.zeros((len(fold_ids), k))
        for i, (f, (_, y_pred)) in enumerate(zip(fold_ids, part)):
            y_true = labels[split[f][1]]
            f1m[i] = f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0)
            acc[i] = accuracy_score(y_true, y_pred)
            f1c[i] = f1_score(y_true, y_pred, average=None, labels=np.arange(k), zero_division=0)
        out.append(CVResult(
            models=[net for net, _ in part],
            train_indices=[np.asarray(split[f][0]) for f in fold_ids],
            test_indices=[np.asarray(split[f][1]) for f in fold_ids],
            f1_macro=f1m,
            accuracy=acc,
            f1_per_class=f1c,
            y_pred=[y for _, y in part],
            channels=[ds.channel_names[i] for i in ch],
            channel_indices=list(ch),
            class_names=list(ds.class_names),
            random_state=random_state,
            params=dict(params),
        ))
    return out


def cross_validate(
    dataset: Any,
    *,
    n_splits: int = 5,
    valid_fraction: float | None = 0.2,
    channels: Sequence[int | str] | int | str | None = None,
    folds: Sequence[int] | None = None,
    random_state: int | None = 42,
    n_jobs: int | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> CVResult:
    """Stratified k-fold cross-validation with :func:`train_classifier`.

    For each of ``n_splits`` stratified folds (shuffled with ``random_state``), train
    on the other folds -- with a stratified ``valid_fraction`` validation split
    inside them for early stopping -- and evaluate F1-macro, accuracy and per-class
    F1 on the held-out fold.  This is the package's single retraining routine:
    remove-and-retrain, panel comparison and leave-one-channel-out call it with a
    channel subset (through :func:`cross_validate_many`).

    Determinism: the folds, the validation splits and training (weights, batch
    order, oversampling, augmentation) are all seeded from ``random_state`` -- the
    same seed for every fold, whichever worker trains it -- so on CPU the same
    call gives the same models and scores, with any ``n_jobs`` (bit for bit when
    every training gets the same number of torch threads, see
    :func:`run_trainings`).  On GPU, cuDNN
    kernels may be nondeterministic (set ``torch.backends.cudnn.deterministic =
    True`` if you need bit-identical GPU runs); results can also differ across
    torch versions or numbers of CPU threads in the last digits.

    Parameters
    ----------
    dataset : IFCDataset or (images, labels)
    n_splits : int, default 5
        Number of folds (>= 2, <= the smallest class count).
    valid_fraction : float or None, default 0.2
        Validation fraction inside each training part.
    channels : names or indices, optional
        Channel subset to train on (default: all).
    folds : sequence of int, optional
        Train and evaluate only these folds of the ``n_splits``-fold split
        (e.g. ``[0]`` for a timing study); default all.
    random_state : int or None, default 42
        Seed of the folds and of every fold's training.
    n_jobs : int or None, default None
        Train the folds in parallel through joblib (``-1``: all cores; inside
        ``joblib.parallel_config(backend="dask")``: on a Dask cluster).  Each
        worker gets ``cores // n_jobs`` torch threads.  ``None``/``1``: one
        after another in this process.  With more than one worker the data set
        is sent to the workers (joblib memory-maps large in-memory arrays; a
        lazy HDF5 data set travels as its file path, which the workers must see).
    progress : bool, default True
        Show a tqdm progress bar counting finished trainings.
    **train_kwargs
        Passed to :func:`train_classifier` / :func:`make_classifier` (``model``,
        ``max_epochs``, ``batch_size``, ``normalize`` ...).

    Returns
    -------
    CVResult

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((60, 2, 16, 16)).astype("float32"); y = np.arange(60) % 2
    >>> x[y == 1, 0, :8, :8] += 2
    >>> cv = cross_validate((x, y), n_splits=2, model="small_cnn", model_kwargs={"width": 4},
    ...                     max_epochs=1, progress=False)
    >>> cv.f1_macro.shape
    (2,)
    """
    return cross_validate_many(dataset, [channels], n_splits=n_splits, valid_fraction=valid_fraction, folds=folds,
                               random_state=random_state, n_jobs=n_jobs, progress=progress, **train_kwargs)[0]
