"""Channel groups, bootstrap uncertainty over test images, p-values, ranking stability,
stratified test-set subsampling and per-class views."""
import numpy as np
import pytest
import torch
from scipy import stats as sps

from pxpermute import ImportanceResult, channel_importance
from pxpermute.importance import _Plan, _Predictor, accumulate, as_source
from pxpermute.perturb import PERTURBATIONS, PerturbContext, seed_words
from pxpermute.plotting import plot_per_class
from pxpermute.stats import (
    bootstrap_p_values,
    percentile_interval,
    poisson_weights,
    rank_probabilities,
    rank_stability,
    stratified_subsample,
)

FAST = dict(progress=False, random_state=0)


# ---------------------------------------------------------------------------
# data and models with known answers
# ---------------------------------------------------------------------------
def lr_evidence(x):
    """Left-half minus right-half mean of each channel: (B, C)."""
    W = x.shape[-1]
    return x[..., : W // 2].mean((-2, -1)) - x[..., W // 2 :].mean((-2, -1))


def two_copies(n=200, seed=0):
    """Binary task; channel 'a' carries the class as a left/right bright half, 'a_copy' is an exact
    copy of it, 'noise' is noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = rng.normal(0, 1, size=(n, 8, 8)).astype(np.float32)
    a[y == 1, :, :4] += 2.0
    a[y == 0, :, 4:] += 2.0
    X = np.stack([a, a.copy(), rng.normal(0, 1, size=(n, 8, 8)).astype(np.float32)], axis=1)
    return X, y, ["a", "a_copy", "noise"]


class UseEither(torch.nn.Module):
    """Decides from whichever copy shows the stronger left/right evidence."""

    def forward(self, x):
        e = lr_evidence(x[:, :2])  # (B, 2)
        pick = e.abs().argmax(1, keepdim=True)
        ev = e.gather(1, pick)[:, 0]
        return torch.stack([-ev, ev], 1)


def ramp_task(n=400, hard=0.3, seed=1, K=3):
    """Known binomial accuracy.

    ch0 'ramp' is a strictly increasing ramp (intact in every image), ch1 'label' encodes a class
    as its mean intensity, ch2 'noise' is noise.  For a 'hard' fraction of images ch1 encodes a
    wrong class.  :class:`RampModel` predicts ch1's class if ch0 is an intact ramp and the next
    class otherwise, so with ch0 permuted it is wrong on every image (K = 3): the accuracy drop
    for ch0 equals the baseline accuracy, a binomial proportion with known standard error.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    is_hard = rng.random(n) < hard
    shown = np.where(is_hard, (y + 1) % K, y)
    X = np.empty((n, 3, 6, 6), np.float32)
    X[:, 0] = np.linspace(0, 1, 36, dtype=np.float32).reshape(6, 6)
    X[:, 1] = shown[:, None, None] + rng.uniform(-0.3, 0.3, size=(n, 6, 6))
    X[:, 1] += -X[:, 1].mean((1, 2), keepdims=True) + shown[:, None, None]  # mean exactly = shown class
    X[:, 2] = rng.normal(size=(n, 6, 6))
    return X, y, is_hard, K


class RampModel(torch.nn.Module):
    def __init__(self, K=3):
        super().__init__()
        self.K = K

    def forward(self, x):
        lab = x[:, 1].mean((1, 2)).round().long().clamp(0, self.K - 1)
        intact = (x[:, 0].flatten(1).diff(dim=1) > 0).all(1)
        pred = torch.where(intact, lab, (lab + 1) % self.K)
        return torch.nn.functional.one_hot(pred, self.K).float()


# ---------------------------------------------------------------------------
# 1. groups: redundancy revealed
# ---------------------------------------------------------------------------
def test_grouped_copies_score_high_while_each_copy_alone_scores_zero():
    """Two copies of the same informative channel.

    Which model makes 'each copy alone ~0' true?  A model that uses EITHER copy (here: whichever
    shows the stronger evidence) loses nothing when one copy is scrambled -- the intact copy still
    carries the full signal and the scrambled copy's leftover evidence is far weaker -- so each
    copy alone scores exactly 0 and only the group reveals the information.  A model that AVERAGES
    the copies would also lose half of its evidence and gain the scrambled copy's noise when one
    copy is permuted, so a single copy would score ~0 only at a high signal-to-noise ratio (it is
    checked below to score less than the group, not zero).
    """
    X, y, names = two_copies()
    groups = {"a": ["a"], "a_copy": ["a_copy"], "both": ["a", "a_copy"], "noise": ["noise"]}
    res = channel_importance(UseEither(), (X, y), channel_names=names, groups=groups, n_repeats=4, **FAST)
    imp = dict(zip(res.channel_names, res.importance))
    assert res.baseline_score > 0.95
    assert imp["a"] == 0 and imp["a_copy"] == 0 and imp["noise"] == 0
    assert imp["both"] > 0.4  # both copies scrambled: the model guesses
    assert res.groups["both"] == ["a", "a_copy"] and res.info["shared_group_permutation"] is True
    # independent permutations of the two copies destroy the group just as well
    indep = channel_importance(UseEither(), (X, y), channel_names=names, groups={"both": [0, 1]},
                               shared_group_permutation=False, n_repeats=4, **FAST)
    assert indep.importance[0] > 0.4 and indep.info["shared_group_permutation"] is False

    class Average(torch.nn.Module):
        def forward(self, x):
            ev = lr_evidence(x[:, :2]).mean(1)
            return torch.stack([-ev, ev], 1)

    Xw = X.copy()
    Xw[:, :2] = (Xw[:, :2] - Xw[:, :2].mean()) * 0.25 + np.random.default_rng(5).normal(0, 1, Xw[:, :2].shape)
    Xw[:, 1] = Xw[:, 0]  # weak signal, still two exact copies
    avg = channel_importance(Average(), (Xw, y), channel_names=names, groups=groups, n_repeats=4, **FAST)
    a = dict(zip(avg.channel_names, avg.importance))
    assert 0 < a["a"] < a["both"] and 0 < a["a_copy"] < a["both"]


def test_groups_given_as_list_of_lists_and_overlapping_units():
    X, y, names = two_copies(n=60)
    res = channel_importance(UseEither(), (X, y), channel_names=names, groups=[["a", "a_copy"], [2]], n_repeats=2, **FAST)
    assert res.channel_names == ["a+a_copy", "noise"]  # unnamed groups are named after their channels
    assert res.groups == {"a+a_copy": ["a", "a_copy"], "noise": ["noise"]}
    assert res.importance[0] > 0.3 and res.importance[1] == 0
    with pytest.raises(ValueError, match="distinct name"):
        channel_importance(UseEither(), (X, y), channel_names=names, groups=[[0, 1], ["a", "a_copy"]], **FAST)
    with pytest.raises(TypeError, match="groups must be"):
        channel_importance(UseEither(), (X, y), channel_names=names, groups="a", **FAST)
    with pytest.raises(ValueError, match="no channels"):
        channel_importance(UseEither(), (X, y), channel_names=names, groups={"empty": []}, **FAST)


# ---------------------------------------------------------------------------
# 2. uncertainty over test images
# ---------------------------------------------------------------------------
def test_poisson_weights_are_counter_based_and_poisson1():
    idx = torch.arange(20_000)
    w = poisson_weights(7, idx, 3)
    assert w.dtype == torch.int64 and w.shape == (3, 20_000) and int(w.min()) >= 0
    wf = w.double()
    assert abs(wf.mean().item() - 1) < 0.02 and abs(wf.var().item() - 1) < 0.05
    assert abs((w == 0).double().mean().item() - np.exp(-1)) < 0.01
    # a sample's weight does not depend on which other samples are in the batch
    sub = torch.tensor([19_999, 5, 123])
    assert torch.equal(poisson_weights(7, sub, 3), w[:, sub])
    assert not torch.equal(poisson_weights(8, sub, 3), w[:, sub])
    # replicates are not copies of each other
    assert abs(np.corrcoef(wf[0].numpy(), wf[1].numpy())[0, 1]) < 0.05


def test_ignored_channel_not_significant_informative_channel_tiny_p():
    X, y, _, K = ramp_task(n=300)
    res = channel_importance(RampModel(), (X, y), channel_names=["ramp", "label", "noise"], n_repeats=3,
                             n_bootstrap=999, **FAST)
    p = dict(zip(res.channel_names, res.p_values))
    assert p["ramp"] == pytest.approx(1 / 1000)  # every replicate > 0: the smallest attainable p
    assert p["noise"] == 1.0  # the model ignores it: every replicate exactly 0
    assert p["label"] == 1.0  # used only through its mean intensity, which pixel permutation keeps
    assert res.rank_low[res.channel_names.index("ramp")] == 1 == res.rank_high[res.channel_names.index("ramp")]
    df = res.to_frame()
    assert "rank_stability" not in df.columns  # replaced by P(>next), rank intervals and P(top m)
    for col in ("sem", "boot_se", "boot_ci_low", "boot_ci_high", "p_value", "p_above_next", "rank_low"):
        assert col in df.columns
    assert df.set_index("channel").loc["noise", "p_value"] == 1.0
    assert "bootstrap over test cells" in res.summary() and "P(>next)" in res.summary()
    assert res.ci_kind == "bootstrap" and np.array_equal(res.ci_low, res.bootstrap_ci_low)
    # the bar plot's error bars are the bootstrap interval
    fig = res.plot(normalized=False, sort=False)
    errbar = next(c for c in fig.axes[0].containers if type(c).__name__ == "ErrorbarContainer")
    segs = errbar.lines[2][0].get_segments()
    np.testing.assert_allclose([sg[0][1] for sg in segs], res.bootstrap_ci_low)
    np.testing.assert_allclose([sg[1][1] for sg in segs], res.bootstrap_ci_high)


def test_bootstrap_ci_of_binomial_accuracy_matches_analytic_interval():
    X, y, is_hard, K = ramp_task(n=400)
    n = len(y)
    p_hat = 1 - is_hard.mean()
    res = channel_importance(RampModel(), (X, y), channel_names=["ramp", "label", "noise"], n_repeats=2,
                             metric="accuracy", n_bootstrap=2000, confidence=0.9, **FAST)
    i = res.channel_names.index("ramp")
    assert res.baseline_score == pytest.approx(p_hat) and res.importance[i] == pytest.approx(p_hat)
    se = np.sqrt(p_hat * (1 - p_hat) / n)
    z = sps.norm.ppf(0.95)
    lo, hi = p_hat - z * se, p_hat + z * se  # Wald interval, 90 %
    assert res.bootstrap_se[i] == pytest.approx(se, rel=0.1)
    tol = 0.15 * z * se
    assert abs(res.bootstrap_ci_low[i] - lo) < tol and abs(res.bootstrap_ci_high[i] - hi) < tol
    assert abs(res.baseline_score_ci[0] - lo) < tol and abs(res.baseline_score_ci[1] - hi) < tol
    # the permutation-only interval knows nothing about the binomial sampling error
    assert res.perm_ci_high[i] - res.perm_ci_low[i] < 1e-9


def test_repeat_ci_is_a_t_interval_on_the_standard_error():
    X, y, names = two_copies(n=80)
    res = channel_importance(UseEither(), (X, y), channel_names=names, groups={"both": [0, 1]}, n_repeats=6,
                             confidence=0.8, **FAST)
    R = res.n_repeats
    sem = res.importances.std(axis=0, ddof=1) / np.sqrt(R)
    np.testing.assert_allclose(res.importances_sem, sem)
    half = sps.t.ppf(0.9, R - 1) * sem
    np.testing.assert_allclose(res.perm_ci_high - res.perm_ci_low, 2 * half)
    assert res.info["confidence"] == 0.8


def _plan(model, X, y, n_bootstrap, seed=3, K=3):
    src = as_source(X, y)
    ctx = PerturbContext(seed_words(seed), src.n, fetch=src.fetch)
    return _Plan(src=src, predict=_Predictor(model), units=[[0], [1], [2]], perturb=PERTURBATIONS["pixel"], ctx=ctx,
                 n_classes=K, batch_size=32, device=torch.device("cpu"), n_bootstrap=n_bootstrap)


def test_bootstrap_counts_add_up_over_shards_and_repeat_chunks():
    X, y, _, K = ramp_task(n=90)
    plan = _plan(RampModel(), X, y, 50)
    full = accumulate(plan, np.arange(90), range(6))
    # shards of samples (uneven, interleaved) and chunks of repeats sum to the full counts
    a, b = np.arange(0, 90, 3), np.setdiff1d(np.arange(90), np.arange(0, 90, 3))
    shards = [accumulate(plan, s, range(6)) for s in (a, b)]
    torch.testing.assert_close(shards[0].boot_baseline + shards[1].boot_baseline, full.boot_baseline)
    torch.testing.assert_close(shards[0].boot_confusion + shards[1].boot_confusion, full.boot_confusion)
    chunks = [accumulate(plan, np.arange(90), r, with_baseline=False) for r in (range(0, 2), range(2, 6))]
    assert chunks[0].boot_baseline is None
    torch.testing.assert_close(chunks[0].boot_confusion + chunks[1].boot_confusion, full.boot_confusion)
    # the unweighted counts are the same as without the bootstrap, and the bootstrap is off at no cost
    off = accumulate(_plan(RampModel(), X, y, 0), np.arange(90), range(6))
    assert off.boot_confusion is None and off.boot_baseline is None
    torch.testing.assert_close(off.confusion, full.confusion)
    # pooled over repeats: each replicate's total weight is the same for every unit, R times the baseline's
    tot_b = full.boot_baseline.sum((1, 2))
    torch.testing.assert_close(full.boot_confusion.sum((2, 3)), 6 * tot_b[:, None].expand(-1, 3))


def test_bootstrap_independent_of_batch_size_and_chunks_and_survives_save_load_rescore(tmp_path):
    X, y, _, K = ramp_task(n=120)
    kw = dict(n_repeats=4, n_bootstrap=64, **FAST)
    r1 = channel_importance(RampModel(), (X, y), batch_size=256, **kw)
    r2 = channel_importance(RampModel(), (X, y), batch_size=7, chunk_repeats=3, **kw)
    np.testing.assert_array_equal(r1.bootstrap_confusion, r2.bootstrap_confusion)
    np.testing.assert_array_equal(r1.bootstrap_baseline_confusion, r2.bootstrap_baseline_confusion)
    np.testing.assert_array_equal(r1.p_values, r2.p_values)
    assert r1.n_bootstrap == 64 and r1.info["n_bootstrap"] == 64
    other_seed = channel_importance(RampModel(), (X, y), n_repeats=4, n_bootstrap=64, progress=False, random_state=1)
    assert not np.array_equal(other_seed.bootstrap_baseline_confusion, r1.bootstrap_baseline_confusion)
    back = ImportanceResult.load(r1.save(tmp_path / "boot"))
    np.testing.assert_array_equal(back.bootstrap_importances, r1.bootstrap_importances)
    assert back.to_frame().equals(r1.to_frame())
    acc = r1.rescore("accuracy")
    assert acc.n_bootstrap == 64 and acc.bootstrap_importances.shape == (64, 3)
    assert acc.bootstrap_se[0] > 0
    # without a bootstrap, the bootstrap attributes are None and the table has no bootstrap columns
    plain = channel_importance(RampModel(), (X, y), n_repeats=2, n_bootstrap=0, **FAST)
    assert plain.ci_kind == "permutation" and np.array_equal(plain.ci_low, plain.perm_ci_low)
    assert plain.p_values is None and plain.n_bootstrap == 0 and "p_value" not in plain.to_frame().columns


def test_bootstrap_counts_resume_from_a_checkpoint(tmp_path):
    X, y, _, K = ramp_task(n=60)
    kw = dict(n_bootstrap=32, chunk_repeats=2, **FAST)
    fresh = channel_importance(RampModel(), (X, y), n_repeats=6, **kw)
    ck = tmp_path / "run.ckpt"
    first = channel_importance(RampModel(), (X, y), n_repeats=4, checkpoint=ck, **kw)
    assert first.n_bootstrap == 32
    resumed = channel_importance(RampModel(), (X, y), n_repeats=6, checkpoint=ck, **kw)
    assert resumed.info["resumed_repeats"] == 4
    np.testing.assert_array_equal(resumed.bootstrap_confusion, fresh.bootstrap_confusion)
    np.testing.assert_array_equal(resumed.bootstrap_baseline_confusion, fresh.bootstrap_baseline_confusion)
    np.testing.assert_array_equal(resumed.p_values, fresh.p_values)


def test_bootstrap_replicates_are_centred_on_the_reported_importance():
    X, y, names = two_copies(n=150)
    res = channel_importance(UseEither(), (X, y), channel_names=names, groups={"both": [0, 1], "noise": [2]},
                             n_repeats=5, n_bootstrap=400, **FAST)
    reps = res.bootstrap_importances
    assert reps.shape == (400, 2)
    assert abs(np.median(reps[:, 0]) - res.importance[0]) < 0.5 * res.bootstrap_se[0]
    assert res.bootstrap_ci_low[0] < res.importance[0] < res.bootstrap_ci_high[0]
    assert np.all(reps[:, 1] == 0)


def test_rank_summaries_from_replicates():
    reps = np.array([[3.0, 2.0, 0.0], [2.0, 3.0, 0.0], [3.0, 1.0, 0.0], [3.0, 2.5, 0.0]])
    with pytest.warns(DeprecationWarning, match="pairwise_probabilities"):
        np.testing.assert_allclose(rank_stability(reps, np.array([3.0, 2.0, 0.0])), [0.75, 0.75, 1.0])
    P = rank_probabilities(reps)
    np.testing.assert_allclose(P.sum(0), 1) and np.testing.assert_allclose(P.sum(1), 1)
    np.testing.assert_allclose(P[0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(bootstrap_p_values(np.array([[0.1], [0.2], [-0.1], [0.0]]))[0], 3 / 5)
    lo, hi = percentile_interval(np.arange(1001.0)[:, None], 0.9)
    assert lo[0] == pytest.approx(50) and hi[0] == pytest.approx(950)


# ---------------------------------------------------------------------------
# 3. max_samples
# ---------------------------------------------------------------------------
def test_max_samples_keeps_every_class_and_is_recorded():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [300, 30, 2])
    rng.shuffle(y)
    X = rng.normal(size=(len(y), 3, 6, 6)).astype(np.float32)
    model = RampModel()
    for ms in (0.05, 10, 3):
        idx = stratified_subsample(y, ms, random_state=4)
        counts = np.bincount(y[idx], minlength=3)
        assert np.all(counts >= 1), (ms, counts)
        res = channel_importance(model, (X, y), n_repeats=2, max_samples=ms, progress=False, random_state=4)
        assert res.info["max_samples"] == ms and res.info["n_samples_total"] == len(y)
        assert res.info["samples_per_class"] == counts.tolist() and res.info["n_samples"] == len(idx)
        np.testing.assert_array_equal(res.baseline_confusion.sum(1), counts)  # exactly those samples scored
    assert len(stratified_subsample(y, 0.05, random_state=4)) == round(0.05 * len(y))
    assert np.bincount(y[stratified_subsample(y, 0.5, random_state=0)]).tolist() == [150, 15, 1]
    # deterministic from random_state, different for another seed
    np.testing.assert_array_equal(stratified_subsample(y, 0.1, random_state=1), stratified_subsample(y, 0.1, random_state=1))
    assert not np.array_equal(stratified_subsample(y, 0.1, random_state=1), stratified_subsample(y, 0.1, random_state=2))
    assert len(stratified_subsample(y, 1.0)) == len(y) and len(stratified_subsample(y, 10_000)) == len(y)


def test_max_samples_with_a_torch_dataset_reads_labels():
    X, y, _, K = ramp_task(n=90)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    res = channel_importance(RampModel(), ds, n_repeats=2, max_samples=0.5, n_classes=K, **FAST)
    assert res.info["n_samples"] == 45 and sum(res.info["samples_per_class"]) == 45
    assert int(res.baseline_confusion.sum()) == 45


# ---------------------------------------------------------------------------
# 4. per-class views
# ---------------------------------------------------------------------------
class PerClassModel(torch.nn.Module):
    """Class 0 is recognised from channel 0, class 1 from channel 1, class 2 is the fallback."""

    def forward(self, x):
        e = lr_evidence(x[:, :2])  # (B, 2)
        return torch.stack([e[:, 0], e[:, 1], torch.full_like(e[:, 0], 1.0)], 1)


def test_per_class_table_and_heatmap_show_a_stain_that_matters_for_one_class_only():
    rng = np.random.default_rng(2)
    n = 240
    y = rng.integers(0, 3, n)
    X = rng.normal(0, 0.3, size=(n, 3, 8, 8)).astype(np.float32)
    X[y == 0, 0, :, :4] += 3.0  # class 0: left half bright in channel 0
    X[y == 1, 1, :, :4] += 3.0  # class 1: left half bright in channel 1
    res = channel_importance(PerClassModel(), (X, y), channel_names=["stainA", "stainB", "bf"],
                             class_names=["A", "B", "other"], n_repeats=4, n_bootstrap=199, **FAST)
    assert res.baseline_score > 0.95
    table = res.per_class()
    assert list(table.index) == ["stainA", "stainB", "bf"] and list(table.columns) == ["A", "B", "other"]
    assert table.loc["stainA", "A"] > 0.5 and table.loc["stainA", "B"] == 0
    assert table.loc["stainB", "B"] > 0.5 and table.loc["stainB", "A"] == 0
    assert np.all(table.loc["bf"] == 0)
    p = res.per_class("p_value")
    assert p.loc["stainA", "A"] <= 0.01 and p.loc["stainA", "B"] == 1.0 and p.loc["stainB", "A"] == 1.0
    tidy = res.to_frame("per_class")
    assert len(tidy) == 3 * 3
    assert {"channel", "class", "baseline", "mean", "sem", "ci_low", "ci_high", "boot_ci_low", "p_value"} <= set(tidy.columns)
    row = tidy[(tidy.channel == "stainA") & (tidy["class"] == "A")].iloc[0]
    assert row["mean"] == pytest.approx(table.loc["stainA", "A"])
    assert row.boot_ci_low <= row["mean"] <= row.boot_ci_high
    # the heatmap draws exactly the channel x class table
    fig = plot_per_class(res)
    mesh = fig.axes[0].collections[0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(3, 3), table.to_numpy())
    texts = [t.get_text() for t in fig.axes[0].texts]  # row-major: stainA/A, stainA/B, ...
    assert texts[0].endswith("*") and not texts[1].endswith("*")  # significant marks from per-class p-values
    with pytest.raises(ValueError, match="per-class value"):
        res.per_class("nope")


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
def test_bad_options_raise_clear_errors(tmp_path):
    X, y, _, K = ramp_task(n=30)
    m = RampModel()
    with pytest.raises(ValueError, match="n_bootstrap"):
        channel_importance(m, (X, y), n_bootstrap=-1, **FAST)
    with pytest.raises(ValueError, match="n_bootstrap"):
        channel_importance(m, (X, y), n_bootstrap=2.5, **FAST)
    with pytest.raises(ValueError, match="confidence"):
        channel_importance(m, (X, y), confidence=95, **FAST)
    with pytest.raises(ValueError, match="max_samples"):
        channel_importance(m, (X, y), max_samples=1.5, **FAST)
    with pytest.raises(ValueError, match="max_samples"):
        channel_importance(m, (X, y), max_samples=0, **FAST)
    with pytest.raises(TypeError, match="max_samples"):
        channel_importance(m, (X, y), max_samples="half", **FAST)
    with pytest.raises(TypeError, match="max_samples"):
        channel_importance(m, (X, y), max_samples=True, **FAST)


# ---------------------------------------------------------------------------
# distributed: two gloo ranks give the single-process bootstrap
# ---------------------------------------------------------------------------
def _boot_worker(rank, world, init_file, out_dir):
    import os

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        X, y, _, K = ramp_task(n=90)
        res = channel_importance(RampModel(), (X, y), n_repeats=4, n_bootstrap=40, max_samples=0.7, batch_size=9,
                                 chunk_repeats=3, **FAST)
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), bb=res.bootstrap_baseline_confusion,
                 bc=res.bootstrap_confusion, p=res.p_values, n=res.info["n_samples"])
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_bootstrap_distributed_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_boot_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    X, y, _, K = ramp_task(n=90)
    ref = channel_importance(RampModel(), (X, y), n_repeats=4, n_bootstrap=40, max_samples=0.7, **FAST)
    for r in range(2):
        o = np.load(tmp_path / f"rank{r}.npz")
        assert int(o["n"]) == ref.info["n_samples"] == 63
        np.testing.assert_array_equal(o["bb"], ref.bootstrap_baseline_confusion)
        np.testing.assert_array_equal(o["bc"], ref.bootstrap_confusion)
        np.testing.assert_array_equal(o["p"], ref.p_values)


