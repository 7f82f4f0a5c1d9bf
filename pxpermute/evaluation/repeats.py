"""How many permutation repeats k does a ranking need?

:func:`k_ablation` answers with one run: PXPermute's permutations are a
function of (seed, cell, channel, repeat), so the first k repeats of a
``max(ks)`` run are exactly a k-repeat run with the same seed; every smaller k
is a prefix of the largest run.  The published ablation (Shetab Boushehri et
al. 2024) used k = 5 ... 1000 and found the ranking stable from k = 100 on all
three data sets.

Prefixes of one run are nested (the k = 50 run contains the k = 20 run), so
their agreement with the largest k flatters stability: part of it is shared
permutations.  :func:`k_ablation` therefore also runs ``n_seeds`` independent
seeds and reports, per k, how well independent k-repeat runs agree with each
other (``seed_table``, ``stable_k_seeds``) -- the question a user with one run
of k repeats actually has.  Both describe the permutation noise only (same
model, same test cells); no number here covers retraining.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._protocol import SavableResult, importance_from_bundle, importance_to_bundle
from .._text import fill, glue
from .._validation import check_int
from ..result import ImportanceResult
from ._common import fmt

__all__ = ["KAblation", "k_ablation", "first_stable_k", "seed_agreement"]


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
    cut = slice(None) if top is None else slice(0, check_int(top, "top", low=1))
    final = list(rankings[ks[-1]])[cut]
    stable = ks[-1]
    for k in reversed(ks):
        if list(rankings[k])[cut] == final:
            stable = k
        else:
            break
    return stable


def seed_agreement(results: Sequence[ImportanceResult], ks: Sequence[int], *, top: int | None = None) -> pd.DataFrame:
    """Agreement between independent seeds at every k: one row per k.

    ``results`` are runs with independent ``random_state`` (each with at least
    ``max(ks)`` repeats); at k each contributes its first k repeats, which is
    exactly a k-repeat run with its seed.  Columns: ``n_seeds``,
    ``tau_between_seeds`` (mean Kendall tau-b of the importances over all pairs
    of seeds), ``same_ranking`` (share of seed pairs with the identical full
    ranking) and ``same_top`` (the same for the first ``top`` ranks; equal to
    ``same_ranking`` without ``top``).  Ties (e.g. channels at exactly 0) are
    broken by channel order in both runs alike, so they do not count as changes.

    Examples
    --------
    >>> a = ImportanceResult([[0.3, 0.1, 0.0]] * 4, channel_names=list("ABC"))
    >>> b = ImportanceResult([[0.1, 0.3, 0.0]] * 2 + [[0.3, 0.1, 0.0]] * 2, channel_names=list("ABC"))
    >>> seed_agreement([a, b], [1, 4], top=1)[["same_ranking", "same_top"]].to_numpy().tolist()
    [[0.0, 0.0], [1.0, 1.0]]
    """
    import itertools

    results = list(results)
    rows = []
    for k in sorted(int(v) for v in ks):
        subs = [_prefix(r, k) for r in results]
        pairs = list(itertools.combinations(range(len(subs)), 2))
        taus, same, same_top = [], [], []
        for i, j in pairs:
            a, b = subs[i], subs[j]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tau = stats.kendalltau(a.importance, b.importance).statistic
            taus.append(np.nan if tau is None else float(tau))
            ra, rb = list(a.ranking), list(b.ranking)
            same.append(ra == rb)
            same_top.append(ra[:top] == rb[:top] if top is not None else ra == rb)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rows.append({"k": k, "n_seeds": len(subs),
                         "tau_between_seeds": float(np.nanmean(taus)) if taus else np.nan,
                         "same_ranking": float(np.mean(same)) if same else np.nan,
                         "same_top": float(np.mean(same_top)) if same_top else np.nan})
    return pd.DataFrame(rows).set_index("k")


def _stable_from(flags: pd.Series) -> int | None:
    """Smallest k from which every larger k has ``flags`` True (None if the largest k has not)."""
    out = None
    for k in sorted(flags.index, reverse=True):
        if bool(flags.loc[k]):
            out = int(k)
        else:
            break
    return out


@dataclass(repr=False)
class KAblation(SavableResult):
    """Outcome of :func:`k_ablation`.

    The result protocol: :meth:`to_frame` (``table``), :meth:`summary` (text),
    :meth:`plot`, :meth:`save` / :meth:`load` (the file holds the run; the
    tables are recomputed from it on loading, exactly).

    Attributes
    ----------
    ks : list of int
    result : ImportanceResult
        The run of the first seed with ``max(ks)`` repeats; ``at(k)`` gives its k-prefix.
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
    results : list of ImportanceResult
        One ``max(ks)``-repeat run per independent seed (``results[0] is result``).
    seed_table : DataFrame or None
        Per k, agreement between the independent seeds (:func:`seed_agreement`);
        None with one seed.
    stable_k_seeds : int or None
        Smallest k from which every pair of seeds gives the same (top-``top``)
        ranking at that k and every larger k; None if they still disagree at
        ``max(ks)`` (or with one seed).
    """

    ks: list[int]
    result: ImportanceResult
    rankings: pd.DataFrame
    table: pd.DataFrame
    kendall_tau: pd.Series
    stable_k: int
    top: int | None = None
    stable_k_all: int | None = None
    results: list[ImportanceResult] | None = None
    seed_table: pd.DataFrame | None = None
    stable_k_seeds: int | None = None

    def at(self, k: int) -> ImportanceResult:
        """The result with only the first ``k`` repeats (exactly what a run with k repeats gives)."""
        k = check_int(k, "k", low=1)
        return _prefix(self.result, k)

    def to_frame(self) -> pd.DataFrame:
        """One row per (k, channel): importance, std, 95 % CI over the k repeats, normalized, rank (a copy)."""
        return self.table.copy()

    def summary(self) -> str:
        """Printable text: the ranking at every k with Kendall's tau against the largest k, and the stable k."""
        lines = [self.title(),
                 f"ranking stable from k = {self.stable_k}" + ("" if self.top is None else f" (top {self.top})")
                 + ("" if self.top is None else f"; full ranking from k = {self.stable_k_all}"),
                 f"{'k':>6}  {'tau':>6}  ranking (most important first)"]
        for k in self.ks:  # a long ranking continues under its column
            lines.append(fill(f"{k:>6}  {fmt(self.kendall_tau.loc[k], 2):>6}  "
                              f"{', '.join(map(glue, self.rankings.loc[k].tolist()))}", indent=" " * 16))
        lines.append("(k-prefixes of one run are nested, which flatters this agreement)")
        if self.seed_table is not None:
            st = self.seed_table
            what = "same ranking" if self.top is None else f"same top {self.top}"
            lines.append(f"{len(self.results or [])} independent seeds: {what} in every pair from k = "
                         f"{self.stable_k_seeds if self.stable_k_seeds is not None else 'never (up to max k)'}")
            lines.append(f"{'k':>6}  {'tau':>6}  {'same ranking':>12}  {'same top':>8}  (between seeds)")
            for k in self.ks:
                r = st.loc[k]
                lines.append(f"{k:>6}  {fmt(r.tau_between_seeds, 2):>6}  {r.same_ranking:>12.2f}  {r.same_top:>8.2f}")
        lines.append("Permutation noise only (one model, one test set); nothing here covers retraining.")
        return fill("\n".join(lines))  # lines of at most 100 characters

    def title(self) -> str:
        return f"k ablation: {self.result.title()}"

    def plot(self, **kwargs):
        """Kendall tau and ranks vs k (see :func:`pxpermute.plotting.plot_k_ablation`)."""
        from ..plotting import plot_k_ablation

        return plot_k_ablation(self, **kwargs)

    def __repr__(self) -> str:  # lines of at most 100 characters (the book's width)
        return fill(f"KAblation(ks={self.ks}, ranking stable from k={self.stable_k}"
                    f"{'' if self.top is None else f' (top {self.top})'}; {self.result.title()})")

    # -- files -------------------------------------------------------------------
    def _to_bundle(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        rmeta, arrays = importance_to_bundle(self.result, f"{prefix}.result")
        meta = {"ks": self.ks, "top": self.top, "result": rmeta}
        extra = []
        for i, r in enumerate((self.results or [])[1:], 1):
            m, a = importance_to_bundle(r, f"{prefix}.seed{i}")
            extra.append(m)
            arrays.update(a)
        if extra:
            meta["other_seeds"] = extra
        return meta, arrays

    @classmethod
    def _from_bundle(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str) -> KAblation:
        result = importance_from_bundle(meta["result"], arrays, f"{prefix}.result")
        others = [importance_from_bundle(m, arrays, f"{prefix}.seed{i}")
                  for i, m in enumerate(meta.get("other_seeds") or [], 1)]
        return k_ablation(None, ks=[int(k) for k in meta["ks"]], result=[result, *others] if others else result,
                          top=meta.get("top"))


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
    n_seeds: int = 3,
    result: ImportanceResult | Sequence[ImportanceResult] | None = None,
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
        Seed of the first run; seed s (0-based) uses ``random_state + s``
        (``None``: fresh seeds).
    n_seeds : int, default 3
        Independent runs of ``max(ks)`` repeats (each costs one run).  With 2 or
        more, ``seed_table`` and ``stable_k_seeds`` report how well independent
        k-repeat runs agree -- unlike the nested prefixes of one run.
    result : ImportanceResult or list of them, optional
        Run(s) with at least ``max(ks)`` repeats to reuse instead of computing
        them (a list: one per independent seed; ``n_seeds`` is then ignored).
    top : int, optional
        Judge stability on the first ``top`` ranks only (channels that matter
        nothing keep swapping places forever; ``top`` ignores them).
    **importance_kwargs
        Passed to :func:`~pxpermute.channel_importance` (``perturbation``,
        ``metric``, ``batch_size``, ``device``, ``progress`` ...).

    ``n_bootstrap`` defaults to 0 here: a prefix cannot reuse a bootstrap pooled
    over all ``max(ks)`` repeats, so the intervals in ``table`` are the
    permutation (Monte Carlo) intervals of the k repeats.

    Returns
    -------
    KAblation
        ``rankings``, ``table``, ``kendall_tau``, ``stable_k``, ``seed_table``,
        ``stable_k_seeds``, ``at(k)``, ``plot()``.

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
        check_int(k, "every k in ks", low=1)
    ks = sorted(set(int(k) for k in ks))
    kmax = ks[-1]
    if top is not None:
        top = check_int(top, "top", low=1)
    if result is None:
        n_seeds = check_int(n_seeds, "n_seeds", low=1)
        if data is None:
            raise ValueError("pass test data (or a precomputed result=)")
        if importance_kwargs.get("perturbation") == "fill":
            raise ValueError("the 'fill' perturbation is deterministic (one repeat); a k ablation needs 'pixel' or 'sample'")
        if "n_repeats" in importance_kwargs:
            raise TypeError("k_ablation sets n_repeats=max(ks) itself; do not pass n_repeats")
        from ..importance import channel_importance

        importance_kwargs.setdefault("n_bootstrap", 0)
        results = []
        for s in range(n_seeds):
            seed = None if random_state is None else int(random_state) + s
            run = channel_importance(model, data, n_repeats=kmax, random_state=seed, **importance_kwargs)
            if run.n_repeats < kmax:
                raise ValueError(f"channel_importance returned {run.n_repeats} repeats instead of {kmax} "
                                 "(adaptive stopping?); switch it off for a k ablation")
            results.append(run)
        result = results[0]
    else:
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        if not results:
            raise ValueError("result is an empty list")
        for r in results:
            if not isinstance(r, ImportanceResult):
                raise TypeError(f"result must be an ImportanceResult (or a list of them), got {type(r).__name__}")
            if r.n_repeats < kmax:
                raise ValueError(f"result has {r.n_repeats} repeats but max(ks) = {kmax}")
            if r.channel_names != results[0].channel_names:
                raise ValueError("the results of the seeds must score the same channels")
        if importance_kwargs:
            raise TypeError(f"with result= no importance options apply; got {sorted(importance_kwargs)}")
        result = results[0]
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
    seed_table = stable_seeds = None
    if len(results) > 1:
        seed_table = seed_agreement(results, ks, top=top)
        stable_seeds = _stable_from(seed_table["same_top"] == 1.0)
    return KAblation(ks=ks, result=result, rankings=rk, table=table, kendall_tau=tau_s,
                     stable_k=first_stable_k(rankings, top=top), top=top, stable_k_all=first_stable_k(rankings),
                     results=results, seed_table=seed_table, stable_k_seeds=stable_seeds)
