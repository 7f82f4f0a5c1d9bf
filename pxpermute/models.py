"""Classifiers for multichannel IFC images and the percentile normalization layer.

* :func:`resnet18` -- torchvision's ResNet18 with the first convolution replaced
  for ``C`` input channels and the head for ``K`` classes, the architecture of the
  PXPermute paper (Shetab Boushehri et al., Cell Reports Methods 2024).
* :class:`SmallCNN` -- a small, fast network for tutorials and tests.
* :func:`build_model` -- build either by name.
* :class:`PercentileNormalization` / :func:`fit_percentile_normalization` --
  per-channel 1st/99th-percentile min-max scaling as a ``torch`` layer, so a
  trained network can take raw images.
* :func:`to_captum_compatible` -- a functionally identical copy of a network whose
  ReLUs are non-inplace and never reused, which captum's DeepLift needs.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "resnet18",
    "SmallCNN",
    "build_model",
    "MODEL_NAMES",
    "PercentileNormalization",
    "fit_percentile_normalization",
    "to_captum_compatible",
    "last_conv_layer",
    "load_pretrained",
    "pretrained_registry",
]


def _check_sizes(n_channels: Any, n_classes: Any) -> tuple[int, int]:
    for name, value, minimum in (("n_channels", n_channels, 1), ("n_classes", n_classes, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(n_channels), int(n_classes)


# ---------------------------------------------------------------------------
# ResNet18
# ---------------------------------------------------------------------------
class _CaptumBasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` with one non-inplace ReLU module per use.

    Same submodule names (``conv1, bn1, conv2, bn2, downsample``) and therefore the
    same ``state_dict`` as the stock block; ``relu`` is the first ReLU, ``relu2``
    the one after the residual addition.  The addition is out of place as well.
    """

    expansion = 1

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv1 = block.conv1
        self.bn1 = block.bn1
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = block.conv2
        self.bn2 = block.bn2
        self.downsample = block.downsample
        self.stride = getattr(block, "stride", 1)
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


