"""Tests for pxpermute.baselines: occlusion and captum attributions reduced to one score per channel."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pxpermute import ImportanceResult, channel_importance
from pxpermute.baselines import (
    ATTRIBUTION_METHODS,
    attribution_importance,
    compare_methods,
    occlusion_importance,
    to_lrp_compatible,
)
from pxpermute.models import PercentileNormalization, SmallCNN, resnet18

METHODS = list(ATTRIBUTION_METHODS)


@pytest.fixture(scope="module")
def data():
    """3 channels, 16x16: ch0 has a bright square whose presence is the class, ch1 noise, ch2 empty."""
    rng = np.random.default_rng(0)
    n = 24
    y = np.arange(n) % 2
    X = rng.random((n, 3, 16, 16)).astype(np.float32) * 0.2
    X[:, 2] = 0.0
    X[y == 1, 0, 4:12, 4:12] += 1.0
    return X, y


class MaskedNet(nn.Module):
    """conv -> ReLU -> pool -> linear whose first conv ignores channel 1 (its weights are zero)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[0, 0, 1, 1] = 4.0  # feature 0 = brightness of channel 0
            self.conv.weight[1:, 2] = 0.3  # the empty channel feeds the others (it is 0 in the data)
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([0.0, -3.5]))  # threshold between the classes
            self.fc.weight[1, 0] = 4.0  # class 1 logit grows with channel-0 brightness

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu(self.conv(x)))))


def _wrapped_small_cnn(X):
    low, high = np.percentile(X, [1, 99], axis=(0, 2, 3))
    return nn.Sequential(PercentileNormalization(low, high), SmallCNN(3, 2, width=4)).eval()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_one_finite_score_per_channel(method, data):
    X, y = data
    model = _wrapped_small_cnn(X)
    res = attribution_importance(model, (X, y), method=method, n_steps=8, batch_size=10, progress=False)
    assert isinstance(res, ImportanceResult)
    assert res.importances.shape == (len(X), 3)  # one row per image
    assert res.importance.shape == (3,) and np.isfinite(res.importance).all()
    assert res.info["method"] == method
    assert res.info["n_samples"] == len(X)
    # the same table shape as PXPermute, so every method is compared by the same code
    px = channel_importance(model, (X, y), n_repeats=2, n_bootstrap=0, random_state=0, progress=False)
    assert list(res.to_frame().columns) == list(px.to_frame().columns)
    assert list(res.to_frame("repeat").columns) == list(px.to_frame("repeat").columns)
    assert res.to_frame()["method"].unique().tolist() == [method]


def test_ignored_channel_gets_zero_attribution(data):
    X, y = data
    model = MaskedNet().eval()
    for method in ("integrated_gradients", "deeplift", "lrp"):
        res = attribution_importance(model, (X, y), method=method, absolute=True, reduce="mean", n_steps=16,
                                     progress=False)
        assert res.importance[1] == 0.0, method  # ch1 never reaches the output
        assert res.importance[0] > 0.0, method
        assert res.importance[2] == 0.0, method  # empty input: zero attribution (input x gradient)


def test_occlusion_ignored_channel_zero_needed_channel_positive(data):
    X, y = data
    model = MaskedNet().eval()
    res = occlusion_importance(model, (X, y), progress=False)
    assert res.info["method"] == "occlusion"
    assert res.importances.shape == (1, 3)
    assert abs(res.importance[1]) < 1e-12  # the model ignores ch1
    assert res.importance[0] > 0.3  # ch0 decides the class
    # it is the shared engine with perturbation="fill"
    same = channel_importance(model, (X, y), perturbation="fill", n_repeats=1, progress=False)
    np.testing.assert_array_equal(res.importances, same.importances)
    with pytest.raises(TypeError, match="perturbation"):
        occlusion_importance(model, (X, y), perturbation="pixel", progress=False)


