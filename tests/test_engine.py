"""The PXPermute engine against an obviously-correct loop, determinism, perturbation contracts, bad input."""
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DoubleLinear
from sklearn.metrics import f1_score

from pxpermute import IFCDataset, ImportanceResult, channel_importance
from pxpermute.perturb import (
    PerturbContext,
    perturb_pixel,
    perturb_sample,
    pixel_permutation,
    sample_permutation,
    seed_words,
)
from pxpermute.result import ResultFileError


class BandModel(torch.nn.Module):
    """Predicts the class from the position of the bright band in channel 0 (uses channel 0 only)."""

    def forward(self, x):
        rows = x[:, 0].mean(dim=2)  # (B, H)
        return torch.stack([rows[:, 2 * k : 2 * k + 2].mean(1) for k in range(3)], dim=1)


def reference_importance(predict, X, y, K, n_repeats, seed, perturbation="pixel"):
    """Plain loops: per channel, per repeat, permute each image with numpy, predict, sklearn F1."""
    N, C, H, W = X.shape
    base = f1_score(y, predict(X), average=None, labels=range(K), zero_division=0)
    imp = np.zeros((n_repeats, C))
    for c in range(C):
        for r in range(n_repeats):
            Xp = X.copy()
            if perturbation == "pixel":
                for i in range(N):
                    perm = pixel_permutation(seed, torch.tensor([i]), c, torch.tensor([r]), H * W)[0, 0].numpy()
                    Xp[i, c] = X[i, c].reshape(-1)[perm].reshape(H, W)
            else:
                donors = sample_permutation(seed, torch.arange(N), c, torch.tensor([r]), N)[0].numpy()
                Xp[:, c] = X[donors, c]
            score = f1_score(y, predict(Xp), average=None, labels=range(K), zero_division=0)
            imp[r, c] = np.mean(base - score)
    return imp


@pytest.mark.parametrize("perturbation", ["pixel", "sample"])
def test_engine_equals_plain_loop(perturbation):
    rng = np.random.default_rng(1)
    N, C, H, W, K = 60, 3, 5, 4, 3
    X = rng.normal(size=(N, C, H, W)).astype(np.float32)
    y = rng.integers(0, K, N)
    model = DoubleLinear(C, H * W, K, seed=3)
    predict = lambda a: model(torch.from_numpy(a)).argmax(1).numpy()  # noqa: E731
    seed = seed_words(123)
    ref = reference_importance(predict, X, y, K, 4, seed, perturbation)
    res = channel_importance(model, (X, y), n_repeats=4, random_state=123, perturbation=perturbation,
                             batch_size=16, progress=False)
    assert res.importances.shape == (4, C)
    np.testing.assert_allclose(res.importances, ref, atol=1e-6)
    assert np.abs(ref).max() > 0.01  # the comparison is not trivially between zeros


def test_same_seed_identical_for_any_batch_size(toy_problem):
    X, y, K = toy_problem
    model = DoubleLinear(3, 36, K, seed=0)
    runs = [channel_importance(model, (X, y), n_repeats=5, random_state=7, batch_size=b, progress=False)
            for b in (1, 7, 512)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.confusion, runs[0].confusion)
        np.testing.assert_array_equal(r.importances, runs[0].importances)
    other = channel_importance(model, (X, y), n_repeats=5, random_state=8, batch_size=7, progress=False)
    assert not np.array_equal(other.confusion, runs[0].confusion)


def test_pixel_permutation_keeps_multiset_and_other_channels(toy_problem):
    X, y, K = toy_problem
    x = torch.from_numpy(X[:20])
    ctx = PerturbContext(seed_words(0), len(X))
    out = perturb_pixel(x, torch.arange(20), [1], 1, torch.arange(3), ctx).view(3, 20, *x.shape[1:])
    for s in range(3):
        # every other channel untouched
        assert torch.equal(out[s][:, [0, 2]], x[:, [0, 2]])
        # channel 1: per image the same multiset of pixel values, but a different arrangement
        for i in range(20):
            assert torch.equal(out[s, i, 1].flatten().sort().values, x[i, 1].flatten().sort().values)
        assert not torch.equal(out[s][:, 1], x[:, 1])
    assert not torch.equal(out[0, :, 1], out[1, :, 1])  # repeats differ


