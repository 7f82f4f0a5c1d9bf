"""Panel design: which stains does an experiment need, and how sure are we?

Tools that turn a channel ranking into an experimental decision, all built on
the package's single retraining routine :func:`pxpermute.training.cross_validate`
(through :class:`~pxpermute.evaluation.retrain.SubsetTrainer`: same folds for
every channel subset, because the folds depend only on the labels and
``random_state``; every distinct subset trained once):

* :func:`compare_panels` -- stain-free channels only vs stain-free + top-k
  stains of a ranking vs all channels (the paper's Fig. 5), with 95 % CIs over
  folds and a non-inferiority decision per panel.
* :func:`minimal_panel` -- the smallest set of stains shown to lose less than a
  margin of cross-validated F1-macro against all channels, tested along the
  ranking (and, for comparison, by greedy forward selection), with the trainings
  spent.
* :func:`nested_rankings` -- rankings computed on the training part of every
  outer fold, so the cells that judge a panel never chose it.
* :func:`multistage_design` -- more candidate markers than one instrument run
  holds: rank the markers run by run, keep the best of each, then rank the union
  in a final run (the paper's example: 20 markers, 10 per run, top 5 of each).
* :func:`paired_tests` -- the paired superiority tests across folds.

Statistics across folds
-----------------------
Cross-validation gives one score per fold, i.e. 5 numbers with the default
5 folds.  Confidence intervals are Student-t intervals over folds
(:func:`pxpermute.stats.t_interval`); they cover fold-to-fold variation (which
cells are held out, and the training run), nothing else -- not a new sample,
donor or instrument.

*Is a smaller panel as good?*  "Not significantly below all channels" does
not answer this: with 5 folds a panel truly 0.028 F1 worse passes that reading
most of the time.  The decision is **non-inferiority at a margin** chosen before
looking (:func:`pxpermute.inference.noninferiority_test`): the panel is accepted
when the one-sided upper confidence bound of its loss is below the margin, and
is otherwise **"inconclusive"** (or "worse" when even the lower bound exceeds
the margin).  The bound uses the Nadeau & Bengio (2003) corrected resampled
t: CV training sets overlap, so fold scores are positively correlated and the
variance is inflated by ``1/J + n_test/n_train``, where ``n_train`` counts the
cells a model is *fitted* on -- the training part minus the validation split
used for early stopping (5 folds, 20 % validation: 0.2 / 0.64 = 0.3125, not
0.25).  The ratio is computed from the actual split sizes.

*Several panels.*  Nested panels (stain-free + top-K, ..., top-1, stain-free
only) are tested in a **fixed sequence** from the largest down, each at
``alpha``, stopping at the first panel not shown non-inferior
(:func:`pxpermute.inference.fixed_sequence`): the familywise error of all
"non-inferior" claims is at most ``alpha`` without adjustment.  The
superiority readings ("significantly below all channels") are Holm-adjusted.

*Where the ranking comes from.*  A ranking computed on the cells that later
judge its panels favours them.  ``ranking="pxpermute"`` (or any ranking
function) recomputes the ranking on each outer fold's training cells (nested
cross-validation, the default whenever the ranking can be recomputed).

The superiority tests of :func:`paired_tests`:

* paired t-test (``"ttest"``, one-sided: is the panel below all channels?);
* the Nadeau & Bengio corrected paired t-test (``"corrected_ttest"``, the default);
* Wilcoxon signed-rank test (``"wilcoxon"``, exact).  With 5 folds its smallest
  possible one-sided p-value is 1/32 = 0.031 (two-sided 0.0625), and with
  2 or 3 folds it can never fall below 0.05.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._progress import progress_bar
from .._protocol import (
    SavableResult,
    as_float,
    frame_from_bundle,
    frame_to_bundle,
    importance_from_bundle,
    importance_to_bundle,
)
from .._text import fill, glue, name_list, warning_text
from .._validation import check_choice, check_float, check_int
from ..datasets.base import IFCDataset, resolve_channels
from ..result import ImportanceResult
from ..stats import t_interval
from ._common import (
    as_dataset,
    check_n_splits,
    cv_test_train_ratio,
    fmt,
    model_label,
    names_of,
    ranked_stains,
    ranking_label,
)
from .retrain import SubsetTrainer

__all__ = [
    "paired_tests",
    "panel_decisions",
    "noninferiority_sequence",
    "NestedRanking",
    "nested_rankings",
    "PanelComparison",
    "compare_panels",
    "PanelSearch",
    "MinimalPanel",
    "minimal_panel",
    "MultiStageResult",
    "multistage_design",
]

TESTS = ("corrected_ttest", "ttest", "wilcoxon")


def _cv_results_to_bundle(cvs: Mapping[Any, Any], prefix: str) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    metas, arrays = [], {}
    for j, (key, cv) in enumerate(cvs.items()):
        m, a = cv._to_bundle(f"{prefix}.{j}")
        metas.append({"key": list(key) if isinstance(key, tuple) else key, "cv": m})
        arrays.update(a)
    return metas, arrays


def _cv_results_from_bundle(metas: Sequence[Mapping[str, Any]], arrays: Mapping[str, np.ndarray], prefix: str,
                            tuple_keys: bool) -> dict[Any, Any]:
    from ..training import CVResult

    out = {}
    for j, m in enumerate(metas):
        key = tuple(int(i) for i in m["key"]) if tuple_keys else m["key"]
        out[key] = CVResult._from_bundle(m["cv"], arrays, f"{prefix}.{j}")
    return out


# =============================================================================
# paired tests across folds
# =============================================================================
def paired_tests(
    reference: Sequence[float],
    other: Sequence[float],
    *,
    test_fraction: float | None = None,
    validation_fraction: float = 0.2,
    test_train_ratio: float | None = None,
    alternative: str = "greater",
) -> dict[str, float]:
    """Paired tests of per-fold scores: is ``reference`` higher than ``other``?

    Superiority tests: a small p-value is evidence that ``other`` is worse; a
    large one is *not* evidence that it is as good (use
    :func:`pxpermute.inference.noninferiority_test` for that question).

    Parameters
    ----------
    reference, other : sequence of float
        Per-fold scores on the same folds (e.g. all channels and a smaller panel).
    test_fraction : float, optional
        Held-out fraction per fold (default ``1 / n_folds``, k-fold CV).
    validation_fraction : float, default 0.2
        Share of each training part held out for early stopping (the package's
        ``valid_fraction``, 20 % by default; 0 if none): the model is fitted on
        ``(1 - test_fraction)(1 - validation_fraction)`` of the cells.
    test_train_ratio : float, optional
        ``n_test / n_train`` of the Nadeau & Bengio correction, given directly
        (e.g. from the actual split sizes; overrides the two fractions).  Default
        ``test_fraction / ((1 - test_fraction)(1 - validation_fraction))``:
        0.3125 for 5 folds with the 20 % validation split.
    alternative : {"greater", "two-sided"}
        ``"greater"``: one-sided, H1 reference > other.

    Returns
    -------
    dict
        ``mean_diff`` (reference - other), ``t``, ``p_ttest``, ``t_corrected``,
        ``p_corrected_ttest``, ``p_wilcoxon`` (NaN for fewer than 2 folds) and
        ``test_train_ratio`` (the ratio used).  When all differences are equal
        (zero variance) the t-tests return p = 0 for a positive and p = 1 for a
        non-positive difference (one-sided).

    Examples
    --------
    >>> out = paired_tests([0.9, 0.92, 0.91, 0.9, 0.93], [0.85, 0.9, 0.86, 0.84, 0.9])
    >>> out["mean_diff"] > 0 and out["p_ttest"] < 0.05, out["test_train_ratio"]
    (True, 0.3125)
    """
    a, b = np.asarray(reference, float), np.asarray(other, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"reference and other need the same 1-D shape (one score per fold); got {a.shape} and {b.shape}")
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")
    d = a - b
    n = d.size
    out = {"mean_diff": float(d.mean()) if n else float("nan"), "t": float("nan"), "p_ttest": float("nan"),
           "t_corrected": float("nan"), "p_corrected_ttest": float("nan"), "p_wilcoxon": float("nan"),
           "test_train_ratio": float("nan")}
    if n < 2:
        return out
    if test_train_ratio is None:
        frac = 1.0 / n if test_fraction is None else float(test_fraction)
        if not 0 < frac < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
        v = check_float(validation_fraction, "validation_fraction", low=0, high=1, closed="left")
        ratio = frac / ((1.0 - frac) * (1.0 - v))
    else:
        ratio = check_float(test_train_ratio, "test_train_ratio", low=0)
    out["test_train_ratio"] = round(float(ratio), 12)
    sd = d.std(ddof=1)
    mean = d.mean()

    def p_of(t: float) -> float:
        if alternative == "greater":
            return float(stats.t.sf(t, n - 1))
        return float(2 * stats.t.sf(abs(t), n - 1))

    if sd <= 1e-12 * max(1.0, abs(mean)):
        degenerate = 0.0 if (mean > 0 or (alternative == "two-sided" and mean != 0)) else 1.0
        out.update(t=float(np.sign(mean) * np.inf) if mean else 0.0, p_ttest=degenerate,
                   t_corrected=float(np.sign(mean) * np.inf) if mean else 0.0, p_corrected_ttest=degenerate)
    else:
        t = mean / (sd / math.sqrt(n))
        tc = mean / math.sqrt((1.0 / n + ratio) * sd**2)
        out.update(t=float(t), p_ttest=p_of(t), t_corrected=float(tc), p_corrected_ttest=p_of(tc))
    if np.all(d == 0):
        out["p_wilcoxon"] = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["p_wilcoxon"] = float(stats.wilcoxon(d, alternative=alternative).pvalue)
    return out


def _holm(p: Sequence[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (familywise error under any dependence); NaN stays NaN."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m:
        vals = p[ok]
        order = np.argsort(vals, kind="stable")
        adj = np.maximum.accumulate((m - np.arange(m)) * vals[order])
        res = np.empty(m)
        res[order] = np.minimum(adj, 1.0)
        out[ok] = res
    return out


def panel_decisions(
    reference: Sequence[float],
    panels: Mapping[str, Sequence[float]],
    *,
    margin: float,
    alpha: float = 0.05,
    test_train_ratio: float,
    test: str = "corrected_ttest",
) -> pd.DataFrame:
    """The panel decision of :func:`compare_panels` and :func:`minimal_panel`, from per-fold scores.

    ``panels`` maps panel names to per-fold scores on the same folds as
    ``reference`` (all channels), **in the order of the fixed sequence**
    (nested panels from the largest down).  For each panel: the superiority
    tests of :func:`paired_tests` (the ``test`` p-value Holm-adjusted over the
    panels -> ``significant``), the non-inferiority test at ``margin``
    (:func:`pxpermute.inference.noninferiority_test`: ``ni_upper``,
    ``ni_lower``, ``ni_p``, ``ni_outcome``), and ``fixed_sequence``: the
    decision -- ``"non-inferior"``, ``"inconclusive"`` (tested, not shown) or
    ``"not tested"`` (after the first panel not shown non-inferior).  The
    familywise error of the "non-inferior" decisions is at most ``alpha``.

    Examples
    --------
    >>> ref = [0.90, 0.91, 0.92, 0.90, 0.91]
    >>> out = panel_decisions(ref, {"top-2": [0.899, 0.909, 0.919, 0.9, 0.909], "top-1": [0.8, 0.85, 0.8, 0.82, 0.8]},
    ...                       margin=0.02, test_train_ratio=0.3125)
    >>> out["fixed_sequence"].tolist()
    ['non-inferior', 'inconclusive']
    """
    check_choice(test, "test", TESTS)
    ref = np.asarray(reference, float)
    rows = [dict(panel=name, **paired_tests(ref, np.asarray(sc, float), test_train_ratio=test_train_ratio), test=test)
            for name, sc in panels.items()]
    out = pd.DataFrame(rows)
    if len(out):
        ni = noninferiority_sequence(ref, panels, margin=margin, alpha=alpha, test_train_ratio=test_train_ratio)
        for key in ("ni_upper", "ni_lower", "ni_p", "ni_outcome"):
            out[key] = [r[key] for r in ni]
        out["p_holm"] = _holm(out[f"p_{test}"].to_numpy(float))
        out["significant"] = [bool(np.isfinite(p) and p < alpha) for p in out["p_holm"]]
        out["fixed_sequence"] = [r["decision"] for r in ni]
    return out


def noninferiority_sequence(
    reference: Sequence[float],
    panels: Mapping[str, Sequence[float]],
    *,
    margin: float,
    alpha: float = 0.05,
    test_train_ratio: float,
) -> list[dict[str, Any]]:
    """The decision alone: non-inferiority of each panel, tested in the given (fixed) order.

    One dict per panel, in order: ``panel``, ``ni_upper``, ``ni_lower``, ``ni_p``,
    ``ni_outcome`` (the panel's own test) and ``decision`` (``"non-inferior"``,
    ``"inconclusive"``, ``"not tested"``; familywise error <= alpha).
    """
    from ..inference import fixed_sequence, noninferiority_test

    ref = np.asarray(reference, float)
    rows = []
    for name, sc in panels.items():
        ni = noninferiority_test(ref, np.asarray(sc, float), margin=margin, test_train_ratio=test_train_ratio,
                                 alpha=alpha)
        rows.append(dict(panel=name, ni_upper=ni["upper"], ni_lower=ni["lower"], ni_p=ni["p_value"],
                         ni_outcome=ni["outcome"]))
    words = {"rejected": "non-inferior", "not rejected": "inconclusive", "not tested": "not tested"}
    for r, o in zip(rows, fixed_sequence([r["ni_p"] for r in rows], alpha=alpha)):
        r["decision"] = words[o["outcome"]]
    return rows


# =============================================================================
# rankings computed without the judged cells (nested cross-validation)
# =============================================================================
@dataclass(repr=False)
class NestedRanking:
    """Channel rankings computed on the training part of every outer fold (nested cross-validation).

    A ranking that chose a panel must not have seen the cells that judge the
    panel, or the comparison favours the panel (selection on the test data).
    ``fold_rankings[f]`` was computed only from the training cells of outer
    fold ``f``, i.e. never from ``test_indices[f]``; :func:`compare_panels` and
    :func:`minimal_panel` build fold ``f``'s panels from it and judge them on
    ``test_indices[f]``.

    Attributes
    ----------
    fold_rankings : list of list of str
        Per outer fold: channel names, most important first.
    test_indices : list of np.ndarray
        The outer folds' test cells (stratified k-fold with ``random_state``,
        the folds of :func:`~pxpermute.training.cross_validate`).
    n_splits : int
    random_state : int
    info : dict
        ``method``, ``n_trainings`` (spent on the rankings), ``seconds``.
    """

    fold_rankings: list[list[str]]
    test_indices: list[np.ndarray]
    n_splits: int
    random_state: int
    info: dict[str, Any] = field(default_factory=dict)

    def consensus(self) -> list[str]:
        """All channels ordered by their mean rank over the folds' rankings (the panel to report)."""
        names = list(dict.fromkeys(c for r in self.fold_rankings for c in r))
        pos = {c: [r.index(c) if c in r else len(r) for r in self.fold_rankings] for c in names}
        return sorted(names, key=lambda c: (float(np.mean(pos[c])), names.index(c)))

    def __repr__(self) -> str:
        return fill(f"NestedRanking({self.n_splits} outer folds, method={self.info.get('method')}, "
                    f"consensus {name_list(self.consensus()[:5])})")


