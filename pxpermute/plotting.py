"""Figures (seaborn/matplotlib).

Every figure function returns the matplotlib ``Figure`` and puts the data, model,
k and seed that made it into the title (from the result's ``info``).
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() in ("", "agg") else None
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

__all__ = ["plot_importance", "plot_per_class", "plot_montage"]


def _norm_ci(res, normalized: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Values and interval to draw, and whether they are min-max scaled.

    Scaled only when ``normalized`` is asked for *and* ``res.normalized()`` scales
    (the top channel's interval lies above 0); otherwise the raw importances, so
    that noise is never stretched to look like a top channel at 1.0.
    """
    val, lo, hi = res.importance, res.ci_low, res.ci_high  # the interval named by res.ci_label
    if not normalized or not _normalizable(res):
        return val, lo, hi, False
    vmin, vmax = np.nanmin(val), np.nanmax(val)
    span = vmax - vmin if vmax > vmin else 1.0
    return (val - vmin) / span, (lo - vmin) / span, (hi - vmin) / span, True


def _normalizable(res) -> bool:
    """Whether ``res.normalized()`` gives numbers (not NaN: the top channel's interval lies above 0)."""
    norm = getattr(res, "normalized", None)
    if norm is None:
        return True
    return bool(np.isfinite(np.asarray(norm(), float)).any())


def _not_normalized_reason(res) -> str:
    reason = str(getattr(res.normalized(), "attrs", {}).get("reason", "")) if hasattr(res, "normalized") else ""
    return reason or "the top channel's interval reaches 0"


# ---------------------------------------------------------------------------
# legibility: every figure function ends with _legible(fig)
# ---------------------------------------------------------------------------
#: tick labels longer than this are wrapped onto several lines
WRAP_CHARS = 18
#: montage: channels with less spread than this fraction of the median channel are drawn as empty
EMPTY_SPAN = 0.05
#: every axes that shows tick labels keeps at least this drawing area (inches, width x height)
MIN_AXES_INCHES = (1.6, 1.1)
#: montage: at most this many image panels side by side (more cells of a class go to further rows)
MONTAGE_MAX_PANELS = 12


def _wrap(text: str, width: int = WRAP_CHARS) -> str:
    """Wrap at spaces and after ``+ - _ /`` (so "elongated+fragmented" breaks at the "+"), words
    longer than ``width`` are cut."""
    import re
    import textwrap

    if len(text) <= width or "\n" in text:
        return text
    lines, line = [], ""
    for piece in re.split(r"(?<=[ +_/-])", text):
        if line and len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += piece
    lines.append(line.rstrip())
    out = []
    for ln in lines:
        out += textwrap.wrap(ln, width, break_long_words=True) if len(ln) > width else [ln]
    return "\n".join(x for x in out if x) or text


def _is_colorbar(ax) -> bool:
    return getattr(ax, "_colorbar", None) is not None or ax.get_label() == "<colorbar>"