def test_pixel_permutation_is_uniform():
    # position of pixel 0 after permutation of 6 pixels over many samples: ~uniform
    perm = pixel_permutation(seed_words(5), torch.arange(30000), 0, torch.tensor([0]), 6)[0]
    freq = np.bincount(perm[:, 0].numpy(), minlength=6) / 30000
    assert np.abs(freq - 1 / 6).max() < 0.01


def _reference_pixel_permutation(seed, idx, unit, reps, n_pixels):
    """The definition: stable argsort of the splitmix64 pixel keys (the generic, device-independent path)."""
    import pxpermute.perturb as pp

    base = pp._base_keys(seed, idx, unit, reps, pp._PIXEL_TAG)
    return torch.argsort(pp._mix64_(base[..., None] ^ pp._pixel_keys(n_pixels, base.device)), dim=-1, stable=True)


@pytest.mark.parametrize("n_pixels", [2, 3, 5, 64, 100, 1024, 1600, 4096])
def test_fast_cpu_pixel_permutation_equals_the_stable_argsort(n_pixels, monkeypatch):
    import pxpermute.perturb as pp
    from pxpermute.keys import seed_words

    for seed in (0, 7):
        for unit in (0, 5):
            idx, reps = torch.arange(0, 200, 3), torch.arange(3)
            s = seed_words(seed)
            ref = _reference_pixel_permutation(s, idx, unit, reps, n_pixels)
            fast = pp._pixel_permutation_cpu(pp._base_keys(s, idx, unit, reps, pp._PIXEL_TAG), n_pixels)
            assert fast is not None and torch.equal(fast, ref)
            assert torch.equal(pixel_permutation(s, idx, unit, reps, n_pixels), ref)
    # the exact fallback (taken when two keys share their high bits) gives the same permutations
    monkeypatch.setattr(pp, "_pixel_permutation_cpu", lambda base, n: None)
    s = seed_words(1)
    assert torch.equal(pixel_permutation(s, torch.arange(50), 2, torch.arange(2), n_pixels),
                       _reference_pixel_permutation(s, torch.arange(50), 2, torch.arange(2), n_pixels))


def test_sample_perturbation_permutes_channel_across_set(toy_problem):
    X, y, K = toy_problem
    N = len(X)
    xt = torch.from_numpy(X)

    def fetch(idx, chans):
        return xt[torch.from_numpy(idx)][:, list(chans)]

    ctx = PerturbContext(seed_words(1), N, fetch=fetch)
    out = perturb_sample(xt, torch.arange(N), [0], 0, torch.tensor([0, 1]), ctx).view(2, N, *X.shape[1:])
    for s in range(2):
        assert torch.equal(out[s][:, 1:], xt[:, 1:])  # other channels untouched
        # channel 0 across the set: the same images, re-assigned (a permutation of the set)
        got = out[s][:, 0].reshape(N, -1).numpy()
        ref = X[:, 0].reshape(N, -1)
        assert sorted(map(bytes, got)) == sorted(map(bytes, ref))
        assert not np.array_equal(got, ref)


def test_sample_permutation_is_bijection_for_many_sizes():
    for n in (2, 3, 5, 17, 64, 1000, 1025):
        d = sample_permutation(seed_words(3), torch.arange(n), 2, torch.arange(3), n)
        assert torch.equal(d.sort(dim=1).values, torch.arange(n).expand(3, n))


def test_informative_channel_ranks_first(toy_problem):
    X, y, K = toy_problem
    res = channel_importance(BandModel(), (X, y), n_repeats=10, random_state=0, progress=False)
    assert res.ranked_channels[0] == "ch0"
    assert res.importance[0] > 0.3
    np.testing.assert_array_equal(res.importances[:, 1:], 0)  # channels the model ignores score exactly 0
    assert res.baseline_score > 0.9
    assert np.all(res.ci_low <= res.importances_mean) and np.all(res.importances_mean <= res.ci_high)
    norm = res.normalized()
    assert norm["ch0"] == 1.0 and norm.min() == 0.0
    # occlusion through the same engine
    occ = channel_importance(BandModel(), (X, y), perturbation="fill", progress=False)
    assert occ.n_repeats == 1 and occ.importance[0] > 0.3 and occ.importance[1] == 0