def _pxpermute_ranking(train_part: IFCDataset, *, inner_splits: int, n_repeats: int, random_state: int,
                       train_kwargs: Mapping[str, Any]) -> ImportanceResult:
    """The built-in ranking of a training part: inner CV, PXPermute on each inner held-out fold."""
    from .crossval import cv_importance

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*importance exactly 0.*")
        return cv_importance(train_part, n_splits=inner_splits, n_repeats=n_repeats, random_state=random_state,
                             **dict(train_kwargs))


def _names_of_ranking(res: Any, ds: IFCDataset) -> list[str]:
    if isinstance(res, ImportanceResult):
        names = list(res.ranked_channels)
    elif isinstance(res, (str, bytes)) or not isinstance(res, (Sequence, np.ndarray, pd.Index, pd.Series)):
        raise TypeError(f"a ranking function must return an ImportanceResult or a list of channels, got "
                        f"{type(res).__name__}")
    else:
        names = [ds.channel_names[i] for i in resolve_channels(list(res), ds.channel_names)]
    unknown = [n for n in names if n not in ds.channel_names]
    if unknown:
        raise ValueError(f"the ranking scores channels {unknown} that the data set does not have")
    return names


def nested_rankings(
    dataset: IFCDataset,
    ranking_fn: str | Callable[[IFCDataset], Any] = "pxpermute",
    *,
    n_splits: int = 5,
    random_state: int | None = 42,
    inner_splits: int = 2,
    n_repeats: int = 20,
    progress: bool = True,
    **train_kwargs: Any,
) -> NestedRanking:
    """Rank the channels once per outer fold, from that fold's training cells only.

    Parameters
    ----------
    dataset : IFCDataset
    ranking_fn : "pxpermute" or callable ``IFCDataset -> ImportanceResult | list of channels``
        ``"pxpermute"``: :func:`~pxpermute.evaluation.cv_importance` on the training
        part with ``inner_splits`` inner folds and ``n_repeats`` permutations
        (``inner_splits`` trainings per outer fold, on ``1 - 1/n_splits`` of the
        cells).  A callable receives the training part (``dataset.subset``) and
        must not see anything else.
    n_splits, random_state
        The outer folds: the same stratified split as
        :func:`~pxpermute.training.cross_validate` with these values (``None``
        draws one seed, recorded).
    inner_splits : int, default 2
    n_repeats : int, default 20
        k of the built-in ranking.
    progress : bool, default True
    **train_kwargs
        Training options of the built-in ranking (``model``, ``max_epochs`` ...).

    Returns
    -------
    NestedRanking
    """
    from sklearn.model_selection import StratifiedKFold

    from .._validation import check_random_state

    ds = as_dataset(dataset, "nested_rankings")
    n_splits = check_n_splits(n_splits)
    if random_state is None:
        random_state = int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))
    random_state = check_random_state(random_state)
    if isinstance(ranking_fn, str):
        check_choice(ranking_fn, "ranking_fn", ("pxpermute",))
        inner_splits = check_int(inner_splits, "inner_splits", low=2)
        n_repeats = check_int(n_repeats, "n_repeats", low=1)
        fn: Callable[[IFCDataset], Any] = partial(_pxpermute_ranking, inner_splits=inner_splits, n_repeats=n_repeats,
                                                  random_state=random_state, train_kwargs=train_kwargs)
        method = f"pxpermute (cv_importance, {inner_splits} inner folds, k={n_repeats})"
    elif callable(ranking_fn):
        fn, method = ranking_fn, getattr(ranking_fn, "__name__", type(ranking_fn).__name__)
    else:
        raise TypeError(f"ranking_fn must be 'pxpermute' or a callable IFCDataset -> ranking, got {ranking_fn!r}")
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    split = list(skf.split(np.zeros(len(ds)), ds.labels))
    t0 = time.perf_counter()
    rankings, trainings = [], 0
    for tr, _ in progress_bar(split, progress=progress, desc="rankings per outer fold"):
        res = fn(ds.subset(np.sort(tr)))
        trainings += int(res.info.get("n_trainings", 0)) if isinstance(res, ImportanceResult) else 0
        rankings.append(_names_of_ranking(res, ds))
    return NestedRanking(fold_rankings=rankings, test_indices=[np.asarray(te) for _, te in split], n_splits=n_splits,
                         random_state=random_state,
                         info={"method": method, "n_trainings": trainings, "seconds": time.perf_counter() - t0,
                               "data": ds.name})


