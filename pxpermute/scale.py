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
]  # plus load_model, load_data (from pxpermute.io) and runtime_vs_loco (from pxpermute.evaluation), served lazily

# old private names
_all_reduce_sum = all_reduce_sum
_broadcast_object = broadcast_object
_fingerprint_digest = fingerprint_digest

_MOVED = {"load_model": "io", "load_data": "io", "runtime_vs_loco": "evaluation"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module 'pxpermute.scale' has no attribute {name!r}")
