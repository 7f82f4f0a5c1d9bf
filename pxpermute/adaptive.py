"""Adaptive k: add permutation repeats in chunks until the channel ranking is settled.

:class:`AdaptiveK` is the rule, :func:`ranking_settled` evaluates it on the
per-repeat importances seen so far (through the confidence sequences of
:func:`pxpermute.inference.sequential_ranking`); :func:`pxpermute.runner.run_repeats`
applies it between chunks of repeats.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ._validation import ParameterError, check_float, check_int
from .inference import CS_METHODS, RankingDecision, sequential_ranking

__all__ = ["AdaptiveK", "ranking_settled"]


@dataclass(frozen=True)
class AdaptiveK:
    """Rule for adding permutation repeats in chunks until the ranking is settled, valid under optional stopping.

    After every chunk of ``chunk`` repeats, once at least ``min_repeats`` are
    done, :func:`pxpermute.inference.sequential_ranking` builds for every pair
    of units a *confidence sequence* for the mean per-repeat difference of
    their importances -- an interval that holds at every number of repeats at
    once, so checking after every chunk and stopping when convenient keeps its
    guarantee (Howard et al. 2021; Waudby-Smith & Ramdas 2023).  The run stops
    when every pair adjacent in the current ranking is

    * **resolved**: its sequence excludes 0, or
    * **tied**: its sequence lies inside ``[-tol, +tol]`` (e.g. two channels the
      model ignores, whose repeats are all exactly 0); tie groups are recorded
      in ``result.info["adaptive"]["tie_groups"]``.

    Guarantee (assumptions: given the test cells and the model, repeats are
    independent -- each draws fresh permutations -- and per-repeat importances
    are close to normal, as averages over many cells are; ``method="bernstein"``
    needs only the bound [-1, 1] on drops but rarely stops early): with
    probability at least ``confidence``, every resolved pair is in the order
    that infinitely many repeats would give *on these cells for this model*, and
    every tied pair differs there by at most ``tol``.  It covers the
    permutations only, not which cells were tested and not retraining.  In the
    simulation study (``benchmarks/uncertainty_simulation.py``) the rule kept
    the wrong-order rate of fixed k = 100 for a close pair next to a dominant
    channel while using about two thirds of the repeats.

    The run never exceeds ``n_repeats`` (the cap, 100 by default as published);
    ``result.info["n_repeats"]`` is the k actually used and
    ``result.info["adaptive"]`` records the rule, why it stopped and the ties.

    Parameters
    ----------
    min_repeats : int, default 5
        Repeats before the first check (>= 3; the sequences are unbounded before).
    chunk : int, default 5
        Repeats added between checks.  Does not affect validity.
    confidence : float, default 0.95
        Familywise level over all pairs of units and all checks (each pair's
        sequence has level ``1 - (1 - confidence) / (U (U - 1) / 2)``).
    tol : float, default 0.005
        Tie tolerance, in importance units (0.005 = half a point of F1).
    method : {"t", "bernstein"}, default "t"
        Confidence sequence, see :func:`pxpermute.inference.confidence_sequence`.
    min_scale : float or None, default None
        Floor on the standard deviation of a per-repeat difference; None: ``1 / n``
        for n evaluated cells (the size of one cell's effect on a metric), which
        keeps a few identical early repeats of a discrete metric from stopping
        the run.

    Examples
    --------
    >>> rule = AdaptiveK(min_repeats=10, chunk=5)
    >>> rule.checkpoints(30)
    [10, 15, 20, 25, 30]
    """

    min_repeats: int = 5
    chunk: int = 5
    confidence: float = 0.95
    tol: float = 0.005
    method: str = "t"
    min_scale: float | None = None

    def __post_init__(self) -> None:
        check_int(self.chunk, "AdaptiveK.chunk", low=1)
        check_int(self.min_repeats, "AdaptiveK.min_repeats", low=1)
        if self.min_repeats < 3:
            raise ParameterError(f"AdaptiveK.min_repeats must be >= 3 (a confidence sequence needs 3 repeats), "
                                 f"got {self.min_repeats}")
        check_float(self.confidence, "AdaptiveK.confidence", low=0, high=1, closed="neither")
        check_float(self.tol, "AdaptiveK.tol", low=0, closed="left")
        if self.method not in CS_METHODS:
            raise ParameterError(f"AdaptiveK.method must be one of {CS_METHODS}, got {self.method!r}")
        check_float(self.min_scale, "AdaptiveK.min_scale", low=0, closed="left", allow_none=True)

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
            valid = [f.name for f in fields(cls)]
            unknown = set(value) - set(valid)
            if unknown:
                raise TypeError(f"unknown adaptive option(s) {sorted(unknown)}; valid: {', '.join(valid)}")
            return cls(**value)
        raise TypeError(f"adaptive must be a bool, a dict of options or an AdaptiveK, got {type(value).__name__}")


def ranking_settled(importances: np.ndarray, *, aggregate: str = "mean", rule: AdaptiveK | None = None,
                    history: list[RankingDecision] | None = None, n_samples: int | None = None) -> tuple[bool, str]:
    """Evaluate the :class:`AdaptiveK` rule on per-repeat importances ``(R, U)``.

    ``history`` collects the :class:`~pxpermute.inference.RankingDecision` of
    every evaluation (oldest first; the last holds the tie groups).
    ``n_samples`` (cells evaluated) sets the default ``min_scale``.  Returns
    ``(settled, reason)``.  With ``aggregate="median"`` the sequences are still
    built for the mean differences (the ranking is by the median).

    Examples
    --------
    >>> imp = np.array([[0.5, 0.1, 0.0], [0.52, 0.12, 0.0], [0.49, 0.09, 0.0], [0.51, 0.1, 0.0], [0.5, 0.11, 0.0]])
    >>> ranking_settled(imp)
    (True, 'resolved')
    """
    rule = rule or AdaptiveK()
    imp = np.asarray(importances, dtype=np.float64)
    if imp.ndim != 2:
        raise ValueError(f"importances must have shape (repeats, units), got {imp.shape}")
    min_scale = rule.min_scale if rule.min_scale is not None else (1.0 / n_samples if n_samples else 0.0)
    dec = sequential_ranking(imp, alpha=1.0 - rule.confidence, tol=rule.tol, method=rule.method,
                             min_repeats=max(3, min(rule.min_repeats, imp.shape[0])), min_scale=min_scale)
    if history is not None:
        history.append(dec)
    if imp.shape[1] < 2:
        return True, "single unit"
    if not dec.settled:
        return False, "unsettled"
    return True, "resolved" if not dec.tie_groups else "resolved with ties"
