"""Tests for pxpermute.evaluation (remove-and-retrain, retraining on channel subsets, ranking scores)
and the remove-and-retrain / heatmap plots."""
import numpy as np
import pandas as pd
import pytest
from result_protocol import check_result_protocol

from pxpermute import ImportanceResult
from pxpermute.datasets import GroundTruth, IFCDataset
from pxpermute.evaluation import (
    ROARResult,
    ranking_channels,
    remove_and_retrain,
    retrain_scores,
    score_ranking,
    score_rankings,
)

TRAIN = dict(model="small_cnn", model_kwargs={"width": 4}, max_epochs=3, batch_size=8, lr=1e-2,
             valid_fraction=None)


@pytest.fixture(scope="module")
def tiny():
    """3 channels, 16x16: class 'b' is brighter in 'sig' (learnt in a few steps); 'noise' is noise, 'empty' empty."""
    rng = np.random.default_rng(0)
    n = 48
    y = np.arange(n) % 2
    X = rng.random((n, 3, 16, 16)).astype(np.float32) * 0.3
    X[:, 2] = 0.0
    X[y == 1, 0] += 1.0
    gt = GroundTruth([1.0, 0.0, 0.0], ["shape", "noise", "empty"])
    return IFCDataset(X, y, channel_names=["sig", "noise", "empty"], class_names=["a", "b"], ground_truth=gt,
                      name="tiny")


@pytest.fixture(scope="module")
def roar(tiny):
    import pxpermute.training as training

    calls = []
    original = training.cross_validate_many

    def counting(ds, subsets, **kwargs):
        calls.extend(tuple(c) for c in subsets)
        return original(ds, subsets, **kwargs)

    training.cross_validate_many = counting
    try:
        res = remove_and_retrain(tiny, {"oracle": ["sig", "noise", "empty"], "reversed": ["empty", "noise", "sig"]},
                                 n_splits=2, random_state=0, progress=False, **TRAIN)
    finally:
        training.cross_validate_many = original
    return res, calls


def test_remove_and_retrain_table(roar, tiny):
    res, _ = roar
    t = res.table
    assert list(t.columns) == ["method", "fold", "n_removed", "n_channels", "channels", "removed", "f1_macro",
                               "accuracy", "n_subsets"]
    assert res.methods == ["oracle", "reversed", "Random"]
    assert len(t) == 3 * 3 * 2  # methods x steps (0, 1, 2) x folds
    assert sorted(t.n_removed.unique().tolist()) == [0, 1, 2]
    assert (t.n_channels == 3 - t.n_removed).all()
    o = t[(t.method == "oracle") & (t.fold == 0)].set_index("n_removed")
    assert o.loc[0, "channels"] == "sig,noise,empty" and o.loc[0, "removed"] == ""
    assert o.loc[1, "removed"] == "empty" and o.loc[2, "channels"] == "sig"
    r = t[(t.method == "reversed") & (t.fold == 0)].set_index("n_removed")
    assert r.loc[1, "removed"] == "sig" and r.loc[2, "channels"] == "empty"
    assert t.f1_macro.between(0, 1).all() and t.accuracy.between(0, 1).all()
    assert "Random" not in res.rankings  # Random is an average over subsets, not one ranking


