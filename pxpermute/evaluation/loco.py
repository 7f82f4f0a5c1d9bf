"""Leave-one-channel-out (LOCO): importance by retraining without each channel, and its cost.

* :func:`leave_one_channel_out` -- the one implementation: retrain in
  cross-validation without each channel (or group) on the folds of the
  all-channel model; importance = F1-macro drop per fold.
* :func:`runtime_vs_loco` -- PXPermute against LOCO on the same data and
  hardware, in one run (the paper's runtime comparison).
* :func:`side_by_side` -- several importance results (e.g. PXPermute and LOCO)
  and their cost in one table.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._validation import check_int
from ..datasets.base import IFCDataset, resolve_channels
from ..result import ImportanceResult
from ._common import as_dataset, check_n_splits, model_label, names_of
from .retrain import SubsetTrainer

__all__ = ["leave_one_channel_out", "runtime_vs_loco", "side_by_side"]


def _reference_folds(reference: Any, ds: IFCDataset, n_splits: int, random_state: Any,
                     fold_ids: list[int] | None) -> Any:
    """The all-channel reference restricted to the folds LOCO runs; a clear error when it cannot serve."""
    if sorted(getattr(reference, "channel_indices", [])) != list(range(ds.n_channels)):
        raise ValueError("reference must be a CVResult trained on all channels of this data set")
    ref_split = int(reference.params.get("n_splits", reference.n_splits))
    if ref_split != n_splits or reference.random_state != random_state:
        raise ValueError(f"reference was run with {ref_split} folds and random_state={reference.random_state}; "
                         f"expected {n_splits} and {random_state} (the same folds)")
    have = [int(f) for f in reference.params.get("folds", range(reference.n_splits))]
    want = have if fold_ids is None else fold_ids
    missing = [f for f in want if f not in have]
    if missing:
        raise ValueError(f"reference holds folds {have}, not the folds {missing} to run")
    if want == have:
        return reference
    pos = [have.index(f) for f in want]
    return dataclasses.replace(
        reference, models=[reference.models[i] for i in pos], train_indices=[reference.train_indices[i] for i in pos],
        test_indices=[reference.test_indices[i] for i in pos], f1_macro=reference.f1_macro[pos],
        accuracy=reference.accuracy[pos], f1_per_class=reference.f1_per_class[pos],
        y_pred=[reference.y_pred[i] for i in pos], params={**reference.params, "folds": want})


def leave_one_channel_out(
    dataset: IFCDataset,
    *,
    n_splits: int = 5,
    random_state: int | None = 42,
    channels: Sequence[int | str] | None = None,
    groups: Mapping[str, Sequence[int | str]] | None = None,
    reference: Any = None,
    folds: Sequence[int] | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> ImportanceResult:
    """Importance by retraining without each channel: the slow reference.

    For every channel (or group) ``c`` the model is retrained in
    cross-validation on all other channels, on the same folds as a model with all
    channels; the importance of ``c`` in fold ``f`` is
    ``F1_macro(all, f) - F1_macro(all but c, f)``.  Unlike PXPermute it
    measures what the *best model without c* loses, so a channel whose
    information another channel duplicates scores ~0 here even if the trained
    model relies on it.  It costs ``(C + 1) x n_splits`` trainings against one
    training per fold for PXPermute; the cost is recorded in ``info``.

    Parameters
    ----------
    dataset : IFCDataset
    n_splits : int, default 5
    random_state : int or None, default 42
    channels : names or indices, optional
        Channels to leave out one at a time (default: all).
    groups : mapping name -> channels, optional
        Leave out groups of channels instead (e.g. redundant copies together).
    reference : CVResult, optional
        Cross-validation with all channels on the same folds (e.g. from
        :func:`~pxpermute.evaluation.compare_panels`), to save its trainings.
    folds : sequence of int, optional
        Run only these folds of the ``n_splits``-fold split (a timing study,
        see :func:`runtime_vs_loco`); default all.
    n_jobs : int or None, default None
        Trainings in parallel through joblib (``-1``: all cores; a Dask cluster
        inside ``joblib.parallel_config(backend="dask")``); the results do not
        depend on it (seeds are fixed per training), see
        :func:`~pxpermute.training.run_trainings`.
    progress : bool, default True
        Progress bar counting finished trainings.
    **train_kwargs
        Passed to :func:`~pxpermute.training.cross_validate`.

    Returns
    -------
    ImportanceResult
        ``importances`` has one row per fold (the "repeats" are folds; CIs are
        over folds); ``drops`` holds per-class F1 drops per fold;
        ``baseline_scores`` the all-channel per-class F1.  ``info`` holds
        ``method="leave-one-channel-out"``, ``n_trainings``, ``runtime_s``,
        ``n_splits``.

    Examples
    --------
    >>> loco = leave_one_channel_out(ds, n_splits=2, model="small_cnn", max_epochs=3)  # doctest: +SKIP
    >>> loco.ranked_channels, loco.info["n_trainings"], loco.info["runtime_s"]  # doctest: +SKIP
    """
    ds = as_dataset(dataset, "leave_one_channel_out")
    n_splits = check_n_splits(n_splits)
    if ds.n_channels < 2:
        raise ValueError("leave-one-channel-out needs at least 2 channels")
    if groups is not None and channels is not None:
        raise ValueError("pass channels= or groups=, not both")
    if groups is not None:
        if not isinstance(groups, Mapping) or not groups:
            raise TypeError("groups must be a non-empty mapping name -> channels")
        units = {str(name): resolve_channels(chs, ds.channel_names) for name, chs in groups.items()}
    else:
        idx = range(ds.n_channels) if channels is None else resolve_channels(channels, ds.channel_names)
        units = {ds.channel_names[i]: [i] for i in idx}
    for name, chs in units.items():
        if len(set(chs)) >= ds.n_channels:
            raise ValueError(f"leaving out {name!r} leaves no channel to train on")
    keeps = [[i for i in range(ds.n_channels) if i not in chs] for chs in units.values()]
    fold_ids = None if folds is None else [int(f) for f in folds]
    t0 = time.perf_counter()
    if reference is not None and random_state is None:
        random_state = reference.random_state
    cache = SubsetTrainer(ds, n_splits=n_splits, random_state=random_state, train_kwargs=train_kwargs, n_jobs=n_jobs,
                          folds=fold_ids)
    random_state = cache.random_state
    if reference is not None:
        ref = _reference_folds(reference, ds, n_splits, random_state, fold_ids)
        cache.add(ref)
        fitted = cache.fit_many(keeps, progress=progress, desc="leave-one-channel-out")
    else:
        fitted = cache.fit_many([list(range(ds.n_channels))] + keeps, progress=progress, desc="leave-one-channel-out")
        ref = fitted.pop(0)[0]
    imp = np.zeros((ref.n_splits, len(units)))
    drops = np.zeros((ref.n_splits, len(units), ds.n_classes))
    for j, (cv, _) in enumerate(fitted):
        imp[:, j] = ref.f1_macro - cv.f1_macro
        drops[:, j] = ref.f1_per_class - cv.f1_per_class
    info = dict(method="leave-one-channel-out", metric="f1_macro", aggregate="mean", n_splits=n_splits,
                folds=fold_ids if fold_ids is not None else list(range(n_splits)), n_jobs=n_jobs,
                n_trainings=cache.n_trainings, runtime_s=time.perf_counter() - t0, train_seconds=cache.seconds,
                random_state=random_state, data=ds.name, model=model_label(train_kwargs), n_samples=len(ds),
                baseline_f1_macro=float(np.mean(ref.f1_macro)), repeats_are="folds")
    counts = np.bincount(ds.labels, minlength=ds.n_classes)
    return ImportanceResult(imp, channel_names=list(units), class_names=ds.class_names, drops=drops,
                            baseline_scores=ref.f1_per_class.mean(axis=0), present=counts > 0,
                            groups={n: names_of(ds, c) for n, c in units.items()} if groups is not None else None,
                            info=info)


def runtime_vs_loco(
    dataset: Any,
    *,
    n_splits: int = 5,
    folds: int | None = None,
    n_repeats: int = 100,
    adaptive: bool = True,
    random_state: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
    n_jobs: int | None = None,
    progress: bool = False,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Measure PXPermute against leave-one-channel-out (LOCO) retraining on the same data and hardware.

    The paper's protocol (Shetab Boushehri et al. 2024: per fold 65 min for
    PXPermute vs 364 min for LOCO on WBC, 5.6x): stratified cross-validation with
    all channels (:func:`pxpermute.training.cross_validate`) gives the models;
    PXPermute runs with each fold's model on that fold's test cells (``n_repeats``
    and, with ``adaptive``, adaptive k); LOCO is :func:`leave_one_channel_out`
    on the same folds with that cross-validation as its reference (the same
    recipe and seed), importance = F1-macro drop on the fold's test cells.  Per
    fold LOCO costs C trainings (C + 1 counting the all-channel model, the
    paper's convention) and PXPermute one importance run.  All in one process,
    so the ratios are measured under the same load.

    Parameters
    ----------
    dataset : IFCDataset
    n_splits : int
        Cross-validation folds (for every training).
    folds : int, optional
        Run PXPermute and LOCO on only the first ``folds`` folds (seconds are per fold).
    n_repeats, adaptive, random_state, batch_size, device, progress
        PXPermute settings (``random_state`` also seeds the training).
    n_jobs : int or None, default None
        Parallel trainings for the cross-validation and LOCO (see
        :func:`~pxpermute.training.run_trainings`); PXPermute itself runs in
        this process.  With ``n_jobs > 1`` the LOCO time is wall time on all
        workers.
    **train_kwargs
        Training recipe for every model (``model``, ``max_epochs`` ...).

    Returns
    -------
    dict
        Seconds per fold (``train_s_per_model``, ``pxpermute_s_per_fold``,
        ``loco_s_per_fold``, ``loco_s_per_fold_paper``), the ``speedup`` ratios,
        per-fold importances of both methods (``pxpermute_importance``,
        ``loco_importance``, arrays (folds, C)), their rankings and Spearman rho.
        ``train_s_per_model`` comes from the all-channel cross-validation.

    Examples
    --------
    >>> from pxpermute.datasets.synthetic import make_synthetic
    >>> ds = make_synthetic("apoptotic", n_samples=200, image_size=16)  # doctest: +SKIP
    >>> r = runtime_vs_loco(ds, n_splits=2, n_repeats=10, model="small_cnn", max_epochs=2)  # doctest: +SKIP
    >>> r["speedup"]  # doctest: +SKIP
    """
    from scipy.stats import spearmanr

    from ..importance import channel_importance
    from ..training import cross_validate

    ds = as_dataset(dataset, "runtime_vs_loco")
    n_splits = check_n_splits(n_splits)
    C = ds.n_channels
    if C < 2:
        raise ValueError("leave-one-channel-out needs at least 2 channels")
    if folds is not None:
        folds = check_int(folds, "folds", low=1)
    kw = dict(train_kwargs, device=device)
    t = time.perf_counter()
    ref = cross_validate(ds, n_splits=n_splits, random_state=random_state, n_jobs=n_jobs, progress=progress, **kw)
    t_ref = time.perf_counter() - t
    n_folds = min(folds or n_splits, n_splits)
    px_s, pxa_s, px_imp, pxa_k = [], [], [], []
    for f in range(n_folds):
        test = ds.subset(ref.test_indices[f])
        opts = dict(n_repeats=n_repeats, random_state=random_state, batch_size=batch_size, device=device, progress=progress)
        t = time.perf_counter()
        res = channel_importance(ref.models[f], test, **opts)
        px_s.append(time.perf_counter() - t)
        px_imp.append(res.importance)
        if adaptive:
            t = time.perf_counter()
            ra = channel_importance(ref.models[f], test, adaptive=True, **opts)
            pxa_s.append(time.perf_counter() - t)
            pxa_k.append(int(ra.info["n_repeats"]))
    loco = leave_one_channel_out(ds, n_splits=n_splits, random_state=random_state, reference=ref,
                                 folds=list(range(n_folds)), n_jobs=n_jobs, progress=progress, **kw)
    px_imp_a, loco_imp_a = np.array(px_imp), np.asarray(loco.importances)
    train = t_ref / n_splits
    loco_s = float(loco.info["runtime_s"]) / n_folds
    px = float(np.mean(px_s))
    names = list(ds.channel_names)
    out: dict[str, Any] = {
        "data": ds.name, "n_samples": len(ds), "image_shape": list(ds.image_shape),
        "n_channels": C, "n_splits": n_splits, "pxpermute_folds": n_folds, "n_repeats": n_repeats,
        "model": str(train_kwargs.get("model", "resnet18")), "max_epochs": train_kwargs.get("max_epochs"),
        "n_jobs": n_jobs,
        "epochs_trained": [int(len(m.history)) for m in ref.models],
        "f1_macro_all_channels": float(np.mean(ref.f1_macro)),
        "train_s_per_model": train, "pxpermute_s_per_fold": px,
        "loco_s_per_fold": loco_s, "loco_s_per_fold_paper": loco_s + train,
        "speedup": loco_s / px, "speedup_paper": (loco_s + train) / px,
        "pxpermute_importance": px_imp_a, "loco_importance": loco_imp_a,
        "pxpermute_ranking": [names[i] for i in np.argsort(-px_imp_a.mean(0), kind="stable")],
        "loco_ranking": [names[i] for i in np.argsort(-loco_imp_a.mean(0), kind="stable")],
        "spearman": float(spearmanr(px_imp_a.mean(0), loco_imp_a.mean(0)).statistic),
        "loco_trainings": int(loco.info["n_trainings"]),
    }
    if adaptive:
        out.update(pxpermute_adaptive_s_per_fold=float(np.mean(pxa_s)), adaptive_k_used=pxa_k,
                   speedup_adaptive=loco_s / float(np.mean(pxa_s)))
    return out