def test_metrics_match_sklearn_per_class(toy_problem):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_score, recall_score

    X, y, K = toy_problem
    model = DoubleLinear(3, 36, K, seed=1)
    res = channel_importance(model, (X, y), n_repeats=2, random_state=0, progress=False)
    pred = model(torch.from_numpy(X)).argmax(1).numpy()
    np.testing.assert_allclose(res.baseline_scores, f1_score(y, pred, average=None), atol=1e-12)
    for metric, fn in [("precision", lambda a, b: precision_score(a, b, average=None, zero_division=0)),
                       ("recall", lambda a, b: recall_score(a, b, average=None)),
                       ("accuracy", lambda a, b: [accuracy_score(a, b)]),
                       ("balanced_accuracy", lambda a, b: [balanced_accuracy_score(a, b)])]:
        np.testing.assert_allclose(res.rescore(metric).baseline_scores, fn(y, pred), atol=1e-12)


def test_absent_class_is_left_out_without_nan_or_warnings(toy_problem, recwarn):
    X, y, K = toy_problem
    keep = y != 1
    res = channel_importance(BandModel(), (X[keep], y[keep]), n_classes=3, n_repeats=3, random_state=0, progress=False)
    assert list(res.present_classes) == [True, False, True]
    assert np.isnan(res.baseline_scores[1]) and np.isnan(res.drops[..., 1]).all()
    assert np.all(np.isfinite(res.importances))
    # importance = mean drop over the two present classes only
    np.testing.assert_allclose(res.importances, res.drops[..., [0, 2]].mean(-1))
    assert not [w for w in recwarn if "pxpermute" in str(w.filename) or "divide" in str(w.message)]


def test_input_kinds_give_identical_results(toy_problem):
    X, y, K = toy_problem
    model = DoubleLinear(3, 36, K, seed=2)
    ref = channel_importance(model, (X, y), n_repeats=3, random_state=1, progress=False)
    ds = IFCDataset(X, y, class_names=["a", "b", "c"])
    tds = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(tds, batch_size=13, shuffle=True)
    others = [
        channel_importance(model, ds, n_repeats=3, random_state=1, progress=False),
        channel_importance(model, torch.from_numpy(X), labels=torch.from_numpy(y), n_repeats=3, random_state=1, progress=False),
        channel_importance(model, tds, n_repeats=3, random_state=1, progress=False),
        channel_importance(model, loader, n_repeats=3, random_state=1, progress=False),
        channel_importance(lambda x: model(x), (X, y), n_repeats=3, random_state=1, progress=False),
    ]
    for o in others:
        np.testing.assert_array_equal(o.confusion, ref.confusion)
    assert others[0].class_names == ["a", "b", "c"]


def test_sklearn_estimator_and_label_outputs(toy_problem):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y, K = toy_problem
    est = make_pipeline(FunctionTransformer(lambda a: a.reshape(len(a), -1)), LogisticRegression(max_iter=500))
    est.fit(X, y)
    res = channel_importance(est, (X, y), n_repeats=3, random_state=0, progress=False)
    same = channel_importance(lambda x: est.predict(x.numpy()), (X, y), n_repeats=3, random_state=0, progress=False, n_classes=K)
    np.testing.assert_array_equal(res.confusion, same.confusion)
    assert res.ranked_channels[0] == "ch0" and res.importance[0] > 0.2


def test_skorch_net_uses_module(toy_problem):
    from skorch import NeuralNetClassifier

    X, y, K = toy_problem
    torch.manual_seed(0)
    net = NeuralNetClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(108, K)), max_epochs=3,
                              lr=0.1, train_split=None, verbose=0)
    net.fit(X, y)
    res = channel_importance(net, (X, y), n_repeats=3, random_state=0, progress=False)
    via_predict = channel_importance(lambda x: torch.from_numpy(net.predict(x.numpy())), (X, y), n_repeats=3,
                                     random_state=0, progress=False, n_classes=K)
    np.testing.assert_array_equal(res.confusion, via_predict.confusion)


