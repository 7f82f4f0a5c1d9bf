"""Counter-based random keys: the engine's only source of randomness.

A key is a pure function of ``(seed, unit, repeat, sample index, tag)`` computed
with the splitmix64 finalizer in wrapping int64 tensor arithmetic on the model's
device (checked against a numpy uint64 reference once per device).  Because no
random state is carried from one call to the next, the permutations
(:mod:`pxpermute.perturb`) and the Poisson bootstrap weights
(:mod:`pxpermute.stats`) do not depend on batch size, evaluation order,
sharding over processes or resuming.

Example
-------
>>> import torch
>>> k = base_keys(seed_words(0), torch.arange(3), 0, torch.arange(2), tag=1)
>>> k.shape, bool((k == base_keys(seed_words(0), torch.arange(3), 0, torch.arange(2), tag=1)).all())
(torch.Size([2, 3]), True)
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["seed_words", "base_keys", "mix64", "mix64_"]

_MASK64 = (1 << 64) - 1
_C1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64 finalizer constants, as signed int64
_C2 = 0x94D049BB133111EB - (1 << 64)
_GOLD = 0x9E3779B97F4A7C15 - (1 << 64)


def _mix64_(x: torch.Tensor) -> torch.Tensor:
    """In-place splitmix64 finalizer on an int64 tensor (wrapping arithmetic), returns ``x``.

    Logical right shifts are emulated with a mask since torch shifts int64
    arithmetically.  The result is checked once against a numpy uint64
    reference (:func:`_check_wrapping`), so a platform where int64 multiplication
    does not wrap is detected instead of silently producing other permutations.
    """
    x.bitwise_xor_((x >> 30).bitwise_and_((1 << 34) - 1))
    x.mul_(_C1)
    x.bitwise_xor_((x >> 27).bitwise_and_((1 << 37) - 1))
    x.mul_(_C2)
    x.bitwise_xor_((x >> 31).bitwise_and_((1 << 33) - 1))
    return x


def _mix64(x: torch.Tensor) -> torch.Tensor:
    return _mix64_(x.clone())


def _as_i64(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >= (1 << 63) else v


def _np_mix64(v: np.ndarray) -> np.ndarray:
    x = v.astype(np.uint64)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


_checked: set[str] = set()


def _check_wrapping(device: torch.device) -> None:
    if str(device) in _checked:
        return
    probe = np.array([0, 1, 2**40 + 7, 2**63 - 1, 2**63, 2**64 - 1], dtype=np.uint64)
    ref = _np_mix64(probe)
    got = _mix64(torch.from_numpy(probe.view(np.int64)).to(device)).cpu().numpy().view(np.uint64)
    if not np.array_equal(ref, got):
        raise RuntimeError(f"int64 arithmetic on {device} does not wrap as expected; permutations would not be reproducible")
    _checked.add(str(device))


def seed_words(random_state: int) -> int:
    """A 64-bit key (as signed int) derived from an arbitrary non-negative integer seed."""
    s = np.random.SeedSequence(int(random_state)).generate_state(2, dtype=np.uint32)
    return _as_i64((int(s[0]) << 32) | int(s[1]))


def _head(seed: int, unit: int, tag: int) -> int:
    """mix64(mix64(seed) ^ (tag * FNV + unit)) as a signed int64 Python int, computed on the host."""
    h = int(_np_mix64(np.array([seed], dtype=np.int64).view(np.uint64))[0])
    h ^= (tag * 0x100000001B3 + unit) & _MASK64
    return _as_i64(int(_np_mix64(np.array([h], dtype=np.uint64))[0]))


def _base_keys(seed: int, sample_idx: torch.Tensor, unit: int, repeats: torch.Tensor, tag: int) -> torch.Tensor:
    """Well-mixed int64 keys of shape (len(repeats), len(sample_idx)) for (seed, unit, repeat, sample, tag)."""
    dev = sample_idx.device
    _check_wrapping(dev)
    head = _head(seed, unit, tag)  # a Python int: no host->device copy (a hidden sync on CUDA) per call
    r = _mix64_(repeats.to(dev, torch.int64) * _GOLD ^ head)  # (S,)
    i = _mix64_(sample_idx.to(dev, torch.int64) * _C2 + 0x632BE59BD9B4E019)  # (B,)
    return _mix64_(r[:, None] ^ i[None, :])


# public names (the underscored ones are kept for old imports)
mix64_ = _mix64_
mix64 = _mix64
base_keys = _base_keys
