"""Panel design: which stains does an experiment need, and how sure are we?

Tools that turn a channel ranking into an experimental decision, all built on
the package's single retraining routine :func:`pxpermute.training.cross_validate`
(through :class:`~pxpermute.evaluation.retrain.SubsetTrainer`: same folds for
every channel subset, because the folds depend only on the labels and
``random_state``; every distinct subset trained once):

* :func:`compare_panels` -- stain-free channels only vs stain-free + top-k
  stains of a ranking vs all channels (the paper's Fig. 5), with 95 % CIs over
  folds and paired tests across folds.
* :func:`minimal_panel` -- the smallest set of stains whose cross-validated
  F1-macro stays within a tolerance of all channels, searched along the ranking
  (and, for comparison, by greedy forward selection), with the trainings spent.
* :func:`multistage_design` -- more candidate markers than one instrument run
  holds: rank the markers run by run, keep the best of each, then rank the union
  in a final run (the paper's example: 20 markers, 10 per run, top 5 of each).
* :func:`paired_tests` -- the paired tests across folds used above.

Statistics across folds
-----------------------
Cross-validation gives one score per fold, i.e. 5 numbers with the default
5 folds.  Confidence intervals are Student-t intervals over folds
(:func:`pxpermute.stats.t_interval`); they cover fold-to-fold variation (which
cells are held out, and the training run), nothing else.  Panels are compared
with *paired* tests on the per-fold differences (same test cells for every panel):

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._protocol import (
    SavableResult,
    as_float,
    frame_from_bundle,
    frame_to_bundle,
    importance_from_bundle,
    importance_to_bundle,
)
from .._validation import check_choice, check_float, check_int
from ..datasets.base import IFCDataset, resolve_channels
from ..result import ImportanceResult
from ..stats import t_interval
from ._common import (
    as_dataset,
    check_n_splits,
    fmt,
    model_label,
    names_of,
    progress_bar,
    ranked_stains,
    ranking_label,
)
from .retrain import SubsetTrainer

__all__ = [
    "paired_tests",
    "PanelComparison",
    "compare_panels",
    "PanelSearch",
    "MinimalPanel",
    "minimal_panel",
    "MultiStageResult",
    "multistage_design",
]

TESTS = ("ttest", "corrected_ttest", "wilcoxon")


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
@dataclass(repr=False)
class PanelComparison(SavableResult):
    """Outcome of :func:`compare_panels`.

    The result protocol: :meth:`to_frame` (``scores``), :meth:`summary` (text),
    :meth:`statement`, :meth:`plot`, :meth:`save` / :meth:`load`.

    Attributes
    ----------
    scores : DataFrame
        Tidy, one row per (panel, fold): ``panel``, ``kind`` (``"stain-free"``,
        ``"top-k"``, ``"all"``), ``k``, ``n_channels``, ``channels``, ``fold``,
        ``f1_macro``, ``accuracy``.
    panel_table : DataFrame
        One row per panel: mean, std and 95 % t-CI over folds of F1-macro and
        accuracy (also :meth:`summary_frame`).
    tests : DataFrame
        One row per smaller panel vs all channels: ``mean_diff`` (all - panel,
        F1-macro), the p-values of the three paired tests, the test used for the
        decision and ``significant`` (p < ``alpha``).
    cv_results : dict
        Panel name -> :class:`~pxpermute.training.CVResult` (with the trained
        models; a loaded result has ``None`` in place of the models).
    info : dict
        Data, model, seed, folds, ranking provenance, trainings, seconds.
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
        """Plain-language verdict for every smaller panel."""
        lines = []
        test, alpha = self.info["test"], self.info["alpha"]
        ref = self.panel_table.set_index("panel").loc["all channels"]
        for _, row in self.tests.iterrows():
            p = row[f"p_{test}"]
            verdict = "significantly below" if row["significant"] else "not significantly below"
            lines.append(
                f"{row['panel']}: F1-macro {row['f1_macro_mean']:.3f} vs {ref['f1_macro_mean']:.3f} with all channels "
                f"(difference {row['mean_diff']:+.3f}); {verdict} all channels ({test}, one-sided p = {p:.3g}, "
                f"alpha = {alpha}, {self.info['n_splits']} folds)."
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """Printable text: every panel's F1-macro with its 95 % CI over folds, then the verdicts."""
        t = self.panel_table
        width = max([len(str(p)) for p in t.panel] + [5])
        lines = [self.title(), f"F1-macro per panel, mean [95 % t-interval over {self.info.get('n_splits')} folds]:"]
        for r in t.itertuples():
            lines.append(f"  {r.panel:<{width}}  {fmt(r.f1_macro_mean)} [{fmt(r.f1_macro_ci_low)}, "
                         f"{fmt(r.f1_macro_ci_high)}]  channels: {r.channels}")
        lines.append(self.statement())
        return "\n".join(lines)

    def title(self) -> str:
        i = self.info
        return (f"{i.get('data')}: panel comparison, {i.get('n_splits')}-fold CV, model={i.get('model')}, "
                f"seed={i.get('random_state')}, ranking={i.get('ranking')}")

    def plot(self, ax=None, **kwargs):
        """Per-fold F1-macro and mean with 95 % CI per panel (see :func:`pxpermute.plotting.plot_panel_comparison`)."""
        from ..plotting import plot_panel_comparison

        return plot_panel_comparison(self, ax=ax, **kwargs)

    def __repr__(self) -> str:
        body = ", ".join(f"{r.panel}={r.f1_macro_mean:.3f}" for r in self.panel_table.itertuples())
        return f"PanelComparison({body})"

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
        row = {"panel": panel, "kind": g["kind"].iloc[0], "k": g["k"].iloc[0], "n_channels": int(g["n_channels"].iloc[0]),
               "channels": g["channels"].iloc[0], "n_folds": len(g)}
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
    test: str = "ttest",
    alpha: float = 0.05,
    margin: float = 0.02,
    validation_fraction: float = 0.2,
    n_jobs: int | None = None,
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
    margin : float, default 0.02
        Largest acceptable loss of F1-macro for the non-inferiority tests:
        ``tests`` also holds ``ni_upper`` (one-sided upper bound of the loss,
        Nadeau-Bengio corrected), ``ni_p`` and ``ni_outcome`` ("non-inferior",
        "worse", "inconclusive"; :func:`pxpermute.inference.noninferiority_test`),
        and ``fixed_sequence``: the top-k panels tested from the largest k down
        at ``alpha``, stopping at the first one not shown non-inferior
        (:func:`pxpermute.inference.fixed_sequence`; familywise error alpha
        without adjustment).  "not significantly below" (``significant``) is not
        evidence that a panel is as good; ``ni_outcome`` asks that question.
        The ranking should come from data not used for this comparison.
    validation_fraction : float, default 0.2
        Share of each training fold held out for early stopping (the recipe's
        20 %): the model is fitted on ``(1 - 1/n_splits)(1 - v)`` of the cells,
        which sets the Nadeau-Bengio ratio (0.3125 for 5 folds).
    n_jobs : int or None, default None
        Trainings in parallel through joblib (``-1``: all cores; a Dask cluster
        inside ``joblib.parallel_config(backend="dask")``); the results do not
        depend on it (seeds are fixed per training), see
        :func:`~pxpermute.training.run_trainings`.
    progress : bool, default True
        Progress bar counting finished trainings.
    **train_kwargs
        Passed to :func:`~pxpermute.training.cross_validate` (``model``,
        ``max_epochs``, ``batch_size`` ...).

    Returns
    -------
    PanelComparison
        ``scores`` (per fold), ``panel_table`` (mean, 95 % CI per panel), ``tests``
        (paired tests vs all channels), ``summary()`` (text), ``statement()``,
        ``plot()``, ``save()``.

    Examples
    --------
    >>> from pxpermute.datasets.synthetic import make_synthetic
    >>> ds = make_synthetic("synapse", n_samples=200, image_size=16)
    >>> cmp = compare_panels(ds, ["CD3", "F-actin", "MHCII"], k=(1, 2), n_splits=2,  # doctest: +SKIP
    ...                      model="small_cnn", max_epochs=2)
    >>> print(cmp.statement())  # doctest: +SKIP
    """
    ds = as_dataset(dataset, "compare_panels")
    stains = ranked_stains(ds, ranking)
    ks = [k] if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else list(k)
    if not ks:
        raise ValueError("k is empty; pass at least one number of top stains")
    for kk in ks:
        check_int(kk, "every k", low=1)
    if max(ks) > len(stains):
        raise ValueError(f"k={max(ks)} exceeds the {len(stains)} stains in the ranking ({names_of(ds, stains)})")
    check_choice(test, "test", TESTS)
    alpha = check_float(alpha, "alpha", low=0, high=1, closed="neither")
    n_splits = check_n_splits(n_splits)
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
    cache = SubsetTrainer(ds, n_splits=n_splits, random_state=random_state, train_kwargs=train_kwargs, n_jobs=n_jobs)
    fitted = cache.fit_many([p[3] for p in panels], progress=progress, desc="panels")
    rows, cvs = [], {}
    for (name, kind, kk, chans), (cv, _) in zip(panels, fitted):
        cvs[name] = cv
        for f in range(cv.n_splits):
            rows.append(dict(panel=name, kind=kind, k=kk, n_channels=len(chans), channels=",".join(cv.channels), fold=f,
                             f1_macro=float(cv.f1_macro[f]), accuracy=float(cv.accuracy[f])))
    scores = pd.DataFrame(rows)
    panel_table = _summarize_scores(scores)
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
    if len(tests):
        from ..inference import fixed_sequence, nb_test_train_ratio, noninferiority_test

        ratio = nb_test_train_ratio(int(n_splits), float(validation_fraction))
        ni = [noninferiority_test(ref.f1_macro, cvs[name].f1_macro, margin=margin, test_train_ratio=ratio, alpha=alpha)
              for name in tests["panel"]]
        tests["ni_upper"] = [r["upper"] for r in ni]
        tests["ni_p"] = [r["p_value"] for r in ni]
        tests["ni_outcome"] = [r["outcome"] for r in ni]
        tests["fixed_sequence"] = "not in sequence"
        topk = tests[tests["kind"] == "top-k"].sort_values("k", ascending=False)
        for idx, o in zip(topk.index, fixed_sequence(topk["ni_p"].to_numpy(), alpha=alpha)):
            tests.loc[idx, "fixed_sequence"] = {"rejected": "non-inferior", "not rejected": "inconclusive",
                                                "not tested": "not tested"}[o["outcome"]]
    rank_desc = ranking_label(ranking)
    info = dict(data=ds.name, model=model_label(train_kwargs), random_state=cache.random_state, n_splits=n_splits,
                ranking=rank_desc, ranked_stains=names_of(ds, stains), stain_free=names_of(ds, sf), test=test, alpha=alpha,
                margin=margin, validation_fraction=validation_fraction,
                n_trainings=cache.n_trainings, seconds=time.perf_counter() - t0)
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


@dataclass(repr=False)
class MinimalPanel(SavableResult):
    """Outcome of :func:`minimal_panel`.

    The result protocol: :meth:`to_frame` (every evaluated panel of every
    strategy), :meth:`summary` (text), :meth:`plot`, :meth:`save` / :meth:`load`.

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
        Channel tuple (dataset indices) -> CVResult (a loaded result has
        ``None`` in place of the models).
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
        if not self.searches:
            return pd.DataFrame()
        return pd.concat([s.path.assign(strategy=name) for name, s in self.searches.items()], ignore_index=True)

    def to_frame(self) -> pd.DataFrame:
        """All evaluated panels of every strategy, one row each (same as :attr:`path`)."""
        return self.path

    def summary(self) -> str:
        """Printable text: the reference score, the threshold and each strategy's answer with its cost."""
        lines = [self.title(),
                 f"all channels: F1-macro {fmt(self.reference_score)}; threshold {fmt(self.threshold)} "
                 f"(tolerance {self.tolerance:g}); {self.n_trainings} trainings, {self.seconds:.0f} s in total"]
        for name, s in self.searches.items():
            verdict = "within tolerance" if s.found else "no smaller panel within tolerance"
            lines.append(f"  {name:<8} stains {s.stains or '[]'} -> panel {s.panel} ({verdict}; "
                         f"{s.n_trainings} trainings on its own)")
        return "\n".join(lines)

    def title(self) -> str:
        i = self.info
        return (f"{i.get('data')}: minimal panel (tolerance {self.tolerance:g} F1), {i.get('n_splits')}-fold CV, "
                f"model={i.get('model')}, seed={i.get('random_state')}")

    def plot(self, ax=None, **kwargs):
        """F1-macro along each search path with the tolerance band (see :func:`pxpermute.plotting.plot_panel_search`)."""
        from ..plotting import plot_panel_search

        return plot_panel_search(self, ax=ax, **kwargs)

    def __repr__(self) -> str:
        extra = ""
        if "greedy" in self.searches:
            extra = f", greedy {self.searches['greedy'].stains}"
        return (f"MinimalPanel(stains {self.stains} (ranking){extra}; all channels F1 {self.reference_score:.3f}, "
                f"tolerance {self.tolerance:g}; {self.n_trainings} trainings, {self.seconds:.0f} s)")

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

def _path_row(step: int, stains: list[int], added: str | None, cv: Any, threshold: float, cached: bool,
              ds: IFCDataset) -> dict[str, Any]:
    t = t_interval(np.asarray(cv.f1_macro, float))
    return dict(step=step, n_stains=len(stains), added=added, channels=",".join(cv.channels),
                stains=",".join(names_of(ds, stains)), f1_mean=t.mean, f1_std=t.std, ci_low=t.low, ci_high=t.high,
                within_tolerance=bool(t.mean >= threshold), chosen=True, cached=cached)


def minimal_panel(
    dataset: IFCDataset,
    ranking: Any,
    *,
    tolerance: float = 0.02,
    greedy: bool = False,
    n_splits: int = 5,
    random_state: int | None = 42,
    max_stains: int | None = None,
    n_jobs: int | None = None,
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
    n_jobs : int or None, default None
        Trainings in parallel (every candidate of a greedy step at once) through joblib (``-1``: all cores; a Dask cluster
        inside ``joblib.parallel_config(backend="dask")``); the results do not
        depend on it (seeds are fixed per training), see
        :func:`~pxpermute.training.run_trainings`.
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
    ds = as_dataset(dataset, "minimal_panel")
    stains = ranked_stains(ds, ranking)
    tolerance = check_float(tolerance, "tolerance (F1 units)", low=0, high=1, closed="left")
    n_splits = check_n_splits(n_splits)
    all_stains = [i for i in range(ds.n_channels) if not ds.stain_free[i]]
    if max_stains is not None:
        max_stains = check_int(max_stains, "max_stains", low=0)
    limit = len(all_stains) if max_stains is None else min(max_stains, len(all_stains))
    sf = [i for i in range(ds.n_channels) if ds.stain_free[i]]
    t0 = time.perf_counter()
    cache = SubsetTrainer(ds, n_splits=n_splits, random_state=random_state, train_kwargs=train_kwargs, n_jobs=n_jobs)
    ref, _ = cache.fit(range(ds.n_channels))
    reference = float(np.mean(ref.f1_macro))
    threshold = reference - float(tolerance)
    searches: dict[str, PanelSearch] = {}

    # -- along the ranking -------------------------------------------------------
    rows, used, chosen = [], ref.n_splits, None
    start = 0 if sf else 1
    for m in progress_bar(range(start, min(len(stains), limit) + 1), progress, "ranking search"):
        sel = stains[:m]
        cv, new = cache.fit(sf + sel)  # the full set is the cached reference
        used += cv.n_splits
        rows.append(_path_row(m, sel, ds.channel_names[sel[-1]] if sel else None, cv, threshold, new == 0, ds))
        if rows[-1]["within_tolerance"]:
            chosen = sel
            break
    found = chosen is not None and len(chosen) < len(all_stains)
    if chosen is None:  # nothing within tolerance: the best evaluated panel (all stains when the ranking covers them)
        best = max(range(len(rows)), key=lambda r: rows[r]["f1_mean"])
        chosen = stains[: rows[best]["n_stains"]] if rows else []
    searches["ranking"] = PanelSearch("ranking", names_of(ds, chosen), names_of(ds, sorted(sf + chosen)), found,
                                      pd.DataFrame(rows), used)

    # -- greedy forward ----------------------------------------------------------
    if greedy:
        rows, used, current = [], ref.n_splits, []
        g_found = False
        if sf:
            cv, new = cache.fit(sf)
            used += cv.n_splits
            rows.append(_path_row(0, [], None, cv, threshold, new == 0, ds))
            g_found = rows[-1]["within_tolerance"]
        step = 0
        while not g_found and len(current) < limit:
            step += 1
            cands = [c for c in all_stains if c not in current]
            best_row, best_c = None, None
            fitted = cache.fit_many([sf + current + [c] for c in cands], progress=progress,
                                    desc=f"greedy step {step}")
            for c, (cv, new) in zip(cands, fitted):
                sel = current + [c]
                used += cv.n_splits
                row = _path_row(step, sel, ds.channel_names[c], cv, threshold, new == 0, ds)
                row["chosen"] = False
                rows.append(row)
                if best_row is None or row["f1_mean"] > best_row["f1_mean"]:
                    best_row, best_c = row, c
            best_row["chosen"] = True
            current.append(best_c)
            g_found = best_row["within_tolerance"]
        searches["greedy"] = PanelSearch("greedy", names_of(ds, current), names_of(ds, sorted(sf + current)),
                                         bool(g_found and len(current) < len(all_stains)), pd.DataFrame(rows), used)

    info = dict(data=ds.name, model=model_label(train_kwargs), random_state=cache.random_state, n_splits=n_splits,
                ranked_stains=names_of(ds, stains), stain_free=names_of(ds, sf),
                ranking=ranking_label(ranking))
    r = searches["ranking"]
    return MinimalPanel(panel=r.panel, stains=r.stains, reference_score=reference, threshold=threshold,
                        tolerance=float(tolerance), searches=searches, n_trainings=cache.n_trainings,
                        seconds=time.perf_counter() - t0, cv_results=dict(cache.results), info=info)


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
        return "\n".join(lines)

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
        return f"MultiStageResult(panel {self.panel}; {len(self.stages)} runs + final)"

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


