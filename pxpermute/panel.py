"""Panel design: which stains does an experiment need, and how sure are we?

Tools that turn a channel ranking into an experimental decision, all built on
the package's single retraining routine :func:`pxpermute.training.cross_validate`
(same folds for every channel subset, because the folds depend only on the
labels and ``random_state``):

* :func:`compare_panels` -- stain-free channels only vs stain-free + top-k
  stains of a ranking vs all channels (the paper's Fig. 5), with 95 % CIs over
  folds and paired tests across folds.
* :func:`minimal_panel` -- the smallest set of stains whose cross-validated
  F1-macro stays within a tolerance of all channels, searched along the ranking
  (and, for comparison, by greedy forward selection), with the trainings spent.
* :func:`multistage_design` -- more candidate markers than one instrument run
  holds: rank the markers run by run, keep the best of each, then rank the union
  in a final run (the paper's example: 20 markers, 10 per run, top 5 of each).
* :func:`k_ablation` -- how many permutation repeats k does a ranking need?  One
  run with ``k = max(ks)``; smaller k are prefixes of its repeats.
* :func:`leave_one_channel_out` -- retrain without each channel: the slow
  reference importance, with its cost recorded next to PXPermute's.
* :func:`cv_importance` -- train in cross-validation and run PXPermute on every
  held-out fold (the published protocol); a ready-made ``importance_fn``.

Statistics across folds
-----------------------
Cross-validation gives one score per fold, i.e. 5 numbers with the default
5 folds.  Confidence intervals are Student-t intervals over folds.  Panels are
compared with *paired* tests on the per-fold differences (same test cells for
every panel):

* paired t-test (``"ttest"``, one-sided: is the panel below all channels?);
* the Nadeau & Bengio (2003) corrected paired t-test (``"corrected_ttest"``):
  CV training sets overlap, so fold scores are positively correlated and the
  plain t-test is too liberal; the correction inflates the variance by
  ``1/n + n_test/n_train``;
* Wilcoxon signed-rank test (``"wilcoxon"``, exact).  With 5 folds its smallest
  possible one-sided p-value is 1/32 = 0.031 (two-sided 0.0625), and with
  2 or 3 folds it can never fall below 0.05: a non-significant Wilcoxon result
  on 5 folds says little.

With so few folds every test has little power: "not significantly below"
is not evidence of equivalence -- look at the CIs and the mean difference too.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .datasets.base import IFCDataset, resolve_channels
from .result import ImportanceResult

__all__ = [
    "PanelComparison",
    "compare_panels",
    "PanelSearch",
    "MinimalPanel",
    "minimal_panel",
    "MultiStageResult",
    "multistage_design",
    "cv_importance",
    "KAblation",
    "k_ablation",
    "first_stable_k",
    "leave_one_channel_out",
    "side_by_side",
    "paired_tests",
]

TESTS = ("ttest", "corrected_ttest", "wilcoxon")


# =============================================================================
# helpers
# =============================================================================
def _check_dataset(dataset: Any, fn: str) -> IFCDataset:
    if isinstance(dataset, IFCDataset):
        return dataset
    if isinstance(dataset, tuple) and len(dataset) == 2:
        return IFCDataset(np.asarray(dataset[0]), np.asarray(dataset[1]))
    raise TypeError(f"{fn}() needs an IFCDataset (or an (images, labels) pair), got {type(dataset).__name__}")


def _check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _ranked_stains(ds: IFCDataset, ranking: Any) -> list[int]:
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


def _names(ds: IFCDataset, idx: Sequence[int]) -> list[str]:
    return [ds.channel_names[i] for i in idx]


def _t_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    v = np.asarray(values, float)
    n = v.size
    if n < 2:
        return float("nan"), float("nan")
    m, s = v.mean(), v.std(ddof=1)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * s / math.sqrt(n)
    return float(m - half), float(m + half)


def _ranking_label(ranking: Any) -> str:
    if isinstance(ranking, ImportanceResult):
        i = ranking.info
        if "n_repeats_per_fold" in i:
            return f"{i.get('method', 'importance')} k={i['n_repeats_per_fold']} x {i.get('n_splits')} folds"
        return f"{i.get('method', 'importance')} k={ranking.n_repeats}"
    return "given"


def _model_label(train_kwargs: Mapping[str, Any]) -> str:
    m = train_kwargs.get("model", "resnet18")
    if isinstance(m, str):
        return m
    return getattr(m, "__name__", type(m).__name__)


class _CVCache:
    """Cross-validation results keyed by the (sorted) channel subset; counts the trainings run."""

    def __init__(self, ds: IFCDataset, n_splits: int, random_state: Any, train_kwargs: dict[str, Any]) -> None:
        from .training import cross_validate

        self._cv = cross_validate
        self.ds = ds
        self.n_splits = n_splits
        if random_state is None:  # one seed for every panel, so all of them get the same folds
            random_state = int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))
        self.random_state = random_state
        self.train_kwargs = train_kwargs
        self.results: dict[tuple[int, ...], Any] = {}
        self.n_trainings = 0
        self.seconds = 0.0
        self.folds: list[np.ndarray] | None = None

    def __call__(self, channels: Sequence[int]) -> tuple[Any, int]:
        key = tuple(sorted(int(c) for c in channels))
        if not key:
            raise ValueError("a panel needs at least one channel")
        if key in self.results:
            return self.results[key], 0
        t0 = time.perf_counter()
        cv = self._cv(self.ds, n_splits=self.n_splits, channels=list(key), random_state=self.random_state,
                      progress=False, **self.train_kwargs)
        self.seconds += time.perf_counter() - t0
        n = cv.n_splits
        self.n_trainings += n
        if self.folds is None:
            self.folds = [np.asarray(t) for t in cv.test_indices]
        elif any(not np.array_equal(a, b) for a, b in zip(self.folds, cv.test_indices)):  # pragma: no cover
            raise RuntimeError("cross_validate returned different folds for two channel subsets")
        self.results[key] = cv
        return cv, n


def _bar(iterable: Any, progress: bool, desc: str, total: int | None = None) -> Any:
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total)


# =============================================================================
# paired tests across folds
# =============================================================================
def paired_tests(
    reference: Sequence[float],
    other: Sequence[float],
    *,
    test_fraction: float | None = None,
    alternative: str = "greater",
) -> dict[str, float]:
    """Paired tests of per-fold scores: is ``reference`` higher than ``other``?

    Parameters
    ----------
    reference, other : sequence of float
        Per-fold scores on the same folds (e.g. all channels and a smaller panel).
    test_fraction : float, optional
        Held-out fraction per fold (``1 / n_splits`` for k-fold CV); enables the
        Nadeau & Bengio corrected t-test (default ``1 / n_folds``).
    alternative : {"greater", "two-sided"}
        ``"greater"``: one-sided, H1 reference > other.

    Returns
    -------
    dict
        ``mean_diff`` (reference - other), ``t``, ``p_ttest``, ``t_corrected``,
        ``p_corrected_ttest``, ``p_wilcoxon`` (NaN for fewer than 2 folds).  When
        all differences are equal (zero variance) the t-tests return p = 0 for a
        positive and p = 1 for a non-positive difference (one-sided).

    Examples
    --------
    >>> out = paired_tests([0.9, 0.92, 0.91, 0.9, 0.93], [0.85, 0.9, 0.86, 0.84, 0.9])
    >>> out["mean_diff"] > 0 and out["p_ttest"] < 0.05
    True
    """
    a, b = np.asarray(reference, float), np.asarray(other, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"reference and other need the same 1-D shape (one score per fold); got {a.shape} and {b.shape}")
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")
    d = a - b
    n = d.size
    out = {"mean_diff": float(d.mean()) if n else float("nan"), "t": float("nan"), "p_ttest": float("nan"),
           "t_corrected": float("nan"), "p_corrected_ttest": float("nan"), "p_wilcoxon": float("nan")}
    if n < 2:
        return out
    frac = 1.0 / n if test_fraction is None else float(test_fraction)
    if not 0 < frac < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
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
        tc = mean / math.sqrt((1.0 / n + frac / (1.0 - frac)) * sd**2)
        out.update(t=float(t), p_ttest=p_of(t), t_corrected=float(tc), p_corrected_ttest=p_of(tc))
    if np.all(d == 0):
        out["p_wilcoxon"] = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["p_wilcoxon"] = float(stats.wilcoxon(d, alternative=alternative).pvalue)
    return out


# =============================================================================
# 1. panel comparison
# =============================================================================
@dataclass
class PanelComparison:
    """Outcome of :func:`compare_panels`.

    Attributes
    ----------
    scores : DataFrame
        Tidy, one row per (panel, fold): ``panel``, ``kind`` (``"stain-free"``,
        ``"top-k"``, ``"all"``), ``k``, ``n_channels``, ``channels``, ``fold``,
        ``f1_macro``, ``accuracy``.
    summary : DataFrame
        One row per panel: mean, std and 95 % t-CI over folds of F1-macro and
        accuracy.
    tests : DataFrame
        One row per smaller panel vs all channels: ``mean_diff`` (all - panel,
        F1-macro), the p-values of the three paired tests, the test used for the
        decision and ``significant`` (p < ``alpha``).
    cv_results : dict
        Panel name -> :class:`~pxpermute.training.CVResult` (the trained models).
    info : dict
        Data, model, seed, folds, ranking provenance, trainings, seconds.
    """

    scores: pd.DataFrame
    summary: pd.DataFrame
    tests: pd.DataFrame
    cv_results: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def statement(self) -> str:
        """Plain-language verdict for every smaller panel."""
        lines = []
        test, alpha = self.info["test"], self.info["alpha"]
        ref = self.summary.set_index("panel").loc["all channels"]
        for _, row in self.tests.iterrows():
            p = row[f"p_{test}"]
            verdict = "significantly below" if row["significant"] else "not significantly below"
            lines.append(
                f"{row['panel']}: F1-macro {row['f1_macro_mean']:.3f} vs {ref['f1_macro_mean']:.3f} with all channels "
                f"(difference {row['mean_diff']:+.3f}); {verdict} all channels ({test}, one-sided p = {p:.3g}, "
                f"alpha = {alpha}, {self.info['n_splits']} folds)."
            )
        return "\n".join(lines)

    def title(self) -> str:
        i = self.info
        return (f"{i.get('data')}: panel comparison, {i.get('n_splits')}-fold CV, model={i.get('model')}, "
                f"seed={i.get('random_state')}, ranking={i.get('ranking')}")

    def plot(self, ax=None, **kwargs):
        """Per-fold F1-macro and mean with 95 % CI per panel (see :func:`pxpermute.plotting.plot_panel_comparison`)."""
        from .plotting import plot_panel_comparison

        return plot_panel_comparison(self, ax=ax, **kwargs)

    def __repr__(self) -> str:
        body = ", ".join(f"{r.panel}={r.f1_macro_mean:.3f}" for r in self.summary.itertuples())
        return f"PanelComparison({body})"


def _summarize_scores(scores: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for panel, g in scores.groupby("panel", sort=False):
        row = {"panel": panel, "kind": g["kind"].iloc[0], "k": g["k"].iloc[0], "n_channels": int(g["n_channels"].iloc[0]),
               "channels": g["channels"].iloc[0], "n_folds": len(g)}
        for m in ("f1_macro", "accuracy"):
            v = g[m].to_numpy(float)
            lo, hi = _t_ci(v)
            row.update({f"{m}_mean": float(v.mean()), f"{m}_std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                        f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def compare_panels(
    dataset: IFCDataset,
    ranking: Any,
    *,
    k: int | Sequence[int] = (1, 2, 3),
    n_splits: int = 5,
    random_state: int | None = 42,
    test: str = "ttest",
    alpha: float = 0.05,
    progress: bool = True,
    **train_kwargs: Any,
) -> PanelComparison:
    """Stain-free only vs stain-free + top-k stains vs all channels, in cross-validation.

    The paper's panel experiment (Fig. 5): can a few stains chosen by a ranking
    replace the full panel?  Every panel is trained and tested with
    :func:`~pxpermute.training.cross_validate` on the *same* folds, so the
    per-fold scores are paired.

    Parameters
    ----------
    dataset : IFCDataset
        Its ``stain_free`` flags mark the channels every panel keeps (brightfield,
        darkfield).  Without stain-free channels the stain-free-only panel is
        skipped (with a warning) and the top-k panels hold only stains.
    ranking : ImportanceResult or sequence of channel names / indices
        Most important first.  Stain-free channels in it are ignored (they are
        in every panel); channels not in it are never picked.
    k : int or sequence of int, default (1, 2, 3)
        Numbers of top stains to add to the stain-free channels.
    n_splits : int, default 5
        Folds (stratified, shuffled with ``random_state``).
    random_state : int or None, default 42
        Seed of the folds and of every training (``None``: one seed is drawn and
        recorded in ``info``, the same for every panel).
    test : {"ttest", "corrected_ttest", "wilcoxon"}, default "ttest"
        Paired one-sided test whose p-value decides ``significant`` (all three
        are reported; see the module docstring for their caveats with few folds).
    alpha : float, default 0.05
    progress : bool, default True
        Progress bar over panels.
    **train_kwargs
        Passed to :func:`~pxpermute.training.cross_validate` (``model``,
        ``max_epochs``, ``batch_size`` ...).

    Returns
    -------
    PanelComparison
        ``scores`` (per fold), ``summary`` (mean, 95 % CI), ``tests`` (paired
        tests vs all channels), ``statement()``, ``plot()``.

    Examples
    --------
    >>> from pxpermute.datasets.synthetic import make_synthetic
    >>> ds = make_synthetic("synapse", n_samples=200, image_size=16)
    >>> cmp = compare_panels(ds, ["CD3", "F-actin", "MHCII"], k=(1, 2), n_splits=2,  # doctest: +SKIP
    ...                      model="small_cnn", max_epochs=2)
    >>> print(cmp.statement())  # doctest: +SKIP
    """
    ds = _check_dataset(dataset, "compare_panels")
    stains = _ranked_stains(ds, ranking)
    ks = [k] if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else list(k)
    if not ks:
        raise ValueError("k is empty; pass at least one number of top stains")
    for kk in ks:
        _check_int(kk, "every k")
    if max(ks) > len(stains):
        raise ValueError(f"k={max(ks)} exceeds the {len(stains)} stains in the ranking ({_names(ds, stains)})")
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    n_splits = _check_int(n_splits, "n_splits", 2)
    sf = [i for i in range(ds.n_channels) if ds.stain_free[i]]
    panels: list[tuple[str, str, int | None, list[int]]] = []
    if sf:
        panels.append(("stain-free", "stain-free", 0, sf))
    else:
        warnings.warn("the data set has no stain-free channel (dataset.stain_free is all False); "
                      "the stain-free-only panel is skipped", stacklevel=2)
    prefix = "stain-free + " if sf else ""
    for kk in sorted(set(int(x) for x in ks)):
        panels.append((f"{prefix}top-{kk}", "top-k", kk, sf + stains[:kk]))
    panels.append(("all channels", "all", None, list(range(ds.n_channels))))

    t0 = time.perf_counter()
    cache = _CVCache(ds, n_splits, random_state, train_kwargs)
    rows, cvs = [], {}
    for name, kind, kk, chans in _bar(panels, progress, "panels"):
        cv, _ = cache(chans)
        cvs[name] = cv
        for f in range(cv.n_splits):
            rows.append(dict(panel=name, kind=kind, k=kk, n_channels=len(chans), channels=",".join(cv.channels), fold=f,
                             f1_macro=float(cv.f1_macro[f]), accuracy=float(cv.accuracy[f])))
    scores = pd.DataFrame(rows)
    summary = _summarize_scores(scores)
    ref = cvs["all channels"]
    trows = []
    for name, kind, kk, chans in panels[:-1]:
        frac = float(np.mean([len(t) / len(ds) for t in ref.test_indices]))
        res = paired_tests(ref.f1_macro, cvs[name].f1_macro, test_fraction=frac)
        p = res[f"p_{test}"]
        trows.append(dict(panel=name, kind=kind, k=kk, n_channels=len(chans),
                          f1_macro_mean=float(np.mean(cvs[name].f1_macro)), **res, test=test,
                          significant=bool(np.isfinite(p) and p < alpha)))
    tests = pd.DataFrame(trows)
    rank_desc = _ranking_label(ranking)
    info = dict(data=ds.name, model=_model_label(train_kwargs), random_state=cache.random_state, n_splits=n_splits,
                ranking=rank_desc, ranked_stains=_names(ds, stains), stain_free=_names(ds, sf), test=test, alpha=alpha,
                n_trainings=cache.n_trainings, seconds=time.perf_counter() - t0)
    return PanelComparison(scores=scores, summary=summary, tests=tests, cv_results=cvs, info=info)


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
        Whether a panel with fewer stains than all of them met the tolerance.
    path : DataFrame
        Every panel evaluated: ``step``, ``n_stains``, ``added``, ``channels``,
        ``f1_mean``, ``f1_std``, ``ci_low``, ``ci_high``, ``within_tolerance``,
        ``chosen`` (greedy: the candidate kept at that step), ``cached`` (reused
        an earlier training of the same subset).
    n_trainings : int
        Model fits this strategy needed on its own (folds x panels evaluated).
    """

    strategy: str
    stains: list[str]
    panel: list[str]
    found: bool
    path: pd.DataFrame
    n_trainings: int