def test_groups_score_channels_together(toy_problem):
    X, y, K = toy_problem
    X2 = np.concatenate([X, X[:, :1]], axis=1)  # ch3 = exact copy of ch0
    names = ["a", "b", "c", "a_copy"]

    class Either(torch.nn.Module):  # uses the mean of the two copies
        def forward(self, x):
            x = torch.cat([(x[:, :1] + x[:, 3:4]) / 2, x[:, 1:3]], 1)
            return BandModel()(x)

    res = channel_importance(Either(), (X2, y), groups={"A": ["a", "a_copy"], "b": ["b"]}, channel_names=names,
                             n_repeats=3, random_state=0, progress=False)
    assert res.channel_names == ["A", "b"] and res.groups == {"A": ["a", "a_copy"], "b": ["b"]}
    assert res.importance[0] > 0.3 and res.importance[1] == 0


def test_save_load_roundtrip_and_corruption(tmp_path, toy_problem):
    X, y, K = toy_problem
    res = channel_importance(BandModel(), (X, y), n_repeats=3, random_state=0, progress=False)
    path = res.save(tmp_path / "run")
    back = ImportanceResult.load(path)
    np.testing.assert_array_equal(back.importances, res.importances)
    np.testing.assert_array_equal(back.confusion, res.confusion)
    assert back.channel_names == res.channel_names and back.info["random_state"] == 0
    assert back.to_frame().equals(res.to_frame())
    npz = tmp_path / "run.npz"
    npz.write_bytes(npz.read_bytes()[:-20])  # truncate
    with pytest.raises(ResultFileError, match="corrupted or truncated"):
        ImportanceResult.load(tmp_path / "run")
    (tmp_path / "run.json").write_text('{"format": "pxperm')
    with pytest.raises(ResultFileError, match="not valid JSON"):
        ImportanceResult.load(tmp_path / "run.json")
    with pytest.raises(ResultFileError, match="missing"):
        ImportanceResult.load(tmp_path / "nothing")


def test_tables_and_plots(toy_problem):
    X, y, K = toy_problem
    res = channel_importance(BandModel(), (X, y), n_repeats=4, random_state=0, progress=False)
    df = res.to_frame()
    assert list(df.sort_values("rank").channel) == res.ranked_channels
    assert len(res.to_frame("repeat")) == 4 * 3
    cls = res.to_frame("class")
    assert len(cls) == 4 * 3 * K and np.allclose(cls["baseline"] - cls["score"], cls["drop"])
    fig = res.plot()
    assert len(fig.axes[0].patches) == 3
    assert "k=4" in fig.axes[0].get_title() and "seed=0" in fig.axes[0].get_title()
    assert "ch0" in res.summary().splitlines()[2]


