"""How sure are we?  A simulation study of pxpermute's intervals, tests and stopping rule.

A known data-generating process makes every "true" value computable, so each
interval's coverage, each test's error rate and each stopping rule's wrong-order
rate can be counted over many independent test sets.

The process
-----------
Binary classes (``y ~ Bernoulli(1/2)``).  Every "image" has C channels of two
pixels, ``(p1, p2)``.  A channel's spatial signal is ``d = p1 - p2`` with
``d | y ~ N(mu_c (2y - 1), 1)``; its intensity ``p1 + p2 ~ N(0, 1)`` carries
nothing.  The classifier is a fixed hand-made linear rule on the spatial
signals, ``predict 1 if sum_c beta_c d_c > 0``.  Permuting the two pixels of a
channel at random (PXPermute on a 1 x 2 image) swaps them with probability 1/2,
i.e. flips the sign of ``d_c``.  Because all scores are Gaussian, the
population confusion rates before and after permuting channel c are normal
CDFs, so the *population importance* (drop of the mean per-class F1 over
infinitely many cells and permutations) is exact (:func:`population_importance`).
A channel the model reads that carries no class signal (``mu = 0``) has
population importance exactly 0 (its sign flip does not change the joint
distribution) but, on a finite test set, non-zero drops -- the "model reading
noise" case.

Fast path, and how it is checked against the engine
---------------------------------------------------
Running :func:`pxpermute.channel_importance` for every one of thousands of test
sets with 999 bootstrap replicates would take hours on one core (0.6 s per run
without, 3.7 s with the bootstrap, at n = 400, k = 100).  The study computes the
same quantities in closed numpy form: only cells whose prediction changes when
d_c flips matter; each repeat flips each of them with probability 1/2; the
confusion matrix of every (repeat, channel) and the engine's Poisson-bootstrap
statistic (weighted confusion matrices pooled over repeats, shifted to the
reported importance, percentile interval; :mod:`pxpermute.stats`) follow by
matrix products.  ``engine_check`` in the output runs the engine itself on one
test set with many repeats and compares the mean importance, the per-repeat SD
and the bootstrap SE with the fast path's (they agree within Monte Carlo
error; the random streams differ).  ``bootstrap_check`` asserts that the fast
bootstrap statistic equals :func:`pxpermute.stats.bootstrap_importances` on the
same counts.  To save time, one matrix of Poisson weights serves 100
consecutive test sets of a size (common random numbers; with 999 replicates the
interval's own Monte Carlo error is small next to the test-set variability).
The adaptive rule's stopping times come from a vectorized emulation of
:func:`pxpermute.inference.sequential_ranking`, checked against the package
function on the first 30 test sets (``stopping_rule_emulation_checked_against_package``).

Parts (each counted over ``--n-sims`` independent test sets / data sets)
-----------------------------------------------------------------------
1. ``coverage``: coverage of the population importance by the permutation
   (Monte Carlo) t-interval over repeats and by the Poisson bootstrap over test
   cells, at n = 100, 400, 1600 cells and k = 20, 100; bootstrap SE against the
   true SD; calibration (p-values of the noise channel, whose truth is 0) and
   power (weak channel).
2. ``noise_model``: a model that reads only noise: how often the old reading
   ("interval excludes 0 = used") calls the top channel used, per interval;
   how often plain min-max scaling shows the top channel as 1.0 and how often
   ``ImportanceResult.normalized()`` scales at all (only when the top channel's
   bootstrap interval lies above 0).
3. ``adaptive``: a dominant channel, a close pair, a noise channel and two
   ignored channels; fixed k = 100 vs the previous adaptive rule (point-estimate
   ties relative to the range, min 20 repeats) vs the confidence-sequence rule
   of :func:`pxpermute.inference.sequential_ranking` (min 3 repeats, chunks of
   1..5; tie tolerance 0.005, and 0.01 in ``adaptive_tol_0.01``): wrong order of the close pair against the order infinitely many
   repeats give on the same cells (estimated with 4,000 extra repeats), repeats
   and forward passes used.
4. ``cross_validation``: 5-fold CV with a 20 % validation split; a classifier
   refitted per fold (class-mean differences); importance per held-out fold
   (k = 20).  Coverage of the expected importance (over refits) by the old
   stacked folds x repeats t-interval and by the t-interval over fold means.
5. ``panels``: all channels vs a panel truly 0.028 F1 worse; rate of the
   old superiority reading ("not significantly below"), of the old
   minimal-panel point-estimate rule, and of non-inferiority decisions at a
   0.02 margin (should be <= 5 %) and a 0.05 margin (power), with the
   Nadeau-Bengio ratio 0.3125 (20 % validation split), 0.25 and 0 (plain t);
   fixed-sequence testing of three nested panels.
6. ``engine_extras`` (the engine itself, 199 bootstrap replicates):
   ``median``: 3 classes, k = 7, ``aggregate="median"``; how often the estimate
   falls outside its own interval with per-repeat bootstrap counts (a bootstrap
   of the median, the package now) and with counts pooled over repeats plus a
   centring shift (the previous interval; the same runs, counts summed over
   repeats).  ``sample_donors``: ``perturbation="sample"`` on a process whose
   population importance is known (accuracy drop 1 - p^2 - (1-p)^2 = 0.32 for a
   class share p = 0.2, the channel carrying the class): coverage and SE vs
   true SD with recipient x donor weights (now) and recipient-only weights
   (before; the engine with its donor weighting switched off).  ``rank_ties``:
   the share a channel tied at exactly 0 gets for "its" rank, before (ties in
   column order) and now (ties shared).

Run:  nice -n 19 python benchmarks/uncertainty_simulation.py [--quick] [--n-sims N] [--no-figure]
Output: JSON on stdout and in benchmarks/results/uncertainty_simulation.json;
figure book/how_sure_simulation.png.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from pxpermute.inference import (
    confidence_sequence,
    fixed_sequence,
    nb_test_train_ratio,
    noninferiority_test,
    sequential_ranking,
)

ROOT = Path(__file__).resolve().parents[1]
Z_TOL = 1e-12


# =============================================================================
# the data-generating process
# =============================================================================
def draw(n: int, mu: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n cells: labels y (n,) and spatial signals d (n, C)."""
    y = rng.integers(0, 2, n)
    d = rng.normal(0.0, 1.0, (n, len(mu))) + np.outer(2 * y - 1, mu)
    return y, d