def test_docstring_examples_run():
    import doctest

    import pxpermute.importance
    import pxpermute.stats

    for mod in (pxpermute.stats, pxpermute.importance):
        out = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert out.attempted > 0 and out.failed == 0, mod.__name__


def test_ties_at_zero_get_no_confident_rank():
    """Two channels tied at exactly 0 in every replicate: no order is made up from column order."""
    reps = np.column_stack([np.linspace(0.2, 0.3, 50), np.zeros(50), np.zeros(50), np.zeros(50)])
    P = rank_probabilities(reps)
    np.testing.assert_allclose(P[1:, 1:], 1 / 3)
    np.testing.assert_allclose(P.sum(0), 1) and np.testing.assert_allclose(P.sum(1), 1)
    with pytest.warns(DeprecationWarning):
        stab = rank_stability(reps, reps.mean(0))
    np.testing.assert_allclose(stab, [1.0, 1 / 3, 1 / 3, 1 / 3])
    from pxpermute.inference import pairwise_probabilities, rank_intervals, top_m_probabilities

    assert pairwise_probabilities(reps)[1, 2] == 0.5
    np.testing.assert_allclose(top_m_probabilities(reps, 2), [1.0, 1 / 3, 1 / 3, 1 / 3])
    best, worst = rank_intervals(reps, reps.mean(0))
    assert best.tolist() == [1, 2, 2, 2] and worst.tolist() == [1, 4, 4, 4]
    # on a result: the deprecated attribute warns and shares the ties
    X, y, _, K = ramp_task(n=120)
    res = channel_importance(RampModel(), (X, y), channel_names=["ramp", "label", "noise"], n_repeats=2,
                             n_bootstrap=99, **FAST)
    with pytest.warns(DeprecationWarning):
        assert res.rank_stability.tolist()[1:] == [0.5, 0.5]
    assert res.top_m_probabilities(2).tolist() == [1.0, 0.5, 0.5]
    # the printed summary fits a book page (wrapped at 88 characters) and states what p tests
    text = res.summary()
    assert max(len(line) for line in text.splitlines()) <= 88
    assert "H0 'the importance on test cells drawn like these, for" in text and "retraining" in text


