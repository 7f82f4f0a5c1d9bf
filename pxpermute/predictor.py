"""The predictor: any supported model as ``images -> predicted labels``, and the batch size that fits.

:func:`as_predictor` wraps a torch ``nn.Module`` returning logits, a skorch /
sklearn-style estimator with ``predict``, or any callable returning scores or
labels; :func:`auto_batch_size` picks the engine's batch size for a device.
"""
from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["as_predictor", "Predictor", "auto_batch_size", "as_output_tensor", "preserve_model_state",
           "wrapped_modules", "DeferredChecks"]


def _first_conv_channels(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d)):
            return int(m.in_channels)
    return None


def wrapped_modules(model: Any) -> list[nn.Module]:
    """The torch modules a model uses, as far as they can be seen without running it.

    The model itself (or a skorch net's ``module_``); for a callable, modules
    bound to it (a bound method's ``self``), captured in its closure, given to a
    ``functools.partial``, or held as attributes of a callable object.
    """
    if isinstance(model, nn.Module):
        return [model]
    found: list[nn.Module] = []

    def add(obj: Any) -> None:
        if isinstance(obj, nn.Module) and all(obj is not m for m in found):
            found.append(obj)

    add(getattr(model, "module_", None))
    if isinstance(model, functools.partial):
        for a in (*model.args, *model.keywords.values()):
            add(a)
        model = model.func
        add(model)
    add(getattr(model, "__self__", None))
    for cell in getattr(model, "__closure__", None) or ():
        try:
            add(cell.cell_contents)
        except ValueError:  # empty cell
            pass
    code = getattr(model, "__code__", None)
    glb = getattr(model, "__globals__", None)
    if code is not None and isinstance(glb, dict):  # modules a lambda / function refers to by global name
        for name in code.co_names:
            add(glb.get(name))
    if not inspect.isfunction(model) and not inspect.ismethod(model):
        for v in list(getattr(model, "__dict__", {}).values()):
            add(v)
    return found


