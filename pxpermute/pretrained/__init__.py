"""Pretrained tutorial models (package data) and cross-validation results rebuilt from them.

The files next to this module are ``state_dict`` s written by ``scripts/train_tutorial_models.py``
and listed, with their SHA-256, in ``registry.json``.  Load one network with
:func:`pxpermute.models.load_pretrained`; rebuild a whole cross-validation (the folds the notebooks
use) with :func:`load_cv`.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .._text import fill
from ..datasets.base import IFCDataset
from ..models import load_pretrained, pretrained_registry
from ..training import CVResult

__all__ = ["load_cv", "cv_or_train", "data_fingerprint", "groups"]


def data_fingerprint(dataset: IFCDataset) -> str:
    """A short hash identifying a data set: shape, names, labels and per-channel means (4 digits).

    Robust to last-digit floating point differences between machines, but any change of cells,
    labels, order or channels changes it.

    Examples
    --------
    >>> from pxpermute.datasets import make_synthetic
    >>> len(data_fingerprint(make_synthetic("default", n_samples=40, image_size=16)))
    16
    """
    if not isinstance(dataset, IFCDataset):
        raise TypeError(f"dataset must be a pxpermute IFCDataset, got {type(dataset).__name__}")
    h = hashlib.sha256()
    h.update(repr((len(dataset), tuple(dataset.image_shape), list(dataset.channel_names),
                   list(dataset.class_names))).encode())
    h.update(np.asarray(dataset.labels, dtype=np.int64).tobytes())
    sums = np.zeros(dataset.n_channels)
    for start in range(0, len(dataset), 512):
        block, _ = dataset.get_batch(np.arange(start, min(start + 512, len(dataset))))
        sums += np.asarray(block, dtype=np.float64).sum(axis=(0, 2, 3))
    means = sums / (len(dataset) * int(np.prod(dataset.image_shape[1:])))
    h.update(" ".join(f"{m:.4g}" for m in means).encode())
    return h.hexdigest()[:16]


def groups() -> dict[str, dict[str, Any]]:
    """The registry's groups (one cross-validation each): data, training parameters, scores."""
    return pretrained_registry()["groups"]


