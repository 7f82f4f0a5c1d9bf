"""Baseline channel-importance methods: occlusion and captum attributions per channel.

The PXPermute paper (Shetab Boushehri et al., Cell Reports Methods 2024) compares
PXPermute with five other ways of ranking channels:

* **occlusion** -- fill one channel with a constant (0) in every test image and
  measure the drop of the per-class F1.  This runs through the same engine as
  PXPermute (:func:`pxpermute.channel_importance` with ``perturbation="fill"``),
  see :func:`occlusion_importance`.
* four **pixel-attribution** methods from captum -- Integrated Gradients,
  DeepLift, GuidedGradCam (on the last convolution) and LRP.  Each gives one
  attribution per pixel and channel; as published, the attributions of an image
  are reduced to one number per channel by the **median over its pixels**, and
  these per-image scores are averaged over the images
  (:func:`attribution_importance`).

All methods return an :class:`~pxpermute.ImportanceResult`, so rankings, tables
(``to_frame()``) and plots are made by the same code for every method.

What had to be adapted (captum 0.9, torchvision ResNet18)
---------------------------------------------------------
* The network's leading :class:`~pxpermute.models.PercentileNormalization`
  (what :func:`pxpermute.training.train_classifier` puts in front) is applied
  to the images first; attributions are computed with respect to the
  *normalized* image.  The normalization is element-wise, so every attribution
  still belongs to one pixel of one channel, the zero baseline of Integrated
  Gradients / DeepLift is the 1st-percentile ("black") image, and the clamp of
  the normalization no longer zeroes the gradient of saturated pixels.
* DeepLift, GuidedGradCam and LRP run on a copy made by
  :func:`pxpermute.models.to_captum_compatible`: torchvision's ``BasicBlock``
  reuses one in-place ReLU twice, which breaks DeepLift's rules.  A network that
  still calls a module more than once per forward pass is rejected with an
  error naming the module.
* LRP: captum's rules are not conservative across the residual additions of a
  ResNet (they are plain ``+`` in ``forward``, invisible to captum), so the sum
  of relevances explodes (convergence delta ~1e10).  :func:`to_lrp_compatible`
  rewrites every ``BasicBlock`` so that the addition is captum's
  ``Addition_Module`` with the epsilon rule, which splits the relevance between
  the two branches in proportion to their contributions; ``nn.Flatten`` /
  ``nn.Identity`` get the (exact) epsilon rule as well.  With this, relevance is
  conserved up to what biases and batch-norm shifts absorb.  Every LRP run
  checks the convergence delta and raises if relevance is not conserved
  (``max_delta``), so meaningless numbers are never reported silently.
"""
from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._progress import progress_bar
from ._text import warning_text
from .importance import as_source, channel_importance
from .models import PercentileNormalization, last_conv_layer, to_captum_compatible
from .result import ImportanceResult

__all__ = [
    "ATTRIBUTION_METHODS",
    "METHOD_NAMES",
    "attribution_importance",
    "occlusion_importance",
    "compare_methods",
    "to_lrp_compatible",
]

#: captum methods understood by :func:`attribution_importance`.
ATTRIBUTION_METHODS: tuple[str, ...] = ("integrated_gradients", "deeplift", "guided_gradcam", "lrp")

#: Display names, as in the paper's result files (and :mod:`pxpermute.datasets.paper_numbers`).
METHOD_NAMES: dict[str, str] = {
    "pxpermute": "PXPermute",
    "occlusion": "Occlusion",
    "integrated_gradients": "IntegratedGradients",
    "deeplift": "DeepLift",
    "guided_gradcam": "GuidedGradCAM",
    "lrp": "LRP",
}