@dataclass
class MinimalPanel:
    """Outcome of :func:`minimal_panel`.

    Attributes
    ----------
    panel, stains : list of str
        The answer of the ranking search.
    reference_score : float
        Mean CV F1-macro with all channels; ``threshold = reference_score - tolerance``.
    searches : dict
        ``"ranking"`` (and ``"greedy"``) -> :class:`PanelSearch`.
    n_trainings : int
        Model fits actually run (all channels + every distinct panel, each
        ``n_splits`` times; panels shared by the searches are trained once).
    seconds : float
    cv_results : dict
        Channel tuple (dataset indices) -> CVResult.
    info : dict
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
    def path(self) -> pd.DataFrame:
        """All evaluated panels of every strategy in one tidy table."""
        return pd.concat([s.path.assign(strategy=name) for name, s in self.searches.items()], ignore_index=True)

    def title(self) -> str:
        i = self.info
        return (f"{i.get('data')}: minimal panel (tolerance {self.tolerance:g} F1), {i.get('n_splits')}-fold CV, "
                f"model={i.get('model')}, seed={i.get('random_state')}")

    def plot(self, ax=None, **kwargs):
        """F1-macro along each search path with the tolerance band (see :func:`pxpermute.plotting.plot_panel_search`)."""
        from .plotting import plot_panel_search

        return plot_panel_search(self, ax=ax, **kwargs)

    def __repr__(self) -> str:
        extra = ""
        if "greedy" in self.searches:
            extra = f", greedy {self.searches['greedy'].stains}"
        return (f"MinimalPanel(stains {self.stains} (ranking){extra}; all channels F1 {self.reference_score:.3f}, "
                f"tolerance {self.tolerance:g}; {self.n_trainings} trainings, {self.seconds:.0f} s)")


def _path_row(step: int, stains: list[int], added: str | None, cv: Any, threshold: float, cached: bool,
              ds: IFCDataset) -> dict[str, Any]:
    v = np.asarray(cv.f1_macro, float)
    lo, hi = _t_ci(v)
    return dict(step=step, n_stains=len(stains), added=added, channels=",".join(cv.channels),
                stains=",".join(_names(ds, stains)), f1_mean=float(v.mean()),
                f1_std=float(v.std(ddof=1)) if v.size > 1 else 0.0, ci_low=lo, ci_high=hi,
                within_tolerance=bool(v.mean() >= threshold), chosen=True, cached=cached)


def minimal_panel(
    dataset: IFCDataset,
    ranking: Any,
    *,
    tolerance: float = 0.02,
    greedy: bool = False,
    n_splits: int = 5,
    random_state: int | None = 42,
    max_stains: int | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> MinimalPanel:
    """The smallest set of stains whose CV F1-macro stays within ``tolerance`` of all channels.

    Stain-free channels are always part of the panel.  The *ranking* search
    trains stain-free only, then stain-free + top-1, top-2, ... stains of the
    ranking and stops at the first panel whose mean CV F1-macro is at least
    ``F1(all channels) - tolerance``: at most ``(n_stains + 1) x n_splits``
    trainings.  The optional *greedy* forward search (for comparison) adds, at
    every step, the stain whose addition scores best -- it ignores the ranking
    and costs up to ``n_stains^2 / 2`` cross-validations.  Both use the same
    folds; a panel both visit is trained once.

    Parameters
    ----------
    dataset : IFCDataset
    ranking : ImportanceResult or sequence of channel names / indices
        Most important first (stain-free channels in it are ignored).
    tolerance : float, default 0.02
        Allowed drop of mean CV F1-macro, in F1 units.
    greedy : bool, default False
        Also run the greedy forward search.
    n_splits : int, default 5
    random_state : int or None, default 42
    max_stains : int, optional
        Stop searching beyond this many stains (the answer is then the best
        panel found, flagged ``found=False``).
    progress : bool, default True
    **train_kwargs
        Passed to :func:`~pxpermute.training.cross_validate`.

    Returns
    -------
    MinimalPanel

    Examples
    --------
    >>> mp = minimal_panel(ds, result, tolerance=0.02, greedy=True, n_splits=2,  # doctest: +SKIP
    ...                    model="small_cnn", max_epochs=3)
    >>> mp.stains, mp.n_trainings  # doctest: +SKIP
    """
    ds = _check_dataset(dataset, "minimal_panel")
    stains = _ranked_stains(ds, ranking)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.floating)) or not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a number in [0, 1) (F1 units), got {tolerance!r}")
    n_splits = _check_int(n_splits, "n_splits", 2)
    all_stains = [i for i in range(ds.n_channels) if not ds.stain_free[i]]
    if max_stains is not None:
        max_stains = _check_int(max_stains, "max_stains", 0)
    limit = len(all_stains) if max_stains is None else min(max_stains, len(all_stains))
    sf = [i for i in range(ds.n_channels) if ds.stain_free[i]]
    t0 = time.perf_counter()
    cache = _CVCache(ds, n_splits, random_state, train_kwargs)
    ref, _ = cache(range(ds.n_channels))
    reference = float(np.mean(ref.f1_macro))
    threshold = reference - float(tolerance)
    searches: dict[str, PanelSearch] = {}

    # -- along the ranking -------------------------------------------------------
    rows, used, chosen = [], ref.n_splits, None
    start = 0 if sf else 1
    for m in _bar(range(start, min(len(stains), limit) + 1), progress, "ranking search"):
        sel = stains[:m]
        if sorted(sf + sel) == list(range(ds.n_channels)):
            cv, new = ref, 0
        else:
            cv, new = cache(sf + sel)
        used += cv.n_splits
        rows.append(_path_row(m, sel, ds.channel_names[sel[-1]] if sel else None, cv, threshold, new == 0, ds))
        if rows[-1]["within_tolerance"]:
            chosen = sel
            break
    found = chosen is not None and len(chosen) < len(all_stains)
    if chosen is None:  # nothing within tolerance: the best evaluated panel (all stains when the ranking covers them)
        best = max(range(len(rows)), key=lambda r: rows[r]["f1_mean"])
        chosen = stains[: rows[best]["n_stains"]] if rows else []
    searches["ranking"] = PanelSearch("ranking", _names(ds, chosen), _names(ds, sorted(sf + chosen)), found,
                                      pd.DataFrame(rows), used)

    # -- greedy forward ----------------------------------------------------------
    if greedy:
        rows, used, current = [], ref.n_splits, []
        g_found = False
        if sf:
            cv, new = cache(sf)
            used += cv.n_splits
            rows.append(_path_row(0, [], None, cv, threshold, new == 0, ds))
            g_found = rows[-1]["within_tolerance"]
        step = 0
        while not g_found and len(current) < limit:
            step += 1
            cands = [c for c in all_stains if c not in current]
            best_row, best_c = None, None
            for c in _bar(cands, progress, f"greedy step {step}"):
                sel = current + [c]
                if sorted(sf + sel) == list(range(ds.n_channels)):
                    cv, new = ref, 0
                else:
                    cv, new = cache(sf + sel)
                used += cv.n_splits
                row = _path_row(step, sel, ds.channel_names[c], cv, threshold, new == 0, ds)
                row["chosen"] = False
                rows.append(row)
                if best_row is None or row["f1_mean"] > best_row["f1_mean"]:
                    best_row, best_c = row, c
            best_row["chosen"] = True
            current.append(best_c)
            g_found = best_row["within_tolerance"]
        searches["greedy"] = PanelSearch("greedy", _names(ds, current), _names(ds, sorted(sf + current)),
                                         bool(g_found and len(current) < len(all_stains)), pd.DataFrame(rows), used)

    info = dict(data=ds.name, model=_model_label(train_kwargs), random_state=cache.random_state, n_splits=n_splits,
                ranked_stains=_names(ds, stains), stain_free=_names(ds, sf),
                ranking=_ranking_label(ranking))
    r = searches["ranking"]
    return MinimalPanel(panel=r.panel, stains=r.stains, reference_score=reference, threshold=threshold,
                        tolerance=float(tolerance), searches=searches, n_trainings=cache.n_trainings,
                        seconds=time.perf_counter() - t0, cv_results=dict(cache.results), info=info)


# =============================================================================
# importance by cross-validation (the published protocol)
# =============================================================================
def cv_importance(
    dataset: IFCDataset,
    *,
    n_splits: int = 5,
    n_repeats: int = 100,
    perturbation: str = "pixel",
    random_state: int | None = 42,
    metric: str = "f1",
    progress: bool = False,
    importance_kwargs: Mapping[str, Any] | None = None,
    **train_kwargs: Any,
) -> ImportanceResult:
    """Train in cross-validation and run :func:`~pxpermute.channel_importance` on each held-out fold.

    The paper's protocol: one model per fold, importances on that fold's test
    cells.  The returned result stacks the repeats of all folds
    (``importances`` has ``n_splits x n_repeats`` rows), so its mean is the mean
    over folds and its CI covers fold-to-fold variation as well.  Use it as
    ``importance_fn`` of :func:`multistage_design` (e.g. with
    ``functools.partial``).

    Parameters
    ----------
    dataset : IFCDataset
    n_splits : int, default 5
    n_repeats : int, default 100
        k per fold.
    perturbation : {"pixel", "sample", "fill"}, default "pixel"
    random_state : int or None, default 42
        Seed of the folds, the trainings and the permutations.
    metric : str, default "f1"
    progress : bool, default False
    importance_kwargs : mapping, optional
        More options for :func:`~pxpermute.channel_importance` (``batch_size``, ``device`` ...).
    **train_kwargs
        Passed to :func:`~pxpermute.training.cross_validate`.

    Returns
    -------
    ImportanceResult
        ``info`` holds ``n_splits``, ``n_trainings``, ``train_seconds``,
        ``runtime_s`` (training + importance) and ``fold_importance`` (per fold
        mean importances).

    Examples
    --------
    >>> from functools import partial
    >>> fn = partial(cv_importance, n_splits=2, n_repeats=10, model="small_cnn", max_epochs=3)
    >>> res = fn(ds)  # doctest: +SKIP
    """
    from .importance import channel_importance
    from .training import cross_validate

    ds = _check_dataset(dataset, "cv_importance")
    n_repeats = _check_int(n_repeats, "n_repeats")
    t0 = time.perf_counter()
    cv = cross_validate(ds, n_splits=n_splits, random_state=random_state, progress=progress, **train_kwargs)
    t_train = time.perf_counter() - t0
    folds = []
    for f, (net, te) in enumerate(zip(cv.models, cv.test_indices)):
        res = channel_importance(net, ds.subset(te), n_repeats=n_repeats, perturbation=perturbation, metric=metric,
                                 random_state=random_state, progress=progress, **dict(importance_kwargs or {}))
        folds.append(res)
    drops = [r.drops for r in folds]
    same_shape = all(d is not None and d.shape[1:] == drops[0].shape[1:] for d in drops)
    first = folds[0]
    info = dict(first.info)
    info.update(method=info.get("method", "pxpermute"), n_splits=cv.n_splits, n_trainings=cv.n_splits,
                n_repeats_per_fold=first.n_repeats, train_seconds=t_train, runtime_s=time.perf_counter() - t0,
                importance_seconds=float(sum(r.info.get("runtime_s", 0.0) for r in folds)), n_samples=len(ds),
                data=ds.name, model=_model_label(train_kwargs), random_state=random_state,
                fold_importance=[r.importance.tolist() for r in folds], protocol="cross-validation")
    return ImportanceResult(
        np.concatenate([r.importances for r in folds], axis=0),
        channel_names=first.channel_names,
        class_names=first.class_names,
        drops=np.concatenate(drops, axis=0) if same_shape else None,
        baseline_scores=np.nanmean(np.stack([r.baseline_scores for r in folds]), axis=0) if same_shape else None,
        present=np.all(np.stack([r.present_classes for r in folds]), axis=0),
        info=info,
    )


# =============================================================================
# 3. multi-stage design
# =============================================================================
@dataclass
class MultiStageResult:
    """Outcome of :func:`multistage_design`.

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
        panel = self.panel if top is None else self.panel[: _check_int(top, "top")]
        return float(len(set(panel) & informative) / len(informative))

    def precision(self, truth: Any = None, *, top: int | None = None) -> float:
        """Fraction of the panel's markers that are truly informative."""
        informative = self._informative(truth)
        panel = self.panel if top is None else self.panel[: _check_int(top, "top")]
        return float(len(set(panel) & informative) / max(1, len(panel)))

    def _informative(self, truth: Any) -> set[str]:
        from .datasets.base import GroundTruth

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
        from .plotting import plot_multistage

        return plot_multistage(self, **kwargs)

    def __repr__(self) -> str:
        return f"MultiStageResult(panel {self.panel}; {len(self.stages)} runs + final)"


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
    >>> ds = make_synthetic("panel20", n_samples=600, image_size=16)
    >>> runs = [ds.channel_names[:10], ds.channel_names[10:]]
    >>> fn = partial(cv_importance, n_splits=2, n_repeats=10, model="small_cnn", max_epochs=3)
    >>> design = multistage_design(runs, fn, dataset=ds, per_run=5)  # doctest: +SKIP
    >>> design.panel, design.recovered_fraction()  # doctest: +SKIP
    """
    ds = _check_dataset(dataset, "multistage_design")
    if not callable(importance_fn):
        raise TypeError(f"importance_fn must be a callable IFCDataset -> ImportanceResult, got {type(importance_fn).__name__}")
    if final_importance_fn is not None and not callable(final_importance_fn):
        raise TypeError(f"final_importance_fn must be callable, got {type(final_importance_fn).__name__}")
    if isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence) or not runs:
        raise ValueError("runs must be a non-empty list of marker groups (lists of channel names or indices)")
    per_run = _check_int(per_run, "per_run")
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
        final_size = _check_int(final_size, "final_size")

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
    stages = []
    for r, idx in enumerate(_bar(groups, progress, "runs")):
        names = _names(ds, idx)
        st = _run_stage(importance_fn, data_for(idx, r), names, f"run {r + 1}")
        st["selected"] = st["ranked"][:per_run]
        stages.append(st)
    union = [ds.channel_names.index(m) for st in stages for m in st["selected"]]
    fin = _run_stage(final_importance_fn or importance_fn, data_for(union, n_stages - 1), _names(ds, union), "the final run")
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
                            stain_free=_names(ds, sf), info=info)


# =============================================================================
# 4. k ablation
# =============================================================================
def first_stable_k(rankings: Mapping[int, Sequence[Any]], *, top: int | None = None) -> int | None:
    """The smallest k from which the ranking no longer changes.

    Parameters
    ----------
    rankings : mapping k -> ranking
        A ranking is a sequence of channels (names or indices), most important first.
    top : int, optional
        Compare only the first ``top`` positions.

    Returns
    -------
    int or None
        The smallest k such that the ranking at k and at every larger k equals the
        ranking at the largest k (so the largest k itself at worst).  ``None`` for
        an empty mapping.

    Examples
    --------
    >>> first_stable_k({5: "BAC", 10: "ABC", 20: "ABC", 50: "ABC"})
    10
    >>> first_stable_k({5: "ABC", 10: "BAC", 20: "ABC"})
    20
    """
    if not rankings:
        return None
    ks = sorted(int(k) for k in rankings)
    cut = slice(None) if top is None else slice(0, _check_int(top, "top"))
    final = list(rankings[ks[-1]])[cut]
    stable = ks[-1]
    for k in reversed(ks):
        if list(rankings[k])[cut] == final:
            stable = k
        else:
            break
    return stable


@dataclass
class KAblation:
    """Outcome of :func:`k_ablation`.

    Attributes
    ----------
    ks : list of int
    result : ImportanceResult
        The single run with ``max(ks)`` repeats; ``at(k)`` gives its k-prefix.
    rankings : DataFrame
        Index k, columns rank 1..C, values channel names.
    table : DataFrame
        Tidy, one row per (k, channel): ``importance``, ``std``, ``ci_low``,
        ``ci_high``, ``normalized``, ``rank``.
    kendall_tau : Series
        Kendall's tau-b between the importances at each k and at ``max(ks)``.
    stable_k : int
        First k from which the (top-``top``) ranking equals the ``max(ks)`` ranking.
    top : int or None
    stable_k_all : int
        The same for the full ranking (all channels).
    """

    ks: list[int]
    result: ImportanceResult
    rankings: pd.DataFrame
    table: pd.DataFrame
    kendall_tau: pd.Series
    stable_k: int
    top: int | None = None
    stable_k_all: int | None = None

    def at(self, k: int) -> ImportanceResult:
        """The result with only the first ``k`` repeats (exactly what a run with k repeats gives)."""
        k = _check_int(k, "k")
        return _prefix(self.result, k)

    def title(self) -> str:
        return f"k ablation: {self.result.title()}"

    def plot(self, **kwargs):
        """Kendall tau and ranks vs k (see :func:`pxpermute.plotting.plot_k_ablation`)."""
        from .plotting import plot_k_ablation

        return plot_k_ablation(self, **kwargs)

    def __repr__(self) -> str:
        return (f"KAblation(ks={self.ks}, ranking stable from k={self.stable_k}"
                f"{'' if self.top is None else f' (top {self.top})'}; {self.result.title()})")


def _prefix(result: ImportanceResult, k: int) -> ImportanceResult:
    if k > result.n_repeats:
        raise ValueError(f"k={k} exceeds the {result.n_repeats} repeats of the result")
    info = dict(result.info)
    info["n_repeats"] = k
    return ImportanceResult(
        result.importances[:k],
        channel_names=result.channel_names,
        class_names=result.class_names,
        drops=None if result.drops is None else result.drops[:k],
        baseline_scores=result.baseline_scores,
        confusion=None if result.confusion is None else result.confusion[:k],
        baseline_confusion=result.baseline_confusion,
        present=result.present_classes,
        groups=result.groups,
        info=info,
    )


def k_ablation(
    model: Any,
    data: Any = None,
    *,
    ks: Sequence[int] = (5, 10, 20, 30, 40, 50, 100, 200, 500, 1000),
    random_state: int | None = 0,
    result: ImportanceResult | None = None,
    top: int | None = None,
    **importance_kwargs: Any,
) -> KAblation:
    """How many repeats k does the ranking need?  Rankings for every k from one run.

    PXPermute's permutations are a function of (seed, cell, channel, repeat), so
    the first k repeats of a ``max(ks)`` run are *exactly* a k-repeat run with
    the same seed.  This function computes ``max(ks)`` repeats once with
    :func:`~pxpermute.channel_importance` and takes every smaller k as a prefix
    (``result.importances[:k]``) -- nothing is recomputed.

    Parameters
    ----------
    model : model accepted by :func:`~pxpermute.channel_importance`
        Ignored (may be ``None``) when ``result`` is given.
    data : test data accepted by :func:`~pxpermute.channel_importance`
    ks : sequence of int, default (5, 10, 20, 30, 40, 50, 100, 200, 500, 1000)
        The published ablation grid.
    random_state : int or None, default 0
    result : ImportanceResult, optional
        A run with at least ``max(ks)`` repeats to reuse instead of computing one.
    top : int, optional
        Judge stability on the first ``top`` ranks only (channels that matter
        nothing keep swapping places forever; ``top`` ignores them).
    **importance_kwargs
        Passed to :func:`~pxpermute.channel_importance` (``perturbation``,
        ``metric``, ``batch_size``, ``device``, ``progress`` ...).

    Returns
    -------
    KAblation
        ``rankings``, ``table``, ``kendall_tau``, ``stable_k``, ``at(k)``, ``plot()``.

    Examples
    --------
    >>> abl = k_ablation(net, test_ds, ks=(5, 10, 50, 100), random_state=0)  # doctest: +SKIP
    >>> abl.stable_k, abl.kendall_tau.round(2).tolist()  # doctest: +SKIP
    """
    if isinstance(ks, (int, np.integer)) or isinstance(ks, (str, bytes)):
        raise TypeError(f"ks must be a sequence of repeat counts, got {ks!r}")
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty; pass repeat counts such as (5, 10, 100)")
    for k in ks:
        _check_int(k, "every k in ks")
    ks = sorted(set(int(k) for k in ks))
    kmax = ks[-1]
    if top is not None:
        top = _check_int(top, "top")
    if result is None:
        if data is None:
            raise ValueError("pass test data (or a precomputed result=)")
        if importance_kwargs.get("perturbation") == "fill":
            raise ValueError("the 'fill' perturbation is deterministic (one repeat); a k ablation needs 'pixel' or 'sample'")
        if "n_repeats" in importance_kwargs:
            raise TypeError("k_ablation sets n_repeats=max(ks) itself; do not pass n_repeats")
        from .importance import channel_importance

        result = channel_importance(model, data, n_repeats=kmax, random_state=random_state, **importance_kwargs)
        if result.n_repeats < kmax:
            raise ValueError(f"channel_importance returned {result.n_repeats} repeats instead of {kmax} "
                             "(adaptive stopping?); switch it off for a k ablation")
    else:
        if not isinstance(result, ImportanceResult):
            raise TypeError(f"result must be an ImportanceResult, got {type(result).__name__}")
        if importance_kwargs:
            raise TypeError(f"with result= no importance options apply; got {sorted(importance_kwargs)}")
        if result.n_repeats < kmax:
            raise ValueError(f"result has {result.n_repeats} repeats but max(ks) = {kmax}")
    if top is not None and top > len(result.channel_names):
        raise ValueError(f"top={top} exceeds the {len(result.channel_names)} scored channels")

    names = result.channel_names
    rows, rankings, taus = [], {}, {}
    ref = _prefix(result, kmax).importance
    for k in ks:
        sub = _prefix(result, k)
        ranking = [names[i] for i in sub.ranking]
        rankings[k] = ranking
        rank_of = np.argsort(sub.ranking) + 1
        norm = sub.normalized().to_numpy()
        for j, ch in enumerate(names):
            rows.append(dict(k=k, channel=ch, importance=float(sub.importance[j]), std=float(sub.importances_std[j]),
                             ci_low=float(sub.ci_low[j]), ci_high=float(sub.ci_high[j]), normalized=float(norm[j]),
                             rank=int(rank_of[j])))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tau = stats.kendalltau(sub.importance, ref).statistic
        taus[k] = float(tau) if tau is not None else float("nan")
    table = pd.DataFrame(rows)
    rk = pd.DataFrame.from_dict(rankings, orient="index", columns=list(range(1, len(names) + 1)))
    rk.index.name = "k"
    tau_s = pd.Series(taus, name="kendall_tau")
    tau_s.index.name = "k"
    return KAblation(ks=ks, result=result, rankings=rk, table=table, kendall_tau=tau_s,
                     stable_k=first_stable_k(rankings, top=top), top=top, stable_k_all=first_stable_k(rankings))


# =============================================================================
# 5. leave-one-channel-out
# =============================================================================
def leave_one_channel_out(
    dataset: IFCDataset,
    *,
    n_splits: int = 5,
    random_state: int | None = 42,
    channels: Sequence[int | str] | None = None,
    groups: Mapping[str, Sequence[int | str]] | None = None,
    reference: Any = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> ImportanceResult:
    """Importance by retraining without each channel: the slow reference.

    For every channel (or group) ``c`` the model is retrained in
    cross-validation on all other channels, on the same folds as a model with all
    channels; the importance of ``c`` in fold ``f`` is
    ``F1_macro(all, f) - F1_macro(all but c, f)``.  Unlike PXPermute it
    measures what the *best model without c* loses, so a channel whose
    information another channel duplicates scores ~0 here even if the trained
    model relies on it.  It costs ``(C + 1) x n_splits`` trainings against one
    training per fold for PXPermute; the cost is recorded in ``info``.

    Parameters
    ----------
    dataset : IFCDataset
    n_splits : int, default 5
    random_state : int or None, default 42
    channels : names or indices, optional
        Channels to leave out one at a time (default: all).
    groups : mapping name -> channels, optional
        Leave out groups of channels instead (e.g. redundant copies together).
    reference : CVResult, optional
        Cross-validation with all channels on the same folds (e.g. from
        :func:`compare_panels`), to save its trainings.
    progress : bool, default True
    **train_kwargs
        Passed to :func:`~pxpermute.training.cross_validate`.

    Returns
    -------
    ImportanceResult
        ``importances`` has one row per fold (the "repeats" are folds; CIs are
        over folds); ``drops`` holds per-class F1 drops per fold;
        ``baseline_scores`` the all-channel per-class F1.  ``info`` holds
        ``method="leave-one-channel-out"``, ``n_trainings``, ``runtime_s``,
        ``n_splits``.

    Examples
    --------
    >>> loco = leave_one_channel_out(ds, n_splits=2, model="small_cnn", max_epochs=3)  # doctest: +SKIP
    >>> loco.ranked_channels, loco.info["n_trainings"], loco.info["runtime_s"]  # doctest: +SKIP
    """
    ds = _check_dataset(dataset, "leave_one_channel_out")
    n_splits = _check_int(n_splits, "n_splits", 2)
    if ds.n_channels < 2:
        raise ValueError("leave-one-channel-out needs at least 2 channels")
    if groups is not None and channels is not None:
        raise ValueError("pass channels= or groups=, not both")
    if groups is not None:
        if not isinstance(groups, Mapping) or not groups:
            raise TypeError("groups must be a non-empty mapping name -> channels")
        units = {str(name): resolve_channels(chs, ds.channel_names) for name, chs in groups.items()}
    else:
        idx = range(ds.n_channels) if channels is None else resolve_channels(channels, ds.channel_names)
        units = {ds.channel_names[i]: [i] for i in idx}
    for name, chs in units.items():
        if len(set(chs)) >= ds.n_channels:
            raise ValueError(f"leaving out {name!r} leaves no channel to train on")
    t0 = time.perf_counter()
    if reference is not None and random_state is None:
        random_state = reference.random_state
    cache = _CVCache(ds, n_splits, random_state, train_kwargs)
    random_state = cache.random_state
    if reference is not None:
        if sorted(getattr(reference, "channel_indices", [])) != list(range(ds.n_channels)):
            raise ValueError("reference must be a CVResult trained on all channels of this data set")
        if reference.n_splits != n_splits or reference.random_state != random_state:
            raise ValueError(f"reference was run with {reference.n_splits} folds and random_state={reference.random_state}; "
                             f"expected {n_splits} and {random_state} (the same folds)")
        cache.results[tuple(range(ds.n_channels))] = reference
        cache.folds = [np.asarray(t) for t in reference.test_indices]
        ref = reference
    else:
        ref, _ = cache(range(ds.n_channels))
    imp = np.zeros((ref.n_splits, len(units)))
    drops = np.zeros((ref.n_splits, len(units), ds.n_classes))
    for j, (name, chs) in enumerate(_bar(list(units.items()), progress, "leave-one-channel-out")):
        keep = [i for i in range(ds.n_channels) if i not in chs]
        cv, _ = cache(keep)
        imp[:, j] = ref.f1_macro - cv.f1_macro
        drops[:, j] = ref.f1_per_class - cv.f1_per_class
    info = dict(method="leave-one-channel-out", metric="f1_macro", aggregate="mean", n_splits=ref.n_splits,
                n_trainings=cache.n_trainings, runtime_s=time.perf_counter() - t0, train_seconds=cache.seconds,
                random_state=random_state, data=ds.name, model=_model_label(train_kwargs), n_samples=len(ds),
                baseline_f1_macro=float(np.mean(ref.f1_macro)), repeats_are="folds")
    counts = np.bincount(ds.labels, minlength=ds.n_classes)
    return ImportanceResult(imp, channel_names=list(units), class_names=ds.class_names, drops=drops,
                            baseline_scores=ref.f1_per_class.mean(axis=0), present=counts > 0,
                            groups={n: _names(ds, c) for n, c in units.items()} if groups is not None else None,
                            info=info)


def side_by_side(results: Sequence[ImportanceResult] | Mapping[str, ImportanceResult]) -> pd.DataFrame:
    """Several importance results (e.g. PXPermute and leave-one-channel-out) and their cost in one table.

    Parameters
    ----------
    results : sequence of ImportanceResult, or mapping label -> ImportanceResult
        They must score the same channels.

    Returns
    -------
    DataFrame
        One row per (method, channel): ``importance``, ``normalized``, ``rank``,
        plus the method's cost: ``seconds`` (``info["runtime_s"]``),
        ``n_trainings`` (``info["n_trainings"]``, 0 when the method only
        evaluates a trained model) and ``n_forward_images`` where known.

    Examples
    --------
    >>> side_by_side({"PXPermute": px, "LOCO": loco}).pivot(index="channel", columns="method", values="rank")  # doctest: +SKIP
    """
    if isinstance(results, Mapping):
        items = list(results.items())
    elif isinstance(results, ImportanceResult):
        items = [(str(results.info.get("method", "result")), results)]
    else:
        items = [(str(r.info.get("method", f"result {i}")), r) for i, r in enumerate(results)]
    if not items:
        raise ValueError("no results given")
    for label, r in items:
        if not isinstance(r, ImportanceResult):
            raise TypeError(f"{label!r} is a {type(r).__name__}, not an ImportanceResult")
        if sorted(r.channel_names) != sorted(items[0][1].channel_names):
            raise ValueError(f"{label!r} scores channels {r.channel_names}, the first result {items[0][1].channel_names}")
    frames = []
    for label, r in items:
        df = r.to_frame()[["channel", "importance", "normalized", "rank"]].copy()
        df.insert(0, "method", label)
        df["seconds"] = r.info.get("runtime_s", np.nan)
        df["n_trainings"] = r.info.get("n_trainings", 0)
        df["n_forward_images"] = r.info.get("n_forward_images", np.nan)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
