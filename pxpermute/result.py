"""The result object shared by PXPermute, occlusion and the attribution baselines."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ._fileio import ResultFileError, load_bundle, save_bundle
from .metrics import compute_metric, present_classes

__all__ = ["ImportanceResult", "ResultFileError"]

_ATTRIBUTION_METHODS = {"integrated_gradients", "deeplift", "guided_gradcam", "lrp"}


class ImportanceResult:
    """Channel importances with their per-repeat and per-class detail.

    Modelled on scikit-learn's ``permutation_importance`` Bunch, with more detail.

    Attributes
    ----------
    channel_names : list of str
        One name per scored unit (a channel, or a channel group).
    class_names : list of str
    importances : ndarray (R, C)
        Importance per repeat and unit (the metric drop aggregated over classes).
    drops : ndarray (R, C, K') or None
        Per-class drop ``baseline_scores - scores``; ``K' = 1`` for overall metrics.
        ``NaN`` for classes absent from the evaluated data.
    baseline_scores : ndarray (K',) or None
        Unperturbed metric per class.
    scores : ndarray (R, C, K') or None
        Metric per repeat, unit and class with the unit perturbed.
    confusion, baseline_confusion : ndarray (R, C, K, K) and (K, K), or None
        The accumulated confusion matrices (rows true, columns predicted); any
        metric can be recomputed from them with :meth:`rescore`.
    importances_mean, importances_std, importances_median : ndarray (C,)
    importance : ndarray (C,)
        The summary used for the ranking: mean or median over repeats (``aggregate``).
    importances_sem : ndarray (C,)
        Standard error of the mean over repeats, ``std / sqrt(R)`` (NaN when R < 2).
    ci_low, ci_high : ndarray (C,)
        Confidence interval (level ``info["confidence"]``, default 95 %) of the
        mean over repeats: t-interval ``mean +- t * std / sqrt(R)``, i.e. built
        on the standard error, not on the spread; NaN when R < 2.  It reflects
        the randomness of the permutations only, not which test cells were drawn.
    bootstrap_confusion, bootstrap_baseline_confusion : ndarray (B, C, K, K) and (B, K, K), or None
        Poisson-bootstrap weighted confusion matrices (pooled over repeats) when
        the run had ``n_bootstrap = B > 0``; see :mod:`pxpermute.stats`.
    bootstrap_importances : ndarray (B, C) or None
        Importance per bootstrap replicate over the test images.
    bootstrap_se, bootstrap_ci_low, bootstrap_ci_high : ndarray (C,) or None
        Bootstrap standard error and percentile interval of the importance: they
        reflect which test cells were drawn *and* the permutations.
    p_values : ndarray (C,) or None
        One-sided bootstrap p-value of H0 "importance <= 0" (see
        :func:`pxpermute.stats.bootstrap_p_values`).
    rank_stability : ndarray (C,) or None
        Fraction of bootstrap replicates in which each unit holds its rank.
    baseline_score_ci : (float, float) or None
        Bootstrap interval of the unperturbed score.
    present_classes : ndarray (K,) of bool
        Classes with support in the evaluated data (the others are left out of
        every average, see :mod:`pxpermute.metrics`).
    groups : dict or None
        Unit name -> channel names, when units are channel groups.
    info : dict
        Provenance: method, perturbation, metric, aggregate, n_repeats, random_state,
        n_samples, data and model names, runtime, device ...
    """

    def __init__(
        self,
        importances: np.ndarray,
        *,
        channel_names: Sequence[str],
        class_names: Sequence[str] = (),
        drops: np.ndarray | None = None,
        baseline_scores: np.ndarray | None = None,
        confusion: np.ndarray | None = None,
        baseline_confusion: np.ndarray | None = None,
        present: np.ndarray | None = None,
        groups: dict[str, list[str]] | None = None,
        info: dict[str, Any] | None = None,
        bootstrap_confusion: np.ndarray | None = None,
        bootstrap_baseline_confusion: np.ndarray | None = None,
    ) -> None:
        imp = np.asarray(importances, dtype=np.float64)
        if imp.ndim == 1:
            imp = imp[None, :]
        if imp.ndim != 2:
            raise ValueError(f"importances must have shape (repeats, channels), got {imp.shape}")
        self.importances = imp
        self.channel_names = list(channel_names)
        if len(self.channel_names) != imp.shape[1]:
            raise ValueError(f"{len(self.channel_names)} channel names for {imp.shape[1]} scored units")
        self.class_names = list(class_names)
        self.drops = None if drops is None else np.asarray(drops, dtype=np.float64)
        self.baseline_scores = None if baseline_scores is None else np.asarray(baseline_scores, dtype=np.float64)
        self.confusion = None if confusion is None else np.asarray(confusion)
        self.baseline_confusion = None if baseline_confusion is None else np.asarray(baseline_confusion)
        self.bootstrap_confusion = None if bootstrap_confusion is None else np.asarray(bootstrap_confusion)
        self.bootstrap_baseline_confusion = (
            None if bootstrap_baseline_confusion is None else np.asarray(bootstrap_baseline_confusion))
        if present is None:
            present = np.ones(len(self.class_names), bool)
        self.present_classes = np.asarray(present, bool)
        self.groups = groups
        self.info = dict(info or {})
        self.info.setdefault("aggregate", "mean")
        self._summarize()

    # -- construction from confusion matrices ----------------------------------
    @classmethod
    def from_confusion(
        cls,
        baseline_confusion: np.ndarray,
        confusion: np.ndarray,
        *,
        metric: str = "f1",
        aggregate: str = "mean",
        present: np.ndarray | None = None,
        **kwargs: Any,
    ) -> "ImportanceResult":
        """Build a result from the baseline (K, K) and perturbed (R, C, K, K) confusion matrices."""
        if aggregate not in ("mean", "median"):
            raise ValueError(f"aggregate must be 'mean' or 'median', got {aggregate!r}")
        if present is None:
            present = present_classes(baseline_confusion)
        present = np.asarray(present, bool)
        base = compute_metric(baseline_confusion, metric, present)
        scores = compute_metric(confusion, metric, present)
        drops = base - scores
        cols = present if drops.shape[-1] == len(present) else np.ones(drops.shape[-1], bool)
        agg = np.mean if aggregate == "mean" else np.median
        importances = agg(drops[..., cols], axis=-1)
        info = dict(kwargs.pop("info", {}) or {})
        info.update(metric=metric, aggregate=aggregate)
        return cls(
            importances,
            drops=drops,
            baseline_scores=base,
            confusion=confusion,
            baseline_confusion=baseline_confusion,
            present=present,
            info=info,
            **kwargs,
        )

    def rescore(self, metric: str, *, aggregate: str | None = None) -> "ImportanceResult":
        """The same run scored with another metric (from the stored confusion matrices)."""
        if self.confusion is None or self.baseline_confusion is None:
            raise ValueError("this result holds no confusion matrices (e.g. an attribution baseline); cannot rescore")
        info = {k: v for k, v in self.info.items() if k not in ("metric", "aggregate")}
        return ImportanceResult.from_confusion(
            self.baseline_confusion,
            self.confusion,
            metric=metric,
            aggregate=aggregate or self.info.get("aggregate", "mean"),
            present=self.present_classes,
            channel_names=self.channel_names,
            class_names=self.class_names,
            groups=self.groups,
            info=info,
            bootstrap_confusion=self.bootstrap_confusion,
            bootstrap_baseline_confusion=self.bootstrap_baseline_confusion,
        )

    # -- summaries ---------------------------------------------------------------
    def _summarize(self) -> None:
        imp = self.importances
        R = imp.shape[0]
        self.importances_mean = imp.mean(axis=0)
        self.importances_median = np.median(imp, axis=0)
        self.importances_std = imp.std(axis=0, ddof=1) if R > 1 else np.zeros(imp.shape[1])
        level = float(self.info.get("confidence", 0.95))
        self.importances_sem = self.importances_std / np.sqrt(R) if R > 1 else np.full(imp.shape[1], np.nan)
        if R > 1:
            half = stats.t.ppf(0.5 + level / 2, R - 1) * self.importances_sem
            self.ci_low = self.importances_mean - half
            self.ci_high = self.importances_mean + half
        else:
            self.ci_low = np.full(imp.shape[1], np.nan)
            self.ci_high = np.full(imp.shape[1], np.nan)
        self.importance = self.importances_median if self.info.get("aggregate") == "median" else self.importances_mean
        boot: dict[str, Any] = dict.fromkeys(
            ("bootstrap_importances", "bootstrap_drops", "bootstrap_se", "bootstrap_ci_low", "bootstrap_ci_high",
             "p_values", "rank_stability", "class_p_values", "class_se", "class_ci_low", "class_ci_high",
             "baseline_score_ci"))
        if (self.bootstrap_confusion is not None and self.bootstrap_baseline_confusion is not None
                and self.confusion is not None and self.baseline_confusion is not None and self.drops is not None):
            from .stats import bootstrap_summary

            boot.update(bootstrap_summary(self, level))
        self.__dict__.update(boot)

    @property
    def n_bootstrap(self) -> int:
        """Bootstrap replicates held (0 without a bootstrap)."""
        return 0 if self.bootstrap_confusion is None else int(self.bootstrap_confusion.shape[0])

    @property
    def n_repeats(self) -> int:
        return int(self.importances.shape[0])

    @property
    def baseline_score(self) -> float:
        """Unperturbed metric averaged over present classes."""
        if self.baseline_scores is None:
            return float("nan")
        b = self.baseline_scores
        return float(np.mean(b[self.present_classes] if b.shape[-1] == len(self.present_classes) else b))

    @property
    def ranking(self) -> np.ndarray:
        """Unit indices from most to least important (ties keep channel order)."""
        return np.argsort(-self.importance, kind="stable")

    @property
    def ranked_channels(self) -> list[str]:
        return [self.channel_names[i] for i in self.ranking]

    def normalized(self) -> pd.Series:
        """Importances min-max normalized to [0, 1] (as the paper shows them)."""
        return pd.Series(_minmax(self.importance, self.importance), index=self.channel_names, name="normalized")

    def to_frame(self, level: str = "channel") -> pd.DataFrame:
        """Tidy table.

        ``level="channel"``: one row per channel (importance, std, standard error
        ``sem``, CI, normalized, rank; with a bootstrap also ``boot_se``,
        ``boot_ci_low/high``, ``p_value``, ``rank_stability``);
        ``"repeat"``: one row per (repeat, channel); ``"class"``: one row per
        (repeat, channel, class) with baseline, perturbed score and drop;
        ``"per_class"``: one row per (channel, class) with the drop summarized
        over repeats (mean, std, sem, t-interval; with a bootstrap also
        ``boot_se``, ``boot_ci_low/high`` and the per-class ``p_value``).
        """
        method = self.info.get("method", "pxpermute")
        if level == "channel":
            df = pd.DataFrame(
                {
                    "channel": self.channel_names,
                    "importance": self.importance,
                    "mean": self.importances_mean,
                    "std": self.importances_std,
                    "sem": self.importances_sem,
                    "median": self.importances_median,
                    "ci_low": self.ci_low,
                    "ci_high": self.ci_high,
                    "normalized": self.normalized().to_numpy(),
                }
            )
            df["rank"] = np.argsort(self.ranking) + 1
            if self.bootstrap_importances is not None:
                df["boot_se"] = self.bootstrap_se
                df["boot_ci_low"] = self.bootstrap_ci_low
                df["boot_ci_high"] = self.bootstrap_ci_high
                df["p_value"] = self.p_values
                df["rank_stability"] = self.rank_stability
            df.insert(0, "method", method)
            return df
        if level == "repeat":
            R, C = self.importances.shape
            return pd.DataFrame(
                {
                    "method": method,
                    "repeat": np.repeat(np.arange(R), C),
                    "channel": np.tile(self.channel_names, R),
                    "importance": self.importances.reshape(-1),
                }
            )
        if level == "class":
            if self.drops is None:
                raise ValueError("this result has no per-class detail")
            R, C, K = self.drops.shape
            names = self.class_names if K == len(self.class_names) else [self.info.get("metric", "overall")] * K
            base = np.broadcast_to(self.baseline_scores, (R, C, K))
            return pd.DataFrame(
                {
                    "method": method,
                    "repeat": np.repeat(np.arange(R), C * K),
                    "channel": np.tile(np.repeat(self.channel_names, K), R),
                    "class": np.tile(names, R * C),
                    "baseline": base.reshape(-1),
                    "score": (base - self.drops).reshape(-1),
                    "drop": self.drops.reshape(-1),
                }
            )
        if level == "per_class":
            from .stats import per_class_frame

            return per_class_frame(self)
        raise ValueError(f"level must be 'channel', 'repeat', 'class' or 'per_class', got {level!r}")

    def per_class(self, value: str = "mean") -> pd.DataFrame:
        """Channel x class table of the drop: rows channels, columns classes.

        ``value`` is any column of ``to_frame("per_class")``: ``"mean"`` (mean drop
        over repeats, the default), ``"median"``, ``"std"``, ``"sem"``, ``"ci_low"``,
        ``"ci_high"``, and with a bootstrap ``"boot_se"``, ``"boot_ci_low"``,
        ``"boot_ci_high"``, ``"p_value"``.
        """
        if self.drops is None:
            raise ValueError("this result has no per-class detail")
        names = self.class_names if self.drops.shape[-1] == len(self.class_names) else [self.info.get("metric", "overall")]
        if value == "mean":
            return pd.DataFrame(self.drops.mean(axis=0), index=self.channel_names, columns=names)
        df = self.to_frame("per_class")
        if value not in df.columns or value in ("method", "channel", "class"):
            raise ValueError(f"unknown per-class value {value!r}; choose one of {list(df.columns[3:])}")
        table = df.pivot(index="channel", columns="class", values=value)
        return table.loc[self.channel_names, names].rename_axis(index=None, columns=None)

    def summary(self) -> str:
        """A plain-text table of the ranking with 95 % CIs."""
        df = self.to_frame().sort_values("rank")
        lines = [self.title()]
        pct = f"{100 * float(self.info.get('confidence', 0.95)):g}%"
        boot = self.bootstrap_importances is not None
        head = f"{'rank':>4}  {'channel':<14}{'importance':>11}  {pct + ' CI (repeats)':>21}  {'normalized':>10}"
        if boot:
            head += f"  {pct + ' CI (bootstrap)':>21}  {'p':>7}  {'P(rank)':>7}"
        lines.append(head)
        for _, row in df.iterrows():
            ci = f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}]" if np.isfinite(row.ci_low) else "n/a"
            line = f"{int(row['rank']):>4}  {row.channel:<14}{row.importance:>+11.4f}  {ci:>21}  {row.normalized:>10.3f}"
            if boot:
                bci = f"[{row.boot_ci_low:+.4f}, {row.boot_ci_high:+.4f}]"
                line += f"  {bci:>21}  {row.p_value:>7.4f}  {row.rank_stability:>7.2f}"
            lines.append(line)
        if boot:
            lines.append(f"bootstrap: {self.n_bootstrap} Poisson replicates over the test images; "
                         "p: one-sided bootstrap test of importance > 0; P(rank): rank stability")
        return "\n".join(lines)

    def title(self) -> str:
        i = self.info
        parts = [str(i.get("method", "pxpermute"))]
        if "perturbation" in i:
            parts.append(f"perturbation={i['perturbation']}")
        if "metric" in i:
            parts.append(f"metric={i['metric']}")
        if i.get("method") not in _ATTRIBUTION_METHODS:  # attribution results hold one row per image, not repeats
            parts.append(f"k={self.n_repeats}")
        if i.get("random_state") is not None:
            parts.append(f"seed={i['random_state']}")
        for key in ("data", "model"):
            if i.get(key):
                parts.append(f"{key}={i[key]}")
        if "n_samples" in i:
            parts.append(f"n={i['n_samples']}")
        return ", ".join(parts)

    def plot(self, ax=None, *, normalized: bool = True, **kwargs):
        """Bar plot of importances with 95 % CIs (see :func:`pxpermute.plotting.plot_importance`)."""
        from .plotting import plot_importance

        return plot_importance(self, ax=ax, normalized=normalized, **kwargs)

    def __repr__(self) -> str:
        top = ", ".join(f"{c}={v:.3g}" for c, v in zip(self.ranked_channels, self.importance[self.ranking]))
        return f"ImportanceResult({self.title()}; {top})"

    # -- files -------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>.json`` (metadata, summary table) and ``<path>.npz`` (arrays).

        Both files are written to temporary names first and renamed, so an
        interrupted save never leaves a half-written result behind; the JSON
        records the SHA-256 of the NPZ so :meth:`load` detects corruption
        (see :mod:`pxpermute._fileio`).  Returns the JSON path.
        """
        arrays = {"importances": self.importances, "present_classes": self.present_classes}
        for name in ("drops", "baseline_scores", "confusion", "baseline_confusion", "bootstrap_confusion",
                     "bootstrap_baseline_confusion"):
            arrays[name] = getattr(self, name)
        meta = {
            "channel_names": self.channel_names,
            "class_names": self.class_names,
            "groups": self.groups,
            "info": self.info,
            "summary": self.to_frame().to_dict(orient="records"),
        }
        return save_bundle(path, meta, arrays, kind="ImportanceResult")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImportanceResult:
        """Read a result written by :meth:`save`; raises :class:`ResultFileError` if damaged."""
        meta, arrays = load_bundle(path, kind="ImportanceResult")
        return cls(
            arrays["importances"],
            channel_names=meta["channel_names"],
            class_names=meta["class_names"],
            drops=arrays.get("drops"),
            baseline_scores=arrays.get("baseline_scores"),
            confusion=arrays.get("confusion"),
            baseline_confusion=arrays.get("baseline_confusion"),
            present=arrays.get("present_classes"),
            groups=meta.get("groups"),
            info=meta.get("info"),
            bootstrap_confusion=arrays.get("bootstrap_confusion"),
            bootstrap_baseline_confusion=arrays.get("bootstrap_baseline_confusion"),
        )


def _minmax(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(ref), np.nanmax(ref)
    if not np.isfinite(hi - lo) or hi - lo <= 0:
        return np.zeros_like(np.asarray(values, dtype=float))
    return (np.asarray(values, dtype=float) - lo) / (hi - lo)
