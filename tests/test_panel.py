"""Panel design: panel comparison, minimal panel, multi-stage design, k ablation, leave-one-channel-out.

All trainings go through ``pxpermute.training.cross_validate`` on a tiny planted problem:
4 classes = 2 factors x 2 levels; stain ``A`` shows a compact bright square iff factor a = 1,
stain ``B`` iff factor b = 1, so both are needed (and together sufficient); ``BF`` (stain-free)
and ``Noise`` show a square in a random half of the cells, ``Empty`` is background.
A small, fast-converging network (grouped 3x3 conv, global max pool, batch norm, linear) keeps the
file quick; the package code is the same for ResNet18.
"""
from __future__ import annotations

from functools import partial

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from result_protocol import check_result_protocol
from scipy import stats
from torch import nn

from pxpermute import IFCDataset, ImportanceResult, channel_importance
from pxpermute.datasets.base import GroundTruth
from pxpermute.panel import (
    KAblation,
    MinimalPanel,
    MultiStageResult,
    PanelComparison,
    compare_panels,
    cv_importance,
    first_stable_k,
    k_ablation,
    leave_one_channel_out,
    minimal_panel,
    multistage_design,
    paired_tests,
    side_by_side,
)


def test_panel_module_is_an_alias_of_the_evaluation_package():
    import pxpermute.evaluation as ev
    import pxpermute.panel as panel

    for name in panel.__all__:
        if name != "TESTS":
            assert getattr(panel, name) is getattr(ev, name), name


class TinyNet(nn.Module):
    """Per-channel 3x3 filters, global max pooling, batch norm, linear head."""

    def __init__(self, n_channels: int, n_classes: int, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_channels, n_channels * width, 3, groups=n_channels)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.bn = nn.BatchNorm1d(n_channels * width)
        self.fc = nn.Linear(n_channels * width, n_classes)

    def forward(self, x):
        return self.fc(self.bn(self.pool(self.conv(x)).flatten(1)))


FAST = dict(model=TinyNet, batch_size=16, lr=3e-2, max_epochs=8)


def planted(n: int = 240, size: int = 10, n_noise: int = 1, seed: int = 0) -> IFCDataset:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    rng.shuffle(y)
    a, b = y % 2, y // 2
    names = ["BF", "A", "B"] + (["Noise"] if n_noise == 1 else [f"N{i}" for i in range(1, n_noise + 1)]) + ["Empty"]
    x = rng.normal(0, 0.1, (n, len(names), size, size)).astype(np.float32)

    def stain(img, compact):
        # the same 16 bright pixels: a compact 4x4 square, or scattered (same intensity histogram)
        if compact:
            r, c = rng.integers(0, size - 4, 2)
            img[r : r + 4, c : c + 4] += 1.0
        else:
            img.reshape(-1)[rng.choice(size * size, 16, replace=False)] += 1.0

    for i in range(n):
        stain(x[i, 0], rng.integers(0, 2))
        stain(x[i, 1], a[i])
        stain(x[i, 2], b[i])
        for j in range(n_noise):
            stain(x[i, 3 + j], rng.integers(0, 2))
    rel = [0.0, 0.5, 0.5] + [0.0] * (n_noise + 1)
    roles = ["noise", "shape", "shape"] + ["noise"] * n_noise + ["empty"]
    return IFCDataset(x, y, channel_names=names, class_names=["none", "a", "b", "ab"],
                      stain_free=[True] + [False] * (len(names) - 1), ground_truth=GroundTruth(rel, roles),
                      name="planted")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny networks: one thread avoids oversubscription when the 2 cores are busy
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ds():
    return planted()


@pytest.fixture(scope="module")
def comparison(ds):
    return compare_panels(ds, ["A", "B", "Noise"], k=(1, 2), n_splits=2, progress=False, **FAST)