@dataclass
class _Ranking:
    """A resolved ranking: per fold, the stains in order (the same list in every fold unless nested)."""

    fold_stains: list[list[int]]
    report_stains: list[int]
    nested: bool
    label: str
    nested_ranking: NestedRanking | None = None


def _resolve_ranking(ds: IFCDataset, ranking: Any, *, nested: bool | None, n_splits: int, random_state: Any,
                     inner_splits: int, n_repeats: int, progress: bool, train_kwargs: Mapping[str, Any],
                     fn_name: str) -> tuple[_Ranking, Any]:
    """Fold-wise stains of a ranking; computes nested rankings where the ranking can be recomputed."""
    recomputable = isinstance(ranking, (NestedRanking, str)) or (callable(ranking) and not isinstance(
        ranking, (ImportanceResult, Sequence, np.ndarray, pd.Index, pd.Series)))
    if nested is None:
        nested = recomputable
    if isinstance(ranking, str) and ranking != "pxpermute":
        raise TypeError(f"ranking must be an ImportanceResult, a sequence of channels, 'pxpermute', a function or a "
                        f"NestedRanking, got the string {ranking!r}")
    if nested and not recomputable:
        raise ValueError(f"nested=True needs a ranking that {fn_name}() can recompute per outer fold: 'pxpermute', a "
                         "function IFCDataset -> ranking, or a NestedRanking; a fixed ranking was given")
    if isinstance(ranking, NestedRanking):
        if not nested:
            raise ValueError("a NestedRanking is only used nested; pass nested=None or True")
        if ranking.n_splits != n_splits:
            raise ValueError(f"the NestedRanking has {ranking.n_splits} outer folds, but n_splits={n_splits}")
        if random_state is not None and int(random_state) != ranking.random_state:
            raise ValueError(f"the NestedRanking's folds use random_state={ranking.random_state}, but "
                             f"random_state={random_state}; pass the same seed (or None to take the ranking's)")
        random_state = ranking.random_state
    if nested:
        if random_state is None:
            random_state = int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))
        nr = ranking if isinstance(ranking, NestedRanking) else nested_rankings(
            ds, ranking, n_splits=n_splits, random_state=random_state, inner_splits=inner_splits, n_repeats=n_repeats,
            progress=progress, **dict(train_kwargs))
        fold_stains = [ranked_stains(ds, r) for r in nr.fold_rankings]
        rk = _Ranking(fold_stains, ranked_stains(ds, nr.consensus()), True,
                      f"nested: {nr.info.get('method')} on each outer fold's training cells", nr)
        return rk, random_state
    if recomputable:  # a function, not nested: computed once on all cells (the judged ones included)
        fn = partial(_pxpermute_ranking, inner_splits=inner_splits, n_repeats=n_repeats,
                     random_state=random_state if random_state is not None else 0,
                     train_kwargs=train_kwargs) if isinstance(ranking, str) else ranking
        stains = ranked_stains(ds, _names_of_ranking(fn(ds), ds))
        return _Ranking([stains] * n_splits, stains, False, "computed on all cells (not nested)"), random_state
    stains = ranked_stains(ds, ranking)
    if isinstance(ranking, ImportanceResult) and ranking.info.get("data") not in (None, "") \
            and ranking.info.get("data") == ds.name:
        warnings.warn(warning_text(
            f"the ranking was computed on data named {ds.name!r}, like the data set it now judges: if these are "
            f"the same cells, the comparison favours the ranking's panels ({glue('selection on the test data')}). "
            "Pass ranking='pxpermute' or a ranking function for nested cross-validation."), stacklevel=3)
    return _Ranking([stains] * n_splits, stains, False, ranking_label(ranking)), random_state


class _Scores:
    """Per-fold scores of one panel (fixed or nested), with the channels used in each fold."""

    def __init__(self, f1: np.ndarray, acc: np.ndarray, channels: list[str], cvs: dict[str, Any], new: int) -> None:
        self.f1, self.acc, self.channels, self.cvs, self.new = f1, acc, channels, cvs, new


def _fit_panel(cache: SubsetTrainer, per_fold: list[list[int]], name: str, progress: bool) -> _Scores:
    """Train a panel whose channels may differ between folds (nested); one CV when they do not."""
    keys = [SubsetTrainer.key(s) for s in per_fold]
    if len(set(keys)) == 1:
        cv, new = cache.fit_many([keys[0]], progress=progress, desc=name)[0]
        return _Scores(np.asarray(cv.f1_macro, float), np.asarray(cv.accuracy, float),
                       [",".join(cv.channels)] * len(keys), {name: cv}, new)
    got = cache.fit_folds([(k, f) for f, k in enumerate(keys)], progress=progress, desc=name)
    f1 = np.array([cv.f1_macro[pos] for cv, pos, _ in got], float)
    acc = np.array([cv.accuracy[pos] for cv, pos, _ in got], float)
    chans = [",".join(cv.channels) for cv, _, _ in got]
    cvs = {f"{name} [fold {f}]": cv for f, (cv, _, _) in enumerate(got)}
    return _Scores(f1, acc, chans, cvs, sum(c for _, _, c in got))


FAMILY_NOTE = ("familywise: the non-inferiority claims are made by fixed-sequence testing (largest panel first, "
               "stain-free last, each at alpha, stop at the first panel not shown non-inferior), so the chance that "
               "any of them is false is at most alpha, without adjustment")


