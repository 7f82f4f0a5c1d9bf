"""Cross-validated importance: the published protocol (one model per fold, PXPermute on its held-out cells)."""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .._validation import check_int
from ..datasets.base import IFCDataset
from ..result import ImportanceResult
from ._common import as_dataset, model_label

__all__ = ["cv_importance"]


def cv_importance(
    dataset: IFCDataset,
    *,
    n_splits: int = 5,
    n_repeats: int = 100,
    perturbation: str = "pixel",
    random_state: int | None = 42,
    metric: str = "f1",
    n_jobs: int | None = None,
    progress: bool = False,
    importance_kwargs: Mapping[str, Any] | None = None,
    **train_kwargs: Any,
) -> ImportanceResult:
    """Train in cross-validation and run :func:`~pxpermute.channel_importance` on each held-out fold.

    The paper's protocol: one model per fold, importances on that fold's test
    cells.  The returned result stacks the repeats of all folds
    (``importances`` has ``n_splits x n_repeats`` rows), so its mean is the mean
    over folds; the spread between folds (models and test cells) is in
    ``fold_importances`` and ``to_frame("fold")``.  Use it as
    ``importance_fn`` of :func:`~pxpermute.evaluation.multistage_design` (e.g. with
    ``functools.partial``).

    Parameters
    ----------
    dataset : IFCDataset
    n_splits : int, default 5
    n_repeats : int, default 100
        k per fold.
    perturbation : {"pixel", "sample", "fill"}, default "pixel"
    random_state : int or None, default 42
        Seed of the folds, the trainings and the permutations.
    metric : str, default "f1"
    n_jobs : int or None, default None
        Train the folds in parallel through joblib (``-1``: all cores; a Dask
        cluster inside ``joblib.parallel_config(backend="dask")``); the results
        do not depend on it, see :func:`~pxpermute.training.run_trainings`.
        The importance runs stay in this process.
    progress : bool, default False
    importance_kwargs : mapping, optional
        More options for :func:`~pxpermute.channel_importance` (``batch_size``, ``device`` ...).
    **train_kwargs
        Passed to :func:`~pxpermute.training.cross_validate`.

    Returns
    -------
    ImportanceResult
        Pooled over the folds with :meth:`ImportanceResult.concat` (``folds``,
        ``fold_importances``, a ``fold`` column in ``to_frame("repeat")``).
        ``info`` holds ``n_splits``, ``n_trainings``, ``train_seconds``,
        ``runtime_s`` (training + importance) and ``fold_importance`` (per fold
        mean importances).

    Examples
    --------
    >>> from functools import partial
    >>> fn = partial(cv_importance, n_splits=2, n_repeats=10, model="small_cnn", max_epochs=3)
    >>> res = fn(ds)  # doctest: +SKIP
    """
    from ..importance import channel_importance
    from ..training import cross_validate

    ds = as_dataset(dataset, "cv_importance")
    n_repeats = check_int(n_repeats, "n_repeats", low=1)
    t0 = time.perf_counter()
    cv = cross_validate(ds, n_splits=n_splits, random_state=random_state, n_jobs=n_jobs, progress=progress,
                        **train_kwargs)
    t_train = time.perf_counter() - t0
    folds = []
    for net, te in zip(cv.models, cv.test_indices):
        # a warning shows this line: keep it short
        res = channel_importance(
            net, ds.subset(te), n_repeats=n_repeats, perturbation=perturbation, metric=metric,
            random_state=random_state, progress=progress, **dict(importance_kwargs or {}))
        folds.append(res)
    pooled = ImportanceResult.concat(folds, name="fold")
    pooled.info.update(method=pooled.info.get("method", "pxpermute"), n_splits=cv.n_splits, n_trainings=cv.n_splits,
                       n_repeats_per_fold=folds[0].n_repeats, train_seconds=t_train,
                       runtime_s=time.perf_counter() - t0,
                       importance_seconds=float(sum(r.info.get("runtime_s", 0.0) for r in folds)), n_samples=len(ds),
                       data=ds.name, model=model_label(train_kwargs), random_state=random_state,
                       fold_importance=[r.importance.tolist() for r in folds], protocol="cross-validation")
    return pooled
