"""Figures (seaborn/matplotlib).

Every figure function returns the matplotlib ``Figure`` and puts the data, model,
k and seed that made it into the title (from the result's ``info``).
"""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() in ("", "agg") else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

__all__ = ["plot_importance", "plot_per_class"]


def _norm_ci(res, normalized: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    val, lo, hi = res.importance, res.ci_low, res.ci_high
    if not normalized:
        return val, lo, hi
    vmin, vmax = np.nanmin(val), np.nanmax(val)
    span = vmax - vmin if vmax > vmin else 1.0
    return (val - vmin) / span, (lo - vmin) / span, (hi - vmin) / span


def plot_importance(results, ax=None, *, normalized: bool = True, sort: bool = True, labels: Sequence[str] | None = None,
                    title: str | None = None, ground_truth=None):
    """Bar plot of channel importances with 95 % CIs (Fig. 3 style).

    Parameters
    ----------
    results : ImportanceResult or list of them
        Several results (e.g. methods) are drawn as grouped bars; they must score
        the same channels.
    normalized : bool
        Min-max normalize each result to [0, 1] (CIs scaled the same way).
    sort : bool
        Order channels by the first result's ranking.
    labels : list of str, optional
        Legend labels (default: each result's ``info["method"]``).
    ground_truth : GroundTruth, optional
        Planted relevance, drawn as markers on a second axis for synthetic data.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(results, (list, tuple)):
        results = [results]
    if not results:
        raise ValueError("no results to plot")
    names = results[0].channel_names
    for r in results[1:]:
        if r.channel_names != names:
            raise ValueError("all results must score the same channels in the same order")
    order = list(results[0].ranking) if sort else list(range(len(names)))
    labels = list(labels) if labels is not None else [str(r.info.get("method", "pxpermute")) for r in results]
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(names) * max(1, len(results)) ** 0.5 + 2), 3.6))
    else:
        fig = ax.figure
    n = len(results)
    width = 0.8 / n
    colors = sns.color_palette("colorblind", n)
    x = np.arange(len(order))
    for j, (res, lab) in enumerate(zip(results, labels)):
        val, lo, hi = _norm_ci(res, normalized)
        val, lo, hi = val[order], lo[order], hi[order]
        err = np.vstack([val - lo, hi - val])
        err = np.where(np.isfinite(err), err, 0)
        ax.bar(x + (j - (n - 1) / 2) * width, val, width, yerr=err, capsize=2, color=colors[j], label=lab,
               edgecolor="black", linewidth=0.4)
    ax.set_xticks(x)
    ax.set_xticklabels([names[i] for i in order], rotation=45 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center")
    ax.set_ylabel("normalized importance" if normalized else f"drop in {results[0].info.get('metric', 'metric')}")
    ax.axhline(0, color="black", linewidth=0.6)
    if ground_truth is not None:
        ax2 = ax.twinx()
        rel = np.asarray(ground_truth.relevance, float)[order]
        ax2.plot(x, rel, "D", color="crimson", label="planted relevance", markersize=5)
        ax2.set_ylabel("planted relevance", color="crimson")
        ax2.set_ylim(bottom=0)
    if n > 1 or ground_truth is not None:
        handles, labs = ax.get_legend_handles_labels()
        if ground_truth is not None:
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labs = handles + h2, labs + l2
        ax.legend(handles, labs, fontsize="small", frameon=False)
    ax.set_title(title or results[0].title(), fontsize="small", wrap=True)
    sns.despine(ax=ax, right=ground_truth is None)
    fig.tight_layout()
    return fig


def plot_per_class(result, ax=None, *, title: str | None = None, cmap: str = "rocket_r"):
    """Heatmap of the mean drop per (channel, class): which stain matters for which cell type."""
    table: pd.DataFrame = result.per_class()
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.7 * table.shape[1], 1.0 + 0.45 * table.shape[0]))
    else:
        fig = ax.figure
    sns.heatmap(table, annot=table.shape[0] * table.shape[1] <= 150, fmt=".2f", cmap=cmap, ax=ax,
                cbar_kws={"label": f"drop in {result.info.get('metric', 'metric')}"})
    ax.set_xlabel("class")
    ax.set_ylabel("channel")
    ax.set_title(title or result.title(), fontsize="small", wrap=True)
    fig.tight_layout()
    return fig
