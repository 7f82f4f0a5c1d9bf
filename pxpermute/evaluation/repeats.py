"""How many permutation repeats k does a ranking need?

:func:`k_ablation` answers with one run: PXPermute's permutations are a
function of (seed, cell, channel, repeat), so the first k repeats of a
``max(ks)`` run are exactly a k-repeat run with the same seed; every smaller k
is a prefix of the largest run.  The published ablation (Shetab Boushehri et
al. 2024) used k = 5 ... 1000 and found the ranking stable from k = 100 on all
three data sets.
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
from .._validation import check_int
from ..result import ImportanceResult
from ._common import fmt

__all__ = ["KAblation", "k_ablation", "first_stable_k"]


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
        for k in self.ks:
            lines.append(f"{k:>6}  {fmt(self.kendall_tau.loc[k], 2):>6}  {', '.join(self.rankings.loc[k].tolist())}")
        return "\n".join(lines)

    def title(self) -> str:
        return f"k ablation: {self.result.title()}"

    def plot(self, **kwargs):
        """Kendall tau and ranks vs k (see :func:`pxpermute.plotting.plot_k_ablation`)."""
        from ..plotting import plot_k_ablation

        return plot_k_ablation(self, **kwargs)

    def __repr__(self) -> str:
        return (f"KAblation(ks={self.ks}, ranking stable from k={self.stable_k}"
                f"{'' if self.top is None else f' (top {self.top})'}; {self.result.title()})")

    # -- files -------------------------------------------------------------------
    def _to_bundle(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        rmeta, arrays = importance_to_bundle(self.result, f"{prefix}.result")
        return {"ks": self.ks, "top": self.top, "result": rmeta}, arrays

    @classmethod
    def _from_bundle(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str) -> KAblation:
        result = importance_from_bundle(meta["result"], arrays, f"{prefix}.result")
        return k_ablation(None, ks=[int(k) for k in meta["ks"]], result=result, top=meta.get("top"))


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
        check_int(k, "every k in ks", low=1)
    ks = sorted(set(int(k) for k in ks))
    kmax = ks[-1]
    if top is not None:
        top = check_int(top, "top", low=1)
    if result is None:
        if data is None:
            raise ValueError("pass test data (or a precomputed result=)")
        if importance_kwargs.get("perturbation") == "fill":
            raise ValueError("the 'fill' perturbation is deterministic (one repeat); a k ablation needs 'pixel' or 'sample'")
        if "n_repeats" in importance_kwargs:
            raise TypeError("k_ablation sets n_repeats=max(ks) itself; do not pass n_repeats")
        from ..importance import channel_importance

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