def test_normalized_cannot_turn_noise_into_one():
    """Min-max scaling is given only when the top channel's interval lies above 0; noise gives NaN."""
    from pxpermute import ImportanceResult

    rng = np.random.default_rng(1)
    noise = ImportanceResult(rng.normal(0, 0.01, (30, 3)), channel_names=["a", "b", "c"])
    assert noise.ci_low[np.argmax(noise.importance)] <= 0
    norm = noise.normalized()
    assert norm.isna().all() and "reaches 0" in norm.attrs["reason"]
    assert noise.to_frame()["normalized"].isna().all() and "norm.: n/a" in noise.summary()
    signal = ImportanceResult(np.column_stack([rng.normal(0.3, 0.01, 30), rng.normal(0.1, 0.01, 30),
                                               rng.normal(0, 0.01, 30)]), channel_names=["a", "b", "c"])
    assert signal.normalized()["a"] == 1.0 and np.nanmin(signal.normalized()) == 0.0
    one_repeat = ImportanceResult([[0.3, 0.1]], channel_names=["a", "b"])  # no interval at all
    assert one_repeat.normalized().isna().all() and "no interval" in one_repeat.normalized().attrs["reason"]


def _three_class_task(seed, n=60):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 2, 4, 4)).astype("float32")
    X[:, 0, :2] += y[:, None, None] * 0.6
    W = torch.tensor([[-1.0, 0.0, 1.0]])

    def model(x):
        return (x[:, 0, :2].mean((1, 2))[:, None] - 0.6) * W * 3 + 0.2 * x[:, 1].mean((1, 2))[:, None] * W

    return X, y, model


