"""Per-class and overall metrics from (batched) confusion matrices.

Every metric is computed from confusion matrices of shape ``(..., K, K)`` with
true classes in rows and predicted classes in columns, so millions of
predictions reduce to a few integers per (repeat, channel) and metrics for any
number of perturbations are computed at once.

Classes absent from the test set
--------------------------------
A class with no true sample in the evaluated data (support 0) has no defined
recall or F1.  Such classes get ``NaN`` in per-class outputs and are *left out*
of every average (overall metrics and the engine's aggregation over classes);
:func:`present_classes` tells which classes count.  For a present class that is
never predicted, precision is 0 (as ``sklearn``'s ``zero_division=0``), and F1 is
``2 TP / (2 TP + FP + FN)``, which is always defined when the class is present.
No warnings are emitted for either case.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["METRICS", "PER_CLASS_METRICS", "confusion_matrix", "compute_metric", "present_classes"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """K x K confusion matrix (rows: true class, columns: predicted class)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def present_classes(cm: np.ndarray) -> np.ndarray:
    """Boolean mask (K,) of classes with at least one true sample in ``cm`` (..., K, K)."""
    support = np.asarray(cm).sum(axis=-1)
    while support.ndim > 1:
        support = support.max(axis=0)
    return support > 0


def _parts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fp = cm.sum(axis=-2) - tp
    fn = cm.sum(axis=-1) - tp
    return tp, fp, fn


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _mask_absent(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    values = values.copy()
    values[..., ~present] = np.nan
    return values


def f1(cm: np.ndarray, present: np.ndarray) -> np.ndarray:
    tp, fp, fn = _parts(cm)
    return _mask_absent(_div(2 * tp, 2 * tp + fp + fn), present)


def precision(cm: np.ndarray, present: np.ndarray) -> np.ndarray:
    tp, fp, _ = _parts(cm)
    return _mask_absent(_div(tp, tp + fp), present)


def recall(cm: np.ndarray, present: np.ndarray) -> np.ndarray:
    tp, _, fn = _parts(cm)
    return _mask_absent(_div(tp, tp + fn), present)


def accuracy(cm: np.ndarray, present: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    return _div(np.trace(cm, axis1=-2, axis2=-1), cm.sum(axis=(-2, -1)))[..., None]


def balanced_accuracy(cm: np.ndarray, present: np.ndarray) -> np.ndarray:
    return np.mean(recall(cm, present)[..., present], axis=-1)[..., None]


def f1_macro(cm: np.ndarray, present: np.ndarray) -> np.ndarray:
    return np.mean(f1(cm, present)[..., present], axis=-1)[..., None]


#: metric name -> function(cm (..., K, K), present (K,)) -> (..., K) per class or (..., 1) overall
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "f1": f1,
    "precision": precision,
    "recall": recall,
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "f1_macro": f1_macro,
}
#: metrics with one value per class (the others give one overall value)
PER_CLASS_METRICS = {"f1", "precision", "recall"}


def compute_metric(cm: np.ndarray, metric: str, present: np.ndarray | None = None) -> np.ndarray:
    """Metric values from confusion matrices ``cm`` of shape (..., K, K).

    Returns shape (..., K) for per-class metrics (NaN for absent classes) and
    (..., 1) for overall metrics.  ``present`` defaults to the classes with
    support in ``cm`` (see module docstring).

    Examples
    --------
    >>> cm = np.array([[3, 1], [0, 4]])
    >>> compute_metric(cm, "f1").round(3)
    array([0.857, 0.889])
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
    cm = np.asarray(cm)
    if cm.ndim < 2 or cm.shape[-1] != cm.shape[-2]:
        raise ValueError(f"confusion matrices must have shape (..., K, K), got {cm.shape}")
    if present is None:
        present = present_classes(cm)
    return METRICS[metric](cm, np.asarray(present, bool))
