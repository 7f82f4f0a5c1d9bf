"""Adaptive k: add permutation repeats in chunks until the channel ranking is settled.

:class:`AdaptiveK` is the rule, :func:`ranking_settled` evaluates it on the
per-repeat importances seen so far; :func:`pxpermute.runner.run_repeats` applies
it between chunks of repeats.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import ParameterError, check_float, check_int
from .stats import t_interval

__all__ = ["AdaptiveK", "ranking_settled"]


@dataclass(frozen=True)
class AdaptiveK:
    """Rule for adding permutation repeats in chunks until the ranking is settled.

    After every chunk of ``chunk`` repeats, once at least ``min_repeats`` are
    done, the run stops if **either**

    1. *the ranking is resolved*: every pair of units adjacent in the current
       ranking is settled, i.e. their ``confidence`` t-intervals of the mean
       importance over repeats are disjoint, **or** their summary importances
       differ by at most ``tol`` times the range of importances (``max - min``)
       -- a tie that more repeats would not usefully order (e.g. two channels
       the model ignores, both near 0; channels with identical repeats are
       always tied) --, **or** both intervals' half-widths are at most ``tol``
       times the range: both are measured precisely enough that more repeats
       could only swap them by a negligible amount; **or**
    2. *the ranking is stable*: the ranking (order of all units) has been the
       same at the last ``patience + 1`` evaluations, i.e. unchanged while
       ``patience * chunk`` repeats were added.

    The run never exceeds ``n_repeats`` (the cap, 100 by default as published);
    ``result.info["n_repeats"]`` is the k actually used and
    ``result.info["adaptive"]`` records the rule and why it stopped.

    Parameters
    ----------
    min_repeats : int, default 20
        Repeats before the first check.
    chunk : int, default 10
        Repeats added between checks.
    patience : int, default 3
        Unchanged consecutive rankings (after the first) required by rule 2.
    confidence : float, default 0.95
        Level of the t-intervals of rule 1.
    tol : float, default 0.02
        Relative tie tolerance of rule 1 (fraction of the importance range).

    Examples
    --------
    >>> rule = AdaptiveK(min_repeats=10, chunk=5)
    >>> rule.checkpoints(30)
    [10, 15, 20, 25, 30]
    """

    min_repeats: int = 20
    chunk: int = 10
    patience: int = 3
    confidence: float = 0.95
    tol: float = 0.02

    def __post_init__(self) -> None:
        check_int(self.chunk, "AdaptiveK.chunk", low=1)
        check_int(self.min_repeats, "AdaptiveK.min_repeats", low=1)
        if self.min_repeats < 2:
            raise ParameterError(f"AdaptiveK.min_repeats must be >= 2 (a confidence interval needs 2 repeats), "
                                 f"got {self.min_repeats}")
        check_int(self.patience, "AdaptiveK.patience", low=1)
        check_float(self.confidence, "AdaptiveK.confidence", low=0, high=1, closed="neither")
        check_float(self.tol, "AdaptiveK.tol", low=0, high=1, closed="left")

    def checkpoints(self, n_repeats: int) -> list[int]:
        """Repeat counts at which the rule is evaluated (the last one is the cap)."""
        pts = list(range(self.min_repeats, n_repeats, self.chunk))
        return [p for p in pts if p < n_repeats] + [n_repeats]

    @classmethod
    def coerce(cls, value: Any) -> AdaptiveK | None:
        """``False``/``None`` -> None, ``True`` -> defaults, a mapping -> fields, an AdaptiveK as is."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"min_repeats", "chunk", "patience", "confidence", "tol"}
            if unknown:
                raise TypeError(f"unknown adaptive option(s) {sorted(unknown)}; valid: min_repeats, chunk, patience, confidence, tol")
            return cls(**value)
        raise TypeError(f"adaptive must be a bool, a dict of options or an AdaptiveK, got {type(value).__name__}")


def ranking_settled(importances: np.ndarray, *, aggregate: str = "mean", rule: AdaptiveK | None = None,
                    history: list[tuple[int, ...]] | None = None) -> tuple[bool, str]:
    """Evaluate the :class:`AdaptiveK` rule on per-repeat importances ``(R, U)``.

    ``history`` holds the rankings seen at earlier evaluations (oldest first);
    the current ranking is appended to it.  Returns ``(settled, reason)``.

    Examples
    --------
    >>> imp = np.array([[0.5, 0.1, 0.0], [0.52, 0.12, 0.0], [0.49, 0.09, 0.0]])
    >>> ranking_settled(imp)
    (True, 'resolved')
    """
    rule = rule or AdaptiveK()
    imp = np.asarray(importances, dtype=np.float64)
    R, U = imp.shape
    summary = np.median(imp, axis=0) if aggregate == "median" else imp.mean(axis=0)
    order = tuple(int(i) for i in np.argsort(-summary, kind="stable"))
    if history is not None:
        history.append(order)
    if U < 2:
        return True, "single unit"
    ti = t_interval(imp, rule.confidence, axis=0, omit_nan=False)
    mean = ti.mean
    half = ti.high - ti.mean if R > 1 else np.full(U, np.inf)
    tie = rule.tol * float(summary.max() - summary.min())
    resolved = True
    for a, b in zip(order[:-1], order[1:]):
        if abs(summary[a] - summary[b]) <= tie or max(half[a], half[b]) <= tie:
            continue
        if not (mean[a] - half[a] > mean[b] + half[b]):
            resolved = False
            break
    if resolved:
        return True, "resolved"
    if history is not None and len(history) >= rule.patience + 1 and len(set(history[-(rule.patience + 1):])) == 1:
        return True, "stable"
    return False, "unsettled"
