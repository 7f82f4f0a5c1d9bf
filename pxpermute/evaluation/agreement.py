"""Agreement of a channel ranking with a known one (the planted relevance of synthetic data).

* :func:`ranking_channels` -- a ranking in any supported form (an importance
  result, or channel names / indices) as channel names, most important first.
* :func:`score_ranking` / :func:`score_rankings` -- Spearman correlation with the
  planted relevance of a synthetic data set and the top-k hit rate.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._validation import check_int
from ..datasets.base import GroundTruth, IFCDataset, resolve_channels
from ..result import ImportanceResult

__all__ = ["ranking_channels", "score_ranking", "score_rankings"]


def ranking_channels(ranking: Any, channel_names: Sequence[str]) -> list[str]:
    """Channel names from most to least important for a ranking given in any supported form.

    ``ranking`` is an :class:`~pxpermute.ImportanceResult` (its ``ranking``), or a
    sequence of channel names / indices (most important first) that contains every
    channel of ``channel_names`` exactly once.

    Examples
    --------
    >>> ranking_channels([2, "A", 1], ["A", "B", "C"])
    ['C', 'A', 'B']
    """
    names = list(channel_names)
    if isinstance(ranking, ImportanceResult):
        if ranking.groups:
            raise ValueError("a ranking of channel groups cannot be used here; rank single channels")
        order = list(ranking.ranked_channels)
        unknown = [c for c in order if c not in names]
        if unknown:
            raise ValueError(f"the result scores channels {unknown} that the data set does not have ({names})")
    elif isinstance(ranking, (str, bytes)) or not hasattr(ranking, "__iter__"):
        raise TypeError(
            "a ranking must be an ImportanceResult or a sequence of channel names/indices (most important first); "
            f"got {type(ranking).__name__}"
        )
    else:
        order = [names[i] for i in resolve_channels(list(ranking), names)]
    missing = [c for c in names if c not in order]
    if missing:
        raise ValueError(f"the ranking must contain every channel once; missing {missing}")
    return order


def _relevance(ground_truth: Any, perturbation: str | None) -> tuple[np.ndarray, list[str] | None]:
    if isinstance(ground_truth, IFCDataset):
        if ground_truth.ground_truth is None:
            raise ValueError(f"data set {ground_truth.name!r} has no planted ground truth (only synthetic data do)")
        names = list(ground_truth.channel_names)
        ground_truth = ground_truth.ground_truth
    else:
        names = None
    if isinstance(ground_truth, GroundTruth):
        if perturbation is None:
            return np.asarray(ground_truth.relevance, float), names
        from ..datasets.synthetic import expected_relevance

        return expected_relevance(ground_truth, perturbation=perturbation), names
    rel = np.asarray(ground_truth, dtype=float)
    if rel.ndim != 1 or rel.size < 2 or not np.isfinite(rel).all():
        raise ValueError(f"ground_truth must be a GroundTruth, a synthetic IFCDataset or a finite 1-D relevance "
                         f"array with >= 2 channels; got shape {rel.shape}")
    return rel, names


def score_ranking(
    ranking: Any,
    ground_truth: Any,
    *,
    k: int | None = None,
    channel_names: Sequence[str] | None = None,
    perturbation: str | None = None,
) -> dict[str, float]:
    """How well a channel ranking recovers the planted relevance of synthetic data.

    Parameters
    ----------
    ranking : ImportanceResult, or sequence of channel names / indices
        An importance result (its importance values are correlated) or an
        order, most important first.
    ground_truth : GroundTruth, synthetic IFCDataset, or array of relevance per channel
    k : int, optional
        Size of the top set; default: the number of channels with planted
        relevance > 0.
    channel_names : sequence of str, optional
        Channel names of the truth (default: from the data set, or those of the
        result); needed to match a ranking by name to a bare array.
    perturbation : {"pixel", "sample", "fill"}, optional
        Compare with the relevance this perturbation can see
        (:func:`pxpermute.datasets.synthetic.expected_relevance`; ``"pixel"``
        zeroes intensity-only channels).  Default: the full planted relevance.

    Returns
    -------
    dict
        ``spearman`` (rank correlation between importance -- or reversed rank
        position -- and relevance, ties averaged), ``top_k_hit_rate`` (fraction of
        the method's top-k channels whose relevance is at least the k-th largest
        planted relevance; ties at the cut-off count as hits) and ``k``.

    Examples
    --------
    >>> score_ranking(["A", "B", "C"], [0.9, 0.5, 0.0], channel_names=["A", "B", "C"])
    {'spearman': 1.0, 'top_k_hit_rate': 1.0, 'k': 2}
    """
    return _score_ranking(ranking, ground_truth, k, channel_names, perturbation)[0]


def _score_ranking(ranking: Any, ground_truth: Any, k: int | None, channel_names: Sequence[str] | None,
                   perturbation: str | None) -> tuple[dict[str, float], list[str]]:
    rel, gt_names = _relevance(ground_truth, perturbation)
    C = rel.size
    if channel_names is not None:
        names = list(channel_names)
    elif gt_names is not None:
        names = gt_names
    elif isinstance(ranking, ImportanceResult):
        names = list(ranking.channel_names)
    else:
        names = [f"ch{i}" for i in range(C)]
    if len(names) != C:
        raise ValueError(f"{len(names)} channel names for a relevance of {C} channels")
    if isinstance(ranking, ImportanceResult):
        if list(ranking.channel_names) != names:
            missing = set(names) ^ set(ranking.channel_names)
            if missing:
                raise ValueError(f"the result's channels {ranking.channel_names} do not match the truth's {names}")
        lookup = dict(zip(ranking.channel_names, ranking.importance))
        score = np.array([lookup[c] for c in names], float)
        order = [names.index(c) for c in ranking.ranked_channels]
    else:
        order_names = ranking_channels(ranking, names)
        order = [names.index(c) for c in order_names]
        score = np.empty(C)
        score[order] = np.arange(C, 0, -1, dtype=float)  # most important gets the highest score
    if k is None:
        k = int((rel > 0).sum()) or 1
    k = check_int(k, "k", low=1, high=C)
    if np.ptp(rel) == 0 or np.ptp(score) == 0:
        rho = float("nan")
    else:
        rho = float(stats.spearmanr(score, rel).statistic)
    cutoff = np.sort(rel)[::-1][k - 1]
    hits = sum(rel[i] >= cutoff for i in order[:k])
    return {"spearman": rho, "top_k_hit_rate": float(hits) / k, "k": int(k)}, [names[i] for i in order]


def score_rankings(
    rankings: Mapping[str, Any],
    ground_truth: Any,
    *,
    k: int | None = None,
    channel_names: Sequence[str] | None = None,
    perturbation: str | None = None,
) -> pd.DataFrame:
    """:func:`score_ranking` for several methods: one row per method.

    Columns ``method``, ``spearman``, ``top_k_hit_rate``, ``k`` and ``ranking``
    (channel names, most important first).

    Examples
    --------
    >>> score_rankings({"good": ["A", "B", "C"], "bad": ["C", "B", "A"]}, [0.9, 0.5, 0.0],
    ...                channel_names=["A", "B", "C"]).spearman.tolist()
    [1.0, -1.0]
    """
    if not isinstance(rankings, Mapping) or not rankings:
        raise ValueError("rankings must be a non-empty mapping method -> ranking")
    rows = []
    for method, ranking in rankings.items():
        s, order = _score_ranking(ranking, ground_truth, k, channel_names, perturbation)
        rows.append({"method": str(method), **s, "ranking": ", ".join(order)})
    return pd.DataFrame(rows)