def _label_texts(ax, which: str):
    """The tick labels that are drawn: visible, non-empty, at a tick inside the view limits."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(1.0, abs(hi - lo))
    return [t for loc, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if t.get_visible() and t.get_text().strip() and lo - eps <= loc <= hi + eps]


def _crowding(boxes, horizontal: bool, gap: float = 2.0) -> float:
    """1.0 if no two boxes overlap along the axis, else (space needed) / (space available)."""
    if len(boxes) < 2:
        return 1.0
    lo = (lambda b: b.x0) if horizontal else (lambda b: b.y0)
    hi = (lambda b: b.x1) if horizontal else (lambda b: b.y1)
    boxes = sorted(boxes, key=lo)
    if all(lo(b) >= hi(a) - 1.0 for a, b in zip(boxes, boxes[1:])):
        return 1.0
    need = sum(hi(b) - lo(b) for b in boxes) + gap * (len(boxes) - 1)
    have = max(hi(boxes[-1]) - lo(boxes[0]), 1.0)
    return max(need / have, 1.05)


def _legible(fig, *, max_rounds: int = 6):
    """Make a figure readable whatever the number and length of its labels, then lay it out.

    Long categorical tick labels are wrapped (``WRAP_CHARS``); crowded x tick labels are turned
    vertical; if tick labels (or axes titles in a row) still overlap, or an axes with tick labels
    has less drawing area than ``MIN_AXES_INCHES``, the figure grows until they fit (at most 4x
    per direction).  The rule is checked by tests/test_plot_legibility.py.
    """
    import warnings

    for ax in fig.axes:
        for which in ("x", "y"):
            axis = ax.xaxis if which == "x" else ax.yaxis
            if not isinstance(axis.get_major_locator(), matplotlib.ticker.FixedLocator):
                continue  # numeric axes: short labels
            fmt, locs = axis.get_major_formatter(), list(axis.get_ticklocs())
            labels = [str(fmt(v, i)) for i, v in enumerate(locs)]
            if any(len(t) > WRAP_CHARS and "\n" not in t for t in labels):
                axis.set_major_formatter(matplotlib.ticker.FixedFormatter([_wrap(t) for t in labels]))
    w0, h0 = fig.get_size_inches()
    for _ in range(max_rounds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig.tight_layout()
        renderer = fig.canvas.get_renderer()
        w, h = fig.get_size_inches()
        grow_w = grow_h = 1.0
        changed = False
        rows: dict = {}
        for ax in fig.axes:
            if not ax.get_visible() or _is_colorbar(ax):
                continue
            xt, yt = _label_texts(ax, "x"), _label_texts(ax, "y")
            cx = _crowding([t.get_window_extent(renderer) for t in xt], True)
            if cx > 1 and any(abs(t.get_rotation()) < 89 for t in xt):
                for t in xt:
                    t.set_rotation(90)
                    t.set_ha("center")
                    t.set_rotation_mode("default")
                changed = True
            elif cx > 1:
                grow_w = max(grow_w, cx)
            grow_h = max(grow_h, _crowding([t.get_window_extent(renderer) for t in yt], False))
            if xt or yt:
                pos = ax.get_position()
                grow_w = max(grow_w, MIN_AXES_INCHES[0] / max(pos.width * w, 1e-3))
                grow_h = max(grow_h, MIN_AXES_INCHES[1] / max(pos.height * h, 1e-3))
            if ax.get_title():
                rows.setdefault(round(ax.get_position().y1, 2), []).append(ax.title.get_window_extent(renderer))
        for boxes in rows.values():
            grow_w = max(grow_w, _crowding(boxes, True))
        if not changed and grow_w <= 1.0 and grow_h <= 1.0:
            break
        if grow_w > 1.0 or grow_h > 1.0:
            fig.set_size_inches(min(w * min(grow_w * 1.05, 2.0), 4 * w0), min(h * min(grow_h * 1.05, 2.0), 4 * h0))
    return fig


def plot_importance(results, ax=None, *, normalized: bool = True, sort: bool = True, labels: Sequence[str] | None = None,
                    title: str | None = None, ground_truth=None):
    """Bar plot of channel importances with 95 % CIs (Fig. 3 style).

    Error bars are each result's ``ci_low/high``, named in the title by
    ``result.ci_label``: the bootstrap interval over test cells (the default),
    the t-interval over fold means for pooled folds, else the permutation
    (Monte Carlo) interval over repeats.

    Parameters
    ----------
    results : ImportanceResult or list of them
        Several results (e.g. methods) are drawn as grouped bars; they must score
        the same channels.
    normalized : bool
        Min-max normalize each result to [0, 1] (CIs scaled the same way) --
        only where :meth:`~pxpermute.ImportanceResult.normalized` scales, i.e.
        the top channel's interval lies above 0.  A result whose
        ``normalized()`` is NaN is drawn raw (the drop in the metric), and the
        axis label and title say so: min-max scaling would show noise as 1.0.
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
    raw = []  # results asked to be normalized but drawn raw (normalized() is NaN)
    for j, (res, lab) in enumerate(zip(results, labels)):
        val, lo, hi, scaled = _norm_ci(res, normalized)
        if normalized and not scaled:
            raw.append(j)
            lab = f"{lab} (raw, not normalized)" if n > 1 else lab
        val, lo, hi = val[order], lo[order], hi[order]
        err = np.vstack([val - lo, hi - val])
        err = np.where(np.isfinite(err), err, 0)
        ax.bar(x + (j - (n - 1) / 2) * width, val, width, yerr=err, capsize=2, color=colors[j], label=lab,
               edgecolor="black", linewidth=0.4)
    ax.set_xticks(x)
    ax.set_xticklabels([names[i] for i in order], rotation=45 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center")
    drop = f"drop in {results[0].info.get('metric', 'metric')}"
    if not normalized:
        ax.set_ylabel(drop)
    elif len(raw) == n:
        ax.set_ylabel(f"raw {drop}\n(not normalized)")
    elif raw:
        ax.set_ylabel(f"normalized importance\n(raw {drop}: {', '.join(labels[j] for j in raw)})")
    else:
        ax.set_ylabel("normalized importance")
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
        ax.legend(handles, labs, fontsize="small", frameon=False, loc="upper center",
                  bbox_to_anchor=(0.5, -0.22 if len(names) > 5 else -0.12), ncol=min(4, len(handles)))
    label = getattr(results[0], "ci_label", None)
    covers = ("covers retraining, approximately" if getattr(results[0], "ci_kind", None) == "folds"
              else "no interval covers retraining")
    note = (f"\nerror bars: {100 * float(results[0].info.get('confidence', 0.95)):g}% CI, {label}; "
            f"{covers}") if label else ""
    if raw:
        who = "" if n == 1 else " for " + ", ".join(labels[j] for j in raw)
        note += f"\nshown raw, not min-max normalized{who}: {_not_normalized_reason(results[raw[0]])}"
    ax.set_title((title or results[0].title()) + note, fontsize="small", wrap=True)
    sns.despine(ax=ax, right=ground_truth is None)
    _legible(fig)
    return fig


def plot_per_class(result, ax=None, *, title: str | None = None, cmap: str = "rocket_r", alpha: float | None = 0.05):
    """Heatmap of the mean drop per (channel, class): which stain matters for which cell type.

    With a bootstrap in the result (``n_bootstrap > 0``), cells whose per-class
    one-sided bootstrap p-value, Benjamini-Hochberg adjusted over all cells, is
    below ``alpha`` get a ``*`` (``alpha=None``: no marks).
    """
    table: pd.DataFrame = result.per_class()
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.7 * table.shape[1], 1.0 + 0.45 * table.shape[0]))
    else:
        fig = ax.figure
    annot, fmt = table.shape[0] * table.shape[1] <= 150, ".2f"
    if annot and alpha is not None and getattr(result, "class_p_values", None) is not None:
        col = "q_value" if getattr(result, "class_q_values", None) is not None else "p_value"  # BH-adjusted
        stars = np.where(result.per_class(col).to_numpy() < alpha, "*", "")
        annot, fmt = np.char.add(np.char.mod("%.2f", table.to_numpy(dtype=float)), stars), ""
    sns.heatmap(table, annot=annot, fmt=fmt, cmap=cmap, ax=ax,
                cbar_kws={"label": f"drop in {result.info.get('metric', 'metric')}"})
    ax.tick_params(axis="y", labelrotation=0)  # seaborn turns crowded y labels vertical; _legible makes room instead
    ax.set_xlabel("class")
    ax.set_ylabel("channel")
    ax.set_title(title or result.title(), fontsize="small", wrap=True)
    _legible(fig)
    return fig


