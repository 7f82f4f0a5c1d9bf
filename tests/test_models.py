"""Tests for pxpermute.models: architectures, pretrained loading, captum compatibility, normalization."""
from __future__ import annotations

import urllib.error

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from pxpermute import IFCDataset
from pxpermute.models import (
    PercentileNormalization,
    SmallCNN,
    build_model,
    fit_percentile_normalization,
    last_conv_layer,
    resnet18,
    to_captum_compatible,
)


# ---------------------------------------------------------------------------
# shapes and construction
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("c,k", [(1, 2), (2, 3), (6, 5), (12, 7)])
def test_resnet18_shapes(c, k):
    m = resnet18(c, k).eval()
    assert m.conv1.in_channels == c
    assert m.fc.out_features == k
    with torch.no_grad():
        out = m(torch.randn(3, c, 32, 32))
    assert out.shape == (3, k)


@pytest.mark.parametrize("c,k,size", [(1, 2, 16), (3, 4, 32), (8, 3, 64)])
def test_small_cnn_shapes(c, k, size):
    m = SmallCNN(c, k, width=8).eval()
    with torch.no_grad():
        out = m(torch.randn(2, c, size, size))
    assert out.shape == (2, k)
    assert m.features[0][0].in_channels == c


def test_build_model_names_and_errors():
    assert isinstance(build_model("small_cnn", 2, 3, width=4), SmallCNN)
    r = build_model("resnet18", 4, 3)
    assert r.conv1.in_channels == 4 and r.fc.out_features == 3
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 2, 2)
    with pytest.raises(TypeError, match="invalid option"):
        build_model("small_cnn", 2, 2, pretrained=True)
    with pytest.raises(ValueError, match="n_classes"):
        resnet18(3, 1)
    with pytest.raises(TypeError, match="n_channels"):
        SmallCNN(2.0, 3)


def test_resnet18_input_size_resizes_inside_the_network():
    """input_size: the network takes native images and sees them bilinearly resized (issue 22)."""
    import pickle

    import torch.nn.functional as F

    torch.manual_seed(0)
    m = resnet18(3, 7, input_size=64).eval()
    stock = resnet18(3, 7).eval()
    assert set(m.state_dict()) == set(stock.state_dict())  # no extra keys: checkpoints interchange
    stock.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 40, 40)
    up = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        out = m(x)
        torch.testing.assert_close(out, stock(up))  # = the stock network on the 64 px images
        assert not torch.allclose(out, stock(x), atol=1e-4)  # ... and not on the native ones
        # the spatial map that reaches layer4: 2x2 from 64 px, 2x2 -> 1x1 from 40 -> native
        seen = {}
        hooks = [m.layer3.register_forward_hook(lambda mod, i, o: seen.__setitem__("m", o.shape[-2:])),
                 stock.layer3.register_forward_hook(lambda mod, i, o: seen.__setitem__("s", o.shape[-2:]))]
        m(x), stock(x)
        for h in hooks:
            h.remove()
    assert tuple(seen["m"]) == (4, 4) and tuple(seen["s"]) == (3, 3)
    # a non-square target and images already at the target size
    r = resnet18(2, 2, input_size=(48, 32)).eval()
    assert r.input_size == (48, 32)
    with torch.no_grad():
        assert r(torch.randn(1, 2, 20, 20)).shape == (1, 2)
    # pickles (skorch clones and saved nets) and converts for captum with the resize kept
    with torch.no_grad():
        torch.testing.assert_close(pickle.loads(pickle.dumps(m))(x), out)
        torch.testing.assert_close(to_captum_compatible(m)(x), out)
    assert build_model("resnet18", 3, 7, input_size=64).input_size == (64, 64)
    assert not hasattr(stock, "input_size")
    for bad in (0, 4, 64.0, True, (64,), (64, 64, 64), "64"):
        with pytest.raises(ValueError, match="input_size"):
            resnet18(3, 2, input_size=bad)


def test_last_conv_layer():
    m = SmallCNN(2, 2, width=4)
    assert last_conv_layer(m) is m.features[-1][0]
    r = resnet18(2, 2)
    assert last_conv_layer(r) is r.layer4[-1].conv2
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        last_conv_layer(nn.Linear(2, 2))