def side_by_side(results: Sequence[ImportanceResult] | Mapping[str, ImportanceResult]) -> pd.DataFrame:
    """Several importance results (e.g. PXPermute and leave-one-channel-out) and their cost in one table.

    Parameters
    ----------
    results : sequence of ImportanceResult, or mapping label -> ImportanceResult
        They must score the same channels.

    Returns
    -------
    DataFrame
        One row per (method, channel): ``importance``, ``normalized``, ``rank``,
        plus the method's cost: ``seconds`` (``info["runtime_s"]``),
        ``n_trainings`` (``info["n_trainings"]``, 0 when the method only
        evaluates a trained model) and ``n_forward_images`` where known.

    Examples
    --------
    >>> side_by_side({"PXPermute": px, "LOCO": loco}).pivot(index="channel", columns="method", values="rank")  # doctest: +SKIP
    """
    if isinstance(results, Mapping):
        items = list(results.items())
    elif isinstance(results, ImportanceResult):
        items = [(str(results.info.get("method", "result")), results)]
    else:
        items = [(str(r.info.get("method", f"result {i}")), r) for i, r in enumerate(results)]
    if not items:
        raise ValueError("no results given")
    for label, r in items:
        if not isinstance(r, ImportanceResult):
            raise TypeError(f"{label!r} is a {type(r).__name__}, not an ImportanceResult")
        if sorted(r.channel_names) != sorted(items[0][1].channel_names):
            raise ValueError(f"{label!r} scores channels {r.channel_names}, the first result {items[0][1].channel_names}")
    frames = []
    for label, r in items:
        df = r.to_frame()[["channel", "importance", "normalized", "rank"]].copy()
        df.insert(0, "method", label)
        df["seconds"] = r.info.get("runtime_s", np.nan)
        df["n_trainings"] = r.info.get("n_trainings", 0)
        df["n_forward_images"] = r.info.get("n_forward_images", np.nan)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