# ---------------------------------------------------------------------------
# 1. panel comparison
# ---------------------------------------------------------------------------
def test_compare_panels_contract_and_planted_order(comparison, ds):
    cmp = comparison
    # non-inferiority at the margin and fixed-sequence testing of the top-k panels (largest k first)
    assert {"ni_upper", "ni_p", "ni_outcome", "fixed_sequence"} <= set(cmp.tests.columns)
    assert set(cmp.tests["ni_outcome"]) <= {"non-inferior", "worse", "inconclusive"}
    seq = cmp.tests[cmp.tests["kind"] == "top-k"].sort_values("k", ascending=False)["fixed_sequence"].tolist()
    assert seq and all(s != "not tested" for s in seq[: next((i + 1 for i, s in enumerate(seq) if s != "non-inferior"),
                                                           len(seq))])
    assert isinstance(cmp, PanelComparison)
    assert cmp.panel_table.panel.tolist() == ["stain-free", "stain-free + top-1", "stain-free + top-2", "all channels"]
    assert cmp.panel_table.n_channels.tolist() == [1, 2, 3, 5]
    assert len(cmp.scores) == 4 * 2 and set(cmp.scores.fold) == {0, 1}
    # the same folds for every panel (paired scores)
    folds = [cv.test_indices for cv in cmp.cv_results.values()]
    for other in folds[1:]:
        for f0, f1 in zip(folds[0], other):
            np.testing.assert_array_equal(f0, f1)
    assert cmp.cv_results["stain-free + top-2"].channels == ["BF", "A", "B"]
    # summary = mean / t-CI over the per-fold scores
    for row in cmp.panel_table.itertuples():
        v = cmp.scores.loc[cmp.scores.panel == row.panel, "f1_macro"].to_numpy()
        assert row.f1_macro_mean == pytest.approx(v.mean())
        half = stats.t.ppf(0.975, 1) * v.std(ddof=1) / np.sqrt(2)
        assert row.f1_macro_ci_low == pytest.approx(v.mean() - half)
        assert row.f1_macro_ci_low <= row.f1_macro_mean <= row.f1_macro_ci_high
    # planted truth: A and B together carry all the information, BF alone none
    m = cmp.panel_table.set_index("panel")["f1_macro_mean"]
    assert m["all channels"] > 0.9
    assert m["stain-free + top-2"] > 0.9
    assert m["stain-free"] < 0.5 and m["stain-free + top-1"] < m["stain-free + top-2"] - 0.3
    # tests: one row per smaller panel, in the fixed sequence's order (largest top-k first, stain-free last)
    t = cmp.tests.set_index("panel")
    assert list(t.index) == ["stain-free + top-2", "stain-free + top-1", "stain-free"]
    ref = cmp.cv_results["all channels"].f1_macro
    # Nadeau-Bengio ratio from the actual split sizes: 240 cells, 2 folds -> 120 test; 120 - ceil(0.2 * 120) = 96
    # fitted (the validation split is not training data): 1.25, not the 1.0 of test / (train + validation)
    assert cmp.info["test_train_ratio"] == pytest.approx(120 / 96)
    for name, row in t.iterrows():
        other = cmp.cv_results[name].f1_macro
        d = ref - other
        assert row.mean_diff == pytest.approx(np.mean(d))
        tc = d.mean() / np.sqrt((1 / 2 + 1.25) * d.var(ddof=1))
        assert row.p_corrected_ttest == pytest.approx(stats.t.sf(tc, 1))
        assert row.ni_upper == pytest.approx(d.mean() + stats.t.ppf(0.95, 1) * np.sqrt((1 / 2 + 1.25) * d.var(ddof=1)))
    # "significantly below": the chosen test (corrected t by default), Holm-adjusted over the three panels
    p = t["p_corrected_ttest"].to_numpy()
    order = np.argsort(p)
    holm = np.maximum.accumulate(np.minimum(1, (3 - np.arange(3)) * p[order]))
    np.testing.assert_allclose(t["p_holm"].to_numpy()[order], holm)
    assert (t["significant"] == (t["p_holm"] < 0.05)).all()
    assert not t.loc["stain-free + top-2", "significant"]
    # the decision: fixed sequence over non-inferiority p-values, nothing tested after the first failure
    seq = t["fixed_sequence"].tolist()
    first_fail = next((i for i, s in enumerate(seq) if s != "non-inferior"), len(seq))
    assert all(s == "non-inferior" for s in seq[:first_fail])
    assert all(s == "not tested" for s in seq[first_fail + 1:])
    assert t.loc["stain-free", "fixed_sequence"] != "non-inferior"  # 0.2 vs 1.0 F1 is never accepted
    text = cmp.statement()
    assert "familywise" in text and "fixed-sequence" in text
    assert "stain-free + top-2" in text.splitlines()[0]
    assert cmp.info["n_trainings"] == 8 and cmp.info["ranked_stains"] == ["A", "B", "Noise"]


