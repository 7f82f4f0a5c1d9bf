"""Evaluating channel rankings: remove-and-retrain and agreement with a planted truth.

* :func:`retrain_scores` -- cross-validated F1-macro / accuracy of models retrained
  on given channel subsets.  It is a thin loop over
  :func:`pxpermute.training.cross_validate` (the package's single retraining
  routine) that trains each distinct subset once; remove-and-retrain, panel
  comparison and leave-one-channel-out are built on it.
* :func:`remove_and_retrain` -- the paper's Fig. 4 protocol (Shetab Boushehri et
  al., Cell Reports Methods 2024): for each method's ranking remove the least
  important channel, retrain, repeat; a ranking is better the longer the
  retrained models keep their F1-macro.  Summarized, as published, by the
  average F1-macro over the curve.
* :func:`score_ranking` / :func:`score_rankings` -- Spearman correlation with the
  planted relevance of a synthetic data set and top-k hit rate.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .datasets.base import GroundTruth, IFCDataset, resolve_channels
from .result import ImportanceResult

__all__ = [
    "retrain_scores",
    "remove_and_retrain",
    "ROARResult",
    "ranking_channels",
    "score_ranking",
    "score_rankings",
]


def _as_dataset(dataset: Any) -> IFCDataset:
    from .training import _as_dataset as as_ds

    return as_ds(dataset)


def _t_interval(values: np.ndarray) -> tuple[float, float, float, float]:
    """mean, std (ddof=1), 95 % t-interval low/high over the values (NaN interval for n < 2)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (np.nan,) * 4
    mean = float(v.mean())
    if v.size < 2:
        return mean, 0.0, np.nan, np.nan
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, v.size - 1) * std / np.sqrt(v.size))
    return mean, std, mean - half, mean + half


