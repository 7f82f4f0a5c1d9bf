"""Channel perturbations: within-image pixel permutation, cross-sample swap, constant fill.

All randomness is *counter-based*: the permutation applied to sample ``i`` for
perturbation unit ``u`` (a channel, or a group of channels) in repeat ``r`` is a
pure function of ``(seed, i, u, r)``.  It does not depend on the batch the sample
arrives in, on the batch size, on the order of evaluation or on how the data are
sharded over processes, which is what makes results bit-identical across all of
those.  Keys come from the splitmix64 finalizer evaluated with wrapping int64 tensor
arithmetic on the model's device (checked against numpy once per device), so
permutations are generated vectorized on CPU or GPU: random keys, ``argsort``,
``gather`` -- never a Python loop per image or pixel.

Each perturbation is a small function of a batch; the importance engine is
shared, so occlusion (``fill``) is the same code path as PXPermute (``pixel``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .keys import _GOLD, _base_keys, _mix64_, seed_words  # noqa: F401  (seed_words: old import path)

__all__ = [
    "PERTURBATIONS",
    "seed_words",
    "pixel_permutation",
    "sample_permutation",
    "perturb_pixel",
    "perturb_sample",
    "perturb_fill",
]

_PIXEL_TAG = 0x50495853  # "PIXS"
_SAMPLE_TAG = 0x53414D50  # "SAMP"

_pixel_key_cache: dict[tuple[int, str], torch.Tensor] = {}


def _pixel_keys(n_pixels: int, device: torch.device) -> torch.Tensor:
    key = (n_pixels, str(device))
    k = _pixel_key_cache.get(key)
    if k is None:
        k = _mix64_(torch.arange(n_pixels, dtype=torch.int64, device=device) * _GOLD + 0x2545F4914F6CDD1D)
        if len(_pixel_key_cache) > 16:
            _pixel_key_cache.clear()
        _pixel_key_cache[key] = k
    return k


def pixel_permutation(seed: int, sample_idx: torch.Tensor, unit: int, repeats: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """Pixel permutations for every (repeat, sample): int64 tensor (S, B, n_pixels).

    Row ``[s, b]`` is a permutation of ``range(n_pixels)``: pixel ``p`` of the
    permuted image takes the value of pixel ``perm[p]`` of the original.  Keys
    are 64-bit hashes of (seed, unit, repeat, sample, pixel), so ties are
    practically impossible (and would be broken deterministically).
    """
    base = _base_keys(seed, sample_idx, unit, repeats, _PIXEL_TAG)  # (S, B)
    if base.device.type == "cpu" and n_pixels > 1:
        perm = _pixel_permutation_cpu(base, n_pixels)
        if perm is not None:
            return perm
    keys = _mix64_(base[..., None] ^ _pixel_keys(n_pixels, base.device))  # (S, B, P)
    return torch.argsort(keys, dim=-1, stable=True)


_U64_C1 = np.uint64(0xBF58476D1CE4E5B9)
_U64_C2 = np.uint64(0x94D049BB133111EB)


def _pixel_permutation_cpu(base: torch.Tensor, n_pixels: int) -> torch.Tensor | None:
    """The stable argsort of the pixel keys, computed 5-10x faster on the CPU; None in the (never seen) tie case.

    The same splitmix64 keys as the generic path, in numpy ``uint64`` (logical
    shifts, in place), then the pixel index is packed into the low
    ``b = ceil(log2 P)`` bits of each key and the packed *values* are sorted
    (numpy's vectorized sort) -- the permutation is read back from the low bits.
    This order equals ``torch.argsort(keys, stable=True)`` whenever the high
    ``64 - b`` bits of a row's keys are all distinct; if two adjacent sorted
    keys come closer than ``2^b`` (probability about ``P^2 / 2^(65 - b)`` per
    image, i.e. never in practice) it returns None and the caller takes the
    exact generic path.  So the permutations are identical on every device and
    batch size.
    """
    bits = (n_pixels - 1).bit_length()
    mask = (1 << bits) - 1
    pk = _pixel_keys(n_pixels, base.device).numpy()
    u = (base.numpy()[..., None] ^ pk).view(np.uint64)  # (S, B, P), a new array
    tmp = np.empty_like(u)
    np.right_shift(u, np.uint64(30), out=tmp)
    u ^= tmp
    u *= _U64_C1
    np.right_shift(u, np.uint64(27), out=tmp)
    u ^= tmp
    u *= _U64_C2
    np.right_shift(u, np.uint64(31), out=tmp)
    u ^= tmp
    k = u.view(np.int64)
    k &= ~mask
    k |= np.arange(n_pixels, dtype=np.int64)
    k.sort(axis=-1)
    ks = k.view(np.uint64)  # sorted as signed; the uint64 difference of neighbours is their exact gap
    if np.any((ks[..., 1:] - ks[..., :-1]) < np.uint64(1 << bits)):  # same high bits => gap below 2^b
        return None
    k &= mask
    return torch.from_numpy(k)


def sample_permutation(seed: int, sample_idx: torch.Tensor, unit: int, repeats: torch.Tensor, n: int) -> torch.Tensor:
    """Donor sample for every (repeat, sample): int64 tensor (S, B) with values in [0, n).

    For each (unit, repeat) the map ``i -> donor(i)`` is a bijection of
    ``range(n)`` (a 4-round Feistel network on the next even power of two, with
    cycle walking), so the channel is *permuted across the whole set*: every
    image's channel is used exactly once, whatever the batching.  A sample can
    be its own donor with probability about 1/n, as in any random permutation.
    """
    i = sample_idx.to(torch.int64)
    S = len(repeats)
    x = i[None, :].expand(S, -1).clone()
    if n <= 1:
        return x
    bits = max(2, int(np.ceil(np.log2(n))))
    half = (bits + 1) // 2
    mask = (1 << half) - 1
    rk = _base_keys(seed, torch.arange(4, device=i.device), unit, repeats, _SAMPLE_TAG)  # (S, 4) round keys

    def enc(v: torch.Tensor) -> torch.Tensor:
        left, right = v >> half, v & mask
        for rnd in range(4):
            f = _mix64_(right ^ rk[:, rnd : rnd + 1]) & mask
            left, right = right, left ^ f
        return (left << half) | right

    y = enc(x)
    out_of_range = y >= n
    while bool(out_of_range.any()):
        y = torch.where(out_of_range, enc(y), y)
        out_of_range = y >= n
    return y


# --- batch perturbations -------------------------------------------------------
# Signature: f(x, idx, channels, unit, repeats, ctx) -> tensor (S * B, C, H, W)
#   x: (B, C, H, W) batch on the device, idx: (B,) global sample indices,
#   channels: the channels of this unit, unit: unit id (for keys), repeats: (S,) repeat ids,
#   ctx: PerturbContext with seed, n (data set size), fetch(donor_idx, channels) and fill value.


class PerturbContext:
    """What perturbations may need beyond the batch itself."""

    def __init__(
        self,
        seed: int,
        n: int,
        fetch: Callable[[np.ndarray, Sequence[int]], torch.Tensor] | None = None,
        fill_value: float = 0.0,
        shared_group_permutation: bool = True,
    ) -> None:
        self.seed = seed
        self.n = n
        self.fetch = fetch
        self.fill_value = fill_value
        self.shared_group_permutation = shared_group_permutation


def _stack(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x.unsqueeze(0).expand(n_rep, *x.shape).reshape(n_rep * x.shape[0], *x.shape[1:]).clone()


def perturb_pixel(x, idx, channels, unit, repeats, ctx):
    """PXPermute: permute the pixels within each image's channel(s) of ``unit``.

    A group of channels shares one pixel permutation per image (pixel
    correspondence between them is kept) unless ``ctx.shared_group_permutation``
    is False, in which case every channel of the group gets its own.
    """
    B, C, H, W = x.shape
    S = len(repeats)
    out = _stack(x, S)
    P = H * W
    flat = out.view(S, B, C, P)
    if ctx.shared_group_permutation or len(channels) == 1:
        perm = pixel_permutation(ctx.seed, idx, unit, repeats, P)  # (S, B, P)
        for c in channels:
            flat[:, :, c] = torch.gather(x[:, c].reshape(1, B, P).expand(S, B, P), 2, perm)
    else:
        for j, c in enumerate(channels):
            perm = pixel_permutation(ctx.seed, idx, (unit << 8) + j + 1, repeats, P)
            flat[:, :, c] = torch.gather(x[:, c].reshape(1, B, P).expand(S, B, P), 2, perm)
    return out


def perturb_sample(x, idx, channels, unit, repeats, ctx):
    """Cross-sample swap: channel(s) of ``unit`` replaced by those of another image of the set.

    Keeps each image's other channels, and the distribution of the perturbed
    channel across the set (it is permuted across images), so information in a
    channel's total intensity is destroyed as well as its spatial pattern.
    """
    if ctx.fetch is None:
        raise RuntimeError("the 'sample' perturbation needs random access to the data set")
    S = len(repeats)
    out = _stack(x, S)
    donors = sample_permutation(ctx.seed, idx, unit, repeats, ctx.n)  # (S, B)
    donor_idx = donors.reshape(-1).cpu().numpy()
    donor_x = ctx.fetch(donor_idx, channels)  # (S*B, len(channels), H, W)
    if not bool(torch.isfinite(donor_x).all()):  # donors may lie outside the evaluated (sub)sample
        bad = np.unique(donor_idx[(~torch.isfinite(donor_x)).flatten(1).any(1).numpy()])
        raise ValueError(
            f"donor images for perturbation='sample' contain NaN or inf values (samples {bad[:10].tolist()}"
            f"{' ...' if len(bad) > 10 else ''}); donors come from the whole data set, also with max_samples: "
            "clean or impute them before computing importances"
        )
    out[:, list(channels)] = donor_x.to(out.device, out.dtype)
    return out


def perturb_fill(x, idx, channels, unit, repeats, ctx):
    """Occlusion: channel(s) of ``unit`` set to a constant (default 0, as in the paper)."""
    out = _stack(x, len(repeats))
    out[:, list(channels)] = ctx.fill_value
    return out


PERTURBATIONS: dict[str, Callable] = {"pixel": perturb_pixel, "sample": perturb_sample, "fill": perturb_fill}
#: perturbations whose outcome does not depend on the repeat (one repeat suffices)
DETERMINISTIC = {"fill"}
