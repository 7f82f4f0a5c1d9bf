"""Inference for importances, rankings and panels: what each number lets you conclude.

Pure functions (numpy / scipy only; part of the engine layer) used by the
engine, the result objects and the panel analyses, and tested on their own.
Every interval here covers one source of randomness, named in its docstring:

* **permutations** (Monte Carlo noise of k repeats on *these* test cells and
  *this* trained model): :func:`confidence_sequence`, :func:`sequential_ranking`,
  :func:`median_interval`;
* **test cells** (which cells happened to be in the test set):
  bootstrap replicates -> :func:`pairwise_probabilities`,
  :func:`top_m_probabilities`, :func:`rank_intervals`;
* **retraining** (which cells trained the model, plus the training's own
  randomness): only intervals over independently trained models, i.e.
  :func:`fold_mean_interval` over cross-validation folds and the panel tests
  :func:`noninferiority_test` / :func:`fixed_sequence`.

Nothing in a single importance run covers retraining: a second model trained
on other cells may rank the channels differently.

Anytime-valid confidence sequences
----------------------------------
An adaptive number of repeats k looks at the data after every chunk of repeats
and stops when the ranking looks settled.  A fixed-k confidence interval checked
again and again is no longer valid (optional stopping inflates its error far
above alpha).  A *confidence sequence* (CS) ``(C_t)`` holds at all t at once:
``P(mu in C_t for every t >= 1) >= 1 - alpha``, so it may be checked after every
repeat and the run stopped at any data-dependent time (Howard, Ramdas,
McAuliffe & Sekhon 2021, Ann. Statist. 49:1055; Waudby-Smith & Ramdas 2023,
JRSS-B 86:1).  Two are provided, both for i.i.d. observations (the per-repeat
importances, or the per-repeat differences between two units, are i.i.d.
*given* the test set and the model: each repeat draws fresh permutations):

``method="t"`` (default)
    The scale-invariant normal-mixture CS for a mean with unknown variance
    (Lai 1976, Ann. Statist. 4:265; see Wang & Ramdas 2023, "Anytime-valid
    t-tests and confidence sequences for Gaussian means with unknown variance").
    Assumes the observations are Gaussian.  A per-repeat importance pools the
    effect of permuting hundreds of cells into one number, so it is close to
    normal; the simulation study (``benchmarks/uncertainty_simulation.py``)
    measures the coverage on discrete, skewed per-repeat drops.  Closed form,
    bounded from t = 3 on; about 1.6-1.9x the width of a fixed-t interval.
``method="bernstein"``
    The predictable-plug-in empirical-Bernstein CS of Waudby-Smith & Ramdas
    (2023, Thm. 2).  Assumes only that the observations lie in known ``bounds``
    (drops of a metric in [0, 1] lie in [-1, 1], differences of two drops in
    [-2, 2]).  Valid for every distribution, but a bound that wide against
    drops of a few hundredths means it needs hundreds of repeats to separate
    close channels; use it when no distributional assumption is acceptable.

Examples
--------
>>> import numpy as np
>>> bh_adjust([0.01, 0.04, 0.03, 0.20]).round(3)
array([0.04 , 0.053, 0.053, 0.2  ])
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "COVERAGE_NOTE",
    "RankingDecision",
    "bh_adjust",
    "confidence_sequence",
    "fixed_sequence",
    "fold_mean_interval",
    "median_interval",
    "nb_test_train_ratio",
    "noninferiority_test",
    "pairwise_probabilities",
    "rank_intervals",
    "sequential_ranking",
    "t_interval",
    "top_m_probabilities",
]

#: one sentence every output shows next to its intervals
COVERAGE_NOTE = ("No interval here covers retraining: a model trained on other cells may rank the "
                 "channels differently (use cross-validated importance for that).")

CS_METHODS = ("t", "bernstein")


def _check_level(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


# =============================================================================
# fixed-sample intervals
# =============================================================================
def t_interval(values: Any, confidence: float = 0.95, *, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Student-t interval of the mean along ``axis``: ``(mean, low, high)`` with n - 1 degrees of freedom.

    NaN entries are left out (n counts the finite ones); fewer than 2 finite
    values give NaN bounds.  Assumes independent, roughly normal values.

    Examples
    --------
    >>> m, lo, hi = t_interval([1.0, 2.0, 3.0])
    >>> float(m), round(float(lo), 3), round(float(hi), 3)
    (2.0, -0.484, 4.484)
    """
    confidence = _check_level(confidence, "confidence")
    v = np.asarray(values, dtype=float)
    if v.ndim == 0:
        raise ValueError("t_interval needs an array of values, got a scalar")
    v = np.moveaxis(v, axis, 0)
    n = np.sum(np.isfinite(v), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(v, axis=0) / np.where(n > 0, n, np.nan)
        dev = np.where(np.isfinite(v), v - mean, 0.0)
        sd = np.sqrt(np.sum(dev**2, axis=0) / np.where(n > 1, n - 1, np.nan))
        q = stats.t.ppf(0.5 + confidence / 2.0, np.where(n > 1, n - 1, np.nan))
        half = q * sd / np.sqrt(n)
    return mean, mean - half, mean + half


def fold_mean_interval(fold_values: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interval over cross-validation folds: t-interval of the fold means, ``n_folds - 1`` degrees of freedom.

    ``fold_values`` has the folds on axis 0: shape ``(F, U)`` (one importance per
    fold and unit) or ``(F, R, U)`` (per-repeat importances; averaged over the
    R repeats of each fold first).  Folds x repeats must never be stacked into
    one sample: repeats of one fold share that fold's model and test cells, so
    they are not independent replicates of the importance.

    What it covers: retraining (each fold trained its own model) and the test
    cells (each fold has its own) -- approximately: CV training sets overlap,
    which makes fold means positively correlated and the interval somewhat
    optimistic (Bengio & Grandvalet 2004, JMLR 5:1089).

    Examples
    --------
    >>> folds = np.array([[0.30, 0.01], [0.25, 0.00], [0.35, 0.02], [0.28, 0.0], [0.32, 0.01]])
    >>> m, lo, hi = fold_mean_interval(folds)
    >>> m.round(3), bool((lo < m).all()), bool((hi > m).all())
    (array([0.3  , 0.008]), True, True)
    """
    v = np.asarray(fold_values, dtype=float)
    if v.ndim not in (2, 3):
        raise ValueError(f"fold_values must have shape (folds, units) or (folds, repeats, units), got {v.shape}")
    if v.shape[0] < 2:
        raise ValueError(f"an interval over folds needs at least 2 folds, got {v.shape[0]}")
    if v.ndim == 3:
        with np.errstate(all="ignore"):
            v = np.nanmean(v, axis=1)
    return t_interval(v, confidence, axis=0)


def median_interval(values: Any, confidence: float = 0.95, *, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distribution-free interval of the median along ``axis`` from order statistics: ``(median, low, high)``.

    ``[x_(l), x_(u)]`` with l, u chosen symmetrically from the Binomial(n, 1/2)
    distribution so that the coverage is at least ``confidence`` for any
    continuous distribution (e.g. Conover, *Practical Nonparametric
    Statistics*, 3rd ed., sec. 3.2).  Covers the randomness of the values given
    (for per-repeat importances: the permutations).  When n is too small for the
    level (n <= 5 at 95 %), the bounds are the minimum and maximum and the
    coverage is lower: ``2 * (1 - 0.5**(n-1))`` ... reported as NaN bounds
    instead, so nobody reads a too-short interval as a 95 % one.

    Examples
    --------
    >>> med, lo, hi = median_interval(np.arange(1.0, 21.0))
    >>> float(med), float(lo), float(hi)
    (10.5, 6.0, 15.0)
    """
    confidence = _check_level(confidence, "confidence")
    v = np.moveaxis(np.asarray(values, dtype=float), axis, 0)
    n = v.shape[0]
    med = np.median(v, axis=0)
    # largest l (1-based) with P(Bin(n, 1/2) <= l - 1) <= (1 - confidence) / 2
    a = (1.0 - confidence) / 2.0
    cdf = stats.binom.cdf(np.arange(n + 1), n, 0.5)
    ok = np.flatnonzero(cdf <= a)
    if n == 0 or ok.size == 0:
        nan = np.full(med.shape, np.nan)
        return med, nan, nan
    lo_k = int(ok[-1]) + 1  # 1-based order statistic
    hi_k = n - lo_k + 1
    s = np.sort(v, axis=0)
    return med, s[lo_k - 1], s[hi_k - 1]


# =============================================================================
# anytime-valid confidence sequences
# =============================================================================
def _lai_half_width_factor(t: np.ndarray, alpha: float, c: float) -> np.ndarray:
    """sqrt(u_max(t)): half-width of Lai's CS in units of the (1/t) standard deviation."""
    t = np.asarray(t, dtype=float)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        logq = (2.0 / t) * (math.log(1.0 / alpha) + 0.5 * np.log((t + c) / c))
        q = np.exp(logq)
        g = q * c / (t + c)
        u = np.where(g < 1.0, np.expm1(logq) / (1.0 - g), np.inf)
    u = np.where(t >= 2, u, np.inf)
    return np.sqrt(u)


def confidence_sequence(
    x: Any,
    *,
    alpha: float = 0.05,
    method: str = "t",
    bounds: tuple[float, float] = (-1.0, 1.0),
    c: float | None = None,
    min_scale: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Anytime-valid confidence sequence for the mean of i.i.d. observations, at every prefix length.

    Parameters
    ----------
    x : array (T,) or (T, M)
        Observations in time order (axis 0); M independent sequences at once.
    alpha : float
        ``P(the mean is outside C_t for some t) <= alpha`` (under the method's
        assumptions, see the module docstring).
    method : {"t", "bernstein"}
        ``"t"``: Lai's normal-mixture CS with unknown variance (assumes normal
        observations).  ``"bernstein"``: empirical-Bernstein CS (assumes only
        observations within ``bounds``).
    bounds : (low, high)
        Range of the observations for ``"bernstein"``; values outside raise.
    c : float, optional
        Mixture precision of ``"t"`` (prior on the standardized mean
        ``N(0, 1/c)``); smaller c makes early intervals finite sooner and late
        ones wider.  Default ``alpha``: the CS is finite from 3 observations on.  For ``"bernstein"`` the cap on the bets (default 1/2).
    min_scale : float
        Floor on the standard deviation estimate of ``"t"`` (e.g. the smallest
        step a metric computed on n cells can take, ~1/n): protects early
        stopping against a few identical values of a discrete statistic.

    Returns
    -------
    low, high : arrays shaped like ``x``
        ``C_t`` for every prefix ``x[:t]``, already intersected over time
        (``C_1 ∩ ... ∩ C_t``, valid because the sequence holds at all times);
        infinite where the data do not yet bound the mean.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> lo, hi = confidence_sequence(rng.normal(0.3, 0.05, 50))
    >>> bool(lo[-1] < 0.3 < hi[-1]), bool(np.isinf(lo[0])), round(float(hi[-1] - lo[-1]), 2)
    (True, True, 0.04)
    """
    alpha = _check_level(alpha, "alpha")
    if method not in CS_METHODS:
        raise ValueError(f"method must be one of {CS_METHODS}, got {method!r}")
    v = np.asarray(x, dtype=float)
    squeeze = v.ndim == 1
    if squeeze:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"x must have shape (T,) or (T, M) with T >= 1, got {np.shape(x)}")
    if not np.all(np.isfinite(v)):
        raise ValueError("x contains NaN or inf; a confidence sequence needs finite observations")
    if method == "t":
        lo, hi = _lai_cs(v, alpha, alpha if c is None else float(c), float(min_scale))
    else:
        lo, hi = _bernstein_cs(v, alpha, bounds, 0.5 if c is None else float(c))
    lo = np.maximum.accumulate(lo, axis=0)
    hi = np.minimum.accumulate(hi, axis=0)
    # an empty running intersection (possible only when the CS failed): keep the last point estimate
    empty = lo > hi
    if np.any(empty):
        mid = (np.cumsum(v, axis=0) / np.arange(1, v.shape[0] + 1)[:, None])
        lo = np.where(empty, mid, lo)
        hi = np.where(empty, mid, hi)
    return (lo[:, 0], hi[:, 0]) if squeeze else (lo, hi)


def _lai_cs(v: np.ndarray, alpha: float, c: float, min_scale: float) -> tuple[np.ndarray, np.ndarray]:
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c}")
    T = v.shape[0]
    t = np.arange(1, T + 1, dtype=float)[:, None]
    mean = np.cumsum(v, axis=0) / t
    sq = np.cumsum(v * v, axis=0) / t
    s = np.sqrt(np.maximum(sq - mean**2, 0.0))  # biased (1/t) standard deviation
    s = np.maximum(s, min_scale)
    fac = np.broadcast_to(_lai_half_width_factor(t, alpha, c), s.shape)
    with np.errstate(invalid="ignore"):
        half = np.where(np.isfinite(fac), fac * s, np.inf)
    return mean - half, mean + half


def _bernstein_cs(v: np.ndarray, alpha: float, bounds: tuple[float, float], cap: float) -> tuple[np.ndarray, np.ndarray]:
    a, b = (float(bounds[0]), float(bounds[1]))
    if not b > a:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
    if np.any(v < a) or np.any(v > b):
        raise ValueError(f"observations outside bounds {bounds}: range [{v.min()}, {v.max()}]")
    if not 0 < cap < 1:
        raise ValueError(f"the bet cap c must lie in (0, 1), got {cap}")
    z = (v - a) / (b - a)
    T = z.shape[0]
    t = np.arange(1, T + 1, dtype=float)[:, None]
    mu_hat = (0.5 + np.cumsum(z, axis=0)) / (t + 1)
    mu_prev = np.vstack([np.full((1, z.shape[1]), 0.5), mu_hat[:-1]])
    sig2 = (0.25 + np.cumsum((z - mu_hat) ** 2, axis=0)) / (t + 1)
    sig2_prev = np.vstack([np.full((1, z.shape[1]), 0.25), sig2[:-1]])
    log2a = math.log(2.0 / alpha)
    lam = np.minimum(np.sqrt(2 * log2a / (sig2_prev * t * np.log1p(t))), cap)
    psi = (-np.log1p(-lam) - lam) / 4.0
    vv = 4.0 * (z - mu_prev) ** 2
    sl = np.cumsum(lam, axis=0)
    center = np.cumsum(lam * z, axis=0) / sl
    half = (log2a + np.cumsum(vv * psi, axis=0)) / sl
    lo = np.clip(center - half, 0.0, 1.0) * (b - a) + a
    hi = np.clip(center + half, 0.0, 1.0) * (b - a) + a
    return lo, hi


# =============================================================================
# adaptive k: when is a ranking settled?
# =============================================================================
@dataclass
class RankingDecision:
    """Outcome of :func:`sequential_ranking` after t repeats.

    Attributes
    ----------
    settled : bool
        Every checked pair (:func:`checked_pairs`) is resolved or tied.
    order : list of int
        Units by decreasing mean importance (ties broken by the point estimate).
    pairs : list of dict
        One per checked pair (:func:`checked_pairs`: the adjacent pairs of the
        order, or with ``top`` the pairs that fix the top units): ``a``, ``b`` (unit indices, a ranked above b),
        ``low``, ``high`` (CS of mean(a) - mean(b)), ``status`` in
        ``{"resolved", "tie", "open"}``.
    tie_groups : list of list of int
        Units joined by ties among the checked pairs, in rank order (singletons left out).
    n_repeats : int
        Repeats used (t).
    alpha_per_pair : float
        Level of each pair's CS (alpha over all unit pairs, Bonferroni).
    """

    settled: bool
    order: list[int]
    pairs: list[dict[str, Any]]
    tie_groups: list[list[int]]
    n_repeats: int
    alpha_per_pair: float
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def sequential_ranking(
    importances: Any,
    *,
    alpha: float = 0.05,
    tol: float = 0.005,
    method: str = "t",
    min_repeats: int = 3,
    min_scale: float = 0.0,
    top: int | None = None,
) -> RankingDecision:
    """Is the ranking of units settled after the repeats seen so far?  (the adaptive-k stopping rule)

    For every pair of units (a, b) a confidence sequence (:func:`confidence_sequence`)
    is built on the per-repeat differences ``imp[r, a] - imp[r, b]``, at level
    ``alpha / (U (U - 1) / 2)`` (Bonferroni over all pairs, because which pairs
    end up adjacent depends on the data).  Walking down the current order, an
    adjacent pair is

    * **resolved** when its CS excludes 0 on the side of the order;
    * **tied** when its CS lies inside ``[-tol, +tol]``: more repeats cannot
      move the two apart by more than ``tol`` (two channels the model ignores,
      whose repeats are all exactly 0, tie at once);
    * **open** otherwise.

    The ranking is settled when no adjacent pair is open.  Guarantee (under
    the CS's assumptions, see the module docstring): with probability at least
    ``1 - alpha``, at whatever repeat the run stops, every resolved pair is in
    the order that infinitely many repeats would give on the same test cells
    and model, and every tied pair differs there by at most ``tol``.  It covers
    the permutations only -- not which cells were tested, not retraining.

    Parameters
    ----------
    importances : array (R, U)
        Per-repeat importances (rows in repeat order).
    alpha : float
        Familywise error over all pairs and all looks.
    tol : float
        Tie tolerance in importance units (0.005 = half a point of F1).  In the
        simulation study a tolerance of 0.01 saved more repeats (59 % instead of
        35 % with a close pair) but declared that pair tied in 17 % of test sets,
        and a tie's reported order is a coin flip.
    method : {"t", "bernstein"}
        Confidence sequence (``"bernstein"`` with bounds [-2, 2] for differences).
    min_repeats : int
        No decision before this many repeats (>= 2).
    min_scale : float
        Floor on the standard deviation of a difference (``"t"`` only).
    top : int or None
        Settle only the order of the first ``top`` units and that each of them is
        above all others (:func:`checked_pairs`); None: the whole ranking.  The
        level stays Bonferroni over all pairs, so the guarantee is unchanged.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> imp = np.column_stack([rng.normal(0.4, 0.01, 10), rng.normal(0.1, 0.01, 10), np.zeros(10), np.zeros(10)])
    >>> d = sequential_ranking(imp)
    >>> d.settled, d.order, d.tie_groups
    (True, [0, 1, 2, 3], [[2, 3]])
    """
    alpha = _check_level(alpha, "alpha")
    imp = np.asarray(importances, dtype=float)
    if imp.ndim != 2 or imp.shape[0] == 0:
        raise ValueError(f"importances must have shape (repeats, units), got {imp.shape}")
    if isinstance(tol, bool) or not isinstance(tol, Real) or not float(tol) >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if isinstance(min_repeats, bool) or not isinstance(min_repeats, (int, np.integer)) or min_repeats < 2:
        raise ValueError(f"min_repeats must be an integer >= 2, got {min_repeats!r}")
    R, U = imp.shape
    top = effective_top(top, U)
    mean = imp.mean(axis=0)
    order = [int(i) for i in np.argsort(-mean, kind="stable")]
    n_pairs = max(1, U * (U - 1) // 2)
    a_pair = alpha / n_pairs
    if U < 2:
        return RankingDecision(True, order, [], [], R, a_pair, "single unit")
    checked = checked_pairs(order, top)
    A = np.array([a for a, _ in checked])
    B = np.array([b for _, b in checked])
    diffs = imp[:, A] - imp[:, B]  # (R, pairs checked)
    if method == "bernstein":
        lo, hi = confidence_sequence(diffs, alpha=a_pair, method="bernstein", bounds=(-2.0, 2.0))
    else:
        lo, hi = confidence_sequence(diffs, alpha=a_pair, method=method, min_scale=min_scale)
    ready = R >= min_repeats
    pairs, groups, settled = _pair_statuses(order, checked, lo[-1], hi[-1], ready=ready, tol=tol)
    reason = _reason(settled, pairs, top, "" if ready else f"fewer than {min_repeats} repeats")
    return RankingDecision(settled, order, pairs, groups, R, a_pair, reason)


def effective_top(top: Any, n_units: int) -> int | None:
    """``top`` checked (None or an integer >= 1); None where it covers the whole ranking (``top >= n_units - 1``).

    (A local check: this module imports only numpy, scipy and the standard library.)
    """
    if top is None:
        return None
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be None or an integer >= 1, got {top!r}")
    return None if top >= n_units - 1 else int(top)


def checked_pairs(order: Sequence[int], top: int | None = None) -> list[tuple[int, int]]:
    """The pairs (a above b) the stopping rule has to settle for the current ``order``.

    ``top=None``: every adjacent pair of the order (the whole ranking).  ``top=m``
    (< number of units): the adjacent pairs among the first m units plus the m-th
    unit against every unit below it -- enough to fix the order of the top m
    and that each of them is above every other unit (by transitivity), while the
    order below the top m is left as estimated.

    Examples
    --------
    >>> checked_pairs([2, 0, 1, 3])
    [(2, 0), (0, 1), (1, 3)]
    >>> checked_pairs([2, 0, 1, 3], top=1)
    [(2, 0), (2, 1), (2, 3)]
    """
    order = [int(i) for i in order]
    top = effective_top(top, len(order))
    if top is None:
        return list(zip(order[:-1], order[1:]))
    head = list(zip(order[: top - 1], order[1:top]))
    return head + [(order[top - 1], b) for b in order[top:]]


def _pair_statuses(order: list[int], checked: list[tuple[int, int]], lo: np.ndarray, hi: np.ndarray, *,
                   ready: bool, tol: float) -> tuple[list[dict[str, Any]], list[list[int]], bool]:
    """Resolved / tie / open for every checked pair from its interval of mean(a) - mean(b); tie groups."""
    pairs: list[dict[str, Any]] = []
    parent = {u: u for u in order}

    def root(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for (a, b), low, high in zip(checked, lo, hi):
        if ready and low > 0:
            st = "resolved"
        elif ready and low >= -tol and high <= tol:
            st = "tie"
            parent[root(b)] = root(a)
        else:
            st = "open"
        pairs.append({"a": int(a), "b": int(b), "low": float(low), "high": float(high), "status": st})
    members: dict[int, list[int]] = {}
    for u in order:  # groups listed in rank order, members too
        members.setdefault(root(u), []).append(u)
    groups = [g for g in members.values() if len(g) > 1]
    settled = ready and all(p["status"] != "open" for p in pairs)
    return pairs, groups, settled


def _reason(settled: bool, pairs: list[dict[str, Any]], top: int | None, not_ready: str) -> str:
    if not_ready:
        return not_ready
    if settled:
        return "settled" if top is None else f"settled (top {top})"
    n_open = sum(p["status"] == "open" for p in pairs)
    return f"{n_open} {'adjacent ' if top is None else 'checked '}pair(s) open"


# =============================================================================
# rankings from bootstrap replicates (randomness of the test cells)
# =============================================================================
def _reps(replicates: Any) -> np.ndarray:
    r = np.asarray(replicates, dtype=float)
    if r.ndim != 2 or r.shape[0] < 1:
        raise ValueError(f"replicates must have shape (B, U) with B >= 1, got {r.shape}")
    return r


def pairwise_probabilities(replicates: Any, *, tol: float = 1e-12) -> np.ndarray:
    """``P[a, b]``: fraction of bootstrap replicates in which unit a scores above unit b.

    Replicates where the two differ by at most ``tol`` count one half for each,
    so two channels the model ignores (both exactly 0 everywhere) get 0.5 --
    no order is made up from column order.  ``P[a, b] + P[b, a] = 1``; the
    diagonal is NaN.  NaN replicates are left out pair by pair.  Covers the
    test cells (and the permutations pooled into each replicate), not retraining.

    Examples
    --------
    >>> reps = np.array([[0.3, 0.1, 0.0], [0.2, 0.25, 0.0], [0.3, 0.2, 0.0], [0.4, 0.1, 0.0]])
    >>> float(pairwise_probabilities(reps)[0, 1]), float(pairwise_probabilities(np.zeros((5, 2)))[0, 1])
    (0.75, 0.5)
    """
    r = _reps(replicates)
    d = r[:, :, None] - r[:, None, :]
    ok = np.isfinite(d)
    score = np.where(d > tol, 1.0, np.where(d < -tol, 0.0, 0.5))
    with np.errstate(invalid="ignore"):
        P = np.sum(np.where(ok, score, 0.0), axis=0) / np.sum(ok, axis=0)
    np.fill_diagonal(P, np.nan)
    return P


def top_m_probabilities(replicates: Any, m: int, *, tol: float = 1e-12) -> np.ndarray:
    """Fraction of replicates in which each unit is among the top ``m``, ties shared.

    A unit tied (within ``tol``) across the cut-off gets the fraction of the
    remaining top places it would hold on average, so tied units get equal
    values and the values sum to m in every replicate.

    Examples
    --------
    >>> reps = np.array([[3.0, 2.0, 0.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    >>> top_m_probabilities(reps, 1).tolist(), top_m_probabilities(np.zeros((3, 4)), 2).tolist()
    ([1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5])
    """
    r = _reps(replicates)
    U = r.shape[1]
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= U:
        raise ValueError(f"m must be an integer in [1, {U}], got {m!r}")
    v = np.nan_to_num(r, nan=-np.inf)
    above = np.sum(v[:, None, :] > v[:, :, None] + tol, axis=2)  # units clearly above u
    tied = np.sum(np.abs(v[:, None, :] - v[:, :, None]) <= tol, axis=2)  # incl. u itself
    tied = np.where(np.isinf(v), np.sum(np.isinf(v), axis=1, keepdims=True), tied)
    places = np.clip(m - above, 0, None)
    frac = np.minimum(places, tied) / tied
    return frac.mean(axis=0)


def rank_intervals(replicates: Any, point: Any = None, *, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous rank intervals (1 = most important) from bootstrap replicates.

    Following Mogstad, Romano, Shaikh & Wilhelm (2024, Rev. Econ. Stud. 91:476):
    simultaneous intervals for all pairwise differences ``point[a] - point[b]``
    are built with the bootstrap distribution of the maximum standardized
    deviation over pairs; unit u's best possible rank is 1 + the number of
    units certainly above it, its worst U - the number certainly below it.
    With probability about ``confidence`` every unit's rank lies in its
    interval at once.  Pairs with zero bootstrap spread (e.g. two ignored
    channels, always 0) are undetermined unless their point values differ.

    Parameters
    ----------
    replicates : (B, U)
    point : (U,), optional
        Estimates (default: the mean of the replicates).

    Returns
    -------
    best, worst : int arrays (U,)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> reps = np.column_stack([rng.normal(1, .05, 500), rng.normal(.5, .05, 500), rng.normal(.48, .05, 500)])
    >>> best, worst = rank_intervals(reps)
    >>> best.tolist(), worst.tolist()
    ([1, 2, 2], [1, 3, 3])
    """
    confidence = _check_level(confidence, "confidence")
    r = _reps(replicates)
    B, U = r.shape
    p = np.nanmean(r, axis=0) if point is None else np.asarray(point, dtype=float)
    if p.shape != (U,):
        raise ValueError(f"point must have shape ({U},), got {p.shape}")
    iu, ju = np.triu_indices(U, 1)
    if iu.size == 0:
        return np.ones(U, int), np.ones(U, int)
    dstar = r[:, iu] - r[:, ju]
    dhat = p[iu] - p[ju]
    with np.errstate(invalid="ignore"):
        se = np.nanstd(dstar, axis=0, ddof=1) if B > 1 else np.zeros(iu.size)
    se = np.nan_to_num(se)
    pos = se > 1e-15
    if pos.any() and B > 1:
        z = np.abs(dstar[:, pos] - np.nanmean(dstar[:, pos], axis=0)) / se[pos]
        q = float(np.nanquantile(np.nanmax(z, axis=1), confidence))
    else:
        q = 0.0
    lo = dhat - q * se
    hi = dhat + q * se
    zero = ~pos
    lo = np.where(zero & (np.abs(dhat) <= 1e-12), 0.0, lo)
    hi = np.where(zero & (np.abs(dhat) <= 1e-12), 0.0, hi)
    above = np.zeros((U, U), bool)  # above[a, b]: a certainly above b
    above[iu, ju] = lo > 0
    above[ju, iu] = hi < 0
    best = 1 + above.sum(axis=0)
    worst = U - above.sum(axis=1)
    return best.astype(int), worst.astype(int)


# =============================================================================
# multiple testing
# =============================================================================
def bh_adjust(p_values: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same shape; NaNs stay NaN and do not count.

    ``q_(i) = min_{j >= i} (m / j) p_(j)`` over the m finite p-values sorted
    increasingly, capped at 1 (Benjamini & Hochberg 1995, JRSS-B 57:289).
    Rejecting ``q <= 0.05`` controls the false discovery rate at 5 % for
    independent or positively dependent tests.

    Examples
    --------
    >>> bh_adjust([0.01, 0.04, 0.03, 0.20]).tolist()
    [0.04, 0.05333333333333334, 0.05333333333333334, 0.2]
    """
    p = np.asarray(p_values, dtype=float)
    flat = p.reshape(-1)
    ok = np.isfinite(flat)
    if np.any((flat[ok] < 0) | (flat[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full(flat.shape, np.nan)
    m = int(ok.sum())
    if m:
        vals = flat[ok]
        order = np.argsort(vals, kind="stable")
        ranked = vals[order] * m / np.arange(1, m + 1)
        q = np.minimum.accumulate(ranked[::-1])[::-1]
        res = np.empty(m)
        res[order] = np.minimum(q, 1.0)
        out[ok] = res
    return out.reshape(p.shape)


# =============================================================================
# panels: non-inferiority across CV folds, fixed-sequence testing
# =============================================================================
def nb_test_train_ratio(n_splits: int, validation_fraction: float = 0.2) -> float:
    """``n_test / n_train`` of k-fold CV whose training part also holds out a validation split.

    With n cells, ``n_splits`` folds and a fraction ``v`` of each training part
    held out for validation (early stopping), a fold tests ``n / n_splits``
    cells and fits on ``n (1 - 1/n_splits) (1 - v)``:  the ratio is
    ``(1/n_splits) / ((1 - 1/n_splits)(1 - v))`` -- 0.3125 for 5 folds and the
    published 20 % validation split (0.25 without it).  This is the ``n2/n1``
    of the Nadeau & Bengio (2003, Mach. Learn. 52:239) variance correction.

    Examples
    --------
    >>> nb_test_train_ratio(5), nb_test_train_ratio(5, 0.0)
    (0.3125, 0.25)
    """
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, Real) or not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction!r}")
    k = float(n_splits)
    return round((1.0 / k) / ((1.0 - 1.0 / k) * (1.0 - float(validation_fraction))), 12)


def noninferiority_test(
    reference: Sequence[float],
    other: Sequence[float],
    *,
    margin: float,
    test_train_ratio: float | None = None,
    n_splits: int | None = None,
    validation_fraction: float = 0.2,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Is ``other`` (a smaller panel) at most ``margin`` worse than ``reference`` (all channels)?

    Paired per-fold scores on the same folds.  With ``d = reference - other``:
    H0 ``mean(d) >= margin`` (the panel loses at least the margin) against H1
    ``mean(d) < margin`` (non-inferior), tested with the Nadeau & Bengio (2003)
    corrected resampled t: ``t = (margin - mean(d)) / sqrt((1/J + n_test/n_train) s^2)``
    on J - 1 degrees of freedom (J folds, s the SD of d).  The correction
    accounts for CV training sets overlapping (it covers retraining, roughly).

    Outcomes:

    * ``"non-inferior"``: the one-sided upper bound of mean(d) is below the margin
      (p < alpha) -- evidence that the panel loses less than the margin;
    * ``"worse"``: the one-sided lower bound is above the margin -- evidence that
      it loses more;
    * ``"inconclusive"``: neither.  Not evidence of equivalence, nor of a loss.

    Parameters
    ----------
    reference, other : sequence of float
        Per-fold scores (higher is better, e.g. F1-macro).
    margin : float
        Largest acceptable loss (> 0), in score units.
    test_train_ratio : float, optional
        ``n_test / n_train``; default from ``n_splits`` (default: the number of
        folds given) and ``validation_fraction`` via :func:`nb_test_train_ratio`.
    alpha : float
        One-sided level.

    Returns
    -------
    dict with ``mean_diff``, ``upper`` and ``lower`` (one-sided 1 - alpha bounds of
    mean(d)), ``t``, ``p_value``, ``outcome``, ``margin``, ``test_train_ratio``,
    ``n_folds``.

    Examples
    --------
    >>> ref = [0.90, 0.91, 0.92, 0.90, 0.91]; panel = [0.895, 0.905, 0.918, 0.897, 0.905]
    >>> noninferiority_test(ref, panel, margin=0.02)["outcome"]
    'non-inferior'
    """
    a, b = np.asarray(reference, float), np.asarray(other, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"reference and other need the same 1-D shape (one score per fold), got {a.shape} and {b.shape}")
    if not np.all(np.isfinite(a)) or not np.all(np.isfinite(b)):
        raise ValueError("per-fold scores contain NaN or inf")
    if isinstance(margin, bool) or not isinstance(margin, Real) or not float(margin) > 0:
        raise ValueError(f"margin must be a positive number (largest acceptable loss), got {margin!r}")
    alpha = _check_level(alpha, "alpha")
    J = a.size
    if J < 2:
        raise ValueError(f"a test across folds needs at least 2 folds, got {J}")
    ratio = nb_test_train_ratio(int(n_splits if n_splits is not None else J), validation_fraction) \
        if test_train_ratio is None else float(test_train_ratio)
    if not ratio >= 0:
        raise ValueError(f"test_train_ratio must be >= 0, got {test_train_ratio!r}")
    d = a - b
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    se = math.sqrt((1.0 / J + ratio) * sd**2)
    q = float(stats.t.ppf(1 - alpha, J - 1))
    if se <= 1e-15:
        t = math.inf if mean < margin else (-math.inf if mean > margin else 0.0)
        p = 0.0 if mean < margin else 1.0
    else:
        t = (float(margin) - mean) / se
        p = float(stats.t.sf(t, J - 1))
    upper, lower = mean + q * se, mean - q * se
    outcome = "non-inferior" if upper < margin else ("worse" if lower > margin else "inconclusive")
    return {"mean_diff": mean, "upper": upper, "lower": lower, "t": float(t), "p_value": p, "outcome": outcome,
            "margin": float(margin), "test_train_ratio": ratio, "n_folds": J, "alpha": alpha}


def fixed_sequence(p_values: Sequence[float], *, alpha: float = 0.05, labels: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Fixed-sequence (hierarchical) testing: test in the given order at level alpha, stop at the first failure.

    For nested panels ordered from the largest down (top-k stains for k = K,
    K-1, ..., 1), each hypothesis is tested only if every earlier one was
    rejected; the familywise error stays at alpha without any adjustment
    (Maurer, Hothorn & Lehmacher 1995; Westfall & Krishen 2001).  Everything after
    the first failure is ``"not tested"``: no conclusion, in either direction.

    Returns
    -------
    list of dict (one per hypothesis, in order): ``label``, ``p_value``,
    ``outcome`` in ``{"rejected", "not rejected", "not tested"}``.

    Examples
    --------
    >>> [r["outcome"] for r in fixed_sequence([0.01, 0.03, 0.20, 0.001])]
    ['rejected', 'rejected', 'not rejected', 'not tested']
    """
    alpha = _check_level(alpha, "alpha")
    p = np.asarray(p_values, dtype=float).reshape(-1)
    if labels is None:
        labels = list(range(len(p)))
    if len(labels) != len(p):
        raise ValueError(f"{len(labels)} labels for {len(p)} p-values")
    out, going = [], True
    for lab, pv in zip(labels, p):
        if not going:
            out.append({"label": lab, "p_value": float(pv), "outcome": "not tested"})
            continue
        rej = bool(np.isfinite(pv) and pv < alpha)
        out.append({"label": lab, "p_value": float(pv), "outcome": "rejected" if rej else "not rejected"})
        going = rej
    return out