def test_random_is_the_exact_average_over_subsets_and_methods_are_paired(roar, tiny):
    res, _ = roar
    # 3 channels: every subset of each size is averaged (1, 3 and 3 subsets), exactly
    assert res.params["random"] == {"0": {"n_subsets": 1, "of": 1, "exact": True},
                                    "1": {"n_subsets": 3, "of": 3, "exact": True},
                                    "2": {"n_subsets": 3, "of": 3, "exact": True}}
    rt = res.random_table
    assert len(rt) == (1 + 3 + 3) * 2 and rt.groupby("n_removed").channels.nunique().tolist() == [1, 3, 3]
    rnd = res.table[res.table.method == "Random"].set_index(["n_removed", "fold"])
    for (n, f), grp in rt.groupby(["n_removed", "fold"]):
        assert rnd.loc[(n, f), "f1_macro"] == pytest.approx(grp.f1_macro.mean())
        assert rnd.loc[(n, f), "n_subsets"] == len(grp)
    # paired: per fold, (method's curve average) - (Random's), t-interval over folds
    avg = res.per_fold_average()
    pr = res.paired().set_index("method")
    for m in ("oracle", "reversed"):
        d = (avg.loc[m] - avg.loc["Random"]).to_numpy()
        assert pr.loc[m, "mean_diff"] == pytest.approx(d.mean())
        assert pr.loc[m, "ci_low"] <= d.mean() <= pr.loc[m, "ci_high"]
    s = res.summary_frame().set_index("method")
    assert s.loc["oracle", "vs_random"] == pytest.approx(pr.loc["oracle", "mean_diff"])
    assert "paired" in res.summary() and "exact" in res.summary()
    # more subsets than random_draws: that many distinct subsets drawn uniformly, flagged as not exact
    from pxpermute.evaluation.roar import remove_and_retrain as rr

    calls = []
    import pxpermute.evaluation.roar as roar_mod

    def fake(ds, subsets, n_splits, **kw):
        calls.append(dict(subsets))
        rows = [{"subset": k, "fold": f, "channels": k, "f1_macro": len(v) / 3, "accuracy": 0.5}
                for k, v in subsets.items() for f in range(n_splits)]
        return pd.DataFrame(rows)

    orig = roar_mod.retrain_scores
    roar_mod.retrain_scores = fake
    try:
        X = np.zeros((12, 6, 4, 4), np.float32)
        y = np.arange(12) % 2
        out = rr((X, y), {"idx": list(range(6))}, n_splits=2, steps=[0, 3], random_draws=5, progress=False)
    finally:
        roar_mod.retrain_scores = orig
    assert out.params["random"]["3"] == {"n_subsets": 5, "of": 20, "exact": False}
    assert out.random_table[out.random_table.n_removed == 3].channels.nunique() == 5
    assert "Monte Carlo" in out.summary()


def test_oracle_curve_not_below_reversed(roar):
    res, _ = roar
    s = res.summary_frame().set_index("method")
    assert s.loc["oracle", "mean"] >= s.loc["reversed", "mean"]
    curve = res.curve().set_index(["method", "n_removed"])
    # with only the signal channel left the oracle keeps its score; without it the reversed ranking cannot
    assert curve.loc[("oracle", 2), "mean"] > curve.loc[("reversed", 2), "mean"]


def test_retraining_reuses_one_function_once_per_channel_set(roar):
    res, calls = roar
    distinct = {tuple(sorted(c.split(","))) for c in res.table.channels}
    assert len(calls) == len(distinct) == res.params["n_channel_sets"]
    assert res.params["n_trainings"] == 2 * len(distinct)  # folds x channel sets
    # the full set (n_removed = 0) is shared by all methods: identical scores, trained once
    full = res.table[res.table.n_removed == 0].pivot(index="fold", columns="method", values="f1_macro")
    assert (full.nunique(axis=1) == 1).all()


def test_summary_is_average_over_curve(roar):
    res, _ = roar
    t = res.table
    s = res.summary_frame().set_index("method")
    for m in res.methods:
        per_fold = [t[(t.method == m) & (t.fold == k)].f1_macro.mean() for k in (0, 1)]
        assert s.loc[m, "mean"] == pytest.approx(np.mean(per_fold))
        assert s.loc[m, "std"] == pytest.approx(np.std(per_fold, ddof=1))
        assert s.loc[m, "ci_low"] <= s.loc[m, "mean"] <= s.loc[m, "ci_high"]
    assert list(s["mean"]) == sorted(s["mean"], reverse=True)
    assert res.per_fold_average().shape == (3, 2)
    assert "oracle" in repr(res)


