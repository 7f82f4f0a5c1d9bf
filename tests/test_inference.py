"""Invariants of pxpermute.inference: coverage on small known processes, hand computations, decisions."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pxpermute import inference as inf


# -----------------------------------------------------------------------------
# confidence sequences
# -----------------------------------------------------------------------------
def _time_uniform_miss(lo: np.ndarray, hi: np.ndarray, mu: float) -> float:
    return float(np.mean(np.any((lo > mu) | (hi < mu), axis=0)))


def test_t_cs_time_uniform_coverage_gaussian():
    rng = np.random.default_rng(0)
    x = rng.normal(0.2, 0.03, (150, 400))  # 400 sequences of 150 observations
    lo, hi = inf.confidence_sequence(x, alpha=0.1)
    assert lo.shape == hi.shape == x.shape
    assert _time_uniform_miss(lo, hi, 0.2) <= 0.15  # guarantee 0.10, wide band for Monte Carlo error
    assert np.median(hi[-1] - lo[-1]) < 0.02  # and informative: about 1.7x a fixed-n 90 % t-interval (0.008)


def test_t_cs_survives_optional_stopping_where_a_fixed_interval_fails():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, (200, 300))
    lo, hi = inf.confidence_sequence(x, alpha=0.1)
    t = np.arange(1, 201)[:, None]
    m = np.cumsum(x, 0) / t
    s = np.sqrt(np.maximum(np.cumsum(x * x, 0) / t - m**2, 0) * t / np.maximum(t - 1, 1))
    half = stats.t.ppf(0.95, np.maximum(t - 1, 1)) * s / np.sqrt(t)
    naive = _time_uniform_miss((m - half)[2:], (m + half)[2:], 0.0)  # a 90 % t-interval looked at after every repeat
    assert naive > 0.3  # peeking breaks the fixed interval ...
    assert _time_uniform_miss(lo, hi, 0.0) <= 0.15  # ... but not the confidence sequence


def test_t_cs_on_skewed_discrete_drops():
    # per-repeat drops of a nearly unused channel: mostly 0, sometimes one cell's worth (1/100)
    rng = np.random.default_rng(2)
    x = rng.binomial(3, 0.2, (100, 400)) / 100.0
    lo, hi = inf.confidence_sequence(x, alpha=0.05, min_scale=0.01)
    assert _time_uniform_miss(lo, hi, 0.006) <= 0.10
    assert np.median(hi[-1] - lo[-1]) < 0.012


def test_bernstein_cs_coverage_and_bounds():
    rng = np.random.default_rng(3)
    x = np.where(rng.random((200, 300)) < 0.3, 1.0, -0.5)  # bounded in [-1, 1], mean -0.05
    lo, hi = inf.confidence_sequence(x, alpha=0.1, method="bernstein", bounds=(-1, 1))
    assert _time_uniform_miss(lo, hi, -0.05) <= 0.12
    assert np.median(hi[-1] - lo[-1]) < 0.4
    assert np.all(lo >= -1) and np.all(hi <= 1)
    with pytest.raises(ValueError, match="outside bounds"):
        inf.confidence_sequence(np.array([0.5, 1.5]), method="bernstein", bounds=(-1, 1))


def test_cs_shapes_widths_and_errors():
    rng = np.random.default_rng(4)
    lo, hi = inf.confidence_sequence(rng.normal(0, 1, 300))
    assert np.isinf(lo[0]) and np.isinf(hi[1])  # t-CS unbounded before 3 observations
    assert hi[299] - lo[299] < hi[29] - lo[29] < np.inf
    assert np.all(np.diff(hi[2:]) <= 0) and np.all(np.diff(lo[2:]) >= 0)  # running intersection
    with pytest.raises(ValueError, match="NaN"):
        inf.confidence_sequence(np.array([0.1, np.nan, 0.2]))
    with pytest.raises(ValueError, match="method"):
        inf.confidence_sequence(np.ones(3), method="normal")
    with pytest.raises(ValueError, match="alpha"):
        inf.confidence_sequence(np.ones(3), alpha=1.5)


def test_constant_zero_sequence_is_a_point():
    lo, hi = inf.confidence_sequence(np.zeros(5))
    assert lo[-1] == hi[-1] == 0.0
    lo, hi = inf.confidence_sequence(np.zeros(20), min_scale=0.01)
    assert lo[-1] < 0 < hi[-1]


# -----------------------------------------------------------------------------
# the adaptive-k stopping rule
# -----------------------------------------------------------------------------
def test_sequential_ranking_resolves_ties_and_waits():
    rng = np.random.default_rng(5)
    R = 30
    imp = np.column_stack([rng.normal(0.4, 0.01, R), rng.normal(0.1, 0.01, R), np.zeros(R), np.zeros(R)])
    d = inf.sequential_ranking(imp)
    assert d.settled and d.order == [0, 1, 2, 3] and d.tie_groups == [[2, 3]]
    assert [p["status"] for p in d.pairs] == ["resolved", "resolved", "tie"]
    assert d.alpha_per_pair == pytest.approx(0.05 / 6)
    # fewer repeats than min_repeats: never settled
    assert not inf.sequential_ranking(imp[:3], min_repeats=5).settled
    # two noisy channels with equal means and tol = 0: stays open
    close = np.column_stack([rng.normal(0.2, 0.02, 60), rng.normal(0.2, 0.02, 60)])
    d = inf.sequential_ranking(close, tol=0.0)
    assert not d.settled and d.pairs[0]["status"] == "open"


def test_sequential_ranking_wrong_order_is_rare_under_optional_stopping():
    # a close pair (true gap 0.004, per-repeat SD 0.01): stopping as soon as the rule allows must rarely misorder it
    rng = np.random.default_rng(6)
    wrong = 0
    for _ in range(200):
        imp = np.column_stack([rng.normal(0.304, 0.01, 100), rng.normal(0.300, 0.01, 100), rng.normal(0.5, 0.01, 100)])
        for t in range(3, 101):
            d = inf.sequential_ranking(imp[:t], tol=0.0)
            if d.settled:
                break
        wrong += d.order.index(0) > d.order.index(1) and d.settled
    assert wrong / 200 <= 0.05


def test_checked_pairs_fix_the_top_units():
    order = [3, 1, 4, 0, 2]
    assert inf.checked_pairs(order) == [(3, 1), (1, 4), (4, 0), (0, 2)]
    # top 2: their order, then the 2nd against everyone below (transitivity puts the 1st above them too)
    assert inf.checked_pairs(order, top=2) == [(3, 1), (1, 4), (1, 0), (1, 2)]
    # top >= units - 1 is the whole ranking
    assert inf.checked_pairs(order, top=4) == inf.checked_pairs(order) == inf.checked_pairs(order, top=9)


@pytest.mark.parametrize("rule", ["cs", "looks"])
def test_top_m_settles_without_waiting_for_the_noisy_tail(rule):
    from pxpermute.adaptive import group_sequential_ranking

    rng = np.random.default_rng(11)
    R = 12
    # one clear leader; three near-zero channels whose means differ by less than the noise separates
    imp = np.column_stack([rng.normal(0.5, 0.01, R), rng.normal(0.010, 0.011, R), rng.normal(0.008, 0.011, R),
                           rng.normal(0.012, 0.011, R)])

    def decide(top):
        if rule == "cs":
            return inf.sequential_ranking(imp, top=top)
        return group_sequential_ranking(imp, [3, 5, 8, 12, 18, 100], top=top)

    whole, top1 = decide(None), decide(1)
    assert not whole.settled and "adjacent pair(s) open" in whole.reason
    assert top1.settled and top1.order[0] == 0 and top1.reason == "settled (top 1)"
    assert [(p["a"], p["b"]) for p in top1.pairs] == [(0, b) for b in top1.order[1:]]
    assert all(p["status"] == "resolved" for p in top1.pairs)
    with pytest.raises(ValueError, match="top"):
        decide(0)


def test_top_m_wrong_top_set_is_rare_under_optional_stopping():
    # the 2nd and 3rd channel differ by 0.004 (SD 0.01 per repeat), the tail is noise: asking for the top 2 and
    # stopping at the first look that allows it must put a wrong channel in the top 2 at most alpha of the time
    from pxpermute.adaptive import AdaptiveK, ranking_settled

    rng = np.random.default_rng(12)
    rule = AdaptiveK(top=2, tol=0.0)
    looks = rule.checkpoints(100)
    wrong = stopped = 0
    for _ in range(200):
        imp = np.column_stack([rng.normal(m, 0.01, 100) for m in (0.5, 0.304, 0.300, 0.01, 0.011, 0.009)])
        for t in looks:
            hist: list = []
            settled, _ = ranking_settled(imp[:t], rule=rule, history=hist, cap=100)
            if settled:
                stopped += t < 100
                wrong += set(hist[-1].order[:2]) != {0, 1}
                break
    assert stopped > 0  # the rule does stop early in some runs
    assert wrong / 200 <= 0.05


def test_sequential_ranking_input_errors():
    with pytest.raises(ValueError, match="repeats, units"):
        inf.sequential_ranking(np.ones(5))
    with pytest.raises(ValueError, match="tol"):
        inf.sequential_ranking(np.ones((5, 2)), tol=-1)
    with pytest.raises(ValueError, match="min_repeats"):
        inf.sequential_ranking(np.ones((5, 2)), min_repeats=1)


# -----------------------------------------------------------------------------
# rankings from bootstrap replicates
# -----------------------------------------------------------------------------
def test_pairwise_and_top_m_probabilities():
    rng = np.random.default_rng(7)
    reps = np.column_stack([rng.normal(1, 0.1, 400), rng.normal(0.9, 0.1, 400), np.zeros(400), np.zeros(400)])
    P = inf.pairwise_probabilities(reps)
    off = ~np.eye(4, dtype=bool)
    assert np.allclose((P + P.T)[off], 1.0)
    assert P[2, 3] == 0.5  # two channels at exactly 0: no order from column order
    assert 0.7 < P[0, 1] < 0.95
    top = inf.top_m_probabilities(reps, 2)
    assert top.sum() == pytest.approx(2.0)
    assert top[2] == top[3] == 0.0
    assert inf.top_m_probabilities(np.zeros((3, 4)), 1).tolist() == [0.25] * 4
    with pytest.raises(ValueError, match="m must be"):
        inf.top_m_probabilities(reps, 5)


def test_rank_intervals_cover_ties_and_pin_clear_orders():
    rng = np.random.default_rng(8)
    reps = np.column_stack([rng.normal(1, 0.02, 500), rng.normal(0.5, 0.02, 500), np.zeros(500), np.zeros(500)])
    best, worst = inf.rank_intervals(reps)
    assert best.tolist() == [1, 2, 3, 3] and worst.tolist() == [1, 2, 4, 4]
    assert np.all(best <= worst)


def test_rank_intervals_simultaneous_coverage():
    # three units, true ranks 1, 2, 3 with moderate overlap: all ranks covered at once in >= ~95 % of data sets
    rng = np.random.default_rng(9)
    mu = np.array([1.0, 0.9, 0.8])
    hits = 0
    for _ in range(100):
        point = mu + rng.normal(0, 0.05, 3)
        reps = point + rng.normal(0, 0.05, (300, 3))
        best, worst = inf.rank_intervals(reps, point)
        hits += bool(np.all((best <= [1, 2, 3]) & ([1, 2, 3] <= worst)))
    assert hits >= 85


# -----------------------------------------------------------------------------
# median interval, BH, fold means
# -----------------------------------------------------------------------------
def test_median_interval_coverage_on_skewed_data():
    rng = np.random.default_rng(10)
    x = rng.exponential(1.0, (30, 2000))
    med, lo, hi = inf.median_interval(x, 0.95)
    cover = np.mean((lo <= np.log(2)) & (np.log(2) <= hi))
    assert cover >= 0.93
    assert np.all(lo <= med) and np.all(med <= hi)
    _, lo5, hi5 = inf.median_interval(np.arange(5.0), 0.95)
    assert np.isnan(lo5) and np.isnan(hi5)  # n = 5 cannot give a 95 % interval


def test_bh_matches_hand_computation():
    p = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.5])
    # (m / rank) * p = 0.06 for the first five, 0.5 for the last; then the running minimum from the top
    assert np.allclose(inf.bh_adjust(p), [0.06, 0.06, 0.06, 0.06, 0.06, 0.5])
    q = inf.bh_adjust([[0.04, np.nan], [0.001, 0.2]])
    assert np.isnan(q[0, 1]) and np.allclose(q[[0, 1, 1], [0, 0, 1]], [0.06, 0.003, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inf.bh_adjust([0.5, 1.2])


def test_fold_mean_interval_uses_fold_means():
    rng = np.random.default_rng(11)
    per_repeat = rng.normal(0.3, 0.05, (5, 20, 3))
    m, lo, hi = inf.fold_mean_interval(per_repeat)
    fm = per_repeat.mean(1)
    assert np.allclose(m, fm.mean(0))
    half = stats.t.ppf(0.975, 4) * fm.std(0, ddof=1) / np.sqrt(5)
    assert np.allclose(hi - m, half)
    with pytest.raises(ValueError, match="at least 2 folds"):
        inf.fold_mean_interval(np.ones((1, 3)))


# -----------------------------------------------------------------------------
# panels
# -----------------------------------------------------------------------------
def test_nb_ratio_counts_the_validation_split():
    assert inf.nb_test_train_ratio(5) == 0.3125
    assert inf.nb_test_train_ratio(5, 0.0) == 0.25
    assert inf.nb_test_train_ratio(10, 0.2) == pytest.approx(0.1 / (0.9 * 0.8))
    with pytest.raises(ValueError):
        inf.nb_test_train_ratio(1)


def test_noninferiority_outcomes():
    ref = np.array([0.90, 0.91, 0.92, 0.90, 0.91])
    close = ref - np.array([0.004, 0.006, 0.002, 0.005, 0.003])
    far = ref - np.array([0.10, 0.11, 0.09, 0.10, 0.12])
    noisy = ref - np.array([0.0, 0.06, -0.03, 0.05, 0.01])
    assert inf.noninferiority_test(ref, close, margin=0.02)["outcome"] == "non-inferior"
    assert inf.noninferiority_test(ref, far, margin=0.02)["outcome"] == "worse"
    out = inf.noninferiority_test(ref, noisy, margin=0.02)
    assert out["outcome"] == "inconclusive" and out["test_train_ratio"] == 0.3125
    # the correction widens the bound: the plain t (ratio 0) is more often "non-inferior"
    assert inf.noninferiority_test(ref, noisy, margin=0.02, test_train_ratio=0.0)["upper"] < out["upper"]
    with pytest.raises(ValueError, match="margin"):
        inf.noninferiority_test(ref, close, margin=0)
    with pytest.raises(ValueError, match="same 1-D shape"):
        inf.noninferiority_test(ref, close[:4], margin=0.02)


def test_noninferiority_error_rate_at_the_margin():
    # true loss exactly at the margin: "non-inferior" must come out in at most ~alpha of data sets
    rng = np.random.default_rng(12)
    hits = 0
    for _ in range(400):
        d = 0.02 + rng.normal(0, 0.01, 5)
        hits += inf.noninferiority_test(np.ones(5), 1 - d, margin=0.02, test_train_ratio=0.0)["outcome"] == "non-inferior"
    assert hits / 400 <= 0.09


def test_fixed_sequence_stops_at_first_failure():
    out = inf.fixed_sequence([0.001, 0.01, 0.30, 0.0001, 0.002], labels=["k=5", "k=4", "k=3", "k=2", "k=1"])
    assert [o["outcome"] for o in out] == ["rejected", "rejected", "not rejected", "not tested", "not tested"]
    assert out[0]["label"] == "k=5"
    assert [o["outcome"] for o in inf.fixed_sequence([0.2, 0.01])] == ["not rejected", "not tested"]


# -----------------------------------------------------------------------------
# layering
# -----------------------------------------------------------------------------
def test_inference_imports_only_numpy_scipy_and_stdlib():
    src = Path(inf.__file__).read_text()
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods.add("." if node.level else node.module.split(".")[0])
    assert mods <= {"__future__", "math", "collections", "dataclasses", "numbers", "typing", "numpy", "scipy"}, mods
