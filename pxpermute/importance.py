"""The PXPermute engine: perturb -> predict -> confusion matrices -> scores.

One function, :func:`channel_importance`, serves every perturbation
(``pixel`` = PXPermute, ``sample`` = cross-sample swap, ``fill`` = occlusion).
Data are streamed: each block of images is read once, its unperturbed
prediction is made once, then every (unit, repeat) perturbation of the block is
predicted, several repeats stacked into one forward pass.  Only one K x K
confusion matrix per (repeat, unit) is accumulated -- never per-image
predictions -- so memory does not grow with the data set, and shards of a
distributed run combine by summing.
"""
from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._text import glue, warning_text
from ._validation import (
    DEFAULT_RANDOM_STATE,
    ParameterError,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_random_state,
)
from ._version import __version__
from .adaptive import AdaptiveK
from .datasets.base import resolve_channels
from .distributed import agree_seed, distributed_context
from .fingerprint import data_digest, fingerprint, model_digest
from .keys import seed_words
from .metrics import METRICS
from .perturb import DETERMINISTIC, PERTURBATIONS, PerturbContext, sample_permutation
from .predictor import (  # noqa: F401  (old import paths)
    DeferredChecks,
    _first_conv_channels,
    _Predictor,
    as_output_tensor,
    as_predictor,
    auto_batch_size,
    preserve_model_state,
)
from .result import ImportanceResult
from .runner import run_repeats
from .sources import _BlockDataset, _Source, _to_numpy, as_source  # noqa: F401  (old import paths)
from .stats import (
    BootstrapCollector,
    _check_confidence,
    add_weighted,
    poisson_weights,
    resolve_max_samples,
    stratified_subsample,
)

__all__ = ["channel_importance", "ImportanceResult", "as_predictor", "as_source", "accumulate", "Accumulated"]


# -----------------------------------------------------------------------------
# the engine
# -----------------------------------------------------------------------------
def _resolve_units(groups: Any, channel_names: list[str]) -> tuple[list[list[int]], list[str], dict[str, list[str]] | None]:
    if groups is None:
        return [[c] for c in range(len(channel_names))], list(channel_names), None
    if isinstance(groups, Mapping):
        items = list(groups.items())
    elif isinstance(groups, (str, bytes)) or not isinstance(groups, (Sequence, np.ndarray)):
        raise TypeError("groups must be a mapping name -> channels or a list of channel lists, "
                        f"got {type(groups).__name__}")
    else:
        items = [(None, grp) for grp in groups]  # unnamed: named after their channels, joined by "+"
    if not items:
        raise ValueError("groups is empty")
    units, names, mapping = [], [], {}
    for name, grp in items:
        chans = resolve_channels(grp, channel_names)
        if not chans:
            raise ValueError(f"group {name if name is not None else grp!r} has no channels")
        name = "+".join(channel_names[c] for c in chans) if name is None else str(name)
        if name in mapping:
            raise ValueError(f"two groups are named {name!r}; give each group a distinct name")
        units.append(chans)
        names.append(name)
        mapping[name] = [channel_names[c] for c in chans]
    return units, names, mapping


def _check_finite(x: torch.Tensor, idx: np.ndarray) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().cpu().numpy()
        raise ValueError(
            f"images contain NaN or inf values (samples {idx[bad][:10].tolist()}{' ...' if len(bad) > 10 else ''}); "
            "clean or impute them before computing importances"
        )


def _count(dst: torch.Tensor, flat: torch.Tensor, *, index_add: bool | None = None) -> None:
    """``dst`` (flat int64 counts) += the counts of the indices in ``flat`` (all in ``[0, len(dst))``).

    CPU: ``bincount``.  CUDA: ``index_add_`` -- torch's CUDA ``bincount`` reads
    the input's min and max back to the host (two syncs per call); integer
    atomic adds are exact, so the counts are identical either way (``index_add``
    forces one path; tests run the CUDA one on CPU).
    """
    if dst.is_cuda if index_add is None else index_add:
        dst.index_add_(0, flat, torch.ones_like(flat))
    else:
        dst += torch.bincount(flat, minlength=dst.numel())