def to_captum_compatible(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that captum's DeepLift can attribute.

    Every torchvision ``BasicBlock`` is replaced by a block with a separate,
    non-inplace ReLU for each use and an out-of-place residual addition; every
    other ``nn.ReLU`` becomes non-inplace.  Parameters and buffers (and thus the
    ``state_dict`` keys and the outputs) are unchanged.  The input model is not
    modified.

    Parameters
    ----------
    model : nn.Module
        Any network, e.g. ``resnet18(...)`` or a trained ``net.module_``.

    Returns
    -------
    nn.Module
        The converted copy (same training/eval mode as ``model``).

    Examples
    --------
    >>> m = resnet18(3, 2)
    >>> m2 = to_captum_compatible(m)
    >>> all(not r.inplace for r in m2.modules() if isinstance(r, nn.ReLU))
    True
    """
    from torchvision.models.resnet import BasicBlock

    return _copy_replacing_blocks(model, (BasicBlock,), _CaptumBasicBlock)


def _copy_replacing_blocks(model: nn.Module, block_types: tuple[type, ...], factory: Any) -> nn.Module:
    """Deep copy of ``model`` with every ``block_types`` child replaced by ``factory(child)``
    (keeping its train/eval mode) and every other ReLU made non-inplace."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    new = copy.deepcopy(model)

    def convert(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, block_types):
                replacement = factory(child)
                replacement.train(child.training)
                setattr(parent, name, replacement)
            elif isinstance(child, nn.ReLU):
                child.inplace = False
            else:
                convert(child)

    convert(new)
    return new


def _load_imagenet_resnet18_state() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet18 weights, with a clear error when offline."""
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        # looked up through the module so that a monkeypatched torch.hub is honoured
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    except Exception as exc:  # URLError, HTTPError, hash mismatch, disk errors ...
        cache = torch.hub.get_dir()
        raise RuntimeError(
            "Could not download torchvision's ImageNet weights for ResNet18 "
            f"(pretrained=True) from {weights.url}: {type(exc).__name__}: {exc}. "
            f"torch caches them in {cache}/checkpoints (set TORCH_HOME to move that folder); "
            "copy the file there on a machine without internet access, "
            "or use pretrained=False, which needs no download and works offline."
        ) from exc


def _check_input_size(input_size: Any) -> tuple[int, int] | None:
    if input_size is None:
        return None
    values = input_size if isinstance(input_size, (tuple, list)) else (input_size, input_size)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 8 for v in values):
        raise ValueError(f"input_size must be None, an int >= 8 or a pair of them (height, width); got {input_size!r}")
    return int(values[0]), int(values[1])


_RESIZED_RESNET: type | None = None


def _resized_resnet_class() -> type:
    """``ResizedResNet``: torchvision's ``ResNet`` that first resizes its input bilinearly to ``input_size``.

    A subclass (made on first use, so that importing pxpermute does not import
    torchvision) with the same submodules and ``state_dict`` as the stock
    ResNet; only ``forward`` differs.
    """
    global _RESIZED_RESNET
    if _RESIZED_RESNET is None:
        from torchvision.models.resnet import ResNet

        class ResizedResNet(ResNet):
            input_size: tuple[int, int]

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if tuple(x.shape[-2:]) != tuple(self.input_size):
                    x = nn.functional.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
                return super().forward(x)

            def extra_repr(self) -> str:
                return f"input_size={self.input_size}"

        ResizedResNet.__module__ = __name__
        ResizedResNet.__qualname__ = "ResizedResNet"
        _RESIZED_RESNET = ResizedResNet
    return _RESIZED_RESNET


def __getattr__(name: str) -> Any:  # pickling a ResizedResNet looks the class up here
    if name == "ResizedResNet":
        return _resized_resnet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resnet18(
    n_channels: int,
    n_classes: int,
    *,
    pretrained: bool = False,
    captum_compatible: bool = False,
    input_size: int | tuple[int, int] | None = None,
) -> nn.Module:
    """torchvision ResNet18 for ``n_channels``-channel images and ``n_classes`` classes.

    The first convolution (7x7, stride 2, 64 filters) takes ``n_channels`` inputs
    and the final fully connected layer has ``n_classes`` outputs; everything else
    is torchvision's ResNet18, as in the PXPermute paper.  The network returns
    logits.

    Parameters
    ----------
    n_channels, n_classes : int
        Input channels ``C`` and number of classes ``K`` (>= 2).
    pretrained : bool, default False
        Start from torchvision's ImageNet weights (``IMAGENET1K_V1``).  The first
        convolution has RGB filters; they are adapted by averaging each filter over
        its three input channels and repeating that mean for all ``C`` channels (a
        common adaptation; no scaling).  The head is freshly initialised.  The
        weights are downloaded by torch into ``$TORCH_HOME/hub/checkpoints``;
        offline (and not cached) this raises a :class:`RuntimeError` saying so.
    captum_compatible : bool, default False
        Return the functionally identical network of :func:`to_captum_compatible`
        (non-inplace ReLUs, one ReLU module per use), which captum's DeepLift needs.
        Its ``state_dict`` is interchangeable with the stock one.
    input_size : int, (int, int) or None, default None
        Resize every input bilinearly to ``input_size x input_size`` (or
        ``(height, width)``) inside the network, before the first convolution;
        ``None`` feeds the images at their native size.  ResNet18's stem
        (stride-2 convolution + max pooling) shrinks the image 4x and the next
        stages 8x more, so small IFC tiles leave almost no spatial map: 40 px
        cell-cycle images are 3x3 at ``layer3`` and 2x2 at ``layer4`` (4x4 and
        2x2 from 64 px).  The published cell-cycle recipes (Eulenberg et al.
        2017, Shetab Boushehri et al. 2024) resize to 64 px; use
        ``input_size=64`` to follow them (benchmarks/resnet_cellcycle.py
        compares both on the real data).  Because the resize is part of the network, the network still takes the *native* images:
        PXPermute, occlusion and the attribution methods work on native pixels
        and channels, and the ``state_dict`` is the stock one (no extra keys).

    Returns
    -------
    torch.nn.Module
        Maps ``(B, C, H, W)`` float tensors to ``(B, K)`` logits.  A torchvision
        ``ResNet`` (a subclass of it when ``input_size`` is set, with the
        target size in its ``input_size`` attribute).

    Examples
    --------
    >>> import torch
    >>> m = resnet18(6, 3).eval()
    >>> m(torch.zeros(2, 6, 32, 32)).shape
    torch.Size([2, 3])
    >>> m64 = resnet18(3, 7, input_size=64).eval()  # 40 px images, seen by the network at 64 px
    >>> m64(torch.zeros(2, 3, 40, 40)).shape
    torch.Size([2, 7])
    """
    n_channels, n_classes = _check_sizes(n_channels, n_classes)
    size = _check_input_size(input_size)
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None)
    if size is not None:
        model.__class__ = _resized_resnet_class()
        model.input_size = size
    if pretrained:
        state = _load_imagenet_resnet18_state()
        model.load_state_dict(state)
        rgb = model.conv1.weight.detach()  # (64, 3, 7, 7)
    model.conv1 = nn.Conv2d(n_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if pretrained:
        with torch.no_grad():
            model.conv1.weight.copy_(rgb.mean(dim=1, keepdim=True).repeat(1, n_channels, 1, 1))
    model.fc = nn.Linear(model.fc.in_features, n_classes)
    if captum_compatible:
        model = to_captum_compatible(model)
    return model


# ---------------------------------------------------------------------------
# Small CNN
# ---------------------------------------------------------------------------
def _conv_bn_relu(c_in: int, c_out: int, bn_momentum: float | None) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out, momentum=bn_momentum),
        nn.ReLU(inplace=False),
    )


class SmallCNN(nn.Module):
    """A small, fast CNN for tutorials and tests.

    Four conv(3x3)-batchnorm-ReLU blocks (``width``, ``2 width``, ``2 width``,
    ``4 width`` filters) with 2x2 max pooling between them, global average pooling
    and a linear head returning logits.  Every ReLU is a separate, non-inplace
    module, so all captum attribution methods (DeepLift included) run on it.
    Works for any image size >= 8x8.

    Parameters
    ----------
    n_channels, n_classes : int
        Input channels ``C`` and number of classes ``K`` (>= 2).
    width : int, default 32
        Filters of the first block.
    bn_momentum : float or None, default 0.3
        Momentum of the batch-norm running statistics.  0.3 (torch's default is
        0.1) lets the evaluation-mode statistics forget their initial values
        (mean 0, variance 1) within about ten batches, so short tutorial runs on a
        few hundred cells are not stuck predicting one class in evaluation mode.
        Measured on the synthetic "default" preset (1,200 cells, 32x32, 12
        epochs): held-out F1-macro 0.99 with 0.3, 0.97 with 0.1 and 0.61 with
        ``None`` (cumulative average, which keeps stale early statistics).

    Attributes
    ----------
    features : nn.Sequential
        The convolutional trunk (``features[-1]`` is the last conv block; use
        :func:`last_conv_layer` for GradCAM-style methods).
    classifier : nn.Linear
        The head.

    Examples
    --------
    >>> import torch
    >>> net = SmallCNN(2, 3, width=8).eval()
    >>> net(torch.zeros(4, 2, 32, 32)).shape
    torch.Size([4, 3])
    """

    def __init__(self, n_channels: int, n_classes: int, width: int = 32, bn_momentum: float | None = 0.3) -> None:
        super().__init__()
        n_channels, n_classes = _check_sizes(n_channels, n_classes)
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        w = int(width)
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.features = nn.Sequential(
            _conv_bn_relu(n_channels, w, bn_momentum),
            nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w, bn_momentum),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 2 * w, bn_momentum),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w, bn_momentum),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(4 * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def last_conv_layer(model: nn.Module) -> nn.Conv2d:
    """The last ``nn.Conv2d`` registered in ``model`` (e.g. for GuidedGradCam).

    Examples
    --------
    >>> last_conv_layer(SmallCNN(2, 2, width=4)).out_channels
    16
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} contains no nn.Conv2d layer")
    return convs[-1]


