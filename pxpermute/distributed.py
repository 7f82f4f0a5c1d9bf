"""Distributed runs through :mod:`torch.distributed` (nothing home-made).

Under ``torchrun`` -- or any initialized process group --
:func:`pxpermute.runner.run_repeats` gives every rank a contiguous shard of the
sample indices (:func:`shard_indices`) and all-reduces (sums) the confusion
matrices after each chunk (:func:`all_reduce_sum`), so every rank ends with the
same result, equal to the single-process one.  Ranks check that they agree on
the configuration (:func:`check_ranks_agree`) before computing anything.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .fingerprint import describe_difference, fingerprint_digest

__all__ = ["distributed_context", "shard_indices", "all_reduce_sum", "broadcast_object", "agree_seed",
           "check_ranks_agree", "init_distributed"]


def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialized default process group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_indices(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Contiguous shard ``rank`` of ``world_size`` (sizes differ by at most 1; may be empty).

    Examples
    --------
    >>> [s.tolist() for s in (shard_indices(np.arange(5), r, 2) for r in range(2))]
    [[0, 1, 2], [3, 4]]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return np.array_split(np.asarray(indices), world_size)[rank]


def _reduce_device(t: torch.Tensor) -> torch.device:
    """NCCL reduces CUDA tensors only, gloo CPU tensors (CUDA ones too, but slower)."""
    if str(torch.distributed.get_backend()) == "nccl":
        return t.device if t.is_cuda else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks (on the backend's device) and return it on ``t``'s device."""
    dev = _reduce_device(t)
    buf = t.to(dev).contiguous()
    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
    return buf.to(t.device)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    lst = [obj]
    torch.distributed.broadcast_object_list(lst, src=0)
    return lst[0]


def agree_seed(random_state: int) -> int:
    """In a distributed run, every rank takes rank 0's seed (``random_state=None`` draws one per rank)."""
    if distributed_context()[1] == 1:
        return random_state
    return int(broadcast_object(int(random_state)))


def check_ranks_agree(fp: Mapping[str, Any]) -> None:
    """Raise on every rank if the ranks' configuration fingerprints differ."""
    rank, world = distributed_context()
    if world == 1:
        return
    digest = fingerprint_digest(fp)
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (digest, fp))
    ref_digest, ref = gathered[0]
    for r, (d, other) in enumerate(gathered):
        if d != ref_digest:
            diff = describe_difference(ref, other)
            raise RuntimeError(
                f"distributed ranks disagree on the run's configuration (rank 0 vs rank {r}: {diff}); "
                "every rank must pass the same model, data, channels and random_state"
            )


def init_distributed(device: str | None = None) -> tuple[int, int, str | None]:
    """Initialize the default process group from ``torchrun``'s environment, if present.

    Returns ``(rank, world_size, device)``; the device of a CUDA run becomes
    ``cuda:LOCAL_RANK``.  Without ``WORLD_SIZE`` > 1 in the environment nothing
    is initialized.  Backend: NCCL for CUDA devices, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return 0, 1, device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    is_cuda = device is not None and str(device).startswith("cuda")
    if is_cuda and str(device) == "cuda":
        device = f"cuda:{local}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if is_cuda else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device