def test_plot_remove_and_retrain_lines(roar):
    from pxpermute.plotting import plot_remove_and_retrain

    res, _ = roar
    fig = plot_remove_and_retrain(res)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3
    assert len(ax.collections) == 3  # one CI band per method (Random included)
    assert "remove-and-retrain" in ax.get_title() and "tiny" in ax.get_title()
    ref = pd.DataFrame([[0.9, 0.8, 0.7]], index=["oracle"], columns=[0, 1, 2])
    fig2 = plot_remove_and_retrain(res, reference=ref, ci=False)
    assert len(fig2.axes[0].get_lines()) == 4
    assert len(fig2.axes[0].collections) == 0
    with pytest.raises(TypeError, match="ROARResult"):
        plot_remove_and_retrain(res.table)


def test_remove_and_retrain_accepts_importance_results_and_steps(tiny, monkeypatch):
    import pxpermute.training as training

    seen = []

    def fake_many(ds, subsets, *, n_splits, random_state, progress, **kw):
        # records the channel sets; returns scores = fraction of channels kept (no training needed here)
        from types import SimpleNamespace

        out = []
        for channels in subsets:
            seen.append(list(channels))
            f = len(channels) / ds.n_channels
            out.append(SimpleNamespace(n_splits=n_splits, models=[None] * n_splits, f1_macro=np.full(n_splits, f),
                                       accuracy=np.full(n_splits, f), test_indices=[np.arange(3)] * n_splits,
                                       class_names=ds.class_names, f1_per_class=np.full((n_splits, 2), f)))
        return out

    monkeypatch.setattr(training, "cross_validate_many", fake_many)
    imp = ImportanceResult([[0.1, 0.5, 0.0]], channel_names=tiny.channel_names, info={"method": "pxpermute"})
    res = remove_and_retrain(tiny, {"PXPermute": imp, "idx": [0, 2, 1]}, steps=[2, 0], include_random=False,
                             n_splits=3, progress=False)
    assert res.rankings["PXPermute"] == ["noise", "sig", "empty"]
    assert res.rankings["idx"] == ["sig", "empty", "noise"]
    assert sorted(res.table.n_removed.unique().tolist()) == [0, 2]
    assert len(res.table) == 2 * 2 * 3
    last = res.table[(res.table.method == "PXPermute") & (res.table.n_removed == 2)]
    assert (last.channels == "noise").all() and np.allclose(last.f1_macro, 1 / 3)
    assert sorted(map(tuple, seen)) == [(0,), (0, 1, 2), (1,)]

    with pytest.raises(ValueError, match="every channel once"):
        remove_and_retrain(tiny, {"bad": ["sig", "noise"]}, progress=False)
    with pytest.raises(ValueError, match="duplicates"):
        remove_and_retrain(tiny, {"bad": ["sig", "sig", "noise"]}, progress=False)
    with pytest.raises(ValueError, match=r"steps must lie in \[0, 2\]"):
        remove_and_retrain(tiny, {"a": [0, 1, 2]}, steps=[3], progress=False)
    with pytest.raises(ValueError, match="already called 'Random'"):
        remove_and_retrain(tiny, {"Random": [0, 1, 2]}, progress=False)
    with pytest.raises(TypeError, match="mapping"):
        remove_and_retrain(tiny, [[0, 1, 2]], progress=False)
    grouped = ImportanceResult([[0.1, 0.2]], channel_names=["g1", "g2"], groups={"g1": ["sig"], "g2": ["noise", "empty"]})
    with pytest.raises(ValueError, match="groups"):
        remove_and_retrain(tiny, {"g": grouped}, progress=False)


