"""The result object shared by PXPermute, occlusion and the attribution baselines."""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._fileio import ResultFileError, load_bundle, save_bundle
from ._text import fill, glue, warning_text
from .inference import COVERAGE_NOTE, fold_mean_interval, median_interval
from .metrics import compute_metric, present_classes
from .stats import t_interval

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
        The interval shown by default (level ``info["confidence"]``, default
        95 %); which one is named by :attr:`ci_label`: the **bootstrap over test
        cells** (``bootstrap_ci_low/high``) when the run has one; after
        :meth:`concat` of at least two folds without it, the t-interval over the
        **fold means** (folds - 1 degrees of freedom,
        :func:`pxpermute.inference.fold_mean_interval`); otherwise the
        permutation interval below.  No interval of a single run covers
        retraining (:data:`pxpermute.inference.COVERAGE_NOTE`).
    perm_ci_low, perm_ci_high : ndarray (C,)
        The **permutation (Monte Carlo) interval**: how precisely the k repeats
        measured the importance on these cells for this model -- nothing more.
        A t-interval of the mean over repeats (``mean +- t * std / sqrt(R)``;
        NaN when R < 2); with ``aggregate="median"`` the order-statistic interval
        of the median over repeats (:func:`pxpermute.inference.median_interval`;
        NaN when R is too small for the level).
    ci_kind : {"bootstrap", "folds", "permutation"}
        Which interval ``ci_low/high`` hold; :attr:`ci_label` says it in words.
    bootstrap_confusion, bootstrap_baseline_confusion : ndarray (B, C, K, K) and (B, K, K), or None
        Poisson-bootstrap weighted confusion matrices (pooled over repeats; per
        repeat, ``(B, R, C, K, K)``, with ``aggregate="median"``) when the run had
        ``n_bootstrap = B > 0``; see :mod:`pxpermute.stats`.
    bootstrap_importances : ndarray (B, C) or None
        Importance per bootstrap replicate over the test images.
    bootstrap_se, bootstrap_ci_low, bootstrap_ci_high : ndarray (C,) or None
        Bootstrap standard error and percentile interval of the importance: they
        reflect which test cells were drawn *and* the permutations.
    p_values : ndarray (C,) or None
        One-sided bootstrap p-value of H0 "importance <= 0" (see
        :func:`pxpermute.stats.bootstrap_p_values`).
    pairwise_probabilities : ndarray (C, C) or None
        ``[a, b]``: fraction of bootstrap replicates in which unit a scores above
        unit b (ties count one half).
    rank_low, rank_high : ndarray (C,) of int, or None
        Simultaneous bootstrap rank intervals (1 = most important).
    class_q_values : ndarray (C, K') or None
        Benjamini-Hochberg adjusted per-class p-values.
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
        folds: np.ndarray | None = None,
        fold_keys: Sequence[Any] | None = None,
        fold_name: str = "fold",
        fold_baseline_scores: np.ndarray | None = None,
        fold_baseline_confusion: np.ndarray | None = None,
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
        self.fold_name = str(fold_name)
        if folds is None:
            self.folds, self.fold_keys = None, None
            self.fold_baseline_scores = self.fold_baseline_confusion = None
        else:
            self.folds = np.asarray(folds, dtype=np.int64).reshape(-1)
            if self.folds.shape[0] != imp.shape[0]:
                raise ValueError(f"folds must give one fold index per repeat ({imp.shape[0]}), got {self.folds.shape[0]}")
            n_f = int(self.folds.max()) + 1 if self.folds.size else 0
            self.fold_keys = list(fold_keys) if fold_keys is not None else list(range(n_f))
            if len(self.fold_keys) < n_f or (self.folds.size and self.folds.min() < 0):
                raise ValueError(f"fold indices must lie in [0, {len(self.fold_keys)}), got {sorted(set(self.folds.tolist()))}")
            self.fold_baseline_scores = (None if fold_baseline_scores is None
                                         else np.asarray(fold_baseline_scores, dtype=np.float64))
            self.fold_baseline_confusion = None if fold_baseline_confusion is None else np.asarray(fold_baseline_confusion)
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
    ) -> ImportanceResult:
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

    def rescore(self, metric: str, *, aggregate: str | None = None) -> ImportanceResult:
        """The same run scored with another metric (from the stored confusion matrices)."""
        if self.folds is not None:
            if self.fold_baseline_confusion is None or self.confusion is None:
                raise ValueError("this pooled result holds no confusion matrices; cannot rescore")
            return ImportanceResult.concat([self.fold(i).rescore(metric, aggregate=aggregate)
                                            for i in range(len(self.fold_keys))],
                                           keys=self.fold_keys, name=self.fold_name)
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

    # -- several folds ------------------------------------------------------------
    @classmethod
    def concat(
        cls,
        results: Sequence[ImportanceResult] | Mapping[Any, ImportanceResult],
        *,
        keys: Sequence[Any] | None = None,
        name: str = "fold",
    ) -> ImportanceResult:
        """Pool results of several folds (or runs) on the same channels into one result.

        The repeats of all folds are stacked, so ``importances`` has shape
        ``(sum of repeats, C)`` and ``importance`` is the mean (or median) over
        all of them -- with equal repeats per fold, the mean of the fold means.
        The fold structure is kept: ``folds`` (fold index of each repeat),
        ``fold_keys``, ``fold_importances`` (F, C), the per-fold baselines, and a
        ``fold`` column (named ``name``) in ``to_frame("repeat")``,
        ``to_frame("class")`` and ``to_frame("fold")`` (one row per fold and
        channel).  :meth:`fold` gives one fold back.

        Folds are never stacked as if they were repeats: with two or more folds,
        ``ci_low/high`` is the t-interval over the fold importances (folds - 1
        degrees of freedom, :func:`pxpermute.inference.fold_mean_interval`),
        which covers retraining and test cells approximately; the permutation
        interval ``perm_ci_low/high`` combines the folds' own permutation
        standard errors (``sqrt(sum_f s_f^2 / R_f) / F`` around the mean of the
        fold means; NaN for the median).  Bootstrap counts are not pooled (folds
        have different models and test cells).

        Parameters
        ----------
        results : sequence of ImportanceResult, or mapping key -> ImportanceResult
            Same channels (names and order), classes, metric and aggregate.
        keys : sequence, optional
            One label per result (default: the mapping's keys, else 0, 1, ...).
        name : str, default "fold"
            Name of the fold column.

        Returns
        -------
        ImportanceResult

        Examples
        --------
        >>> a = ImportanceResult([[0.3, 0.1], [0.2, 0.0]], channel_names=["BF", "DNA"])
        >>> b = ImportanceResult([[0.1, 0.4], [0.2, 0.2]], channel_names=["BF", "DNA"])
        >>> pooled = ImportanceResult.concat([a, b])
        >>> pooled.importances.shape, pooled.fold_importances.round(2).tolist()
        ((4, 2), [[0.25, 0.05], [0.15, 0.3]])
        >>> pooled.to_frame("repeat").columns.tolist()
        ['method', 'fold', 'repeat', 'channel', 'importance']
        """
        if isinstance(results, Mapping):
            if keys is None:
                keys = list(results.keys())
            results = list(results.values())
        results = list(results)
        if not results:
            raise ValueError("concat needs at least one ImportanceResult, got none")
        for i, r in enumerate(results):
            if not isinstance(r, ImportanceResult):
                raise TypeError(f"concat takes ImportanceResult objects; item {i} is a {type(r).__name__}")
            if r.folds is not None:
                raise ValueError(f"item {i} is already pooled over {r.fold_name}s; concat the original results")
        keys = list(range(len(results))) if keys is None else list(keys)
        if len(keys) != len(results):
            raise ValueError(f"{len(keys)} keys for {len(results)} results")
        if len({str(k) for k in keys}) != len(keys):
            raise ValueError(f"keys must be distinct, got {keys}")
        first = results[0]
        for i, r in enumerate(results[1:], 1):
            if r.channel_names != first.channel_names:
                raise ValueError(f"result {keys[i]!r} has channels {r.channel_names}, result {keys[0]!r} has "
                                 f"{first.channel_names}; only results on the same channels can be pooled")
            if r.class_names != first.class_names:
                raise ValueError(f"result {keys[i]!r} has classes {r.class_names}, result {keys[0]!r} has "
                                 f"{first.class_names}")
            for field in ("metric", "aggregate", "perturbation", "method"):
                if r.info.get(field) != first.info.get(field):
                    raise ValueError(f"result {keys[i]!r} has {field}={r.info.get(field)!r}, result {keys[0]!r} "
                                     f"has {field}={first.info.get(field)!r}; pool results of one kind only")

        def stack(attr: str) -> np.ndarray | None:
            vals = [getattr(r, attr) for r in results]
            if any(v is None for v in vals) or len({np.shape(v)[1:] for v in vals}) != 1:
                return None
            return np.concatenate(vals, axis=0)

        def per_fold(attr: str) -> np.ndarray | None:
            vals = [getattr(r, attr) for r in results]
            if any(v is None for v in vals) or len({np.shape(v) for v in vals}) != 1:
                return None
            return np.stack(vals)

        drops = stack("drops")
        confusion = stack("confusion")
        fold_base = per_fold("baseline_scores")
        fold_base_cm = per_fold("baseline_confusion") if confusion is not None else None
        present = np.any(np.stack([r.present_classes for r in results]), axis=0) \
            if len({r.present_classes.shape for r in results}) == 1 else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            base = None if fold_base is None else np.nanmean(fold_base, axis=0)
        folds = np.concatenate([np.full(r.n_repeats, i, np.int64) for i, r in enumerate(results)])
        info = dict(first.info)
        info.update(
            n_repeats=int(folds.size),
            n_folds=len(results),
            fold_name=str(name),
            n_repeats_per_fold=[r.n_repeats for r in results],
        )
        if all("n_samples" in r.info for r in results):
            info["n_samples"] = int(sum(int(r.info["n_samples"]) for r in results))
        for field in ("random_state", "model", "data", "runtime_s", "n_forward_images"):
            vals = [r.info.get(field) for r in results]
            if field in ("runtime_s", "n_forward_images") and all(v is not None for v in vals):
                info[field] = sum(vals)
            elif len({str(v) for v in vals}) > 1:
                info[field] = vals
        for field in ("n_bootstrap", "bootstrap", "checkpoint", "resumed_repeats"):
            info.pop(field, None)
        return cls(
            np.concatenate([r.importances for r in results], axis=0),
            channel_names=first.channel_names,
            class_names=first.class_names,
            drops=drops,
            baseline_scores=base,
            confusion=confusion,
            baseline_confusion=None if fold_base_cm is None else fold_base_cm.sum(axis=0),
            present=present,
            groups=first.groups,
            info=info,
            folds=folds,
            fold_keys=keys,
            fold_name=name,
            fold_baseline_scores=fold_base,
            fold_baseline_confusion=fold_base_cm,
        )

    @property
    def n_folds(self) -> int:
        """Folds pooled by :meth:`concat` (1 for a single run)."""
        return 1 if self.folds is None else len(self.fold_keys)

    @property
    def fold_importances(self) -> np.ndarray:
        """Importance per fold, ``(F, C)``: mean (or median, per ``aggregate``) over that fold's repeats."""
        if self.folds is None:
            return self.importance[None, :].copy()
        agg = np.median if self.info.get("aggregate") == "median" else np.mean
        return np.stack([agg(self.importances[self.folds == f], axis=0) for f in range(len(self.fold_keys))])

    def fold(self, key: Any) -> ImportanceResult:
        """The result of one pooled fold (by key, or by position when the key is not found)."""
        if self.folds is None:
            raise ValueError("this result is not pooled over folds (see ImportanceResult.concat)")
        if key in self.fold_keys:
            f = self.fold_keys.index(key)
        elif isinstance(key, (int, np.integer)) and 0 <= key < len(self.fold_keys):
            f = int(key)
        else:
            raise KeyError(f"no {self.fold_name} {key!r}; {self.fold_name}s are {self.fold_keys}")
        sel = self.folds == f

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[sel]

        info = {k: v for k, v in self.info.items() if k not in ("n_folds", "fold_name", "n_repeats_per_fold")}
        info["n_repeats"] = int(sel.sum())
        info[self.fold_name] = self.fold_keys[f]
        return ImportanceResult(
            self.importances[sel],
            channel_names=self.channel_names,
            class_names=self.class_names,
            drops=pick(self.drops),
            baseline_scores=None if self.fold_baseline_scores is None else self.fold_baseline_scores[f],
            confusion=pick(self.confusion),
            baseline_confusion=None if self.fold_baseline_confusion is None else self.fold_baseline_confusion[f],
            present=self.present_classes,
            groups=self.groups,
            info=info,
        )

    def _repeat_baselines(self) -> np.ndarray:
        """Baseline scores per repeat ``(R, K')`` (per fold after :meth:`concat`)."""
        R = self.importances.shape[0]
        if self.folds is not None and self.fold_baseline_scores is not None:
            return self.fold_baseline_scores[self.folds]
        return np.broadcast_to(self.baseline_scores, (R, np.shape(self.baseline_scores)[-1]))

    # -- summaries ---------------------------------------------------------------
    def _summarize(self) -> None:
        imp = self.importances
        level = float(self.info.get("confidence", 0.95))
        ti = t_interval(imp, level, axis=0, omit_nan=False)
        self.importances_mean = ti.mean
        self.importances_median = np.median(imp, axis=0)
        self.importances_std, self.importances_sem = ti.std, ti.sem
        median = self.info.get("aggregate") == "median"
        if self.folds is not None:  # never stack folds as repeats: combine the folds' permutation errors
            self.perm_ci_low, self.perm_ci_high = self._fold_permutation_interval(level, median)
        elif median:  # the permutation interval of what is reported: the median over repeats
            _, self.perm_ci_low, self.perm_ci_high = median_interval(imp, level, axis=0)
        else:
            self.perm_ci_low, self.perm_ci_high = ti.low, ti.high
        self.importance = self.importances_median if median else self.importances_mean
        boot: dict[str, Any] = dict.fromkeys(
            ("bootstrap_importances", "bootstrap_drops", "bootstrap_se", "bootstrap_ci_low", "bootstrap_ci_high",
             "p_values", "pairwise_probabilities", "rank_low", "rank_high", "class_p_values",
             "class_q_values", "class_se", "class_ci_low", "class_ci_high", "baseline_score_ci"))
        if (self.bootstrap_confusion is not None and self.bootstrap_baseline_confusion is not None
                and self.confusion is not None and self.baseline_confusion is not None and self.drops is not None):
            from .stats import bootstrap_summary

            boot.update(bootstrap_summary(self, level))
        self.__dict__.update(boot)
        if self.bootstrap_ci_low is not None:
            self.ci_kind = "bootstrap"
            self.ci_low, self.ci_high = self.bootstrap_ci_low, self.bootstrap_ci_high
        elif self.folds is not None and len(self.fold_keys) >= 2:
            self.ci_kind = "folds"
            _, self.ci_low, self.ci_high = fold_mean_interval(self.fold_importances, level)
        else:
            self.ci_kind = "permutation"
            self.ci_low, self.ci_high = self.perm_ci_low, self.perm_ci_high

    def _fold_permutation_interval(self, level: float, median: bool) -> tuple[np.ndarray, np.ndarray]:
        from scipy import stats as sps

        C = self.importances.shape[1]
        if median:
            return np.full(C, np.nan), np.full(C, np.nan)
        F = int(self.folds.max()) + 1
        means, var = [], np.zeros(C)
        for f in range(F):
            v = self.importances[self.folds == f]
            means.append(v.mean(axis=0))
            var += (v.var(axis=0, ddof=1) / len(v)) if len(v) > 1 else np.nan
        centre = np.mean(means, axis=0)
        half = sps.norm.ppf(0.5 + level / 2) * np.sqrt(var) / F
        return centre - half, centre + half

    @property
    def ci_label(self) -> str:
        """What ``ci_low/high`` cover, in words (used by :meth:`summary` and the plots)."""
        if self.ci_kind == "bootstrap":
            return f"bootstrap over test cells ({self.n_bootstrap} replicates)"
        if self.ci_kind == "folds":
            return f"t over {self.n_folds} {self.fold_name} means"
        if self.info.get("method") in _ATTRIBUTION_METHODS:
            return "t over the images' attributions"
        return "permutation (Monte Carlo) interval, k repeats only"

    @property
    def coverage_note(self) -> str:
        """Which randomness the shown interval covers and which it does not."""
        if self.ci_kind == "folds":
            return (f"the interval over {self.fold_name} means covers retraining and test cells, approximately "
                    f"(training sets of cross-validation folds overlap, so it is somewhat optimistic)")
        return COVERAGE_NOTE
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
        """Importances min-max scaled to [0, 1] (as the paper shows them), or NaN when that would mislead.

        Min-max scaling makes the top channel 1.0 whatever its size: for a model
        that reads only noise the top channel would still show 1.000.  So the
        scaled values are given only when the top channel's interval (``ci_low``,
        the interval named by :attr:`ci_label`) lies above 0; otherwise -- and
        when there is no interval (one repeat without a bootstrap) -- every value
        is NaN and ``series.attrs["reason"]`` says why.  Read the importances with
        their intervals instead (:meth:`summary`, :meth:`to_frame`).

        Examples
        --------
        >>> noise = ImportanceResult([[0.010, 0.002], [-0.006, 0.001]], channel_names=["BF", "DNA"])
        >>> noise.normalized().isna().all(), noise.normalized().attrs["reason"][:30]
        (True, 'the top channel (BF) has an in')
        """
        ok, reason = self._normalizable()
        values = _minmax(self.importance, self.importance) if ok else np.full(len(self.channel_names), np.nan)
        out = pd.Series(values, index=self.channel_names, name="normalized")
        if not ok:
            out.attrs["reason"] = reason
        return out

    def _normalizable(self) -> tuple[bool, str]:
        """Whether :meth:`normalized` scales (the top channel's interval lies above 0), and why not."""
        imp = np.asarray(self.importance, float)
        if not np.isfinite(imp).any():
            return False, "no finite importance"
        top = int(np.nanargmax(imp))
        lo = float(np.asarray(self.ci_low, float)[top])
        name = self.channel_names[top]
        if not np.isfinite(lo):
            return False, (f"the top channel ({name}) has no interval (one repeat without a bootstrap): "
                           "min-max scaling would show it as 1.0 whatever its size")
        if lo <= 0:
            return False, (f"the top channel ({name}) has an interval that reaches 0 ({self.ci_label}): "
                           "min-max scaling would show noise as 1.0")
        finite = imp[np.isfinite(imp)]
        if finite.size > 1 and float(finite.max() - finite.min()) <= 1e-12 * max(1.0, abs(float(finite.max()))):
            return False, (f"all channels have the same importance ({float(finite.max()):.4g}): "
                           "min-max scaling would show every channel as 0")
        return True, ""

    def top_m_probabilities(self, m: int) -> pd.Series:
        """Bootstrap probability that each channel is among the top ``m`` (ties shared; needs a bootstrap).

        See :func:`pxpermute.inference.top_m_probabilities`.  Covers the test cells
        and the permutations, not retraining.
        """
        if self.bootstrap_importances is None:
            raise ValueError("this result has no bootstrap replicates (run with n_bootstrap > 0)")
        from .inference import top_m_probabilities

        return pd.Series(top_m_probabilities(self.bootstrap_importances, m), index=self.channel_names,
                         name=f"P(top {m})")

    @property
    def rank_stability(self) -> np.ndarray | None:
        """Deprecated (see :func:`pxpermute.stats.rank_stability`): use :attr:`pairwise_probabilities`,
        :meth:`top_m_probabilities` or :attr:`rank_low` / :attr:`rank_high`.  Ties are shared, so two
        channels tied at exactly 0 get 0.5, not a confident rank."""
        warnings.warn(warning_text("ImportanceResult.rank_stability is deprecated: use pairwise_probabilities, "
                                   "top_m_probabilities(m) or rank_low/rank_high"), DeprecationWarning, stacklevel=2)
        if self.bootstrap_importances is None:
            return None
        from .stats import _rank_stability

        return _rank_stability(self.bootstrap_importances, self.importance)

    def to_frame(self, level: str = "channel") -> pd.DataFrame:
        """Tidy table.

        ``level="channel"``: one row per channel (importance, std, standard error
        ``sem``, ``ci_low/high`` -- the interval named by :attr:`ci_label` --,
        ``perm_ci_low/high`` (permutation interval), normalized, rank; with a
        bootstrap also ``boot_se``, ``boot_ci_low/high``, ``p_value``,
        ``rank_low/high`` (simultaneous rank interval), ``p_above_next``
        (bootstrap P(this channel above the next one in the ranking)));
        ``"repeat"``: one row per (repeat, channel); ``"class"``: one row per
        (repeat, channel, class) with baseline, perturbed score and drop;
        ``"per_class"``: one row per (channel, class) with the drop summarized
        over repeats (mean, std, sem, t-interval; with a bootstrap also
        ``boot_se``, ``boot_ci_low/high`` and the per-class ``p_value``);
        ``"fold"``: one row per (fold, channel) with the fold's importance (after
        :meth:`concat`; a single run is one fold).  After :meth:`concat`,
        ``"repeat"`` and ``"class"`` carry a ``fold`` column (named as given to
        :meth:`concat`) and ``repeat`` counts within the fold.
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
                    "perm_ci_low": self.perm_ci_low,
                    "perm_ci_high": self.perm_ci_high,
                    "normalized": self.normalized().to_numpy(),
                }
            )
            df["rank"] = np.argsort(self.ranking) + 1
            if self.bootstrap_importances is not None:
                df["boot_se"] = self.bootstrap_se
                df["boot_ci_low"] = self.bootstrap_ci_low
                df["boot_ci_high"] = self.bootstrap_ci_high
                df["p_value"] = self.p_values
                df["rank_low"] = self.rank_low
                df["rank_high"] = self.rank_high
                order = list(self.ranking)
                nxt = np.full(len(order), np.nan)  # P(this unit above the one ranked just below it)
                for a, b in zip(order[:-1], order[1:]):
                    nxt[a] = self.pairwise_probabilities[a, b]
                df["p_above_next"] = nxt
            df.insert(0, "method", method)
            return df
        if level == "repeat":
            R, C = self.importances.shape
            df = pd.DataFrame(
                {
                    "method": method,
                    "repeat": np.repeat(self._repeat_ids(), C),
                    "channel": np.tile(self.channel_names, R),
                    "importance": self.importances.reshape(-1),
                }
            )
            return self._with_fold(df, C)
        if level == "class":
            if self.drops is None:
                raise ValueError("this result has no per-class detail")
            R, C, K = self.drops.shape
            names = self.class_names if K == len(self.class_names) else [self.info.get("metric", "overall")] * K
            base = np.broadcast_to(self._repeat_baselines()[:, None, :], (R, C, K))
            df = pd.DataFrame(
                {
                    "method": method,
                    "repeat": np.repeat(self._repeat_ids(), C * K),
                    "channel": np.tile(np.repeat(self.channel_names, K), R),
                    "class": np.tile(names, R * C),
                    "baseline": base.reshape(-1),
                    "score": (base - self.drops).reshape(-1),
                    "drop": self.drops.reshape(-1),
                }
            )
            return self._with_fold(df, C * K)
        if level == "fold":
            fi = self.fold_importances
            F, C = fi.shape
            keys = self.fold_keys if self.fold_keys is not None else [0]
            counts = (np.bincount(self.folds, minlength=F) if self.folds is not None
                      else np.array([self.n_repeats]))
            return pd.DataFrame(
                {
                    "method": method,
                    self.fold_name: np.repeat(np.asarray(keys, dtype=object), C),
                    "channel": np.tile(self.channel_names, F),
                    "importance": fi.reshape(-1),
                    "n_repeats": np.repeat(counts, C),
                }
            )
        if level == "per_class":
            from .stats import per_class_frame

            return per_class_frame(self)
        raise ValueError(f"level must be 'channel', 'repeat', 'class', 'per_class' or 'fold', got {level!r}")

    def _repeat_ids(self) -> np.ndarray:
        """Repeat number of each row of ``importances`` (counted within its fold after :meth:`concat`)."""
        R = self.importances.shape[0]
        if self.folds is None:
            return np.arange(R)
        out = np.empty(R, np.int64)
        for f in np.unique(self.folds):
            sel = self.folds == f
            out[sel] = np.arange(int(sel.sum()))
        return out

    def _with_fold(self, df: pd.DataFrame, rows_per_repeat: int) -> pd.DataFrame:
        if self.folds is None:
            return df
        keys = np.asarray(self.fold_keys, dtype=object)[self.folds]
        df.insert(1, self.fold_name, np.repeat(keys, rows_per_repeat))
        return df

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

    def summary(self, width: int = 88) -> str:
        """A plain-text table of the ranking with its intervals, each saying what randomness it covers.

        Lines are wrapped at ``width`` characters.  The table is about 80
        wide for channel names up to 12 characters; when it would be wider than
        ``width`` (long channel names), its columns are split into blocks, each
        repeating rank and channel.
        """
        df = self.to_frame().sort_values("rank")
        pct = f"{100 * float(self.info.get('confidence', 0.95)):g}%"
        boot = self.bootstrap_importances is not None
        show_perm = self.ci_kind != "permutation"
        cw = max([7] + [len(str(c)) for c in self.channel_names])

        def fmt(lo: float, hi: float) -> str:
            return f"[{lo:+.4f}, {hi:+.4f}]" if np.isfinite(lo) and np.isfinite(hi) else "n/a"

        rows = list(df.itertuples(index=False))
        # columns: the header and the rows' cells, all of one width
        key = [f"{'rank':>4}  {'channel':<{cw}}"] + [f"{int(r.rank):>4}  {r.channel:<{cw}}" for r in rows]
        cols = [[f"{'value':>7}"] + [f"{r.importance:>+7.4f}" for r in rows],
                [f"{pct + ' CI':^18}"] + [f"{fmt(r.ci_low, r.ci_high):>18}" for r in rows]]
        if boot:
            cols.append([f"{'p':>6}"] + [f"{r.p_value:>6.3f}" for r in rows])
            cols.append([f"{'P(>next)':>8}"] + [f"{f'{r.p_above_next:.2f}' if np.isfinite(r.p_above_next) else '-':>8}"
                                               for r in rows])
            cols.append([f"{'ranks':>5}"] + [f"{f'{int(r.rank_low)}-{int(r.rank_high)}':>5}" for r in rows])
        cols.append([f"{'norm.':>5}"] + [f"{f'{r.normalized:.2f}' if np.isfinite(r.normalized) else 'n/a':>5}"
                                         for r in rows])
        blocks: list[list[list[str]]] = [[]]
        used = len(key[0])
        for col in cols:  # pack columns into blocks no wider than ``width`` (at least one column each)
            if blocks[-1] and used + 2 + len(col[0]) > width:
                blocks.append([])
                used = len(key[0])
            blocks[-1].append(col)
            used += 2 + len(col[0])
        lines = []
        for b, block in enumerate(blocks):
            if b:
                lines.append("")
            lines += ["  ".join(cells) for cells in zip(key, *block)]
        notes = [f"value: the {'median' if self.info.get('aggregate') == 'median' else 'mean'} drop in "
                 f"{self.info.get('metric', 'the metric')} when the channel is perturbed.",
                 f"CI: {self.ci_label}."]
        if boot:
            notes.append(f"p: one-sided bootstrap p-value of H0 'the importance on test cells drawn like these, "
                         f"for this trained model, is <= 0' against > 0 (share of the {self.n_bootstrap} "
                         "replicates at or below 0, +1 in numerator and denominator; not adjusted for the "
                         f"{len(self.channel_names)} channels). P(>next): share of replicates in which the "
                         f"channel scores above the next one (ties count 1/2). ranks: simultaneous {pct} "
                         "bootstrap rank interval (1 = most important).")
        if show_perm:
            perm = "; ".join(glue(f"{r.channel} {fmt(r.perm_ci_low, r.perm_ci_high)}") for r in rows)
            notes.append(f"permutation (Monte Carlo) {pct} CI, the k repeats' noise only: {perm}.")
        elif self.ci_kind == "permutation":
            notes.append("The permutation interval covers only how precisely the k repeats measured the importance "
                         "on these cells for this model (run with n_bootstrap > 0 for an interval over test cells).")
        if self.folds is not None:
            notes.append(f"pooled over {self.n_folds} {self.fold_name}s ({', '.join(map(str, self.fold_keys))}); "
                         f"see to_frame('fold').")
        notes.append(f"Coverage: {self.coverage_note}")
        ok, reason = self._normalizable()
        notes.append("norm.: min-max scaled importance (shown only when the top channel's interval lies above 0)."
                     if ok else f"norm.: n/a -- {reason}.")
        notes.append("An interval that contains 0 is absence of evidence, not evidence that a channel is unused.")
        zero = self.info.get("unchanged_under_pixel_permutation")
        if zero:
            notes.append(f"Exactly 0 under pixel permutation: {', '.join(map(glue, zero))} (ignored by the model, or read only "
                         "through their intensity histogram; try perturbation='sample').")
        out = [fill(", ".join(map(glue, self._title_parts())), width), *lines]
        out += [fill(note, width) for note in notes]
        return "\n".join(out)

    def title(self) -> str:
        """One line naming what made the result: method, perturbation, metric, k, seed, data, model, n."""
        return ", ".join(self._title_parts())

    def _title_parts(self) -> list[str]:
        i = self.info
        parts = [str(i.get("method", "pxpermute"))]
        if "perturbation" in i:
            parts.append(f"perturbation={i['perturbation']}")
        if "metric" in i:
            parts.append(f"metric={i['metric']}")
        if i.get("method") not in _ATTRIBUTION_METHODS:  # attribution results hold one row per image, not repeats
            if self.folds is not None:
                per = sorted(set(np.bincount(self.folds).tolist()))
                parts.append(f"k={per[0] if len(per) == 1 else per} x {self.n_folds} {self.fold_name}s")
            else:
                parts.append(f"k={self.n_repeats}")
        elif self.folds is not None:
            parts.append(f"{self.n_folds} {self.fold_name}s")
        if i.get("random_state") is not None:
            parts.append(f"seed={i['random_state']}")
        for key in ("data", "model"):
            if i.get(key):
                parts.append(f"{key}={i[key]}")
        if "n_samples" in i:
            parts.append(f"n={i['n_samples']}")
        return parts

    def plot(self, ax=None, *, normalized: bool = True, **kwargs):
        """Bar plot of importances with 95 % CIs (see :func:`pxpermute.plotting.plot_importance`)."""
        from .plotting import plot_importance

        return plot_importance(self, ax=ax, normalized=normalized, **kwargs)

    def __repr__(self) -> str:
        top = ", ".join(glue(f"{c}={v:.3g}") for c, v in zip(self.ranked_channels, self.importance[self.ranking]))
        # lines of at most 100 characters (the book's width)
        return fill(f"ImportanceResult({', '.join(map(glue, self._title_parts()))}; {top})")

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
                     "bootstrap_baseline_confusion", "folds", "fold_baseline_scores", "fold_baseline_confusion"):
            arrays[name] = getattr(self, name)
        meta = {
            "channel_names": self.channel_names,
            "class_names": self.class_names,
            "groups": self.groups,
            "info": self.info,
            "summary": self.to_frame().to_dict(orient="records"),
        }
        if self.folds is not None:
            meta["fold_keys"] = self.fold_keys
            meta["fold_name"] = self.fold_name
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
            folds=arrays.get("folds"),
            fold_keys=meta.get("fold_keys"),
            fold_name=meta.get("fold_name", "fold"),
            fold_baseline_scores=arrays.get("fold_baseline_scores"),
            fold_baseline_confusion=arrays.get("fold_baseline_confusion"),
        )


def _minmax(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(ref), np.nanmax(ref)
    if not np.isfinite(hi - lo) or hi - lo <= 0:
        return np.zeros_like(np.asarray(values, dtype=float))
    return (np.asarray(values, dtype=float) - lo) / (hi - lo)