# ---------------------------------------------------------------------------
# pretrained weights (never touches the network)
# ---------------------------------------------------------------------------
def test_pretrained_offline_gives_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as info:
        resnet18(3, 2, pretrained=True)
    msg = str(info.value)
    assert "Could not download" in msg
    assert "TORCH_HOME" in msg
    assert torch.hub.get_dir() in msg
    assert "pretrained=False" in msg
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_pretrained_adapts_first_conv(monkeypatch):
    from torchvision.models import resnet18 as tv_resnet18

    torch.manual_seed(0)
    fake = tv_resnet18(weights=None).state_dict()
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append(url)
        return {k: v.clone() for k, v in fake.items()}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    m = resnet18(5, 4, pretrained=True)
    assert len(calls) == 1 and calls[0].startswith("https://")
    expected = fake["conv1.weight"].mean(dim=1, keepdim=True).repeat(1, 5, 1, 1)
    assert torch.allclose(m.conv1.weight, expected)
    assert torch.equal(m.layer2[0].conv1.weight, fake["layer2.0.conv1.weight"])
    assert m.fc.out_features == 4


# ---------------------------------------------------------------------------
# captum compatibility
# ---------------------------------------------------------------------------
def _relu_call_counts(model: nn.Module, x: torch.Tensor) -> list[int]:
    counts = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ReLU):
            counts[name] = 0

            def hook(m, i, o, name=name):
                counts[name] += 1

            handles.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return list(counts.values())


def test_captum_compatible_resnet_is_equivalent():
    torch.manual_seed(0)
    stock = resnet18(4, 3)
    compat = resnet18(4, 3, captum_compatible=True)
    compat.load_state_dict(stock.state_dict())  # same keys
    x = torch.randn(5, 4, 32, 32)
    stock.eval(), compat.eval()
    with torch.no_grad():
        assert torch.allclose(stock(x), compat(x), atol=1e-6)
    stock.train(), compat.train()  # batch statistics path as well
    with torch.no_grad():
        assert torch.allclose(stock(x), compat(x), atol=1e-5)
    relus = [m for m in compat.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(r.inplace for r in relus)
    assert all(n == 1 for n in _relu_call_counts(compat.eval(), x))
    # the stock network reuses its ReLUs: the property that breaks DeepLift
    assert any(n > 1 for n in _relu_call_counts(stock.eval(), x))


def test_to_captum_compatible_copies_and_deeplift_runs():
    from captum.attr import DeepLift

    torch.manual_seed(1)
    stock = resnet18(2, 2).eval()
    before = {k: v.clone() for k, v in stock.state_dict().items()}
    compat = to_captum_compatible(stock)
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in stock.modules())  # original untouched
    for k, v in stock.state_dict().items():
        assert torch.equal(v, before[k])
    x = torch.randn(2, 2, 32, 32)
    with pytest.warns(UserWarning):
        attr = DeepLift(compat).attribute(x, target=1)
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    with pytest.raises(TypeError, match="nn.Module"):
        to_captum_compatible("resnet")


def test_small_cnn_relus_single_use_and_deeplift():
    from captum.attr import DeepLift

    torch.manual_seed(0)
    m = SmallCNN(3, 2, width=4).eval()
    x = torch.randn(2, 3, 16, 16)
    counts = _relu_call_counts(m, x)
    assert len(counts) == 4 and all(n == 1 for n in counts)
    assert not any(r.inplace for r in m.modules() if isinstance(r, nn.ReLU))
    with pytest.warns(UserWarning):
        attr = DeepLift(m).attribute(x, target=0)
    assert attr.shape == x.shape


# ---------------------------------------------------------------------------
# percentile normalization
# ---------------------------------------------------------------------------
def _images(n=40, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 50.0, size=(n, c, 8, 8)).astype(np.float32)
    return x


def test_normalization_matches_numpy_percentiles():
    x = _images()
    norm = fit_percentile_normalization(x, max_samples=None)
    per_channel = x.transpose(1, 0, 2, 3).reshape(3, -1)
    low = np.percentile(per_channel, 1, axis=1)
    high = np.percentile(per_channel, 99, axis=1)
    np.testing.assert_allclose(norm.low.numpy(), low, rtol=1e-5)
    np.testing.assert_allclose(norm.high.numpy(), high, rtol=1e-5)
    out = norm(torch.from_numpy(x)).numpy()
    expected = np.clip((x - low[None, :, None, None]) / (high - low)[None, :, None, None], 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out.min() == 0.0 and out.max() == 1.0
    # numpy in -> numpy out (usable as an IFCDataset transform)
    out_np = norm(x)
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, expected, atol=1e-5)