def test_retrain_scores_subsets(tiny):
    quick = {**TRAIN, "max_epochs": 1}
    df, cvs = retrain_scores(tiny, {"all": ["sig", "noise", "empty"], "sig": ["sig"], "again": [0, 2, 1]},
                             n_splits=2, random_state=0, per_class=True, return_cv=True, progress=False, **quick)
    assert list(df.columns[:7]) == ["subset", "fold", "n_channels", "channels", "f1_macro", "accuracy", "n_test"]
    assert {"f1[a]", "f1[b]"} <= set(df.columns)
    assert df.subset.tolist() == ["all", "all", "sig", "sig", "again", "again"]
    # the same channel set in another order is the same model (trained once, data-set order)
    np.testing.assert_array_equal(df[df.subset == "all"].f1_macro, df[df.subset == "again"].f1_macro)
    assert sorted(cvs) == ["sig", "sig,noise,empty"]
    assert cvs["sig"].models == [None, None]  # fitted networks are not kept unless asked for
    np.testing.assert_array_equal(cvs["sig"].f1_macro, df[df.subset == "sig"].f1_macro)
    assert df.n_test.sum() == 3 * len(tiny)
    unnamed, kept = retrain_scores(tiny, [["sig"]], n_splits=2, random_state=0, return_cv=True, keep_models=True,
                                   progress=False, **quick)
    assert unnamed.subset.tolist() == ["sig", "sig"]
    assert len(kept["sig"].models) == 2 and kept["sig"].models[0].channel_names_ == ["sig"]
    np.testing.assert_array_equal(unnamed.f1_macro, df[df.subset == "sig"].f1_macro)
    with pytest.raises(ValueError, match="empty"):
        retrain_scores(tiny, {"none": []}, progress=False)
    with pytest.raises(ValueError, match="unknown channel"):
        retrain_scores(tiny, {"x": ["DNA"]}, progress=False)
    with pytest.raises(TypeError, match="mapping"):
        retrain_scores(tiny, "sig", progress=False)


def test_ranking_channels():
    names = ["A", "B", "C"]
    assert ranking_channels(["B", 0, "C"], names) == ["B", "A", "C"]
    res = ImportanceResult([[0.1, 0.3, 0.2]], channel_names=names)
    assert ranking_channels(res, names) == ["B", "C", "A"]
    with pytest.raises(ValueError, match="does not have"):
        ranking_channels(ImportanceResult([[0.1, 0.3, 0.2]], channel_names=["A", "B", "X"]), names)
    with pytest.raises(TypeError, match="sequence"):
        ranking_channels("ABC", names)


def test_score_ranking():
    rel = [0.8, 0.0, 0.4, 0.0]
    names = ["BF", "Noise", "DNA", "Empty"]
    best = score_ranking(["BF", "DNA", "Noise", "Empty"], rel, channel_names=names)
    assert best["k"] == 2 and best["top_k_hit_rate"] == 1.0
    assert best["spearman"] > 0.8
    worst = score_ranking(["Empty", "Noise", "DNA", "BF"], rel, channel_names=names)
    assert worst["top_k_hit_rate"] == 0.0 and worst["spearman"] < -0.8
    half = score_ranking(["BF", "Noise", "DNA", "Empty"], rel, channel_names=names)
    assert half["top_k_hit_rate"] == 0.5
    # ties at the cut-off: either zero-relevance channel in the top 3 is a hit
    assert score_ranking(["BF", "DNA", "Empty", "Noise"], rel, channel_names=names, k=3)["top_k_hit_rate"] == 1.0
    # an ImportanceResult is scored by its importance values
    res = ImportanceResult([[0.9, 0.0, 0.5, 0.1]], channel_names=names)
    s = score_ranking(res, GroundTruth(rel, ["shape", "noise", "shape", "empty"]))
    assert s["top_k_hit_rate"] == 1.0 and s["spearman"] == pytest.approx(0.9486832980505138)
    with pytest.raises(ValueError, match="k must be"):
        score_ranking(res, rel, k=0)
    with pytest.raises(ValueError, match="no planted ground truth"):
        score_ranking(res, IFCDataset(np.zeros((2, 4, 8, 8)), [0, 1]))
    with pytest.raises(ValueError, match="relevance"):
        score_ranking(res, [[0.1, 0.2]])