def test_reduction_options_and_batch_invariance(data):
    X, y = data
    X, y = X[:12], y[:12]
    model = _wrapped_small_cnn(X)
    a = attribution_importance(model, (X, y), method="integrated_gradients", n_steps=8, batch_size=5, progress=False)
    b = attribution_importance(model, (X, y), method="integrated_gradients", n_steps=8, batch_size=12, progress=False)
    np.testing.assert_allclose(a.importances, b.importances, rtol=1e-4, atol=1e-7)
    ab = attribution_importance(model, (X, y), method="integrated_gradients", n_steps=4, absolute=True, progress=False)
    assert (ab.importances >= 0).all()
    assert ab.info["absolute"] is True
    mean = attribution_importance(model, (X, y), method="guided_gradcam", reduce="mean", progress=False)
    med = attribution_importance(model, (X, y), method="guided_gradcam", reduce="median", progress=False)
    assert not np.allclose(mean.importances, med.importances)
    sub = attribution_importance(model, (X, y), method="lrp", max_samples=7, random_state=3, progress=False)
    assert sub.importances.shape == (7, 3) and sub.info["n_samples"] == 7
    pred = attribution_importance(model, (X, y), method="deeplift", target="prediction", progress=False)
    assert pred.info["target"] == "prediction" and np.isfinite(pred.importances).all()
    agg = attribution_importance(model, (X, y), method="deeplift", aggregate="median", progress=False)
    np.testing.assert_allclose(agg.importance, np.median(agg.importances, axis=0))


def test_normalization_is_applied_before_attribution(data):
    """A wrapped network gives the attributions of its body on the normalized images."""
    X, y = data
    wrapped = _wrapped_small_cnn(X)
    norm, body = wrapped[0], wrapped[1]
    Xn = norm(X)
    a = attribution_importance(wrapped, (X, y), method="deeplift", progress=False)
    b = attribution_importance(body, (Xn, y), method="deeplift", progress=False)
    np.testing.assert_allclose(a.importances, b.importances, rtol=1e-5, atol=1e-7)
    assert any("normalization" in s for s in a.info["adaptations"])


def test_resnet18_deeplift_and_lrp_are_adapted():
    rng = np.random.default_rng(1)
    X = rng.random((6, 3, 16, 16)).astype(np.float32)
    y = np.arange(6) % 2
    stock = resnet18(3, 2).eval()
    dl = attribution_importance(stock, (X, y), method="deeplift", progress=False)
    assert np.isfinite(dl.importance).all()
    assert any("to_captum_compatible" in s for s in dl.info["adaptations"])
    lrp = attribution_importance(stock, (X, y), method="lrp", progress=False)
    assert np.isfinite(lrp.importance).all()
    assert any("Addition_Module" in s for s in lrp.info["adaptations"])
    assert lrp.info["delta_median"] < 0.5  # relevance conserved up to bias absorption
    # the model given in is left untouched (stock blocks, in-place ReLUs)
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in stock.modules())
    # the conversion keeps the function
    x = torch.from_numpy(X)
    torch.testing.assert_close(to_lrp_compatible(stock)(x), stock(x), rtol=1e-4, atol=1e-5)


def test_lrp_without_addition_rule_is_refused(data, monkeypatch):
    """Without the residual-addition adaptation relevance explodes; the check refuses to report it."""
    import pxpermute.baselines as bl
    from pxpermute.models import to_captum_compatible

    monkeypatch.setattr(bl, "to_lrp_compatible", to_captum_compatible)  # plain '+' in every block
    X = np.random.default_rng(2).random((4, 3, 16, 16)).astype(np.float32)
    with pytest.raises(RuntimeError, match="did not conserve relevance"):
        attribution_importance(resnet18(3, 2).eval(), (X, np.array([0, 1, 0, 1])), method="lrp", progress=False)