def test_normalization_custom_q_and_no_clip():
    x = _images(seed=3)
    norm = fit_percentile_normalization(x, q=(5, 95), clip=False, max_samples=None)
    low = np.percentile(x[:, 1], 5)
    high = np.percentile(x[:, 1], 95)
    np.testing.assert_allclose(norm.low[1].item(), low, rtol=1e-5)
    out = norm(x)
    np.testing.assert_allclose(out[:, 1], (x[:, 1] - low) / (high - low), rtol=1e-4, atol=1e-5)
    assert out.max() > 1.0  # not clipped


def test_constant_channel_is_safe():
    x = _images()
    x[:, 1] = 7.0  # an empty / unused stain
    norm = fit_percentile_normalization(x)
    assert norm.low[1] == norm.high[1] == 7.0
    out = norm(torch.from_numpy(x))
    assert torch.isfinite(out).all()
    assert torch.all(out[:, 1] == 0)
    brighter = torch.from_numpy(x).clone()
    brighter[:, 1] = 7.5
    assert torch.isfinite(norm(brighter)).all()
    # a manually built layer with high == low behaves the same
    assert torch.isfinite(PercentileNormalization([1.0], [1.0])(torch.full((1, 1, 2, 2), 3.0))).all()


def test_normalization_state_dict_and_validation():
    norm = PercentileNormalization([0.0, 1.0], [2.0, 3.0])
    assert set(norm.state_dict()) == {"low", "high"}
    with pytest.raises(ValueError, match="2 channels"):
        norm(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="high must be >= low"):
        PercentileNormalization([1.0], [0.0])
    with pytest.raises(ValueError, match="same length"):
        PercentileNormalization([1.0, 2.0], [3.0])
    bad = _images()
    bad[3, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_percentile_normalization(bad)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fit_percentile_normalization(np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="q must"):
        fit_percentile_normalization(_images(), q=(99, 1))


def test_fit_on_indices_and_sampling():
    x = _images(n=60)
    x[30:] *= 10  # second half has a very different scale
    idx = np.arange(30)
    on_idx = fit_percentile_normalization(x, indices=idx, max_samples=None)
    direct = fit_percentile_normalization(x[:30], max_samples=None)
    torch.testing.assert_close(on_idx.low, direct.low)
    torch.testing.assert_close(on_idx.high, direct.high)
    # max_samples draws a subset of images: the result equals the percentiles of *some* 10 images
    sub = fit_percentile_normalization(x, max_samples=10, random_state=0)
    full = fit_percentile_normalization(x, max_samples=None)
    assert not torch.allclose(sub.high, full.high)
    # a pixel budget still gives sensible values
    small = fit_percentile_normalization(x[:30], max_pixels=300, max_samples=None)
    assert torch.all(small.low >= direct.low.min() - 1) and torch.all(small.high <= x[:30].max())


def test_fit_on_lazy_and_in_memory_dataset(tmp_path):
    x = _images(n=50, c=2)
    y = np.arange(50) % 2
    path = tmp_path / "cells.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("X", data=x)
    eager = fit_percentile_normalization(IFCDataset(x, y), max_samples=None)
    with h5py.File(path, "r") as fh:
        lazy_ds = IFCDataset(fh["X"], y)
        assert lazy_ds.is_lazy
        lazy = fit_percentile_normalization(lazy_ds, max_samples=20, random_state=1)
        lazy_all = fit_percentile_normalization(lazy_ds, max_samples=None)
    torch.testing.assert_close(lazy_all.low, eager.low)
    torch.testing.assert_close(lazy_all.high, eager.high)
    assert lazy.low.shape == (2,)
    # and the sampled lazy fit equals an in-memory fit on the same sampled images
    same = fit_percentile_normalization(IFCDataset(x, y), max_samples=20, random_state=1)
    torch.testing.assert_close(lazy.low, same.low)


def test_small_cnn_bn_momentum():
    assert all(b.momentum == 0.3 for b in SmallCNN(2, 2).modules() if isinstance(b, nn.BatchNorm2d))
    m = SmallCNN(2, 2, bn_momentum=None)
    assert all(b.momentum is None for b in m.modules() if isinstance(b, nn.BatchNorm2d))