_ALIASES = {
    "ig": "integrated_gradients",
    "integratedgradients": "integrated_gradients",
    "integrated_gradients": "integrated_gradients",
    "deeplift": "deeplift",
    "deep_lift": "deeplift",
    "guidedgradcam": "guided_gradcam",
    "guided_gradcam": "guided_gradcam",
    "guided_grad_cam": "guided_gradcam",
    "lrp": "lrp",
    "occlusion": "occlusion",
    "pxpermute": "pxpermute",
}


def _method_key(method: Any, allowed: Sequence[str]) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, one of {list(allowed)}; got {type(method).__name__}")
    key = _ALIASES.get(method.lower().replace("-", "_").replace(" ", "_"))
    if key is None:
        key = _ALIASES.get(method.lower().replace("-", "").replace("_", "").replace(" ", ""))
    if key not in allowed:
        raise ValueError(f"unknown method {method!r}; choose one of {list(allowed)}")
    return key


# -----------------------------------------------------------------------------
# model preparation
# -----------------------------------------------------------------------------
def _unwrap(model: Any) -> tuple[nn.Module, str]:
    """The torch module behind ``model`` (skorch nets: ``module_``)."""
    if isinstance(model, nn.Module):
        return model, type(model).__name__
    module = getattr(model, "module_", None)
    if isinstance(module, nn.Module):
        return module, f"{type(model).__name__}({type(module).__name__})"
    raise TypeError(
        "attribution methods need the gradients of a torch network: pass an nn.Module returning logits "
        f"or a fitted skorch net (its .module_ is used); got {type(model).__name__}. "
        "For black-box models use PXPermute or occlusion_importance."
    )


def _split_normalization(module: nn.Module) -> tuple[nn.Module | None, nn.Module]:
    """Split ``Sequential(normalize, model)`` into (preprocessing, attributed network)."""
    if isinstance(module, nn.Sequential) and len(module) >= 2 and isinstance(module[0], (PercentileNormalization, nn.Identity)):
        rest = list(module.children())[1:]
        body = rest[0] if len(rest) == 1 else nn.Sequential(*rest)
        pre = None if isinstance(module[0], nn.Identity) else module[0]
        return pre, body
    if isinstance(module, PercentileNormalization):
        raise ValueError("the model is only a normalization layer; pass the trained network")
    return None, module


class _LRPBasicBlock(nn.Module):
    """torchvision ``BasicBlock`` whose residual addition is captum's ``Addition_Module``.

    Same parameters and ``state_dict`` keys (plus nothing) as the stock block; one
    non-inplace ReLU per use.
    """

    expansion = 1

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        from captum.attr._utils.custom_modules import Addition_Module

        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample
        self.stride = getattr(block, "stride", 1)
        self.relu = nn.ReLU(inplace=False)
        self.add = Addition_Module()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add(out, identity))


