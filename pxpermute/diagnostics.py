"""Look at the data before trusting a model: duplicates, padding, saturation, imbalance, shortcuts.

A classifier trained on imaging flow cytometry (IFC) data learns whatever
separates the classes, including things that have nothing to do with the
biology: the same cell stored twice (once in a training fold, once in a test
fold), background padding tiles, clipped detector values, and acquisition
artefacts that differ between classes because each class was recorded in its
own session (background level, illumination at the image border).  Channel
importance then explains the artefact, not the biology.
:func:`check_dataset` looks for all of these in one pass over the data and
returns a :class:`DiagnosticsReport`.

Checks and their rules
----------------------
``nonfinite``
    Cells with a NaN or inf pixel in a channel (one finding per class and
    channel).  Training refuses such cells; drop them.
``duplicate``
    Exact duplicates: cells whose pixels are byte-identical in every channel
    (one finding per group; ``conflicting labels`` in the detail when the
    copies carry different classes).
``near_duplicate``
    Two cells whose images correlate with Pearson r >= ``near_duplicate_threshold``
    (default 0.99) after each channel is divided by its data-set-wide standard
    deviation and each cell's channel is centred (all channels concatenated).
    Measured on the real Jurkat cell-cycle data (3,419 cells): distinct cells
    reach at most r = 0.954 with their most similar other cell (99th percentile
    0.938), while the two re-stored cells that differ only in their first
    pixel column reach r = 0.9999; 0.99 separates the two groups with room
    on both sides.  Candidates come from a nearest-neighbour search on this
    normalized image itself, in blocks (memory O(block x N), time O(N^2 x C H W);
    switch the check off with ``checks=`` for very large data).
``duplicate_across_splits``
    An exact or near duplicate group with members in two parts of ``splits``
    (e.g. one copy in a training fold and one in its test fold): the test score
    of that fold is inflated.
``padding``
    Tiles without a cell: every channel constant, or every row equal to the
    first row (vertical background strips, as montage tools pad), or every
    column equal to the first column.
``constant_channel``
    A channel that is constant inside a cell that is not a padding tile (an
    unused stain, a failed acquisition), per class and channel.
``saturated``, ``clipped_low``
    Pile-ups at the extremes: a channel is flagged when at least
    ``clip_fraction`` (default 0.1 %) of all its pixels sit exactly on its
    largest (``saturated``) or smallest (``clipped_low``) value.  A detector
    that clips shows exactly this; a continuous signal puts a vanishing
    fraction of its pixels on one value.  The detail gives the fraction of
    clipped pixels per class: a class-specific fraction means the clipped
    range (bright mitotic DNA, dark background) carries class information that
    the model cannot see in the clipped pixels' values.
``class_imbalance``
    A class with fewer than ``imbalance_ratio`` (default 0.1) times the cells
    of the largest class, or with fewer than 10 cells: its F1 is estimated from
    a handful of test cells per fold and its interval is wide.
``shortcut``
    Does the *background* tell the class?  Per cell and channel the background
    level is measured in the four corners of the border ring (corner squares of
    side ``2 x border``, default ``border = max(2, round(0.075 x side))``, i.e.
    6 x 6 px in a 40 px tile): the median of the four corner medians, which
    stays on the background even when a cell reaches one corner.  For each
    class ``k`` and channel ``c`` (and all channels together, channel
    ``"all"``), a linear discriminant (standardized features, shrinkage LDA,
    stratified ``n_splits``-fold cross-validation, seed ``random_state``)
    predicts the class from these background levels; the score is the
    one-vs-rest ROC AUC of the out-of-fold decision values (0.5 = chance).  A
    finding ``shortcut`` is reported when

    1. **AUC >= shortcut_auc (0.75)** and the one-sided Mann-Whitney test of
       the out-of-fold scores against chance has **p < alpha / m** (alpha 0.01,
       m = number of tests: Bonferroni over classes x channel sets x feature
       families), and
    2. **the border adds at least shortcut_gain (0.05) AUC to what the image
       centre tells** (centre square of half the side: its median, mean and
       90th percentile): AUC(border + centre) - AUC(centre) >= 0.05.

    Rule 2 separates an acquisition artefact (a brighter or darker frame, a
    background offset of one session that the cell region does not show in the
    same way) from a stain whose signal fills the whole frame, or from a class
    whose cells are simply brighter everywhere: those are already told by the
    centre, and are reported by ``intensity_shortcut``.
    Why these numbers (measured with ``tests/test_diagnostics.py``'s planted
    cases, 600 cells): the ``"artefact"`` preset, whose class "elongated" has a
    BF frame 0.06 brighter (about 2 pixel-noise standard deviations, invisible
    by eye), gives AUC 0.94 with a gain of 0.42; on the clean presets
    (default, apoptotic, wbc, synapse, panel20) no (class, channel) reaches both
    -- the ones with AUC >= 0.75 (e.g. the default preset's frame-filling
    Marker glow, AUC 1.0) gain <= 0.01, and the gains above 0.05 come with AUCs
    <= 0.62 (chance-level noise).  The p-value guards rare classes (null
    standard deviation of the AUC about 0.07 for 16 cells among 3,400).  On the
    real Jurkat data the largest border AUC (Telophase, DNA, 0.82) gains only
    0.03 over the centre: bright or large cells shine into the frame; it is not
    flagged.
``intensity_shortcut``
    The same test with whole-image intensity statistics of each channel (mean,
    standard deviation, 1st / 50th / 99th percentile).  These *can* carry
    biology (a DNA stain's total intensity measures DNA content), so the finding
    is informational: the class is recognizable from the amount of signal alone,
    which within-image pixel permutation (PXPermute) cannot see -- compare with
    ``perturbation="sample"`` -- and which an acquisition difference between
    sessions produces just as well.

Does a trained model use the frame?
-----------------------------------
The checks judge the data, not a model.  :func:`mask_border` returns the same
cells with the border ring of every channel replaced by the background level
just inside it; score a model, or
compute channel importance, on the masked and the unmasked cells and compare.

Examples
--------
>>> from pxpermute.datasets import make_synthetic
>>> report = check_dataset(make_synthetic("artefact", n_samples=600, random_state=0), random_state=0)
>>> "shortcut" in set(report.findings["check"])
True
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._fileio import ResultFileError, load_bundle, save_bundle
from .datasets.base import IFCDataset

__all__ = ["check_dataset", "mask_border", "BorderMask", "DiagnosticsReport", "CHECKS", "ResultFileError"]

#: Names of the checks, in the order they run.
CHECKS: tuple[str, ...] = (
    "nonfinite",
    "duplicate",
    "near_duplicate",
    "padding",
    "saturation",
    "class_imbalance",
    "shortcut",
    "intensity_shortcut",
)
SCORE_COLUMNS = ["features", "class", "channel", "auc", "p_value", "n_class", "auc_centre", "auc_border_and_centre",
                 "gain", "flagged"]
COLUMNS = ["check", "severity", "class", "channel", "score", "threshold", "n_cells", "detail", "cells"]
SEVERITY = {
    "nonfinite": "error",
    "duplicate": "warning",
    "near_duplicate": "warning",
    "duplicate_across_splits": "error",
    "padding": "warning",
    "constant_channel": "info",
    "saturated": "warning",
    "clipped_low": "info",
    "class_imbalance": "info",
    "shortcut": "warning",
    "intensity_shortcut": "info",
}
_BLOCK = 1024
#: Checks whose cells :meth:`DiagnosticsReport.cells` returns by default (cells to drop before training).
DROP_CHECKS = ("nonfinite", "duplicate", "near_duplicate", "padding", "constant_channel")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pxpermute")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


# -----------------------------------------------------------------------------
# the report
# -----------------------------------------------------------------------------
class DiagnosticsReport:
    """What :func:`check_dataset` found.

    Attributes
    ----------
    findings : pandas.DataFrame
        One row per finding: ``check``, ``severity`` (``"error"``, ``"warning"``,
        ``"info"``), ``class`` (class name or ``None``), ``channel`` (channel name,
        ``"all"`` or ``None``), ``score`` (the check's number: AUC, fraction,
        correlation, group size ...), ``threshold`` (the rule it crossed),
        ``n_cells`` (affected cells), ``detail`` (a sentence) and ``cells`` (the
        affected cell indices, a tuple).
    shortcut_scores : pandas.DataFrame
        Every shortcut test, flagged or not: ``features`` (``"border"`` or
        ``"intensity"``), ``class``, ``channel``, ``auc``, ``p_value``,
        ``n_class`` (cells of the class), ``auc_centre``,
        ``auc_border_and_centre`` and ``gain`` (border tests only), ``flagged``.
    info : dict
        Data set name, size, channel and class names, class counts, the options
        and seed used, package version.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((40, 2, 16, 16)).astype("float32"); y = np.arange(40) % 2
    >>> x[5] = x[3]                      # an exact duplicate
    >>> report = check_dataset((x, y), checks=["duplicate"])
    >>> report.findings[["check", "n_cells"]].values.tolist()
    [['duplicate', 2]]
    """

    kind = "DiagnosticsReport"

    def __init__(self, findings: pd.DataFrame, shortcut_scores: pd.DataFrame, info: Mapping[str, Any]) -> None:
        self.findings = findings.reset_index(drop=True)
        self.shortcut_scores = shortcut_scores.reset_index(drop=True)
        self.info = dict(info)

    # -- protocol -------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """The findings as a tidy DataFrame (a copy; see :attr:`findings` for the columns)."""
        return self.findings.copy()

    def cells(self, checks: Sequence[str] | str | None = None, *, keep_first: bool = True) -> np.ndarray:
        """Sorted indices of cells affected by ``checks``.

        Default: the cells to drop before training -- ``nonfinite``,
        ``duplicate``, ``near_duplicate``, ``padding``, ``constant_channel``.
        Clipping findings list their cells too (ask for ``"saturated"`` or
        ``"clipped_low"``); shortcut and imbalance findings concern whole
        classes and list none.  With ``keep_first=True`` (default) the first cell of every
        duplicate / near-duplicate group is *not* returned, so that dropping the
        returned cells keeps one copy of each.

        Examples
        --------
        >>> import numpy as np
        >>> x = np.random.default_rng(0).random((20, 1, 8, 8)).astype("float32"); y = np.arange(20) % 2
        >>> x[7] = x[2]
        >>> check_dataset((x, y), checks=["duplicate"]).cells().tolist()
        [7]
        """
        if isinstance(checks, str):
            checks = [checks]
        df = self.findings
        if checks is None:
            df = df[df["check"].isin(DROP_CHECKS)]
        else:
            unknown = sorted(set(checks) - set(SEVERITY))
            if unknown:
                raise ValueError(f"unknown check(s) {unknown}; known: {sorted(SEVERITY)}")
            df = df[df["check"].isin(list(checks))]
        out: set[int] = set()
        for check, cells in zip(df["check"], df["cells"]):
            cells = [int(c) for c in cells]
            if keep_first and check in ("duplicate", "near_duplicate") and cells:
                cells = cells[1:]
            if check in ("shortcut", "intensity_shortcut", "duplicate_across_splits"):
                continue
            out.update(cells)
        return np.array(sorted(out), dtype=np.int64)

    def summary(self, width: int = 100) -> str:
        """Printable text: the data, then one finding per item (wrapped at ``width`` characters), most severe first."""
        import textwrap

        i = self.info
        lines = [
            f"Data diagnostics of {i.get('dataset', 'dataset')!r}: {i.get('n_cells')} cells, "
            f"channels {i.get('channel_names')}, image {i.get('image_size')}, seed {i.get('random_state')}",
            *textwrap.wrap(f"checks run: {', '.join(i.get('checks', []))}", width, subsequent_indent="    "),
        ]
        if self.findings.empty:
            lines.append("no findings")
            return "\n".join(lines)
        order = {"error": 0, "warning": 1, "info": 2}
        df = self.findings.assign(_o=self.findings["severity"].map(order)).sort_values(["_o", "check"], kind="stable")
        counts = df["severity"].value_counts()
        lines.append(", ".join(f"{counts.get(s, 0)} {s}" for s in ("error", "warning", "info")))
        for _, r in df.iterrows():
            where = "/".join(str(v) for v in (r["class"], r["channel"]) if isinstance(v, str))
            where = f" [{where}]" if where else ""
            lines += textwrap.wrap(f"- {r['severity'].upper():7s} {r['check']}{where}: {r['detail']}", width,
                                   subsequent_indent="    ", break_on_hyphens=False)
        return "\n".join(lines)

    def __repr__(self) -> str:
        n = len(self.findings)
        checks = sorted(set(self.findings["check"])) if n else []
        return f"DiagnosticsReport({self.info.get('dataset')!r}, {n} findings: {checks})"

    @property
    def title(self) -> str:
        i = self.info
        return (f"Data diagnostics: {i.get('dataset')} ({i.get('n_cells')} cells), border {i.get('border')} px, "
                f"{i.get('n_splits')}-fold linear discriminant, seed {i.get('random_state')}")

    def plot(self, *, features: str = "border", ax: Any = None) -> Any:
        """Heatmap of the shortcut AUCs (class x channel) for ``features`` ("border" or "intensity").

        Flagged cells of the heatmap are outlined; the title says which data and
        seed made it.  Returns the matplotlib Axes.
        """
        import matplotlib.pyplot as plt

        if features not in ("border", "intensity"):
            raise ValueError(f"features must be 'border' or 'intensity', got {features!r}")
        df = self.shortcut_scores[self.shortcut_scores["features"] == features]
        if ax is None:
            _, ax = plt.subplots(figsize=(1.2 + 0.9 * max(1, df["channel"].nunique()), 1.0 + 0.45 * max(1, df["class"].nunique())))
        if df.empty:
            ax.text(0.5, 0.5, f"no {features} shortcut test ran", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            return ax
        classes = list(dict.fromkeys(df["class"]))
        chans = list(dict.fromkeys(df["channel"]))
        grid = np.full((len(classes), len(chans)), np.nan)
        flag = np.zeros_like(grid, dtype=bool)
        for _, r in df.iterrows():
            grid[classes.index(r["class"]), chans.index(r["channel"])] = r["auc"]
            flag[classes.index(r["class"]), chans.index(r["channel"])] = bool(r["flagged"])
        im = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="Reds", aspect="auto")
        for a in range(len(classes)):
            for b in range(len(chans)):
                if np.isfinite(grid[a, b]):
                    ax.text(b, a, f"{grid[a, b]:.2f}", ha="center", va="center", fontsize=8,
                            fontweight="bold" if flag[a, b] else "normal",
                            color="white" if grid[a, b] > 0.85 else "black")
                if flag[a, b]:
                    ax.add_patch(plt.Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, lw=2, ec="black"))
        ax.set_xticks(range(len(chans)), chans)
        ax.set_yticks(range(len(classes)), classes)
        what = "border ring" if features == "border" else "whole-image intensity statistics"
        ax.set_xlabel(f"channel whose {what} the classifier sees")
        ax.figure.colorbar(im, ax=ax, label="one-vs-rest ROC AUC (0.5 = chance)")
        thr = self.info.get("shortcut_auc")
        ax.set_title(f"{self.title}\noutlined: flagged (AUC >= {thr}, Bonferroni p < {self.info.get('alpha')})",
                     fontsize=8)
        return ax

    # -- files -------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Any:
        """Write ``<path>.json`` + ``<path>.npz`` atomically (see :mod:`pxpermute._fileio`).

        Examples
        --------
        >>> import tempfile, numpy as np
        >>> x = np.random.default_rng(0).random((20, 1, 8, 8)).astype("float32"); y = np.arange(20) % 2
        >>> r = check_dataset((x, y), checks=["duplicate"])
        >>> p = r.save(tempfile.mkdtemp() + "/diag")
        >>> DiagnosticsReport.load(p).info["n_cells"]
        20
        """
        findings = self.findings.copy()
        cells = [np.asarray(c, dtype=np.int64) for c in findings.pop("cells")]
        lengths = np.array([c.size for c in cells], dtype=np.int64)
        flat = np.concatenate(cells) if cells else np.zeros(0, np.int64)
        meta = {
            "info": self.info,
            "findings": findings.astype(object).where(findings.notna(), None).to_dict(orient="list"),
            "shortcut_scores": self.shortcut_scores.astype(object).where(self.shortcut_scores.notna(), None)
            .to_dict(orient="list"),
        }
        arrays = {"cells_flat": flat, "cells_lengths": lengths}
        return save_bundle(path, meta, arrays, kind=self.kind)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DiagnosticsReport:
        """Read a report written by :meth:`save`; a damaged file raises :class:`ResultFileError`."""
        meta, arrays = load_bundle(path, kind=cls.kind)
        try:
            findings = pd.DataFrame(meta["findings"])
            for col in COLUMNS:
                if col not in findings.columns and col != "cells":
                    findings[col] = pd.Series(dtype=object)
            findings["score"] = pd.to_numeric(findings["score"]).astype(float)
            findings["threshold"] = pd.to_numeric(findings["threshold"]).astype(float)
            findings["n_cells"] = pd.to_numeric(findings["n_cells"]).astype(np.int64)
            lengths = arrays["cells_lengths"]
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            if bounds[-1] != arrays["cells_flat"].size or lengths.size != len(findings):
                raise ResultFileError(f"{path}: the cell lists do not match the findings")
            findings["cells"] = [tuple(int(v) for v in arrays["cells_flat"][a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
            scores = pd.DataFrame(meta["shortcut_scores"])
            for col in ("auc", "p_value"):
                if col in scores:
                    scores[col] = pd.to_numeric(scores[col]).astype(float)
            if "flagged" in scores:
                scores["flagged"] = scores["flagged"].astype(bool)
            info = meta["info"]
        except (KeyError, TypeError, ValueError) as err:
            raise ResultFileError(f"{path} is not a valid DiagnosticsReport file: {err}") from err
        return cls(findings[COLUMNS], scores, info)


# -----------------------------------------------------------------------------
# helpers
# -----------------------------------------------------------------------------
def _as_dataset(data: Any) -> IFCDataset:
    if isinstance(data, IFCDataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        if hasattr(y, "detach"):
            y = y.detach().cpu().numpy()
        return IFCDataset(np.asarray(x) if not hasattr(x, "shape") else x, np.asarray(y))
    raise TypeError(f"dataset must be an IFCDataset or an (images, labels) pair; got {type(data).__name__}")


def _finding(check: str, *, cls: str | None = None, channel: str | None = None, score: float = float("nan"),
             threshold: float = float("nan"), cells: Sequence[int] = (), detail: str = "",
             n_cells: int | None = None) -> dict[str, Any]:
    cells_t = tuple(int(c) for c in cells)
    return {"check": check, "severity": SEVERITY[check], "class": cls, "channel": channel, "score": float(score),
            "threshold": float(threshold), "n_cells": int(len(cells_t) if n_cells is None else n_cells),
            "detail": detail, "cells": cells_t}


def _normalize_splits(splits: Any, n: int) -> list[dict[str, np.ndarray]]:
    """``splits`` -> list of split sets, each a mapping part name -> indices."""
    if splits is None:
        return []
    if hasattr(splits, "train_indices") and hasattr(splits, "test_indices"):  # a CVResult
        splits = list(zip(splits.train_indices, splits.test_indices))
    if isinstance(splits, Mapping):
        sets = [dict(splits)]
    elif isinstance(splits, Sequence) and not isinstance(splits, (str, bytes)):
        sets = []
        for i, fold in enumerate(splits):
            if isinstance(fold, Mapping):
                sets.append(dict(fold))
            elif isinstance(fold, (tuple, list)) and len(fold) == 2:
                sets.append({"train": fold[0], "test": fold[1]})
            else:
                raise TypeError(
                    f"splits[{i}] must be a (train_indices, test_indices) pair or a mapping part -> indices; "
                    f"got {type(fold).__name__}"
                )
    else:
        raise TypeError(
            "splits must be a mapping part -> indices (e.g. {'train': idx, 'test': idx}), a sequence of "
            f"(train, test) index pairs (CV folds) or a CVResult; got {type(splits).__name__}"
        )
    out = []
    for s in sets:
        part = {}
        for name, idx in s.items():
            a = np.asarray(idx).reshape(-1)
            if a.dtype == bool:
                if a.size != n:
                    raise ValueError(f"boolean split {name!r} has length {a.size}, the data set {n}")
                a = np.flatnonzero(a)
            if a.size and not np.issubdtype(a.dtype, np.integer):
                raise TypeError(f"split {name!r} must hold integer cell indices, got dtype {a.dtype}")
            a = a.astype(np.int64)
            if a.size and (a.min() < 0 or a.max() >= n):
                raise ValueError(f"split {name!r} has indices outside [0, {n}): range [{a.min()}, {a.max()}]")
            part[str(name)] = a
        out.append(part)
    return out


def _auc_and_p(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """ROC AUC of ``scores`` for the positives ``y`` and the one-sided Mann-Whitney p-value (normal approximation with tie correction)."""
    from scipy.stats import norm, rankdata

    n1 = int(y.sum())
    n0 = int(y.size - n1)
    if n1 == 0 or n0 == 0:
        return float("nan"), float("nan")
    r = rankdata(scores)
    u = r[y].sum() - n1 * (n1 + 1) / 2.0
    auc = u / (n1 * n0)
    _, counts = np.unique(scores, return_counts=True)
    n = n1 + n0
    tie = (counts**3 - counts).sum() / (n * (n - 1))
    var = n1 * n0 / 12.0 * ((n + 1) - tie)
    if var <= 0:
        return float(auc), 1.0
    z = (u - n1 * n0 / 2.0 - 0.5) / math.sqrt(var)
    return float(auc), float(norm.sf(z))


def _oof_scores(features: np.ndarray, y: np.ndarray, classes: Sequence[int], n_splits: int,
                random_state: int | None) -> np.ndarray:
    """Out-of-fold decision values ``(n, len(classes))`` of a linear discriminant (standardized, shrinkage LDA)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import StratifiedKFold

    x = np.nan_to_num(np.asarray(features, float))
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    out = np.zeros((x.shape[0], len(classes)))
    if np.all(sd == 0):
        return out
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    for tr, te in cv.split(x, y):
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
        lda.fit(x[tr], y[tr])
        d = lda.decision_function(x[te])
        if d.ndim == 1:  # two classes: sklearn returns the score of the second
            d = np.stack([-d, d], axis=1)
        order = [list(lda.classes_).index(k) for k in classes]
        out[te] = d[:, order]
    return out