# -----------------------------------------------------------------------------
# retraining on channel subsets
# -----------------------------------------------------------------------------
def retrain_scores(
    dataset: Any,
    channel_subsets: Mapping[str, Sequence[int | str]] | Sequence[Sequence[int | str]],
    *,
    n_splits: int = 5,
    random_state: int | None = 42,
    per_class: bool = False,
    return_cv: bool = False,
    keep_models: bool = False,
    progress: bool = True,
    **train_kwargs: Any,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, Any]]:
    """Cross-validated scores of models retrained on each channel subset.

    Each subset is put in the data set's channel order and trained once with
    :func:`pxpermute.training.cross_validate` (same folds for every subset, because
    the folds depend only on ``random_state`` and the labels, so scores are paired
    by fold across subsets); subsets listed twice reuse the first training.

    Parameters
    ----------
    dataset : IFCDataset or (images, labels)
    channel_subsets : mapping label -> channels, or sequence of channel lists
        Channels by name or index.  Without labels, each subset is labelled by
        its comma-joined channel names.
    n_splits : int, default 5
        Cross-validation folds.
    random_state : int or None, default 42
        Seed of the folds and of training.
    per_class : bool, default False
        Add one column ``f1[<class>]`` per class.
    return_cv : bool, default False
        Also return the :class:`~pxpermute.training.CVResult` of every distinct
        channel set (keyed by its ``channels`` string): held-out predictions,
        fold indices, per-class F1.
    keep_models : bool, default False
        Keep the fitted networks in those CVResults (``models``); by default they
        are dropped (replaced by ``None``) as soon as a subset is scored, so memory does not grow with
        the number of subsets (one ResNet18 per fold and subset adds up quickly).
    progress : bool, default True
        tqdm bar over the distinct subsets.
    **train_kwargs
        Fixed hyper-parameters for every retraining, passed to
        :func:`~pxpermute.training.cross_validate` (``model``, ``max_epochs``,
        ``batch_size``, ``valid_fraction`` ...).

    Returns
    -------
    pandas.DataFrame
        One row per (subset, fold): ``subset``, ``fold``, ``n_channels``,
        ``channels`` (comma-joined names, data-set order), ``f1_macro``,
        ``accuracy``, ``n_test`` (and ``f1[<class>]`` columns).  With
        ``return_cv=True``: ``(frame, {channels string: CVResult})``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((40, 3, 16, 16)).astype("float32"); y = np.arange(40) % 2
    >>> x[y == 1, 0, :8] += 1
    >>> df = retrain_scores((x, y), {"all": [0, 1, 2], "ch0": [0]}, n_splits=2, model="small_cnn",
    ...                     model_kwargs={"width": 4}, max_epochs=1, progress=False)
    >>> df[["subset", "fold", "n_channels"]].values.tolist()
    [['all', 0, 3], ['all', 1, 3], ['ch0', 0, 1], ['ch0', 1, 1]]
    """
    from .training import cross_validate

    ds = _as_dataset(dataset)
    if isinstance(channel_subsets, Mapping):
        items = [(str(k), v) for k, v in channel_subsets.items()]
    elif isinstance(channel_subsets, (list, tuple)):
        items = [(None, v) for v in channel_subsets]
    else:
        raise TypeError(
            "channel_subsets must be a mapping label -> channels or a list of channel lists; "
            f"got {type(channel_subsets).__name__}"
        )
    if not items:
        raise ValueError("channel_subsets is empty")
    canon: list[tuple[str, tuple[int, ...]]] = []
    for label, subset in items:
        if isinstance(subset, (str, int, np.integer)):
            subset = [subset]
        idx = tuple(sorted(resolve_channels(list(subset), ds.channel_names)))
        if not idx:
            raise ValueError(f"channel subset {label or subset!r} is empty; every model needs at least one channel")
        names = ",".join(ds.channel_names[i] for i in idx)
        canon.append((label if label is not None else names, idx))

    distinct = list(dict.fromkeys(idx for _, idx in canon))
    results: dict[tuple[int, ...], Any] = {}
    iterator: Any = distinct
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(distinct, desc="retraining channel subsets", unit="subset")
    for idx in iterator:
        cv = cross_validate(ds, n_splits=n_splits, channels=list(idx), random_state=random_state,
                            progress=False, **train_kwargs)
        if not keep_models and hasattr(cv, "models"):
            cv = dataclasses.replace(cv, models=[None] * len(cv.models))
        results[idx] = cv

    rows = []
    for label, idx in canon:
        cv = results[idx]
        names = ",".join(ds.channel_names[i] for i in idx)
        for k in range(len(cv.f1_macro)):
            row = {
                "subset": label,
                "fold": k,
                "n_channels": len(idx),
                "channels": names,
                "f1_macro": float(cv.f1_macro[k]),
                "accuracy": float(cv.accuracy[k]),
                "n_test": int(cv.test_indices[k].size),
            }
            if per_class:
                for c, cname in enumerate(cv.class_names):
                    row[f"f1[{cname}]"] = float(cv.f1_per_class[k, c])
            rows.append(row)
    frame = pd.DataFrame(rows)
    if return_cv:
        return frame, {",".join(ds.channel_names[i] for i in idx): cv for idx, cv in results.items()}
    return frame


# -----------------------------------------------------------------------------
# rankings
# -----------------------------------------------------------------------------
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