def test_unsupported_layer_and_reused_module_errors(data):
    X, y = data

    class GeluNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = nn.GELU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flat = nn.Flatten()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.flat(self.pool(self.act(self.conv(x)))))

    with pytest.raises(ValueError, match=r"'act' \(GELU\)"):
        attribution_importance(GeluNet().eval(), (X, y), method="lrp", progress=False)

    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
            self.relu = nn.ReLU()
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.pool(self.relu(self.c2(self.relu(self.c1(x))))).flatten(1))

    with pytest.raises(ValueError, match=r"'relu' \(ReLU, 2 calls\)"):
        attribution_importance(Reuse().eval(), (X, y), method="deeplift", progress=False)
    # integrated gradients does not care
    assert np.isfinite(attribution_importance(Reuse().eval(), (X, y), n_steps=4, progress=False).importance).all()


def test_skorch_net_uses_module(data):
    from pxpermute.training import train_classifier

    X, y = data
    net = train_classifier((X, y), model="small_cnn", model_kwargs={"width": 4}, max_epochs=1, valid_fraction=None)
    res = attribution_importance(net, (X, y), method="guided_gradcam", progress=False)
    assert res.importances.shape == (len(X), 3)
    assert "IFCClassifier" in res.info["model"]
    assert res.info["layer"].endswith("0")  # the last conv of SmallCNN's last block: features.6.0


def test_bad_input(data):
    X, y = data
    model = _wrapped_small_cnn(X)
    with pytest.raises(ValueError, match="unknown method"):
        attribution_importance(model, (X, y), method="shap")
    with pytest.raises(ValueError, match="reduce"):
        attribution_importance(model, (X, y), reduce="max")
    with pytest.raises(ValueError, match="target"):
        attribution_importance(model, (X, y), target="true")
    with pytest.raises(TypeError, match="gradients"):
        attribution_importance(lambda x: x.mean((2, 3)), (X, y))
    with pytest.raises(ValueError, match="expects 3 input channels"):
        attribution_importance(model, (X[:, :2], y))
    with pytest.raises(ValueError, match="labels"):
        attribution_importance(model, (X, y + 5), progress=False)
    with pytest.raises(ValueError, match="max_samples"):
        attribution_importance(model, (X, y), max_samples=0)


def test_compare_methods_names_and_skip(data):
    X, y = data
    model = MaskedNet().eval()
    res = compare_methods(model, (X, y), methods=["pxpermute", "occlusion", "ig"], n_repeats=3, progress=False,
                          method_kwargs={"ig": {"n_steps": 4}})
    assert list(res) == ["PXPermute", "Occlusion", "IntegratedGradients"]
    assert res["PXPermute"].n_repeats == 3

    class Gelu(MaskedNet):
        def __init__(self):
            super().__init__()
            self.relu = nn.GELU()

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = compare_methods(Gelu().eval(), (X, y), methods=["occlusion", "lrp"], errors="skip", progress=False)
    assert list(out) == ["Occlusion"]
    assert any("LRP skipped" in str(x.message) for x in w)
    with pytest.raises(ValueError, match="GELU"):
        compare_methods(Gelu().eval(), (X, y), methods=["lrp"], progress=False)


def test_plot_method_comparison_bars(data):
    from pxpermute.datasets import GroundTruth
    from pxpermute.plotting import plot_method_comparison

    X, y = data
    model = MaskedNet().eval()
    res = compare_methods(model, (X, y), methods=["pxpermute", "occlusion", "lrp"], n_repeats=3, progress=False)
    fig = plot_method_comparison(res, ground_truth=GroundTruth([1.0, 0.0, 0.0], ["shape", "noise", "empty"]))
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * 3  # methods x channels
    labels = [t.get_text() for t in ax.get_legend().get_texts()][:3]
    # a method whose normalized() is NaN (top interval not above 0) is drawn raw and says so in its label
    assert [lab.replace(" (raw, not normalized)", "") for lab in labels] == ["PXPermute", "Occlusion", "LRP"]
    assert "k=3" in ax.get_title()