def test_score_rankings_with_pixel_view():
    from pxpermute.datasets.synthetic import make_synthetic

    ds = make_synthetic("default", n_samples=16, image_size=16, random_state=0)
    names = ds.channel_names
    roles = ds.ground_truth.roles
    intensity = names[roles.index("intensity")]
    # a ranking that puts the intensity-only channel last is perfect for what pixel permutation can see
    order = [names[i] for i in np.argsort(-np.where(np.array(roles) == "intensity", -1.0, ds.ground_truth.relevance),
                                         kind="stable")]
    assert order[-1] == intensity
    df = score_rankings({"pixel-view": order}, ds, perturbation="pixel")
    full = score_rankings({"pixel-view": order}, ds)
    assert df.loc[0, "top_k_hit_rate"] == 1.0
    assert full.loc[0, "top_k_hit_rate"] < 1.0  # the full truth counts the intensity channel as relevant
    assert df.loc[0, "ranking"].split(", ") == order
    assert list(df.columns) == ["method", "spearman", "top_k_hit_rate", "k", "ranking"]


def test_plot_method_heatmap(roar):
    from pxpermute.plotting import plot_method_heatmap

    res, _ = roar
    fig = plot_method_heatmap({"tiny": res, "tiny again": res})
    ax = fig.axes[0]
    assert ax.collections[0].get_array().size == 3 * 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["tiny", "tiny again"]
    scores = pd.DataFrame({"method": ["A", "B"], "spearman": [0.5, -0.2]})
    fig = plot_method_heatmap({"d1": scores, "d2": scores, "d3": scores}, value="spearman", center=0)
    assert fig.axes[0].collections[0].get_array().size == 2 * 3
    tidy = pd.DataFrame({"method": ["A", "A", "B"], "dataset": ["x", "y", "x"], "value": [1.0, 2.0, 3.0]})
    assert plot_method_heatmap(tidy).axes[0].collections[0].get_array().size == 4  # NaN cell for (B, y)
    with pytest.raises(TypeError, match="ROARResult"):
        plot_method_heatmap({"d": [1, 2]})
    with pytest.raises(ValueError, match="column 'auc'"):
        plot_method_heatmap({"d": scores}, value="auc")


def test_roar_result_protocol(roar, tmp_path):
    from pxpermute.evaluation import PanelComparison

    res, _ = roar
    back = check_result_protocol(res, tmp_path, other_type=PanelComparison)
    assert isinstance(back, ROARResult)
    assert back.rankings == res.rankings and back.params == res.params and back.dataset_name == "tiny"
    pd.testing.assert_frame_equal(back.curve(), res.curve())
    text = res.summary()
    assert text.splitlines()[0] == res.title()
    # best method first, with its mean F1-macro over the curve and its interval
    best = res.summary_frame().iloc[0]
    rows = [ln for ln in text.splitlines() if ln.startswith("  ") and ln.split()[0] in res.methods]
    assert rows[0].split()[0] == best["method"] and f"{best['mean']:.3f}" in rows[0]
    assert max(len(ln) for ln in text.splitlines()) <= 88


