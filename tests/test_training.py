"""Tests for pxpermute.training: recipe, raw-image prediction, channel subsets, lazy data, CV."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pxpermute import IFCDataset
from pxpermute.models import PercentileNormalization, SmallCNN
from pxpermute.training import (
    CVResult,
    IFCClassifier,
    _BatchView,
    build_network,
    cross_validate,
    make_classifier,
    train_classifier,
)

FAST = dict(model="small_cnn", model_kwargs={"width": 8}, batch_size=32)


def easy_problem(n=240, size=16, seed=0, offset=1000.0, n_classes=2):
    """Class k = a bright square at a random place in channel k; channel 2 is noise.

    Raw intensities sit around ``offset`` (like raw camera counts), so the network
    only works if the normalization inside it is applied.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    x = rng.normal(offset, 20.0, size=(n, 3, size, size)).astype(np.float32)
    for i in range(n):
        r, c = rng.integers(0, size - 6, 2)
        x[i, y[i], r : r + 6, c : c + 6] += 150.0
    return x, y


@pytest.fixture(scope="module")
def easy_ds():
    x, y = easy_problem()
    return IFCDataset(x, y, channel_names=["A", "B", "noise"], class_names=["a", "b"])


@pytest.fixture(scope="module")
def trained(easy_ds):
    return train_classifier(easy_ds, max_epochs=4, **FAST)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def test_small_cnn_learns_easy_problem_and_predicts_raw_images(trained, easy_ds):
    x_test, y_test = easy_problem(n=100, seed=1)  # fresh cells, raw scale
    acc = float(np.mean(trained.predict(x_test) == y_test))
    assert acc >= 0.9
    # the fitted module itself takes raw images
    with torch.no_grad():
        logits = trained.module_.eval()(torch.from_numpy(x_test))
    assert np.mean(logits.argmax(1).numpy() == y_test) >= 0.9
    # predict also accepts an IFCDataset and float64 arrays
    np.testing.assert_array_equal(trained.predict(IFCDataset(x_test, y_test)), trained.predict(x_test.astype(np.float64)))
    assert trained.predict_proba(x_test).shape == (100, 2)


