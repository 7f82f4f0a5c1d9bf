"""Backward-compatible alias for the modules that used to live here.

``pxpermute.scale`` held the repeat runner, adaptive k, checkpoints, the
distributed helpers, the command line's file loading and the runtime
comparison.  They now live in the engine modules

* :mod:`pxpermute.runner` -- :func:`run_repeats`
* :mod:`pxpermute.adaptive` -- :class:`AdaptiveK`, :func:`ranking_settled`
* :mod:`pxpermute.checkpoint` -- :class:`CheckpointError`, :func:`save_checkpoint`, :func:`load_checkpoint`
* :mod:`pxpermute.distributed` -- :func:`distributed_context`, :func:`shard_indices`, :func:`init_distributed` ...
* :mod:`pxpermute.fingerprint` -- :func:`fingerprint`, :func:`model_digest`, :func:`data_digest`
* :mod:`pxpermute.predictor` -- :func:`auto_batch_size`

and, above the engine, in :mod:`pxpermute.io` (``load_model``, ``load_data``)
and :mod:`pxpermute.evaluation` (``runtime_vs_loco``).  Import from there in new
code; the names below keep old notebooks and scripts working.  The engine never
imports this module.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .adaptive import AdaptiveK, ranking_settled
from .checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from .distributed import (
    agree_seed,
    all_reduce_sum,
    broadcast_object,
    check_ranks_agree,
    distributed_context,
    init_distributed,
    shard_indices,
)
from .fingerprint import data_digest, fingerprint, fingerprint_digest, model_digest
from .predictor import auto_batch_size
from .runner import run_repeats

__all__ = [
    "AdaptiveK",
    "ranking_settled",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "agree_seed",
    "all_reduce_sum",
    "broadcast_object",
    "check_ranks_agree",
    "distributed_context",
    "init_distributed",
    "shard_indices",
    "data_digest",
    "fingerprint",
    "fingerprint_digest",
    "model_digest",
    "auto_batch_size",
    "run_repeats",
    "runtime_vs_loco",
]  # plus load_model and load_data, served lazily from pxpermute.io

# old private names
_all_reduce_sum = all_reduce_sum
_broadcast_object = broadcast_object
_fingerprint_digest = fingerprint_digest

_MOVED = {"load_model": "io", "load_data": "io"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module 'pxpermute.scale' has no attribute {name!r}")


# -----------------------------------------------------------------------------
# run time: PXPermute vs leave-one-channel-out retraining
# -----------------------------------------------------------------------------
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
    progress: bool = False,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Measure PXPermute against leave-one-channel-out (LOCO) retraining on the same data and hardware.

    The paper's protocol (Shetab Boushehri et al. 2024: per fold 65 min for
    PXPermute vs 364 min for LOCO on WBC, 5.6x): stratified cross-validation with
    all channels (:func:`pxpermute.training.cross_validate`) gives the models;
    PXPermute runs with each fold's model on that fold's test cells (``n_repeats``
    and, with ``adaptive``, adaptive k); LOCO retrains once per left-out channel
    on the same fold (:func:`pxpermute.training.train_classifier`, the same
    recipe and seed as the cross-validation), importance = F1-macro drop on
    the fold's test cells.  Per fold LOCO costs C trainings (C + 1 counting the
    all-channel model, the paper's convention) and PXPermute one importance
    run.  All in one process, so the ratios are measured under the same load.

    Parameters
    ----------
    dataset : IFCDataset
    n_splits : int
        Cross-validation folds (for every training).
    folds : int, optional
        Run PXPermute and LOCO on only the first ``folds`` folds (seconds are per fold).
    n_repeats, adaptive, random_state, batch_size, device, progress
        PXPermute settings (``random_state`` also seeds the training).
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
    import time

    from scipy.stats import spearmanr

    from .importance import channel_importance
    from .metrics import compute_metric, confusion_matrix
    from .training import cross_validate, train_classifier

    C = dataset.n_channels
    if C < 2:
        raise ValueError("leave-one-channel-out needs at least 2 channels")
    kw = dict(train_kwargs, device=device)
    t = time.perf_counter()
    ref = cross_validate(dataset, n_splits=n_splits, random_state=random_state, progress=progress, **kw)
    t_ref = time.perf_counter() - t
    n_folds = min(folds or n_splits, n_splits)
    px_s, pxa_s, px_imp, pxa_k = [], [], [], []
    for f in range(n_folds):
        test = dataset.subset(ref.test_indices[f])
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
    loco_s, loco_imp = [], []
    present = np.bincount(dataset.labels, minlength=dataset.n_classes) > 0
    for f in range(n_folds):
        te = ref.test_indices[f]
        x_te, y_te = dataset.get_batch(np.asarray(te))
        t = time.perf_counter()
        drops = []
        for c in range(C):
            keep = [i for i in range(C) if i != c]
            net = train_classifier(dataset, train_indices=ref.train_indices[f], channels=keep,
                                   random_state=random_state, **kw)
            pred = np.asarray(net.predict(np.ascontiguousarray(x_te[:, keep])))
            f1 = compute_metric(confusion_matrix(y_te, pred, dataset.n_classes), "f1_macro", present)[0]
            drops.append(float(ref.f1_macro[f]) - float(f1))
        loco_s.append(time.perf_counter() - t)
        loco_imp.append(drops)
    px_imp_a, loco_imp_a = np.array(px_imp), np.array(loco_imp)
    train = t_ref / n_splits
    loco = float(np.mean(loco_s))
    px = float(np.mean(px_s))
    names = list(dataset.channel_names)
    out: dict[str, Any] = {
        "data": dataset.name, "n_samples": len(dataset), "image_shape": list(dataset.image_shape),
        "n_channels": C, "n_splits": n_splits, "pxpermute_folds": n_folds, "n_repeats": n_repeats,
        "model": str(train_kwargs.get("model", "resnet18")), "max_epochs": train_kwargs.get("max_epochs"),
        "epochs_trained": [int(len(m.history)) for m in ref.models],
        "f1_macro_all_channels": float(np.mean(ref.f1_macro)),
        "train_s_per_model": train, "pxpermute_s_per_fold": px,
        "loco_s_per_fold": loco, "loco_s_per_fold_paper": loco + train,
        "speedup": loco / px, "speedup_paper": (loco + train) / px,
        "pxpermute_importance": px_imp_a, "loco_importance": loco_imp_a,
        "pxpermute_ranking": [names[i] for i in np.argsort(-px_imp_a.mean(0), kind="stable")],
        "loco_ranking": [names[i] for i in np.argsort(-loco_imp_a.mean(0), kind="stable")],
        "spearman": float(spearmanr(px_imp_a.mean(0), loco_imp_a.mean(0)).statistic),
    }
    if adaptive:
        out.update(pxpermute_adaptive_s_per_fold=float(np.mean(pxa_s)), adaptive_k_used=pxa_k,
                   speedup_adaptive=loco / float(np.mean(pxa_s)))
    return out
