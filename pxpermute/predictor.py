"""The predictor: any supported model as ``images -> predicted labels``, and the batch size that fits.

:func:`as_predictor` wraps a torch ``nn.Module`` returning logits, a skorch /
sklearn-style estimator with ``predict``, or any callable returning scores or
labels; :func:`auto_batch_size` picks the engine's batch size for a device.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["as_predictor", "Predictor", "auto_batch_size"]


def _first_conv_channels(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d)):
            return int(m.in_channels)
    return None


class _Predictor:
    """Turns any supported model into ``x (B, C, H, W) tensor -> predicted labels (B,) long``."""

    def __init__(self, model: Any, device: Any = None, *, amp: bool = False, channels_last: bool = False) -> None:
        self.kind: str
        self.amp = amp
        self.channels_last = channels_last
        self.name = type(model).__name__
        module = None
        if isinstance(model, nn.Module):
            module = model
        elif isinstance(getattr(model, "module_", None), nn.Module) and hasattr(model, "predict"):
            module = model.module_  # skorch: call the fitted module directly (same argmax as predict)
            if device is None and getattr(model, "device", None):
                device = model.device
            self.name = f"{type(model).__name__}({type(module).__name__})"
        if module is not None:
            self.kind = "torch"
            if device is None:
                p = next(module.parameters(), None)
                device = p.device if p is not None else "cpu"
            self.device = torch.device(device)
            self.module = module.to(self.device).eval()
            if channels_last and self.device.type == "cuda":
                self.module = self.module.to(memory_format=torch.channels_last)
            self.expected_channels = _first_conv_channels(module)
        elif hasattr(model, "predict") and callable(model.predict):
            self.kind = "sklearn"
            self.model = model
            self.device = torch.device(device or "cpu")
            self.expected_channels = getattr(model, "n_channels_", None)
        elif callable(model):
            self.kind = "callable"
            self.model = model
            self.device = torch.device(device or "cpu")
            self.expected_channels = None
        else:
            raise TypeError(
                "model must be a torch nn.Module returning logits, an object with .predict "
                f"(sklearn / skorch), or a callable returning scores or labels; got {type(model).__name__}"
            )

    def raw(self, x: torch.Tensor) -> Any:
        if self.kind == "torch":
            if self.channels_last and x.is_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                if self.amp and x.is_cuda:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return self.module(x)
                return self.module(x)
        if self.kind == "sklearn":
            return self.model.predict(x.detach().cpu().numpy())
        with torch.inference_mode():
            return self.model(x)

    def __call__(self, x: torch.Tensor, n_classes: int) -> torch.Tensor:
        out = self.raw(x)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out))
        out = out.to(x.device)
        if out.ndim == 2 and out.shape[0] == x.shape[0]:
            if out.shape[1] < 2:
                raise ValueError(
                    f"model returned {out.shape[1]} score column(s); pxpermute needs one score per class "
                    "(for a binary model with a single logit, return torch.cat([-z, z], 1))"
                )
            if out.shape[1] != n_classes:
                raise ValueError(f"model returned scores for {out.shape[1]} classes but the data have {n_classes} classes")
            pred = out.argmax(dim=1)
        elif out.ndim == 1 and out.shape[0] == x.shape[0]:
            if out.is_floating_point():
                if not torch.all(out == out.round()):
                    raise ValueError("model returned a 1-D float output that is not class labels; return (B, K) scores or integer labels")
            pred = out.long()
        else:
            raise ValueError(f"model output has shape {tuple(out.shape)} for a batch of {x.shape[0]}; "
                             "expected (B, K) scores or (B,) labels")
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= n_classes):
            raise ValueError(
                f"model predicted class {int(pred.max()) if int(pred.max()) >= n_classes else int(pred.min())} "
                f"outside [0, {n_classes}); pass class_names / n_classes matching the model"
            )
        return pred


def as_predictor(model: Any, device: Any = None, **kw: Any) -> _Predictor:
    return _Predictor(model, device, **kw)


Predictor = _Predictor


def auto_batch_size(predictor: Any, image_shape: tuple[int, int, int], *, n_classes: int, max_size: int = 4096,
                    cpu_bytes: int = 64 << 20) -> int:
    """A batch size for the engine that fits the device.

    On CUDA: the largest power of two up to ``max_size`` for which one forward
    pass plus the permutation buffers (three int64 tensors of one key per
    pixel) fit in free GPU memory, found by trying and backing off on
    out-of-memory, then halved for headroom.  Elsewhere: the largest power of
    two (16 ... 256) whose input batch stays under ``cpu_bytes`` -- CPU
    throughput no longer grows beyond a few hundred images.

    Parameters
    ----------
    predictor
        The engine's wrapped model (:func:`as_predictor`).
    image_shape : (C, H, W)
    n_classes : int

    Examples
    --------
    >>> from pxpermute.predictor import as_predictor
    >>> import torch
    >>> auto_batch_size(as_predictor(torch.nn.Flatten()), (8, 128, 128), n_classes=2)
    128
    """
    C, H, W = (int(v) for v in image_shape)
    device = torch.device(getattr(predictor, "device", "cpu"))
    if device.type != "cuda":
        per = C * H * W * 4
        b = 256
        while b > 16 and b * per > cpu_bytes:
            b //= 2
        return b
    b = 1 << int(math.floor(math.log2(max(1, max_size))))
    while b >= 1:
        try:
            x = torch.zeros((b, C, H, W), device=device)
            buf = torch.empty((3, b, H * W), dtype=torch.int64, device=device)
            predictor.raw(x)
            del x, buf
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            return max(1, b // 2)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            b //= 2
    raise RuntimeError("not even one image fits in GPU memory")
