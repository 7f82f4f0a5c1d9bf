"""Small pieces the evaluation modules share: argument checks and labels for provenance."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._validation import check_int
from ..datasets.base import IFCDataset, resolve_channels
from ..datasets.base import as_dataset as _as_dataset
from ..result import ImportanceResult


def as_dataset(dataset: Any, fn: str) -> IFCDataset:
    """An :class:`IFCDataset` from a data set or an ``(images, labels)`` pair (the package's one coercion)."""
    return _as_dataset(dataset, what=f"the dataset of {fn}()")


def check_n_splits(n_splits: Any) -> int:
    return check_int(n_splits, "n_splits", low=2)


def names_of(ds: IFCDataset, idx: Sequence[int]) -> list[str]:
    return [ds.channel_names[i] for i in idx]


def ranked_stains(ds: IFCDataset, ranking: Any) -> list[int]:
    """Indices of the *stains* (non stain-free channels) in ranking order, most important first."""
    if isinstance(ranking, ImportanceResult):
        if ranking.groups:
            raise ValueError("a ranking of channel groups cannot be used as a panel ranking; rank single channels")
        names = ranking.ranked_channels
        unknown = [n for n in names if n not in ds.channel_names]
        if unknown:
            raise ValueError(
                f"the ranking scores channels {unknown} that the data set does not have; "
                f"data set channels: {ds.channel_names}"
            )
        idx = [ds.channel_names.index(n) for n in names]
    elif isinstance(ranking, (str, bytes)) or not isinstance(ranking, (Sequence, np.ndarray, pd.Index, pd.Series)):
        raise TypeError(
            "ranking must be an ImportanceResult or a sequence of channel names/indices ordered from most to "
            f"least important, got {type(ranking).__name__}"
        )
    else:
        idx = resolve_channels(list(ranking), ds.channel_names)
    stains = [i for i in idx if not ds.stain_free[i]]
    if not stains:
        raise ValueError(
            f"the ranking {[ds.channel_names[i] for i in idx]} contains no stain (all its channels are stain-free)"
        )
    return stains


def ranking_label(ranking: Any) -> str:
    """Where a ranking came from, for titles (method and k of an importance result, else "given")."""
    if isinstance(ranking, ImportanceResult):
        i = ranking.info
        if "n_repeats_per_fold" in i:
            return f"{i.get('method', 'importance')} k={i['n_repeats_per_fold']} x {i.get('n_splits')} folds"
        return f"{i.get('method', 'importance')} k={ranking.n_repeats}"
    return "given"


def model_label(train_kwargs: Mapping[str, Any]) -> str:
    m = train_kwargs.get("model", "resnet18")
    if isinstance(m, str):
        return m
    return getattr(m, "__name__", type(m).__name__)


def plain_params(train_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The training options that can be written to a result file (numbers, strings, flags)."""
    return {k: v for k, v in train_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}


def cv_test_train_ratio(cv: Any) -> float:
    """``n_test / n_train`` of a cross-validation, from its actual split sizes (the Nadeau-Bengio ratio).

    ``n_train`` counts the cells the model was *fitted* on: the training part of
    each fold minus its validation split (``valid_fraction``, used for early
    stopping; sklearn's ``train_test_split`` holds out ``ceil(v * n)`` cells).
    Averaged over the folds.  For 5 folds and the 20 % validation split this is
    about 0.2 / (0.8 * 0.8) = 0.3125 (0.25 if the validation split is forgotten).
    """
    import math

    v = cv.params.get("valid_fraction") or 0.0
    n_test = [len(t) for t in cv.test_indices]
    n_fit = [len(tr) - (math.ceil(float(v) * len(tr)) if v else 0) for tr in cv.train_indices]
    if not n_test or min(n_fit) <= 0:
        raise ValueError("the cross-validation has no fitted cells; cannot compute n_test / n_train")
    return float(np.mean(n_test) / np.mean(n_fit))


def fmt(x: float, digits: int = 3) -> str:
    """A number for summaries ("nan" stays readable)."""
    return "nan" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"