def load_cv(group: str, dataset: IFCDataset, *, device: str | None = None, batch_size: int = 256) -> CVResult:
    """Rebuild the cross-validation of a pretrained ``group`` on ``dataset`` without training.

    The folds are recomputed exactly as :func:`pxpermute.training.cross_validate` draws them
    (stratified, shuffled with the group's seed); each fold's stored network is loaded (hash
    checked) and scored on its held-out cells, so the returned :class:`CVResult` is what
    ``cross_validate`` returned when the models were trained, except that ``models`` holds plain
    ``torch`` modules (raw images of ``channels`` in, logits out) instead of skorch nets.

    Parameters
    ----------
    group : str
        A group of :func:`groups`, e.g. ``"cellcycle_all"``.
    dataset : IFCDataset
        The data set the group was trained on (checked with :func:`data_fingerprint`).
    device : str, optional
        ``"cuda"`` or ``"cpu"`` (default: cuda when available).
    batch_size : int, default 256
        Prediction batch size.

    Returns
    -------
    CVResult
        ``params["pretrained"]`` names the group; ``params["epochs"]`` lists the epochs per fold.

    Raises
    ------
    KeyError
        Unknown group.
    ValueError
        ``dataset`` is not the data the group was trained on.

    Examples
    --------
    >>> from pxpermute.datasets.cellcycle import load_cellcycle
    >>> cv = load_cv("cellcycle_all", load_cellcycle())  # doctest: +SKIP
    """
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold

    reg = pretrained_registry()
    if group not in reg["groups"]:
        raise KeyError(f"unknown pretrained group {group!r}; available: {sorted(reg['groups'])}")
    g = reg["groups"][group]
    if not isinstance(dataset, IFCDataset):
        raise TypeError(f"dataset must be a pxpermute IFCDataset, got {type(dataset).__name__}")
    fp = data_fingerprint(dataset)
    if fp != g["data_fingerprint"]:
        raise ValueError(
            f"pretrained group {group!r} was trained on {g['data']} ({g['n_cells']} cells, fingerprint "
            f"{g['data_fingerprint']}); the data set given is {dataset.name!r} ({len(dataset)} cells, fingerprint "
            f"{fp}). Load the same data (see the group's data_spec: {g['data_spec']}) or retrain (retrain=True)."
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    labels = np.asarray(dataset.labels)
    skf = StratifiedKFold(n_splits=int(g["n_splits"]), shuffle=True, random_state=g["random_state"])
    folds = list(skf.split(np.zeros(len(dataset)), labels))
    present = np.unique(labels)
    k = dataset.n_classes
    ch = list(g["channel_indices"])
    models, trains, tests, preds = [], [], [], []
    f1m, acc, f1c = np.zeros(len(folds)), np.zeros(len(folds)), np.zeros((len(folds), k))
    for i, ((tr, te), mname) in enumerate(zip(folds, g["models"])):
        net = load_pretrained(mname, device=device)
        y_pred = []
        with torch.no_grad():
            for start in range(0, len(te), batch_size):
                x, _ = dataset.get_batch(te[start:start + batch_size])
                x = torch.as_tensor(np.asarray(x, dtype=np.float32)[:, ch], device=device)
                y_pred.append(net(x).argmax(1).cpu().numpy())
        y_pred = np.concatenate(y_pred)
        f1m[i] = f1_score(labels[te], y_pred, average="macro", labels=present, zero_division=0)
        acc[i] = accuracy_score(labels[te], y_pred)
        f1c[i] = f1_score(labels[te], y_pred, average=None, labels=np.arange(k), zero_division=0)
        models.append(net)
        trains.append(np.asarray(tr))
        tests.append(np.asarray(te))
        preds.append(y_pred)
    params = {"n_splits": int(g["n_splits"]), "pretrained": group, **{k_: v for k_, v in g["train"].items()
                                                                     if not isinstance(v, dict)},
              "epochs": [reg["models"][m]["epochs"] for m in g["models"]]}
    return CVResult(models=models, train_indices=trains, test_indices=tests, f1_macro=f1m, accuracy=acc,
                    f1_per_class=f1c, y_pred=preds, channels=list(g["channels"]), channel_indices=ch,
                    class_names=list(dataset.class_names), random_state=g["random_state"], params=params)


def cv_or_train(group: str, dataset: IFCDataset, *, retrain: bool = False, n_splits: int = 5,
                channels: Any = None, random_state: int | None = 42, device: str | None = None,
                **train_kwargs: Any) -> CVResult:
    """The pretrained cross-validation ``group`` when it matches the request, else train it.

    The stored folds are used when ``retrain`` is False and the data set (fingerprint), ``n_splits``,
    ``random_state``, ``channels`` and every training option given here equal what the group was
    trained with; otherwise :func:`pxpermute.training.cross_validate` trains with these arguments.
    Either way one line says which happened and why, so a tutorial can switch with one parameter.

    Parameters
    ----------
    group : str
        Pretrained group, e.g. ``"cellcycle_all"``.
    dataset : IFCDataset
    retrain : bool, default False
        Always train.
    n_splits, channels, random_state, **train_kwargs
        As for :func:`~pxpermute.training.cross_validate`.
    device : str, optional
        Device for training or prediction (default: cuda when available).

    Returns
    -------
    CVResult
        ``params["pretrained"]`` names the group when the stored models were used.

    Examples
    --------
    >>> cv = cv_or_train("cellcycle_all", ds, model="small_cnn", model_kwargs={"width": 16},
    ...                  max_epochs=10)  # doctest: +SKIP
    """
    import torch

    from ..datasets.base import resolve_channels
    from ..training import cross_validate

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = "retrain=True"
    g = pretrained_registry()["groups"].get(group)
    if not retrain:
        if g is None:
            reason = f"no pretrained group {group!r} in this installation"
        else:
            want_ch = list(range(dataset.n_channels)) if channels is None else resolve_channels(channels, dataset.channel_names)
            diffs = []
            if int(n_splits) != int(g["n_splits"]):
                diffs.append(f"n_splits {n_splits} != {g['n_splits']}")
            if random_state != g["random_state"]:
                diffs.append(f"random_state {random_state} != {g['random_state']}")
            if want_ch != list(g["channel_indices"]):
                diffs.append(f"channels {want_ch} != {g['channel_indices']}")
            for key, val in train_kwargs.items():
                if g["train"].get(key) != val:
                    diffs.append(f"{key} {val!r} != {g['train'].get(key)!r}")
            if not diffs and data_fingerprint(dataset) != g["data_fingerprint"]:
                diffs.append(f"data differ from {g['data']} ({g['n_cells']} cells)")
            if not diffs:
                cv = load_cv(group, dataset, device=device)
                print(fill(f"pretrained models {group!r} loaded ({g['n_splits']} folds of {g['data']}, "
                           f"{g['train'].get('model')}, trained by scripts/train_tutorial_models.py); "
                           "retrain=True trains them here"))
                return cv
            reason = "the pretrained group differs: " + "; ".join(diffs)
    print(fill(f"training {n_splits} folds ({reason})"))  # lines of at most 100 characters
    return cross_validate(dataset, n_splits=n_splits, channels=channels, random_state=random_state, progress=False,
                          device=device, **train_kwargs)