# -----------------------------------------------------------------------------
# remove and retrain
# -----------------------------------------------------------------------------
@dataclass
class ROARResult:
    """Outcome of :func:`remove_and_retrain`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (method, fold, n_removed): ``method``, ``fold``,
        ``n_removed``, ``n_channels``, ``channels`` (remaining, comma-joined, in
        data-set order), ``removed`` (the channel removed at this step; empty for
        0), ``f1_macro``, ``accuracy``.
    rankings : dict
        Method -> channel names from most to least important.
    channel_names : list of str
    params : dict
        ``n_splits``, ``steps``, ``random_state`` and the fixed training options.
    """

    table: pd.DataFrame
    rankings: dict[str, list[str]]
    channel_names: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    dataset_name: str | None = None

    @property
    def methods(self) -> list[str]:
        return list(self.rankings)

    def to_frame(self) -> pd.DataFrame:
        """The tidy table (a copy)."""
        return self.table.copy()

    def curve(self, metric: str = "f1_macro") -> pd.DataFrame:
        """Per (method, n_removed): mean, std and 95 % t-interval of ``metric`` over folds."""
        self._check_metric(metric)
        rows = []
        for (m, n), grp in self.table.groupby(["method", "n_removed"], sort=False):
            mean, std, lo, hi = _t_interval(grp[metric].to_numpy())
            rows.append({"method": m, "n_removed": int(n), "n_channels": int(grp["n_channels"].iloc[0]),
                         "mean": mean, "std": std, "ci_low": lo, "ci_high": hi, "n_folds": int(len(grp))})
        return pd.DataFrame(rows)

    def summary(self, metric: str = "f1_macro") -> pd.DataFrame:
        """The published summary: the average of ``metric`` over the removal curve, per method.

        For every fold the curve (all ``n_removed`` steps) is averaged; the table
        gives mean, standard deviation and the 95 % t-interval of these per-fold
        averages over folds, sorted from best to worst.
        """
        self._check_metric(metric)
        per_fold = self.table.groupby(["method", "fold"], sort=False)[metric].mean()
        rows = []
        for m in self.methods:
            mean, std, lo, hi = _t_interval(per_fold.loc[m].to_numpy())
            rows.append({"method": m, "mean": mean, "std": std, "ci_low": lo, "ci_high": hi,
                         "n_folds": int(per_fold.loc[m].size), "n_steps": int(self.table.loc[self.table.method == m, "n_removed"].nunique())})
        return pd.DataFrame(rows).sort_values("mean", ascending=False, ignore_index=True)

    def per_fold_average(self, metric: str = "f1_macro") -> pd.DataFrame:
        """Average of ``metric`` over the curve for every (method, fold): methods x folds."""
        self._check_metric(metric)
        return self.table.groupby(["method", "fold"], sort=False)[metric].mean().unstack("fold").loc[self.methods]

    def plot(self, ax=None, **kwargs):
        """Fig. 4-style curves (see :func:`pxpermute.plotting.plot_remove_and_retrain`)."""
        from .plotting import plot_remove_and_retrain

        return plot_remove_and_retrain(self, ax=ax, **kwargs)

    def title(self) -> str:
        p = self.params
        parts = ["remove-and-retrain"]
        if self.dataset_name:
            parts.append(f"data={self.dataset_name}")
        if p.get("model") is not None:
            parts.append(f"model={p['model']}")
        parts.append(f"{p.get('n_splits', '?')}-fold CV")
        if p.get("random_state") is not None:
            parts.append(f"seed={p['random_state']}")
        return ", ".join(parts)

    def _check_metric(self, metric: str) -> None:
        if metric not in ("f1_macro", "accuracy"):
            raise ValueError(f"metric must be 'f1_macro' or 'accuracy', got {metric!r}")

    def __repr__(self) -> str:
        s = self.summary()
        best = ", ".join(f"{r.method} {r['mean']:.3f}" for _, r in s.iterrows())
        return f"ROARResult({self.title()}; mean F1-macro over the curve: {best})"