def _device_blocks(blocks: Any, dev: torch.device) -> Any:
    """``(idx, x_np, y_np, x, y, idx_t)`` per block, the tensors on ``dev``.

    CPU: plain conversions, one block at a time.  CUDA: each block is copied
    from pinned host memory with ``non_blocking=True`` on a side stream, and the
    *next* block's copy is issued before the current block is handed over, so
    it overlaps the current block's perturbations and forward passes; the
    compute stream waits for a block's copy before using it.
    """
    def host(item: Any) -> tuple[Any, ...]:
        idx, x_np, y_np = item
        return (idx, x_np, y_np, torch.from_numpy(np.ascontiguousarray(x_np)),
                torch.as_tensor(np.asarray(y_np, dtype=np.int64)), torch.from_numpy(np.asarray(idx, dtype=np.int64)))

    if dev.type != "cuda":
        for item in blocks:
            idx, x_np, y_np, x, y, i = host(item)
            yield idx, x_np, y_np, x.to(dev), y.to(dev), i.to(dev)
        return
    stream = torch.cuda.Stream(dev)

    def upload(item: Any) -> tuple[Any, ...]:
        idx, x_np, y_np, *ts = host(item)
        ts = [t.pin_memory() for t in ts]
        with torch.cuda.stream(stream):
            return (idx, x_np, y_np, *(t.to(dev, non_blocking=True) for t in ts))

    it = iter(blocks)
    first = next(it, None)
    pending = upload(first) if first is not None else None
    while pending is not None:
        cur = pending
        compute = torch.cuda.current_stream(dev)
        compute.wait_stream(stream)  # this block's copies are done before it is used
        for t in cur[3:]:
            t.record_stream(compute)  # the allocator must not reuse them while the compute stream runs
        nxt = next(it, None)
        pending = upload(nxt) if nxt is not None else None  # overlaps the compute on ``cur``
        yield cur