def test_compare_panels_accepts_importance_result_and_validates(ds, comparison):
    # an ImportanceResult as ranking: stain-free channels in it are ignored
    res = ImportanceResult(np.array([[0.9, 0.5, 0.4, 0.1, 0.0]]), channel_names=ds.channel_names, info={"method": "toy"})
    with pytest.raises(ValueError, match="exceeds"):
        compare_panels(ds, res, k=(5,), n_splits=2, progress=False, **FAST)
    with pytest.raises(ValueError, match="unknown channel"):
        compare_panels(ds, ["A", "CD99"], n_splits=2, progress=False, **FAST)
    with pytest.raises(ValueError, match="no stain"):
        compare_panels(ds, ["BF"], k=1, n_splits=2, progress=False, **FAST)
    with pytest.raises(TypeError, match="ranking must be"):
        compare_panels(ds, "A", k=1, n_splits=2, progress=False, **FAST)
    with pytest.raises(ValueError, match="test must be"):
        compare_panels(ds, res, k=1, test="anova", n_splits=2, progress=False, **FAST)
    bad = ImportanceResult(np.array([[0.9, 0.5]]), channel_names=["A", "X"])
    with pytest.raises(ValueError, match="does not have"):
        compare_panels(ds, bad, k=1, n_splits=2, progress=False, **FAST)