# ---------------------------------------------------------------------------
# parallel retraining: n_jobs and a Dask cluster give the serial results
# ---------------------------------------------------------------------------
@pytest.fixture
def one_torch_thread():
    """Serial baselines with one torch thread: parallel workers below also train with one thread each.

    Torch's CPU kernels sum in a thread-count dependent order, so bit-identical
    runs need the same threads per training (see pxpermute.training.run_trainings).
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(cv):
    return [np.concatenate([p.detach().numpy().ravel() for p in net.module_.parameters()]) for net in cv.models]


def _assert_same_cv(a, b):
    np.testing.assert_array_equal(a.f1_macro, b.f1_macro)
    np.testing.assert_array_equal(a.f1_per_class, b.f1_per_class)
    for x, y in zip(a.y_pred + a.test_indices, b.y_pred + b.test_indices):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(x, y)


def test_cross_validate_n_jobs_equals_serial_and_counts_trainings(tiny, one_torch_thread, capsys):
    import joblib

    from pxpermute.training import cross_validate

    serial = cross_validate(tiny, n_splits=2, random_state=5, progress=False, **TRAIN)
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
        par = cross_validate(tiny, n_splits=2, random_state=5, n_jobs=2, progress=True, **TRAIN)
    err = capsys.readouterr().err
    assert "2/2" in err and "training" in err  # the bar counts finished trainings
    _assert_same_cv(par, serial)
    with pytest.raises(ValueError, match="n_jobs"):
        cross_validate(tiny, n_splits=2, n_jobs=0, progress=False, **TRAIN)


def test_remove_and_retrain_n_jobs_equals_serial(tiny, one_torch_thread):
    import joblib

    kw = dict(steps=[0, 2], include_random=False, n_splits=2, random_state=1, progress=False, **TRAIN)
    serial = remove_and_retrain(tiny, {"oracle": ["sig", "noise", "empty"]}, **kw)
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
        par = remove_and_retrain(tiny, {"oracle": ["sig", "noise", "empty"]}, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(par.table, serial.table)


def test_cross_validate_on_a_dask_cluster_equals_serial(tiny):
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install pxpermute[distributed])")
    import joblib
    import torch
    from distributed import Client, LocalCluster

    from pxpermute.training import cross_validate

    kw = dict(n_splits=2, random_state=7, channels=["sig", "noise"], progress=False, **TRAIN)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        # trainings keep the workers' torch threads (Dask starts them with OMP_NUM_THREADS=1)
        worker_threads = set(client.run(torch.get_num_threads).values())
        with joblib.parallel_config(backend="dask"):
            par = cross_validate(tiny, n_jobs=-1, **kw)
        pids = client.run(lambda: __import__("os").getpid())
    assert len(pids) == 2 and len(worker_threads) == 1
    n = torch.get_num_threads()
    torch.set_num_threads(worker_threads.pop())  # the serial baseline with the same threads per training
    try:
        serial = cross_validate(tiny, **kw)
    finally:
        torch.set_num_threads(n)
    _assert_same_cv(par, serial)


# ---------------------------------------------------------------------------
# k ablation across independent seeds (nested prefixes of one run flatter stability)
# ---------------------------------------------------------------------------
def test_k_ablation_reports_agreement_between_independent_seeds(tmp_path):
    import torch

    from pxpermute import channel_importance
    from pxpermute.evaluation import KAblation, k_ablation

    rng = np.random.default_rng(0)
    n = 80
    y = np.arange(n) % 2
    X = rng.normal(size=(n, 3, 6, 6)).astype(np.float32)
    X[y == 1, 0, :3] += 1.5  # a clear signal in the top half of ch0
    X[y == 1, 1, :3] += 0.4  # a weak one in ch1

    def model(x):
        return torch.stack([torch.zeros(len(x)), x[:, 0, :3].mean((1, 2)) + 0.3 * x[:, 1, :3].mean((1, 2)) - 0.7], 1)

    abl = k_ablation(model, (X, y), ks=(1, 2, 8), random_state=5, n_seeds=3, top=1, progress=False)
    assert len(abl.results) == 3 and abl.results[0] is abl.result
    for s, r in enumerate(abl.results):  # seed s is random_state + s, and no bootstrap is computed
        direct = channel_importance(model, (X, y), n_repeats=8, random_state=5 + s, n_bootstrap=0, progress=False)
        np.testing.assert_array_equal(r.importances, direct.importances)
    assert abl.result.bootstrap_importances is None
    st = abl.seed_table
    assert list(st.index) == [1, 2, 8] and (st.n_seeds == 3).all()
    assert st["same_ranking"].between(0, 1).all() and (st["same_top"] == 1.0).all()  # ch0 always on top
    assert abl.stable_k_seeds == 1
    # the columns are what they say: pairwise agreement of the k-prefixes of independent runs
    k = 2
    ranks = [list(r.importances[:k].mean(0).argsort()[::-1]) for r in abl.results]
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert st.loc[k, "same_ranking"] == pytest.approx(np.mean([ranks[i] == ranks[j] for i, j in pairs]))
    text = abl.summary()
    assert "independent seeds" in text and "nested" in text and "retraining" in text
    # saved and loaded with every seed
    back = KAblation.load(abl.save(tmp_path / "abl"))
    assert len(back.results) == 3
    pd.testing.assert_frame_equal(back.seed_table, abl.seed_table)
    # one seed: no between-seed table
    one = k_ablation(None, ks=(2, 8), result=abl.result)
    assert one.seed_table is None and one.stable_k_seeds is None
