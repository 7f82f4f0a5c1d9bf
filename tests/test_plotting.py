"""What the figures claim: the panel decision is drawn, and noise is never min-max stretched.

Each test inspects the drawn Axes (lines, texts, legend labels, bar heights) rather than pixels.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pxpermute import ImportanceResult, plotting  # noqa: E402
from pxpermute.evaluation.panels import MinimalPanel, PanelComparison, PanelSearch, panel_decisions  # noqa: E402
from pxpermute.stats import t_interval  # noqa: E402

MARGIN = 0.02
# per-fold F1-macro of all channels and of three nested panels, in the order of the fixed sequence:
# top-2 loses ~0.001 (non-inferior), top-1 ~0.05 (inconclusive / worse), stain-free is then not tested
FOLDS = {
    "all channels": [0.90, 0.91, 0.92, 0.90, 0.91],
    "stain-free + top-2": [0.899, 0.909, 0.919, 0.900, 0.909],
    "stain-free + top-1": [0.85, 0.86, 0.87, 0.85, 0.86],
    "stain-free": [0.70, 0.72, 0.71, 0.69, 0.70],
}
KIND = {"all channels": ("all", None, 6), "stain-free + top-2": ("top-k", 2, 4), "stain-free + top-1": ("top-k", 1, 3),
        "stain-free": ("stain-free", 0, 2)}


def _comparison() -> PanelComparison:
    rows, table = [], []
    for name in ("stain-free", "stain-free + top-1", "stain-free + top-2", "all channels"):
        kind, k, n_ch = KIND[name]
        for f, v in enumerate(FOLDS[name]):
            rows.append(dict(panel=name, kind=kind, k=k, n_channels=n_ch, channels="x", fold=f, f1_macro=v,
                             accuracy=v))
        t = t_interval(np.asarray(FOLDS[name]))
        table.append(dict(panel=name, kind=kind, k=k, n_channels=n_ch, channels="x", n_folds=5,
                          f1_macro_mean=t.mean, f1_macro_std=t.std, f1_macro_ci_low=t.low, f1_macro_ci_high=t.high,
                          accuracy_mean=t.mean, accuracy_std=t.std, accuracy_ci_low=t.low, accuracy_ci_high=t.high))
    order = ["stain-free + top-2", "stain-free + top-1", "stain-free"]
    dec = panel_decisions(FOLDS["all channels"], {p: FOLDS[p] for p in order}, margin=MARGIN, test_train_ratio=0.3125)
    meta = pd.DataFrame([dict(panel=p, kind=KIND[p][0], k=KIND[p][1], n_channels=KIND[p][2],
                              f1_macro_mean=float(np.mean(FOLDS[p]))) for p in order])
    info = dict(data="toy", n_splits=5, model="m", random_state=0, ranking="given", test="corrected_ttest",
                alpha=0.05, margin=MARGIN)
    return PanelComparison(scores=pd.DataFrame(rows), panel_table=pd.DataFrame(table),
                           tests=meta.merge(dec, on="panel", how="left"), cv_results={}, info=info)


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_the_toy_comparison_has_every_verdict():
    d = _comparison().tests.set_index("panel")["fixed_sequence"].to_dict()
    assert d == {"stain-free + top-2": "non-inferior", "stain-free + top-1": "inconclusive",
                 "stain-free": "not tested"}


def test_panel_comparison_draws_the_margin_and_the_verdicts():
    cmp = _comparison()
    fig = plotting.plot_panel_comparison(cmp)
    try:
        ax = fig.axes[0]
        ref = float(np.mean(FOLDS["all channels"]))
        # a dashed horizontal line at all channels - margin, labelled as the non-inferiority margin
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert any(np.allclose(ln.get_ydata(), ref - MARGIN) for ln in dashed)
        labels = ax.get_legend_handles_labels()[1]
        assert any("non-inferiority margin" in lab for lab in labels), labels
        # every tested panel carries its verdict, numbered in the fixed sequence (largest panel first)
        texts = " | ".join(_texts(ax))
        assert "1. non-inferior" in texts and "2. " in texts and "3. not tested" in texts, texts
        assert "inconclusive" in texts or "loses > margin" in texts, texts
        assert "significantly below" in texts  # top-1 and stain-free lose far more than the folds vary
        title = ax.get_title()
        assert "fixed sequence" in title and f"margin {MARGIN:g}" in title
        # the paired one-sided bound that decides: above the margin line only for the non-inferior panel
        bounds = [ln for ln in ax.get_lines() if ln.get_marker() == "^"]
        assert len(bounds) == 3
        above = sorted(float(ln.get_ydata()[0]) > ref - MARGIN for ln in bounds)
        assert above == [False, False, True]
        assert len(ax.get_xticklabels()) == 4
    finally:
        plt.close(fig)


def test_panel_comparison_without_the_decision_columns_still_plots():
    cmp = _comparison()
    cmp.tests = cmp.tests.drop(columns=["fixed_sequence"])
    fig = plotting.plot_panel_comparison(cmp)
    try:
        assert not any(ln.get_linestyle() == "--" for ln in fig.axes[0].get_lines())
    finally:
        plt.close(fig)
    fig = plotting.plot_panel_comparison(_comparison(), metric="accuracy")
    try:
        assert "decisions are made on F1-macro" in fig.axes[0].get_title()
    finally:
        plt.close(fig)


def test_panel_search_says_margin_not_tolerance():
    path = pd.DataFrame(dict(step=[0, 1], n_stains=[2, 1], added=[None, "A"], f1_mean=[0.9, 0.86],
                             ci_low=[0.88, 0.84], ci_high=[0.92, 0.88], non_inferior=[True, False],
                             chosen=[True, True]))
    mp = MinimalPanel(panel=["BF", "A", "B"], stains=["A", "B"], reference_score=0.9, threshold=0.88, tolerance=0.02,
                      searches={"ranking": PanelSearch("ranking", ["A", "B"], ["BF", "A", "B"], True, path, 10)},
                      n_trainings=10, seconds=0.0, cv_results={}, info={"data": "x", "n_splits": 5})
    fig = plotting.plot_panel_search(mp)
    try:
        ax = fig.axes[0]
        labels = ax.get_legend_handles_labels()[1]
        assert "non-inferiority margin 0.02" in labels, labels
        assert not any("tolerance" in lab for lab in labels)
        assert any(ln.get_linestyle() == "--" and np.allclose(ln.get_ydata(), 0.88) for ln in ax.get_lines())
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------
# normalisation: never stretch noise
# ---------------------------------------------------------------------------
def _noise() -> ImportanceResult:
    """Importances whose top channel's interval reaches 0: normalized() is NaN."""
    rng = np.random.default_rng(0)
    res = ImportanceResult(rng.normal(0, 0.01, size=(10, 3)), channel_names=["BF", "DNA", "SSC"],
                           info={"metric": "f1"})
    assert res.normalized().isna().all()
    return res