MODEL_NAMES: tuple[str, ...] = ("resnet18", "small_cnn")
_BUILDERS: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18, "small_cnn": SmallCNN}


def build_model(name: str, n_channels: int, n_classes: int, **kwargs: Any) -> nn.Module:
    """Build a network by name.

    Parameters
    ----------
    name : {"resnet18", "small_cnn"}
        Architecture.
    n_channels, n_classes : int
        Input channels and classes.
    **kwargs
        Passed on: ``pretrained``/``captum_compatible`` for ``"resnet18"``,
        ``width`` for ``"small_cnn"``.

    Examples
    --------
    >>> build_model("small_cnn", 4, 2, width=8).classifier.out_features
    2
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, one of {list(MODEL_NAMES)}; got {type(name).__name__}")
    key = name.lower().replace("-", "_")
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
    try:
        return _BUILDERS[key](n_channels, n_classes, **kwargs)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise TypeError(f"invalid option for model {key!r}: {exc}") from exc
        raise


# ---------------------------------------------------------------------------
# Percentile normalization
# ---------------------------------------------------------------------------
class PercentileNormalization(nn.Module):
    """Per-channel min-max scaling between fitted low/high percentiles.

    ``y = (x - low[c]) / (high[c] - low[c])``, then clipped to ``[0, 1]`` (when
    ``clip=True``, the default): values below the low percentile become 0, values
    above the high percentile become 1, so outliers (saturated pixels, debris)
    cannot dominate.  A constant channel (``high == low``, e.g. an unused, empty
    stain) is divided by 1 instead of 0, i.e. it is only shifted by ``low`` (and
    clipped): it maps to 0 on data like the training data and never produces
    inf/NaN.

    ``low`` and ``high`` are buffers, so they travel with ``state_dict`` and
    ``.to(device)``.  Use :func:`fit_percentile_normalization` to fit them.  Calling
    the module on a numpy array returns a numpy array, so a fitted module can also
    serve as an :class:`~pxpermute.IFCDataset` ``transform``.

    Parameters
    ----------
    low, high : array-like, shape (C,)
        Per-channel lower and upper reference values.
    clip : bool, default True
        Clip the output to ``[0, 1]``.

    Examples
    --------
    >>> import torch
    >>> norm = PercentileNormalization([0.0, 10.0], [2.0, 10.0])
    >>> norm(torch.tensor([[[[1.0]], [[12.0]]]])).flatten().tolist()
    [0.5, 1.0]
    """

    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, low: Any, high: Any, *, clip: bool = True) -> None:
        super().__init__()
        low_t = torch.as_tensor(np.asarray(low, dtype=np.float32)).reshape(-1)
        high_t = torch.as_tensor(np.asarray(high, dtype=np.float32)).reshape(-1)
        if low_t.shape != high_t.shape or low_t.numel() == 0:
            raise ValueError(
                f"low and high need one value per channel and the same length; "
                f"got {tuple(low_t.shape)} and {tuple(high_t.shape)}"
            )
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
            raise ValueError("low and high must be finite")
        if (high_t < low_t).any():
            bad = torch.nonzero(high_t < low_t).flatten().tolist()
            raise ValueError(f"high must be >= low for every channel; violated for channels {bad}")
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)
        self.clip = bool(clip)

    @property
    def n_channels(self) -> int:
        return int(self.low.numel())

    def forward(self, x: Any) -> Any:
        as_numpy = isinstance(x, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if as_numpy else x
        if t.ndim < 3 or t.shape[-3] != self.n_channels:
            raise ValueError(
                f"PercentileNormalization was fitted for {self.n_channels} channels and expects "
                f"(..., {self.n_channels}, H, W) input; got shape {tuple(t.shape)}"
            )
        shape = (-1, 1, 1)
        low = self.low.to(t.device).view(shape)
        span = self.high.to(t.device) - self.low.to(t.device)
        span = torch.where(span > 0, span, torch.ones_like(span)).view(shape)
        out = (t - low) / span
        if self.clip:
            out = out.clamp(0.0, 1.0)
        return out.numpy() if as_numpy else out

    def extra_repr(self) -> str:
        return f"n_channels={self.n_channels}, clip={self.clip}"


def _sample_images(data: Any, indices: np.ndarray, chunk: int = 256):
    """Yield float32 blocks of ``data`` at sorted ``indices``."""
    from .datasets.base import IFCDataset

    for start in range(0, len(indices), chunk):
        idx = indices[start : start + chunk]
        if isinstance(data, IFCDataset):
            block, _ = data.get_batch(idx)
        elif isinstance(data, torch.Tensor):
            block = data[torch.as_tensor(idx)].detach().cpu().numpy()
        else:
            block = np.asarray(data[idx])
        yield np.asarray(block, dtype=np.float32)


def fit_percentile_normalization(
    images_or_dataset: Any,
    *,
    q: Sequence[float] = (1, 99),
    max_samples: int | None = 1000,
    max_pixels: int = 2_000_000,
    indices: Any = None,
    clip: bool = True,
    random_state: int | None = 42,
    high_from: str = "pixels",
) -> PercentileNormalization:
    """Fit a :class:`PercentileNormalization` on (a sample of) training images.

    The per-channel ``q[0]``/``q[1]`` percentiles are computed over all pixels of
    up to ``max_samples`` images drawn without replacement (all images if fewer).
    For large images at most ``max_pixels`` pixel values per channel are used,
    taken at random positions spread evenly over the sampled images.  Lazy
    (HDF5-backed) data sets are read in sorted blocks; nothing else is loaded.

    Parameters
    ----------
    images_or_dataset : IFCDataset, numpy array or tensor of shape (N, C, H, W)
        Training images (the dataset's own ``transform`` is applied).
    q : (float, float), default (1, 99)
        Lower and upper percentiles in ``[0, 100]``.
    max_samples : int or None, default 1000
        Images to sample; ``None`` uses all.
    max_pixels : int, default 2_000_000
        Budget of pixel values per channel.
    indices : array-like of int, optional
        Restrict fitting to these images (e.g. the training part of a split).
    clip : bool, default True
        Passed to :class:`PercentileNormalization`.
    random_state : int or None, default 42
        Seed of the image/pixel sampling.
    high_from : {"pixels", "image_max"}, default "pixels"
        Where the upper value comes from.  ``"pixels"``: the ``q[1]`` percentile
        of all sampled pixels.  ``"image_max"``: the ``q[1]`` percentile of the
        sampled images' per-channel maxima, so only about ``100 - q[1]`` % of
        the images have any pixel above it.  When cells cover a small part of
        each image, the pixel percentile falls *inside* the bright cells'
        intensity range and clipping flattens them (real Jurkat data: the
        99th DNA pixel percentile clips on average 98 pixels of every
        metaphase cell and 13 of every G2 cell); ``"image_max"`` keeps them.
        The lower value is always the ``q[0]`` pixel percentile (background).

    Returns
    -------
    PercentileNormalization

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((50, 3, 8, 8)).astype("float32")
    >>> norm = fit_percentile_normalization(x)
    >>> norm.low.shape
    torch.Size([3])
    """
    from .datasets.base import IFCDataset

    data = images_or_dataset
    if not isinstance(data, (IFCDataset, torch.Tensor)):
        if not hasattr(data, "shape") or not hasattr(data, "__getitem__"):
            data = np.asarray(data)
    shape = tuple(getattr(data, "shape", ())) if not isinstance(data, IFCDataset) else (len(data), *data.image_shape)
    if len(shape) != 4:
        raise ValueError(f"images must have shape (N, C, H, W); got shape {shape}")
    n, c, h, w = (int(s) for s in shape)
    try:
        lo_q, hi_q = (float(v) for v in q)
    except (TypeError, ValueError):
        raise ValueError(f"q must be a pair of percentiles like (1, 99); got {q!r}") from None
    if not 0 <= lo_q <= hi_q <= 100:
        raise ValueError(f"q must satisfy 0 <= q[0] <= q[1] <= 100; got {q!r}")
    pool = np.arange(n) if indices is None else np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))
    if pool.size and (pool.min() < 0 or pool.max() >= n):
        raise ValueError(f"indices must lie in [0, {n}); got range [{pool.min()}, {pool.max()}]")
    if pool.size == 0:
        raise ValueError("cannot fit a normalization on zero images")
    rng = np.random.default_rng(random_state)
    if max_samples is not None:
        if int(max_samples) < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
        if pool.size > max_samples:
            pool = np.sort(rng.choice(pool, size=int(max_samples), replace=False))
    per_image = h * w if pool.size * h * w <= max_pixels else max(1, int(max_pixels) // pool.size)

    if high_from not in ("pixels", "image_max"):
        raise ValueError(f"high_from must be 'pixels' or 'image_max', got {high_from!r}")
    parts, image_max = [], []
    for block in _sample_images(data, pool):
        if not np.isfinite(block).all():
            raise ValueError("images contain NaN or inf values; clean them before fitting a normalization")
        flat = block.reshape(block.shape[0], c, h * w)
        image_max.append(flat.max(axis=2))
        if per_image < h * w:
            pos = np.argsort(rng.random((block.shape[0], h * w)), axis=1)[:, :per_image]
            flat = np.take_along_axis(flat, pos[:, None, :], axis=2)
        parts.append(np.ascontiguousarray(flat.transpose(1, 0, 2)).reshape(c, -1))
    values = np.concatenate(parts, axis=1)
    low, high = np.percentile(values, [lo_q, hi_q], axis=1)
    if high_from == "image_max":
        maxima = np.concatenate(image_max, axis=0)  # (n_images, C)
        high = np.maximum(np.percentile(maxima, hi_q, axis=0), low)
    return PercentileNormalization(low, high, clip=clip)


# ---------------------------------------------------------------------------
# Pretrained tutorial models (package data written by scripts/train_tutorial_models.py)
# ---------------------------------------------------------------------------
def _pretrained_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent / "pretrained"


def pretrained_registry() -> dict[str, Any]:
    """The registry of the pretrained tutorial models (``pxpermute/pretrained/registry.json``).

    ``{"models": {name: {file, sha256, architecture, channels, class_names, fold, ...}},
    "groups": {group: {data, n_splits, random_state, f1_macro, ...}}, "tolerance": ...}``.

    Examples
    --------
    >>> "models" in pretrained_registry()
    True
    """
    import json

    path = _pretrained_dir() / "registry.json"
    if not path.exists():
        return {"format": 1, "groups": {}, "models": {}}
    return json.loads(path.read_text())


def load_pretrained(name: str, *, device: str | None = None) -> nn.Module:
    """Load a pretrained tutorial model by name, after checking its SHA-256.

    The network takes **raw** images of the channels it was trained on (its first
    layer is the fitted :class:`PercentileNormalization`) and returns logits; it is
    returned in evaluation mode.  Names are listed in ``pretrained_registry()["models"]``
    (e.g. ``"cellcycle_all_fold0"``); ``scripts/train_tutorial_models.py`` reproduces them.

    Parameters
    ----------
    name : str
        Model name.
    device : str, optional
        Where to put the network (default: ``"cuda"`` when available, else ``"cpu"``).

    Returns
    -------
    torch.nn.Module
        ``nn.Sequential(normalize=PercentileNormalization, model=<network>)``.

    Raises
    ------
    KeyError
        Unknown name (the message lists the available ones).
    OSError
        The file is missing or its SHA-256 differs from the registry (corrupted or replaced).

    Examples
    --------
    >>> net = load_pretrained("cellcycle_all_fold0")  # doctest: +SKIP
    >>> net(torch.zeros(1, 3, 40, 40)).shape  # doctest: +SKIP
    torch.Size([1, 7])
    """
    import hashlib
    from collections import OrderedDict

    reg = pretrained_registry()
    if not isinstance(name, str) or name not in reg["models"]:
        raise KeyError(f"unknown pretrained model {name!r}; available: {sorted(reg['models'])}")
    entry = reg["models"][name]
    path = _pretrained_dir() / entry["file"]
    if not path.exists():
        raise OSError(f"pretrained model file {path} is missing; reinstall pxpermute or run "
                      "scripts/train_tutorial_models.py")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise OSError(f"pretrained model file {path} has SHA-256 {digest}, the registry expects {entry['sha256']}: "
                      "the file is corrupted or was replaced; reinstall pxpermute or rerun "
                      "scripts/train_tutorial_models.py")
    import io

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    c, k = int(entry["n_channels"]), int(entry["n_classes"])
    net = nn.Sequential(OrderedDict(
        normalize=PercentileNormalization(np.zeros(c), np.ones(c)),
        model=build_model(entry["architecture"], c, k, **entry.get("model_kwargs", {})),
    ))
    net.load_state_dict(state)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return net.to(device).eval()
