"""Retraining on channel subsets: the one routine behind remove-and-retrain, panels and leave-one-channel-out.

Every retraining of the evaluation package goes through
:func:`pxpermute.training.cross_validate` via :class:`SubsetTrainer`, which
trains each distinct channel subset once, on the same folds (the folds depend
only on the labels and ``random_state``), and counts the trainings spent.
:func:`retrain_scores` is its public face: cross-validated scores of models
retrained on given channel subsets.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._validation import check_random_state
from ..datasets.base import IFCDataset, resolve_channels
from ._common import as_dataset, check_n_splits

__all__ = ["retrain_scores", "SubsetTrainer"]


class SubsetTrainer:
    """Cross-validation results keyed by the (sorted) channel subset; trains each subset once.

    Parameters
    ----------
    ds : IFCDataset
    n_splits : int
    random_state : int or None
        Seed of the folds and of every training; ``None`` draws one seed
        (recorded in ``random_state``), the same for every subset, so all
        subsets share the folds.
    train_kwargs : dict
        Options for :func:`~pxpermute.training.cross_validate`.
    keep_models : bool
        Keep the fitted networks in the stored CVResults.
    n_jobs : int or None
        Parallel trainings (see :func:`~pxpermute.training.run_trainings`):
        all (subset, fold) trainings of one :meth:`fit_many` call form one batch.
    folds : sequence of int, optional
        Evaluate only these folds of the split.
    """

    def __init__(self, ds: IFCDataset, *, n_splits: int, random_state: Any, train_kwargs: Mapping[str, Any],
                 keep_models: bool = True, n_jobs: int | None = None, folds: Sequence[int] | None = None) -> None:
        self.ds = ds
        self.n_splits = n_splits
        self.n_jobs = n_jobs
        self.fold_ids = None if folds is None else [int(f) for f in folds]
        if random_state is None:  # one seed for every subset, so all of them get the same folds
            # (below 2**31: sklearn's splitters take seeds < 2**32)
            random_state = int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))
        self.random_state = check_random_state(random_state)
        self.train_kwargs = dict(train_kwargs)
        self.keep_models = keep_models
        self.results: dict[tuple[int, ...], Any] = {}
        self.fold_results: dict[tuple[tuple[int, ...], int], Any] = {}
        self.n_trainings = 0
        self.seconds = 0.0
        self.folds: list[np.ndarray] | None = None

    @staticmethod
    def key(channels: Iterable[int]) -> tuple[int, ...]:
        key = tuple(sorted({int(c) for c in channels}))
        if not key:
            raise ValueError("a panel needs at least one channel")
        return key

    def add(self, cv: Any) -> None:
        """Register a CVResult computed elsewhere (e.g. a ``reference=`` passed by the user).

        A one-fold result (``params["folds"] == [f]``, from a nested panel) is kept
        for that fold only.
        """
        key = self.key(cv.channel_indices)
        folds = cv.params.get("folds") if isinstance(getattr(cv, "params", None), dict) else None
        if folds is not None and len(folds) == 1 and len(cv.test_indices) == 1:
            f = int(folds[0])
            if self.folds is not None and not np.array_equal(self.folds[self._position(f)], cv.test_indices[0]):
                raise RuntimeError("two channel subsets were cross-validated on different folds")
            self.fold_results[(key, f)] = cv
            return
        self._check_folds(cv)
        self.results[key] = cv

    def reuse(self, earlier: Any, n_splits: int) -> int:
        """Register the CVResults of an earlier panel analysis on the same folds; returns how many.

        ``earlier``: a result with ``cv_results`` (PanelComparison, MinimalPanel) or
        a list of CVResults.  Only results with this trainer's seed, number of
        folds and training options are taken (anything else raises).
        """
        cvs = list(earlier.cv_results.values()) if hasattr(earlier, "cv_results") else list(earlier)
        mine = {k: v for k, v in self.train_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}
        for cv in cvs:
            if cv.random_state != self.random_state or cv.params.get("n_splits") != n_splits:
                raise ValueError(f"reuse: a result was cross-validated with random_state={cv.random_state}, "
                                 f"n_splits={cv.params.get('n_splits')}; this analysis uses {self.random_state}, "
                                 f"{n_splits}")
            theirs = {k: v for k, v in cv.params.items() if k not in ("n_splits", "folds")}
            theirs.setdefault("valid_fraction", 0.2)
            want = dict(mine)
            want.setdefault("valid_fraction", 0.2)
            if theirs != want:
                raise ValueError(f"reuse: a result was trained with {theirs}, this analysis with {want}")
            self.add(cv)
        return len(cvs)

    def _check_folds(self, cv: Any) -> None:
        if self.folds is None:
            self.folds = [np.asarray(t) for t in cv.test_indices]
        elif len(self.folds) != len(cv.test_indices) or any(
                not np.array_equal(a, b) for a, b in zip(self.folds, cv.test_indices)):
            raise RuntimeError("two channel subsets were cross-validated on different folds")

    def fit(self, channels: Iterable[int], *, progress: bool = False) -> tuple[Any, int]:
        """The CVResult of one subset and the number of trainings it cost now (0 when cached)."""
        return self.fit_many([channels], progress=progress)[0]

    def fit_many(self, subsets: Sequence[Iterable[int]], *, progress: bool = False,
                 desc: str = "retraining channel subsets") -> list[tuple[Any, int]]:
        """CVResults of several subsets (trained once each); per subset, the trainings it cost now."""
        from .. import training

        keys = [self.key(s) for s in subsets]
        new = [k for k in dict.fromkeys(keys) if k not in self.results]
        cost: dict[tuple[int, ...], int] = {}
        if new:
            t0 = time.perf_counter()
            cvs = training.cross_validate_many(self.ds, [list(k) for k in new], n_splits=self.n_splits,
                                               folds=self.fold_ids, random_state=self.random_state,
                                               n_jobs=self.n_jobs, progress=progress, desc=desc, **self.train_kwargs)
            self.seconds += time.perf_counter() - t0
            for key, cv in zip(new, cvs):
                if not self.keep_models:
                    cv = copy.copy(cv)
                    cv.models = [None] * len(cv.models)
                self._check_folds(cv)
                self.results[key] = cv
                self.n_trainings += len(cv.test_indices)
                cost[key] = len(cv.test_indices)
        out, charged = [], set()
        for key in keys:
            out.append((self.results[key], cost.get(key, 0) if key not in charged else 0))
            charged.add(key)
        return out


    def fit_folds(self, requests: Sequence[tuple[Iterable[int], int]], *, progress: bool = False,
                  desc: str = "retraining channel subsets per fold") -> list[tuple[Any, int, int]]:
        """Single folds of channel subsets, for panels that differ between folds (nested cross-validation).

        ``requests`` lists ``(channels, fold)`` pairs.  Each distinct pair is trained once
        (a subset already cross-validated on all folds is reused).  Returns, per request,
        ``(CVResult, position of the fold in it, trainings it cost now)``.
        """
        from .. import training

        keys = [(self.key(ch), int(f)) for ch, f in requests]
        for _, f in keys:
            if not 0 <= f < self.n_splits or (self.fold_ids is not None and f not in self.fold_ids):
                raise ValueError(f"fold {f} is not one of the folds of this trainer")
        by_fold: dict[int, list[tuple[int, ...]]] = {}
        for key, f in dict.fromkeys(keys):
            if key not in self.results and (key, f) not in self.fold_results:
                by_fold.setdefault(f, []).append(key)
        cost: dict[tuple[tuple[int, ...], int], int] = {}
        for f, new in sorted(by_fold.items()):
            t0 = time.perf_counter()
            cvs = training.cross_validate_many(self.ds, [list(k) for k in new], n_splits=self.n_splits, folds=[f],
                                               random_state=self.random_state, n_jobs=self.n_jobs, progress=progress,
                                               desc=f"{desc} (fold {f})", **self.train_kwargs)
            self.seconds += time.perf_counter() - t0
            for key, cv in zip(new, cvs):
                if not self.keep_models:
                    cv = copy.copy(cv)
                    cv.models = [None] * len(cv.models)
                if self.folds is not None and not np.array_equal(self.folds[self._position(f)], cv.test_indices[0]):
                    raise RuntimeError("two channel subsets were cross-validated on different folds")
                self.fold_results[(key, f)] = cv
                self.n_trainings += 1
                cost[(key, f)] = 1
        out = []
        for key, f in keys:
            if key in self.results:
                out.append((self.results[key], self._position(f), 0))
            else:
                out.append((self.fold_results[(key, f)], 0, cost.pop((key, f), 0)))
        return out

    def _position(self, fold: int) -> int:
        return int(fold) if self.fold_ids is None else self.fold_ids.index(int(fold))


def retrain_scores(
    dataset: Any,
    channel_subsets: Mapping[str, Sequence[int | str]] | Sequence[Sequence[int | str]],
    *,
    n_splits: int = 5,
    random_state: int | None = 42,
    per_class: bool = False,
    return_cv: bool = False,
    keep_models: bool = False,
    n_jobs: int | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, Any]]:
    """Cross-validated scores of models retrained on each channel subset.

    Each subset is put in the data set's channel order and trained once with
    :func:`pxpermute.training.cross_validate` (same folds for every subset, because
    the folds depend only on ``random_state`` and the labels, so scores are paired
    by fold across subsets); subsets listed twice reuse the first training.

    Parameters
    ----------
    dataset : IFCDataset or (images, labels)
    channel_subsets : mapping label -> channels, or sequence of channel lists
        Channels by name or index.  Without labels, each subset is labelled by
        its comma-joined channel names.
    n_splits : int, default 5
        Cross-validation folds.
    random_state : int or None, default 42
        Seed of the folds and of training (``None``: one fresh seed for all subsets).
    per_class : bool, default False
        Add one column ``f1[<class>]`` per class.
    return_cv : bool, default False
        Also return the :class:`~pxpermute.training.CVResult` of every distinct
        channel set (keyed by its ``channels`` string): held-out predictions,
        fold indices, per-class F1.
    keep_models : bool, default False
        Keep the fitted networks in those CVResults (``models``); by default they
        are dropped (replaced by ``None``) as soon as a subset is scored, so memory does not grow with
        the number of subsets (one ResNet18 per fold and subset adds up quickly).
    n_jobs : int or None, default None
        Trainings in parallel through joblib (``-1``: all cores; a Dask cluster
        inside ``joblib.parallel_config(backend="dask")``); the results do not
        depend on it (seeds are fixed per training), see
        :func:`~pxpermute.training.run_trainings`.
    progress : bool, default True
        tqdm bar counting finished trainings.
    **train_kwargs
        Fixed hyper-parameters for every retraining, passed to
        :func:`~pxpermute.training.cross_validate` (``model``, ``max_epochs``,
        ``batch_size``, ``valid_fraction`` ...).

    Returns
    -------
    pandas.DataFrame
        One row per (subset, fold): ``subset``, ``fold``, ``n_channels``,
        ``channels`` (comma-joined names, data-set order), ``f1_macro``,
        ``accuracy``, ``n_test`` (and ``f1[<class>]`` columns).  With
        ``return_cv=True``: ``(frame, {channels string: CVResult})``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((40, 3, 16, 16)).astype("float32"); y = np.arange(40) % 2
    >>> x[y == 1, 0, :8] += 1
    >>> df = retrain_scores((x, y), {"all": [0, 1, 2], "ch0": [0]}, n_splits=2, model="small_cnn",
    ...                     model_kwargs={"width": 4}, max_epochs=1, progress=False)
    >>> df[["subset", "fold", "n_channels"]].values.tolist()
    [['all', 0, 3], ['all', 1, 3], ['ch0', 0, 1], ['ch0', 1, 1]]
    """
    ds = as_dataset(dataset, "retrain_scores")
    n_splits = check_n_splits(n_splits)
    if isinstance(channel_subsets, Mapping):
        items = [(str(k), v) for k, v in channel_subsets.items()]
    elif isinstance(channel_subsets, (list, tuple)):
        items = [(None, v) for v in channel_subsets]
    else:
        raise TypeError(
            "channel_subsets must be a mapping label -> channels or a list of channel lists; "
            f"got {type(channel_subsets).__name__}"
        )
    if not items:
        raise ValueError("channel_subsets is empty")
    canon: list[tuple[str, tuple[int, ...]]] = []
    for label, subset in items:
        if isinstance(subset, (str, int, np.integer)):
            subset = [subset]
        idx = tuple(sorted(resolve_channels(list(subset), ds.channel_names)))
        if not idx:
            raise ValueError(f"channel subset {label or subset!r} is empty; every model needs at least one channel")
        names = ",".join(ds.channel_names[i] for i in idx)
        canon.append((label if label is not None else names, idx))

    trainer = SubsetTrainer(ds, n_splits=n_splits, random_state=random_state, train_kwargs=train_kwargs,
                            keep_models=keep_models, n_jobs=n_jobs)
    trainer.fit_many([idx for _, idx in canon], progress=progress)
    results = trainer.results

    rows = []
    for label, idx in canon:
        cv = results[idx]
        names = ",".join(ds.channel_names[i] for i in idx)
        for k in range(len(cv.f1_macro)):
            row = {
                "subset": label,
                "fold": k,
                "n_channels": len(idx),
                "channels": names,
                "f1_macro": float(cv.f1_macro[k]),
                "accuracy": float(cv.accuracy[k]),
                "n_test": int(cv.test_indices[k].size),
            }
            if per_class:
                for c, cname in enumerate(cv.class_names):
                    row[f"f1[{cname}]"] = float(cv.f1_per_class[k, c])
            rows.append(row)
    frame = pd.DataFrame(rows)
    if return_cv:
        return frame, {",".join(ds.channel_names[i] for i in idx): cv for idx, cv in results.items()}
    return frame