def _default_border(h: int, w: int) -> int:
    return max(2, int(round(0.075 * min(h, w))))


def _ring_and_corners(h: int, w: int, border: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The border ring (``border`` px wide) and the four corner squares (side ``2 x border``) as boolean masks."""
    ring = np.zeros((h, w), bool)
    ring[:border] = ring[-border:] = True
    ring[:, :border] = ring[:, -border:] = True
    cs = min(2 * int(border), min(h, w) // 2)
    corners = []
    for r0, c0 in ((0, 0), (0, w - cs), (h - cs, 0), (h - cs, w - cs)):
        cm = np.zeros((h, w), bool)
        cm[r0:r0 + cs, c0:c0 + cs] = True
        corners.append(cm)
    return ring, corners


class BorderMask:
    """Batch transform ``(B, C, H, W) -> (B, C, H, W)``: the border ring replaced by the background just inside it.

    The level of a cell's channel is the median of the medians of the four
    ``border x border`` squares diagonally inside the ring's corners: background
    next to the frame but not in it, so a frame that differs (the artefact) leaves no
    trace in the masked ring.  A
    ``previous`` transform (e.g. the data set's own) is applied first.  Picklable, so a
    masked data set can go to worker processes.
    """

    def __init__(self, border: int, previous: Any = None) -> None:
        self.border = int(border)
        self.previous = previous

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x if self.previous is None else self.previous(x), dtype=np.float32)
        h, w = x.shape[-2:]
        b = self.border
        ring, _ = _ring_and_corners(h, w, b)
        # background just inside the ring: the four b x b squares diagonally inside the ring's corners
        squares = [x[..., r:r + b, c:c + b] for r, c in ((b, b), (b, w - 2 * b), (h - 2 * b, b), (h - 2 * b, w - 2 * b))]
        bg = np.median(np.stack([np.median(q.reshape(*q.shape[:-2], -1), axis=-1) for q in squares], axis=-1), axis=-1)
        return np.where(ring, bg[..., None, None], x).astype(np.float32)

    def __repr__(self) -> str:
        return f"BorderMask(border={self.border})"


def mask_border(dataset: Any, *, border: int | None = None) -> IFCDataset:
    """The same cells with the outer ``border`` pixels of every channel set to the background just inside them.

    Use it to test whether a trained model relies on the image frame, where
    acquisition artefacts (a brighter frame, a session's background offset) live:
    evaluate the model, or compute channel importance, on ``mask_border(data)``
    and on ``data`` and compare.  The level is measured per cell and channel just
    inside the ring (median of four ``border x border`` squares diagonally inside
    its corners, see :class:`BorderMask`), so the masked frame carries nothing the
    frame itself held; a background offset of the whole image survives (it is in
    the centre too, which masking the frame cannot test).
    Nothing is copied: the mask is a batch transform (:class:`BorderMask`) applied
    after the data set's own transform, so lazy data stay lazy.

    Parameters
    ----------
    dataset : IFCDataset or (images, labels)
    border : int, optional
        Ring width in pixels; default as in :func:`check_dataset`
        (``max(2, round(0.075 x side))``, 3 px for 40 px tiles).

    Returns
    -------
    IFCDataset
        Named ``"<name>, border <b> px masked"``; ``provenance["border_masked"]`` records ``b``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(2 * 1 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8)
    >>> m = mask_border((x, [0, 1]), border=2)
    >>> xm, _ = m.get_batch([0])
    >>> bool(np.all(xm[0, 0, 2:-2, 2:-2] == x[0, 0, 2:-2, 2:-2])), len(np.unique(xm[0, 0, :2]))
    (True, 1)
    """
    ds = _as_dataset(dataset)
    _, h, w = ds.image_shape
    if border is None:
        border = _default_border(h, w)
    if isinstance(border, bool) or not isinstance(border, (int, np.integer)) or not 1 <= border < min(h, w) / 2:
        raise ValueError(f"border must be an int in [1, {math.ceil(min(h, w) / 2) - 1}] for {h}x{w} images, got {border!r}")
    out = ds.with_transform(BorderMask(int(border), previous=ds.transform))
    out.name = f"{ds.name}, border {int(border)} px masked"
    out.provenance = {**ds.provenance, "border_masked": int(border)}
    return out


# -----------------------------------------------------------------------------
# the entry point
# -----------------------------------------------------------------------------
def check_dataset(
    dataset: Any,
    *,
    splits: Any = None,
    random_state: int | None = 0,
    checks: Sequence[str] | None = None,
    border: int | None = None,
    n_splits: int = 5,
    shortcut_auc: float = 0.75,
    shortcut_gain: float = 0.05,
    alpha: float = 0.01,
    near_duplicate_threshold: float = 0.99,
    clip_fraction: float = 1e-3,
    imbalance_ratio: float = 0.1,
    max_shortcut_cells: int | None = 20000,
    progress: bool = False,
) -> DiagnosticsReport:
    """Check a data set for duplicates, padding, clipping, NaN, imbalance and acquisition shortcuts.

    The rules, thresholds and their justification are in the module docstring
    (:mod:`pxpermute.diagnostics`); each check is one finding type.  The data are
    read once, in blocks of 1,024 cells (lazy HDF5 data sets included); the
    near-duplicate search keeps a normalized copy of all images in memory
    (``N x C x H x W`` float32).

    Parameters
    ----------
    dataset : IFCDataset or (images, labels)
        The data, as the model would see them (raw values; the data set's
        ``transform`` is applied).
    splits : mapping, sequence of (train, test) pairs or CVResult, optional
        Partitions to check duplicates across: ``{"train": idx, "test": idx}``,
        the folds of a cross-validation (``[(train, test), ...]``), or a
        :class:`~pxpermute.training.CVResult`.
    random_state : int or None, default 0
        Seed of the shortcut cross-validation folds (and of the subsample when
        the data exceed ``max_shortcut_cells``).
    checks : sequence of str, optional
        Subset of :data:`CHECKS` to run (default all); ``"saturation"`` covers
        ``saturated`` and ``clipped_low``, ``"padding"`` also reports
        ``constant_channel``.
    border : int, optional
        Width in pixels of the border ring used by the ``shortcut`` check
        (default ``max(2, round(0.075 * min(H, W)))``).
    n_splits : int, default 5
        Folds of the shortcut classifiers' cross-validation (reduced for a class
        with fewer cells; a class with fewer than 3 cells is not tested).
    shortcut_auc : float, default 0.75
        AUC a class must reach to be flagged as a shortcut.
    shortcut_gain : float, default 0.05
        AUC the border must add to the image centre's for a ``shortcut``.
    alpha : float, default 0.01
        Family-wise significance level of the shortcut tests (Bonferroni).
    near_duplicate_threshold : float, default 0.99
        Correlation above which two cells are near duplicates.
    clip_fraction : float, default 1e-3
        Fraction of a channel's pixels on its extreme value that counts as clipping.
    imbalance_ratio : float, default 0.1
        A class with fewer cells than this times the largest class is reported.
    max_shortcut_cells : int or None, default 20000
        Stratified subsample for the shortcut classifiers (``None``: all cells).
    progress : bool, default False
        tqdm bar over the blocks of cells.

    Returns
    -------
    DiagnosticsReport

    Examples
    --------
    >>> from pxpermute.datasets import make_synthetic
    >>> report = check_dataset(make_synthetic("default", n_samples=300, random_state=0))
    >>> "shortcut" in set(report.findings["check"])
    False
    >>> print(report.summary().splitlines()[0])  # doctest: +ELLIPSIS
    Data diagnostics of 'synthetic-default': 300 cells, ...
    """
    ds = _as_dataset(dataset)
    n = len(ds)
    if n == 0:
        raise ValueError("the data set is empty; nothing to check")
    c_n, h, w = ds.image_shape
    chosen = list(CHECKS) if checks is None else [str(c) for c in ([checks] if isinstance(checks, str) else checks)]
    unknown = [c for c in chosen if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    for name, value, lo, hi in (("shortcut_auc", shortcut_auc, 0.5, 1.0), ("alpha", alpha, 0.0, 1.0),
                                ("near_duplicate_threshold", near_duplicate_threshold, 0.0, 1.0),
                                ("clip_fraction", clip_fraction, 0.0, 1.0), ("imbalance_ratio", imbalance_ratio, 0.0, 1.0)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo < float(value) <= hi:
            raise ValueError(f"{name} must be a number in ({lo}, {hi}], got {value!r}")
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits must be an int >= 2, got {n_splits!r}")
    if border is None:
        border = _default_border(h, w)
    if isinstance(border, bool) or not isinstance(border, (int, np.integer)) or not 1 <= border < min(h, w) / 2:
        raise ValueError(f"border must be an int in [1, {math.ceil(min(h, w) / 2) - 1}] for {h}x{w} images, got {border!r}")
    split_sets = _normalize_splits(splits, n)
    labels = ds.labels
    cnames, chnames = list(ds.class_names), list(ds.channel_names)

    ring, corners = _ring_and_corners(h, w, border)
    side = max(2, min(h, w) // 2)
    centre = np.zeros((h, w), bool)
    centre[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side] = True

    # ---- one pass over the data --------------------------------------------------------
    need_near = "near_duplicate" in chosen
    hashes: list[bytes] = []
    nonfinite = np.zeros((n, c_n), bool)
    constant = np.zeros((n, c_n), bool)
    stripe = np.zeros(n, bool)
    ring_feat = np.zeros((n, c_n, 1), np.float64)
    cen_feat = np.zeros((n, c_n, 3), np.float64)
    int_feat = np.zeros((n, c_n, 5), np.float64)
    vmax = np.full(c_n, -np.inf)
    vmin = np.full(c_n, np.inf)
    sums = np.zeros(c_n)
    sq = np.zeros(c_n)
    count = np.zeros(c_n)
    blocks = range(0, n, _BLOCK)
    if progress:
        from tqdm.auto import tqdm

        blocks = tqdm(blocks, desc="diagnostics", unit="block")
    normed: np.ndarray | None = np.empty((n, c_n, h * w), np.float32) if need_near else None
    for start in blocks:
        idx = np.arange(start, min(n, start + _BLOCK))
        x, _ = ds.get_batch(idx)
        x = np.asarray(x, dtype=np.float32)
        flat = x.reshape(len(idx), c_n, h * w)
        fin = np.isfinite(flat)
        nonfinite[idx] = ~fin.all(axis=2)
        hashes.extend(hashlib.blake2b(np.ascontiguousarray(cell).tobytes(), digest_size=16).digest() for cell in x)
        safe = np.where(fin, flat, np.nan)
        with np.errstate(invalid="ignore"):
            constant[idx] = np.nanmax(safe, axis=2) == np.nanmin(safe, axis=2)
        rows_eq = np.all(x == x[:, :, :1, :], axis=(1, 2, 3))
        cols_eq = np.all(x == x[:, :, :, :1], axis=(1, 2, 3))
        stripe[idx] = rows_eq | cols_eq
        all_finite = bool(fin.all())
        pct = np.percentile if all_finite else np.nanpercentile
        mean = np.mean if all_finite else np.nanmean
        sd = np.std if all_finite else np.nanstd
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            corner_medians = np.stack([pct(safe[:, :, cm.ravel()], 50, axis=2) for cm in corners], axis=2)
            ring_feat[idx, :, 0] = np.median(corner_medians, axis=2)
            cen = safe[:, :, centre.ravel()]
            cen_feat[idx, :, 0] = pct(cen, 50, axis=2)
            cen_feat[idx, :, 1] = mean(cen, axis=2)
            cen_feat[idx, :, 2] = pct(cen, 90, axis=2)
            p1, p50, p99 = pct(safe, [1, 50, 99], axis=2)
            int_feat[idx, :, 0] = mean(safe, axis=2)
            int_feat[idx, :, 1] = sd(safe, axis=2)
            int_feat[idx, :, 2], int_feat[idx, :, 3], int_feat[idx, :, 4] = p1, p50, p99
            vmax = np.fmax(vmax, np.nanmax(safe, axis=(0, 2)))
            vmin = np.fmin(vmin, np.nanmin(safe, axis=(0, 2)))
        z = np.where(fin, flat, 0.0).astype(np.float64)
        sums += z.sum(axis=(0, 2))
        sq += (z**2).sum(axis=(0, 2))
        count += fin.sum(axis=(0, 2))
        if normed is not None:
            normed[idx] = np.where(fin, flat, 0.0)

    findings: list[dict[str, Any]] = []
    shortcut_rows: list[dict[str, Any]] = []

    # ---- NaN / inf ---------------------------------------------------------------------
    if "nonfinite" in chosen:
        for c in range(c_n):
            for k in range(len(cnames)):
                cells = np.flatnonzero(nonfinite[:, c] & (labels == k))
                if cells.size:
                    findings.append(_finding(
                        "nonfinite", cls=cnames[k], channel=chnames[c], score=cells.size / max(1, np.sum(labels == k)),
                        threshold=0.0, cells=cells,
                        detail=f"{cells.size} {cnames[k]} cells have NaN/inf pixels in {chnames[c]} "
                               f"(e.g. cell {int(cells[0])}); training refuses them: drop or repair these cells"))

    # ---- exact duplicates ----------------------------------------------------------------
    groups: list[np.ndarray] = []
    if "duplicate" in chosen or split_sets:
        by_hash: dict[bytes, list[int]] = defaultdict(list)
        for i, hsh in enumerate(hashes):
            by_hash[hsh].append(i)
        groups = [np.array(v) for v in by_hash.values() if len(v) > 1]
        if "duplicate" in chosen:
            for g in groups:
                labs = sorted({cnames[int(labels[i])] for i in g})
                conflict = len(labs) > 1
                findings.append(_finding(
                    "duplicate", cls=labs[0] if not conflict else None, channel=None, score=g.size, threshold=2, cells=g,
                    detail=(f"cells {g.tolist()} are byte-identical in every channel"
                            + (f" but carry conflicting labels {labs}" if conflict else f" ({labs[0]})")
                            + "; keep one copy (loaders do this with drop_duplicates=True)")))

    # ---- near duplicates -------------------------------------------------------------------
    near_pairs: list[tuple[int, int, float]] = []
    if normed is not None:
        std = np.sqrt(np.maximum(sq / np.maximum(count, 1) - (sums / np.maximum(count, 1)) ** 2, 0.0))
        std = np.where(std > 0, std, 1.0).astype(np.float32)
        normed /= std[None, :, None]
        normed -= normed.mean(axis=2, keepdims=True)
        z = normed.reshape(n, -1)
        norms = np.linalg.norm(z, axis=1)
        valid = norms > 0
        z /= np.where(valid, norms, 1.0)[:, None]
        exact_pair = set()
        for g in groups:
            for a in g:
                for b in g:
                    exact_pair.add((int(a), int(b)))
        step = max(1, int(2**24 // max(1, n)))
        for start in range(0, n, step):
            sim = z[start:start + step] @ z.T
            rows, cols = np.nonzero(sim >= near_duplicate_threshold)
            for a, b in zip(rows + start, cols):
                if a < b and valid[a] and valid[b] and (int(a), int(b)) not in exact_pair and not (stripe[a] and stripe[b]):
                    near_pairs.append((int(a), int(b), float(sim[a - start, b])))
        del normed, z
        # connected components of the near-duplicate graph
        parent = list(range(n))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, b, _ in near_pairs:
            parent[find(a)] = find(b)
        comp: dict[int, list[int]] = defaultdict(list)
        for a, b, _ in near_pairs:
            comp[find(a)].extend([a, b])
        best = defaultdict(float)
        for a, _b, s in near_pairs:
            best[find(a)] = max(best[find(a)], s)
        for root, members in comp.items():
            g = np.array(sorted(set(members)))
            labs = sorted({cnames[int(labels[i])] for i in g})
            conflict = len(labs) > 1
            diff_cols = ""
            if g.size == 2:
                xa, _ = ds.get_batch(g)
                d = np.nonzero(np.any(xa[0] != xa[1], axis=0))
                rows_d, cols_d = np.unique(d[0]), np.unique(d[1])
                if rows_d.size and cols_d.size:
                    diff_cols = (f"; they differ in {int(np.count_nonzero(np.any(xa[0] != xa[1], axis=0)))} pixel positions "
                                 f"(rows {rows_d.min()}-{rows_d.max()}, columns {cols_d.min()}-{cols_d.max()})")
            findings.append(_finding(
                "near_duplicate", cls=labs[0] if not conflict else None, score=best[root],
                threshold=near_duplicate_threshold, cells=g,
                detail=(f"cells {g.tolist()} correlate with r = {best[root]:.4f} (>= {near_duplicate_threshold})"
                        + (f", labels {labs} conflict" if conflict else f" ({labs[0]})") + diff_cols
                        + "; probably the same cell stored twice: keep one")))
            groups.append(g)  # for the across-splits check

    # ---- duplicates across splits --------------------------------------------------------------
    if split_sets and groups:
        for si, parts in enumerate(split_sets):
            where: dict[int, list[str]] = defaultdict(list)
            for name, idx in parts.items():
                for i in idx.tolist():
                    where[i].append(name)
            for g in groups:
                seen = {p for i in g.tolist() for p in where.get(i, [])}
                if len(seen) > 1:
                    label = f"split set {si}" if len(split_sets) > 1 else "the splits"
                    findings.append(_finding(
                        "duplicate_across_splits", cls=cnames[int(labels[g[0]])], score=len(seen), threshold=2, cells=g,
                        detail=f"copies of one cell ({g.tolist()}) sit in different parts {sorted(seen)} of {label}: "
                               "the model is tested on a cell it was trained on; drop the duplicates before splitting"))

    # ---- padding / constant -----------------------------------------------------------------------
    if "padding" in chosen:
        pad = stripe | constant.all(axis=1)
        for k in range(len(cnames)):
            cells = np.flatnonzero(pad & (labels == k))
            if cells.size:
                findings.append(_finding(
                    "padding", cls=cnames[k], score=cells.size / max(1, np.sum(labels == k)), threshold=0.0, cells=cells,
                    detail=f"{cells.size} {cnames[k]} tiles hold no cell (constant, or all rows / all columns "
                           f"identical in every channel), e.g. cell {int(cells[0])}: drop them"))
        for c in range(c_n):
            const_c = constant[:, c] & ~pad
            if const_c.all():
                findings.append(_finding(
                    "constant_channel", channel=chnames[c], score=1.0, threshold=0.0, n_cells=n,
                    detail=f"{chnames[c]} is constant in every cell: it carries no information (an unused channel?)"))
                continue
            for k in range(len(cnames)):
                cells = np.flatnonzero(const_c & (labels == k))
                if cells.size:
                    findings.append(_finding(
                        "constant_channel", cls=cnames[k], channel=chnames[c], score=cells.size / max(1, np.sum(labels == k)),
                        threshold=0.0, cells=cells,
                        detail=f"{chnames[c]} is constant in {cells.size} {cnames[k]} cells (e.g. {int(cells[0])})"))

    # ---- saturation / clipping ------------------------------------------------------------------------
    if "saturation" in chosen:
        at_max = np.zeros((n, c_n), np.int64)
        at_min = np.zeros((n, c_n), np.int64)
        for start in range(0, n, _BLOCK):
            idx = np.arange(start, min(n, start + _BLOCK))
            x, _ = ds.get_batch(idx)
            flat = np.asarray(x, dtype=np.float32).reshape(len(idx), c_n, h * w)
            at_max[idx] = (flat == vmax[None, :, None]).sum(axis=2)
            at_min[idx] = (flat == vmin[None, :, None]).sum(axis=2)
        for check, hits, value in (("saturated", at_max, vmax), ("clipped_low", at_min, vmin)):
            for c in range(c_n):
                if not np.isfinite(value[c]) or vmax[c] == vmin[c]:
                    continue
                frac = hits[:, c].sum() / (n * h * w)
                if frac < clip_fraction:
                    continue
                cells = np.flatnonzero(hits[:, c] > 0)
                per_class = []
                for k in range(len(cnames)):
                    mk = labels == k
                    if mk.any():
                        per_class.append(f"{cnames[k]} {hits[mk, c].sum() / (mk.sum() * h * w):.1%}")
                side = "largest" if check == "saturated" else "smallest"
                findings.append(_finding(
                    check, channel=chnames[c], score=frac, threshold=clip_fraction, cells=cells,
                    detail=(f"{frac:.2%} of all {chnames[c]} pixels sit exactly on its {side} value {value[c]:g} "
                            f"({cells.size} cells affected); clipped pixels per class: {', '.join(per_class)}")))

    # ---- class imbalance -------------------------------------------------------------------------------
    counts = np.bincount(labels, minlength=len(cnames))
    if "class_imbalance" in chosen:
        largest = counts.max()
        for k, cnt in enumerate(counts):
            if cnt < imbalance_ratio * largest or cnt < 10:
                findings.append(_finding(
                    "class_imbalance", cls=cnames[k], score=cnt / largest, threshold=imbalance_ratio, n_cells=int(cnt),
                    detail=(f"{cnames[k]} has {cnt} cells, {cnt / largest:.1%} of the largest class ({largest}); "
                            f"with {n_splits}-fold CV about {cnt / n_splits:.0f} test cells per fold, so its F1 varies "
                            "a lot between folds; oversample in training and report per-class intervals")))

    # ---- shortcuts --------------------------------------------------------------------------------------
    families = [f for f in ("shortcut", "intensity_shortcut") if f in chosen]
    if families:
        use = np.flatnonzero(~nonfinite.any(axis=1) & ~(stripe | constant.all(axis=1)))
        if max_shortcut_cells is not None and use.size > max_shortcut_cells:
            from sklearn.model_selection import train_test_split

            use, _ = train_test_split(use, train_size=int(max_shortcut_cells), stratify=labels[use],
                                      random_state=random_state)
            use = np.sort(use)
        y_all = labels[use]
        present = [k for k in range(len(cnames)) if np.sum(y_all == k) >= 3]
        sets = [(chnames[c], [c]) for c in range(c_n)] + ([("all", list(range(c_n)))] if c_n > 1 else [])
        folds = int(min(n_splits, min(np.sum(y_all == k) for k in present))) if len(present) >= 2 else 0
        keep = np.isin(y_all, present)
        use, y_all = use[keep], y_all[keep]
        m_tests = max(1, len(present) * len(sets) * len(families))
        if folds >= 2:
            for fam in families:
                fam_label = "border" if fam == "shortcut" else "intensity"
                for set_name, chs in sets:
                    if fam == "shortcut":
                        f_main = ring_feat[use][:, chs].reshape(use.size, -1)
                        f_ref = cen_feat[use][:, chs].reshape(use.size, -1)
                        s_main = _oof_scores(f_main, y_all, present, folds, random_state)
                        s_ref = _oof_scores(f_ref, y_all, present, folds, random_state)
                        s_both = _oof_scores(np.concatenate([f_main, f_ref], 1), y_all, present, folds, random_state)
                    else:
                        f_main = int_feat[use][:, chs].reshape(use.size, -1)
                        s_main = _oof_scores(f_main, y_all, present, folds, random_state)
                    for j, k in enumerate(present):
                        yk = y_all == k
                        auc, p = _auc_and_p(s_main[:, j], yk)
                        row = {"features": fam_label, "class": cnames[k], "channel": set_name, "auc": auc,
                               "p_value": p, "n_class": int(yk.sum())}
                        significant = bool(auc >= shortcut_auc and p < alpha / m_tests)
                        if fam == "shortcut":
                            auc_ref, _ = _auc_and_p(s_ref[:, j], yk)
                            auc_both, _ = _auc_and_p(s_both[:, j], yk)
                            gain = auc_both - auc_ref
                            row.update(auc_centre=auc_ref, auc_border_and_centre=auc_both, gain=gain)
                            flag = significant and gain >= shortcut_gain
                        else:
                            row.update(auc_centre=float("nan"), auc_border_and_centre=float("nan"), gain=float("nan"))
                            flag = significant
                        row["flagged"] = flag
                        shortcut_rows.append(row)
        # findings: per class, the flagged single channels; "all" only when no single channel is flagged
        rows_df = pd.DataFrame(shortcut_rows)
        for fam in families:
            fam_label = "border" if fam == "shortcut" else "intensity"
            if rows_df.empty:
                continue
            sub = rows_df[(rows_df["features"] == fam_label) & rows_df["flagged"]]
            for cls_name in dict.fromkeys(sub["class"]):
                hits = sub[sub["class"] == cls_name]
                singles = hits[hits["channel"] != "all"]
                chosen_rows = singles if len(singles) else hits
                for _, r in chosen_rows.iterrows():
                    what = "of " + r["channel"] if r["channel"] != "all" else "of all channels together"
                    if fam == "shortcut":
                        detail = (f"{cls_name} is recognized from the background level of the border ring ({border} px) "
                                  f"{what}: one-vs-rest AUC {r['auc']:.2f} (chance 0.5, p = {r['p_value']:.1e}), and the "
                                  f"ring adds {r['gain']:.2f} AUC to what the image centre tells "
                                  f"({r['auc_centre']:.2f} -> {r['auc_border_and_centre']:.2f}). The ring should hold "
                                  "only background: this class was probably acquired differently (session, background, "
                                  "illumination). Look at the images; mask or crop the border and see whether the "
                                  "model's score and channel ranking change")
                    else:
                        detail = (f"{cls_name} is recognized from the intensity statistics {what} alone: AUC "
                                  f"{r['auc']:.2f} (p = {r['p_value']:.1e}). Expected if the channel measures an amount "
                                  "(e.g. DNA content); otherwise an exposure/session difference. Pixel permutation keeps "
                                  "these statistics, so PXPermute cannot see this signal: compare with "
                                  "perturbation='sample'")
                    findings.append(_finding(fam, cls=cls_name, channel=r["channel"], score=r["auc"],
                                             threshold=shortcut_auc, n_cells=int(r["n_class"]), detail=detail))

    findings_df = pd.DataFrame(findings, columns=COLUMNS)
    scores_df = pd.DataFrame(shortcut_rows, columns=SCORE_COLUMNS)
    info = {
        "dataset": getattr(ds, "name", "dataset"),
        "n_cells": n,
        "image_size": f"{h}x{w}",
        "channel_names": chnames,
        "class_names": cnames,
        "class_counts": {cnames[k]: int(v) for k, v in enumerate(counts)},
        "checks": chosen,
        "random_state": random_state,
        "border": int(border),
        "n_splits": int(n_splits),
        "shortcut_auc": float(shortcut_auc),
        "shortcut_gain": float(shortcut_gain),
        "alpha": float(alpha),
        "near_duplicate_threshold": float(near_duplicate_threshold),
        "clip_fraction": float(clip_fraction),
        "imbalance_ratio": float(imbalance_ratio),
        "n_split_sets": len(split_sets),
        "provenance": {k: v for k, v in ds.provenance.items() if isinstance(v, (str, int, float, bool, type(None)))},
        "package_version": _version(),
    }
    return DiagnosticsReport(findings_df, scores_df, info)