def _montage_grid(n_per_class: int, n_channels: int) -> tuple[int, int]:
    """(cells per row, rows per class) for a montage: a grid sized from the content.

    At most ``MONTAGE_MAX_PANELS`` panels side by side (``cap`` cells of ``n_channels`` panels).  Rows are
    filled completely when a divisor of ``n_per_class`` allows it with at most twice the fewest possible rows
    (the largest such divisor is the row length); otherwise the fewest rows, evenly filled.

    >>> _montage_grid(6, 3), _montage_grid(3, 3), _montage_grid(1, 24), _montage_grid(3, 6), _montage_grid(7, 3)
    ((3, 2), (3, 1), (1, 1), (1, 3), (4, 2))
    """
    cap = max(1, MONTAGE_MAX_PANELS // max(1, n_channels))
    fewest = -(-n_per_class // cap)
    divisor = max(d for d in range(1, min(cap, n_per_class) + 1) if n_per_class % d == 0)
    if n_per_class // divisor <= 2 * fewest:
        return divisor, n_per_class // divisor
    return -(-n_per_class // fewest), fewest


def plot_montage(
    dataset,
    *,
    n_per_class: int = 3,
    channels: Sequence[int | str] | None = None,
    classes: Sequence[int | str] | None = None,
    random_state: int | None = 0,
    percentiles: tuple[float, float] = (1.0, 99.0),
    cmap: str = "gray",
    panel_size: float = 1.1,
    title: str | None = None,
):
    """Example cells per class (rows) x channel (columns), Fig. 2 style.

    Each cell is a block of its channels side by side; the cells of one class fill
    a row of blocks, wrapped onto further rows when more than ``MONTAGE_MAX_PANELS``
    (12) panels would stand side by side (as few rows as possible, evenly filled),
    so many cells per class make a grid, not one long column.  The axes are created
    cell by cell, channels in order (``fig.axes[i * n_channels + j]`` is channel
    ``j`` of the ``i``-th shown cell slot).

    Each channel gets one contrast stretch shared by all shown cells: intensities
    between the ``percentiles`` of that channel over all shown cells map to
    black..white, so brightness is comparable across classes within a column.  A
    channel whose percentile spread is below ``EMPTY_SPAN`` (5 %) of the median
    spread of the shown channels is drawn on the median spread, so an empty
    channel looks empty instead of stretched noise.  Stain-free
    channels are marked with ``(sf)`` in the column title.

    Parameters
    ----------
    dataset : IFCDataset
        Cells are read with ``dataset.get_batch`` (lazy data sets read only the
        shown cells; the dataset's ``transform`` is applied).
    n_per_class : int
        Cells drawn per class (fewer if a class has fewer cells).
    channels : sequence of int or str, optional
        Channels to show, in this order (default: all).
    classes : sequence of int or str, optional
        Classes to show (default: all classes that have cells).
    random_state : int or None
        Seed for choosing the cells.
    percentiles : (float, float)
        Lower/upper percentile of the per-channel contrast stretch.
    cmap : str
        Matplotlib colormap.
    panel_size : float
        Inches per image panel.
    title : str, optional
        Figure title (default names the data set).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from pxpermute.datasets import IFCDataset
    >>> ds = IFCDataset(np.random.rand(6, 2, 16, 16), [0, 1, 0, 1, 0, 1], channel_names=["BF", "DNA"])
    >>> fig = plot_montage(ds, n_per_class=2)
    >>> len(fig.axes)
    8
    """
    from .datasets.base import resolve_channels

    if not (hasattr(dataset, "get_batch") and hasattr(dataset, "labels") and hasattr(dataset, "channel_names")):
        raise TypeError(f"plot_montage needs an IFCDataset, got {type(dataset).__name__}")
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    lo_p, hi_p = (float(p) for p in percentiles)
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    ch = list(range(dataset.n_channels)) if channels is None else resolve_channels(channels, dataset.channel_names)
    labels = np.asarray(dataset.labels)
    if classes is None:
        cls = [k for k in range(dataset.n_classes) if np.any(labels == k)]
    else:
        cls = []
        for c in classes:
            if isinstance(c, str):
                if c not in dataset.class_names:
                    raise ValueError(f"unknown class {c!r}; known classes: {dataset.class_names}")
                cls.append(dataset.class_names.index(c))
            elif isinstance(c, (int, np.integer)) and 0 <= int(c) < dataset.n_classes:
                cls.append(int(c))
            else:
                raise ValueError(f"class {c!r} is neither a class name nor an index in [0, {dataset.n_classes})")
    if not cls:
        raise ValueError("the dataset has no cells to show")
    rng = np.random.default_rng(random_state)
    picks: list[tuple[int, int | None]] = []  # (class, cell index or None for an empty slot)
    for k in cls:
        members = np.flatnonzero(labels == k)
        chosen = np.sort(rng.choice(members, size=min(n_per_class, members.size), replace=False)) if members.size else []
        picks += [(k, int(i)) for i in chosen] + [(k, None)] * (n_per_class - len(chosen))
    idx = [i for _, i in picks if i is not None]
    images = dataset.get_batch(idx)[0][:, ch] if idx else np.zeros((0, len(ch), 1, 1), np.float32)
    lims = []
    for j in range(len(ch)):
        vals = images[:, j][np.isfinite(images[:, j])]
        lo, hi = (np.percentile(vals, [lo_p, hi_p]) if vals.size else (0.0, 1.0))
        lims.append((float(lo), float(hi)))
    # One display range per channel for all shown cells.  A channel whose spread is tiny next to
    # the others (an unused stain, an empty detector) is drawn on the median spread instead of
    # being stretched to full contrast, so it looks empty rather than like signal.
    spans = np.array([hi - lo for lo, hi in lims])
    ref = float(np.median(spans[spans > 0])) if np.any(spans > 0) else 1.0
    lims = [(lo, hi if hi - lo >= EMPTY_SPAN * ref else lo + ref) for lo, hi in lims]
    # Layout sized from the content: the cells of a class fill rows of at most MONTAGE_MAX_PANELS // n_channels
    # cells (each cell a block of its channels side by side), in as few rows as possible and evenly filled;
    # a thin gap separates cell blocks and classes.
    n_ch = len(ch)
    per_row, rows_per_class = _montage_grid(n_per_class, n_ch)
    n_blocks_rows = len(cls) * rows_per_class
    gap_w, gap_h = 0.12, 0.18  # spacer columns / rows, in panels
    width_ratios = []
    for b in range(per_row):
        width_ratios += ([gap_w] if b else []) + [1.0] * n_ch
    height_ratios = []
    for r in range(n_blocks_rows):
        height_ratios += ([gap_h] if r and r % rows_per_class == 0 and per_row > 1 else []) + [1.0]
    fig = plt.figure(figsize=(panel_size * sum(width_ratios) + 1.6, panel_size * sum(height_ratios) + 0.8))
    gs = fig.add_gridspec(len(height_ratios), len(width_ratios), width_ratios=width_ratios,
                          height_ratios=height_ratios)
    grid_row = {}  # block row -> gridspec row (spacer rows skipped)
    g = 0
    for r in range(n_blocks_rows):
        if r and r % rows_per_class == 0 and per_row > 1:
            g += 1
        grid_row[r] = g
        g += 1
    pos = 0
    for slot, (k, i) in enumerate(picks):
        within = slot % n_per_class  # position of the cell inside its class
        r = cls.index(k) * rows_per_class + within // per_row
        b = within % per_row
        for j in range(n_ch):
            ax = fig.add_subplot(gs[grid_row[r], b * (n_ch + 1) + j])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if i is not None:
                ax.imshow(np.clip((images[pos, j] - lims[j][0]) / (lims[j][1] - lims[j][0]), 0, 1), cmap=cmap,
                          vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                name = dataset.channel_names[ch[j]]
                ax.set_title(_wrap(name + (" (sf)" if dataset.stain_free[ch[j]] else ""), max(6, int(9 * panel_size))),
                             fontsize=8)
            if j == 0 and within == 0:
                ax.set_ylabel(_wrap(str(dataset.class_names[k])), rotation=0, ha="right", va="center", fontsize=8)
        if i is not None:
            pos += 1
    name = getattr(dataset, "name", None) or "dataset"
    fig.suptitle(title or f"{name}: {n_per_class} example cell(s) per class x channel", fontsize=10)
    _legible(fig)
    _fit_panels(fig, fig.axes[0], images.shape[-2] / max(1, images.shape[-1]), sum(width_ratios), sum(height_ratios))
    return fig


def _below_suptitle(fig) -> tuple[float, float, float, float]:
    """tight_layout rect that keeps the axes (and their titles) below the figure's suptitle."""
    sup = getattr(fig, "_suptitle", None)
    if sup is None or not sup.get_text():
        return (0.0, 0.0, 1.0, 1.0)
    box = sup.get_window_extent(fig.canvas.get_renderer())
    return (0.0, 0.0, 1.0, max(0.5, 1.0 - (box.height + 6.0) / fig.bbox.height))


def _fit_panels(fig, ax, aspect: float, n_wide: float, n_high: float, rounds: int = 3) -> None:
    """Shrink the figure so that the grid cells have the images' aspect (no blank bands around the grid)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.tight_layout(rect=_below_suptitle(fig))
    for _ in range(rounds):
        w, h = fig.get_size_inches()
        pos = ax.get_position(original=True)
        cw, ch = pos.width * w, pos.height * h
        if abs(ch - aspect * cw) <= 0.02 * ch:
            break
        if ch > aspect * cw:
            fig.set_size_inches(w, max(1.0, h - (ch - aspect * cw) * n_high))
        else:
            fig.set_size_inches(max(1.0, w - (cw - ch / aspect) * n_wide), h)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig.tight_layout(rect=_below_suptitle(fig))


# ---------------------------------------------------------------------------
# method comparison (Fig. 3 / Fig. 4 style) and method x data-set summaries
# ---------------------------------------------------------------------------
__all__ += ["plot_method_comparison", "plot_remove_and_retrain", "plot_method_heatmap"]


def _comparison_title(results) -> str:
    ref = next((r for r in results if r.info.get("method") == "pxpermute"), results[0])
    parts = ["channel importance by method"]
    for key in ("data", "model"):
        if ref.info.get(key):
            parts.append(f"{key}={ref.info[key]}")
    if ref.info.get("method") == "pxpermute":
        parts.append(f"PXPermute k={ref.n_repeats}")
    if ref.info.get("random_state") is not None:
        parts.append(f"seed={ref.info['random_state']}")
    if "n_samples" in ref.info:
        parts.append(f"n={ref.info['n_samples']}")
    return ", ".join(parts)


def plot_method_comparison(results, ax=None, *, ground_truth=None, sort: bool = True, normalized: bool = True,
                           title: str | None = None):
    """Normalized channel importance of several methods as grouped bars with 95 % CIs (Fig. 3 style).

    A thin layer over :func:`plot_importance`: one bar group per channel, one bar per
    method.  The CI of PXPermute is over its k repeats, that of an attribution
    method over the attributed images; occlusion has none.

    Parameters
    ----------
    results : mapping name -> ImportanceResult, or list of ImportanceResult
        E.g. the output of :func:`pxpermute.baselines.compare_methods`.  All must
        score the same channels.
    ground_truth : GroundTruth, optional
        Planted relevance of synthetic data, drawn as markers.
    sort : bool, default True
        Order channels by the first method's ranking.
    normalized : bool, default True
        Min-max normalize each method to [0, 1] (as in the paper), except a
        method whose ``normalized()`` is NaN (top channel's interval not above
        0): drawn raw, marked "(raw, not normalized)" in the legend and the title.
    title : str, optional
        Default names data, model, PXPermute's k and seed.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from pxpermute import ImportanceResult
    >>> a = ImportanceResult([[0.3, 0.1], [0.2, 0.0]], channel_names=["BF", "DNA"], info={"method": "pxpermute"})
    >>> b = ImportanceResult([[0.1, 0.4]], channel_names=["BF", "DNA"], info={"method": "occlusion"})
    >>> fig = plot_method_comparison({"PXPermute": a, "Occlusion": b})
    >>> len(fig.axes[0].patches)
    4
    """
    if hasattr(results, "items"):
        labels = [str(k) for k in results.keys()]
        results = list(results.values())
    else:
        results = list(results)
        labels = [str(r.info.get("method_name", r.info.get("method", "pxpermute"))) for r in results]
    if not results:
        raise ValueError("no results to plot")
    return plot_importance(results, ax=ax, normalized=normalized, sort=sort, labels=labels,
                           title=title or _comparison_title(results), ground_truth=ground_truth)


def plot_remove_and_retrain(roar, ax=None, *, metric: str = "f1_macro", ci: bool = True, reference=None,
                            title: str | None = None):
    """Remove-and-retrain curves: score of the retrained models vs channels removed (Fig. 4 style).

    One line per method (mean over folds) with a shaded 95 % CI over folds (clipped to [0, 1]); the
    legend gives each method's average over the curve (the paper's summary).

    Parameters
    ----------
    roar : ROARResult
        From :func:`pxpermute.evaluation.remove_and_retrain`.
    metric : {"f1_macro", "accuracy"}
    ci : bool, default True
        Shade the 95 % t-interval over folds.
    reference : DataFrame, optional
        Published curves to draw dashed for comparison, methods x n_removed
        (e.g. ``pxpermute.datasets.paper_numbers.paper_remove_and_retrain("synapse")``).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        One solid line per method (and one dashed line per reference method).
    """
    if not hasattr(roar, "curve") or not hasattr(roar, "summary"):
        raise TypeError(f"roar must be a ROARResult from remove_and_retrain, got {type(roar).__name__}")
    curve = roar.curve(metric)
    summary = roar.summary_frame(metric).set_index("method")
    methods = list(roar.methods)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 3.8))
    else:
        fig = ax.figure
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    for m in methods:
        c = curve[curve.method == m].sort_values("n_removed")
        avg = summary.loc[m, "mean"]
        style = {"linestyle": ":", "marker": "x"} if m == "Random" else {"marker": "o"}
        ax.plot(c.n_removed, c["mean"], color=palette[m], label=f"{m} (avg {avg:.3f})", markersize=4, **style)
        if ci and np.isfinite(c.ci_low).any():
            # F1 and accuracy live in [0, 1]; with few folds the t-interval can reach beyond
            ax.fill_between(c.n_removed, c.ci_low.clip(0, 1), c.ci_high.clip(0, 1), color=palette[m], alpha=0.15,
                            linewidth=0)
    if reference is not None:
        ref = pd.DataFrame(reference)
        extra = sns.color_palette("pastel", len(ref.index))
        for j, m in enumerate(ref.index):
            row = ref.loc[m].dropna()
            ax.plot(np.asarray(row.index, dtype=float), row.to_numpy(float), linestyle="--", linewidth=1,
                    color=palette.get(m, extra[j]), alpha=0.8, label=f"{m} (paper)")
    steps = sorted(curve.n_removed.unique())
    ax.set_xticks(steps)
    ax.set_xlabel("channels removed (least important first)")
    ax.set_ylabel({"f1_macro": "F1-macro", "accuracy": "accuracy"}[metric] + " after retraining")
    ax.legend(fontsize="x-small", frameon=False, loc="lower left")
    ax.set_title(title or roar.title(), fontsize="small", wrap=True)
    sns.despine(ax=ax)
    _legible(fig)
    return fig


def plot_method_heatmap(table, ax=None, *, value: str | None = None, title: str | None = None,
                        fmt: str = ".3f", cmap: str = "viridis", center: float | None = None):
    """Heatmap of one summary number per method (rows) and data set (columns).

    Parameters
    ----------
    table : DataFrame or mapping data set -> (ROARResult or DataFrame)
        * a wide DataFrame (index methods, columns data sets);
        * a tidy DataFrame with columns ``method``, ``dataset`` and ``value``
          (or the column named by ``value``);
        * a mapping data set -> :class:`~pxpermute.evaluation.ROARResult` (its
          ``summary()["mean"]``, the average F1-macro over the curve) or -> a
          per-method DataFrame with a ``method`` column, e.g. from
          :func:`~pxpermute.evaluation.score_rankings` (``value`` picks the column,
          e.g. ``"spearman"``).
    value : str, optional
        Column holding the number (default ``"mean"`` for ROAR summaries, else ``"value"``).
    title : str, optional
    fmt, cmap, center
        Passed to :func:`seaborn.heatmap`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"apoptotic": [0.96, 0.95], "synapse": [0.92, 0.89]}, index=["PXPermute", "Occlusion"])
    >>> fig = plot_method_heatmap(t)
    >>> fig.axes[0].collections[0].get_array().size
    4
    """
    if hasattr(table, "items") and not isinstance(table, pd.DataFrame):
        parts = []
        for ds_name, item in table.items():
            if hasattr(item, "summary") and hasattr(item, "curve"):
                col = value or "mean"
                s = item.summary_frame()
                parts.append(pd.DataFrame({"method": s["method"], "dataset": str(ds_name), "value": s[col]}))
            elif isinstance(item, pd.DataFrame) and "method" in item.columns:
                col = value or "value"
                if col not in item.columns:
                    raise ValueError(f"column {col!r} not in the table for {ds_name!r} (columns {list(item.columns)})")
                parts.append(pd.DataFrame({"method": item["method"], "dataset": str(ds_name), "value": item[col]}))
            else:
                raise TypeError(f"entry {ds_name!r}: expected a ROARResult or a DataFrame with a 'method' column, "
                                f"got {type(item).__name__}")
        if not parts:
            raise ValueError("no data sets to plot")
        tidy = pd.concat(parts, ignore_index=True)
        wide = tidy.pivot_table(index="method", columns="dataset", values="value", sort=False)
        label = value or "mean F1-macro over removal curve"
    elif isinstance(table, pd.DataFrame):
        col = value or "value"
        if {"method", "dataset", col} <= set(table.columns):
            wide = table.pivot_table(index="method", columns="dataset", values=col, sort=False)
        else:
            wide = table.apply(pd.to_numeric, errors="coerce")
        label = value or ""
    else:
        raise TypeError(f"table must be a DataFrame or a mapping data set -> result, got {type(table).__name__}")
    if wide.size == 0:
        raise ValueError("nothing to plot: the table is empty")
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.8 + 1.1 * wide.shape[1], 1.0 + 0.42 * wide.shape[0]))
    else:
        fig = ax.figure
    sns.heatmap(wide, annot=True, fmt=fmt, cmap=cmap, center=center, ax=ax, cbar_kws={"label": label})
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=30, ha="right")
    ax.set_xlabel("data set")
    ax.set_ylabel("method")
    ax.set_title(title or "methods x data sets", fontsize="small", wrap=True)
    _legible(fig)
    return fig


# -----------------------------------------------------------------------------
# panel design (pxpermute.panel)
# -----------------------------------------------------------------------------
__all__ += ["plot_panel_comparison", "plot_panel_search", "plot_k_ablation", "plot_multistage"]

import matplotlib.ticker  # noqa: E402


def _panel_verdict(row) -> str:
    """Short verdict of one row of ``PanelComparison.tests`` (the decision of the fixed sequence)."""
    d = str(row.get("fixed_sequence", ""))
    text = d or "?"  # "non-inferior", "inconclusive" or "not tested"
    if d == "inconclusive" and row.get("ni_outcome") == "worse":
        text = "loses > margin"
    if bool(row.get("significant", False)):
        text += "\nsignificantly below *"
    return text


def plot_panel_comparison(comparison, ax=None, *, metric: str = "f1_macro", title: str | None = None):
    """Per-fold scores and mean with 95 % CI per panel (Fig. 5 style), with the decision the package made.

    With ``metric="f1_macro"`` the figure shows the non-inferiority decision of
    :func:`pxpermute.panel.compare_panels`: a solid line at the all-channels
    mean, a dashed line ``margin`` below it (the non-inferiority margin), for
    each tested panel its paired one-sided bound (``all-channels mean -
    ni_upper``: the panel is non-inferior when this bound lies above the dashed
    line) and its verdict -- ``"non-inferior"``, ``"inconclusive"``,
    ``"loses > margin"`` (the lower bound of the loss lies above the margin) or
    ``"not tested"`` (the fixed sequence stopped at a larger panel), numbered in
    the order of the fixed sequence, plus ``"significantly below *"`` where the
    Holm-adjusted superiority test says the panel is below all channels.  The
    drawn error bars are t-intervals over folds of each panel on its own; the
    decision uses the paired, Nadeau-Bengio corrected bound.

    Parameters
    ----------
    comparison : PanelComparison
        From :func:`pxpermute.panel.compare_panels`.
    metric : {"f1_macro", "accuracy"}
        The decision is made on F1-macro; with ``"accuracy"`` only the scores are drawn.
    title : str, optional
        Default: data, folds, model, seed and ranking of the comparison.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if metric not in ("f1_macro", "accuracy"):
        raise ValueError(f"metric must be 'f1_macro' or 'accuracy', got {metric!r}")
    summ = comparison.summary_frame()
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(summ), 4.0))
    else:
        fig = ax.figure
    x = np.arange(len(summ))
    colors = sns.color_palette("colorblind", 3)
    kind_color = {"stain-free": colors[0], "top-k": colors[1], "all": colors[2]}
    scores = comparison.scores
    tops = []
    for i, row in enumerate(summ.itertuples()):
        vals = scores.loc[scores.panel == row.panel, metric].to_numpy(float)
        jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(1)
        ax.plot(x[i] + jitter, vals, "o", color="0.55", markersize=3.5, zorder=2)
        mean, lo, hi = getattr(row, f"{metric}_mean"), getattr(row, f"{metric}_ci_low"), getattr(row, f"{metric}_ci_high")
        err = np.array([[mean - lo], [hi - mean]]) if np.isfinite(lo) else None
        ax.errorbar(x[i], mean, yerr=err, fmt="D", color=kind_color.get(row.kind, "black"), capsize=4,
                    markersize=7, zorder=3)
        tops.append(np.nanmax(np.r_[vals, mean, hi if np.isfinite(hi) else mean]))
    tests = comparison.tests
    info = comparison.info
    decided = (metric == "f1_macro" and len(tests) > 0 and "fixed_sequence" in tests.columns
               and info.get("margin") is not None and (summ.kind == "all").any())
    t = title or comparison.title()
    if decided:
        margin, alpha = float(info["margin"]), float(info.get("alpha", 0.05))
        ref = float(summ.loc[summ.kind == "all", f"{metric}_mean"].iloc[0])
        ax.axhline(ref, color="black", linewidth=0.8, zorder=1, label="all channels (mean)")
        ax.axhline(ref - margin, color="black", linewidth=1.0, linestyle="--", zorder=1,
                   label=f"non-inferiority margin ({margin:g} below all channels)")
        pos = {p: i for i, p in enumerate(summ.panel)}
        bound_label = f"paired one-sided {100 * (1 - alpha):g} % bound (decides)"
        for step, row in enumerate(tests.to_dict("records"), start=1):
            i = pos.get(row["panel"])
            if i is None:
                continue
            upper = float(row.get("ni_upper", np.nan))
            if np.isfinite(upper):
                ax.plot([x[i] + 0.2], [ref - upper], marker="^", color="black", markersize=6, linestyle="none",
                        zorder=4, label=bound_label)
                bound_label = "_nolegend_"
            ax.annotate(f"{step}. {_panel_verdict(row)}", (x[i], tops[i]), textcoords="offset points",
                        xytext=(0, 8), ha="center", va="bottom", fontsize="x-small",
                        bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))
        lo_y, hi_y = ax.get_ylim()
        ax.set_ylim(lo_y, hi_y + 0.25 * (hi_y - lo_y))  # room for the verdicts above the points
        ax.legend(fontsize="x-small", frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        test = info.get("test", "corrected_ttest")
        t += (f"\nnon-inferiority at margin {margin:g}, tested in a fixed sequence (1, 2, ...: largest panel first, "
              f"stop at the first not shown non-inferior; α={alpha:g} familywise); "
              f"* significantly below all channels (Holm-adjusted {test})")
    elif metric == "accuracy" and len(tests):
        t += "\n(decisions are made on F1-macro: plot metric='f1_macro' to see them)"
    ax.set_xticks(x)
    ax.set_xticklabels([f"{p}\n({n} ch)" for p, n in zip(summ.panel, summ.n_channels)], fontsize="small")
    ax.set_ylabel(metric.replace("_", "-") + " (CV folds, mean ± 95 % CI)")
    ax.set_title(t, fontsize="small", wrap=True)
    sns.despine(ax=ax)
    _legible(fig)
    return fig


def plot_panel_search(minimal, ax=None, *, title: str | None = None):
    """Cross-validated F1-macro along the minimal-panel search paths, with the non-inferiority margin.

    The shaded band reaches from the all-channels mean down by the margin (the
    dashed line); the decision of :func:`pxpermute.panel.minimal_panel` is the
    paired non-inferiority test in the ``non_inferior`` column of each path, not
    whether a point lies inside the band.

    Parameters
    ----------
    minimal : MinimalPanel
        From :func:`pxpermute.panel.minimal_panel`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 3.8))
    else:
        fig = ax.figure
    colors = sns.color_palette("colorblind", max(2, len(minimal.searches)))
    for (name, search), color in zip(minimal.searches.items(), colors):
        path = search.path
        if path.empty:
            continue
        kept = path[path["chosen"]]
        err = np.vstack([kept.f1_mean - kept.ci_low, kept.ci_high - kept.f1_mean])
        err = np.where(np.isfinite(err), err, 0)
        ax.errorbar(kept.n_stains + (0.06 if name == "greedy" else 0), kept.f1_mean, yerr=err, marker="o", color=color,
                    capsize=3, label=f"{name} ({search.n_trainings} trainings)")
        for r in kept.itertuples():
            if isinstance(r.added, str) or (r.n_stains == 0 and name == "ranking"):
                ax.annotate(r.added if isinstance(r.added, str) else "stain-free", (r.n_stains, r.f1_mean),
                            textcoords="offset points", xytext=(4, -11 if name == "greedy" else 5),
                            fontsize="x-small", color=color)
        if name == "greedy":
            others = path[~path["chosen"]]
            ax.plot(others.n_stains + 0.06, others.f1_mean, "x", color=color, alpha=0.5, markersize=4)
    ax.axhline(minimal.reference_score, color="black", linewidth=0.8, label="all channels")
    margin = float(getattr(minimal, "margin", minimal.tolerance))
    ax.axhspan(minimal.threshold, minimal.reference_score, color="0.85", zorder=0)
    ax.axhline(minimal.threshold, color="black", linewidth=1.0, linestyle="--",
               label=f"non-inferiority margin {margin:g}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("number of stains (+ stain-free channels)")
    ax.set_ylabel("F1-macro (CV mean ± 95 % CI)")
    ax.legend(fontsize="small", frameon=False)
    ax.set_title(title or minimal.title(), fontsize="small", wrap=True)
    sns.despine(ax=ax)
    _legible(fig)
    return fig


def plot_k_ablation(ablation, *, title: str | None = None, max_channels: int = 12):
    """Ranking stability over k: Kendall tau to the largest-k ranking, and each channel's rank.

    Parameters
    ----------
    ablation : KAblation
        From :func:`pxpermute.panel.k_ablation`.
    max_channels : int, default 12
        Channels drawn in the rank panel (the best ones at the largest k).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    tau = ablation.kendall_tau
    ax1.plot(tau.index, tau.values, "o-", color="black")
    ax1.axvline(ablation.stable_k, color="crimson", linestyle="--", linewidth=1,
                label=f"ranking{'' if ablation.top is None else f' (top {ablation.top})'} stable from k={ablation.stable_k}")
    for a in (ax1, ax2):
        a.set_xscale("log")
        a.set_xticks(ablation.ks)
        a.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        a.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        a.tick_params(axis="x", labelsize="small", labelrotation=45)
    ax1.set_xlabel("k (repeats)")
    ax1.set_ylabel(f"Kendall τ to k={max(ablation.ks)}")
    # the whole scale of tau (1 = the same order): a range from 0.93 to 1 would make small changes look large
    finite = tau.values[np.isfinite(tau.values)]
    ax1.set_ylim(min(0.0, float(finite.min()) - 0.05) if finite.size else 0.0, 1.05)
    ax1.axhline(1.0, color="grey", linestyle=":", linewidth=0.8)
    ax1.set_title(f"Kendall τ to the k={max(ablation.ks)} ranking", fontsize="small")
    ax1.legend(fontsize="small", frameon=False)
    tab = ablation.table
    final = tab[tab.k == max(ablation.ks)].sort_values("rank")
    chans = final.channel.tolist()[:max_channels]
    colors = sns.color_palette("husl", len(chans))
    for ch, color in zip(chans, colors):
        sub = tab[tab.channel == ch].sort_values("k")
        ax2.plot(sub.k, sub["rank"], "o-", color=color, label=ch, markersize=3)
    ax2.invert_yaxis()
    ax2.set_title("rank of each channel", fontsize="small")
    ax2.set_xlabel("k (repeats)")
    ax2.set_ylabel("rank (1 = most important)")
    ax2.legend(fontsize="x-small", frameon=False, ncol=2 if len(chans) > 6 else 1, loc="center left",
               bbox_to_anchor=(1.0, 0.5))
    sns.despine(fig=fig)
    fig.suptitle(title or ablation.title(), fontsize="small", wrap=True)
    _legible(fig)
    return fig


def plot_multistage(design, *, title: str | None = None, ground_truth=None):
    """Importance of every marker per stage of a multi-stage design; selected markers highlighted.

    Parameters
    ----------
    design : MultiStageResult
        From :func:`pxpermute.panel.multistage_design`.
    ground_truth : mapping marker -> relevance, optional
        Planted relevance (default: the design's, when the data set had one);
        informative markers get a red marker under their bar.

    Returns
    -------
    matplotlib.figure.Figure
    """
    table = design.table
    stages = list(dict.fromkeys(table.stage))
    truth = ground_truth if ground_truth is not None else design.info.get("ground_truth")
    widths = [max(2, (table.stage == s).sum()) for s in stages]
    fig, axes = plt.subplots(1, len(stages), figsize=(1.2 + 0.42 * sum(widths), 3.6), sharey=False,
                             gridspec_kw={"width_ratios": widths})
    axes = np.atleast_1d(axes)
    colors = sns.color_palette("colorblind", 2)
    for ax, stage in zip(axes, stages):
        sub = table[table.stage == stage].sort_values("rank")
        x = np.arange(len(sub))
        err = np.vstack([sub.importance - sub.ci_low, sub.ci_high - sub.importance])
        err = np.where(np.isfinite(err), err, 0)
        ax.bar(x, sub.importance, yerr=err, capsize=2, edgecolor="black", linewidth=0.4,
               color=[colors[1] if s else "0.8" for s in sub.selected])
        ax.set_xticks(x)
        ax.set_xticklabels(sub.marker, rotation=90, fontsize="small")
        if truth:
            informative = [m for m in sub.marker if truth.get(m, 0) > 0]
            xs = [i for i, m in enumerate(sub.marker) if m in informative]
            ax.plot(xs, [0] * len(xs), "^", color="crimson", markersize=6, clip_on=False,
                    label="planted informative")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(stage, fontsize="small")
        sns.despine(ax=ax)
    axes[0].set_ylabel("importance")
    if truth:
        axes[0].legend(fontsize="x-small", frameon=False)
    fig.suptitle(title or design.title(), fontsize="small", wrap=True)
    _legible(fig)
    return fig


def plot_cv_result(cv, ax=None, *, title: str | None = None):
    """Held-out F1 per class and F1-macro of a cross-validation: one dot per fold, bar = mean.

    Parameters
    ----------
    cv : CVResult
        From :func:`pxpermute.training.cross_validate`.
    ax : matplotlib Axes, optional
    title : str, optional
        Default: folds, channels and seed of the run.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not hasattr(cv, "f1_per_class") or not hasattr(cv, "f1_macro"):
        raise TypeError(f"cv must be a CVResult from cross_validate, got {type(cv).__name__}")
    labels = [f"F1[{c}]" for c in cv.class_names] + ["F1-macro"]
    values = np.column_stack([np.asarray(cv.f1_per_class, float), np.asarray(cv.f1_macro, float)])
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.4 + 0.7 * len(labels), 3.4))
    else:
        fig = ax.figure
    x = np.arange(len(labels))
    ax.bar(x, values.mean(axis=0), color="0.85", edgecolor="black", linewidth=0.4)
    for f in range(values.shape[0]):
        ax.plot(x, values[f], "o", markersize=3, color="black", alpha=0.6, label="fold" if f == 0 else None)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize="small")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("held-out score")
    ax.legend(fontsize="x-small", frameon=False)
    model = cv.params.get("model") if isinstance(getattr(cv, "params", None), dict) else None
    ax.set_title(title or (f"{len(values)}-fold CV, channels {', '.join(cv.channels)}, seed={cv.random_state}"
                           + (f", model={model}" if model else "")), fontsize="small", wrap=True)
    sns.despine(ax=ax)
    _legible(fig)
    return fig


# ---------------------------------------------------------------------------
# the method, drawn on one cell
# ---------------------------------------------------------------------------
__all__ += ["plot_method_schematic"]

_SCHEMATIC_ROWS = (("original", None), ("pixel permuted (PXPermute)", "pixel"),
                   ("swapped with another cell", "sample"), ("occluded (set to 0)", "fill"))


def plot_method_schematic(dataset, *, model=None, channel: int | str | None = None, index: int | None = None,
                          donor: int | None = None, results=None, n_repeats: int = 10, device=None,
                          fill_value: float = 0.0,
                          random_state: int | None = 0, percentiles: tuple[float, float] = (1.0, 99.0),
                          panel_size: float = 1.25, title: str | None = None):
    """The method on one real cell: original channels, then one channel pixel-permuted, swapped, occluded.

    Rows: the original cell, the cell with ``channel`` pixel-permuted inside the image
    (PXPermute), with ``channel`` taken from another cell (``perturbation="sample"``), and with
    ``channel`` set to ``fill_value`` (occlusion, ``perturbation="fill"``).  Columns: channels;
    the perturbed channel is framed in red and its total intensity is printed under it (pixel
    permutation keeps it exactly).  Every column uses one display range for all rows (the
    ``percentiles`` of that channel over the two cells shown), so an occluded or empty channel
    looks empty.  With ``results`` (``{"pixel": ImportanceResult, "sample": ..., "fill": ...}``,
    any subset) each row label reads out the F1 drop of ``channel`` with its 95 % interval.
    :func:`pxpermute.evaluation.method_schematic` computes the three results from a model first.

    The permutation drawn here is one numpy permutation for illustration; the engine draws its
    own (counter-based) permutations for every repeat.

    Parameters
    ----------
    dataset : IFCDataset
    model : None
        Not accepted here (raises ``TypeError``): use :func:`pxpermute.evaluation.method_schematic`.
    channel : int or str, optional
        Channel to perturb (default: the top channel of ``results["pixel"]``, else 0).
    index, donor : int, optional
        The cell shown and the cell whose channel is swapped in (default: a random cell, and a
        random cell of another class).
    results : mapping of str to ImportanceResult, optional
        Results of ``channel_importance`` with ``perturbation`` = the key, on the same channels.
    n_repeats, device :
        Used by :func:`pxpermute.evaluation.method_schematic`; ignored here.
    fill_value : float, default 0.0
        Occlusion value.
    random_state : int or None, default 0
        Seed of the cell choice and of the illustrated permutation.
    percentiles : (float, float)
        Display range per channel.
    panel_size : float
        Inches per image.
    title : str, optional
        Default: data set, cell, class and channel.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from pxpermute.datasets import make_synthetic
    >>> ds = make_synthetic("default", n_samples=40, image_size=16)
    >>> fig = plot_method_schematic(ds, channel=0)
    >>> len(fig.axes) == 4 * ds.n_channels
    True
    """
    import textwrap

    from .datasets.base import resolve_channels

    if not (hasattr(dataset, "get_batch") and hasattr(dataset, "labels") and hasattr(dataset, "channel_names")):
        raise TypeError(f"plot_method_schematic needs an IFCDataset, got {type(dataset).__name__}")
    if results is None and model is not None:
        # plotting sits above the engine and is imported lazily by ImportanceResult.plot(); computing
        # importances here would close an import cycle, so that step lives in pxpermute.evaluation.
        raise TypeError("plot_method_schematic draws given results; to compute them from a model use "
                        "pxpermute.evaluation.method_schematic(dataset, model, ...), or pass results={'pixel': ...}")
    results = dict(results or {})
    unknown = sorted(set(results) - {"pixel", "sample", "fill"})
    if unknown:
        raise ValueError(f"results keys must be perturbations 'pixel', 'sample', 'fill'; got {unknown}")
    names = list(dataset.channel_names)
    for key, res in results.items():
        if list(res.channel_names) != names:
            raise ValueError(f"results[{key!r}] scores channels {list(res.channel_names)}, the data set has {names}")
    if channel is None:
        channel = int(results["pixel"].ranking[0]) if "pixel" in results else 0
    c = resolve_channels([channel], names)[0]
    labels = np.asarray(dataset.labels)
    n = len(labels)
    if n < 2:
        raise ValueError(f"the data set needs at least 2 cells (one to show, one to swap in); got {n}")
    rng = np.random.default_rng(random_state)
    if index is None:
        index = int(rng.integers(n))
    if not 0 <= int(index) < n:
        raise ValueError(f"index must lie in [0, {n}); got {index}")
    index = int(index)
    if donor is None:
        others = np.flatnonzero(labels != labels[index])
        others = others if others.size else np.setdiff1d(np.arange(n), [index])
        donor = int(rng.choice(others))
    if not 0 <= int(donor) < n or int(donor) == index:
        raise ValueError(f"donor must be another cell in [0, {n}); got {donor}")
    donor = int(donor)
    (cell, other), _ = dataset.get_batch([index, donor])
    cell, other = np.asarray(cell, np.float64), np.asarray(other, np.float64)
    rows = []
    for label, pert in _SCHEMATIC_ROWS:
        img = cell.copy()
        if pert == "pixel":
            img[c] = rng.permutation(img[c].reshape(-1)).reshape(img[c].shape)
        elif pert == "sample":
            img[c] = other[c]
        elif pert == "fill":
            img[c] = fill_value
        rows.append((label, pert, img))
    lims = []
    for j in range(cell.shape[0]):
        vals = np.concatenate([cell[j].ravel(), other[j].ravel()])
        vals = vals[np.isfinite(vals)]
        lo, hi = np.percentile(vals, percentiles) if vals.size else (0.0, 1.0)
        lims.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    n_cols = cell.shape[0]
    label_width = 2.3
    fig, axes = plt.subplots(len(rows), n_cols, squeeze=False,
                             figsize=(label_width + panel_size * n_cols, 0.9 + (panel_size + 0.3) * len(rows)))
    for r, (label, pert, img) in enumerate(rows):
        for j in range(n_cols):
            ax = axes[r, j]
            ax.imshow(np.clip((img[j] - lims[j][0]) / (lims[j][1] - lims[j][0]), 0, 1), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            framed = pert is not None and j == c
            for spine in ax.spines.values():
                spine.set_visible(framed)
                spine.set_color("crimson")
                spine.set_linewidth(2.5)
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(names[j], 12)), fontsize=9)
            if j == c:
                ax.set_xlabel(f"sum {img[j].sum():.3g}", fontsize=7)
            if j == 0:
                text = label
                res = results.get(pert) if pert else None
                if res is not None:
                    lo, hi = float(res.ci_low[c]), float(res.ci_high[c])
                    ci = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
                    text += (f"\nF1 drop {res.importance[c]:.2f}{ci}"
                             + (f"\n(k={res.n_repeats})" if res.n_repeats > 1 else "\n(deterministic)"))
                ax.set_ylabel("\n".join(textwrap.fill(line, 26) for line in text.split("\n")), rotation=0,
                              ha="right", va="center", fontsize=8)
    cls = dataset.class_names[labels[index]] if getattr(dataset, "class_names", None) else labels[index]
    name = getattr(dataset, "name", None) or "dataset"
    fig.suptitle(title or f"{name}: cell {index} ({cls}); channel {names[c]} perturbed (red frame); "
                          f"swapped in from cell {donor}", fontsize=9, wrap=True)
    _legible(fig)
    return fig