def _signal() -> ImportanceResult:
    rng = np.random.default_rng(1)
    res = ImportanceResult(np.array([0.30, 0.10, 0.0]) + rng.normal(0, 0.005, size=(10, 3)),
                           channel_names=["BF", "DNA", "SSC"], info={"metric": "f1"})
    assert not res.normalized().isna().any()
    return res


def _heights(ax) -> np.ndarray:
    return np.array([p.get_height() for p in ax.patches])


def test_noise_is_drawn_raw_not_min_max_scaled():
    res = _noise()
    fig = plotting.plot_importance(res)  # normalized=True by default
    try:
        ax = fig.axes[0]
        np.testing.assert_allclose(_heights(ax), res.importance[res.ranking])
        assert _heights(ax).max() < 0.1  # not stretched to 1.0
        assert "raw" in ax.get_ylabel() and "not normalized" in ax.get_ylabel()
        assert "not min-max normalized" in ax.get_title()
    finally:
        plt.close(fig)


def test_a_clear_signal_is_still_normalized():
    res = _signal()
    fig = plotting.plot_importance(res)
    try:
        ax = fig.axes[0]
        np.testing.assert_allclose(_heights(ax), res.normalized().to_numpy()[res.ranking])
        assert ax.get_ylabel() == "normalized importance" and "raw" not in ax.get_title()
    finally:
        plt.close(fig)


def test_method_comparison_marks_the_method_drawn_raw():
    sig, noise = _signal(), _noise()
    fig = plotting.plot_method_comparison({"PXPermute": sig, "Occlusion": noise})
    try:
        ax = fig.axes[0]
        h = _heights(ax)
        order = sig.ranking
        np.testing.assert_allclose(h[:3], sig.normalized().to_numpy()[order])
        np.testing.assert_allclose(h[3:], noise.importance[order])
        labels = ax.get_legend_handles_labels()[1]
        assert labels == ["PXPermute", "Occlusion (raw, not normalized)"]
        assert "Occlusion" in ax.get_ylabel() and "raw" in ax.get_ylabel()
    finally:
        plt.close(fig)


def test_importance_note_says_what_the_error_bars_cover():
    # one run: a permutation interval, which covers no retraining; folds pooled by concat: the interval over
    # fold means, which does cover retraining (approximately) -- the figure must not claim the opposite
    a = ImportanceResult([[0.30, 0.10], [0.32, 0.12], [0.31, 0.09]], channel_names=["BF", "DNA"])
    b = ImportanceResult([[0.20, 0.15], [0.22, 0.14], [0.21, 0.16]], channel_names=["BF", "DNA"])
    one = plotting.plot_importance(a, normalized=False).axes[0].get_title()
    pooled = plotting.plot_importance(ImportanceResult.concat([a, b]), normalized=False).axes[0].get_title()
    plt.close("all")
    assert "no interval covers retraining" in one
    assert "covers retraining, approximately" in pooled and "no interval covers retraining" not in pooled


def test_a_tie_of_all_channels_is_not_scaled_to_zero():
    # two channels with exactly the same, clearly positive importance: min-max would turn both into 0 (an empty
    # figure that reads "unused"); normalized() says why it declines and the plot draws the raw values
    tie = ImportanceResult([[0.5, 0.5], [0.52, 0.52], [0.48, 0.48]], channel_names=["BF", "FL"])
    norm = tie.normalized()
    assert norm.isna().all() and "same importance" in norm.attrs["reason"]
    ax = plotting.plot_importance(tie).axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    plt.close("all")
    assert heights == [0.5, 0.5]