def test_normalizer_is_first_layer_fitted_on_training_part_only(trained, easy_ds):
    net = trained
    assert isinstance(net.module_, torch.nn.Sequential)
    assert isinstance(net.module_[0], PercentileNormalization)
    assert isinstance(net.module_[1], SmallCNN)
    tr, va = net.train_indices_, net.valid_indices_
    assert np.intersect1d(tr, va).size == 0
    assert tr.size + va.size == len(easy_ds)
    assert va.size == pytest.approx(0.2 * len(easy_ds), abs=1)
    # stratified validation split
    assert np.bincount(easy_ds.labels[va]).tolist() == [va.size // 2, va.size // 2]
    x_tr = easy_ds.images[tr]
    for c in range(3):
        np.testing.assert_allclose(net.module_[0].low[c].item(), np.percentile(x_tr[:, c], 1), rtol=1e-5)
        # upper value: the 99th percentile of per-image maxima (normalization_high="image_max", the default),
        # so bright cells are not clipped flat
        high = max(np.percentile(x_tr[:, c].reshape(len(x_tr), -1).max(axis=1), 99), np.percentile(x_tr[:, c], 1))
        np.testing.assert_allclose(net.module_[0].high[c].item(), high, rtol=1e-5)
    assert "valid_f1" in net.history[-1]
    assert net.channel_names_ == ["A", "B", "noise"]
    # a pickled net carries the weights, not the data set (validation view dropped)
    import pickle

    blob = pickle.dumps(net)
    assert len(blob) < easy_ds.images.nbytes
    clone = pickle.loads(blob)
    assert clone.train_split is None and net.train_split is not None
    np.testing.assert_array_equal(clone.predict(easy_ds), net.predict(easy_ds))
    assert net.class_names_ == ["a", "b"]


def test_channel_subset_training(easy_ds):
    net = train_classifier(easy_ds, channels=["B", "noise"], max_epochs=1, **FAST)
    assert net.module_[1].features[0][0].in_channels == 2
    assert net.module_[0].n_channels == 2
    assert net.channels_ == [1, 2]
    assert net.channel_names_ == ["B", "noise"]
    # normalization of the subset = the subset's channels of a full fit
    x_tr = easy_ds.images[net.train_indices_]
    np.testing.assert_allclose(net.module_[0].low[0].item(), np.percentile(x_tr[:, 1], 1), rtol=1e-5)
    assert net.predict(easy_ds.select_channels(["B", "noise"])).shape == (len(easy_ds),)
    with pytest.raises(ValueError, match="takes 2 channels.*select_channels"):
        net.predict(easy_ds.images)
    net_idx = train_classifier(easy_ds, channels=[0], max_epochs=1, **FAST)
    assert net_idx.module_[1].features[0][0].in_channels == 1


def test_training_is_deterministic_and_leaves_global_rng_alone(easy_ds):
    state = torch.random.get_rng_state()
    a = train_classifier(easy_ds, max_epochs=2, **FAST)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_classifier(easy_ds, max_epochs=2, **FAST)
    for (ka, va), (kb, vb) in zip(a.module_.state_dict().items(), b.module_.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    c = train_classifier(easy_ds, max_epochs=2, random_state=7, **FAST)
    assert not torch.equal(a.module_[1].classifier.weight, c.module_[1].classifier.weight)


def test_arrays_input_and_no_validation():
    x, y = easy_problem(n=80)
    net = train_classifier((x, y), valid_fraction=None, max_epochs=1, **FAST)
    assert net.valid_indices_.size == 0 and net.train_indices_.size == 80
    assert "valid_f1" not in net.history[-1]
    net2 = train_classifier((torch.from_numpy(x), torch.from_numpy(y)), train_indices=np.arange(40), max_epochs=1, **FAST)
    assert net2.train_indices_.size + net2.valid_indices_.size == 40


class RecordingArray:
    """A lazily indexed array that records how many images each read returns."""

    def __init__(self, data):
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.reads: list[int] = []

    def __getitem__(self, item):
        out = self._data[item]
        self.reads.append(int(np.asarray(out).shape[0]) if np.ndim(out) == 4 else 1)
        return out

    def __array__(self, dtype=None, copy=None):  # a full read
        self.reads.append(self.shape[0])
        return self._data if dtype is None else self._data.astype(dtype)


def test_lazy_dataset_is_streamed_not_loaded():
    x, y = easy_problem(n=200)
    arr = RecordingArray(x)
    ds = IFCDataset(arr, y, channel_names=["A", "B", "noise"])
    assert ds.is_lazy
    net = train_classifier(ds, channels=["A", "B"], max_epochs=2, normalization_samples=64, **FAST)
    assert arr.reads, "the lazy array was never read"
    assert max(arr.reads) <= 64  # batches (32) and normalization blocks (64), never all 200 cells
    assert net.module_[1].features[0][0].in_channels == 2
    x_test, y_test = easy_problem(n=60, seed=5)
    assert net.predict(x_test[:, :2]).shape == (60,)


# ---------------------------------------------------------------------------
# recipe details
# ---------------------------------------------------------------------------
def test_oversampling_balances_training_batches():
    rng = np.random.default_rng(0)
    y = np.array([0] * 180 + [1] * 20)
    ds = IFCDataset(rng.random((200, 1, 4, 4)).astype(np.float32), y)
    fractions = {}
    for oversample in (True, False):
        net = make_classifier(1, 2, oversample=oversample, batch_size=50, **{k: v for k, v in FAST.items() if k != "batch_size"})
        net.initialize()
        seen = np.concatenate([yb.numpy() for _, yb in net.get_iterator(_BatchView(ds), training=True)])
        assert seen.size == 200
        fractions[oversample] = seen.mean()
    assert 0.38 < fractions[True] < 0.62
    assert fractions[False] == pytest.approx(0.1)  # without replacement: every cell once


def test_no_batch_of_one_in_training():
    x, y = easy_problem(n=33)
    net = make_classifier(3, 2, batch_size=32, model="small_cnn", model_kwargs={"width": 4})
    net.initialize()
    sizes = [len(yb) for _, yb in net.get_iterator(_BatchView(IFCDataset(x, y)), training=True)]
    assert 1 not in sizes


def test_augmentation_flips_and_noise_only_in_training():
    net = make_classifier(1, 2, noise_std=0.01, **FAST)
    net.initialize()
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8).repeat(200, 1, 1, 1)
    out = net._augment_batch(x)
    candidates = torch.stack([x[0], x[0].flip(-1), x[0].flip(-2), x[0].flip(-1).flip(-2)])
    resid = (out[:, None] - candidates[None]).flatten(2).pow(2).mean(-1)  # (200, 4)
    best = resid.argmin(1)
    assert set(best.tolist()) == {0, 1, 2, 3}  # all four flip combinations occur
    noise = out - candidates[best]
    assert noise.std().item() == pytest.approx(0.01, rel=0.1)
    # evaluation is deterministic (no augmentation)
    p1 = net.predict_proba(x[:16].numpy())
    p2 = net.predict_proba(x[:16].numpy())
    np.testing.assert_array_equal(p1, p2)


def test_make_classifier_recipe_and_custom_model():
    net = make_classifier(4, 3, **FAST)
    assert isinstance(net, IFCClassifier)
    assert net.optimizer is torch.optim.AdamW and net.lr == 1e-3
    names = [name for name, _ in net.callbacks]
    assert names == ["valid_f1", "lr_scheduler", "early_stopping"]
    sched = dict(net.callbacks)["lr_scheduler"]
    assert sched.policy is torch.optim.lr_scheduler.ReduceLROnPlateau and sched.kwargs["factor"] == 0.5
    assert sched.kwargs["patience"] == 5 and sched.monitor == "valid_f1"
    # a callable model and an nn.Module instance
    m = build_network(4, 3, model=lambda c, k: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * 16, k)))
    assert m[1][1].in_features == 64
    proto = SmallCNN(4, 3, width=4)
    copy1 = build_network(4, 3, model=proto)
    assert copy1[1] is not proto and torch.equal(copy1[1].classifier.weight, proto.classifier.weight)
    # sklearn-style clone keeps the recipe parameters
    from sklearn.base import clone

    cl = clone(net)
    assert cl.augment is True and cl.random_state == 42 and cl.module__model == "small_cnn"