# =============================================================================
# 1. panel comparison
# =============================================================================
@dataclass(repr=False)
class PanelComparison(SavableResult):
    """Outcome of :func:`compare_panels`.

    The result protocol: :meth:`to_frame` (``scores``), :meth:`summary` (text),
    :meth:`statement`, :meth:`plot`, :meth:`save` / :meth:`load`.

    Attributes
    ----------
    scores : DataFrame
        Tidy, one row per (panel, fold): ``panel``, ``kind`` (``"stain-free"``,
        ``"top-k"``, ``"all"``), ``k``, ``n_channels``, ``channels`` (nested:
        the channels of that fold's panel), ``fold``, ``f1_macro``, ``accuracy``.
    panel_table : DataFrame
        One row per panel: mean, std and 95 % t-CI over folds of F1-macro and
        accuracy (also :meth:`summary_frame`).
    tests : DataFrame
        One row per smaller panel vs all channels, in the order of the fixed
        sequence (largest top-k first, stain-free last): ``mean_diff`` (all -
        panel, F1-macro), the three superiority p-values, ``p_holm`` (the chosen
        test's p, Holm-adjusted over the rows) and ``significant`` (``p_holm <
        alpha``: "significantly below all channels"), ``test_train_ratio``,
        the non-inferiority columns ``ni_upper``, ``ni_p``, ``ni_outcome`` and
        ``fixed_sequence`` -- the decision: ``"non-inferior"``,
        ``"inconclusive"`` or ``"not tested"``.
    cv_results : dict
        Panel name -> :class:`~pxpermute.training.CVResult` (nested top-k panels:
        ``"<panel> [fold f]"`` -> the one-fold CVResult; a loaded result has
        ``None`` in place of the models).
    info : dict
        Data, model, seed, folds, ranking provenance (``nested``,
        ``fold_rankings``), margin, alpha, trainings, seconds.
    """

    scores: pd.DataFrame
    panel_table: pd.DataFrame
    tests: pd.DataFrame
    cv_results: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Per-fold scores, one row per (panel, fold) (a copy of ``scores``)."""
        return self.scores.copy()

    def summary_frame(self) -> pd.DataFrame:
        """One row per panel: mean, std, 95 % t-interval over folds of F1-macro and accuracy (a copy)."""
        return self.panel_table.copy()

    def statement(self) -> str:
        """Plain-language verdict for every smaller panel, then the familywise claim."""
        lines = []
        i = self.info
        test, alpha, margin = i["test"], i["alpha"], i.get("margin")
        conf = f"{100 * (1 - alpha):g} %"
        ref = self.panel_table.set_index("panel").loc["all channels"]
        for _, row in self.tests.iterrows():
            head = (f"{row['panel']}: F1-macro {row['f1_macro_mean']:.3f} vs {ref['f1_macro_mean']:.3f} with all "
                    f"channels (loss {row['mean_diff']:+.3f}, one-sided {conf} upper bound {row['ni_upper']:+.3f})")
            d = row["fixed_sequence"]
            if d == "non-inferior":
                verdict = f"non-inferior at margin {margin:g} (p = {row['ni_p']:.3g})"
            elif d == "inconclusive":
                verdict = (f"inconclusive: not shown to lose less than {margin:g} (p = {row['ni_p']:.3g}); "
                           "no evidence of equivalence, nor of a loss")
                if row["ni_outcome"] == "worse":
                    verdict = f"loses more than the margin {margin:g} (lower bound above it)"
            else:
                verdict = "not tested (the sequence stopped at a larger panel): no conclusion"
            below = ("significantly below all channels" if row["significant"] else "not significantly below all "
                     "channels") + f" (Holm-adjusted {test} p = {row['p_holm']:.3g})"
            lines.append(f"{head}: {verdict}; {below}.")
        lines.append(f"({i.get('n_splits')} folds, alpha = {alpha}; {FAMILY_NOTE}. Ranking: {i.get('ranking')}.)")
        return fill("\n".join(lines))  # lines of at most 100 characters

    def summary(self) -> str:
        """Printable text: every panel's F1-macro with its 95 % CI over folds, then the verdicts."""
        t = self.panel_table
        width = max([len(str(p)) for p in t.panel] + [5])
        lines = [self.title(), f"F1-macro per panel, mean [95 % t-interval over {self.info.get('n_splits')} folds]:"]
        for r in t.itertuples():
            lines.append(f"  {r.panel:<{width}}  {fmt(r.f1_macro_mean)} [{fmt(r.f1_macro_ci_low)}, "
                         f"{fmt(r.f1_macro_ci_high)}]  channels: {r.channels}")
        lines.append(self.statement())
        return fill("\n".join(lines))  # lines of at most 100 characters

    def title(self) -> str:
        i = self.info
        return (f"{i.get('data')}: panel comparison, {i.get('n_splits')}-fold CV, model={i.get('model')}, "
                f"seed={i.get('random_state')}, ranking={i.get('ranking')}")

    def plot(self, ax=None, **kwargs):
        """Per-fold F1-macro and mean with 95 % CI per panel (see :func:`pxpermute.plotting.plot_panel_comparison`)."""
        from ..plotting import plot_panel_comparison

        return plot_panel_comparison(self, ax=ax, **kwargs)

    def __repr__(self) -> str:
        body = ", ".join(glue(f"{r.panel}={r.f1_macro_mean:.3f}") for r in self.panel_table.itertuples())
        return fill(f"PanelComparison({body})")

    # -- files -------------------------------------------------------------------
    def _to_bundle(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta: dict[str, Any] = {"info": self.info}
        arrays: dict[str, np.ndarray] = {}
        for name in ("scores", "panel_table", "tests"):
            meta[name], a = frame_to_bundle(getattr(self, name), f"{prefix}.{name}")
            arrays.update(a)
        meta["cv_results"], a = _cv_results_to_bundle(self.cv_results, f"{prefix}.cv")
        arrays.update(a)
        return meta, arrays

    @classmethod
    def _from_bundle(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str) -> PanelComparison:
        frames = {name: frame_from_bundle(meta[name], arrays, f"{prefix}.{name}")
                  for name in ("scores", "panel_table", "tests")}
        return cls(**frames, cv_results=_cv_results_from_bundle(meta["cv_results"], arrays, f"{prefix}.cv", False),
                   info=dict(meta["info"]))

def _summarize_scores(scores: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for panel, g in scores.groupby("panel", sort=False):
        chans = list(dict.fromkeys(g["channels"]))
        row = {"panel": panel, "kind": g["kind"].iloc[0], "k": g["k"].iloc[0], "n_channels": int(g["n_channels"].iloc[0]),
               "channels": chans[0] if len(chans) == 1 else " | ".join(g["channels"]), "n_folds": len(g)}
        for m in ("f1_macro", "accuracy"):
            t = t_interval(g[m].to_numpy(float))
            row.update({f"{m}_mean": t.mean, f"{m}_std": t.std, f"{m}_ci_low": t.low, f"{m}_ci_high": t.high})
        rows.append(row)
    return pd.DataFrame(rows)


def compare_panels(
    dataset: IFCDataset,
    ranking: Any,
    *,
    k: int | Sequence[int] = (1, 2, 3),
    n_splits: int = 5,
    random_state: int | None = 42,
    test: str = "corrected_ttest",
    alpha: float = 0.05,
    margin: float = 0.02,
    nested: bool | None = None,
    inner_splits: int = 2,
    n_repeats: int = 20,
    reuse: Any = None,
    n_jobs: int | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> PanelComparison:
    """Stain-free only vs stain-free + top-k stains vs all channels, in cross-validation.

    The paper's panel experiment (Fig. 5): can a few stains chosen by a ranking
    replace the full panel?  Every panel is trained and tested with
    :func:`~pxpermute.training.cross_validate` on the *same* folds, so the
    per-fold scores are paired.

    **The decision** is non-inferiority at ``margin``: a panel is accepted only
    when the one-sided ``1 - alpha`` upper bound of its loss against all channels
    (Nadeau-Bengio corrected resampled t, ``n_test / n_train`` from the actual
    split sizes, the validation split excluded from ``n_train``) lies below the
    margin.  The nested panels are tested in a **fixed sequence** -- top-k from
    the largest k down, then stain-free only -- each at ``alpha``, stopping at
    the first one not shown non-inferior: the familywise error of all
    "non-inferior" claims is at most ``alpha`` without adjustment.  A panel not
    shown non-inferior is **"inconclusive"**, which is not evidence of a loss.

    **The ranking** should not have seen the cells that judge it.  With
    ``ranking="pxpermute"`` or a ranking function (the default where possible,
    ``nested=None``), it is recomputed on the training part of every outer fold
    (nested cross-validation; :func:`nested_rankings`), and fold ``f``'s top-k
    panel is judged on fold ``f``'s test cells only: the scores then estimate the
    procedure "rank, keep the top k, retrain".  A fixed ranking (an
    ``ImportanceResult`` or a list) cannot be recomputed; if it came from these
    cells the comparison favours it.

    Parameters
    ----------
    dataset : IFCDataset
        Its ``stain_free`` flags mark the channels every panel keeps (brightfield,
        darkfield).  Without stain-free channels the stain-free-only panel is
        skipped (with a warning) and the top-k panels hold only stains.
    ranking : "pxpermute", callable, NestedRanking, ImportanceResult or sequence of channels
        ``"pxpermute"``: nested, :func:`~pxpermute.evaluation.cv_importance` with
        ``inner_splits`` folds and ``n_repeats`` on each outer training part
        (``n_splits x inner_splits`` extra trainings).  A callable
        ``IFCDataset -> ImportanceResult | list of channels`` is called on each
        outer training part.  A :class:`NestedRanking` reuses rankings computed
        before (same ``n_splits`` and seed).  Otherwise a fixed ranking, most
        important first.  Stain-free channels in it are ignored (they are in every
        panel); channels not in it are never picked.
    k : int or sequence of int, default (1, 2, 3)
        Numbers of top stains to add to the stain-free channels.
    n_splits : int, default 5
        Folds (stratified, shuffled with ``random_state``).
    random_state : int or None, default 42
        Seed of the folds and of every training (``None``: one seed is drawn and
        recorded in ``info``, the same for every panel).
    test : {"corrected_ttest", "ttest", "wilcoxon"}, default "corrected_ttest"
        Paired one-sided superiority test behind ``significant`` ("significantly
        below all channels"), Holm-adjusted over the smaller panels (all three
        p-values are reported; see the module docstring for their caveats).
    alpha : float, default 0.05
        Familywise level of the non-inferiority claims and of ``significant``.
    margin : float, default 0.02
        Largest acceptable loss of F1-macro, chosen before looking at the data.
    nested : bool, optional
        Rank on each outer fold's training part.  Default: whenever the ranking
        can be recomputed (``"pxpermute"``, a function, a NestedRanking).
    inner_splits : int, default 2
        Inner folds of the built-in ``"pxpermute"`` ranking.
    n_repeats : int, default 20
        k of the built-in ranking.
    reuse : PanelComparison, MinimalPanel or list of CVResult, optional
        Cross-validations already run on the same folds with the same seed and
        training options (e.g. a :func:`minimal_panel` result): panels found there
        are not trained again (a mismatch of seed, folds or options raises).
    n_jobs : int or None, default None
        Trainings in parallel through joblib (``-1``: all cores; a Dask cluster
        inside ``joblib.parallel_config(backend="dask")``); the results do not
        depend on it (seeds are fixed per training), see
        :func:`~pxpermute.training.run_trainings`.
    progress : bool, default True
        Progress bar counting finished trainings.
    **train_kwargs
        Passed to :func:`~pxpermute.training.cross_validate` (``model``,
        ``max_epochs``, ``batch_size``, ``valid_fraction`` ...) and to the
        built-in ranking.

    Returns
    -------
    PanelComparison
        ``scores`` (per fold), ``panel_table`` (mean, 95 % CI per panel), ``tests``
        (decisions vs all channels), ``summary()`` (text), ``statement()``,
        ``plot()``, ``save()``.

    Examples
    --------
    >>> from pxpermute.datasets.synthetic import make_synthetic
    >>> ds = make_synthetic("synapse", n_samples=200, image_size=16)
    >>> cmp = compare_panels(ds, "pxpermute", k=(1, 2), n_splits=2,  # doctest: +SKIP
    ...                      model="small_cnn", max_epochs=2)
    >>> print(cmp.statement())  # doctest: +SKIP
    """
    ds = as_dataset(dataset, "compare_panels")
    ks = [k] if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else list(k)
    if not ks:
        raise ValueError("k is empty; pass at least one number of top stains")
    for kk in ks:
        check_int(kk, "every k", low=1)
    check_choice(test, "test", TESTS)
    alpha = check_float(alpha, "alpha", low=0, high=1, closed="neither")
    margin = check_float(margin, "margin (F1 units)", low=0, high=1, closed="neither")
    n_splits = check_n_splits(n_splits)
    t0 = time.perf_counter()
    rk, random_state = _resolve_ranking(ds, ranking, nested=nested, n_splits=n_splits, random_state=random_state,
                                        inner_splits=inner_splits, n_repeats=n_repeats, progress=progress,
                                        train_kwargs=train_kwargs, fn_name="compare_panels")
    n_stains = min(len(s) for s in rk.fold_stains)
    if max(ks) > n_stains:
        raise ValueError(f"k={max(ks)} exceeds the {n_stains} stains in the ranking ({names_of(ds, rk.report_stains)})")
    sf = [i for i in range(ds.n_channels) if ds.stain_free[i]]
    panels: list[tuple[str, str, int | None, list[list[int]]]] = []
    if sf:
        panels.append(("stain-free", "stain-free", 0, [sf] * n_splits))
    else:
        warnings.warn(warning_text("the data set has no stain-free channel (dataset.stain_free is all False); "
                                   "the stain-free-only panel is skipped"), stacklevel=2)
    prefix = "stain-free + " if sf else ""
    for kk in sorted(set(int(x) for x in ks)):
        panels.append((f"{prefix}top-{kk}", "top-k", kk, [sf + s[:kk] for s in rk.fold_stains]))
    panels.append(("all channels", "all", None, [list(range(ds.n_channels))] * n_splits))

    cache = SubsetTrainer(ds, n_splits=n_splits, random_state=random_state, train_kwargs=train_kwargs, n_jobs=n_jobs)
    if reuse is not None:
        cache.reuse(reuse, n_splits)
    fixed = [p for p in panels if len({SubsetTrainer.key(s) for s in p[3]}) == 1]
    cache.fit_many([p[3][0] for p in fixed], progress=progress, desc="panels")  # one batch for the fixed panels
    if rk.nested_ranking is not None:
        ref_cv = cache.results[SubsetTrainer.key(range(ds.n_channels))]
        for a, b in zip(ref_cv.test_indices, rk.nested_ranking.test_indices):
            if not np.array_equal(np.sort(a), np.sort(b)):
                raise RuntimeError("the nested rankings were computed on other outer folds than the comparison's")
    varying = [(s, f) for p in panels if p not in fixed for f, s in enumerate(p[3])]
    if varying:  # nested top-k panels: one batch per fold
        cache.fit_folds(varying, progress=progress, desc="nested panels")
    fitted = {name: _fit_panel(cache, per_fold, name, False) for name, _, _, per_fold in panels}
    rows, cvs = [], {}
    for name, kind, kk, per_fold in panels:
        sc = fitted[name]
        cvs.update(sc.cvs)
        for f in range(n_splits):
            rows.append(dict(panel=name, kind=kind, k=kk, n_channels=len(SubsetTrainer.key(per_fold[f])),
                             channels=sc.channels[f], fold=f, f1_macro=float(sc.f1[f]), accuracy=float(sc.acc[f])))
    scores = pd.DataFrame(rows)
    panel_table = _summarize_scores(scores)
    ref_cv = cache.results[SubsetTrainer.key(range(ds.n_channels))]
    ratio = cv_test_train_ratio(ref_cv)
    ref = fitted["all channels"].f1
    # the fixed sequence: top-k from the largest k down, then stain-free only (the smallest nested panel)
    order = sorted([p for p in panels if p[1] == "top-k"], key=lambda p: -int(p[2])) + \
        [p for p in panels if p[1] == "stain-free"]
    dec = panel_decisions(ref, {p[0]: fitted[p[0]].f1 for p in order}, margin=margin, alpha=alpha,
                          test_train_ratio=ratio, test=test)
    meta = pd.DataFrame([dict(panel=name, kind=kind, k=kk, n_channels=len(SubsetTrainer.key(per_fold[0])),
                              f1_macro_mean=float(np.mean(fitted[name].f1))) for name, kind, kk, per_fold in order])
    tests = meta.merge(dec, on="panel", how="left") if len(meta) else pd.DataFrame()
    info = dict(data=ds.name, model=model_label(train_kwargs), random_state=cache.random_state, n_splits=n_splits,
                ranking=rk.label, nested=rk.nested, ranked_stains=names_of(ds, rk.report_stains),
                stain_free=names_of(ds, sf), test=test, alpha=alpha, margin=margin, test_train_ratio=ratio,
                valid_fraction=ref_cv.params.get("valid_fraction"), familywise=FAMILY_NOTE,
                n_trainings=cache.n_trainings, seconds=time.perf_counter() - t0)
    if rk.nested_ranking is not None:
        info.update(fold_rankings=[names_of(ds, s) for s in rk.fold_stains],
                    ranking_trainings=int(rk.nested_ranking.info.get("n_trainings", 0)))
    return PanelComparison(scores=scores, panel_table=panel_table, tests=tests, cv_results=cvs, info=info)


# =============================================================================
# 2. minimal panel
# =============================================================================
@dataclass
class PanelSearch:
    """One search strategy's path to a minimal panel.

    Attributes
    ----------
    strategy : str
        ``"ranking"`` or ``"greedy"``.
    stains, panel : list of str
        Chosen stains, and the full panel (stain-free channels + stains).
    found : bool
        Whether a panel with fewer stains than all of them was shown non-inferior.
    path : DataFrame
        Every panel evaluated, in the order tested: ``step``, ``n_stains``,
        ``added``, ``channels``, ``stains``, ``f1_mean``, ``f1_std``,
        ``ci_low``, ``ci_high``, ``loss`` (all channels - panel), ``ni_upper``
        (one-sided upper bound of the loss), ``ni_p``, ``ni_outcome``,
        ``non_inferior`` (the decision), ``chosen`` (greedy: the candidate kept
        at that step), ``cached`` (reused an earlier training of the same subset).
    n_trainings : int
        Model fits this strategy needed on its own (folds x panels evaluated).
    """

    strategy: str
    stains: list[str]
    panel: list[str]
    found: bool
    path: pd.DataFrame
    n_trainings: int


@dataclass(repr=False)
class MinimalPanel(SavableResult):
    """Outcome of :func:`minimal_panel`.

    The result protocol: :meth:`to_frame` (every evaluated panel of every
    strategy), :meth:`summary` (text), :meth:`plot`, :meth:`save` / :meth:`load`.

    Attributes
    ----------
    panel, stains : list of str
        The answer of the ranking search: the smallest panel shown non-inferior in
        the fixed sequence, or all channels when none was ("inconclusive").
    reference_score : float
        Mean CV F1-macro with all channels; ``threshold = reference_score - tolerance``.
    tolerance : float
        The non-inferiority margin (F1 units).
    searches : dict
        ``"ranking"`` (and ``"greedy"``) -> :class:`PanelSearch`.
    n_trainings : int
        Model fits actually run (all channels + every distinct panel, each
        ``n_splits`` times; panels shared by the searches are trained once).
    seconds : float
    cv_results : dict
        Channel tuple (dataset indices) -> CVResult (a loaded result has
        ``None`` in place of the models).
    info : dict
        ``decision`` ("non-inferior" or "inconclusive"), ``alpha``, ``nested``,
        ``fold_rankings``, ``familywise``, ...
    """

    panel: list[str]
    stains: list[str]
    reference_score: float
    threshold: float
    tolerance: float
    searches: dict[str, PanelSearch]
    n_trainings: int
    seconds: float
    cv_results: dict[tuple[int, ...], Any]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        """The non-inferiority margin (same as ``tolerance``)."""
        return self.tolerance

    @property
    def path(self) -> pd.DataFrame:
        """All evaluated panels of every strategy in one tidy table."""
        if not self.searches:
            return pd.DataFrame()
        return pd.concat([s.path.assign(strategy=name) for name, s in self.searches.items()], ignore_index=True)

    def to_frame(self) -> pd.DataFrame:
        """All evaluated panels of every strategy, one row each (same as :attr:`path`)."""
        return self.path

    def summary(self) -> str:
        """Printable text: the reference score, the margin and each strategy's answer with its cost."""
        i = self.info
        alpha = i.get("alpha", 0.05)
        lines = [self.title(),
                 f"all channels: F1-macro {fmt(self.reference_score)}; non-inferiority margin {self.tolerance:g} "
                 f"(alpha {alpha:g}); {self.n_trainings} trainings, {self.seconds:.0f} s in total"]
        for name, s in self.searches.items():
            if s.found:
                verdict = f"smallest panel shown non-inferior (loses less than {self.tolerance:g})"
            else:
                verdict = "inconclusive: no smaller panel shown non-inferior; keep all channels"
            extra = "" if name == "ranking" else "; exploratory: the search chose on the judged folds"
            lines.append(f"  {name:<8} stains {s.stains or '[]'} -> panel {s.panel} ({verdict}; "
                         f"{s.n_trainings} trainings on its own{extra})")
        if i.get("familywise"):
            lines.append(f"  ranking search: {i['familywise']}. Ranking: {i.get('ranking')}.")
        return fill("\n".join(lines))  # lines of at most 100 characters

    def title(self) -> str:
        i = self.info
        return (f"{i.get('data')}: minimal panel (non-inferiority margin {self.tolerance:g} F1), "
                f"{i.get('n_splits')}-fold CV, model={i.get('model')}, seed={i.get('random_state')}")

    def plot(self, ax=None, **kwargs):
        """F1-macro along each search path with the margin band (see :func:`pxpermute.plotting.plot_panel_search`)."""
        from ..plotting import plot_panel_search

        return plot_panel_search(self, ax=ax, **kwargs)

    def __repr__(self) -> str:
        extra = ""
        if "greedy" in self.searches:
            extra = f", greedy {name_list(self.searches['greedy'].stains)}"
        return fill(f"MinimalPanel(stains {name_list(self.stains)} (ranking, {self.info.get('decision', '?')}){extra}; "
                    f"all channels F1 {self.reference_score:.3f}, margin {self.tolerance:g}; {self.n_trainings} "
                    f"trainings, {self.seconds:.0f} s)")

    # -- files -------------------------------------------------------------------
    def _to_bundle(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        searches = {}
        for name, s in self.searches.items():
            pmeta, a = frame_to_bundle(s.path, f"{prefix}.search.{name}")
            arrays.update(a)
            searches[name] = {"strategy": s.strategy, "stains": s.stains, "panel": s.panel, "found": s.found,
                              "n_trainings": s.n_trainings, "path": pmeta}
        cvs, a = _cv_results_to_bundle(self.cv_results, f"{prefix}.cv")
        arrays.update(a)
        meta = {"panel": self.panel, "stains": self.stains, "reference_score": self.reference_score,
                "threshold": self.threshold, "tolerance": self.tolerance, "searches": searches,
                "n_trainings": self.n_trainings, "seconds": self.seconds, "cv_results": cvs, "info": self.info}
        return meta, arrays

    @classmethod
    def _from_bundle(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str) -> MinimalPanel:
        searches = {}
        for name, s in meta["searches"].items():
            searches[name] = PanelSearch(s["strategy"], list(s["stains"]), list(s["panel"]), bool(s["found"]),
                                         frame_from_bundle(s["path"], arrays, f"{prefix}.search.{name}"),
                                         int(s["n_trainings"]))
        return cls(panel=list(meta["panel"]), stains=list(meta["stains"]),
                   reference_score=as_float(meta["reference_score"]), threshold=as_float(meta["threshold"]),
                   tolerance=float(meta["tolerance"]), searches=searches, n_trainings=int(meta["n_trainings"]),
                   seconds=float(meta["seconds"]),
                   cv_results=_cv_results_from_bundle(meta["cv_results"], arrays, f"{prefix}.cv", True),
                   info=dict(meta["info"]))

def _path_row(step: int, stains: list[int], added: str | None, sc: _Scores, ref: np.ndarray, ratio: float,
              margin: float, alpha: float, ds: IFCDataset) -> dict[str, Any]:
    from ..inference import noninferiority_test

    t = t_interval(sc.f1)
    ni = noninferiority_test(ref, sc.f1, margin=margin, test_train_ratio=ratio, alpha=alpha)
    chans = list(dict.fromkeys(sc.channels))
    return dict(step=step, n_stains=len(stains), added=added,
                channels=chans[0] if len(chans) == 1 else " | ".join(sc.channels),
                stains=",".join(names_of(ds, stains)), f1_mean=t.mean, f1_std=t.std, ci_low=t.low, ci_high=t.high,
                loss=ni["mean_diff"], ni_upper=ni["upper"], ni_p=ni["p_value"], ni_outcome=ni["outcome"],
                non_inferior=bool(ni["p_value"] < alpha), chosen=True, cached=sc.new == 0)


def minimal_panel(
    dataset: IFCDataset,
    ranking: Any,
    *,
    margin: float = 0.02,
    alpha: float = 0.05,
    greedy: bool = False,
    n_splits: int = 5,
    random_state: int | None = 42,
    max_stains: int | None = None,
    nested: bool | None = None,
    inner_splits: int = 2,
    n_repeats: int = 20,
    reuse: Any = None,
    n_jobs: int | None = None,
    progress: bool = True,
    tolerance: float | None = None,
    **train_kwargs: Any,
) -> MinimalPanel:
    """The smallest set of stains shown to lose less than ``margin`` F1-macro against all channels.

    Stain-free channels are always part of the panel.  The decision is the one
    of :func:`compare_panels`: non-inferiority at ``margin`` (Nadeau-Bengio
    corrected resampled t, ``n_test / n_train`` from the actual split sizes),
    tested in a **fixed sequence** along the ranking from the largest panel
    down -- stain-free + top-M, top-(M-1), ..., top-1, stain-free only -- each at
    ``alpha``, stopping at the first panel not shown non-inferior.  The answer is
    the last panel shown non-inferior; the familywise error of all the
    "non-inferior" claims along the way is at most ``alpha`` without adjustment.
    When even the largest panel is not shown non-inferior the answer is
    "inconclusive" and the panel is all channels.  Cost: one cross-validation
    per panel tested (``M`` = all stains but one, or ``max_stains``), plus all
    channels.

    The ranking is recomputed on every outer fold's training part when it can be
    (``ranking="pxpermute"`` or a function; ``nested``): fold ``f`` then tests
    the top stains of its own ranking on its own test cells, and the reported
    stains are the top of the folds' consensus ranking
    (:meth:`NestedRanking.consensus`).

    The optional *greedy* forward search (for comparison) adds, at every step,
    the stain whose addition scores best and stops at the first step whose
    choice is shown non-inferior -- it ignores the ranking, costs up to
    ``n_stains^2 / 2`` cross-validations, and chooses on the folds that judge
    it, so its answer is exploratory (no familywise claim).  Both searches use
    the same folds; a panel both visit is trained once.

    Parameters
    ----------
    dataset : IFCDataset
    ranking : "pxpermute", callable, NestedRanking, ImportanceResult or sequence of channels
        As in :func:`compare_panels` (stain-free channels in it are ignored).
    margin : float, default 0.02
        Largest acceptable loss of mean CV F1-macro, in F1 units, chosen before
        looking at the data.
    alpha : float, default 0.05
        Familywise level of the fixed sequence.
    greedy : bool, default False
        Also run the greedy forward search.
    n_splits : int, default 5
    random_state : int or None, default 42
    max_stains : int, optional
        The largest panel tested holds this many stains (default: all stains but
        one; a panel of all stains is the reference itself).
    nested, inner_splits, n_repeats, reuse
        As in :func:`compare_panels` (e.g. ``reuse=`` a PanelComparison on the
        same folds: its panels are not trained again).
    n_jobs : int or None, default None
        Trainings in parallel (every candidate of a greedy step at once) through joblib (``-1``: all cores; a Dask cluster
        inside ``joblib.parallel_config(backend="dask")``); the results do not
        depend on it (seeds are fixed per training), see
        :func:`~pxpermute.training.run_trainings`.
    progress : bool, default True
    tolerance : float, optional
        Former name of ``margin`` (deprecated).
    **train_kwargs
        Passed to :func:`~pxpermute.training.cross_validate`.

    Returns
    -------
    MinimalPanel

    Examples
    --------
    >>> mp = minimal_panel(ds, "pxpermute", margin=0.02, n_splits=5,  # doctest: +SKIP
    ...                    model="small_cnn", max_epochs=3)
    >>> mp.stains, mp.info["decision"], mp.n_trainings  # doctest: +SKIP
    """
    ds = as_dataset(dataset, "minimal_panel")
    if tolerance is not None:
        warnings.warn("minimal_panel(tolerance=...) is now the non-inferiority margin; pass margin=", FutureWarning,
                      stacklevel=2)
        margin = tolerance
    margin = check_float(margin, "margin (F1 units)", low=0, high=1, closed="neither")
    alpha = check_float(alpha, "alpha", low=0, high=1, closed="neither")
    n_splits = check_n_splits(n_splits)
    all_stains = [i for i in range(ds.n_channels) if not ds.stain_free[i]]
    if max_stains is not None:
        max_stains = check_int(max_stains, "max_stains", low=0)
    t0 = time.perf_counter()
    rk, random_state = _resolve_ranking(ds, ranking, nested=nested, n_splits=n_splits, random_state=random_state,
                                        inner_splits=inner_splits, n_repeats=n_repeats, progress=progress,
                                        train_kwargs=train_kwargs, fn_name="minimal_panel")
    sf = [i for i in range(ds.n_channels) if ds.stain_free[i]]
    n_ranked = min(len(s) for s in rk.fold_stains)
    top = min(n_ranked, len(all_stains) - 1)
    if max_stains is not None:
        top = min(top, max_stains)
    cache = SubsetTrainer(ds, n_splits=n_splits, random_state=random_state, train_kwargs=train_kwargs, n_jobs=n_jobs)
    if reuse is not None:
        cache.reuse(reuse, n_splits)
    ref_cv, _ = cache.fit(range(ds.n_channels))
    ref = np.asarray(ref_cv.f1_macro, float)
    ratio = cv_test_train_ratio(ref_cv)
    reference = float(ref.mean())
    threshold = reference - float(margin)
    searches: dict[str, PanelSearch] = {}

    # -- along the ranking: fixed sequence from the largest panel down -------------------
    rows, used, chosen_m = [], ref_cv.n_splits, None
    bottom = 0 if sf else 1
    for step, m in enumerate(progress_bar(range(top, bottom - 1, -1), progress=progress, desc="ranking search"), start=1):
        per_fold = [sf + s[:m] for s in rk.fold_stains]
        sc = _fit_panel(cache, per_fold, f"top-{m}", False)
        used += len(sc.f1)
        report = rk.report_stains[:m]
        rows.append(_path_row(step, report, ds.channel_names[report[-1]] if report else None, sc, ref, ratio, margin,
                              alpha, ds))
        if not rows[-1]["non_inferior"]:
            break
        chosen_m = m
    found = chosen_m is not None
    chosen = rk.report_stains[:chosen_m] if found else list(all_stains)
    searches["ranking"] = PanelSearch("ranking", names_of(ds, chosen), names_of(ds, sorted(sf + chosen)), found,
                                      pd.DataFrame(rows), used)

    # -- greedy forward (exploratory) ----------------------------------------------------
    if greedy:
        rows, used, current = [], ref_cv.n_splits, []
        g_found = False
        if sf:
            sc = _fit_panel(cache, [sf] * n_splits, "stain-free", False)
            used += len(sc.f1)
            rows.append(_path_row(0, [], None, sc, ref, ratio, margin, alpha, ds))
            g_found = rows[-1]["non_inferior"]
        step = 0
        limit = len(all_stains) - 1 if max_stains is None else min(max_stains, len(all_stains) - 1)
        while not g_found and len(current) < limit:
            step += 1
            cands = [c for c in all_stains if c not in current]
            best_row, best_c = None, None
            fitted = cache.fit_many([sf + current + [c] for c in cands], progress=progress,
                                    desc=f"greedy step {step}")
            for c, (cv, new) in zip(cands, fitted):
                sel = current + [c]
                used += cv.n_splits
                sc = _Scores(np.asarray(cv.f1_macro, float), np.asarray(cv.accuracy, float),
                             [",".join(cv.channels)] * cv.n_splits, {}, new)
                row = _path_row(step, sel, ds.channel_names[c], sc, ref, ratio, margin, alpha, ds)
                row["chosen"] = False
                rows.append(row)
                if best_row is None or row["f1_mean"] > best_row["f1_mean"]:
                    best_row, best_c = row, c
            best_row["chosen"] = True
            current.append(best_c)
            g_found = best_row["non_inferior"]
        g_stains = current if g_found else list(all_stains)
        searches["greedy"] = PanelSearch("greedy", names_of(ds, g_stains), names_of(ds, sorted(sf + g_stains)),
                                         bool(g_found), pd.DataFrame(rows), used)

    cvs = dict(cache.results)
    cvs.update({(*key, -1 - f): cv for (key, f), cv in cache.fold_results.items()})
    info = dict(data=ds.name, model=model_label(train_kwargs), random_state=cache.random_state, n_splits=n_splits,
                ranked_stains=names_of(ds, rk.report_stains), stain_free=names_of(ds, sf), ranking=rk.label,
                nested=rk.nested, alpha=alpha, test_train_ratio=ratio, valid_fraction=ref_cv.params.get("valid_fraction"),
                decision="non-inferior" if found else "inconclusive", largest_panel_tested=top,
                familywise="non-inferiority tested in a fixed sequence from the largest panel down, each at alpha, "
                           "stopping at the first panel not shown non-inferior: the chance that any 'non-inferior' "
                           "claim is false is at most alpha")
    if rk.nested_ranking is not None:
        info.update(fold_rankings=[names_of(ds, s) for s in rk.fold_stains],
                    ranking_trainings=int(rk.nested_ranking.info.get("n_trainings", 0)))
    r = searches["ranking"]
    return MinimalPanel(panel=r.panel, stains=r.stains, reference_score=reference, threshold=threshold,
                        tolerance=float(margin), searches=searches, n_trainings=cache.n_trainings,
                        seconds=time.perf_counter() - t0, cv_results=cvs, info=info)

# =============================================================================
# 3. multi-stage design
# =============================================================================
@dataclass(repr=False)
class MultiStageResult(SavableResult):
    """Outcome of :func:`multistage_design`.

    The result protocol: :meth:`to_frame` (``table``), :meth:`summary` (text),
    :meth:`plot`, :meth:`save` / :meth:`load`.

    Attributes
    ----------
    panel : list of str
        The chosen markers, ordered by the final run's ranking (plus nothing
        else: stain-free channels are listed in ``stain_free``).
    stages : list of dict
        Per run: ``markers`` (measured), ``result`` (ImportanceResult),
        ``ranked`` (markers by importance), ``selected``, ``seconds``.
    final : dict
        The final run on the union of the selected markers (same keys).
    table : DataFrame
        Tidy: ``stage`` (``"run 1"``, ..., ``"final"``), ``marker``,
        ``importance``, ``ci_low``, ``ci_high``, ``rank`` (within the stage),
        ``selected``.
    stain_free : list of str
    info : dict
    """

    panel: list[str]
    stages: list[dict[str, Any]]
    final: dict[str, Any]
    table: pd.DataFrame
    stain_free: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per (stage, marker): importance, its interval, rank and whether it was kept (a copy)."""
        return self.table.copy()

    def summary(self) -> str:
        """Printable text: every run's ranking with the kept markers, the final ranking and the panel."""
        lines = [self.title()]
        for label, st in [(f"run {r + 1}", s) for r, s in enumerate(self.stages)] + [("final", self.final)]:
            ranked = ", ".join(f"{m}*" if m in st["selected"] else m for m in st["ranked"])
            lines.append(f"  {label:<7} {ranked}")
        lines.append("  (* = kept)")
        lines.append(f"panel: {', '.join(self.panel)}"
                     + (f" (+ stain-free {', '.join(self.stain_free)})" if self.stain_free else ""))
        if self.info.get("ground_truth"):
            lines.append(f"recovers {self.recovered_fraction():.0%} of the planted informative markers")
        return fill("\n".join(lines))  # lines of at most 100 characters

    def recovered_fraction(self, truth: Any = None, *, top: int | None = None) -> float:
        """Fraction of the truly informative markers that the panel contains.

        Parameters
        ----------
        truth : GroundTruth, IFCDataset with ground truth, or sequence of marker names, optional
            The informative markers (default: the ground truth of the data set
            the design ran on, if it had one).
        top : int, optional
            Only count the ``top`` best markers of the final ranking.
        """
        informative = self._informative(truth)
        panel = self.panel if top is None else self.panel[: check_int(top, "top", low=1)]
        return float(len(set(panel) & informative) / len(informative))

    def precision(self, truth: Any = None, *, top: int | None = None) -> float:
        """Fraction of the panel's markers that are truly informative."""
        informative = self._informative(truth)
        panel = self.panel if top is None else self.panel[: check_int(top, "top", low=1)]
        return float(len(set(panel) & informative) / max(1, len(panel)))

    def _informative(self, truth: Any) -> set[str]:
        from ..datasets.base import GroundTruth

        if truth is None:
            truth = self.info.get("ground_truth")
            if truth is None:
                raise ValueError("no ground truth known: pass truth= (GroundTruth, IFCDataset or marker names)")
        if isinstance(truth, IFCDataset):
            if truth.ground_truth is None:
                raise ValueError("the data set carries no ground truth")
            names, gt = truth.channel_names, truth.ground_truth
            informative = {n for n, r, sf in zip(names, gt.relevance, truth.stain_free) if r > 0 and not sf}
        elif isinstance(truth, GroundTruth):
            names = self.info.get("all_markers_with_stain_free")
            if names is None or len(names) != len(truth.relevance):
                raise ValueError("a bare GroundTruth needs the data set's channel names; pass the IFCDataset instead")
            informative = {n for n, r in zip(names, truth.relevance) if r > 0 and n not in self.stain_free}
        elif isinstance(truth, dict):
            informative = {n for n, r in truth.items() if r > 0}
        else:
            informative = set(truth)
        if not informative:
            raise ValueError("the ground truth marks no marker as informative")
        return informative

    def title(self) -> str:
        i = self.info
        return (f"{i.get('data')}: multi-stage design, {len(self.stages)} runs x <= {i.get('max_run_size')} markers, "
                f"top {i.get('per_run')} per run, final run on {len(self.final['markers'])}")

    def plot(self, **kwargs):
        """Importance per marker per stage (see :func:`pxpermute.plotting.plot_multistage`)."""
        from ..plotting import plot_multistage

        return plot_multistage(self, **kwargs)

    def __repr__(self) -> str:
        return fill(f"MultiStageResult(panel {name_list(self.panel)}; {len(self.stages)} runs + final)")

    # -- files -------------------------------------------------------------------
    @staticmethod
    def _stage_to_bundle(st: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        rmeta, arrays = importance_to_bundle(st["result"], prefix)
        meta = {k: st[k] for k in ("markers", "ranked", "selected", "seconds")}
        meta["result"] = rmeta
        return meta, arrays

    @staticmethod
    def _stage_from_bundle(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, Any]:
        return {"markers": list(meta["markers"]), "result": importance_from_bundle(meta["result"], arrays, prefix),
                "ranked": list(meta["ranked"]), "selected": list(meta["selected"]), "seconds": float(meta["seconds"])}

    def _to_bundle(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta: dict[str, Any] = {"panel": self.panel, "stain_free": self.stain_free, "info": self.info, "stages": []}
        meta["table"], arrays = frame_to_bundle(self.table, f"{prefix}.table")
        for r, st in enumerate(self.stages):
            m, a = self._stage_to_bundle(st, f"{prefix}.stage{r}")
            meta["stages"].append(m)
            arrays.update(a)
        meta["final"], a = self._stage_to_bundle(self.final, f"{prefix}.final")
        arrays.update(a)
        return meta, arrays

    @classmethod
    def _from_bundle(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str) -> MultiStageResult:
        stages = [cls._stage_from_bundle(m, arrays, f"{prefix}.stage{r}") for r, m in enumerate(meta["stages"])]
        return cls(panel=list(meta["panel"]), stages=stages,
                   final=cls._stage_from_bundle(meta["final"], arrays, f"{prefix}.final"),
                   table=frame_from_bundle(meta["table"], arrays, f"{prefix}.table"),
                   stain_free=list(meta["stain_free"]), info=dict(meta["info"]))

def _run_stage(fn: Callable[[IFCDataset], Any], data: IFCDataset, markers: list[str], label: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = fn(data)
    seconds = time.perf_counter() - t0
    if not isinstance(res, ImportanceResult):
        raise TypeError(f"importance_fn must return an ImportanceResult, got {type(res).__name__} ({label})")
    missing = [m for m in markers if m not in res.channel_names]
    if missing:
        raise ValueError(f"importance_fn's result for {label} does not score markers {missing}; it scored "
                         f"{res.channel_names}")
    ranked = [c for c in res.ranked_channels if c in markers]
    return {"markers": list(markers), "result": res, "ranked": ranked, "seconds": seconds}


def _stage_task(fn: Callable[[IFCDataset], Any], data: IFCDataset, markers: list[str], label: str,
                n_threads: int | None) -> dict[str, Any]:
    from ..training import _limited_threads

    with _limited_threads(n_threads):
        return _run_stage(fn, data, markers, label)


def multistage_design(
    runs: Sequence[Sequence[int | str]],
    importance_fn: Callable[[IFCDataset], ImportanceResult],
    *,
    dataset: IFCDataset,
    per_run: int = 5,
    final_importance_fn: Callable[[IFCDataset], ImportanceResult] | None = None,
    final_size: int | None = None,
    include_stain_free: bool = True,
    split_cells: bool = False,
    random_state: int | None = 42,
    n_jobs: int | None = None,
    progress: bool = True,
) -> MultiStageResult:
    """Design a panel from more candidate markers than one instrument run can hold.

    The paper's suggestion (Discussion): with 20 candidate markers and an
    instrument that measures 10 at a time, measure two runs of 10, keep the top 5
    of each by PXPermute, then run the 10 winners together and rank them again.

    Parameters
    ----------
    runs : sequence of marker groups
        Each group lists the markers (channel names or indices of ``dataset``)
        measured together in one run.  Stain-free channels listed here are
        ignored (they are added to every run, see ``include_stain_free``).
    importance_fn : callable ``IFCDataset -> ImportanceResult``
        Ranks the channels of one run, e.g.
        ``functools.partial(cv_importance, n_splits=5, n_repeats=100, model=...)``
        (train, then PXPermute).  It receives the run's data (its markers plus
        the stain-free channels) and must score every marker of the run.
    dataset : IFCDataset
        Cells with all candidate markers (a simulation of the runs, e.g.
        ``make_synthetic("panel20")``).  ``dataset.select_channels`` gives each
        run's data.
    per_run : int, default 5
        Markers kept from each run (all of them when a run has fewer).
    final_importance_fn : callable, optional
        Ranks the final run (default: ``importance_fn``).
    final_size : int, optional
        Keep only the top ``final_size`` markers of the final ranking as the
        panel (default: all markers of the final run, ordered by importance).
    include_stain_free : bool, default True
        Add the stain-free channels (brightfield, darkfield) to every run, as an
        instrument records them anyway; they are never selected as markers.
    split_cells : bool, default False
        Give every run (and the final run) its own disjoint, stratified share of
        the cells, like separate experiments on separate samples.  With
        ``False`` every run sees all cells.
    random_state : int or None, default 42
        Seed of the cell split (``split_cells=True``).
    n_jobs : int or None, default None
        Rank the runs in parallel through joblib (the final run waits for
        them); ``importance_fn`` must then be picklable (module-level functions,
        ``functools.partial``, lambdas via cloudpickle) and should itself train
        serially.  Each call gets ``cores // n_jobs`` torch threads.
    progress : bool, default True
        Progress bar over runs.

    Returns
    -------
    MultiStageResult
        ``panel``, per-stage results, tidy ``table``, ``recovered_fraction()``
        against planted truth, ``plot()``.

    Examples
    --------
    >>> from functools import partial
    >>> from pxpermute.datasets.synthetic import make_synthetic
    >>> from pxpermute.evaluation import cv_importance
    >>> ds = make_synthetic("panel20", n_samples=600, image_size=16)
    >>> runs = [ds.channel_names[:10], ds.channel_names[10:]]
    >>> fn = partial(cv_importance, n_splits=2, n_repeats=10, model="small_cnn", max_epochs=3)
    >>> design = multistage_design(runs, fn, dataset=ds, per_run=5)  # doctest: +SKIP
    >>> design.panel, design.recovered_fraction()  # doctest: +SKIP
    """
    ds = as_dataset(dataset, "multistage_design")
    if not callable(importance_fn):
        raise TypeError(f"importance_fn must be a callable IFCDataset -> ImportanceResult, got {type(importance_fn).__name__}")
    if final_importance_fn is not None and not callable(final_importance_fn):
        raise TypeError(f"final_importance_fn must be callable, got {type(final_importance_fn).__name__}")
    if isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence) or not runs:
        raise ValueError("runs must be a non-empty list of marker groups (lists of channel names or indices)")
    per_run = check_int(per_run, "per_run", low=1)
    sf = [i for i in range(ds.n_channels) if ds.stain_free[i]] if include_stain_free else []
    groups: list[list[int]] = []
    for r, group in enumerate(runs):
        if isinstance(group, (str, bytes, int, np.integer)) or not isinstance(group, (Sequence, np.ndarray, pd.Index)):
            raise TypeError(f"run {r + 1} must be a list of markers, got {type(group).__name__}: {group!r}")
        idx = [i for i in resolve_channels(list(group), ds.channel_names) if not ds.stain_free[i]]
        if not idx:
            raise ValueError(f"run {r + 1} holds no marker (only stain-free channels or nothing)")
        groups.append(idx)
    seen: dict[int, int] = {}
    for r, idx in enumerate(groups):
        for i in idx:
            if i in seen:
                raise ValueError(f"marker {ds.channel_names[i]!r} is in run {seen[i] + 1} and run {r + 1}; "
                                 "each candidate marker belongs to one run")
            seen[i] = r
    if final_size is not None:
        final_size = check_int(final_size, "final_size", low=1)

    # cells per stage
    n_stages = len(groups) + 1
    if split_cells:
        from sklearn.model_selection import StratifiedKFold

        counts = np.bincount(ds.labels, minlength=ds.n_classes)
        if counts[counts > 0].min() < n_stages:
            raise ValueError(f"split_cells=True needs >= {n_stages} cells per class for {n_stages} stages; "
                             f"smallest class has {counts[counts > 0].min()}")
        skf = StratifiedKFold(n_splits=n_stages, shuffle=True, random_state=random_state)
        cells = [np.sort(te) for _, te in skf.split(np.zeros(len(ds)), ds.labels)]
    else:
        cells = [None] * n_stages

    def data_for(markers: list[int], stage: int) -> IFCDataset:
        chans = sorted(sf + markers)
        sub = ds if cells[stage] is None else ds.subset(cells[stage])
        return sub.select_channels(chans)

    t0 = time.perf_counter()
    from ..training import run_trainings

    stages = run_trainings(_stage_task, [(importance_fn, data_for(idx, r), names_of(ds, idx), f"run {r + 1}")
                                         for r, idx in enumerate(groups)], n_jobs=n_jobs, progress=progress,
                           desc="runs")
    for st in stages:
        st["selected"] = st["ranked"][:per_run]
    union = [ds.channel_names.index(m) for st in stages for m in st["selected"]]
    fin = _run_stage(final_importance_fn or importance_fn, data_for(union, n_stages - 1), names_of(ds, union), "the final run")
    fin["selected"] = fin["ranked"] if final_size is None else fin["ranked"][:final_size]

    rows = []
    for label, st in [(f"run {r + 1}", s) for r, s in enumerate(stages)] + [("final", fin)]:
        res = st["result"]
        pos = {c: j for j, c in enumerate(res.channel_names)}
        for rank, m in enumerate(st["ranked"], start=1):
            j = pos[m]
            rows.append(dict(stage=label, marker=m, importance=float(res.importance[j]), ci_low=float(res.ci_low[j]),
                             ci_high=float(res.ci_high[j]), rank=rank, selected=m in st["selected"]))
    info = dict(data=ds.name, per_run=per_run, final_size=final_size, max_run_size=max(len(g) for g in groups),
                n_runs=len(groups), split_cells=split_cells, random_state=random_state,
                seconds=time.perf_counter() - t0, method=fin["result"].info.get("method"),
                all_markers_with_stain_free=list(ds.channel_names))
    if ds.ground_truth is not None:
        info["ground_truth"] = {n: float(r) for n, r, s in zip(ds.channel_names, ds.ground_truth.relevance, ds.stain_free)
                                if not s}
    return MultiStageResult(panel=list(fin["selected"]), stages=stages, final=fin, table=pd.DataFrame(rows),
                            stain_free=names_of(ds, sf), info=info)


