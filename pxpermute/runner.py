"""The repeat runner: chunks of repeats, shards, checkpoints and adaptive k around the engine.

:func:`run_repeats` orchestrates :func:`pxpermute.importance.accumulate` (passed
in, so this module does not import the engine), which streams a set of sample
indices once for a range of *global* repeat ids and returns summable confusion
matrices.  Three facts make the features exact rather than approximate:

* permutations are a pure function of (seed, sample index, unit, repeat), so a
  sample gets the same perturbation whichever process, batch or chunk handles it;
* confusion matrices over disjoint sample sets add up (distributed shards,
  :mod:`pxpermute.distributed`);
* confusion matrices of disjoint repeat ranges concatenate (chunks of repeats,
  resumed runs from :mod:`pxpermute.checkpoint`, adaptive k from
  :mod:`pxpermute.adaptive`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._progress import progress_bar
from .adaptive import AdaptiveK, ranking_settled
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import all_reduce_sum, broadcast_object, check_ranks_agree, distributed_context, shard_indices
from .fingerprint import StreamDigest

__all__ = ["run_repeats"]


def _collector_state(collector: Any) -> dict[str, np.ndarray]:
    """Arrays a side collector (e.g. :class:`pxpermute.stats.BootstrapCollector`) pooled so far."""
    if collector is None:
        return {}
    if hasattr(collector, "state"):
        return {k: v for k, v in collector.state().items() if v is not None}
    return {k: getattr(collector, k) for k in ("baseline", "confusion") if getattr(collector, k, None) is not None}


def _collector_load(collector: Any, state: Mapping[str, np.ndarray]) -> None:
    if collector is None or not state:
        return
    if hasattr(collector, "load_state"):
        collector.load_state(dict(state))
    else:
        for k, v in state.items():
            setattr(collector, k, np.asarray(v))


def _reduce_acc(acc: Any) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    base, conf, nf = acc.baseline, acc.confusion, int(acc.n_forward_images)
    if distributed_context()[1] > 1:
        if base is not None:
            base = all_reduce_sum(base)
        conf = all_reduce_sum(conf)
        nf = int(all_reduce_sum(torch.tensor([nf], dtype=torch.int64, device=conf.device)).item())
    return base, conf, nf


def _stream_digest(digest: StreamDigest) -> str:
    """The digest of all ranks' samples (shards add up)."""
    if distributed_context()[1] > 1:
        lanes = torch.from_numpy(np.append(digest.lanes.view(np.int64), np.int64(digest.count)))
        lanes = all_reduce_sum(lanes).cpu().numpy()  # int64 sums wrap like the uint64 lanes
        total = StreamDigest()
        total.add(lanes[:4].view(np.uint64), int(lanes[4]))
        return total.hexdigest()
    return digest.hexdigest()


def _check_stream(checkpoint: Any, stored: str | None, found: str) -> None:
    if stored is not None and stored != found:
        raise CheckpointError(
            f"checkpoint {checkpoint} was written for different data: the images or labels evaluated now differ "
            f"from those of the run that wrote it (digest of every image {found[:24]}... vs {stored[:24]}...); "
            f"delete {checkpoint} to start over, or pass another checkpoint path"
        )