def remove_and_retrain(
    dataset: Any,
    rankings: Mapping[str, Any],
    *,
    n_splits: int = 5,
    steps: Sequence[int] | None = None,
    include_random: bool = True,
    random_state: int | None = 42,
    progress: bool = True,
    **train_kwargs: Any,
) -> ROARResult:
    """Remove channels from least to most important, retraining at every step (Fig. 4 of the paper).

    For every method and every ``n_removed`` in ``steps``, the ``n_removed``
    channels the method ranks lowest are dropped and a model is trained from
    scratch on the remaining ones with fixed hyper-parameters, in stratified
    ``n_splits``-fold cross-validation.  All retraining goes through
    :func:`retrain_scores` (i.e. :func:`~pxpermute.training.cross_validate`);
    a channel set that several methods (or steps) share is trained once, and all
    methods see the same folds.

    Parameters
    ----------
    dataset : IFCDataset or (images, labels)
        The data to retrain on (with the channels the rankings rank).
    rankings : mapping name -> ranking
        Each ranking is an :class:`~pxpermute.ImportanceResult` or a list of
        channel names/indices, most important first, containing every channel once.
    n_splits : int, default 5
        Cross-validation folds.
    steps : sequence of int, optional
        Numbers of removed channels to evaluate; default ``0 .. C-1`` (all
        channels down to the single most important one), as published.
    include_random : bool, default True
        Add a ``"Random"`` ranking (a random permutation drawn with ``random_state``).
    random_state : int or None, default 42
        Seed of the folds, of training and of the random ranking.
    progress : bool, default True
        tqdm bar over the distinct channel sets.
    **train_kwargs
        Fixed training options for every retraining (``model``, ``model_kwargs``,
        ``max_epochs``, ``batch_size`` ...), see :func:`~pxpermute.training.cross_validate`.

    Returns
    -------
    ROARResult
        ``table`` (tidy: method, fold, n_removed, n_channels, channels, removed,
        f1_macro, accuracy), ``curve()``, ``summary()`` (mean F1-macro over the
        curve: mean ± std and 95 % CI over folds) and ``plot()``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((40, 3, 16, 16)).astype("float32"); y = np.arange(40) % 2
    >>> x[y == 1, 0, :8] += 1
    >>> roar = remove_and_retrain((x, y), {"truth": ["ch0", "ch1", "ch2"]}, n_splits=2, model="small_cnn",
    ...                           model_kwargs={"width": 4}, max_epochs=1, progress=False)
    >>> sorted(roar.table.method.unique()), roar.table.n_removed.unique().tolist()
    (['Random', 'truth'], [0, 1, 2])
    """
    ds = _as_dataset(dataset)
    if not isinstance(rankings, Mapping):
        raise TypeError(f"rankings must be a mapping method name -> ranking, got {type(rankings).__name__}")
    if not rankings and not include_random:
        raise ValueError("no rankings given (and include_random=False)")
    names = list(ds.channel_names)
    C = len(names)
    orders: dict[str, list[str]] = {}
    for method, ranking in rankings.items():
        try:
            orders[str(method)] = ranking_channels(ranking, names)
        except (ValueError, TypeError) as err:
            raise type(err)(f"ranking {method!r}: {err}") from None
    if include_random:
        if "Random" in orders:
            raise ValueError("a ranking is already called 'Random'; rename it or set include_random=False")
        rng = np.random.default_rng(random_state)
        orders["Random"] = [names[i] for i in rng.permutation(C)]
    if steps is None:
        step_list = list(range(C))
    else:
        step_list = sorted({int(s) for s in steps})
        bad = [s for s in step_list if not 0 <= s <= C - 1]
        if bad:
            raise ValueError(f"steps must lie in [0, {C - 1}] (at least one channel must remain); got {bad}")
        if not step_list:
            raise ValueError("steps is empty")

    subsets: dict[str, list[str]] = {}
    plan: list[tuple[str, int, str, str]] = []  # (method, n_removed, subset key, removed channel)
    for method, order in orders.items():
        for n in step_list:
            keep = order[: C - n]
            key = ",".join(c for c in names if c in keep)
            subsets[key] = keep
            plan.append((method, n, key, order[C - n] if n > 0 else ""))
    scores = retrain_scores(ds, subsets, n_splits=n_splits, random_state=random_state, progress=progress,
                            **train_kwargs)
    by_subset = {k: g for k, g in scores.groupby("subset", sort=False)}
    rows = []
    for method, n, key, removed in plan:
        grp = by_subset[key]
        for _, r in grp.iterrows():
            rows.append({"method": method, "fold": int(r.fold), "n_removed": n, "n_channels": C - n,
                         "channels": r.channels, "removed": removed, "f1_macro": r.f1_macro, "accuracy": r.accuracy})
    table = pd.DataFrame(rows, columns=["method", "fold", "n_removed", "n_channels", "channels", "removed",
                                        "f1_macro", "accuracy"])
    params = {"n_splits": int(n_splits), "steps": step_list, "random_state": random_state,
              "n_trainings": int(len(subsets))}
    params.update({k: v for k, v in train_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))})
    return ROARResult(table=table, rankings=orders, channel_names=names, params=params, dataset_name=ds.name)


# -----------------------------------------------------------------------------
# agreement with a planted truth
# -----------------------------------------------------------------------------
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
        from .datasets.synthetic import expected_relevance

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
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= C:
        raise ValueError(f"k must be an int in [1, {C}], got {k!r}")
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