# ---- bad input -----------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(toy_problem):
    X, y, K = toy_problem
    m = BandModel()
    kw = dict(n_repeats=2, progress=False)
    conv = torch.nn.Sequential(torch.nn.Conv2d(4, 3, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(ValueError, match="expects 4 input channels but the data have 3"):
        channel_importance(conv, (X, y), **kw)
    Xn = X.copy()
    Xn[5, 1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf .*samples \[5\]"):
        channel_importance(m, (Xn, y), **kw)
    Xi = X.copy()
    Xi[7, 0, 1, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        channel_importance(m, (Xi, y), **kw)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        channel_importance(m, (X, np.where(y == 0, 5, y)), n_classes=3, **kw)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        channel_importance(m, (X, np.where(y == 0, -1, y)), n_classes=3, **kw)
    with pytest.raises(ValueError, match="empty"):
        channel_importance(m, (X[:0], y[:0]), **kw)
    with pytest.raises(ValueError, match="mismatched lengths"):
        channel_importance(m, (X, y[:-1]), **kw)
    with pytest.raises(ValueError, match="n_repeats must be an integer >= 1, got 0"):
        channel_importance(m, (X, y), n_repeats=0, progress=False)
    with pytest.raises(TypeError, match="n_repeats must be an integer"):
        channel_importance(m, (X, y), n_repeats=2.5, progress=False)
    with pytest.raises(ValueError, match=r"perturbation must be one of \['fill', 'pixel', 'sample'\], got 'shuffle'"):
        channel_importance(m, (X, y), perturbation="shuffle", **kw)
    with pytest.raises(ValueError, match="metric must be one of .*got 'auc'"):
        channel_importance(m, (X, y), metric="auc", **kw)
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        channel_importance(m, (X[:, 0], y), **kw)
    with pytest.raises(ValueError, match="returned scores for 3 classes but the data have 4"):
        channel_importance(m, (X, y), n_classes=4, **kw)
    with pytest.raises(TypeError, match="integer class indices"):
        channel_importance(m, (X, y + 0.5), **kw)
    with pytest.raises(ValueError, match="model failed on a batch of shape"):
        channel_importance(lambda x: x.reshape(7, -1), (X, y), n_classes=3, **kw)
    with pytest.raises(ValueError, match="unknown channel name"):
        channel_importance(m, (X, y), groups={"g": ["nope"]}, **kw)


def test_title_names_k_for_permutations_only():
    perm = ImportanceResult(np.zeros((7, 2)), channel_names=["a", "b"], info={"method": "pxpermute", "random_state": 3})
    attr = ImportanceResult(np.zeros((50, 2)), channel_names=["a", "b"], info={"method": "deeplift", "n_samples": 50})
    assert "k=7" in perm.title() and "seed=3" in perm.title()
    assert "k=" not in attr.title() and "n=50" in attr.title()


def _fold_results():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3, 8, 8)).astype("float32")
    y = rng.integers(0, 2, 60)
    X[y == 1, 0, :4] += 2

    def model(x):
        return torch.stack([torch.zeros(len(x)), x[:, 0, :4].mean((1, 2)) - 1], 1)

    kw = dict(progress=False)
    a = channel_importance(model, (X[:30], y[:30]), n_repeats=4, random_state=0, **kw)
    b = channel_importance(model, (X[30:], y[30:]), n_repeats=3, random_state=1, **kw)
    return a, b


def test_concat_pools_folds_and_keeps_them(tmp_path):
    a, b = _fold_results()
    pooled = ImportanceResult.concat({"f0": a, "f1": b}, name="split")
    assert pooled.importances.shape == (7, 3) and pooled.n_folds == 2
    np.testing.assert_allclose(pooled.importances_mean, np.vstack([a.importances, b.importances]).mean(0))
    np.testing.assert_allclose(pooled.fold_importances, np.vstack([a.importance, b.importance]))
    np.testing.assert_array_equal(pooled.fold("f1").importances, b.importances)
    rep = pooled.to_frame("repeat")
    assert list(rep.columns[:3]) == ["method", "split", "repeat"]
    assert rep.groupby("split").size().to_dict() == {"f0": 4 * 3, "f1": 3 * 3}
    assert rep["repeat"].max() == 3  # counted within the fold
    cls = pooled.to_frame("class")
    # each fold keeps its own baseline: score = that fold's baseline - drop
    f1 = cls[cls.split == "f1"]
    np.testing.assert_allclose(f1.baseline.to_numpy()[: len(b.class_names)], b.baseline_scores)
    fold = pooled.to_frame("fold")
    assert fold.shape == (6, 5) and fold.n_repeats.tolist() == [4] * 3 + [3] * 3
    assert "x 2 splits" in pooled.title()
    assert "pooled over 2 splits (f0, f1)" in pooled.summary()
    # rescoring works fold by fold
    np.testing.assert_allclose(pooled.rescore("accuracy").fold_importances[1], b.rescore("accuracy").importance)
    # the pooled result round-trips through a file, fold structure included
    back = ImportanceResult.load(pooled.save(tmp_path / "pooled"))
    assert back.fold_keys == ["f0", "f1"] and back.fold_name == "split"
    pd.testing.assert_frame_equal(back.to_frame("class"), cls)


def test_concat_rejects_what_cannot_be_pooled():
    a, b = _fold_results()
    with pytest.raises(ValueError, match="same channels"):
        ImportanceResult.concat([a, ImportanceResult(b.importances, channel_names=["x", "y", "z"], info=b.info)])
    with pytest.raises(ValueError, match="metric="):
        ImportanceResult.concat([a, b.rescore("accuracy")])
    with pytest.raises(ValueError, match="at least one"):
        ImportanceResult.concat([])
    with pytest.raises(ValueError, match="distinct"):
        ImportanceResult.concat([a, b], keys=["k", "k"])
    with pytest.raises(TypeError, match="item 1 is a dict"):
        ImportanceResult.concat([a, {}])
    with pytest.raises(ValueError, match="already pooled"):
        ImportanceResult.concat([ImportanceResult.concat([a, b]), a])
