"""Uncertainty over test images, p-values, ranking stability and stratified subsampling.

The spread of importances over the k repeats only measures the randomness of
the permutations: run again on *other* test cells and the numbers move more
than that.  This module adds a bootstrap over test images that the engine
computes while it streams the data, without keeping per-image predictions.

Poisson bootstrap, counter-based
--------------------------------
Bootstrap replicate ``b`` gives test image ``i`` an integer weight
``w[b, i] ~ Poisson(1)`` -- the "Poisson bootstrap" (Hanley & MacGibbon 2006,
Comput. Methods Programs Biomed. 83:57; Chamandy et al. 2012), which
approximates multinomial resampling of n images and needs no knowledge of n.
The weight is a pure function of ``(seed, i, b)`` (a 64-bit hash, as for the
permutations in :mod:`pxpermute.perturb`), so it does not depend on the batch
size, on the order of evaluation, on sharding over processes or on resuming:
the weighted confusion matrices add up over disjoint sample sets and over
chunks of repeats exactly like the unweighted ones.

What is pooled
--------------
For each replicate the engine accumulates one weighted baseline confusion
matrix ``(K, K)`` and, per unit, one weighted confusion matrix **summed over
all repeats** ``(U, K, K)`` -- memory ``n_bootstrap x (U + 1) x K x K``
integers, independent of the number of images and of k.  An image carries
its baseline prediction and all k of its perturbed predictions into the
replicate together (a paired bootstrap), so the replicates reflect both which
cells were drawn and the permutations applied to them.  The replicate's
statistic is the metric drop computed from these pooled matrices.  For
accuracy this equals the mean drop over repeats; for ratio metrics such as F1
it differs from the mean over repeats by a small deterministic (Jensen) term,
so every replicate is shifted by ``importance - pooled_importance`` computed
on the full data: the bootstrap distribution is centred on the reported
importance.

``aggregate="median"``: the median over repeats is not a function of counts
pooled over repeats, so the engine keeps the weighted confusion matrices *per
repeat* (memory ``n_bootstrap x k x U x K x K``) and every replicate recomputes
the median over repeats -- a bootstrap of the median itself, no shift.

``perturbation="sample"``: the channel comes from another cell (the donor),
and which cells are available as donors is as random as which are tested.  A
perturbed prediction is weighted by ``w[b, recipient] * w[b, donor]``, the
bootstrap of a two-sample (U-statistic-like) average: each replicate redraws
donors and recipients jointly from the same reweighted cells.

In a replicate, a class whose images all got weight 0 is left out of the
averages (as absent classes are, see :mod:`pxpermute.metrics`).

Examples
--------
>>> import numpy as np
>>> reps = np.array([[0.30, 0.00], [0.25, 0.00], [0.35, 0.01]])
>>> bootstrap_p_values(reps).round(2)
array([0.25, 0.75])
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, NamedTuple

import numpy as np
import torch

from ._validation import DEFAULT_RANDOM_STATE, ParameterError
from .metrics import METRICS, compute_metric

__all__ = [
    "poisson_weights",
    "bootstrap_scores",
    "bootstrap_importances",
    "percentile_interval",
    "bootstrap_p_values",
    "rank_probabilities",
    "rank_stability",
    "stratified_subsample",
    "resolve_max_samples",
    "pooled_importance",
    "bootstrap_summary",
    "per_class_frame",
    "BootstrapCollector",
    "ZERO_TOL",
    "t_interval",
    "TInterval",
]

#: importances within this distance of 0 count as exactly 0 (floating-point noise
#: of ratios of integer counts), for p-values and ranking.
ZERO_TOL = 1e-12

_BOOT_TAG = 0x424F4F54  # "BOOT"
_SUBSAMPLE_TAG = 0x5AB5


def _poisson1_thresholds() -> list[int]:
    """Integer thresholds on a 62-bit uniform for the Poisson(1) inverse CDF (weights 0..20)."""
    out, p, cdf = [], math.exp(-1.0), 0.0
    for k in range(20):
        cdf += p
        out.append(min(int(cdf * 2.0**62), 2**62 - 1))
        p /= k + 1
    return out


_THRESH = _poisson1_thresholds()
_thresh_cache: dict[str, torch.Tensor] = {}


def poisson_weights(seed: int, sample_idx: torch.Tensor, n_bootstrap: int) -> torch.Tensor:
    """Poisson(1) bootstrap weights, int64 tensor ``(n_bootstrap, len(sample_idx))``.

    ``w[b, j]`` is a pure function of ``(seed, sample_idx[j], b)``: the same
    image gets the same weight in replicate b whatever batch, shard or chunk
    it is evaluated in.  Generated vectorized on ``sample_idx``'s device.

    Examples
    --------
    >>> w = poisson_weights(1, torch.arange(100_000), 2)
    >>> w.shape, abs(w.float().mean().item() - 1) < 0.02
    (torch.Size([2, 100000]), True)
    """
    from .keys import _base_keys

    dev = sample_idx.device
    keys = _base_keys(int(seed), sample_idx.to(torch.int64), 0, torch.arange(n_bootstrap, device=dev), _BOOT_TAG)
    u = (keys >> 2) & ((1 << 62) - 1)  # uniform on [0, 2**62)
    th = _thresh_cache.get(str(dev))
    if th is None:
        th = _thresh_cache[str(dev)] = torch.tensor(_THRESH, dtype=torch.int64, device=dev)
    # weight = number of CDF thresholds <= u  (inverse-CDF sampling)
    return torch.searchsorted(th, u.contiguous(), right=True)


def add_weighted(counts: torch.Tensor, cells: torch.Tensor, weights: torch.Tensor) -> None:
    """``counts[b, cells[j]] += weights[b, j]`` in place (counts: (B, M), cells: (N,), weights: (B, N))."""
    counts.index_add_(1, cells, weights)


# -----------------------------------------------------------------------------
# replicate statistics
# -----------------------------------------------------------------------------
def _per_replicate_metric(cm: np.ndarray, support: np.ndarray, metric: str) -> np.ndarray:
    """Metric of cm (B, ..., K, K) with each replicate's own present classes (support (B, K) > 0)."""
    out = None
    patterns, inverse = np.unique(support > 0, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    for j, pat in enumerate(patterns):
        sel = inverse == j
        val = compute_metric(cm[sel], metric, pat) if pat.any() else np.full(cm[sel].shape[:-1], np.nan)
        if out is None:
            out = np.empty((cm.shape[0], *val.shape[1:]))
        out[sel] = val
    return out


def bootstrap_scores(baseline_boot: np.ndarray, metric: str, *, present: np.ndarray | None = None) -> np.ndarray:
    """Unperturbed metric per replicate, averaged over classes: shape (B,)."""
    cm = np.asarray(baseline_boot)
    support = cm.sum(-1)
    if present is not None:
        support = support * np.asarray(present, bool)
    vals = _per_replicate_metric(cm, support, metric)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(vals, axis=-1)


def bootstrap_importances(
    baseline_boot: np.ndarray,
    confusion_boot: np.ndarray,
    *,
    metric: str = "f1",
    aggregate: str = "mean",
    present: np.ndarray | None = None,
    center: np.ndarray | None = None,
    baseline_confusion: np.ndarray | None = None,
    confusion: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Importance per bootstrap replicate from the weighted, repeat-pooled confusion matrices.

    Parameters
    ----------
    baseline_boot : (B, K, K)
        Weighted unperturbed confusion matrix per replicate.
    confusion_boot : (B, U, K, K) or (B, R, U, K, K)
        Weighted perturbed confusion matrices per replicate and unit, summed over
        repeats -- or per repeat (then every replicate recomputes the estimator
        exactly: the median or mean over repeats of the class-aggregated drops,
        and no centring shift is needed).
    metric, aggregate : str
        As for :func:`pxpermute.channel_importance`.
    present : (K,) bool, optional
        Classes present in the full data (default: support in any replicate).
    center : (U,), optional
        The reported importance.  With ``baseline_confusion`` (K, K) and
        ``confusion`` (R, U, K, K) of the full data, replicates are shifted by
        ``center - pooled`` (see the module docstring) so they are centred on it.

    Returns
    -------
    importances : (B, U)
    drops : (B, U, K') per-class drops (NaN for classes without weight in a replicate)
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
    if aggregate not in ("mean", "median"):
        raise ValueError(f"aggregate must be 'mean' or 'median', got {aggregate!r}")
    bb = np.asarray(baseline_boot)
    cb = np.asarray(confusion_boot)
    if bb.ndim != 3 or cb.ndim not in (4, 5) or cb.shape[0] != bb.shape[0] or cb.shape[-2:] != bb.shape[1:]:
        raise ValueError("expected baseline (B, K, K) and confusion (B, U, K, K) or (B, R, U, K, K), got "
                         f"{bb.shape} and {cb.shape}")
    support = bb.sum(-1)  # (B, K) weighted class counts
    if present is not None:
        support = support * np.asarray(present, bool)
    base = _per_replicate_metric(bb, support, metric)  # (B, K')
    if cb.ndim == 5:  # per-repeat counts: the estimator itself, recomputed in every replicate
        B, R, U = cb.shape[:3]
        pert = _per_replicate_metric(cb.reshape(B, R * U, *cb.shape[3:]), support, metric)
        pert = pert.reshape(B, R, U, -1)  # (B, R, U, K')
        d = base[:, None, None, :] - pert
        if d.shape[-1] == support.shape[-1]:
            d = np.where((support > 0)[:, None, None, :], d, np.nan)
        per_repeat = _aggregate_classes(d, aggregate)  # (B, R, U)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            imp = np.nanmedian(per_repeat, axis=1) if aggregate == "median" else np.nanmean(per_repeat, axis=1)
            drops = np.nanmean(d, axis=1)  # per class: the mean drop over repeats, as reported
        return imp, drops
    pert = _per_replicate_metric(cb, support, metric)  # (B, U, K')
    drops = base[:, None, :] - pert
    if drops.shape[-1] == support.shape[-1]:
        drops = np.where((support > 0)[:, None, :], drops, np.nan)
    imp = _aggregate_classes(drops, aggregate)
    if center is not None and baseline_confusion is not None and confusion is not None:
        pooled = pooled_importance(baseline_confusion, confusion, metric=metric, aggregate=aggregate, present=present)
        shift = np.asarray(center, float) - pooled
        shift = np.where(np.abs(shift) <= ZERO_TOL, 0.0, shift)
        imp = imp + shift[None, :]
    return imp, drops


def _aggregate_classes(drops: np.ndarray, aggregate: str) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(drops, axis=-1) if aggregate == "mean" else np.nanmedian(drops, axis=-1)


def pooled_importance(baseline_confusion: np.ndarray, confusion: np.ndarray, *, metric: str = "f1",
                      aggregate: str = "mean", present: np.ndarray | None = None) -> np.ndarray:
    """The bootstrap statistic on the full data: the drop from confusion matrices summed over repeats, (U,)."""
    base = np.asarray(baseline_confusion)
    if present is None:
        present = base.sum(-1) > 0
    present = np.asarray(present, bool)
    b = compute_metric(base, metric, present)
    p = compute_metric(np.asarray(confusion).sum(0), metric, present)
    d = b[None, :] - p
    cols = present if d.shape[-1] == len(present) else np.ones(d.shape[-1], bool)
    return _aggregate_classes(d[..., cols], aggregate)


# -----------------------------------------------------------------------------
# summaries of replicates
# -----------------------------------------------------------------------------
def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, Real) or not 0.0 < float(confidence) < 1.0:
        raise ParameterError(f"confidence must be a number strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")
    return float(confidence)


class TInterval(NamedTuple):
    """Mean, standard deviation (ddof=1), standard error, t-interval bounds and the count used."""

    mean: Any
    std: Any
    sem: Any
    low: Any
    high: Any
    n: Any


def t_interval(values: Any, confidence: float = 0.95, *, axis: int | None = 0, omit_nan: bool = True) -> TInterval:
    """Student-t interval of the mean: ``mean +- t_{(1+confidence)/2, n-1} * std / sqrt(n)``.

    The one t-interval of the package (importances over repeats, per-class drops,
    fold means, the adaptive-k rule).  It covers the randomness *of the values
    given* (e.g. the permutations when the values are repeats), nothing else.

    Parameters
    ----------
    values : array-like
    confidence : float in (0, 1)
        Two-sided level.
    axis : int or None
        Axis to summarize (None: all values).
    omit_nan : bool
        Leave non-finite values out (the count ``n`` may then differ per column).

    Returns
    -------
    TInterval
        ``mean, std, sem, low, high, n`` (floats for 1-D input with ``axis=0`` or
        ``axis=None``, arrays otherwise).  With ``n == 1``: ``std = 0`` and a NaN
        ``sem``/interval; with ``n == 0`` everything is NaN.

    Examples
    --------
    >>> r = t_interval([1.0, 2.0, 3.0])
    >>> round(r.mean, 3), round(r.low, 3), round(r.high, 3)
    (2.0, -0.484, 4.484)
    """
    from scipy import stats as sps

    level = _check_confidence(confidence)
    v = np.asarray(values, dtype=np.float64)
    if axis is None:
        v, axis = v.reshape(-1), 0
    finite = np.isfinite(v) if omit_nan else np.ones(v.shape, bool)
    n = finite.sum(axis=axis)
    vz = np.where(finite, v, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = vz.sum(axis=axis) / n
        dev = np.where(finite, v - np.expand_dims(mean, axis), 0.0)
        var = (dev ** 2).sum(axis=axis) / (n - 1)
        std = np.where(n > 1, np.sqrt(var), np.where(n == 1, 0.0, np.nan))
        sem = np.where(n > 1, std / np.sqrt(np.maximum(n, 1)), np.nan)
        tq = sps.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1))
        half = np.where(n > 1, tq * sem, np.nan)
    if not omit_nan:
        mean = np.where(n > 0, mean, np.nan)
    out = [mean, std, sem, mean - half, mean + half, n]
    if np.ndim(mean) == 0:
        out = [float(x) for x in out[:5]] + [int(n)]
    return TInterval(*out)


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over axis 0: ``(low, high)`` at the given two-sided confidence.

    Examples
    --------
    >>> lo, hi = percentile_interval(np.arange(101.0)[:, None], 0.9)
    >>> round(float(lo[0]), 6), round(float(hi[0]), 6)
    (5.0, 95.0)
    """
    confidence = _check_confidence(confidence)
    a = (1.0 - confidence) / 2.0
    reps = np.asarray(replicates, float)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(reps, [a, 1.0 - a], axis=0)
    return lo, hi


def bootstrap_p_values(replicates: np.ndarray) -> np.ndarray:
    """One-sided bootstrap p-values for H0: importance <= 0 against H1: importance > 0.

    The null, exactly: *for this trained model*, the expected drop of the metric
    when the unit is perturbed -- over test sets of this size drawn from the
    population the test cells came from, and over the permutations -- is at
    most 0.  It says nothing about other models (retraining), other samples or
    instruments, and "not rejected" is not evidence that the model ignores the
    unit.  Each p-value is for one unit; adjust for the number of units tested
    (e.g. :func:`pxpermute.inference.bh_adjust`, as the per-class values are).

    ``p = (1 + #{b : T*_b <= 0}) / (B + 1)`` over the B replicates ``T*_b`` of
    each column: the test dual to the percentile interval (Efron & Tibshirani,
    *An Introduction to the Bootstrap*, 1993, ch. 15-16), with the usual +1 so a
    p-value is never 0; the smallest attainable value is ``1 / (B + 1)``.
    Replicates within :data:`ZERO_TOL` of 0 count as 0, so a channel the model
    ignores (every replicate exactly 0) gets ``p = 1``.
    """
    reps = np.asarray(replicates, float)
    B = reps.shape[0]
    at_most_zero = np.sum(~(reps > ZERO_TOL), axis=0)  # NaN replicates count against H1
    return (1.0 + at_most_zero) / (B + 1.0)


def _rank_shares(values: np.ndarray, tol: float = ZERO_TOL) -> np.ndarray:
    """``S[..., u, j]``: share of rank j (0 = top) held by unit u, ties shared equally.

    A unit tied (within ``tol``) with others holds each rank of the tied block
    with the same share, so shares sum to 1 per unit and per rank and no order
    is made up from column order.  NaN counts as the lowest value.
    """
    v = np.nan_to_num(np.asarray(values, float), nan=-np.inf)
    U = v.shape[-1]
    a, b = v[..., None, :], v[..., :, None]  # [..., u, w]: a = value of w, b = value of u
    with np.errstate(invalid="ignore"):
        above = np.sum(a > b + tol, axis=-1)  # units clearly above u
        tied = np.sum((np.abs(a - b) <= tol) | (a == b), axis=-1)  # including u (and -inf == -inf)
    j = np.arange(U)
    first, last = above[..., None], (above + tied)[..., None]  # u's tied block of ranks [first, last)
    return ((j >= first) & (j < last)) / tied[..., None]


def rank_probabilities(replicates: np.ndarray) -> np.ndarray:
    """``P[u, j]``: share of bootstrap replicates (rows) in which unit u holds rank j (0 = top), ties shared.

    Units tied in a replicate (e.g. two ignored channels, both exactly 0)
    share the ranks of their tied block equally, so two always-tied units get
    0.5 for each of their two ranks -- never a confident rank from column
    order.  Rows and columns of ``P`` sum to 1.  For conclusions about an order
    prefer :func:`pxpermute.inference.pairwise_probabilities`,
    :func:`~pxpermute.inference.top_m_probabilities` and
    :func:`~pxpermute.inference.rank_intervals`.

    Examples
    --------
    >>> rank_probabilities(np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]
    """
    reps = np.atleast_2d(np.asarray(replicates, float))
    return _rank_shares(reps).mean(axis=0)


def rank_stability(replicates: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Deprecated: share of replicates ranking each unit where ``point`` does, ties shared.

    Kept for old code.  It no longer breaks ties by column order: two channels
    tied at exactly 0 in every replicate get 0.5, not 1.0.  A "probability of
    holding its rank" answers no question a reader asks; use
    :func:`pxpermute.inference.pairwise_probabilities` (P(a above b)),
    :func:`~pxpermute.inference.top_m_probabilities` (P(in the top m)) or
    :func:`~pxpermute.inference.rank_intervals` (simultaneous rank intervals);
    on a result: ``pairwise_probabilities``, ``top_m_probabilities(m)``,
    ``rank_low`` / ``rank_high``.

    Examples
    --------
    >>> import warnings
    >>> reps = np.array([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     rank_stability(reps, np.array([3.0, 0.0, 0.0])).tolist()
    [1.0, 0.5, 0.5]
    """
    import warnings

    warnings.warn("rank_stability is deprecated: use pxpermute.inference.pairwise_probabilities, "
                  "top_m_probabilities or rank_intervals (on a result: pairwise_probabilities, "
                  "top_m_probabilities(m), rank_low/rank_high)", DeprecationWarning, stacklevel=2)
    return _rank_stability(replicates, point)


def _rank_stability(replicates: np.ndarray, point: np.ndarray) -> np.ndarray:
    reps = np.atleast_2d(np.asarray(replicates, float))
    pt = np.asarray(point, float)
    point_rank = np.argsort(np.argsort(-np.nan_to_num(pt, nan=-np.inf), kind="stable"), kind="stable")
    shares = _rank_shares(reps)  # (B, U, U)
    return shares[:, np.arange(len(pt)), point_rank].mean(axis=0)


# -----------------------------------------------------------------------------
# stratified subsampling of the test set
# -----------------------------------------------------------------------------
def resolve_max_samples(max_samples: Any, n: int) -> int:
    """Number of samples asked for by ``max_samples`` (a fraction in (0, 1] or a count >= 1) out of n."""
    if isinstance(max_samples, bool) or not isinstance(max_samples, (Integral, Real)):
        raise TypeError(f"max_samples must be a fraction in (0, 1] or a positive integer count, got {max_samples!r}")
    if isinstance(max_samples, Integral):
        if max_samples < 1:
            raise ValueError(f"max_samples as a count must be >= 1, got {max_samples}")
        return min(int(max_samples), n)
    f = float(max_samples)
    if not (0.0 < f <= 1.0) or not math.isfinite(f):
        raise ValueError(
            f"max_samples as a float must be a fraction in (0, 1], got {max_samples!r} (pass an int for a count)"
        )
    return max(1, min(n, int(round(f * n))))


def stratified_subsample(labels: np.ndarray, max_samples: int | float, *,
                         random_state: int | None = DEFAULT_RANDOM_STATE) -> np.ndarray:
    """Sorted indices of a class-stratified subsample of ``labels``; every class keeps at least one sample.

    Each class gets a share proportional to its size (largest-remainder
    rounding); a class that would get 0 gets 1, taken from the largest
    shares, so the subsample has exactly the size asked for unless that is
    smaller than the number of classes (then it has one sample per class).
    Deterministic given ``random_state``.

    Parameters
    ----------
    labels : (N,) int
    max_samples : float in (0, 1] (fraction) or int >= 1 (count)
    random_state : int or None

    Examples
    --------
    >>> y = np.array([0] * 90 + [1] * 9 + [2])
    >>> idx = stratified_subsample(y, 0.1, random_state=0)
    >>> np.bincount(y[idx]).tolist()
    [8, 1, 1]
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    n = len(y)
    if n == 0:
        raise ValueError("cannot subsample an empty data set")
    target = resolve_max_samples(max_samples, n)
    if target >= n:
        return np.arange(n)
    classes, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = target * counts / n
    take = np.maximum(np.floor(quota).astype(int), 1)
    take = np.minimum(take, counts)
    # largest remainder: hand out what is left, largest fractional parts first
    left = target - int(take.sum())
    if left > 0:
        for j in np.argsort(-(quota - np.floor(quota)), kind="stable"):
            if left == 0:
                break
            if take[j] < counts[j]:
                take[j] += 1
                left -= 1
    while left < 0 and take.max() > 1:  # minimum-one bumps overshot: trim the largest shares
        take[int(np.argmax(take))] -= 1
        left += 1
    rng = np.random.default_rng(None if random_state is None else [int(random_state), _SUBSAMPLE_TAG])
    picks = [rng.choice(np.flatnonzero(y_idx == j), size=int(take[j]), replace=False) for j in range(len(classes))]
    return np.sort(np.concatenate(picks)).astype(np.int64)


# -----------------------------------------------------------------------------
# collecting the engine's bootstrap counts over repeat chunks and ranks
# -----------------------------------------------------------------------------
def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return t
    from .distributed import all_reduce_sum

    return all_reduce_sum(t)


class BootstrapCollector:
    """Sums the bootstrap counts of every :func:`~pxpermute.importance.accumulate` call.

    Repeat chunks add up (the counts are pooled over repeats) -- or, for
    per-repeat counts (B, R, U, K, K), are concatenated along the repeats; in a
    distributed run each chunk's counts are all-reduced over the ranks.
    ``baseline`` (B, K, K) and ``confusion`` (B, U, K, K) or (B, R, U, K, K) are
    numpy int64 arrays (None until something was collected).
    """

    def __init__(self) -> None:
        self.baseline: np.ndarray | None = None
        self.confusion: np.ndarray | None = None

    def add(self, acc: Any) -> None:
        bb, bc = getattr(acc, "boot_baseline", None), getattr(acc, "boot_confusion", None)
        if bc is None:
            return
        if bb is not None:
            bb = _all_reduce(bb).cpu().numpy()
            self.baseline = bb if self.baseline is None else self.baseline + bb
        bc = _all_reduce(bc).cpu().numpy()
        if self.confusion is None:
            self.confusion = bc
        elif bc.ndim == 5:  # per-repeat counts (B, R, U, K, K): chunks of repeats are concatenated
            self.confusion = np.concatenate([self.confusion, bc], axis=1)
        else:
            self.confusion = self.confusion + bc

    def wrap(self, accumulate_fn: Any) -> Any:
        """``accumulate_fn`` that also hands every result to :meth:`add`."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            acc = accumulate_fn(*args, **kwargs)
            self.add(acc)
            return acc

        return wrapped


# -----------------------------------------------------------------------------
# what ImportanceResult shows
# -----------------------------------------------------------------------------
def bootstrap_summary(result: Any, confidence: float = 0.95) -> dict[str, Any]:
    """Bootstrap attributes of an :class:`~pxpermute.result.ImportanceResult` holding bootstrap counts.

    Returns a dict with ``bootstrap_importances`` (B, U), ``bootstrap_drops``
    (B, U, K'), ``bootstrap_se``, ``bootstrap_ci_low``, ``bootstrap_ci_high``,
    ``p_values``, ``pairwise_probabilities`` (U, U; P(a above b), ties count
    one half, :func:`pxpermute.inference.pairwise_probabilities`), ``rank_low``,
    ``rank_high`` (U,; simultaneous rank intervals, 1 = top,
    :func:`pxpermute.inference.rank_intervals`), the per-class ``class_p_values``,
    ``class_q_values`` (Benjamini-Hochberg over all units x classes),
    ``class_se``, ``class_ci_low``, ``class_ci_high`` (U, K'), and
    ``baseline_score_ci`` (low, high) of the unperturbed score.  Replicates are
    centred on the reported importance (overall) and on the mean drop over
    repeats (per class), as explained in the module docstring.
    """
    import warnings

    bb, bc = result.bootstrap_baseline_confusion, result.bootstrap_confusion
    metric = result.info.get("metric", "f1")
    aggregate = result.info.get("aggregate", "mean")
    present = result.present_classes
    imp, drops = bootstrap_importances(bb, bc, metric=metric, aggregate=aggregate, present=present,
                                       center=result.importance, baseline_confusion=result.baseline_confusion,
                                       confusion=result.confusion)
    if np.ndim(bc) == 4:  # pooled counts: per class, centre on the mean drop over repeats
        base = compute_metric(result.baseline_confusion, metric, present)
        pooled = base[None, :] - compute_metric(np.asarray(result.confusion).sum(0), metric, present)  # (U, K')
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            shift = np.nanmean(result.drops, axis=0) - pooled
        shift = np.where(np.abs(shift) <= ZERO_TOL, 0.0, np.nan_to_num(shift))
        drops = drops + shift[None]
    cols = present if drops.shape[-1] == len(present) else np.ones(drops.shape[-1], bool)
    lo, hi = percentile_interval(imp, confidence)
    clo, chi = percentile_interval(drops, confidence)
    cp = bootstrap_p_values(drops)
    cp[:, ~cols] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nanstd(imp, axis=0, ddof=1)
        cse = np.nanstd(drops, axis=0, ddof=1)
    bs = bootstrap_scores(bb, metric, present=present)
    blo, bhi = percentile_interval(bs[:, None], confidence)
    from .inference import bh_adjust, pairwise_probabilities, rank_intervals

    finite = np.all(np.isfinite(imp), axis=1)
    r_low, r_high = rank_intervals(imp[finite], result.importance, confidence=confidence) if finite.any() else (
        np.ones(imp.shape[1], int), np.full(imp.shape[1], imp.shape[1]))
    return {
        "bootstrap_importances": imp,
        "bootstrap_drops": drops,
        "bootstrap_se": se,
        "bootstrap_ci_low": lo,
        "bootstrap_ci_high": hi,
        "p_values": bootstrap_p_values(imp),
        "pairwise_probabilities": pairwise_probabilities(imp),
        "rank_low": r_low,
        "rank_high": r_high,
        "class_p_values": cp,
        "class_q_values": bh_adjust(cp),
        "class_se": cse,
        "class_ci_low": clo,
        "class_ci_high": chi,
        "baseline_score_ci": (float(blo[0]), float(bhi[0])),
    }


def per_class_frame(result: Any) -> Any:
    """One row per (unit, class): the drop summarized over repeats (+ bootstrap columns). See ``to_frame("per_class")``."""
    import warnings

    import pandas as pd

    if result.drops is None:
        raise ValueError("this result has no per-class detail")
    d = result.drops  # (R, U, K')
    R, U, Kp = d.shape
    names = result.class_names if Kp == len(result.class_names) else [result.info.get("metric", "overall")] * Kp
    level = float(result.info.get("confidence", 0.95))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(d, axis=0)
    ti = t_interval(d, level, axis=0)
    mean, std, sem = ti.mean, ti.std, ti.sem
    cols: dict[str, Any] = {
        "method": result.info.get("method", "pxpermute"),
        "channel": np.repeat(result.channel_names, Kp),
        "class": np.tile(names, U),
        "baseline": np.tile(np.asarray(result.baseline_scores, float).reshape(-1), U),
        "mean": mean.reshape(-1),
        "median": median.reshape(-1),
        "std": std.reshape(-1),
        "sem": sem.reshape(-1),
        "ci_low": ti.low.reshape(-1),
        "ci_high": ti.high.reshape(-1),
        "perm_ci_low": ti.low.reshape(-1),
        "perm_ci_high": ti.high.reshape(-1),
    }
    if getattr(result, "class_p_values", None) is not None:
        # the interval shown by default is the bootstrap over test cells (as for the channel table)
        cols["ci_low"] = result.class_ci_low.reshape(-1)
        cols["ci_high"] = result.class_ci_high.reshape(-1)
        cols["boot_se"] = result.class_se.reshape(-1)
        cols["boot_ci_low"] = result.class_ci_low.reshape(-1)
        cols["boot_ci_high"] = result.class_ci_high.reshape(-1)
        cols["p_value"] = result.class_p_values.reshape(-1)
        q = getattr(result, "class_q_values", None)
        if q is not None:
            cols["q_value"] = np.asarray(q).reshape(-1)
    return pd.DataFrame(cols)