def run_repeats(
    plan: Any,
    indices: np.ndarray,
    n_repeats: int,
    *,
    accumulate: Callable[..., Any],
    adaptive: AdaptiveK | None = None,
    chunk: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    fp: Mapping[str, Any] | None = None,
    score: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    aggregate: str = "mean",
    progress: bool = False,
    desc: str = "",
    collector: Any = None,
) -> dict[str, Any]:
    """Run ``accumulate`` over repeat chunks, shards and checkpoints; return summed matrices.

    Parameters
    ----------
    plan, accumulate
        The engine's plan and :func:`pxpermute.importance.accumulate`.
    indices : ndarray
        Sample indices evaluated (all of them; each rank takes its shard).
    n_repeats : int
        Repeats wanted (the cap when ``adaptive`` is given).
    adaptive : AdaptiveK, optional
        Stop early once the ranking is settled (needs ``score``).
    chunk : int, optional
        Repeats per chunk without ``adaptive`` (default: all at once, or 10
        with a checkpoint).
    checkpoint : path, optional
        Partial-result file, written after every chunk (rank 0) and resumed from.
    fp : mapping
        Configuration fingerprint (required with ``checkpoint``; checked across ranks).
    score : callable (baseline (K, K), confusion (R, U, K, K)) -> importances (R, U)
        Used by the adaptive rule.
    collector : optional
        Side accumulator fed by a wrapped ``accumulate`` with counts pooled over
        repeats (the bootstrap); its arrays (``state()``/``load_state()``, else
        its ``baseline``/``confusion`` attributes) are saved in and restored
        from the checkpoint.  Pooled counts cannot be cut to fewer repeats, so
        resuming from a checkpoint with more repeats than used raises.

    Returns
    -------
    dict with ``baseline`` (K, K) and ``confusion`` (R, U, K, K) numpy arrays,
    ``n_forward_images`` (this run, all ranks), ``n_repeats`` (k used),
    ``resumed_repeats``, ``world_size``, ``adaptive`` (info dict or None).
    """
    rank, world = distributed_context()
    if fp is not None:
        check_ranks_agree(fp)
    if checkpoint is not None and fp is None:
        raise ValueError("a checkpoint needs the configuration fingerprint fp")
    if adaptive is not None:
        points = adaptive.checkpoints(n_repeats)
    else:
        step = int(chunk) if chunk else (10 if checkpoint is not None else n_repeats)
        points = list(range(step, n_repeats, step)) + [n_repeats]
    local = shard_indices(np.asarray(indices, dtype=np.int64), rank, world)

    # resume
    base_np: np.ndarray | None = None
    conf_parts: list[np.ndarray] = []
    done = loaded = 0
    stored_stream: str | None = None
    if checkpoint is not None:
        state: Any = None
        if rank == 0 and Path(checkpoint).exists():
            try:
                state = load_checkpoint(checkpoint, fp)
            except CheckpointError as err:
                state = err
        if world > 1:
            state = broadcast_object(state)
        if isinstance(state, Exception):
            raise state
        if state is not None:
            base_np = state["baseline"]
            conf_parts = [state["confusion"][:n_repeats]]
            done = conf_parts[0].shape[0]
            loaded = state["confusion"].shape[0]
            _collector_load(collector, state.get("extras", {}))
            stored_stream = state.get("data_stream_digest")
    # with a checkpoint, every evaluated image is hashed while the first chunk of this run streams the data
    digest = StreamDigest() if checkpoint is not None else None
    stream: str | None = None
    resumed = done
    n_forward = 0

    prev = 0
    total = 0
    for p in points:
        if p > done:
            total += plan.n_passes(len(local), p - max(prev, done), with_baseline=False)
        prev = p
    total += 0 if base_np is not None else math.ceil(len(local) / plan.block_size(max(len(local), 1)))
    bar = progress_bar(total=total, progress=progress, desc=desc, unit="pass")
    history: list[Any] = []  # RankingDecision of every adaptive evaluation
    info_adaptive = None
    stopped = "cap"
    k = done
    try:
        for p in points:
            if p > done:
                plan.stream_digest = digest if stream is None else None
                try:
                    acc = accumulate(plan, local, range(done, p), with_baseline=base_np is None, bar=bar)
                finally:
                    plan.stream_digest = None
                if digest is not None and stream is None:
                    stream = _stream_digest(digest)
                    _check_stream(checkpoint, stored_stream, stream)  # before anything is added or written
                b, c, nf = _reduce_acc(acc)
                if base_np is None:
                    base_np = b.cpu().numpy()
                conf_parts.append(c.cpu().numpy())
                n_forward += nf
                done = p
                if checkpoint is not None and rank == 0:
                    save_checkpoint(checkpoint, fp, base_np, np.concatenate(conf_parts), n_forward,
                                    extras=_collector_state(collector), data_stream_digest=stream)
            k = p
            if adaptive is not None and p >= adaptive.min_repeats:
                conf = np.concatenate(conf_parts)[:p]
                settled, why = ranking_settled(score(base_np, conf), aggregate=aggregate, rule=adaptive, history=history,
                                               n_samples=len(indices), cap=n_repeats)
                if p >= n_repeats:  # evaluated at the cap only to record the ties
                    stopped = "cap" if settled else "cap (ranking not settled)"
                elif settled:
                    stopped = why
                    break
    finally:
        if bar is not None:
            bar.close()
    if digest is not None and stream is None and stored_stream is not None:
        # resumed from a finished checkpoint: nothing was evaluated, so read the data once to check them
        for idx, x, y in plan.src.blocks(local, plan.block_size(max(len(local), 1))):
            digest.update(idx, x, y)
        _check_stream(checkpoint, stored_stream, _stream_digest(digest))
    confusion = np.concatenate(conf_parts)[:k]
    if loaded > k and _collector_state(collector):
        raise CheckpointError(
            f"checkpoint {checkpoint} holds {loaded} repeats but this run uses {k}; the bootstrap counts in it are "
            "pooled over all of them and cannot be cut: use n_repeats >= the checkpoint's repeats or a new checkpoint"
        )
    if adaptive is not None:
        last = history[-1] if history else None
        info_adaptive = dict(asdict(adaptive), cap=int(n_repeats), k_used=int(k), stopped=stopped,
                             evaluations=len(history), tie_groups=[] if last is None else last.tie_groups,
                             open_pairs=[] if last is None else [[p_["a"], p_["b"]] for p_ in last.pairs
                                                                  if p_["status"] == "open"])
    return {"baseline": base_np, "confusion": confusion, "n_forward_images": int(n_forward), "n_repeats": int(k),
            "resumed_repeats": int(min(resumed, k)), "world_size": int(world), "adaptive": info_adaptive}
