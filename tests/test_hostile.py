"""Hostile but plausible inputs: each ends in a correct result or a clear error (issue 20).

The table ``CASES`` holds one row per case: an id, how to build the model and the
data, extra keyword arguments, and the expected outcome -- an exception type and
a substring of its message (``raises``), a warning (``warns``), or the result of
the clean reference model on the clean data (``same``: bit-identical importances).
A new case is one line.  Cases that need several steps (files, checkpoints, the
caller's model state) follow the table; property-based tests (hypothesis) close
the file.
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pxpermute import ImportanceResult, channel_importance
from pxpermute._validation import ParameterError
from pxpermute.checkpoint import CheckpointError

N, C, H, W = 24, 3, 6, 6
KW = {"n_repeats": 3, "random_state": 0, "progress": False}


def make_data(n: int = N, seed: int = 0, c: int = C) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 has a bright top half in channel 0; channels 1.. are noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, c, H, W)).astype(np.float32)
    X[y == 1, 0, : H // 2] += 2.0
    return X, y


class Spatial(nn.Module):
    """Class-1 score: top half minus bottom half of channel 0 (pixel permutation destroys it)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scale * (x[:, 0, : H // 2].mean((1, 2)) - x[:, 0, H // 2 :].mean((1, 2))) - 1.0
        return torch.stack([torch.zeros_like(z), z], 1)


class OtherForward(Spatial):
    """Same weights as Spatial, another forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flip(2))


class Inplace(nn.Module):
    """Edits its input in place (``x /= 2``), then undoes the scale -- a pure function of the original input."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Spatial()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x /= 2.0
        x[:, 1:] = 0.0
        return self.inner(x * 2.0)


class InplaceEstimator:
    """sklearn-style estimator whose predict writes into the array it gets."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        X *= 0.5
        return (X[:, 0, : H // 2].mean((1, 2)) - X[:, 0, H // 2 :].mean((1, 2)) > 0.5).astype(int)


class LateConv(nn.Module):
    """The first registered Conv2d (head, 8 -> 2) is not the input layer (stem, 3 -> 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(8, 2, 1)
        self.stem = nn.Conv2d(C, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x)).mean((2, 3))


class EightChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(C, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class ItemDataset(torch.utils.data.Dataset):
    """Map-style Dataset over images with a label function ``label(i)``."""

    def __init__(self, X: np.ndarray, label) -> None:
        self.X, self.label = X, label

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.X[i]), self.label(i)


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X, self.y = X, y

    def __iter__(self):
        return iter(zip(self.X, self.y))


def with_nan(i: int, c: int = 1):
    X, y = make_data()
    X[i, c, 0, 0] = np.nan
    return X, y


def nan_donors():
    """NaN in channel 1 of every image except the two that max_samples=2 evaluates: donors must be checked."""
    from pxpermute.stats import stratified_subsample

    X, y = make_data()
    keep = stratified_subsample(y, 2, random_state=KW["random_state"])
    X[np.setdiff1d(np.arange(len(y)), keep), 1, 0, 0] = np.nan
    return X, y


class Threshold:
    """A fitted sklearn-style estimator: its state is the threshold ``t``."""

    def __init__(self, t: float) -> None:
        self.t = t

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (X[:, 0, : H // 2].mean((1, 2)) > self.t).astype(int)


def float_labels(i: int, y: np.ndarray) -> float:
    return 0.1 if y[i] == 0 else 0.9


# -- expected outcomes ----------------------------------------------------------
def raises(exc: type[BaseException], match: str) -> tuple:
    return ("raises", exc, match)


def warns(warning: type[Warning], match: str) -> tuple:
    return ("warns", warning, match)


def same() -> tuple:
    """Bit-identical importances to the clean Spatial model on the clean data (same kwargs)."""
    return ("same",)


def ok() -> tuple:
    """Runs and returns a finite result (models that differ from the reference)."""
    return ("ok",)


DATA = make_data
Y = make_data()[1]
nan = float("nan")

# id | model factory | data factory | extra kwargs | expected outcome
CASES = [
    ("model edits its input in place", Inplace, DATA, {}, same()),
    ("model edits input in place, sample", Inplace, DATA, {"perturbation": "sample"}, same()),
    ("model edits input in place, fill", Inplace, DATA, {"perturbation": "fill"}, same()),
    ("sklearn predict writes into its input", InplaceEstimator, DATA, {}, same()),
    ("NaN model outputs", lambda: lambda x: torch.full((len(x), 2), nan), DATA, {}, raises(ValueError, "NaN or inf outputs")),
    ("inf in one output", lambda: lambda x: torch.where(torch.arange(len(x))[:, None] == 0, math.inf, Spatial()(x)),
     DATA, {}, raises(ValueError, "NaN or inf outputs for 1 of")),
    ("fill_value NaN", Spatial, DATA, {"perturbation": "fill", "fill_value": nan}, raises(ParameterError, "fill_value")),
    ("fill_value inf", Spatial, DATA, {"perturbation": "fill", "fill_value": math.inf}, raises(ParameterError, "fill_value")),
    ("Dataset float labels 0.1/0.9", Spatial, lambda: ItemDataset(DATA()[0], lambda i: float_labels(i, Y)), {},
     raises(TypeError, "not rounded or truncated")),
    ("array float labels 0.1/0.9", Spatial, lambda: (DATA()[0], np.where(Y == 0, 0.1, 0.9)), {},
     raises(TypeError, "not rounded or truncated")),
    ("Dataset whole-number float labels", Spatial, lambda: ItemDataset(DATA()[0], lambda i: float(Y[i])), {}, same()),
    ("Dataset tensor labels", Spatial, lambda: ItemDataset(DATA()[0], lambda i: torch.tensor(Y[i])), {}, same()),
    ("Dataset one-hot labels", Spatial, lambda: ItemDataset(DATA()[0], lambda i: np.eye(2)[Y[i]]), {},
     raises(ValueError, "one-hot")),
    ("array one-hot labels", Spatial, lambda: (DATA()[0], np.eye(2)[Y]), {}, raises(ValueError, "one-hot")),
    ("Dataset string labels", Spatial, lambda: ItemDataset(DATA()[0], lambda i: "ab"[Y[i]]), {},
     raises(TypeError, "map class names to indices")),
    ("array string labels", Spatial, lambda: (DATA()[0], np.array(["a", "b"])[Y]), {},
     raises(TypeError, "map class names to indices")),
    ("Dataset NaN label", Spatial, lambda: ItemDataset(DATA()[0], lambda i: nan if i == 3 else int(Y[i])), {},
     raises(TypeError, "integer class indices")),
    ("Dataset label out of range", Spatial, lambda: ItemDataset(DATA()[0], lambda i: 5 if i == 3 else int(Y[i])),
     {"n_classes": 2}, raises(ValueError, "labels must lie in [0, 2)")),
    ("IterableDataset", Spatial, lambda: Stream(*DATA()), {}, raises(TypeError, "IterableDataset")),
    ("model returns a dict", lambda: lambda x: {"logits": Spatial()(x)}, DATA, {},
     raises(ValueError, "dict with keys ['logits']")),
    ("model returns None", lambda: lambda x: None, DATA, {}, raises(ValueError, "returned None")),
    ("model returns a tuple", lambda: lambda x: (Spatial()(x), x), DATA, {}, raises(ValueError, "tuple of 2 items")),
    ("model returns class names", lambda: lambda x: np.array(["a"] * len(x)), DATA, {},
     raises(ValueError, "not names")),
    ("model returns one column", lambda: lambda x: Spatial()(x)[:, 1:], DATA, {}, raises(ValueError, "score column")),
    ("duplicate channel names", Spatial, DATA, {"channel_names": ["BF", "BF", "DNA"]}, raises(ValueError, "distinct")),
    ("duplicate class names", Spatial, DATA, {"class_names": ["live", "live"]}, raises(ValueError, "distinct")),
    ("n_repeats 10**9", Spatial, DATA, {"n_repeats": 10**9}, raises(ValueError, "far too many")),
    ("n_repeats 0", Spatial, DATA, {"n_repeats": 0}, raises(ParameterError, "n_repeats")),
    ("float64 model", lambda: Spatial().double(), DATA, {}, same()),
    ("float64 images", Spatial, lambda: (DATA()[0].astype(np.float64), Y), {}, same()),
    ("first Conv2d is not the input layer", LateConv, DATA, {}, ok()),
    ("first Conv2d is not the input layer, sample", LateConv, DATA, {"perturbation": "sample"}, ok()),
    ("model for 8 channels on 3", EightChannels, DATA, {}, raises(ValueError, "expects 8 input channels but the data have 3")),
    ("NaN in an evaluated image", Spatial, lambda: with_nan(5), {}, raises(ValueError, "NaN or inf values (samples [5]")),
    ("NaN in donors outside max_samples", Spatial, nan_donors, {"perturbation": "sample", "max_samples": 2},
     raises(ValueError, "donor images")),
    ("callable wrapping a train-mode BatchNorm net",
     lambda: functools.partial(lambda net, x: net(x), WithBatchNorm().train()), DATA, {},
     warns(UserWarning, "training mode")),
    ("train-mode nn.Module is evaluated in eval mode", lambda: Spatial().train(), DATA, {}, same()),
    ("empty data", Spatial, lambda: (DATA()[0][:0], Y[:0]), {}, raises(ValueError, "empty")),
    ("labels and images of different length", Spatial, lambda: (DATA()[0], Y[:-1]), {}, raises(ValueError, "mismatched")),
    ("labels as a column vector", Spatial, lambda: (DATA()[0], Y[:, None]), {}, same()),
    ("images without a channel axis", Spatial, lambda: (DATA()[0][:, 0], Y), {}, raises(ValueError, "(N, C, H, W)")),
]


@functools.cache
def _reference(items: tuple) -> np.ndarray:
    kw = {**KW, **dict(items)}
    return channel_importance(Spatial(), make_data(), **kw).importances


@pytest.mark.parametrize("build_model, build_data, kwargs, expected",
                         [pytest.param(*row[1:], id=row[0]) for row in CASES])
def test_hostile_input(build_model, build_data, kwargs, expected):
    model, data = build_model(), build_data()
    kw = {**KW, **kwargs}
    outcome = expected[0]
    if outcome == "raises":
        with pytest.raises(expected[1]) as info:
            channel_importance(model, data, **kw)
        assert expected[2] in str(info.value), f"message lacks {expected[2]!r}: {info.value}"
        return
    if outcome == "warns":
        with pytest.warns(expected[1], match=expected[2]):
            channel_importance(model, data, **kw)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a correct result comes without warnings
        # except the documented note that a channel the reference model ignores scores exactly 0
        warnings.filterwarnings("ignore", message=".*importance exactly 0 under pixel permutation")
        res = channel_importance(model, data, **kw)
    assert np.isfinite(res.importances).all()
    if outcome == "same":
        np.testing.assert_array_equal(res.importances, _reference(tuple(sorted(kwargs.items()))))


def test_table_reference_is_meaningful():
    """The reference model finds channel 0 and gives the ignored channels exactly 0."""
    imp = _reference(())
    assert imp[:, 0].min() > 0.3 and (imp[:, 1:] == 0).all()


# -- several steps: the caller's model, files, checkpoints ------------------------
def test_caller_model_mode_restored():
    net = WithBatchNorm().train()
    net.bn.eval()  # mixed modes come back as they were
    before = {n: m.training for n, m in net.named_modules()}
    stats = net.bn.running_mean.clone()
    channel_importance(net, make_data(), **KW)
    assert {n: m.training for n, m in net.named_modules()} == before
    assert torch.equal(net.bn.running_mean, stats)
    # also when the run fails after the engine took the model
    with pytest.raises(ValueError, match="far too many"):
        channel_importance(net, make_data(), **{**KW, "n_repeats": 10**9})
    assert {n: m.training for n, m in net.named_modules()} == before


def test_caller_model_device_restored():
    net = Spatial()
    channel_importance(net, make_data(), device="cpu", **KW)
    assert net.scale.device.type == "cpu"
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        channel_importance(net, make_data(), device="cuda", **KW)
        assert net.scale.device.type == "cpu"


def test_save_keeps_the_full_name(tmp_path):
    X, y = make_data()
    for seed in (1, 2):
        channel_importance(Spatial(), (X, y), **{**KW, "random_state": seed}).save(tmp_path / f"run.seed{seed}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.seed1.json", "run.seed1.npz",
                                                          "run.seed2.json", "run.seed2.npz"]
    for seed in (1, 2):
        assert ImportanceResult.load(tmp_path / f"run.seed{seed}").info["random_state"] == seed
    # a .json / .npz suffix still names the pair
    assert ImportanceResult.load(tmp_path / "run.seed1.npz").info["random_state"] == 1


def test_numpy_integer_class_names_round_trip(tmp_path):
    res = channel_importance(Spatial(), make_data(), class_names=[np.int64(0), np.int64(1)], **KW)
    res.save(tmp_path / "r")
    back = ImportanceResult.load(tmp_path / "r")
    assert back.class_names == [0, 1]
    np.testing.assert_array_equal(back.importances, res.importances)


def test_failed_save_leaves_the_earlier_result_loadable(tmp_path, monkeypatch):
    import pxpermute._fileio as fileio

    good = channel_importance(Spatial(), make_data(), **KW)
    good.save(tmp_path / "run")
    other = channel_importance(Spatial(), make_data(), **{**KW, "random_state": 5})
    calls = {"n": 0}
    real_fsync = fileio.os.fsync

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:  # the second file of the pair: disk full
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        other.save(tmp_path / "run")
    monkeypatch.undo()
    back = ImportanceResult.load(tmp_path / "run")
    np.testing.assert_array_equal(back.importances, good.importances)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.npz"]  # no temporary files left


def _checkpointed(model, data, path, **kw):
    return channel_importance(model, data, checkpoint=path, chunk_repeats=2, **{**KW, "n_repeats": 4, **kw})


def test_checkpoint_refuses_other_forward_same_weights(tmp_path):
    ck = tmp_path / "ck.pxp"
    _checkpointed(Spatial(), make_data(), ck)
    with pytest.raises(CheckpointError, match="model differs"):
        _checkpointed(OtherForward(), make_data(), ck)


def test_checkpoint_covers_every_image(tmp_path):
    """Changing 13 of 120 images (none of them a probe image) is noticed, finished checkpoint or not."""
    X, y = make_data(120)
    ck = tmp_path / "ck.pxp"
    full = _checkpointed(Spatial(), (X, y), ck)
    X2 = X.copy()
    changed = [i for i in range(1, 120, 9) if i not in np.linspace(0, 119, 8).round()][:13]
    assert len(changed) == 13
    X2[changed, 2] += 0.5  # a channel the model ignores: the probes and the result would not tell
    with pytest.raises(CheckpointError, match="different data"):
        _checkpointed(Spatial(), (X2, y), ck)  # finished checkpoint: the data are read once to check them
    half = tmp_path / "half.pxp"
    _checkpointed(Spatial(), (X, y), half, n_repeats=2)
    with pytest.raises(CheckpointError, match="different data"):
        _checkpointed(Spatial(), (X2, y), half)  # unfinished: checked while the next chunk streams
    again = _checkpointed(Spatial(), (X, y), half, batch_size=7)  # same data, another batch size: resumes
    np.testing.assert_array_equal(again.importances, full.importances)
    assert again.info["resumed_repeats"] == 2


def test_checkpoint_model_identity_for_estimators_and_callables(tmp_path):
    ck = tmp_path / "ck.pxp"
    _checkpointed(Threshold(0.5), make_data(), ck)
    with pytest.raises(CheckpointError, match="model differs"):
        _checkpointed(Threshold(0.7), make_data(), ck)  # same type, other fitted state
    net = Spatial()

    def wrapper(x):  # the module is found through the closure; same code both times
        return net(x)

    ck2 = tmp_path / "ck2.pxp"
    _checkpointed(wrapper, make_data(), ck2)
    _checkpointed(wrapper, make_data(), ck2)  # unchanged: resumes
    with torch.no_grad():
        net.scale.fill_(2.0)  # retrained weights
    with pytest.raises(CheckpointError, match="model differs"):
        _checkpointed(wrapper, make_data(), ck2)


def test_checkpoint_warns_when_a_model_is_known_by_name_only(tmp_path):
    lookup = {"w": 1.0}

    def model(x, table=lookup):  # weights in a dict the engine cannot see
        return Spatial()(x) * table["w"]

    with pytest.warns(UserWarning, match="identified by its name"):
        _checkpointed(model, make_data(), tmp_path / "ck.pxp")


# -- properties (hypothesis) -------------------------------------------------------
PROPS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(batch_size=st.integers(1, 40), chunk=st.integers(1, 4), seed=st.integers(0, 2**16),
       perturbation=st.sampled_from(["pixel", "sample"]))
def test_property_batch_size_and_chunking_do_not_change_the_result(batch_size, chunk, seed, perturbation):
    data = make_data(13, seed=seed % 7)
    kw = {**KW, "random_state": seed, "n_repeats": 4, "perturbation": perturbation}
    ref = channel_importance(Spatial(), data, **kw)
    got = channel_importance(Spatial(), data, batch_size=batch_size, chunk_repeats=chunk, **kw)
    np.testing.assert_array_equal(got.confusion, ref.confusion)
    np.testing.assert_array_equal(got.importances, ref.importances)


class Ignores(nn.Module):
    """Uses every channel except ``skip`` (spatially, so every perturbation can matter)."""

    def __init__(self, skip: int, n_channels: int) -> None:
        super().__init__()
        self.keep = [c for c in range(n_channels) if c != skip]
        torch.manual_seed(skip)
        self.w = nn.Parameter(torch.randn(len(self.keep), H, W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x[:, self.keep] * self.w).sum((1, 2, 3))
        return torch.stack([-z, z], 1)


@PROPS
@given(skip=st.integers(0, C), seed=st.integers(0, 2**16),
       perturbation=st.sampled_from(["pixel", "sample", "fill"]), fill_value=st.floats(-3, 3))
def test_property_ignored_channel_scores_exactly_zero(skip, seed, perturbation, fill_value):
    n_channels = C + 1
    data = make_data(16, seed=seed % 5, c=n_channels)
    skip = min(skip, n_channels - 1)
    res = channel_importance(Ignores(skip, n_channels), data, **{**KW, "random_state": seed},
                             perturbation=perturbation, fill_value=fill_value)
    assert (res.importances[:, skip] == 0).all()
    assert (res.drops[:, skip] == 0).all()


@PROPS
@given(order_seed=st.integers(0, 2**32 - 1), seed=st.integers(0, 5))
def test_property_fill_ignores_the_order_of_the_images(order_seed, seed):
    X, y = make_data(20, seed=seed)
    order = np.random.default_rng(order_seed).permutation(len(y))
    model = Ignores(2, C)
    a = channel_importance(model, (X, y), perturbation="fill", **KW)
    b = channel_importance(model, (X[order], y[order]), perturbation="fill", **KW)
    np.testing.assert_array_equal(a.confusion, b.confusion)
    np.testing.assert_array_equal(a.importances, b.importances)