def to_lrp_compatible(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on which captum's LRP conserves relevance.

    Every torchvision ``BasicBlock`` (stock, or as converted by
    :func:`pxpermute.models.to_captum_compatible`) is replaced by a block whose
    residual addition is captum's ``Addition_Module`` (relevance split between
    the branches in proportion to their contributions) and whose ReLUs are
    separate, non-inplace modules; every other ReLU becomes non-inplace.  The
    outputs and the ``state_dict`` are unchanged; ``model`` is not modified.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    nn.Module

    Examples
    --------
    >>> import torch
    >>> from pxpermute.models import resnet18
    >>> m = resnet18(3, 2).eval()
    >>> m2 = to_lrp_compatible(m)
    >>> x = torch.rand(2, 3, 32, 32)
    >>> torch.allclose(m(x), m2(x), atol=1e-5)
    True
    """
    from torchvision.models.resnet import BasicBlock

    from .models import _CaptumBasicBlock, _copy_replacing_blocks

    return _copy_replacing_blocks(model, (BasicBlock, _CaptumBasicBlock), _LRPBasicBlock)


def _reused_modules(net: nn.Module, x: torch.Tensor) -> list[tuple[str, str, int]]:
    """Leaf modules called more than once in one forward pass: (name, type, calls)."""
    counts: dict[str, int] = {}
    handles = []
    for name, mod in net.named_modules():
        if len(list(mod.children())) == 0:
            def hook(_m, _i, _o, name=name):
                counts[name] = counts.get(name, 0) + 1
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    types = dict(net.named_modules())
    return [(n, type(types[n]).__name__, c) for n, c in counts.items() if c > 1]


_LRP_EXACT = (nn.Flatten, nn.Identity)


def _lrp_check_layers(net: nn.Module) -> None:
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS

    for name, mod in net.named_modules():
        if len(list(mod.children())) or hasattr(mod, "rule") or isinstance(mod, _LRP_EXACT):
            continue
        if type(mod) not in SUPPORTED_LAYERS_WITH_RULES and type(mod) not in SUPPORTED_NON_LINEAR_LAYERS:
            raise ValueError(
                f"LRP cannot propagate relevance through layer {name!r} ({type(mod).__name__}): captum has no "
                "rule for it. Fix: give the module a rule before calling, e.g. "
                "`from captum.attr._utils.lrp_rules import EpsilonRule; module.rule = EpsilonRule()` "
                "(only appropriate for linear layers), or replace it by a supported layer "
                f"({', '.join(sorted(t.__name__ for t in SUPPORTED_LAYERS_WITH_RULES))}; "
                "nonlinearities ReLU, Tanh, Dropout)."
            )


def _lrp_attach_rules(net: nn.Module) -> None:
    # captum deletes every rule after each call, so the exact rules for reshapes go back on each time
    from captum.attr._utils.lrp_rules import EpsilonRule

    for mod in net.modules():
        if isinstance(mod, _LRP_EXACT) and not hasattr(mod, "rule"):
            mod.rule = EpsilonRule()


class _Prepared:
    def __init__(self, pre: nn.Module | None, net: nn.Module, adaptations: list[str], name: str) -> None:
        self.pre, self.net, self.adaptations, self.name = pre, net, adaptations, name


def _prepare(model: Any, method: str, n_channels: int, image_shape: tuple[int, int], device: Any) -> _Prepared:
    module, name = _unwrap(model)
    pre, body = _split_normalization(module)
    adaptations: list[str] = []
    if pre is not None:
        adaptations.append("percentile normalization applied before attribution (attributions w.r.t. the normalized image)")
    if method == "lrp":
        net = to_lrp_compatible(body)
        if any(isinstance(m, _LRPBasicBlock) for m in net.modules()):
            adaptations.append("residual additions -> captum Addition_Module (epsilon rule); one non-inplace ReLU per use")
    elif method in ("deeplift", "guided_gradcam"):
        net = to_captum_compatible(body)
        adaptations.append("to_captum_compatible: one non-inplace ReLU per use")
    else:
        net = copy.deepcopy(body)
    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else "cpu"
    device = torch.device(device)
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    pre = None if pre is None else copy.deepcopy(pre).to(device).eval()
    from .importance import _first_conv_channels

    expected = _first_conv_channels(net)
    if expected is not None and expected != n_channels:
        raise ValueError(
            f"the model expects {expected} input channels but the data have {n_channels}; "
            "select the channels the model was trained on"
        )
    if method in ("deeplift", "lrp", "guided_gradcam"):
        probe = torch.zeros((2, n_channels, *image_shape), device=device)
        reused = _reused_modules(net, probe)
        if reused:
            desc = ", ".join(f"{n!r} ({t}, {c} calls)" for n, t, c in reused[:5])
            raise ValueError(
                f"{METHOD_NAMES[method]} needs every module to be used once per forward pass, but {desc} "
                "are called several times. Fix: give each use its own module instance "
                "(pxpermute.models.to_captum_compatible does this for torchvision ResNets)."
            )
    if method == "lrp":
        _lrp_check_layers(net)
    return _Prepared(pre, net, adaptations, name)


# -----------------------------------------------------------------------------
# attribution importance
# -----------------------------------------------------------------------------
_REDUCERS = ("median", "mean", "sum")
_CAPTUM_NOTES = ("Setting forward, backward hooks", "Setting backward hooks on ReLU", "Input Tensor 0 did not already")


def _reduce_pixels(attr: np.ndarray, how: str) -> np.ndarray:
    flat = attr.reshape(attr.shape[0], attr.shape[1], -1)
    if how == "median":
        return np.median(flat, axis=2)
    if how == "mean":
        return flat.mean(axis=2)
    return flat.sum(axis=2)


def attribution_importance(
    model: Any,
    data: Any,
    *,
    method: str = "integrated_gradients",
    labels: Any = None,
    reduce: str = "median",
    absolute: bool = False,
    aggregate: str = "mean",
    target: str = "label",
    baseline: float = 0.0,
    n_steps: int = 50,
    layer: nn.Module | None = None,
    max_delta: float = 10.0,
    batch_size: int = 64,
    max_samples: int | None = None,
    device: Any = None,
    random_state: int | None = 0,
    channel_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
) -> ImportanceResult:
    """Channel importance from captum pixel attributions (a published baseline).

    For each image, a captum method attributes the score of the target class to
    every pixel of every channel; the attributions of one channel are reduced to
    one number by the median over its pixels (``reduce``, as published; the
    absolute value first if ``absolute=True``), and these per-image channel
    scores are aggregated over the images (``aggregate``).

    Parameters
    ----------
    model : nn.Module or fitted skorch net
        A network returning logits (skorch nets: ``.module_`` is used).  A
        leading :class:`~pxpermute.models.PercentileNormalization` -- what
        :func:`~pxpermute.training.train_classifier` builds -- is applied to the
        images first; attributions are taken w.r.t. the normalized image (see
        the module docstring for all adaptations).  The model is not modified.
    data : IFCDataset, (X, y), array with ``labels=``, torch Dataset or DataLoader
        Test images (raw, as the model takes them), as for
        :func:`~pxpermute.channel_importance`.
    method : {"integrated_gradients", "deeplift", "guided_gradcam", "lrp"}
        captum's ``IntegratedGradients`` (``n_steps``, zero baseline),
        ``DeepLift`` (zero baseline), ``GuidedGradCam`` on ``layer`` (default:
        the last ``nn.Conv2d``, :func:`~pxpermute.models.last_conv_layer`) or
        ``LRP`` (epsilon rules; residual additions handled, see
        :func:`to_lrp_compatible`).
    reduce : {"median", "mean", "sum"}, default "median"
        Reduction over the pixels of one channel of one image.
    absolute : bool, default False
        Reduce ``|attribution|`` instead of the signed attribution.
    aggregate : {"mean", "median"}, default "mean"
        How the per-image scores are summarized into ``result.importance``.
    target : {"label", "prediction"}, default "label"
        Attribute the true class or the model's predicted class.
    baseline : float, default 0.0
        Reference value (in normalized units) for Integrated Gradients and DeepLift.
    n_steps : int, default 50
        Integration steps of Integrated Gradients.
    layer : nn.Module, optional
        GuidedGradCam layer (a module of ``model``'s network); default the last
        convolution.
    max_delta : float, default 10.0
        LRP and DeepLift: raise if the median over images of the relative
        convergence delta ``|sum(attributions) - expected| / |expected|`` exceeds
        this (relevance not conserved: the numbers would be meaningless).
        ``inf`` disables the check.  The deltas are recorded in ``info``.
    batch_size : int, default 64
        Images per attribution call (and IG's internal batch).
    max_samples : int, optional
        Attribute a random subset of this many images (drawn with ``random_state``).
    device : torch device, optional
        Default: the model's device.
    random_state : int or None, default 0
        Seed of the ``max_samples`` subset (the attributions are deterministic).
    channel_names, class_names : sequence of str, optional
        Default: from the data, else ``ch0...`` / ``class0...``.
    progress : bool, default True
        tqdm progress bar over batches.

    Returns
    -------
    ImportanceResult
        ``importances`` has shape ``(n_images, C)``: one row per attributed image
        (a "repeat" is an image here), so ``importances_mean`` is the mean over
        images and ``ci_low``/``ci_high`` the 95 % t-interval over images (the
        uncertainty from which cells were attributed).  ``drops``,
        ``baseline_scores`` and confusion matrices are ``None``.  ``info`` holds
        ``method``, ``reduce``, ``absolute``, ``target``, ``n_samples``,
        ``adaptations``, ``runtime_s`` and, where captum provides it, the
        relative convergence delta (``delta_median``, ``delta_max``).

    Examples
    --------
    >>> import numpy as np
    >>> from pxpermute.models import SmallCNN
    >>> X = np.random.default_rng(0).random((8, 3, 16, 16)).astype("float32"); y = np.arange(8) % 2
    >>> res = attribution_importance(SmallCNN(3, 2, width=4).eval(), (X, y), method="integrated_gradients",
    ...                              n_steps=8, progress=False)
    >>> res.importances.shape, res.info["method"]
    ((8, 3), 'integrated_gradients')
    """
    t0 = time.perf_counter()
    key = _method_key(method, ATTRIBUTION_METHODS)
    if reduce not in _REDUCERS:
        raise ValueError(f"reduce must be one of {list(_REDUCERS)}, got {reduce!r}")
    if aggregate not in ("mean", "median"):
        raise ValueError(f"aggregate must be 'mean' or 'median', got {aggregate!r}")
    if target not in ("label", "prediction"):
        raise ValueError(f"target must be 'label' or 'prediction', got {target!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 2:
        raise ValueError(f"n_steps must be an int >= 2, got {n_steps!r}")
    if not (isinstance(max_delta, (int, float)) and max_delta > 0):
        raise ValueError(f"max_delta must be a positive number (inf disables the check), got {max_delta!r}")

    src = as_source(data, labels)
    if src.n == 0:
        raise ValueError("the data set is empty (0 samples)")
    C, H, W = src.image_shape
    ch_names = list(channel_names) if channel_names is not None else (src.channel_names or [f"ch{i}" for i in range(C)])
    if len(ch_names) != C:
        raise ValueError(f"{len(ch_names)} channel names given for data with {C} channels")

    indices = np.arange(src.n)
    if max_samples is not None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 1:
            raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
        if max_samples < src.n:
            rng = np.random.default_rng(random_state)
            indices = np.sort(rng.choice(src.n, size=int(max_samples), replace=False))

    prep = _prepare(model, key, C, (H, W), device)
    net, pre = prep.net, prep.pre
    dev = next(net.parameters()).device if next(net.parameters(), None) is not None else torch.device("cpu")

    with torch.no_grad():
        x0, _ = src.read(indices[:1])
        t = torch.from_numpy(x0).to(dev)
        out0 = net(pre(t) if pre is not None else t)
    if out0.ndim != 2 or out0.shape[1] < 2:
        raise ValueError(f"the model must return (B, K) class scores with K >= 2; got output shape {tuple(out0.shape)}")
    K = int(out0.shape[1])
    if class_names is not None:
        cls_names = list(class_names)
    elif src.class_names is not None:
        cls_names = list(src.class_names)
    else:
        cls_names = [f"class{i}" for i in range(K)]
    if len(cls_names) != K:
        raise ValueError(f"the model scores {K} classes but {len(cls_names)} class names are known ({cls_names})")
    if target == "label" and src.labels is not None and src.labels.size:
        if src.labels.min() < 0 or src.labels.max() >= K:
            raise ValueError(f"labels must lie in [0, {K}) for a model with {K} outputs; found "
                             f"[{src.labels.min()}, {src.labels.max()}]")

    from captum.attr import LRP, DeepLift, GuidedGradCam, IntegratedGradients

    info_extra: dict[str, Any] = {}
    if key == "integrated_gradients":
        explainer: Any = IntegratedGradients(net)
        info_extra.update(n_steps=int(n_steps), baseline=float(baseline))
    elif key == "deeplift":
        explainer = DeepLift(net)
        info_extra.update(baseline=float(baseline))
    elif key == "guided_gradcam":
        if layer is None:
            target_layer = last_conv_layer(net)
        else:
            # the user's layer lives in the original model: find the module at the same path in our copy
            module, _ = _unwrap(model)
            path = next((n for n, m in module.named_modules() if m is layer), None)
            if path is None:
                raise ValueError("layer must be a module of the model (e.g. pxpermute.models.last_conv_layer(model))")
            _, body = _split_normalization(module)
            body_path = next((n for n, m in body.named_modules() if m is layer), None)
            if body_path is None:
                raise ValueError("layer lies in the normalization layer; pick a layer of the network")
            target_layer = dict(net.named_modules())[body_path]
        explainer = GuidedGradCam(net, target_layer)
        info_extra.update(layer=next(n for n, m in net.named_modules() if m is target_layer))
    else:
        explainer = LRP(net)

    scores = np.zeros((len(indices), C), np.float64)
    deltas: list[np.ndarray] = []
    bar = progress_bar(total=int(np.ceil(len(indices) / batch_size)), progress=progress,
                       desc=METHOD_NAMES[key], unit="batch")
    pos = 0
    with warnings.catch_warnings():
        for msg in _CAPTUM_NOTES:  # captum's notes about its own (temporary) hooks
            warnings.filterwarnings("ignore", message=msg, category=UserWarning)
        try:
            for idx, x_np, y_np in src.blocks(indices, int(batch_size)):
                x = torch.from_numpy(np.ascontiguousarray(x_np)).to(dev)
                if not bool(torch.isfinite(x).all()):
                    raise ValueError("images contain NaN or inf values; clean or impute them before computing importances")
                with torch.no_grad():
                    if pre is not None:
                        x = pre(x)
                    logits = net(x) if (target == "prediction" or key in ("integrated_gradients", "deeplift", "lrp")) else None
                if target == "prediction":
                    tgt = logits.argmax(dim=1)
                else:
                    tgt = torch.as_tensor(np.asarray(y_np, dtype=np.int64), device=dev)
                x = x.detach().clone().requires_grad_(True)
                delta = None
                expected = None
                if key == "integrated_gradients":
                    ref = torch.full_like(x, float(baseline))
                    attr, delta = explainer.attribute(x, baselines=ref, target=tgt, n_steps=int(n_steps),
                                                      internal_batch_size=int(batch_size), return_convergence_delta=True)
                    with torch.no_grad():
                        expected = logits.gather(1, tgt[:, None])[:, 0] - net(ref).gather(1, tgt[:, None])[:, 0]
                elif key == "deeplift":
                    ref = torch.full_like(x, float(baseline))
                    attr, delta = explainer.attribute(x, baselines=ref, target=tgt, return_convergence_delta=True)
                    with torch.no_grad():
                        expected = logits.gather(1, tgt[:, None])[:, 0] - net(ref).gather(1, tgt[:, None])[:, 0]
                elif key == "guided_gradcam":
                    attr = explainer.attribute(x, target=tgt)
                else:
                    _lrp_attach_rules(net)
                    attr, delta = explainer.attribute(x, target=tgt, return_convergence_delta=True)
                    expected = logits.gather(1, tgt[:, None])[:, 0]
                a = attr.detach()
                if a.shape != x.shape:
                    raise RuntimeError(f"{METHOD_NAMES[key]} returned attributions of shape {tuple(a.shape)} for input {tuple(x.shape)}")
                if absolute:
                    a = a.abs()
                a_np = a.cpu().numpy().astype(np.float64)
                if not np.isfinite(a_np).all():
                    raise RuntimeError(f"{METHOD_NAMES[key]} produced NaN/inf attributions for images {idx[:5].tolist()}")
                scores[pos : pos + len(idx)] = _reduce_pixels(a_np, reduce)
                if delta is not None:
                    d = delta.detach().abs().cpu().numpy().astype(np.float64).reshape(-1)
                    e = expected.detach().abs().cpu().numpy().astype(np.float64).reshape(-1)
                    deltas.append(d / np.maximum(e, 1e-6))
                pos += len(idx)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if key == "lrp":
                for mod in net.modules():  # leave no rule behind on our copy
                    if hasattr(mod, "rule"):
                        del mod.rule

    info: dict[str, Any] = {
        "method": key,
        "method_name": METHOD_NAMES[key],
        "reduce": reduce,
        "absolute": bool(absolute),
        "target": target,
        "aggregate": aggregate,
        "n_samples": int(len(indices)),
        "random_state": random_state if max_samples is not None and max_samples < src.n else None,
        "data": src.name,
        "model": prep.name,
        "adaptations": prep.adaptations,
        "device": str(dev),
        **info_extra,
    }
    if deltas:
        rel = np.concatenate(deltas)
        info["delta_median"] = float(np.median(rel))
        info["delta_max"] = float(np.max(rel))
        if key in ("lrp", "deeplift") and info["delta_median"] > max_delta:
            hint = (
                "the network probably adds tensors outside modules (residual connections) -- replace each "
                "such addition by captum's Addition_Module (pxpermute.baselines.to_lrp_compatible does this "
                "for torchvision ResNets)" if key == "lrp" else
                "a nonlinearity is probably not a module DeepLift knows (use nn.ReLU modules, one per use)"
            )
            raise RuntimeError(
                f"{METHOD_NAMES[key]} did not conserve relevance on this model: the median relative convergence "
                f"delta is {info['delta_median']:.3g} (max {info['delta_max']:.3g}; allowed max_delta={max_delta}), "
                f"so its attributions are meaningless. Likely cause: {hint}."
            )
    info["runtime_s"] = time.perf_counter() - t0
    return ImportanceResult(scores, channel_names=ch_names, class_names=cls_names, info=info)


def occlusion_importance(
    model: Any,
    data: Any,
    *,
    fill_value: float = 0.0,
    metric: str = "f1",
    aggregate: str = "mean",
    batch_size: int = 256,
    device: Any = None,
    progress: bool = True,
    **kwargs: Any,
) -> ImportanceResult:
    """Channel occlusion: fill one channel with ``fill_value`` and measure the F1 drop.

    A thin wrapper of :func:`pxpermute.channel_importance` with
    ``perturbation="fill"`` (same engine, same result object; one "repeat",
    because the perturbation is deterministic, so there is no CI).  The fill is
    applied to the raw image the model receives; ``fill_value=0`` (as published)
    maps to the lowest normalized value for a network with a percentile
    normalization in front.

    Parameters
    ----------
    model, data
        As for :func:`~pxpermute.channel_importance` (any model, black boxes included).
    fill_value : float, default 0.0
    metric, aggregate, batch_size, device, progress
        As for :func:`~pxpermute.channel_importance`.
    **kwargs
        Passed on (``labels``, ``channel_names``, ``class_names``, ``groups`` ...).

    Returns
    -------
    ImportanceResult
        ``info["method"] == "occlusion"``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> X = np.zeros((20, 2, 4, 4), "float32"); y = np.arange(20) % 2; X[y == 1, 0] = 1
    >>> model = lambda x: torch.stack([0.5 - x[:, 0].mean((1, 2)), x[:, 0].mean((1, 2)) - 0.5], 1)
    >>> occlusion_importance(model, (X, y), progress=False).importance.round(2).tolist()
    [0.67, 0.0]
    """
    for bad in ("perturbation", "n_repeats"):
        if bad in kwargs:
            raise TypeError(f"occlusion_importance() sets {bad!r} itself; use pxpermute.channel_importance for other perturbations")
    return channel_importance(model, data, perturbation="fill", n_repeats=1, fill_value=fill_value, metric=metric,
                              aggregate=aggregate, batch_size=batch_size, device=device, progress=progress, **kwargs)


def compare_methods(
    model: Any,
    data: Any,
    *,
    methods: Sequence[str] = ("pxpermute", "occlusion", "integrated_gradients", "deeplift", "guided_gradcam", "lrp"),
    n_repeats: int = 100,
    random_state: int | None = 42,
    max_samples: int | None = None,
    errors: str = "raise",
    progress: bool = True,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> dict[str, ImportanceResult]:
    """Run several channel-importance methods on the same model and data.

    Parameters
    ----------
    model, data
        As for :func:`~pxpermute.channel_importance` (attribution methods need
        a torch network or a skorch net).
    methods : sequence of str
        Any of ``"pxpermute"``, ``"occlusion"``, ``"integrated_gradients"``,
        ``"deeplift"``, ``"guided_gradcam"``, ``"lrp"``.
    n_repeats : int, default 100
        k for PXPermute.
    random_state : int or None, default 42
        Seed of PXPermute's permutations and of the ``max_samples`` subset.
    max_samples : int, optional
        Images attributed by the captum methods (they are slow); PXPermute and
        occlusion always use all images.
    errors : {"raise", "skip"}
        ``"skip"`` leaves out a method that cannot run on this model (a
        warning says why) instead of raising.
    method_kwargs : mapping method -> dict, optional
        Extra options for one method, e.g. ``{"integrated_gradients": {"n_steps": 20}}``.
    **kwargs
        Passed to every method (``batch_size``, ``device``, ``labels`` ...).

    Returns
    -------
    dict
        Display name (``"PXPermute"``, ``"Occlusion"``, ``"IntegratedGradients"``,
        ``"DeepLift"``, ``"GuidedGradCAM"``, ``"LRP"``, the names of the paper's
        result files) -> :class:`~pxpermute.ImportanceResult`.

    Examples
    --------
    >>> import numpy as np
    >>> from pxpermute.models import SmallCNN
    >>> X = np.random.default_rng(0).random((8, 3, 16, 16)).astype("float32"); y = np.arange(8) % 2
    >>> res = compare_methods(SmallCNN(3, 2, width=4).eval(), (X, y), methods=["occlusion", "lrp"], progress=False)
    >>> list(res)
    ['Occlusion', 'LRP']
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    if isinstance(methods, str):
        methods = [methods]
    keys = [_method_key(m, tuple(METHOD_NAMES)) for m in methods]
    if not keys:
        raise ValueError("methods is empty")
    extra = {(_method_key(k, tuple(METHOD_NAMES))): dict(v) for k, v in (method_kwargs or {}).items()}
    out: dict[str, ImportanceResult] = {}
    for key in keys:
        kw = {**kwargs, **extra.get(key, {})}
        try:
            if key == "pxpermute":
                res = channel_importance(model, data, n_repeats=n_repeats, perturbation="pixel",
                                         random_state=random_state, progress=progress, **kw)
            elif key == "occlusion":
                res = occlusion_importance(model, data, progress=progress, **kw)
            else:
                res = attribution_importance(model, data, method=key, max_samples=max_samples,
                                             random_state=random_state, progress=progress, **kw)
        except (ValueError, RuntimeError, TypeError) as err:
            if errors == "raise":
                raise
            warnings.warn(warning_text(f"{METHOD_NAMES[key]} skipped: {err}"), RuntimeWarning, stacklevel=2)
            continue
        out[METHOD_NAMES[key]] = res
    return out