def test_paired_tests_match_scipy_and_document_small_sample_limits():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.8, 0.9, 5)
    b = a - rng.uniform(0.0, 0.05, 5)
    out = paired_tests(a, b)
    assert out["mean_diff"] == pytest.approx(np.mean(a - b))
    assert out["p_ttest"] == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)
    assert out["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a - b, alternative="greater").pvalue)
    # Nadeau-Bengio: variance inflated by (1/n + n_test/n_train) / (1/n); with the 20 % validation split the
    # model is fitted on 0.8 * 0.8 of the cells: n_test/n_train = 0.2 / 0.64 = 0.3125 (not 0.25)
    d = a - b
    assert out["test_train_ratio"] == pytest.approx(0.3125)
    tc = d.mean() / np.sqrt((1 / 5 + 0.3125) * d.var(ddof=1))
    assert out["p_corrected_ttest"] == pytest.approx(stats.t.sf(tc, 4))
    old = d.mean() / np.sqrt((1 / 5 + 0.25) * d.var(ddof=1))  # the former ratio ignored the validation split
    assert out["p_corrected_ttest"] > stats.t.sf(old, 4) * 1.01
    assert paired_tests(a, b, validation_fraction=0.0)["p_corrected_ttest"] == pytest.approx(stats.t.sf(old, 4))
    assert paired_tests(a, b, test_train_ratio=0.3125)["p_corrected_ttest"] == pytest.approx(out["p_corrected_ttest"])
    assert out["p_corrected_ttest"] > out["p_ttest"]
    # with 5 folds all positive, the exact one-sided Wilcoxon cannot go below 1/32
    assert out["p_wilcoxon"] == pytest.approx(1 / 32)
    two = paired_tests(a, b, alternative="two-sided")
    assert two["p_ttest"] == pytest.approx(2 * out["p_ttest"])
    assert paired_tests(a, a)["p_ttest"] == 1.0 and paired_tests(a, a)["p_wilcoxon"] == 1.0
    assert paired_tests(a + 0.1, a)["p_ttest"] == 0.0  # constant positive difference
    with pytest.raises(ValueError, match="same 1-D shape"):
        paired_tests(a, b[:3])


# ---------------------------------------------------------------------------
# 2. minimal panel
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minimal(ds):
    return minimal_panel(ds, ["A", "B", "Noise", "Empty"], margin=0.1, greedy=True, n_splits=4, progress=False,
                         **FAST)


def test_minimal_panel_ranking_and_greedy_find_the_planted_stains(minimal):
    mp = minimal
    assert isinstance(mp, MinimalPanel)
    assert mp.info["decision"] == "non-inferior"
    assert mp.stains == ["A", "B"] and mp.panel == ["BF", "A", "B"]
    rk = mp.searches["ranking"]
    # fixed sequence from the largest panel down (all stains but one), stopping at the first failure
    assert rk.found and rk.path.n_stains.tolist() == [3, 2, 1]
    assert rk.path.non_inferior.tolist() == [True, True, False]
    assert (rk.path.non_inferior == (rk.path.ni_p < 0.05)).all()
    assert (rk.path.non_inferior == (rk.path.ni_upper < 0.1)).all()
    assert rk.n_trainings == 4 * 4  # all channels + top-3 + top-2 + top-1, 4 folds each
    assert mp.threshold == pytest.approx(mp.reference_score - 0.1) and mp.margin == 0.1
    assert mp.info["test_train_ratio"] == pytest.approx(60 / (180 - 36))
    # greedy forward selection picks the planted stains before noise / empty
    gr = mp.searches["greedy"]
    assert sorted(gr.stains) == ["A", "B"] and gr.found
    step1 = gr.path[gr.path.step == 1]
    assert set(step1.added) == {"A", "B", "Noise", "Empty"}
    assert step1.loc[step1.chosen, "added"].item() in ("A", "B")
    assert gr.n_trainings > rk.n_trainings
    # trainings actually run: each distinct panel once, shared ones not twice
    assert mp.n_trainings == 4 * len(mp.cv_results)
    assert mp.n_trainings < rk.n_trainings + gr.n_trainings
    assert gr.path.cached.any()
    tidy = mp.path
    assert set(tidy.strategy) == {"ranking", "greedy"}
    assert "exploratory" in mp.summary() and "fixed sequence" in mp.summary()


def test_minimal_panel_validation(ds):
    with pytest.raises(ValueError, match="margin"):
        minimal_panel(ds, ["A"], margin=-0.1, n_splits=2, progress=False, **FAST)
    with pytest.raises(ValueError, match="margin"), pytest.warns(FutureWarning, match="margin"):
        minimal_panel(ds, ["A"], tolerance=0.0, n_splits=2, progress=False, **FAST)
    with pytest.raises(ValueError, match="n_splits"):
        minimal_panel(ds, ["A"], n_splits=1, progress=False, **FAST)
    with pytest.raises(TypeError, match="IFCDataset"):
        minimal_panel(np.zeros((4, 2, 8, 8)), ["A"], progress=False)


# ---------------------------------------------------------------------------
# 5. leave-one-channel-out
# ---------------------------------------------------------------------------
def test_leave_one_channel_out_ranks_planted_stains_first_and_records_cost(ds, comparison):
    ref = comparison.cv_results["all channels"]
    loco = leave_one_channel_out(ds, n_splits=2, reference=ref, progress=False, **FAST)
    assert isinstance(loco, ImportanceResult)
    assert loco.channel_names == ds.channel_names and loco.importances.shape == (2, 5)
    assert set(loco.ranked_channels[:2]) == {"A", "B"}
    for ch in ("BF", "Noise", "Empty"):
        assert loco.importance[ds.channel_names.index(ch)] < 0.15
    assert loco.info["method"] == "leave-one-channel-out"
    assert loco.info["n_trainings"] == 5 * 2  # the all-channel reference was reused
    assert loco.info["runtime_s"] > 0
    # per-fold importance is the paired F1-macro drop; per-class drops average to it (all classes present)
    np.testing.assert_allclose(loco.drops.mean(axis=-1), loco.importances)
    # side by side with PXPermute on one fold's model
    net = ref.models[0]
    px = channel_importance(net, ds.subset(ref.test_indices[0]), n_repeats=3, random_state=0, progress=False)
    table = side_by_side({"PXPermute": px, "LOCO": loco})
    assert set(table.method) == {"PXPermute", "LOCO"} and len(table) == 10
    cost = table.groupby("method")["n_trainings"].first()
    assert cost["LOCO"] == 10 and cost["PXPermute"] == 0
    with pytest.raises(ValueError, match="reference"):
        leave_one_channel_out(ds, n_splits=3, reference=ref, progress=False, **FAST)
    # random_state=None: one seed is drawn for all subsets (same folds), and recorded
    one = leave_one_channel_out(ds, channels=["A"], random_state=None, n_splits=2, progress=False, **FAST)
    assert isinstance(one.info["random_state"], int) and one.info["n_trainings"] == 4
    assert one.channel_names == ["A"] and one.importance[0] > 0.2
    with pytest.raises(ValueError, match="leaves no channel"):
        leave_one_channel_out(ds, groups={"all": ds.channel_names}, n_splits=2, progress=False, **FAST)


def test_loco_folds_and_runtime_vs_loco_use_one_implementation(ds, comparison, monkeypatch):
    from pxpermute.evaluation import loco as loco_module
    from pxpermute.evaluation import runtime_vs_loco

    ref = comparison.cv_results["all channels"]
    # one fold of the split: the reference is cut to that fold, and only the C leave-outs of it are trained
    one = leave_one_channel_out(ds, n_splits=2, reference=ref, folds=[1], channels=["A", "Empty"], progress=False,
                                **FAST)
    assert one.importances.shape == (1, 2) and one.info["folds"] == [1] and one.info["n_trainings"] == 2
    full = leave_one_channel_out(ds, n_splits=2, reference=ref, channels=["A", "Empty"], progress=False, **FAST)
    np.testing.assert_array_equal(one.importances[0], full.importances[1])  # same fold, same seed: same trainings
    with pytest.raises(ValueError, match="folds"):
        leave_one_channel_out(ds, n_splits=2, reference=ref, folds=[2], progress=False, **FAST)

    # the runtime comparison measures LOCO through leave_one_channel_out itself
    calls = []
    original = loco_module.leave_one_channel_out

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(loco_module, "leave_one_channel_out", spy)
    small = planted(n=80, seed=2).select_channels([0, 1, 2])
    r = runtime_vs_loco(small, n_splits=2, folds=1, n_repeats=3, progress=False, **FAST)
    assert len(calls) == 1 and calls[0]["folds"] == [0] and calls[0]["reference"] is not None
    assert r["pxpermute_importance"].shape == (1, 3) and r["loco_importance"].shape == (1, 3)
    assert r["loco_trainings"] == 3  # C leave-outs on the one timed fold; the reference is reused
    assert r["speedup"] == pytest.approx(r["loco_s_per_fold"] / r["pxpermute_s_per_fold"])
    assert r["loco_s_per_fold_paper"] == pytest.approx(r["loco_s_per_fold"] + r["train_s_per_model"])
    assert sorted(r["pxpermute_ranking"]) == sorted(r["loco_ranking"]) == sorted(small.channel_names)
    assert len(r["adaptive_k_used"]) == 1 and 1 <= r["adaptive_k_used"][0] <= 3


# ---------------------------------------------------------------------------
# 4. k ablation
# ---------------------------------------------------------------------------
def test_k_ablation_reuses_one_run_and_finds_stable_k(ds, comparison):
    cv = comparison.cv_results["all channels"]
    net, test = cv.models[0], ds.subset(cv.test_indices[0])
    abl = k_ablation(net, test, ks=(2, 5, 10, 20), random_state=3, progress=False)
    assert isinstance(abl, KAblation) and abl.result.n_repeats == 20
    # smaller k are prefixes of the single run ...
    np.testing.assert_array_equal(abl.at(5).importances, abl.result.importances[:5])
    # ... and identical to a run with that many repeats (counter-based permutations)
    direct = channel_importance(net, test, n_repeats=5, random_state=3, progress=False)
    np.testing.assert_allclose(abl.at(5).importances, direct.importances)
    tab = abl.table
    assert len(tab) == 4 * 5
    row = tab[(tab.k == 5)].set_index("channel")
    np.testing.assert_allclose(row.loc[ds.channel_names, "importance"], direct.importance)
    assert list(abl.rankings.index) == [2, 5, 10, 20]
    assert abl.rankings.loc[20].tolist() == abl.result.ranked_channels
    assert set(abl.rankings.loc[20, [1, 2]]) == {"A", "B"}  # planted stains first
    assert abl.kendall_tau.loc[20] == pytest.approx(1.0)
    assert abl.stable_k == first_stable_k({k: abl.rankings.loc[k].tolist() for k in abl.ks})
    assert abl.stable_k in abl.ks
    # reuse a precomputed result; errors
    again = k_ablation(None, ks=(5, 10), result=abl.result)
    np.testing.assert_allclose(again.result.importances, abl.result.importances)
    with pytest.raises(ValueError, match="max\\(ks\\)"):
        k_ablation(None, ks=(5, 50), result=abl.result)
    with pytest.raises(ValueError, match="ks is empty"):
        k_ablation(net, test, ks=())
    with pytest.raises(ValueError, match="deterministic"):
        k_ablation(net, test, ks=(2,), perturbation="fill")
    with pytest.raises(TypeError, match="n_repeats"):
        k_ablation(net, test, ks=(2,), n_repeats=3)


def test_first_stable_k():
    assert first_stable_k({5: "BAC", 10: "ABC", 20: "ABC"}) == 10
    assert first_stable_k({5: "ABC", 10: "BAC", 20: "ABC"}) == 20
    assert first_stable_k({5: "ABC", 10: "ABC"}) == 5
    assert first_stable_k({5: "ABDC", 10: "ABCD", 20: "ABDC"}, top=2) == 5
    assert first_stable_k({}) is None


# ---------------------------------------------------------------------------
# 3. multi-stage design
# ---------------------------------------------------------------------------
def _score_fn(calls: list):
    """A cheap importance function: class separation (ANOVA F) of each channel's strongest 4x4 box."""

    def fn(sub: IFCDataset) -> ImportanceResult:
        calls.append((list(sub.channel_names), len(sub)))
        x, y = sub.as_arrays()
        box = torch.nn.functional.avg_pool2d(torch.from_numpy(x), 4, stride=1).flatten(2).amax(-1).numpy()
        f = np.array([stats.f_oneway(*[box[y == k, c] for k in np.unique(y)]).statistic for c in range(x.shape[1])])
        return ImportanceResult(f[None, :], channel_names=sub.channel_names, info={"method": "anova"})

    return fn


RUNS = [["A", "N1", "N2", "N3", "N4"], ["N5", "B", "N6", "Empty"]]


@pytest.fixture(scope="module")
def big():
    return planted(n=240, n_noise=6, seed=1)  # BF, A, B, N1..N6, Empty


@pytest.fixture(scope="module")
def design_calls(big):
    calls: list = []
    final = partial(cv_importance, n_splits=2, n_repeats=4, **FAST)
    design = multistage_design(RUNS, _score_fn(calls), dataset=big, per_run=2, final_importance_fn=final,
                               progress=False)
    return design, calls


def test_multistage_design_selects_planted_markers(big, design_calls):
    runs = RUNS
    design, calls = design_calls
    assert isinstance(design, MultiStageResult)
    # each run saw its markers plus the stain-free channel
    assert calls[0][0] == ["BF", "A", "N1", "N2", "N3", "N4"] and calls[1][0] == ["BF", "B", "N5", "N6", "Empty"]
    assert "A" in design.stages[0]["selected"] and "B" in design.stages[1]["selected"]
    assert all(len(st["selected"]) == 2 for st in design.stages)
    union = design.stages[0]["selected"] + design.stages[1]["selected"]
    assert sorted(design.final["markers"]) == sorted(union) and sorted(design.panel) == sorted(union)
    assert design.final["result"].info["n_splits"] == 2  # the final run used cv_importance
    assert set(design.panel[:2]) == {"A", "B"}
    assert design.recovered_fraction() == 1.0
    left_out = next(m for m in runs[0] if m not in design.panel)
    assert design.recovered_fraction(["A", left_out]) == 0.5
    assert design.precision(top=2) == 1.0
    assert design.stain_free == ["BF"] and "BF" not in design.table.marker.tolist()
    assert set(design.table.stage) == {"run 1", "run 2", "final"}
    # final_size keeps only the best of the final ranking; split_cells gives each stage its own cells
    calls2: list = []
    small = multistage_design(runs, _score_fn(calls2), dataset=big, per_run=2, final_size=2, split_cells=True,
                              progress=False)
    assert len(small.panel) == 2 and small.recovered_fraction() == 1.0
    assert sum(n for _, n in calls2) == len(big) and len(calls2) == 3


def test_multistage_design_validation():
    big = planted(n=80, n_noise=3)
    fn = _score_fn([])
    with pytest.raises(ValueError, match="run 1 and run 2"):
        multistage_design([["A", "N1"], ["A", "B"]], fn, dataset=big)
    with pytest.raises(ValueError, match="holds no marker"):
        multistage_design([["BF"], ["A"]], fn, dataset=big)
    with pytest.raises(TypeError, match="list of markers"):
        multistage_design(["A", "B"], fn, dataset=big)
    with pytest.raises(TypeError, match="ImportanceResult"):
        multistage_design([["A", "N1"]], lambda d: {"A": 1.0}, dataset=big, progress=False)
    with pytest.raises(ValueError, match="does not score"):
        multistage_design([["A", "N1"]], lambda d: ImportanceResult(np.ones((1, 1)), channel_names=["A"]),
                          dataset=big, progress=False)
    with pytest.raises(ValueError, match="per_run"):
        multistage_design([["A", "N1"]], fn, dataset=big, per_run=0)


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------
def test_panel_plots(comparison, ds):
    from pxpermute.plotting import plot_k_ablation, plot_multistage, plot_panel_comparison, plot_panel_search

    fig = comparison.plot()
    assert isinstance(fig, matplotlib.figure.Figure)
    title = fig.axes[0].get_title()
    assert "planted" in title and "seed=42" in title and "2-fold" in title
    assert len(fig.axes[0].get_xticklabels()) == 4
    res = ImportanceResult(np.random.default_rng(0).random((10, 3)), channel_names=["a", "b", "c"],
                           info={"method": "toy", "random_state": 1})
    abl = k_ablation(None, ks=(2, 5, 10), result=res)
    fig = plot_k_ablation(abl)
    assert "k=10" in fig._suptitle.get_text() and len(fig.axes) == 2
    # panels are named by their titles, and the tau axis shows the whole scale up to 1 (no zoom to 0.93-1)
    assert [a.get_title() for a in fig.axes] == ["Kendall τ to the k=10 ranking", "rank of each channel"]
    lo, hi = fig.axes[0].get_ylim()
    assert lo <= 0.0 and hi >= 1.0
    design = multistage_design([["A", "Noise"], ["B", "Empty"]], _score_fn([]), dataset=ds, per_run=1, progress=False)
    fig = plot_multistage(design)
    assert len(fig.axes) == 3
    mp = MinimalPanel(panel=["BF", "A"], stains=["A"], reference_score=0.9, threshold=0.88, tolerance=0.02,
                      searches={}, n_trainings=0, seconds=0.0, cv_results={}, info={"data": "x", "n_splits": 2})
    fig = plot_panel_search(mp)
    assert "minimal panel" in fig.axes[0].get_title()
    assert plot_panel_comparison is not None
    matplotlib.pyplot.close("all")


# ---------------------------------------------------------------------------
# the result protocol: to_frame, summary (text), plot, save/load, damaged files
# ---------------------------------------------------------------------------
def test_panel_comparison_protocol(comparison, tmp_path):
    back = check_result_protocol(comparison, tmp_path, other_type=MinimalPanel)
    assert "stain-free + top-2" in comparison.summary() and comparison.statement() in comparison.summary()
    pd.testing.assert_frame_equal(back.tests, comparison.tests)
    pd.testing.assert_frame_equal(back.summary_frame(), comparison.summary_frame())
    assert back.info == comparison.info
    # the cross-validations come back without networks but with folds, scores and predictions
    for name, cv in comparison.cv_results.items():
        got = back.cv_results[name]
        assert got.models == [None] * cv.n_splits and got.channels == cv.channels
        np.testing.assert_array_equal(got.f1_per_class, cv.f1_per_class)
        for a, b in zip(got.test_indices + got.y_pred, cv.test_indices + cv.y_pred):
            np.testing.assert_array_equal(a, b)


def test_cv_result_protocol(comparison, tmp_path):
    from pxpermute.training import CVResult

    cv = comparison.cv_results["all channels"]
    back = check_result_protocol(cv, tmp_path, other_type=PanelComparison)
    assert isinstance(back, CVResult) and back.random_state == cv.random_state
    assert "2-fold cross-validation" in cv.summary() and "F1[ab]" in cv.summary()
    pd.testing.assert_frame_equal(back.summary_frame(), cv.summary_frame())


def test_minimal_panel_protocol(minimal, tmp_path):
    back = check_result_protocol(minimal, tmp_path, other_type=PanelComparison)
    assert set(back.searches) == {"ranking", "greedy"}
    for name, s in minimal.searches.items():
        pd.testing.assert_frame_equal(back.searches[name].path, s.path)
        assert back.searches[name].stains == s.stains and back.searches[name].found == s.found
    assert sorted(back.cv_results) == sorted(minimal.cv_results)
    assert back.panel == minimal.panel and back.reference_score == minimal.reference_score
    assert "ranking" in minimal.summary() and "greedy" in minimal.summary()


def test_multistage_protocol(design_calls, tmp_path):
    design, _ = design_calls
    back = check_result_protocol(design, tmp_path, other_type=KAblation)
    assert back.panel == design.panel and back.recovered_fraction() == design.recovered_fraction()
    for a, b in zip(back.stages + [back.final], design.stages + [design.final]):
        np.testing.assert_array_equal(a["result"].importances, b["result"].importances)
        assert a["selected"] == b["selected"] and a["result"].channel_names == b["result"].channel_names
    assert back.final["result"].info["n_splits"] == 2
    assert "panel:" in design.summary() and "*" in design.summary()


def test_k_ablation_protocol(comparison, ds, tmp_path):
    cv = comparison.cv_results["all channels"]
    abl = k_ablation(cv.models[0], ds.subset(cv.test_indices[0]), ks=(2, 5, 10), random_state=1, progress=False)
    back = check_result_protocol(abl, tmp_path, other_type=MultiStageResult)
    np.testing.assert_array_equal(back.result.confusion, abl.result.confusion)
    pd.testing.assert_frame_equal(back.rankings, abl.rankings)
    pd.testing.assert_series_equal(back.kendall_tau, abl.kendall_tau)
    assert back.stable_k == abl.stable_k and back.ks == abl.ks
    assert f"stable from k = {abl.stable_k}" in abl.summary()
