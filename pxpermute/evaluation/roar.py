"""Remove-and-retrain: the paper's Fig. 4 protocol for judging a channel ranking.

For each method's ranking remove the least important channel, retrain from
scratch, repeat (Shetab Boushehri et al., Cell Reports Methods 2024; the idea
goes back to Hooker et al., "A benchmark for interpretability methods in deep
neural networks", NeurIPS 2019).  A ranking is better the longer the retrained
models keep their F1-macro; summarized, as published, by the average F1-macro
over the curve.

Uncertainty.  Every method is judged *relative to Random on the same folds*:
per fold, the method's average over the curve minus Random's, and a paired
t-interval over the folds (folds - 1 degrees of freedom).  Pairing removes the
fold-to-fold level shared by all methods (some folds are easier), so it is far
narrower than two unpaired intervals.  "Random" is not one random order: at
every step it is the average over all channel subsets of that size (exact,
when there are at most ``random_draws`` of them) or over ``random_draws``
subsets drawn uniformly.  What the interval covers: the folds' test cells and
retraining, approximately (cross-validation training sets overlap, which makes
it somewhat optimistic); not the Monte Carlo error of a sampled Random average
(``params["random"]`` says whether it is exact).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._protocol import SavableResult, frame_from_bundle, frame_to_bundle
from .._text import fill, glue
from ..stats import t_interval
from ._common import as_dataset, check_n_splits, fmt, plain_params
from .agreement import ranking_channels
from .retrain import retrain_scores

__all__ = ["ROARResult", "remove_and_retrain"]

METRICS = ("f1_macro", "accuracy")


@dataclass(repr=False)
class ROARResult(SavableResult):
    """Outcome of :func:`remove_and_retrain`.

    The result protocol: :meth:`to_frame` (the tidy table), :meth:`summary`
    (text), :meth:`summary_frame` (the published summary as a table),
    :meth:`curve`, :meth:`plot`, :meth:`save` / :meth:`load`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (method, fold, n_removed): ``method``, ``fold``,
        ``n_removed``, ``n_channels``, ``channels`` (remaining, comma-joined, in
        data-set order), ``removed`` (the channel removed at this step; empty for
        0), ``f1_macro``, ``accuracy``, ``n_subsets`` (1; for ``"Random"`` the
        number of channel subsets averaged, ``channels`` then reads "mean of N subsets").
    rankings : dict
        Method -> channel names from most to least important (``"Random"`` is
        not a ranking; its subsets are in ``random_table``).
    channel_names : list of str
    params : dict
        ``n_splits``, ``steps``, ``random_state``, ``random`` (per step: subsets
        averaged and whether that is every subset of the size) and the fixed
        training options.
    dataset_name : str or None
    random_table : pandas.DataFrame or None
        The Random reference in detail: one row per (fold, n_removed, subset).
    """

    table: pd.DataFrame
    rankings: dict[str, list[str]]
    channel_names: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    dataset_name: str | None = None
    random_table: pd.DataFrame | None = None

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys([*self.rankings, *self.table["method"].unique().tolist()]))

    def paired(self, metric: str = "f1_macro", reference: str = "Random", confidence: float = 0.95) -> pd.DataFrame:
        """Each method minus ``reference`` on the same folds: paired t-interval over folds.

        Per fold, the average of ``metric`` over the removal curve of the method
        minus that of the reference; mean, standard deviation and t-interval of
        these differences over the folds (folds - 1 degrees of freedom).  Covers
        the folds' test cells and retraining, approximately (training sets of
        cross-validation folds overlap: somewhat optimistic); not the Monte Carlo
        error of a sampled Random average.
        """
        self._check_metric(metric)
        avg = self.per_fold_average(metric)
        if reference not in avg.index:
            raise ValueError(f"no method {reference!r} to compare with; methods are {list(avg.index)}")
        rows = []
        for m in avg.index:
            if m == reference:
                continue
            d = (avg.loc[m] - avg.loc[reference]).dropna().to_numpy()
            t = t_interval(d, confidence)
            rows.append({"method": m, "reference": reference, "mean_diff": t.mean, "std": t.std, "ci_low": t.low,
                         "ci_high": t.high, "n_folds": int(d.size)})
        return pd.DataFrame(rows, columns=["method", "reference", "mean_diff", "std", "ci_low", "ci_high", "n_folds"])

    def to_frame(self) -> pd.DataFrame:
        """The tidy table (a copy): one row per (method, fold, n_removed)."""
        return self.table.copy()

    def curve(self, metric: str = "f1_macro") -> pd.DataFrame:
        """Per (method, n_removed): mean, std and 95 % t-interval of ``metric`` over folds."""
        self._check_metric(metric)
        rows = []
        for (m, n), grp in self.table.groupby(["method", "n_removed"], sort=False):
            t = t_interval(grp[metric].to_numpy())
            rows.append({"method": m, "n_removed": int(n), "n_channels": int(grp["n_channels"].iloc[0]),
                         "mean": t.mean, "std": t.std, "ci_low": t.low, "ci_high": t.high, "n_folds": int(len(grp))})
        return pd.DataFrame(rows)

    def summary_frame(self, metric: str = "f1_macro") -> pd.DataFrame:
        """The published summary as a table: the average of ``metric`` over the removal curve, per method.

        For every fold the curve (all ``n_removed`` steps) is averaged; the table
        gives mean, standard deviation and the 95 % t-interval of these per-fold
        averages over folds, sorted from best to worst; with a Random reference
        also ``vs_random`` and its paired 95 % interval ``vs_random_low/high``
        (:meth:`paired`), the comparison to read.
        """
        self._check_metric(metric)
        per_fold = self.table.groupby(["method", "fold"], sort=False)[metric].mean()
        rows = []
        for m in self.methods:
            t = t_interval(per_fold.loc[m].to_numpy())
            rows.append({"method": m, "mean": t.mean, "std": t.std, "ci_low": t.low, "ci_high": t.high,
                         "n_folds": int(per_fold.loc[m].size),
                         "n_steps": int(self.table.loc[self.table.method == m, "n_removed"].nunique())})
        out = pd.DataFrame(rows)
        if "Random" in out["method"].tolist():
            pr = self.paired(metric).set_index("method")
            out["vs_random"] = out["method"].map(pr["mean_diff"]).where(out["method"] != "Random", 0.0)
            out["vs_random_low"] = out["method"].map(pr["ci_low"])
            out["vs_random_high"] = out["method"].map(pr["ci_high"])
        return out.sort_values("mean", ascending=False, ignore_index=True)

    def summary(self, metric: str = "f1_macro") -> str:
        """Printable text: the average ``metric`` over the removal curve per method, best first, with 95 % CIs."""
        import textwrap

        s = self.summary_frame(metric)
        width = max([len(m) for m in s.method] + [6])
        steps = self.params.get("steps") or sorted(self.table.n_removed.unique().tolist())
        n_folds = int(s.n_folds.max()) if len(s) else 0
        paired = "vs_random" in s.columns
        head = (f"mean {metric} over the removal curve (n_removed = {', '.join(map(str, steps))}), 95 % t-interval "
                f"over {n_folds} folds" + ("; then minus Random on the same folds, paired 95 % t-interval:" if paired
                                           else ":"))
        lines = [self.title(), *textwrap.wrap(head, 88, subsequent_indent="  ", break_on_hyphens=False)]
        for r in s.itertuples():
            line = f"  {r.method:<{width}}  {fmt(r.mean)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
            if paired and r.method != "Random":
                line += f"  {r.vs_random:+.3f} [{r.vs_random_low:+.3f}, {r.vs_random_high:+.3f}]"
            lines.append(line)
        notes = ["rankings: " + "; ".join(f"{m}: {', '.join(o)}" for m, o in self.rankings.items()) + "."]
        rnd = self.params.get("random")
        if rnd:
            exact = all(v.get("exact") for v in rnd.values())
            counts = sorted({int(v["n_subsets"]) for v in rnd.values()})
            notes.append("Random: the average over " + ("every channel subset of each size (exact)." if exact else
                         f"{'/'.join(map(str, counts))} channel subsets per step drawn uniformly (their Monte Carlo "
                         "error is not in the intervals)."))
        notes.append("Coverage: intervals over folds cover the folds' test cells and retraining, approximately "
                     "(training sets of folds overlap, so they are somewhat optimistic); with few folds they are "
                     "wide. Read methods against Random through the paired interval.")
        for note in notes:
            lines += textwrap.wrap(note, 88, subsequent_indent="  ", break_on_hyphens=False)
        return fill("\n".join(lines))  # lines of at most 100 characters

    def per_fold_average(self, metric: str = "f1_macro") -> pd.DataFrame:
        """Average of ``metric`` over the curve for every (method, fold): methods x folds."""
        self._check_metric(metric)
        return self.table.groupby(["method", "fold"], sort=False)[metric].mean().unstack("fold").loc[self.methods]

    def plot(self, ax=None, **kwargs):
        """Fig. 4-style curves (see :func:`pxpermute.plotting.plot_remove_and_retrain`)."""
        from ..plotting import plot_remove_and_retrain

        return plot_remove_and_retrain(self, ax=ax, **kwargs)

    def title(self) -> str:
        p = self.params
        parts = ["remove-and-retrain"]
        if self.dataset_name:
            parts.append(f"data={self.dataset_name}")
        if p.get("model") is not None:
            parts.append(f"model={p['model']}")
        parts.append(f"{p.get('n_splits', '?')}-fold CV")
        if p.get("random_state") is not None:
            parts.append(f"seed={p['random_state']}")
        return ", ".join(parts)

    def _check_metric(self, metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be 'f1_macro' or 'accuracy', got {metric!r}")

    def __repr__(self) -> str:
        s = self.summary_frame()
        best = ", ".join(glue(f"{r.method} {r.mean:.3f}") for r in s.itertuples())
        return fill(f"ROARResult({self.title()}; mean F1-macro over the curve: {best})")

    # -- files -------------------------------------------------------------------
    def _to_bundle(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        tmeta, arrays = frame_to_bundle(self.table, f"{prefix}.table")
        meta = {"table": tmeta, "rankings": self.rankings, "channel_names": self.channel_names,
                "params": self.params, "dataset_name": self.dataset_name}
        if self.random_table is not None:
            rmeta, rarrays = frame_to_bundle(self.random_table, f"{prefix}.random_table")
            meta["random_table"] = rmeta
            arrays.update(rarrays)
        return meta, arrays

    @classmethod
    def _from_bundle(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str) -> ROARResult:
        return cls(table=frame_from_bundle(meta["table"], arrays, f"{prefix}.table"),
                   rankings={str(k): list(v) for k, v in meta["rankings"].items()},
                   channel_names=list(meta["channel_names"]), params=dict(meta["params"]),
                   dataset_name=meta.get("dataset_name"),
                   random_table=(frame_from_bundle(meta["random_table"], arrays, f"{prefix}.random_table")
                                 if meta.get("random_table") else None))


def remove_and_retrain(
    dataset: Any,
    rankings: Mapping[str, Any],
    *,
    n_splits: int = 5,
    steps: Sequence[int] | None = None,
    include_random: bool = True,
    random_draws: int = 10,
    random_state: int | None = 42,
    n_jobs: int | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> ROARResult:
    """Remove channels from least to most important, retraining at every step (Fig. 4 of the paper).

    For every method and every ``n_removed`` in ``steps``, the ``n_removed``
    channels the method ranks lowest are dropped and a model is trained from
    scratch on the remaining ones with fixed hyper-parameters, in stratified
    ``n_splits``-fold cross-validation.  All retraining goes through
    :func:`~pxpermute.evaluation.retrain_scores` (i.e.
    :func:`~pxpermute.training.cross_validate`); a channel set that several
    methods (or steps) share is trained once, and all methods see the same folds.

    Parameters
    ----------
    dataset : IFCDataset or (images, labels)
        The data to retrain on (with the channels the rankings rank).
    rankings : mapping name -> ranking
        Each ranking is an :class:`~pxpermute.ImportanceResult` or a list of
        channel names/indices, most important first, containing every channel once.
    n_splits : int, default 5
        Cross-validation folds.
    steps : sequence of int, optional
        Numbers of removed channels to evaluate; default ``0 .. C-1`` (all
        channels down to the single most important one), as published.
    include_random : bool, default True
        Add a ``"Random"`` reference: at every step the average over channel
        subsets of that size -- all of them when there are at most
        ``random_draws`` (exact), else ``random_draws`` distinct subsets drawn
        uniformly with ``random_state``.  Every method is then compared with it
        on the same folds (:meth:`ROARResult.paired`).
    random_draws : int, default 10
        Channel subsets averaged per step for Random (each costs ``n_splits``
        trainings; subsets shared with a method are trained once).
    random_state : int or None, default 42
        Seed of the folds, of training and of the random ranking.
    n_jobs : int or None, default None
        Trainings in parallel through joblib (``-1``: all cores; a Dask cluster
        inside ``joblib.parallel_config(backend="dask")``); the results do not
        depend on it (seeds are fixed per training), see
        :func:`~pxpermute.training.run_trainings`.
    progress : bool, default True
        tqdm bar counting finished trainings.
    **train_kwargs
        Fixed training options for every retraining (``model``, ``model_kwargs``,
        ``max_epochs``, ``batch_size`` ...), see :func:`~pxpermute.training.cross_validate`.

    Returns
    -------
    ROARResult
        ``table`` (tidy: method, fold, n_removed, n_channels, channels, removed,
        f1_macro, accuracy), ``curve()``, ``summary()`` (text) /
        ``summary_frame()`` (mean F1-macro over the curve: mean ± std and 95 % CI
        over folds), ``plot()``, ``save()``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((40, 3, 16, 16)).astype("float32"); y = np.arange(40) % 2
    >>> x[y == 1, 0, :8] += 1
    >>> roar = remove_and_retrain((x, y), {"truth": ["ch0", "ch1", "ch2"]}, n_splits=2, model="small_cnn",
    ...                           model_kwargs={"width": 4}, max_epochs=1, progress=False)
    >>> sorted(roar.table.method.unique()), roar.table.n_removed.unique().tolist()
    (['Random', 'truth'], [0, 1, 2])
    """
    ds = as_dataset(dataset, "remove_and_retrain")
    n_splits = check_n_splits(n_splits)
    if not isinstance(rankings, Mapping):
        raise TypeError(f"rankings must be a mapping method name -> ranking, got {type(rankings).__name__}")
    if not rankings and not include_random:
        raise ValueError("no rankings given (and include_random=False)")
    names = list(ds.channel_names)
    C = len(names)
    orders: dict[str, list[str]] = {}
    for method, ranking in rankings.items():
        try:
            orders[str(method)] = ranking_channels(ranking, names)
        except (ValueError, TypeError) as err:
            raise type(err)(f"ranking {method!r}: {err}") from None
    if include_random:
        if "Random" in orders:
            raise ValueError("a ranking is already called 'Random'; rename it or set include_random=False")
        from .._validation import check_int

        random_draws = check_int(random_draws, "random_draws", low=1)
    if steps is None:
        step_list = list(range(C))
    else:
        step_list = sorted({int(s) for s in steps})
        bad = [s for s in step_list if not 0 <= s <= C - 1]
        if bad:
            raise ValueError(f"steps must lie in [0, {C - 1}] (at least one channel must remain); got {bad}")
        if not step_list:
            raise ValueError("steps is empty")

    subsets: dict[str, list[str]] = {}
    plan: list[tuple[str, int, str, str]] = []  # (method, n_removed, subset key, removed channel)
    for method, order in orders.items():
        for n in step_list:
            keep = order[: C - n]
            key = ",".join(c for c in names if c in keep)
            subsets[key] = keep
            plan.append((method, n, key, order[C - n] if n > 0 else ""))
    random_plan: dict[int, list[str]] = {}  # n_removed -> subset keys averaged for Random
    random_info: dict[str, dict[str, Any]] = {}
    if include_random:
        rng = np.random.default_rng(random_state)
        for n in step_list:
            size = C - n
            total = math.comb(C, size)
            if total <= random_draws:
                picks = [list(c) for c in itertools.combinations(range(C), size)]
            else:
                seen: dict[tuple[int, ...], None] = {}
                while len(seen) < random_draws:
                    seen[tuple(sorted(rng.choice(C, size=size, replace=False).tolist()))] = None
                picks = [list(c) for c in seen]
            keys = []
            for pick in picks:
                keep = [names[i] for i in pick]
                key = ",".join(keep)
                subsets[key] = keep
                keys.append(key)
            random_plan[n] = keys
            random_info[str(n)] = {"n_subsets": len(keys), "of": total, "exact": len(keys) == total}
    scores = retrain_scores(ds, subsets, n_splits=n_splits, random_state=random_state, n_jobs=n_jobs,
                            progress=progress, **train_kwargs)
    by_subset = {k: g for k, g in scores.groupby("subset", sort=False)}
    rows = []
    for method, n, key, removed in plan:
        grp = by_subset[key]
        for _, r in grp.iterrows():
            rows.append({"method": method, "fold": int(r.fold), "n_removed": n, "n_channels": C - n,
                         "channels": r.channels, "removed": removed, "f1_macro": r.f1_macro, "accuracy": r.accuracy,
                         "n_subsets": 1})
    detail = []
    for n, keys in random_plan.items():
        for key in keys:
            for _, r in by_subset[key].iterrows():
                detail.append({"fold": int(r.fold), "n_removed": n, "n_channels": C - n, "channels": r.channels,
                               "f1_macro": r.f1_macro, "accuracy": r.accuracy})
    random_table = None
    if detail:
        random_table = pd.DataFrame(detail)
        avg = random_table.groupby(["n_removed", "fold"], sort=True)[["f1_macro", "accuracy"]].mean()
        for n in step_list:
            for fold, r in avg.loc[n].iterrows():
                k = len(random_plan[n])
                rows.append({"method": "Random", "fold": int(fold), "n_removed": n, "n_channels": C - n,
                             "channels": f"mean of {k} subset{'s' if k > 1 else ''}", "removed": "",
                             "f1_macro": float(r.f1_macro), "accuracy": float(r.accuracy), "n_subsets": k})
    table = pd.DataFrame(rows, columns=["method", "fold", "n_removed", "n_channels", "channels", "removed",
                                        "f1_macro", "accuracy", "n_subsets"])
    params = {"n_splits": int(n_splits), "steps": step_list, "random_state": random_state,
              "n_channel_sets": int(len(subsets)), "n_trainings": int(len(subsets)) * int(n_splits)}
    if include_random:
        params["random"] = random_info
        params["random_draws"] = int(random_draws)
    params.update(plain_params(train_kwargs))
    return ROARResult(table=table, rankings=orders, channel_names=names, params=params, dataset_name=ds.name,
                      random_table=random_table)