def test_median_aggregation_bootstraps_the_median():
    """aggregate='median': per-repeat bootstrap counts, every replicate recomputes the median over repeats, so the
    estimate lies inside its own interval (with pooled counts + a shift it fell outside in 21 of 300 cases)."""
    outside = 0
    for seed in range(25):
        X, y, model = _three_class_task(seed)
        res = channel_importance(model, (X, y), n_repeats=7, aggregate="median", n_bootstrap=99, random_state=seed,
                                 progress=False)
        assert res.bootstrap_confusion.shape == (99, 7, 2, 3, 3)  # (B, R, U, K, K)
        outside += int(np.sum((res.importance < res.ci_low) | (res.importance > res.ci_high)))
    assert outside == 0
    # a replicate with every weight 1 is the estimate itself (no centring shift)
    from pxpermute.stats import bootstrap_importances

    one, _ = bootstrap_importances(res.baseline_confusion[None], res.confusion[None], metric="f1", aggregate="median",
                                   present=res.present_classes)
    np.testing.assert_allclose(one[0], res.importance)
    # per-repeat counts do not depend on how the repeats are chunked or batched
    again = channel_importance(model, (X, y), n_repeats=7, aggregate="median", n_bootstrap=99, random_state=24,
                               progress=False, chunk_repeats=3, batch_size=13)
    np.testing.assert_array_equal(again.bootstrap_confusion, res.bootstrap_confusion)
    # the mean keeps the pooled counts (memory independent of k)
    mean = channel_importance(model, (X, y), n_repeats=7, n_bootstrap=99, random_state=24, progress=False)
    assert mean.bootstrap_confusion.shape == (99, 2, 3, 3)