def test_make_classifier_fit_directly_on_arrays():
    x, y = easy_problem(n=100)
    net = make_classifier(3, 2, max_epochs=1, **FAST).fit(x, y)
    assert isinstance(net.module_[0], torch.nn.Identity)
    assert net.predict(x).shape == (100,)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
def test_input_validation(easy_ds):
    x, y = easy_problem(n=60)
    bad = x.copy()
    bad[5, 1, 2, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        train_classifier((bad, y), max_epochs=1, **FAST)
    bad[5, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        train_classifier((bad, y), max_epochs=1, **FAST)
    y_rare = y.copy()
    y_rare[:] = 0
    y_rare[0] = 1
    with pytest.raises(ValueError, match="at least 2 cells per class.*class1 \\(1\\)"):
        train_classifier((x, y_rare), max_epochs=1, **FAST)
    with pytest.raises(ValueError, match="single class"):
        train_classifier((x, np.zeros(60, int)), max_epochs=1, **FAST)
    with pytest.raises(ValueError, match="unknown model"):
        train_classifier((x, y), model="vgg99")
    with pytest.raises(ValueError, match="unknown channel"):
        train_classifier(easy_ds, channels=["DNA"])
    with pytest.raises(TypeError, match="IFCDataset or an \\(images, labels\\)"):
        train_classifier("data.h5")
    with pytest.raises(ValueError, match="valid_fraction"):
        train_classifier((x, y), valid_fraction=1.5)
    with pytest.raises(ValueError, match="max_epochs"):
        make_classifier(3, 2, max_epochs=0)


def test_cross_validate_validation():
    x, y = easy_problem(n=60)
    y3 = y.copy()
    y3[:3] = 2  # a class with 3 cells
    with pytest.raises(ValueError, match="n_splits=5 is larger.*class2 \\(3\\).*n_splits <= 3"):
        cross_validate((x, y3), n_splits=5, progress=False, **FAST)
    with pytest.raises(ValueError, match="n_splits must be an int >= 2"):
        cross_validate((x, y), n_splits=1, progress=False)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        cross_validate((bad, y), n_splits=2, progress=False, max_epochs=1, **FAST)


# ---------------------------------------------------------------------------
# cross-validation
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_cross_validate_partition_scores_and_determinism(easy_ds, capsys):
    kw = dict(n_splits=3, channels=["A", "B"], max_epochs=3, lr=3e-3, **{**FAST, "batch_size": 16})
    cv = cross_validate(easy_ds, progress=True, **kw)
    assert "cross-validation" in capsys.readouterr().err  # tqdm bar on stderr
    assert isinstance(cv, CVResult) and cv.n_splits == 3 and len(cv.models) == 3
    allidx = np.sort(np.concatenate(cv.test_indices))
    np.testing.assert_array_equal(allidx, np.arange(len(easy_ds)))  # the test folds partition the data
    for tr, te, net in zip(cv.train_indices, cv.test_indices, cv.models):
        assert np.intersect1d(tr, te).size == 0 and tr.size + te.size == len(easy_ds)
        # every fold trains only on its training cells (train + validation split inside)
        np.testing.assert_array_equal(np.sort(np.concatenate([net.train_indices_, net.valid_indices_])), np.sort(tr))
        assert net.module_[0].n_channels == 2
    assert cv.channels == ["A", "B"] and cv.channel_indices == [0, 1]
    assert cv.f1_macro.shape == (3,) and cv.accuracy.shape == (3,) and cv.f1_per_class.shape == (3, 2)
    # scores are the held-out scores of the stored predictions
    from sklearn.metrics import f1_score

    for k in range(3):
        y_true = easy_ds.labels[cv.test_indices[k]]
        assert cv.f1_macro[k] == pytest.approx(f1_score(y_true, cv.y_pred[k], average="macro"))
        assert cv.accuracy[k] == pytest.approx(np.mean(y_true == cv.y_pred[k]))
    assert cv.f1_macro_mean > 0.8
    df = cv.to_frame()
    assert len(df) == 3 * (2 + 2)
    assert set(df["metric"]) == {"f1_macro", "accuracy", "f1"}
    assert df.loc[df.metric == "f1_macro", "value"].tolist() == pytest.approx(cv.f1_macro.tolist())
    summ = cv.summary_frame()
    assert summ.loc[summ.metric == "f1_macro", "mean"].item() == pytest.approx(cv.f1_macro_mean)
    assert "F1-macro" in repr(cv)

    again = cross_validate(easy_ds, progress=False, **kw)
    np.testing.assert_array_equal(again.f1_macro, cv.f1_macro)
    for a, b in zip(cv.y_pred, again.y_pred):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(cv.test_indices, again.test_indices):
        np.testing.assert_array_equal(a, b)
    w_a = cv.models[0].module_[1].classifier.weight
    w_b = again.models[0].module_[1].classifier.weight
    assert torch.equal(w_a, w_b)

    other = cross_validate(easy_ds, progress=False, random_state=3, **{**kw, "max_epochs": 1})
    assert any(not np.array_equal(a, b) for a, b in zip(other.test_indices, cv.test_indices))


def test_random_state_none_gives_fresh_randomness():
    x, y = easy_problem(n=40)
    a = make_classifier(3, 2, random_state=None, valid_fraction=None, max_epochs=1, **FAST).fit(x, y)
    b = make_classifier(3, 2, random_state=None, valid_fraction=None, max_epochs=1, **FAST).fit(x, y)
    assert not torch.equal(a.module_[1].classifier.weight, b.module_[1].classifier.weight)
