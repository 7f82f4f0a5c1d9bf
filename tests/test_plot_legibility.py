"""Every figure function stays legible with many channels and long names.

The rule checked on the drawn figure (Agg renderer, after the function returned):

1. no two visible tick labels of the same axis overlap: their renderer bounding boxes (axis-aligned, so rotated text
   counts with its full box) may touch but not intersect by more than 1 pixel;
2. axes titles in the same row do not overlap each other;
3. every axes that shows tick labels (colorbars aside) keeps a drawing area of at least ``MIN_AXES_INCHES``
   (1.6 x 1.1 inches): long labels may not squash the plot into a strip;
4. all tick labels lie inside the figure.

The inputs: 24 channels and 8 classes, every name 30+ characters long.
"""
import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from pxpermute import ImportanceResult, plotting  # noqa: E402
from pxpermute.datasets import IFCDataset  # noqa: E402

C, K = 24, 8
CHANNELS = [f"channel {i:02d}: anti-CD{i} antibody long name" for i in range(C)]
CLASSES = [f"class {k}: a rather long cell-type name" for k in range(K)]
assert min(map(len, CHANNELS + CLASSES)) >= 30


def _result(seed=0, method="pxpermute"):
    rng = np.random.default_rng(seed)
    drops = rng.random((12, C, K)) * 0.3
    return ImportanceResult(drops.mean(2), channel_names=CHANNELS, class_names=CLASSES, drops=drops,
                            baseline_scores=np.full(K, 0.9), info={"method": method, "data": "synthetic", "seed": 0})


def _dataset():
    rng = np.random.default_rng(1)
    x = rng.random((48, C, 16, 16)).astype("float32")
    x[:, 3] = 0.0  # an empty channel
    return IFCDataset(x, np.arange(48) % K, channel_names=CHANNELS, class_names=CLASSES)


def _k_ablation():
    from pxpermute.panel import k_ablation

    ds = _dataset()
    w = np.random.default_rng(2).normal(size=(C, K))

    def model(x):  # a cheap callable: per-channel means -> scores
        import torch

        return torch.as_tensor(x).float().mean(dim=(2, 3)) @ torch.as_tensor(w).float()

    return k_ablation(model, ds, ks=[2, 4, 8], random_state=0)


def _cv():
    from pxpermute.training import CVResult

    rng = np.random.default_rng(3)
    return CVResult(models=[None] * 5, train_indices=[np.arange(3)] * 5, test_indices=[np.arange(3)] * 5,
                    f1_macro=rng.random(5), accuracy=rng.random(5), f1_per_class=rng.random((5, K)),
                    y_pred=[np.zeros(3, int)] * 5, channels=CHANNELS, channel_indices=list(range(C)),
                    class_names=CLASSES, random_state=0)


CASES = {
    "plot_importance": lambda: plotting.plot_importance(_result()),
    "plot_importance_grouped": lambda: plotting.plot_importance([_result(0), _result(1)], labels=["fold 1", "fold 2"]),
    "plot_per_class": lambda: plotting.plot_per_class(_result()),
    "plot_montage": lambda: plotting.plot_montage(_dataset(), n_per_class=1),
    "plot_method_schematic": lambda: plotting.plot_method_schematic(_dataset(), channel=0),
    "plot_method_comparison": lambda: plotting.plot_method_comparison(
        {f"method number {i} with a long name": _result(i) for i in range(4)}),
    "plot_method_heatmap": lambda: plotting.plot_method_heatmap(pd.DataFrame(
        np.random.default_rng(4).random((8, 6)), index=[f"method {i} with a long descriptive name" for i in range(8)],
        columns=[f"data set {j} with a long descriptive name" for j in range(6)])),
    "plot_k_ablation": lambda: plotting.plot_k_ablation(_k_ablation()),
}
if hasattr(plotting, "plot_cv_result"):
    CASES["plot_cv_result"] = lambda: plotting.plot_cv_result(_cv())