def _donor_task(seed, n=160):
    """Class 1 (20 %) is bright in ch0; the model reads ch0's mean.  Swapping ch0 between cells predicts the
    donor's class: population importance (accuracy) = 1 - (p^2 + (1-p)^2) = 0.32 at p = 0.2."""
    rng = np.random.default_rng(1000 + seed)
    y = (rng.random(n) < 0.2).astype(int)
    X = rng.normal(0, 0.05, size=(n, 1, 2, 2)).astype("float32")
    X[:, 0] += y[:, None, None]
    return X, y


def _mean_model(x):
    s = x[:, 0].mean((1, 2))
    return torch.stack([0.5 - s, s - 0.5], 1)


def test_sample_perturbation_bootstrap_includes_donors():
    """perturbation='sample': replicates weight a prediction by recipient x donor weight.  On a known process the
    interval covers the population importance about as often as stated (recipient-only weights: about 77 %,
    SE 0.021 vs true SD 0.033, see benchmarks/uncertainty_simulation.py)."""
    est, se, cover = [], [], 0
    n_sets = 40
    for seed in range(n_sets):
        X, y = _donor_task(seed)
        res = channel_importance(_mean_model, (X, y), n_repeats=3, perturbation="sample", metric="accuracy",
                                 n_bootstrap=99, random_state=seed, progress=False)
        est.append(res.importance[0])
        se.append(res.bootstrap_se[0])
        cover += res.ci_low[0] <= 0.32 <= res.ci_high[0]
    assert res.info["bootstrap"] == "poisson (recipients x donors)"
    ratio = np.mean(se) / np.std(est, ddof=1)
    assert 0.75 < ratio < 1.5, ratio  # recipient-only weights give about 0.6
    assert cover / n_sets >= 0.85, cover


def test_median_per_repeat_counts_survive_checkpoints(tmp_path):
    """Per-repeat bootstrap counts are concatenated over chunks and stored in the checkpoint like pooled ones."""
    X, y, model = _three_class_task(3)
    opts = dict(n_repeats=6, aggregate="median", n_bootstrap=19, random_state=3, progress=False)
    ref = channel_importance(model, (X, y), **opts)
    ck = tmp_path / "ck.npz"
    first = channel_importance(model, (X, y), checkpoint=ck, chunk_repeats=2, **opts)
    np.testing.assert_array_equal(first.bootstrap_confusion, ref.bootstrap_confusion)
    again = channel_importance(model, (X, y), checkpoint=ck, chunk_repeats=2, **opts)  # read back from the file
    assert again.info["resumed_repeats"] == 6
    np.testing.assert_array_equal(again.bootstrap_confusion, ref.bootstrap_confusion)
    np.testing.assert_allclose(again.ci_low, ref.ci_low)