def _train_mode_layers(modules: list[nn.Module]) -> list[str]:
    """Names of batch-norm / dropout layers in training mode inside ``modules``."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return [f"{name or type(m).__name__} ({type(m).__name__})" for mod in modules
            for name, m in mod.named_modules() if isinstance(m, kinds) and m.training]


class preserve_model_state:
    """Context manager: restore a torch model's train/eval flags and device on exit.

    The engine puts an ``nn.Module`` in eval mode (and on ``device=``) for the
    run; the caller's object gets its per-layer modes and, when all its
    parameters and buffers sat on one device, that device back afterwards,
    also when the run fails.
    """

    def __init__(self, model: Any) -> None:
        self.modules = [m for m in wrapped_modules(model) if isinstance(model, nn.Module) or m is getattr(model, "module_", None)]

    def __enter__(self) -> preserve_model_state:
        self.modes = [{m: m.training for m in mod.modules()} for mod in self.modules]
        self.devices = []
        for mod in self.modules:
            devs = {t.device for t in (*mod.parameters(), *mod.buffers())}
            self.devices.append(devs.pop() if len(devs) == 1 else None)
        return self

    def __exit__(self, *exc: Any) -> None:
        for mod, modes, dev in zip(self.modules, self.modes, self.devices):
            if dev is not None:
                mod.to(dev)
            for m, training in modes.items():
                m.training = training


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
            # the dtype the model computes in (float64 / float16 models get their input cast to it)
            self.input_dtype = next((t.dtype for t in (*module.parameters(), *module.buffers())
                                     if t.is_floating_point()), None)
        elif hasattr(model, "predict") and callable(model.predict):
            self.kind = "sklearn"
            self.model = model
            self.device = torch.device(device or "cpu")
            self.expected_channels = getattr(model, "n_channels_", None)
            self.input_dtype = None
        elif callable(model):
            self.kind = "callable"
            self.model = model
            self.device = torch.device(device or "cpu")
            self.expected_channels = None
            self.input_dtype = None
        else:
            raise TypeError(
                "model must be a torch nn.Module returning logits, an object with .predict "
                f"(sklearn / skorch), or a callable returning scores or labels; got {type(model).__name__}"
            )
        if self.kind != "torch":
            busy = _train_mode_layers(wrapped_modules(model))
            if busy:
                warnings.warn(
                    f"the model wraps torch layers in training mode ({', '.join(busy[:3])}"
                    f"{' ...' if len(busy) > 3 else ''}): batch-norm statistics change and dropout is random "
                    "while importances are computed, so the result depends on the batch size; call .eval() "
                    "on the network first, or pass the nn.Module itself",
                    UserWarning, stacklevel=3,
                )

    def raw(self, x: torch.Tensor) -> Any:
        if self.kind == "torch":
            if self.input_dtype is not None and x.is_floating_point() and x.dtype != self.input_dtype:
                x = x.to(self.input_dtype)
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

    def __call__(self, x: torch.Tensor, n_classes: int, *, deferred: DeferredChecks | None = None) -> torch.Tensor:
        out = as_output_tensor(self.raw(x))
        out = out.to(x.device)
        if deferred is not None and out.ndim == 2 and out.shape[0] == x.shape[0] and out.shape[1] == n_classes >= 2:
            # (B, K) scores: argmax lies in [0, K) by construction; the NaN/inf check is counted on the
            # device and raised once by ``deferred.raise_if_bad()`` -- no device sync per forward pass
            deferred.add(out)
            return out.argmax(dim=1)
        if out.is_floating_point() and not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out.reshape(len(out), -1))).any(1).sum()) if out.ndim else 1
            raise ValueError(
                f"the model returned NaN or inf outputs for {bad} of {x.shape[0]} images; predictions from "
                "non-finite scores are meaningless. Check the model (NaN weights, overflow in float16, a "
                "log of 0) or the input scaling"
            )
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


class DeferredChecks:
    """The model-output check of many forward passes, counted on the device and raised once.

    ``_Predictor(x, K, deferred=checks)`` adds the number of score rows with
    NaN or inf to a device counter instead of reading it back after every pass
    (each read is a host-device sync on a GPU); :meth:`raise_if_bad` reads it
    once and raises the same ValueError the immediate check raises.
    """

    def __init__(self, device: torch.device) -> None:
        self.bad = torch.zeros((), dtype=torch.int64, device=device)
        self.n = 0

    def add(self, out: torch.Tensor) -> None:
        if out.is_floating_point():
            self.bad += (~torch.isfinite(out)).any(1).sum()
        self.n += int(out.shape[0])

    def raise_if_bad(self) -> None:
        bad = int(self.bad)
        if bad:
            raise ValueError(
                f"the model returned NaN or inf outputs for {bad} of {self.n} images; predictions from "
                "non-finite scores are meaningless. Check the model (NaN weights, overflow in float16, a "
                "log of 0) or the input scaling"
            )


def as_output_tensor(out: Any) -> torch.Tensor:
    """A model's output as a tensor, or a ValueError saying what arrived and how to adapt the model."""
    if isinstance(out, torch.Tensor):
        return out
    fix = "the engine needs (B, K) scores or (B,) integer labels"
    if out is None:
        raise ValueError(f"the model returned None; {fix} (does forward end with a return statement?)")
    if isinstance(out, dict) or hasattr(out, "keys"):
        keys = list(out.keys())[:5]
        raise ValueError(f"the model returned a {type(out).__name__} with keys {keys}; {fix}: pass a wrapper, "
                         f"e.g. lambda x: model(x)[{keys[0]!r}]" if keys else f"the model returned an empty mapping; {fix}")
    if isinstance(out, tuple) or (isinstance(out, list) and any(isinstance(o, torch.Tensor) for o in out)):
        raise ValueError(f"the model returned a {type(out).__name__} of {len(out)} items; {fix}: pass a wrapper "
                         "that picks the scores, e.g. lambda x: model(x)[0]")
    try:
        arr = np.asarray(out)
    except ValueError as err:
        raise ValueError(f"the model returned a {type(out).__name__} that is not an array ({err}); {fix}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"the model returned a {type(out).__name__} of dtype {arr.dtype}; {fix} "
                         "(labels as class indices, not names)")
    return torch.as_tensor(arr)


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