def _boxes(axis, renderer):
    """Boxes of the drawn tick labels: visible, non-empty, at a tick inside the view limits."""
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(1.0, abs(hi - lo))
    return [t.get_window_extent(renderer) for loc, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if t.get_visible() and t.get_text().strip() and lo - eps <= loc <= hi + eps]


def _overlap(a, b, horizontal):
    if horizontal:
        return min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1
    return min(a.y1, b.y1) - max(a.y0, b.y0) > 1 and min(a.x1, b.x1) - max(a.x0, b.x0) > 1


def check_legible(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    w_in, h_in = fig.get_size_inches()
    titles = {}
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        colorbar = getattr(ax, "_colorbar", None) is not None or ax.get_label() == "<colorbar>"
        for axis, horizontal in ((ax.xaxis, True), (ax.yaxis, False)):
            boxes = _boxes(axis, renderer)
            for i, a in enumerate(boxes):
                assert a.x0 >= -1 and a.y0 >= -1 and a.x1 <= W + 1 and a.y1 <= H + 1, f"tick label outside the figure: {a}"
                for b in boxes[i + 1:]:
                    assert not _overlap(a, b, horizontal), f"overlapping tick labels {a} and {b}"
            if boxes and not colorbar:
                pos = ax.get_position()
                assert pos.width * w_in >= plotting.MIN_AXES_INCHES[0] - 0.05, f"axes squashed: {pos.width * w_in:.2f} in wide"
                assert pos.height * h_in >= plotting.MIN_AXES_INCHES[1] - 0.05, f"axes squashed: {pos.height * h_in:.2f} in high"
        if ax.get_title():
            titles.setdefault(round(ax.get_position().y1, 2), []).append(ax.title.get_window_extent(renderer))
    for row in titles.values():
        for i, a in enumerate(row):
            for b in row[i + 1:]:
                assert not _overlap(a, b, True), f"overlapping axes titles {a} and {b}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_figure_is_legible_with_many_long_names(name):
    import matplotlib.pyplot as plt

    fig = CASES[name]()
    try:
        check_legible(fig)
    finally:
        plt.close(fig)


def test_the_rule_catches_an_illegible_figure():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(range(C), np.ones(C))
    ax.set_xticks(range(C))
    ax.set_xticklabels(CHANNELS)
    fig.tight_layout()
    with pytest.raises(AssertionError):
        check_legible(fig)
    plt.close(fig)


def test_montage_empty_channel_looks_empty():
    fig = plotting.plot_montage(_dataset(), n_per_class=1)
    empty = [ax.images[0].get_array() for ax in fig.axes if ax.images][3::C]  # channel 3 of every row
    assert all(float(np.max(img)) <= 0.05 for img in empty)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_montage_is_a_grid_sized_from_content():
    """Many cells per class wrap into a grid (7 classes x 6 cells x 3 channels: 3 cells per row, 2 rows per class),
    not one long column; axes stay in cell order, channels consecutive; the suptitle stays above every panel title."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(5)
    ds = IFCDataset(rng.random((70, 3, 16, 16)).astype("float32"), np.arange(70) % 7, channel_names=["BF", "DNA", "DF"])
    fig = plotting.plot_montage(ds, n_per_class=6)
    try:
        assert len(fig.axes) == 7 * 6 * 3
        x0 = sorted({round(ax.get_position().x0, 3) for ax in fig.axes})
        y0 = sorted({round(ax.get_position().y0, 3) for ax in fig.axes})
        assert len(x0) == 9 and len(y0) == 14, (len(x0), len(y0))
        w, h = fig.get_size_inches()
        assert 0.4 <= w / h <= 2.5, (w, h)
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        sup = fig._suptitle.get_window_extent(r)
        assert all(ax.title.get_window_extent(r).y1 <= sup.y0 + 1 for ax in fig.axes if ax.get_title())
        # first cell of the first class: channels in order along x
        assert [a.get_title() for a in fig.axes[:3]] == ["BF", "DNA", "DF"]
        assert fig.axes[0].get_position().x0 < fig.axes[1].get_position().x0 < fig.axes[2].get_position().x0
    finally:
        plt.close(fig)
