"""Error rates of the panel decision on a process whose truth is known.

The decision of :func:`pxpermute.evaluation.compare_panels` and
:func:`pxpermute.evaluation.minimal_panel` is non-inferiority at a margin
(Nadeau-Bengio corrected resampled t over CV folds), with nested panels tested
in a fixed sequence from the largest down.  Here the per-fold losses
``d_j = F1(all channels) - F1(panel)`` are drawn directly with a known mean
(the true loss) and the correlation that overlapping CV training sets create:

    d = delta + e,   e ~ N(0, sigma^2 [(1 - rho) I + rho 1 1']),   rho = r / (1 + r),

with ``r = n_test / n_train`` the Nadeau & Bengio ratio (0.3125 for 5 folds and
a 20 % validation split).  Under this process the corrected t is exact, so the
decision must accept a truly worse panel at most ``alpha`` of the time.  Also
reported: the old readings ("not significantly below" with the corrected t, point
estimate within the tolerance), the old ratio (0.25, the validation split forgotten), a
misspecified process (more correlation than the correction assumes) and the
familywise error of the fixed sequence against testing every panel at alpha.

Run::

    python benchmarks/panel_decision_simulation.py [--n-sims 20000] [--seed 0]

prints JSON and writes ``benchmarks/results/panel_decision_simulation.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from scipy import stats

from pxpermute.evaluation.panels import noninferiority_sequence
from pxpermute.inference import nb_test_train_ratio, noninferiority_test

RESULTS = Path(__file__).resolve().parent / "results" / "panel_decision_simulation.json"


def draw_losses(rng: np.random.Generator, n: int, J: int, delta: float, sigma: float, rho: float) -> np.ndarray:
    """n data sets x J fold losses, equicorrelated (rho) normal with mean delta and SD sigma."""
    common = rng.standard_normal((n, 1)) * math.sqrt(rho)
    own = rng.standard_normal((n, J)) * math.sqrt(1 - rho)
    return delta + sigma * (common + own)


def ni_accept(d: np.ndarray, margin: float, ratio: float, alpha: float) -> np.ndarray:
    """Vectorised non-inferiority decision (upper one-sided bound of mean loss < margin)."""
    J = d.shape[1]
    se = np.sqrt((1.0 / J + ratio) * d.var(axis=1, ddof=1))
    return d.mean(axis=1) + stats.t.ppf(1 - alpha, J - 1) * se < margin


def superiority_not_significant(d: np.ndarray, ratio: float, alpha: float) -> np.ndarray:
    J = d.shape[1]
    t = d.mean(axis=1) / np.sqrt((1.0 / J + ratio) * d.var(axis=1, ddof=1))
    return stats.t.sf(t, J - 1) >= alpha


def mc(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def rate(x: np.ndarray) -> dict:
    p = float(np.mean(x))
    return {"rate": round(p, 4), "mc_se": round(mc(p, x.size), 4)}


def single_panel(rng: np.random.Generator, n: int, alpha: float, margin: float) -> dict:
    out = {}
    for J in (5, 10):
        r_true = nb_test_train_ratio(J, 0.2)
        rho = r_true / (1 + r_true)
        for sigma in (0.01, 0.02):
            for delta, label in ((0.028, "truly_worse_0.028"), (margin, "at_margin"), (0.0, "equal"),
                                 (0.01, "half_margin")):
                d = draw_losses(rng, n, J, delta, sigma, rho)
                out[f"J={J}, sigma={sigma}, {label}"] = {
                    "true_loss": delta, "rho": round(rho, 4), "test_train_ratio": r_true,
                    "accept_noninferiority_correct_ratio": rate(ni_accept(d, margin, r_true, alpha)),
                    "accept_noninferiority_old_ratio_no_validation": rate(
                        ni_accept(d, margin, nb_test_train_ratio(J, 0.0), alpha)),
                    "accept_noninferiority_plain_t": rate(ni_accept(d, margin, 0.0, alpha)),
                    "old_not_significantly_below": rate(superiority_not_significant(d, r_true, alpha)),
                    "old_point_estimate_within_tolerance": rate(d.mean(axis=1) <= margin),
                }
    return out


def misspecified(rng: np.random.Generator, n: int, alpha: float, margin: float) -> dict:
    """More fold-to-fold correlation than the Nadeau-Bengio correction assumes."""
    J, r = 5, nb_test_train_ratio(5, 0.2)
    out = {}
    for rho in (r / (1 + r), 0.4, 0.6):
        d = draw_losses(rng, n, J, margin, 0.01, rho)
        out[f"rho={rho:.3f}"] = {"accept_at_margin": rate(ni_accept(d, margin, r, alpha))}
    return out


def sequence(rng: np.random.Generator, n: int, alpha: float, margin: float, losses: list[float]) -> dict:
    """Nested panels top-3, top-2, top-1, stain-free with the given true losses."""
    J, r = 5, nb_test_train_ratio(5, 0.2)
    rho = r / (1 + r)
    losses = np.array(losses)
    names = ["top-3", "top-2", "top-1", "stain-free"]
    sigma = 0.01
    false_seq = false_each = 0
    chosen: dict[str, int] = {}
    for _ in range(n):
        # a fold effect shared by all panels (same test cells), plus each panel's own correlated noise
        shared = draw_losses(rng, 1, J, 0.0, sigma / 2, rho)[0]
        d = np.stack([draw_losses(rng, 1, J, loss, sigma, rho)[0] + shared for loss in losses])
        ref = 0.9 + rng.normal(0, 0.01, J)
        dec = noninferiority_sequence(ref, {nm: ref - d[i] for i, nm in enumerate(names)}, margin=margin, alpha=alpha,
                                      test_train_ratio=r)
        acc = np.array([o["decision"] == "non-inferior" for o in dec])
        false_seq += bool(np.any(acc & (losses >= margin)))
        each = np.array([o["ni_p"] for o in dec]) < alpha
        false_each += bool(np.any(each & (losses >= margin)))
        smallest = names[int(np.flatnonzero(acc).max())] if acc.any() else "none"
        chosen[smallest] = chosen.get(smallest, 0) + 1
    return {"panels": names, "true_losses": losses.tolist(), "sigma": sigma, "margin": margin, "n_sims": n,
            "familywise_error_fixed_sequence": rate(np.array([1] * false_seq + [0] * (n - false_seq))),
            "familywise_error_each_at_alpha": rate(np.array([1] * false_each + [0] * (n - false_each))),
            "smallest_panel_shown_noninferior": {k: round(v / n, 4) for k, v in sorted(chosen.items())}}


def check_vectorised(rng: np.random.Generator, alpha: float, margin: float) -> int:
    """The vectorised decision equals the package's noninferiority_test on 300 draws; returns mismatches."""
    r = nb_test_train_ratio(5, 0.2)
    d = draw_losses(rng, 300, 5, margin, 0.015, r / (1 + r))
    fast = ni_accept(d, margin, r, alpha)
    slow = np.array([noninferiority_test(0.9 + di, np.full(5, 0.9), margin=margin, test_train_ratio=r,
                                         alpha=alpha)["outcome"] == "non-inferior" for di in d])
    return int(np.sum(fast != slow))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-sims", type=int, default=20000)
    ap.add_argument("--n-sequence", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    rng = np.random.default_rng(a.seed)
    res = {
        "process": "fold losses d_j = delta + e_j, e equicorrelated normal, rho = r / (1 + r), r = n_test / n_train",
        "alpha": a.alpha, "margin": a.margin, "n_sims": a.n_sims, "seed": a.seed,
        "vectorised_vs_package_mismatches": check_vectorised(rng, a.alpha, a.margin),
        "single_panel": single_panel(rng, a.n_sims, a.alpha, a.margin),
        "misspecified_correlation": misspecified(rng, a.n_sims, a.alpha, a.margin),
        "fixed_sequence": sequence(rng, a.n_sequence, a.alpha, a.margin, [0.0, 0.005, 0.028, 0.2]),
        # the worst case for multiplicity: three nested panels exactly at the margin
        "fixed_sequence_three_at_margin": sequence(rng, a.n_sequence, a.alpha, a.margin, [0.0, 0.02, 0.02, 0.02]),
    }
    res["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