class _Plan:
    """Everything the accumulation loop needs, fixed for one importance run."""

    def __init__(self, *, src: _Source, predict: _Predictor, units: list[list[int]], perturb: Callable,
                 ctx: PerturbContext, n_classes: int, batch_size: int, device: torch.device,
                 n_bootstrap: int = 0, boot_per_repeat: bool = False, boot_donors: bool = False) -> None:
        self.src, self.predict, self.units, self.perturb, self.ctx = src, predict, units, perturb, ctx
        self.n_classes, self.batch_size, self.device = n_classes, batch_size, device
        self.n_bootstrap = int(n_bootstrap)  # > 0: also accumulate Poisson-bootstrap counts (pxpermute.stats)
        # bootstrap counts per repeat, not pooled over repeats (aggregate="median": the median over repeats is
        # recomputed in every replicate)
        self.boot_per_repeat = bool(boot_per_repeat)
        # perturbation="sample": a perturbed prediction is weighted by recipient x donor weight, so the
        # replicates also redraw the cells that donate the channel
        self.boot_donors = bool(boot_donors)

    def block_size(self, n: int) -> int:
        return max(1, min(self.batch_size, n))

    def n_passes(self, n: int, n_repeats: int, with_baseline: bool = True) -> int:
        """Forward passes ``accumulate`` makes for n samples and n_repeats repeats (progress-bar total)."""
        block = self.block_size(n)
        per_pass = max(1, self.batch_size // block)
        n_blocks = math.ceil(n / block)
        return n_blocks * (int(with_baseline) + math.ceil(len(self.units) * n_repeats / per_pass))


class Accumulated:
    """Confusion matrices from :func:`accumulate` (torch int64 tensors on the device).

    ``baseline``: (K, K) or None; ``confusion``: (len(repeats), U, K, K); they add
    up over disjoint sample sets (shards, resumed chunks) by plain summation.
    With ``plan.n_bootstrap = B > 0`` also ``boot_baseline`` (B, K, K) or None and
    ``boot_confusion`` (B, U, K, K), Poisson-weighted and summed over the repeats
    (see :mod:`pxpermute.stats`); they add up over sample sets *and* over chunks
    of repeats.  With ``plan.boot_per_repeat`` ``boot_confusion`` is
    (B, len(repeats), U, K, K) instead: it adds up over sample sets, and chunks
    of repeats are concatenated.  Both are None when the bootstrap is off.
    """

    def __init__(self, baseline: torch.Tensor | None, confusion: torch.Tensor, n_forward_images: int, *,
                 boot_baseline: torch.Tensor | None = None, boot_confusion: torch.Tensor | None = None) -> None:
        self.baseline, self.confusion, self.n_forward_images = baseline, confusion, n_forward_images
        self.boot_baseline, self.boot_confusion = boot_baseline, boot_confusion


def accumulate(plan: _Plan, indices: np.ndarray, repeats: range, *, with_baseline: bool = True, bar=None) -> Accumulated:
    """Stream ``indices`` once and accumulate confusion matrices for ``repeats`` of every unit.

    Each block of samples is read once and predicted unperturbed (if
    ``with_baseline``); then the (unit, repeat) work items are perturbed and
    predicted, as many items stacked into one forward pass as ``batch_size``
    allows.  Repeat ids are global (``repeats`` may be ``range(40, 60)``), so
    chunks of repeats computed separately add up to the same result.
    """
    src, K, dev, U = plan.src, plan.n_classes, plan.device, len(plan.units)
    C, H, W = src.image_shape
    reps = list(repeats)
    R = len(reps)
    rep_t = torch.tensor(reps, dtype=torch.int64, device=dev)
    cm_base = torch.zeros(K * K, dtype=torch.int64, device=dev) if with_baseline else None
    cm = torch.zeros(U * R, K * K, dtype=torch.int64, device=dev)  # item id = u * R + r (local r)
    n_items = U * R
    n_forward = 0
    nb = int(getattr(plan, "n_bootstrap", 0) or 0)
    per_rep = bool(getattr(plan, "boot_per_repeat", False))
    donors = bool(getattr(plan, "boot_donors", False))
    boot_base = torch.zeros(nb, K * K, dtype=torch.int64, device=dev) if nb and with_baseline else None
    # pooled over repeats (one K x K per unit), or per (unit, repeat) item like ``cm``
    boot_cm = torch.zeros(nb, (n_items if per_rep else U) * K * K, dtype=torch.int64, device=dev) if nb else None

    def _boot() -> dict[str, Any]:
        if boot_cm is None:
            bc = None
        elif per_rep:
            bc = boot_cm.view(nb, U, R, K, K).transpose(1, 2).contiguous()
        else:
            bc = boot_cm.view(nb, U, K, K)
        return {"boot_baseline": boot_base.view(nb, K, K) if boot_base is not None else None, "boot_confusion": bc}

    if len(indices) == 0:
        return Accumulated(cm_base.view(K, K) if cm_base is not None else None, cm.view(U, R, K, K).transpose(0, 1), 0,
                           **_boot())
    block = plan.block_size(len(indices))
    items_per_pass = max(1, plan.batch_size // block)  # small blocks: stack several (unit, repeat) items per pass
    checks = DeferredChecks(dev)  # the perturbed passes' output check, read back once (no sync per pass)
    for idx, x_np, y_np, x, y, idx_t in _device_blocks(src.blocks(np.asarray(indices, dtype=np.int64), block), dev):
        if x.shape[1:] != (C, H, W):
            raise ValueError(f"image shape changed within the data: {tuple(x.shape[1:])} vs {(C, H, W)}")
        _check_finite(x, idx)
        if getattr(plan, "stream_digest", None) is not None:  # checkpoints: every evaluated image is hashed
            plan.stream_digest.update(idx, x_np, y_np)
        if src.labels is None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= K):
            raise ValueError(f"labels must lie in [0, {K}) for {K} classes; found {int(y.min())}..{int(y.max())}")
        B = len(idx)
        w = poisson_weights(plan.ctx.seed, idx_t, nb) if nb else None  # (nb, B), a function of (seed, index, b)
        if with_baseline:
            try:
                p0 = plan.predict(x.clone(), K)  # a copy: a model that edits its input in place cannot reach x
            except ValueError:
                raise
            except Exception as err:
                raise ValueError(f"the model failed on a batch of shape {tuple(x.shape)}: {type(err).__name__}: {err}") from err
            _count(cm_base, y * K + p0)
            if nb:
                add_weighted(boot_base, y * K + p0, w)
            n_forward += B
            if bar is not None:
                bar.update(1)
        yk = (y * K).repeat(items_per_pass)
        for a in range(0, n_items, items_per_pass):
            b = min(n_items, a + items_per_pass)
            parts = []
            for u in range(a // R, (b - 1) // R + 1):  # the units this chunk of items touches
                r0, r1 = max(a, u * R) - u * R, min(b, (u + 1) * R) - u * R
                parts.append(plan.perturb(x, idx_t, plan.units[u], u, rep_t[r0:r1], plan.ctx))
            xp = parts[0] if len(parts) == 1 else torch.cat(parts)
            pred = plan.predict(xp, K, deferred=checks)
            n_it = b - a
            flat = torch.arange(n_it, device=dev).repeat_interleave(B) * (K * K) + yk[: n_it * B] + pred
            _count(cm[a:b].view(-1), flat)
            if nb:  # weighted counts per unit (pooled over the repeats of this pass) or per item
                ww = w.repeat(1, n_it)
                if donors:  # weight of the donor cell too: the replicate redraws donors and recipients jointly
                    dw = [poisson_weights(plan.ctx.seed, sample_permutation(
                        plan.ctx.seed, idx_t, u, rep_t[max(a, u * R) - u * R:min(b, (u + 1) * R) - u * R],
                        plan.ctx.n).reshape(-1), nb) for u in range(a // R, (b - 1) // R + 1)]
                    ww = ww * (dw[0] if len(dw) == 1 else torch.cat(dw, dim=1))
                if per_rep:  # ``flat`` counts items from a (it indexes cm[a:b])
                    add_weighted(boot_cm, flat + a * (K * K), ww)
                else:
                    unit_of = torch.div(torch.arange(a, b, device=dev), R, rounding_mode="floor")
                    add_weighted(boot_cm, unit_of.repeat_interleave(B) * (K * K) + yk[: n_it * B] + pred, ww)
            n_forward += n_it * B
            if bar is not None:
                bar.update(1)
    checks.raise_if_bad()
    return Accumulated(
        cm_base.view(K, K) if cm_base is not None else None,
        cm.view(U, R, K, K).transpose(0, 1).contiguous(),
        n_forward,
        **_boot(),
    )


def _restores_model(fn: Callable) -> Callable:
    """Give the caller's torch model its train/eval flags and device back after the run (also on error)."""

    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        with preserve_model_state(model):
            return fn(model, *args, **kwargs)

    return wrapper


def _check_distinct(names: Sequence[Any], what: str) -> None:
    seen: set[str] = set()
    dup = [n for n in map(str, names) if n in seen or seen.add(n)]
    if dup:
        raise ValueError(f"{what} names must be distinct (results and tables are indexed by them); "
                         f"{sorted(set(dup))} appear more than once in {list(names)}")


#: refuse runs whose confusion matrices alone would need more memory than this
MAX_CONFUSION_BYTES = 4 << 30


@_restores_model
def channel_importance(
    model: Any,
    data: Any,
    *,
    labels: Any = None,
    n_repeats: int = 100,
    perturbation: str = "pixel",
    metric: str = "f1",
    aggregate: str = "mean",
    groups: Mapping[str, Sequence[int | str]] | Sequence[Sequence[int | str]] | None = None,
    shared_group_permutation: bool = True,
    batch_size: int = 256,
    device: Any = None,
    random_state: int | None = DEFAULT_RANDOM_STATE,
    channel_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    n_classes: int | None = None,
    fill_value: float = 0.0,
    num_workers: int = 0,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = True,
    n_bootstrap: int = 999,
    confidence: float = 0.95,
    max_samples: int | float | None = None,
    adaptive: bool | Mapping[str, Any] | AdaptiveK = False,
    checkpoint: str | os.PathLike | None = None,
    chunk_repeats: int | None = None,
) -> ImportanceResult:
    """Channel importance by perturbing one channel (or group) at a time.

    For every channel ``c`` and repeat ``r = 1..k`` the channel is perturbed in
    every test image, the model predicts, and the per-class metric over the
    whole test set is compared with the unperturbed one; the drop aggregated
    over classes (mean, or median) and then over repeats is the importance.

    Parameters
    ----------
    model : nn.Module, skorch/sklearn estimator or callable
        ``nn.Module`` returning logits or probabilities (argmax is taken), an
        estimator with ``predict`` (it receives ``(B, C, H, W)`` numpy arrays and
        returns integer labels; a fitted skorch net's ``module_`` is called
        directly), or any callable taking a ``(B, C, H, W)`` tensor and
        returning ``(B, K)`` scores or ``(B,)`` integer labels.
    data : IFCDataset, (X, y), array/tensor with ``labels=``, torch Dataset or DataLoader
        Test data. A DataLoader contributes its dataset and ``num_workers``; the
        engine batches sequentially itself so results are reproducible.
    n_repeats : int, default 100
        k, the number of permutations per channel (the paper's recommendation).
        Ignored (1 is used) for the deterministic ``fill`` perturbation.
    perturbation : {"pixel", "sample", "fill"}
        ``pixel``: PXPermute, pixels permuted within each image's channel.  This
        keeps each channel's intensity histogram per image, so a channel whose
        only class signal is its *total intensity* scores ~0 -- use ``sample``
        (channel swapped with the same channel of another test image) to see
        such channels.  ``fill``: occlusion with ``fill_value``.
    metric : {"f1", "precision", "recall", "accuracy", "balanced_accuracy", "f1_macro"}
        Per-class metrics are averaged over the classes present in the data;
        classes absent from the test set are left out (see :mod:`pxpermute.metrics`).
    aggregate : {"mean", "median"}
        How drops are aggregated over classes and over repeats.
    groups : mapping name -> channels, or list of channel lists, optional
        Score groups of channels as one unit each, e.g.
        ``{"brightfield": ["BF1", "BF2"], "CD3+CD4": ["CD3", "CD4"]}`` (channel
        names or indices; an unnamed group in a list is named by joining its
        items with "+").  Typical uses: all stain-free channels as one unit, or
        two stains that always come together.  Groups reveal redundancy: two
        channels with the same information each score ~0 alone when the model
        can use either one, but high together.  With ``pixel``, the channels of
        a group share one pixel permutation per image by default
        (``shared_group_permutation=True``): the pixel correspondence *between*
        them is kept and only their arrangement in the image (and relative to
        the other channels) is destroyed, i.e. the group's spatial information
        is removed as a whole.  ``shared_group_permutation=False`` permutes each
        channel of the group independently, destroying their pixel-wise
        relation as well.  With ``sample`` a group's channels come from the same
        donor image; with ``fill`` all of them are filled.
    batch_size : int or "auto"
        Images per forward pass.  Blocks smaller than this stack several repeats
        into one pass.  Does not change the result.  ``"auto"``: the largest
        power of two that fits the GPU's memory (halved for headroom), or a
        size bounded by the image size on CPU (see
        :func:`pxpermute.predictor.auto_batch_size`).
    random_state : int or None, default 42
        Seed (the package's one default, :data:`pxpermute._validation.DEFAULT_RANDOM_STATE`).
        Each permutation is a function of (seed, sample index, unit, repeat), so
        the result is bit-identical for any batch size.  ``None`` draws a fresh
        seed and records it in ``result.info["random_state"]``.
    num_workers : int
        DataLoader workers that prefetch blocks (useful for lazy HDF5 data).
    amp, channels_last : bool
        bfloat16 autocast / channels-last memory format for CUDA models.
    progress : bool
        Show a tqdm progress bar.
    n_bootstrap : int, default 999
        Poisson-bootstrap replicates over the test images (0 = off).  Per
        replicate the engine accumulates weighted confusion matrices pooled over
        the repeats (memory ``n_bootstrap x (units + 1) x K x K`` integers,
        independent of the data size: 0.9 MB for 12 channels and 3 classes; see
        :mod:`pxpermute.stats`).  Cost: one Poisson weight per (image,
        replicate) and one weighted count per perturbed prediction; next to a
        CNN's forward passes this is lost in the noise (SmallCNN and ResNet18 at
        2x32x32 on CPU: no measurable difference), for a trivial model it can
        multiply the run time (a linear rule on 1x2 images: 0.6 s -> 3.7 s).
        This is the interval shown by default: ``result.ci_low/high`` are the
        bootstrap percentile interval, with ``result.bootstrap_se``,
        ``result.p_values`` (one-sided test of importance > 0,
        :func:`pxpermute.stats.bootstrap_p_values`), ``result.pairwise_probabilities``
        (P(a above b)) and ``result.rank_low/rank_high`` (simultaneous rank
        intervals).  They reflect which test cells were drawn as well as the
        permutations; the permutation (Monte Carlo) interval
        ``result.perm_ci_low/high`` reflects the k repeats only.  No interval of
        a single run covers retraining.  ``n_bootstrap=999`` resolves p-values
        down to 0.001.  With ``aggregate="median"`` the counts are kept per
        repeat (memory times k) so that every replicate recomputes the median
        over repeats; with ``perturbation="sample"`` a prediction is weighted by
        recipient x donor weight, so the replicates also redraw the donor cells
        (see :mod:`pxpermute.stats`).
    confidence : float, default 0.95
        Two-sided level of the bootstrap interval and of the permutation interval.
    max_samples : float in (0, 1] or int, optional
        Score a class-stratified random subsample of the test set: a fraction,
        or a count.  Every class keeps at least one sample; the draw is
        deterministic given ``random_state`` (:func:`pxpermute.stats.stratified_subsample`).
        ``result.info`` records the request, the samples used per class and the
        full size.  Data without stored labels (a plain torch Dataset) are read
        once to find the labels.  With ``perturbation="sample"`` donor images
        still come from the whole data set.
    adaptive : bool, dict or :class:`~pxpermute.adaptive.AdaptiveK`
        Adaptive k: add repeats in chunks and stop once every pair of units
        adjacent in the ranking is resolved or tied by anytime-valid confidence
        sequences of their per-repeat differences (valid under this optional
        stopping; see :class:`~pxpermute.adaptive.AdaptiveK`), at most
        ``n_repeats``.  ``result.info["n_repeats"]`` is the k used,
        ``info["adaptive"]`` the rule, why it stopped and the ``tie_groups``.  A
        dict sets the rule's options (``min_repeats``, ``chunk``, ``confidence``,
        ``tol``, ``method``, ``min_scale``, ``growth``, ``top``); ``{"top": m}``
        settles only the m most important channels (panel design) and needs far
        fewer repeats when the other channels differ by noise.
    checkpoint : path, optional
        Partial-result file written after every finished chunk of repeats
        (atomically, with a checksum).  Rerunning the same call continues from
        it and gives the identical result; a corrupted file, or one written for
        another seed / model / data / channels, raises
        :class:`~pxpermute.checkpoint.CheckpointError`.
    chunk_repeats : int, optional
        Repeats per chunk (default: all at once; 10 with a checkpoint; the
        adaptive rule's ``chunk`` with ``adaptive``).  Does not change the result.

    Notes
    -----
    Distributed runs: inside an initialized :mod:`torch.distributed` process
    group (e.g. under ``torchrun``) every rank evaluates a shard of the samples,
    the confusion matrices are all-reduced and every rank returns the same
    result, identical to a single-process run with the same ``random_state``.

    Returns
    -------
    ImportanceResult

    Examples
    --------
    >>> import numpy as np, torch
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(100, 3, 8, 8)).astype("float32"); y = rng.integers(0, 2, 100)
    >>> X[y == 1, 0, :4] += 2                     # class signal in the top half of channel 0
    >>> model = lambda x: torch.stack([torch.zeros(len(x)), x[:, 0, :4].mean((1, 2)) - 1], 1)
    >>> res = channel_importance(model, (X, y), n_repeats=5, random_state=0, progress=False)
    >>> res.ranked_channels[0], res.importances.shape
    ('ch0', (5, 3))

    Uncertainty over the test images (bootstrap) and a subsample of the test set:

    >>> res = channel_importance(model, (X, y), n_repeats=5, n_bootstrap=99, max_samples=0.5,
    ...                          random_state=0, progress=False)
    >>> res.p_values.round(2), res.info["n_samples"]   # ch1, ch2 are ignored by the model
    (array([0.01, 1.  , 1.  ]), 50)
    """
    t0 = time.perf_counter()
    n_repeats = check_int(n_repeats, "n_repeats", low=1)
    check_choice(perturbation, "perturbation", PERTURBATIONS)
    check_choice(metric, "metric", METRICS)
    check_choice(aggregate, "aggregate", ("mean", "median"))
    if batch_size != "auto":
        try:
            check_int(batch_size, "batch_size", low=1)
        except ParameterError as err:
            raise ParameterError(f"{err} (or 'auto')") from None
    n_bootstrap = check_int(n_bootstrap, "n_bootstrap", low=0)
    confidence = _check_confidence(confidence)
    for flag in ("shared_group_permutation", "amp", "channels_last", "progress"):
        check_bool(locals()[flag], flag)
    check_int(num_workers, "num_workers", low=0)
    check_float(fill_value, "fill_value")
    check_int(chunk_repeats, "chunk_repeats", low=1, allow_none=True)
    check_int(n_classes, "n_classes", low=1, allow_none=True)
    if max_samples is not None:
        resolve_max_samples(max_samples, 1)  # type/range check before any data are read
    random_state = check_random_state(random_state)
    random_state = agree_seed(random_state)  # distributed: every rank uses rank 0's seed

    src = as_source(data, labels, num_workers=num_workers)
    if src.n == 0:
        raise ValueError("the data set is empty (0 samples)")
    C, H, W = src.image_shape
    ch_names = list(channel_names) if channel_names is not None else (src.channel_names or [f"ch{i}" for i in range(C)])
    if len(ch_names) != C:
        raise ValueError(f"{len(ch_names)} channel names given for data with {C} channels")
    if class_names is not None:
        cls_names = list(class_names)
    elif n_classes is not None:
        cls_names = [f"class{i}" for i in range(int(n_classes))]
    elif src.class_names is not None:
        cls_names = list(src.class_names)
    else:
        cls_names = None
    if n_classes is not None and cls_names is not None and len(cls_names) != n_classes:
        raise ValueError(f"n_classes={n_classes} but {len(cls_names)} class names")

    _check_distinct(ch_names, "channel")
    if cls_names is not None:
        _check_distinct(cls_names, "class")

    pred_fn = _Predictor(model, device, amp=amp, channels_last=channels_last)
    dev = pred_fn.device
    # One forward pass on (up to) two images before the run: the model must accept these data.  The first
    # Conv2d's in_channels is only a hint (it need not be the input layer), reported if the forward fails.
    x0, _ = src.read(np.arange(min(2, src.n)))
    try:
        out = pred_fn.raw(torch.from_numpy(np.array(x0, dtype=np.float32)).to(dev))  # a copy of the images
    except Exception as err:
        hint = ""
        if pred_fn.expected_channels is not None and pred_fn.expected_channels != C:
            hint = (f"; the model expects {pred_fn.expected_channels} input channels but the data have {C} "
                    f"channels {ch_names} (in_channels of its first Conv2d): select the channels the model was "
                    "trained on")
        raise ValueError(f"the model failed on a batch of shape {tuple(x0.shape)}: {type(err).__name__}: {err}"
                         f"{hint}") from err
    out = as_output_tensor(out)
    if cls_names is None:
        # infer K from the model's output width, else from the labels
        width = int(out.shape[1]) if out.ndim == 2 else 0
        lab_max = int(src.labels.max()) + 1 if src.labels is not None and src.labels.size else 0
        cls_names = [f"class{i}" for i in range(max(width, lab_max))]
    K = len(cls_names)
    if K < 2:
        raise ValueError(f"need at least 2 classes, got {K}")
    if src.labels is not None:
        lab = src.labels
        if lab.min() < 0 or lab.max() >= K:
            raise ValueError(f"labels must lie in [0, {K}) for {K} classes; found range [{lab.min()}, {lab.max()}]")

    units, unit_names, group_map = _resolve_units(groups, ch_names)
    R = 1 if perturbation in DETERMINISTIC else int(n_repeats)
    need = R * len(units) * K * K * 8
    if need > MAX_CONFUSION_BYTES:
        raise ValueError(
            f"n_repeats={n_repeats} is far too many: {R} repeats x {len(units)} channels x {K}x{K} confusion "
            f"matrices need {need / 2**30:.3g} GiB of memory (limit {MAX_CONFUSION_BYTES / 2**30:.3g} GiB) and "
            f"{float(R) * len(units) * src.n:.3g} forward passes of one image. k = 100 is the published "
            "recommendation (rankings stable from k = 100); use adaptive=True to stop once the ranking is settled"
        )
    perturb = PERTURBATIONS[perturbation]
    seed = seed_words(random_state)
    if isinstance(batch_size, str):  # "auto"
        batch_size = auto_batch_size(pred_fn, (C, H, W), n_classes=K)

    ctx = PerturbContext(seed, src.n, fetch=src.fetch, fill_value=fill_value,
                         shared_group_permutation=shared_group_permutation)
    per_repeat = bool(n_bootstrap) and aggregate == "median" and R > 1
    if per_repeat and n_bootstrap * R * len(units) * K * K * 8 > MAX_CONFUSION_BYTES:
        raise ValueError(
            f"aggregate='median' with n_bootstrap={n_bootstrap} keeps bootstrap counts per repeat: "
            f"{n_bootstrap} x {R} repeats x {len(units)} channels x {K}x{K} need "
            f"{n_bootstrap * R * len(units) * K * K * 8 / 2**30:.3g} GiB (limit {MAX_CONFUSION_BYTES / 2**30:.3g} GiB); "
            "lower n_bootstrap or n_repeats, or use aggregate='mean'")
    plan = _Plan(src=src, predict=pred_fn, units=units, perturb=perturb, ctx=ctx, n_classes=K,
                 batch_size=int(batch_size), device=dev, n_bootstrap=int(n_bootstrap), boot_per_repeat=per_repeat,
                 boot_donors=perturbation == "sample")
    indices = np.arange(src.n)
    if max_samples is not None:
        all_labels = src.labels if src.labels is not None else np.concatenate(
            [np.asarray(yb, np.int64) for _, _, yb in src.blocks(indices, max(1, int(batch_size)))])
        indices = stratified_subsample(all_labels, max_samples, random_state=random_state)
    boot = BootstrapCollector()

    rule = AdaptiveK.coerce(adaptive) if R > 1 else None
    rank, world = distributed_context()
    fp = None
    if checkpoint is not None or world > 1:
        fp = fingerprint(
            random_state=random_state, perturbation=perturbation, units=units, unit_names=unit_names,
            class_names=cls_names, shared_group_permutation=shared_group_permutation,
            fill_value=fill_value if perturbation == "fill" else None,
            model=model_digest(pred_fn), data=data_digest(src, indices),
            extra={"n_bootstrap": int(n_bootstrap),
                   **({"bootstrap_layout": f"per_repeat={per_repeat},donors={plan.boot_donors}"}
                      if per_repeat or plan.boot_donors else {})},
        )
    if rule is not None and chunk_repeats is not None:
        rule = AdaptiveK(**{**rule.__dict__, "chunk": int(chunk_repeats)})

    def _score(base: np.ndarray, conf: np.ndarray) -> np.ndarray:
        return ImportanceResult.from_confusion(base, conf, metric=metric, aggregate=aggregate,
                                               channel_names=unit_names, class_names=cls_names).importances

    run = run_repeats(
        plan, indices, R, accumulate=boot.wrap(accumulate), adaptive=rule, chunk=chunk_repeats, checkpoint=checkpoint,
        fp=fp, score=_score, aggregate=aggregate, progress=progress and rank == 0, desc=f"{perturbation} k={R}",
        collector=boot,
    )
    base_np, cm_np, n_forward = run["baseline"], run["confusion"], run["n_forward_images"]
    R = run["n_repeats"]
    info = {
        "method": "pxpermute" if perturbation == "pixel" else {"sample": "sample-permutation", "fill": "occlusion"}[perturbation],
        "perturbation": perturbation,
        "n_repeats": R,
        "random_state": random_state,
        "n_samples": int(len(indices)),
        "data": src.name,
        "model": pred_fn.name,
        "device": str(dev),
        "batch_size": int(batch_size),
        "n_forward_images": int(n_forward),
        "runtime_s": time.perf_counter() - t0,
    }
    if run["world_size"] > 1:
        info["world_size"] = run["world_size"]
    if run["adaptive"] is not None:
        ad = dict(run["adaptive"])
        for key in ("tie_groups", "open_pairs"):
            ad[key] = [[unit_names[i] for i in grp] for grp in ad.get(key, [])]
        info["adaptive"] = ad
    if checkpoint is not None:
        info["checkpoint"] = str(checkpoint)
        info["resumed_repeats"] = run["resumed_repeats"]
    if perturbation == "fill":
        info["fill_value"] = fill_value
    if group_map is not None:
        info["shared_group_permutation"] = shared_group_permutation
    if max_samples is not None:
        info["max_samples"] = max_samples
        info["n_samples_total"] = int(src.n)
        info["samples_per_class"] = np.bincount(all_labels[indices], minlength=K).tolist()
    info["confidence"] = confidence
    if n_bootstrap:
        info["n_bootstrap"] = int(n_bootstrap)
        info["bootstrap"] = "poisson" + (" (recipients x donors)" if perturbation == "sample" else "")
    info["pxpermute_version"] = __version__
    if perturbation == "pixel" and cm_np.shape[0] > 0:
        # predictions' confusion matrix never changed: the model ignores the channel, or reads only what a pixel
        # permutation keeps (the intensity histogram, e.g. the total intensity)
        zero = [unit_names[u] for u in range(len(units)) if np.all(cm_np[:, u] == base_np[None])]
        if zero:
            info["unchanged_under_pixel_permutation"] = zero
            warnings.warn(warning_text(  # lines of at most 100 characters, the first short
                f"{glue('importance exactly 0 under pixel permutation')} for {', '.join(map(glue, zero))} (permuting "
                "the pixels never changed the confusion matrix). Either the model ignores these channels, or it "
                "uses only what a pixel permutation keeps -- the intensity histogram, e.g. the total intensity. "
                "perturbation='sample' removes that too. Exactly 0 here is no evidence that a channel carries no "
                "information."), UserWarning, stacklevel=3)
    return ImportanceResult.from_confusion(
        base_np, cm_np, metric=metric, aggregate=aggregate, channel_names=unit_names, class_names=cls_names,
        groups=group_map, info=info, bootstrap_baseline_confusion=boot.baseline, bootstrap_confusion=boot.confusion,
    )