def _f1_macro_rates(p1_given_1: np.ndarray, p1_given_0: np.ndarray) -> np.ndarray:
    """Population mean per-class F1 for balanced classes from P(pred 1 | y)."""
    tp, fn = 0.5 * p1_given_1, 0.5 * (1 - p1_given_1)
    fp, tn = 0.5 * p1_given_0, 0.5 * (1 - p1_given_0)
    return 0.5 * (2 * tp / (2 * tp + fp + fn) + 2 * tn / (2 * tn + fn + fp))


def population_importance(beta: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Exact population importance (drop of mean per-class F1) of every channel for linear rules beta (..., C)."""
    beta, mu = np.asarray(beta, float), np.asarray(mu, float)
    sd = np.sqrt(np.sum(beta**2, axis=-1, keepdims=True))
    sd = np.where(sd > 0, sd, np.inf)
    m = np.sum(beta * mu, axis=-1, keepdims=True)
    base = _f1_macro_rates(stats.norm.cdf(m / sd), stats.norm.cdf(-m / sd))
    m_flip = m - 2 * beta * mu  # mean score of class 1 when d_c is negated
    q1 = 0.5 * stats.norm.cdf(m / sd) + 0.5 * stats.norm.cdf(m_flip / sd)
    q0 = 0.5 * stats.norm.cdf(-m / sd) + 0.5 * stats.norm.cdf(-m_flip / sd)
    return base - _f1_macro_rates(q1, q0)


def population_f1(beta: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Population mean per-class F1 of linear rules beta (..., C)."""
    beta, mu = np.asarray(beta, float), np.asarray(mu, float)
    sd = np.sqrt(np.sum(beta**2, axis=-1))
    m = np.sum(beta * mu, axis=-1)
    return _f1_macro_rates(stats.norm.cdf(m / sd), stats.norm.cdf(-m / sd))


def fitted_betas(mu: np.ndarray, n_fit: int, n_draw: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of the fitted rule (class-mean differences on n_fit cells, see :func:`_fit`): (n_draw, C)."""
    n1 = rng.binomial(n_fit, 0.5, n_draw)
    se = np.sqrt(1.0 / np.maximum(n1, 1) + 1.0 / np.maximum(n_fit - n1, 1))
    return 2 * np.asarray(mu, float) + rng.normal(0.0, 1.0, (n_draw, len(mu))) * se[:, None]


# =============================================================================
# the fast, exact equivalent of the engine on this process
# =============================================================================
def _cm_cells(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One-hot of the confusion cell (true, pred) -> index 2*y + pred, shape (n, 4)."""
    out = np.zeros((len(y), 4))
    out[np.arange(len(y)), 2 * y + pred.astype(int)] = 1.0
    return out


def _f1m(cm4: np.ndarray) -> np.ndarray:
    """Mean per-class F1 from flattened 2x2 confusion matrices (..., 4) = (TN, FP, FN, TP)."""
    tn, fp, fn, tp = cm4[..., 0], cm4[..., 1], cm4[..., 2], cm4[..., 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f0 = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
    return 0.5 * (f0 + f1)


class FastRun:
    """Per-repeat importances and the engine's bootstrap statistic for one test set, k repeats.

    ``imp`` (k, C): per-repeat drops of mean per-class F1 (the engine's
    ``result.importances``); ``flips`` per channel: number of times each cell
    was flipped, for the bootstrap.
    """

    def __init__(self, y: np.ndarray, d: np.ndarray, beta: np.ndarray, k: int, rng: np.random.Generator,
                 channels: list[int] | None = None) -> None:
        C = d.shape[1]
        self.y = y
        s0 = d @ beta
        p0 = s0 > 0
        self.base_cells = _cm_cells(y, p0)  # (n, 4)
        self.base_cm = self.base_cells.sum(0)
        base = _f1m(self.base_cm)
        chans = list(range(C)) if channels is None else channels
        self.imp = np.zeros((k, len(chans)))
        self.cm = np.zeros((k, len(chans), 4))
        self.delta = []  # per channel: (idx of switchable cells, their cell change (m, 4))
        self.cum = []  # per channel: (k, m) cumulative flips of each switchable cell
        for j, c in enumerate(chans):
            alt = (s0 - 2 * beta[c] * d[:, c]) > 0
            sw = np.flatnonzero(alt != p0)
            dl = _cm_cells(y[sw], alt[sw]) - self.base_cells[sw]
            F = rng.random((k, len(sw))) < 0.5
            cm = self.base_cm[None, :] + F.astype(float) @ dl
            self.cm[:, j] = cm
            self.imp[:, j] = base - _f1m(cm)
            self.delta.append((sw, dl))
            self.cum.append(np.cumsum(F, axis=0, dtype=np.int32))
        self.count = [c[-1] for c in self.cum]  # flips per switchable cell over the k repeats
        self.k = k

    def bootstrap(self, W: np.ndarray) -> np.ndarray:
        """Engine's bootstrap replicates (B, C): pooled-over-repeats drop, shifted to the reported importance."""
        return bootstrap_many([self], W)[0]


def bootstrap_many(runs: list[FastRun], W: np.ndarray) -> list[np.ndarray]:
    """:meth:`FastRun.bootstrap` for several runs on the same test cells (e.g. k-prefixes), one matrix product.

    Replicate b weights cell i by ``W[b, i]`` (Poisson(1)); its baseline confusion
    matrix is ``sum_i W[b, i] e(y_i, pred_i)`` and its perturbed one, pooled over
    the k repeats, ``sum_i W[b, i] (k e(y_i, pred_i) + flips_i (e(y_i, alt_i) - e(y_i, pred_i)))``.
    """
    base_cells = runs[0].base_cells
    n = base_cells.shape[0]
    cols = [base_cells]
    for run in runs:
        for j, (sw, dl) in enumerate(run.delta):
            c = np.zeros((n, 4))
            c[sw] = run.count[j][:, None] * dl
            cols.append(c)
    M = np.concatenate(cols, axis=1).astype(W.dtype)
    P = (W @ M).astype(np.float64)  # (B, 4 + 4 * sum of channels)
    bb = P[:, :4]
    base_b = _f1m(bb)
    out, pos = [], 4
    for run in runs:
        reps = np.empty((W.shape[0], len(run.delta)))
        for j, (_sw, dl) in enumerate(run.delta):
            pooled_b = run.k * bb + P[:, pos:pos + 4]
            pos += 4
            pooled_full = run.k * run.base_cm + run.count[j] @ dl
            shift = run.imp[:, j].mean() - (_f1m(run.base_cm) - _f1m(pooled_full))
            shift = 0.0 if abs(shift) <= Z_TOL else shift
            reps[:, j] = base_b - _f1m(pooled_b) + shift
        out.append(reps)
    return out


def poisson_weights(B: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson(1) bootstrap weights (B, n) as float32 (exact integers)."""
    return rng.poisson(1.0, (B, n)).astype(np.float32)


def t_ci(x: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    m = x.mean(0)
    h = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(0, ddof=1) / math.sqrt(n)
    return m - h, m + h


def boot_p(reps: np.ndarray) -> np.ndarray:
    """pxpermute.stats.bootstrap_p_values: one-sided H0 importance <= 0."""
    return (1.0 + np.sum(~(reps > Z_TOL), axis=0)) / (reps.shape[0] + 1.0)


# =============================================================================
# checks against the package
# =============================================================================
def bootstrap_check(rng: np.random.Generator) -> dict:
    """The fast bootstrap statistic equals pxpermute.stats.bootstrap_importances on the same counts."""
    from pxpermute.stats import bootstrap_importances

    beta, mu = np.array([1.0, 0.4, 0.5]), np.array([1.0, 0.3, 0.0])
    y, d = draw(300, mu, rng)
    run = FastRun(y, d, beta, 20, rng)
    W = poisson_weights(50, 300, rng)
    fast = run.bootstrap(W)
    bb = (W @ run.base_cells).reshape(-1, 2, 2)
    cb = np.stack([(run.k * (W @ run.base_cells) + W[:, sw] @ (run.count[j][:, None] * dl))
                   for j, (sw, dl) in enumerate(run.delta)], 1).reshape(50, -1, 2, 2)
    pkg, _ = bootstrap_importances(bb, cb, metric="f1", aggregate="mean", center=run.imp.mean(0),
                                   baseline_confusion=run.base_cm.reshape(2, 2), confusion=run.cm.reshape(20, -1, 2, 2))
    err = float(np.max(np.abs(pkg - fast)))
    assert err < 1e-9, f"fast bootstrap differs from pxpermute.stats by {err}"
    return {"max_abs_difference": err}


def engine_check(rng: np.random.Generator, *, n: int = 400, k: int = 1000, k_boot: int = 100, n_boot: int = 299) -> dict:
    """Run pxpermute.channel_importance itself on one test set; compare with the fast path."""
    import torch

    from pxpermute import channel_importance

    beta, mu = np.array([1.0, 0.4, 0.5]), np.array([1.0, 0.3, 0.0])
    y, d = draw(n, mu, rng)
    s = rng.normal(0, 1, d.shape)
    X = np.stack([(s + d) / 2, (s - d) / 2], -1)[:, :, None, :].astype("float32")  # (n, C, 1, 2)
    bt = torch.tensor(beta, dtype=torch.float32)

    def model(x: torch.Tensor) -> torch.Tensor:
        sc = (x[:, :, 0, 0] - x[:, :, 0, 1]) @ bt
        return torch.stack([-sc, sc], 1)

    seed = int(rng.integers(1 << 30))
    t0 = time.perf_counter()
    res = channel_importance(model, (X, y), n_repeats=k, random_state=seed, progress=False, batch_size=8192)
    boot = channel_importance(model, (X, y), n_repeats=k_boot, n_bootstrap=n_boot, random_state=seed, progress=False,
                              batch_size=8192)
    t_engine = time.perf_counter() - t0
    d64 = (X[:, :, 0, 0].astype(float) - X[:, :, 0, 1].astype(float))  # the float32 signals the engine saw
    fast = FastRun(y, d64, beta, k, rng)
    reps = _prefix(fast, k_boot).bootstrap(poisson_weights(n_boot, n, rng))
    eng_imp = np.asarray(res.importances)
    mc_se = np.sqrt(eng_imp.var(0, ddof=1) / k + fast.imp.var(0, ddof=1) / k)
    return {
        "n": n, "k": k, "k_bootstrap": k_boot, "n_bootstrap": n_boot, "engine_seconds": round(t_engine, 2),
        "mean_importance_engine": np.round(eng_imp.mean(0), 5).tolist(),
        "mean_importance_fast": np.round(fast.imp.mean(0), 5).tolist(),
        "difference_in_mc_se": np.round((eng_imp.mean(0) - fast.imp.mean(0)) / np.maximum(mc_se, 1e-12), 2).tolist(),
        "per_repeat_sd_engine": np.round(eng_imp.std(0, ddof=1), 5).tolist(),
        "per_repeat_sd_fast": np.round(fast.imp.std(0, ddof=1), 5).tolist(),
        "bootstrap_se_engine": np.round(np.asarray(boot.bootstrap_se), 5).tolist(),
        "bootstrap_se_fast": np.round(reps.std(0, ddof=1), 5).tolist(),
    }


# =============================================================================
# 1. coverage, calibration, power
# =============================================================================
def part_coverage(n_sims: int, rng: np.random.Generator, ns=(100, 400, 1600), ks=(20, 100), B: int = 999) -> dict:
    names = ["strong", "weak", "noise"]
    mu = np.array([1.0, 0.3, 0.0])
    beta = np.array([1.0, 0.4, 0.5])
    truth = population_importance(beta, mu)
    out: dict = {"channels": names, "mu": mu.tolist(), "beta": beta.tolist(), "truth": np.round(truth, 5).tolist(),
                 "n_bootstrap": B, "by_n": []}
    for n in ns:
        kmax = max(ks)
        cover_perm = {k: np.zeros(3) for k in ks}
        cover_boot = {k: np.zeros(3) for k in ks}
        est = {k: [] for k in ks}
        se_boot = {k: [] for k in ks}
        pvals = {k: [] for k in ks}
        width_perm = {k: [] for k in ks}
        width_boot = {k: [] for k in ks}
        for i in range(n_sims):
            y, d = draw(n, mu, rng)
            if i % 100 == 0:
                W = poisson_weights(B, n, rng)  # common random numbers, refreshed every 100 test sets
            full = FastRun(y, d, beta, kmax, rng)
            runs = [full if k == kmax else _prefix(full, k) for k in ks]
            all_reps = bootstrap_many(runs, W)
            for k, run, reps in zip(ks, runs, all_reps):
                lo, hi = t_ci(run.imp)
                cover_perm[k] += (lo <= truth) & (truth <= hi)
                width_perm[k].append(hi - lo)
                blo, bhi = np.quantile(reps, [0.025, 0.975], axis=0)
                cover_boot[k] += (blo <= truth) & (truth <= bhi)
                width_boot[k].append(bhi - blo)
                est[k].append(run.imp.mean(0))
                se_boot[k].append(reps.std(0, ddof=1))
                pvals[k].append(boot_p(reps))
        row = {"n": n, "by_k": []}
        for k in ks:
            e = np.array(est[k])
            p = np.array(pvals[k])
            row["by_k"].append({
                "k": k,
                "coverage_permutation_t": np.round(cover_perm[k] / n_sims, 3).tolist(),
                "coverage_bootstrap": np.round(cover_boot[k] / n_sims, 3).tolist(),
                "mean_width_permutation_t": np.round(np.mean(width_perm[k], 0), 4).tolist(),
                "mean_width_bootstrap": np.round(np.mean(width_boot[k], 0), 4).tolist(),
                "true_sd_of_estimate": np.round(e.std(0, ddof=1), 4).tolist(),
                "mean_bootstrap_se": np.round(np.mean(se_boot[k], 0), 4).tolist(),
                "bias": np.round(e.mean(0) - truth, 4).tolist(),
                "noise_channel_p_below_0.05": round(float(np.mean(p[:, 2] < 0.05)), 3),
                "noise_channel_p_below_0.10": round(float(np.mean(p[:, 2] < 0.10)), 3),
                "noise_channel_p_ks_distance_to_uniform": round(float(stats.kstest(p[:, 2], "uniform").statistic), 3),
                "weak_channel_power_p_below_0.05": round(float(np.mean(p[:, 1] < 0.05)), 3),
                "strong_channel_power_p_below_0.05": round(float(np.mean(p[:, 0] < 0.05)), 3),
            })
        out["by_n"].append(row)
    return out


def _prefix(run: FastRun, k: int) -> FastRun:
    """The first k repeats of a run (as the engine's adaptive-k and k-ablation prefixes)."""
    new = object.__new__(FastRun)
    new.y, new.base_cells, new.base_cm, new.k = run.y, run.base_cells, run.base_cm, k
    new.imp, new.cm, new.delta, new.cum = run.imp[:k], run.cm[:k], run.delta, [c[:k] for c in run.cum]
    new.count = [c[k - 1] for c in new.cum]
    return new


# =============================================================================
# 2. a model that reads only noise
# =============================================================================
def part_noise_model(n_sims: int, rng: np.random.Generator, n: int = 400, k: int = 100, B: int = 999) -> dict:
    mu = np.zeros(4)
    beta = np.array([1.0, 0.8, 0.6, 0.4])
    perm_excl = boot_excl = norm_top = norm_shown = 0
    top_imp = []
    for i in range(n_sims):
        if i % 100 == 0:
            W = poisson_weights(B, n, rng)
        y, d = draw(n, mu, rng)
        run = FastRun(y, d, beta, k, rng)
        m = run.imp.mean(0)
        top = int(np.argmax(m))
        top_imp.append(m[top])
        lo, hi = t_ci(run.imp)
        perm_excl += lo[top] > 0 or hi[top] < 0
        reps = run.bootstrap(W)
        blo, bhi = np.quantile(reps[:, top], [0.025, 0.975])
        boot_excl += blo > 0 or bhi < 0
        norm_shown += blo > 0  # ImportanceResult.normalized(): scaled only when the top interval lies above 0
        rng_ = m.max() - m.min()
        norm_top += rng_ > 0
    return {
        "n": n, "k": k, "truth": "every channel has population importance 0 (the model reads 4 noise channels)",
        "top_channel_mean_importance": round(float(np.mean(top_imp)), 4),
        "top_permutation_interval_excludes_0": round(perm_excl / n_sims, 3),
        "top_bootstrap_interval_excludes_0": round(boot_excl / n_sims, 3),
        "min_max_normalized_top_equals_1": round(norm_top / n_sims, 3),
        "normalized_shown_now": round(norm_shown / n_sims, 3),
    }


# =============================================================================
# 3. adaptive k
# =============================================================================
def old_rule_settled(imp: np.ndarray, history: list, *, tol: float = 0.02, patience: int = 3, conf: float = 0.95) -> bool:
    """The previous adaptive rule (pxpermute.scale.ranking_settled before this study), reproduced for comparison."""
    R = imp.shape[0]
    summary = imp.mean(0)
    order = tuple(int(i) for i in np.argsort(-summary, kind="stable"))
    history.append(order)
    half = stats.t.ppf(0.5 + conf / 2, R - 1) * imp.std(0, ddof=1) / math.sqrt(R)
    tie = tol * float(summary.max() - summary.min())
    ok = True
    for a, b in itertools.pairwise(order):
        if abs(summary[a] - summary[b]) <= tie or max(half[a], half[b]) <= tie:
            continue
        if not (summary[a] - half[a] > summary[b] + half[b]):
            ok = False
            break
    if ok:
        return True
    return len(history) >= patience + 1 and len(set(history[-(patience + 1):])) == 1


def _record(r: dict, ctx: dict, k_used: int, tie_pair: bool, A: int, B: int, truth: np.ndarray, tol: float) -> None:
    m = ctx["imp"][:k_used].mean(0)
    r["k"].append(k_used)
    wrong = not ctx["amb"] and np.sign(m[A] - m[B]) != np.sign(ctx["delta_ref"])
    r["wrong"] += wrong
    r["wrong_untied"] += wrong and not tie_pair
    r["wrong_pop"] += np.sign(m[A] - m[B]) != np.sign(truth[A] - truth[B])
    r["tie"] += tie_pair
    r["false_tie"] += tie_pair and abs(ctx["delta_ref"]) > tol
    r["same_as_fixed"] += list(np.argsort(-m, kind="stable")) == ctx["fixed_order"]


def _stop_package(imp: np.ndarray, rule: dict, *, tol: float, min_scale: float, A: int, B: int,
                  alpha: float = 0.05) -> tuple[int, bool]:
    """Repeats used and whether A, B ended in one tie group: pxpermute.inference.sequential_ranking after every chunk."""
    kmax = imp.shape[0]
    for t in range(rule["min_repeats"], kmax + 1, rule["chunk"]):
        dec = sequential_ranking(imp[:t], alpha=alpha, tol=tol, method=rule["method"],
                                 min_repeats=rule["min_repeats"], min_scale=min_scale)
        if dec.settled or t == kmax:
            return t, any(A in g and B in g for g in dec.tie_groups)
    return kmax, False


def _stop_fast(imp: np.ndarray, rule: dict, *, tol: float, min_scale: float, A: int, B: int,
               alpha: float = 0.05) -> tuple[int, bool]:
    """Same as :func:`_stop_package`, computing every pair's confidence sequence once (they are causal)."""
    kmax, U = imp.shape
    iu, ju = np.triu_indices(U, 1)
    pid = {(int(a), int(b)): p for p, (a, b) in enumerate(zip(iu, ju))}
    a_pair = alpha / len(iu)
    diffs = imp[:, iu] - imp[:, ju]
    if rule["method"] == "bernstein":
        lo, hi = confidence_sequence(diffs, alpha=a_pair, method="bernstein", bounds=(-2.0, 2.0))
    else:
        lo, hi = confidence_sequence(diffs, alpha=a_pair, method=rule["method"], min_scale=min_scale)
    cmean = np.cumsum(imp, axis=0) / np.arange(1, kmax + 1)[:, None]
    ts = list(range(rule["min_repeats"], kmax + 1, rule["chunk"]))
    if ts[-1] != kmax:
        ts.append(kmax)
    for t in ts:
        order = [int(i) for i in np.argsort(-cmean[t - 1], kind="stable")]
        status = []
        for a, b in itertools.pairwise(order):
            p = pid[(min(a, b), max(a, b))]
            lw, hg = (lo[t - 1, p], hi[t - 1, p]) if a < b else (-hi[t - 1, p], -lo[t - 1, p])
            status.append("resolved" if lw > 0 else ("tie" if lw >= -tol and hg <= tol else "open"))
        if "open" not in status or t == kmax:
            ia, ib = sorted((order.index(A), order.index(B)))
            return t, all(st == "tie" for st in status[ia:ib])
    return kmax, False


def part_adaptive(n_sims: int, rng: np.random.Generator, n: int = 400, kmax: int = 100, k_ref: int = 4000,
                  close_mu: tuple[float, float] = (0.45, 0.36), tie_tol: float = 0.01) -> dict:
    names = ["dominant", "closeA", "closeB", "noise", "ignored1", "ignored2"]
    mu = np.array([1.2, close_mu[0], close_mu[1], 0.0, 0.5, 0.5])
    beta = np.array([1.2, close_mu[0], close_mu[1], 0.3, 0.0, 0.0])
    truth = population_importance(beta, mu)
    A, Bc = 1, 2
    U = len(mu)
    new_rules = {
        "cs_t_chunk1": {"method": "t", "chunk": 1, "min_repeats": 3},
        "cs_t_chunk5": {"method": "t", "chunk": 5, "min_repeats": 5},
        "cs_bernstein_chunk5": {"method": "bernstein", "chunk": 5, "min_repeats": 5},
    }
    rec = {name: {"wrong": 0, "wrong_untied": 0, "wrong_pop": 0, "k": [], "tie": 0, "false_tie": 0, "same_as_fixed": 0}
           for name in ["fixed_k100", "old_rule", *new_rules]}
    cs_miss = 0
    ambiguous = 0
    n_check = 30
    checked = dict.fromkeys(new_rules, 0)
    mismatches = dict.fromkeys(new_rules, 0)
    tol = float(tie_tol)
    for _ in range(n_sims):
        y, d = draw(n, mu, rng)
        run = FastRun(y, d, beta, kmax, rng)
        ref = FastRun(y, d, beta, k_ref, rng, channels=[A, Bc]).imp
        delta_ref = float(ref[:, 0].mean() - ref[:, 1].mean())
        mc = float(np.std(ref[:, 0] - ref[:, 1], ddof=1) / math.sqrt(k_ref))
        amb = abs(delta_ref) < 3 * mc
        ambiguous += amb
        imp = run.imp
        fixed_order = list(np.argsort(-imp.mean(0), kind="stable"))

        ctx = {"imp": imp, "amb": amb, "delta_ref": delta_ref, "fixed_order": fixed_order}
        _record(rec["fixed_k100"], ctx, kmax, False, A, Bc, truth, tol)
        hist: list = []
        k_old = kmax
        for t in range(20, kmax, 10):
            if old_rule_settled(imp[:t], hist):
                k_old = t
                break
        _record(rec["old_rule"], ctx, k_old, False, A, Bc, truth, tol)
        for name, rule in new_rules.items():
            k_new, tie_pair = _stop_fast(imp, rule, tol=tol, min_scale=1.0 / n, A=A, B=Bc)
            if checked[name] < n_check:  # the fast emulation must agree with pxpermute.inference.sequential_ranking
                checked[name] += 1
                mismatches[name] += (k_new, tie_pair) != _stop_package(imp, rule, tol=tol, min_scale=1.0 / n, A=A, B=Bc)
            _record(rec[name], ctx, k_new, tie_pair, A, Bc, truth, tol)
        # time-uniform coverage of the close pair's CS (per-pair level of the rule), checked at every repeat
        lo, hi = confidence_sequence(imp[:, A] - imp[:, Bc], alpha=0.05 / (U * (U - 1) / 2), min_scale=1.0 / n)
        cs_miss += bool(np.any((lo > delta_ref) | (hi < delta_ref)))
    valid = n_sims - ambiguous
    passes = lambda k: U * np.asarray(k, float) + 1  # forward passes per block of cells: baseline + U per repeat
    summary = {}
    for name, r in rec.items():
        summary[name] = {
            "wrong_order_vs_same_cells_infinite_k": round(r["wrong"] / max(valid, 1), 4),
            "wrong_order_not_declared_tie": round(r["wrong_untied"] / max(valid, 1), 4),
            "wrong_order_vs_population": round(r["wrong_pop"] / n_sims, 4),
            "mean_k": round(float(np.mean(r["k"])), 1),
            "median_k": float(np.median(r["k"])),
            "forward_passes_saved_vs_k100": round(1 - float(np.mean(passes(r["k"]))) / float(passes(kmax)), 3),
            "pair_declared_tie": round(r["tie"] / n_sims, 4),
            "tie_declared_while_gap_above_tol": round(r["false_tie"] / n_sims, 4),
            "full_ranking_same_as_fixed_k100": round(r["same_as_fixed"] / n_sims, 3),
        }
    base = summary["fixed_k100"]["wrong_order_vs_same_cells_infinite_k"]
    acc = {name: bool(abs(s["wrong_order_vs_same_cells_infinite_k"] - base) <= 0.01) for name, s in summary.items()}
    return {
        "n": n, "k_max": kmax, "k_reference": k_ref, "channels": names, "mu": mu.tolist(), "beta": beta.tolist(),
        "truth": np.round(truth, 4).tolist(), "tie_tol": tol, "alpha": 0.05,
        "test_sets_with_ambiguous_reference_order": int(ambiguous),
        "close_pair_cs_time_uniform_miss_rate": round(cs_miss / n_sims, 4),
        "stopping_rule_emulation_checked_against_package": {r: f"{mismatches[r]} mismatches in {checked[r]} test sets"
                                                             for r in new_rules},
        "rules": summary,
        "acceptance_wrong_order_within_0.01_of_fixed_k100": acc,
    }


# =============================================================================
# 4. cross-validated importance: intervals over fold means
# =============================================================================
def _folds(y: np.ndarray, n_splits: int, rng: np.random.Generator) -> list[np.ndarray]:
    parts = [[] for _ in range(n_splits)]
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        for j, chunk in enumerate(np.array_split(idx, n_splits)):
            parts[j].append(chunk)
    return [np.concatenate(p) for p in parts]


def _fit(y: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The 'training': class-mean difference of each signal (LDA with identity covariance)."""
    return d[y == 1].mean(0) - d[y == 0].mean(0)


def part_cv(n_sims: int, rng: np.random.Generator, N: int = 500, n_splits: int = 5, k: int = 20, val: float = 0.2,
            n_truth: int = 200000) -> dict:
    mu = np.array([0.8, 0.3, 0.0])
    n_fit = round(N * (1 - 1 / n_splits) * (1 - val))
    # truth: expected population importance of a model fitted on n_fit cells
    truth = population_importance(fitted_betas(mu, n_fit, n_truth, rng), mu).mean(0)
    cov_stack = np.zeros(3)
    cov_fold = np.zeros(3)
    w_stack, w_fold = [], []
    for _ in range(n_sims):
        y, d = draw(N, mu, rng)
        folds = _folds(y, n_splits, rng)
        per_fold = []
        for j in range(n_splits):
            te = folds[j]
            tr = np.concatenate([folds[i] for i in range(n_splits) if i != j])
            tr = rng.permutation(tr)[: round(len(tr) * (1 - val))]  # the validation split is not fitted on
            bhat = _fit(y[tr], d[tr])
            per_fold.append(FastRun(y[te], d[te], bhat, k, rng).imp)
        per_fold = np.array(per_fold)  # (F, k, C)
        lo, hi = t_ci(per_fold.reshape(-1, 3))
        cov_stack += (lo <= truth) & (truth <= hi)
        w_stack.append(hi - lo)
        lo, hi = t_ci(per_fold.mean(1))
        cov_fold += (lo <= truth) & (truth <= hi)
        w_fold.append(hi - lo)
    return {
        "N": N, "n_splits": n_splits, "validation_fraction": val, "n_fit": n_fit, "k": k, "mu": mu.tolist(),
        "truth_expected_over_refits": np.round(truth, 4).tolist(),
        "coverage_stacked_folds_x_repeats_t": np.round(cov_stack / n_sims, 3).tolist(),
        "coverage_fold_mean_t_4df": np.round(cov_fold / n_sims, 3).tolist(),
        "mean_width_stacked": np.round(np.mean(w_stack, 0), 4).tolist(),
        "mean_width_fold_mean": np.round(np.mean(w_fold, 0), 4).tolist(),
    }


# =============================================================================
# 5. panels: non-inferiority and fixed-sequence testing
# =============================================================================
def _cv_scores(y, d, panels, n_splits, val, rng) -> np.ndarray:
    """Per-fold mean per-class F1 of each panel (list of channel lists), same folds and fits: (P, F)."""
    folds = _folds(y, n_splits, rng)
    out = np.zeros((len(panels), n_splits))
    for j in range(n_splits):
        te = folds[j]
        tr = np.concatenate([folds[i] for i in range(n_splits) if i != j])
        tr = rng.permutation(tr)[: round(len(tr) * (1 - val))]
        for p, ch in enumerate(panels):
            bhat = _fit(y[tr], d[tr][:, ch])
            pred = d[te][:, ch] @ bhat > 0
            out[p, j] = _f1m(_cm_cells(y[te], pred).sum(0))
    return out


def _expected_f1(mu_panel: np.ndarray, n_fit: int, rng: np.random.Generator, n_draw: int = 200000) -> float:
    """Expected population F1 of the rule fitted on n_fit cells (over refits)."""
    return float(population_f1(fitted_betas(mu_panel, n_fit, n_draw, rng), mu_panel).mean())


def part_panels(n_sims: int, rng: np.random.Generator, N: int = 1000, n_splits: int = 5, val: float = 0.2) -> dict:
    # channels: 0 stain-free (kept), 1 the stain a panel drops (tuned so the loss is ~0.028), 2, 3 minor stains
    mu = np.array([0.6, 0.34, 0.12, 0.05])
    n_fit = round(N * (1 - 1 / n_splits) * (1 - val))
    panels = [[0, 1, 2, 3], [0, 2, 3], [0, 1, 2], [0, 1], [0]]  # all; drop ch1 (the 0.028 panel); nested 3, 2, 1
    true_f1 = [_expected_f1(mu[p], n_fit, rng) for p in panels]
    gap = [true_f1[0] - f for f in true_f1]
    ratios = {"nb_0.3125_validation_split": nb_test_train_ratio(n_splits, val), "nb_0.25_no_validation": 0.25,
              "plain_t": 0.0}
    res = {"old_superiority_not_significant": {r: 0 for r in ratios}, "old_wilcoxon_not_significant": 0,
           "old_minimal_panel_point_rule_accepts": 0}
    ni = {m: {r: {"non-inferior": 0, "inconclusive": 0, "worse": 0} for r in ratios} for m in (0.02, 0.05)}
    seq = {"selected": {}, "familywise_error": 0}
    for _ in range(n_sims):
        y, d = draw(N, mu, rng)
        sc = _cv_scores(y, d, panels, n_splits, val, rng)
        all_, pan = sc[0], sc[1]
        dlt = all_ - pan
        for r, ratio in ratios.items():
            sd = dlt.std(ddof=1)
            tt = dlt.mean() / math.sqrt((1 / n_splits + ratio) * sd**2) if sd > 0 else np.inf * np.sign(dlt.mean())
            res["old_superiority_not_significant"][r] += stats.t.sf(tt, n_splits - 1) >= 0.05
            for m in (0.02, 0.05):
                ni[m][r][noninferiority_test(all_, pan, margin=m, test_train_ratio=ratio)["outcome"]] += 1
        if np.any(dlt != 0):
            res["old_wilcoxon_not_significant"] += stats.wilcoxon(dlt, alternative="greater").pvalue >= 0.05
        else:
            res["old_wilcoxon_not_significant"] += 1
        res["old_minimal_panel_point_rule_accepts"] += dlt.mean() <= 0.02
        # nested panels, largest first: [0,1,2] -> [0,1] -> [0], margin 0.02
        nested = [2, 3, 4]
        ps = [noninferiority_test(all_, sc[i], margin=0.02, n_splits=n_splits, validation_fraction=val)["p_value"]
              for i in nested]
        out = fixed_sequence(ps, alpha=0.05, labels=[len(panels[i]) for i in nested])
        shown = [o["label"] for o in out if o["outcome"] == "rejected"]
        sel = str(min(shown)) if shown else "none"
        seq["selected"][sel] = seq["selected"].get(sel, 0) + 1
        seq["familywise_error"] += any(gap[i] >= 0.02 and o["outcome"] == "rejected" for i, o in zip(nested, out))
    frac = lambda v: round(v / n_sims, 3)
    return {
        "N": N, "n_splits": n_splits, "validation_fraction": val, "n_fit": n_fit, "mu": mu.tolist(),
        "panels": [[int(c) for c in p] for p in panels],
        "true_expected_f1": np.round(true_f1, 4).tolist(), "true_gap_to_all": np.round(gap, 4).tolist(),
        "panel_under_test": "panel 1 (drops channel 1)",
        "old_superiority_reading_not_significantly_below": {r: frac(v) for r, v in res["old_superiority_not_significant"].items()},
        "old_wilcoxon_not_significantly_below": frac(res["old_wilcoxon_not_significant"]),
        "old_minimal_panel_point_estimate_within_0.02": frac(res["old_minimal_panel_point_rule_accepts"]),
        "noninferiority_margin_0.02_truly_inferior": {r: {k: frac(v) for k, v in o.items()} for r, o in ni[0.02].items()},
        "noninferiority_margin_0.05_truly_noninferior": {r: {k: frac(v) for k, v in o.items()} for r, o in ni[0.05].items()},
        "fixed_sequence_nested": {
            "panels_in_order": [len(panels[i]) for i in (2, 3, 4)],
            "true_gaps": [round(gap[i], 4) for i in (2, 3, 4)],
            "margin": 0.02,
            "smallest_panel_shown_noninferior": {k: frac(v) for k, v in sorted(seq["selected"].items())},
            "familywise_error_rate": frac(seq["familywise_error"]),
        },
    }


# =============================================================================
# figure and main
# =============================================================================
def _three_class_task(seed: int, n: int = 60):
    import torch

    r = np.random.default_rng(seed)
    y = r.integers(0, 3, n)
    X = r.normal(size=(n, 2, 4, 4)).astype("float32")
    X[:, 0, :2] += y[:, None, None] * 0.6
    W = torch.tensor([[-1.0, 0.0, 1.0]])

    def model(x):
        return (x[:, 0, :2].mean((1, 2))[:, None] - 0.6) * W * 3 + 0.2 * x[:, 1].mean((1, 2))[:, None] * W

    return X, y, model


def _donor_task(seed: int, n: int = 200, p: float = 0.2):
    r = np.random.default_rng(seed)
    y = (r.random(n) < p).astype(int)
    X = r.normal(0, 0.05, size=(n, 1, 2, 2)).astype("float32")
    X[:, 0] += y[:, None, None]
    return X, y


def _mean_model(x):
    import torch

    s = x[:, 0].mean((1, 2))
    return torch.stack([0.5 - s, s - 0.5], 1)


def part_engine_extras(n_sims: int, rng: np.random.Generator, B: int = 199) -> dict:
    import warnings

    import torch

    import pxpermute.importance as engine
    from pxpermute import channel_importance
    from pxpermute.stats import _rank_shares, bootstrap_importances, percentile_interval

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out: dict = {"n_bootstrap": B}
    # -- median --------------------------------------------------------------------
    n_med = min(n_sims, 300)
    new_out = old_out = cells = 0
    for _i in range(n_med):
        seed = int(rng.integers(2**31))
        X, y, model = _three_class_task(seed)
        res = channel_importance(model, (X, y), n_repeats=7, aggregate="median", n_bootstrap=B, random_state=seed,
                                 progress=False)
        cells += res.importance.size
        new_out += int(np.sum((res.importance < res.ci_low) | (res.importance > res.ci_high)))
        pooled = res.bootstrap_confusion.sum(axis=1)  # the previous engine's counts, pooled over repeats
        reps, _ = bootstrap_importances(res.bootstrap_baseline_confusion, pooled, metric="f1", aggregate="median",
                                        present=res.present_classes, center=res.importance,
                                        baseline_confusion=res.baseline_confusion, confusion=res.confusion)
        lo, hi = percentile_interval(reps, 0.95)
        old_out += int(np.sum((res.importance < lo - 1e-12) | (res.importance > hi + 1e-12)))
    out["median"] = {"n_runs": n_med, "n_estimates": cells, "k": 7, "n_classes": 3,
                     "outside_own_interval_per_repeat_bootstrap": new_out,
                     "outside_own_interval_pooled_plus_shift": old_out}
    # -- sample perturbation: donors ----------------------------------------------------
    n_don = min(n_sims, 200)
    truth = 1 - 0.2**2 - 0.8**2
    rows = {}
    original = engine._Plan.__init__
    for label, donors in (("recipients_x_donors", True), ("recipients_only", False)):
        def init(self, *a, _d=donors, **kw):
            kw["boot_donors"] = kw.get("boot_donors", False) and _d
            original(self, *a, **kw)

        engine._Plan.__init__ = init
        est, se, cover = [], [], 0
        sub = np.random.default_rng([int(rng.integers(2**31)), 7])
        try:
            for _i in range(n_don):
                seed = int(sub.integers(2**31))
                X, y = _donor_task(seed)
                res = channel_importance(_mean_model, (X, y), n_repeats=5, perturbation="sample", metric="accuracy",
                                         n_bootstrap=B, random_state=seed, progress=False)
                est.append(float(res.importance[0]))
                se.append(float(res.bootstrap_se[0]))
                cover += bool(res.ci_low[0] <= truth <= res.ci_high[0])
        finally:
            engine._Plan.__init__ = original
        rows[label] = {"coverage": cover / n_don, "mean_bootstrap_se": float(np.mean(se)),
                       "true_sd": float(np.std(est, ddof=1)), "mean_estimate": float(np.mean(est))}
    out["sample_donors"] = {"n_test_sets": n_don, "n": 200, "class_share": 0.2, "k": 5, "metric": "accuracy",
                            "truth": truth, **rows}
    # -- ties at exactly 0 -------------------------------------------------------------------
    reps = np.column_stack([rng.normal(0.2, 0.02, 999), np.zeros(999), np.zeros(999)])
    old_rank = np.argsort(np.argsort(-np.round(reps, 12), axis=1, kind="stable"), axis=1, kind="stable")
    out["rank_ties"] = {"channels": ["signal", "ignored_a", "ignored_b"],
                        "p_own_rank_column_order": np.mean(old_rank == np.array([0, 1, 2]), axis=0).tolist(),
                        "p_own_rank_ties_shared": _rank_shares(reps).mean(0)[[0, 1, 2], [0, 1, 2]].tolist()}
    return out


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    cov = result["coverage"]
    ax = axes[0]
    labels, perm, boot = [], [], []
    for row in cov["by_n"]:
        for kk in row["by_k"]:
            labels.append(f"n={row['n']}\nk={kk['k']}")
            perm.append(kk["coverage_permutation_t"][0])
            boot.append(kk["coverage_bootstrap"][0])
    x = np.arange(len(labels))
    ax.bar(x - 0.2, perm, 0.4, label="permutation (Monte Carlo) interval")
    ax.bar(x + 0.2, boot, 0.4, label="bootstrap over test cells")
    ax.axhline(0.95, color="k", lw=1, ls="--")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("coverage of the true importance")
    ax.set_title("Strong channel: which interval covers its importance?", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=1, frameon=False)
    ad = result["adaptive"]["rules"]
    ax = axes[1]
    names = list(ad)
    ax.bar(names, [ad[r]["mean_k"] for r in names], color="tab:gray")
    for i, r in enumerate(names):
        ax.text(i, ad[r]["mean_k"] + 1, f"wrong {ad[r]['wrong_order_vs_same_cells_infinite_k']:.3f}", ha="center", fontsize=7)
    ax.set_ylim(0, 118)
    ax.set_ylabel("mean repeats used (cap 100)")
    ax.set_title("Adaptive k: repeats used and wrong order of a close pair", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    pn = result["panels"]
    ax = axes[2]
    cats = ["old:\nnot sig.\nbelow", "old:\npoint est.\n<= 0.02", "new: non-\ninferior,\nmargin 0.02",
            "new: non-\ninferior,\nmargin 0.05"]
    vals = [pn["old_superiority_reading_not_significantly_below"]["nb_0.25_no_validation"],
            pn["old_minimal_panel_point_estimate_within_0.02"],
            pn["noninferiority_margin_0.02_truly_inferior"]["nb_0.3125_validation_split"]["non-inferior"],
            pn["noninferiority_margin_0.05_truly_noninferior"]["nb_0.3125_validation_split"]["non-inferior"]]
    ax.bar(cats, vals, color=["tab:red", "tab:red", "tab:green", "tab:blue"])
    for i, v in enumerate(vals):
        ax.text(i, v + 0.02, f"{v:.3f}", ha="center", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of data sets")
    ax.set_title(f"A panel truly {pn['true_gap_to_all'][1]:.3f} F1 worse", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"Simulation: known linear classifier on synthetic 2-pixel channels, binary classes; "
                 f"{result['n_sims']} test sets per setting, seed {result['seed']}; "
                 "no interval in a single run covers retraining", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-sims", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="100 test sets per setting, fewer sizes (a smoke run)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "uncertainty_simulation.json"))
    ap.add_argument("--figure", default=str(ROOT / "book" / "how_sure_simulation.png"))
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("--figure-only", action="store_true", help="redraw the figure from the result file (--out)")
    ap.add_argument("--no-checks", action="store_true",
                    help="skip bootstrap_check and engine_check (with --update the stored ones are kept)")
    ap.add_argument("--update", action="store_true",
                    help="keep the other parts of the existing result file (--out) and replace only --parts")
    ap.add_argument("--parts", nargs="*", default=["coverage", "noise_model", "adaptive", "adaptive_tol_0.01",
                                                     "cross_validation", "panels", "engine_extras"])
    a = ap.parse_args(argv)
    n_sims = 100 if a.quick else a.n_sims
    if a.figure_only:
        result = json.loads(Path(a.out).read_text())
        figure(result, Path(a.figure))
        return result
    rng = np.random.default_rng([a.seed, 99])
    t0 = time.perf_counter()
    result: dict = {"benchmark": "uncertainty_simulation", "n_sims": n_sims, "seed": a.seed,
                    "note": "No interval of a single importance run covers retraining variability; only part "
                            "'cross_validation' (refits per fold) and 'panels' do."}
    timings = {}
    if not a.no_checks:
        result["bootstrap_check"] = bootstrap_check(rng)
        t = time.perf_counter()
        result["engine_check"] = engine_check(rng)
        timings["engine_check"] = round(time.perf_counter() - t, 1)
    parts = {
        "coverage": lambda r: part_coverage(n_sims, r, ns=(100, 400) if a.quick else (100, 400, 1600)),
        "noise_model": lambda r: part_noise_model(n_sims, r),
        "adaptive": lambda r: part_adaptive(n_sims, r, tie_tol=0.005),
        "adaptive_tol_0.01": lambda r: part_adaptive(n_sims, r, tie_tol=0.01),
        "cross_validation": lambda r: part_cv(n_sims, r),
        "panels": lambda r: part_panels(n_sims, r),
        "engine_extras": lambda r: part_engine_extras(n_sims, r),
    }
    for name in a.parts:
        t = time.perf_counter()
        # every part has its own random stream, so a part gives the same numbers when run alone
        result[name] = parts[name](np.random.default_rng([a.seed, list(parts).index(name)]))
        timings[name] = round(time.perf_counter() - t, 1)
        print(f"[{name}] {timings[name]} s", file=sys.stderr, flush=True)
    result["seconds"] = timings
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(a.out)
    if a.update and out.exists():
        old = json.loads(out.read_text())
        if old.get("n_sims") != n_sims or old.get("seed") != a.seed:
            raise SystemExit(f"--update: {out} has n_sims={old.get('n_sims')}, seed={old.get('seed')}; "
                             f"this run has n_sims={n_sims}, seed={a.seed}")
        seconds = {**old.get("seconds", {}), **timings}
        old.update({k: v for k, v in result.items() if k not in ("seconds", "total_seconds")})
        old["seconds"] = seconds
        old["total_seconds"] = round(sum(v for v in seconds.values()), 1)
        result = old
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_jsonable))
    os.replace(tmp, out)
    if not a.no_figure and all(p in result for p in ("coverage", "adaptive", "panels")):
        figure(result, Path(a.figure))
    print(json.dumps(result, indent=1, default=_jsonable))
    return result


def _jsonable(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


if __name__ == "__main__":
    main()
