"""What a run's confusion matrices depend on: configuration fingerprints and digests of model and data.

Checkpoints (:mod:`pxpermute.checkpoint`) record a fingerprint so that a file is
never resumed under another configuration; distributed runs
(:mod:`pxpermute.distributed`) compare the ranks' fingerprints before computing.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import pickle
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .predictor import wrapped_modules

__all__ = ["fingerprint", "fingerprint_digest", "describe_difference", "model_digest", "data_digest", "StreamDigest"]


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def _code_identity(obj: Any) -> str:
    """Qualified name plus a hash of the code: the source if available, else the bytecode."""
    fn = obj.__func__ if inspect.ismethod(obj) else obj
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    try:
        code = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        co = getattr(fn, "__code__", None)
        code = (co.co_code + repr(co.co_consts).encode() + repr(co.co_names).encode()) if co is not None else b""
    return f"{name}:{_sha(code)[:16] if code else 'no-code'}"


def _module_digest(module: torch.nn.Module, h: Any) -> None:
    """Feed the code (class and ``forward`` of every submodule type) and the state of ``module`` into ``h``."""
    for cls in dict.fromkeys(type(m) for m in module.modules()):
        h.update(_code_identity(cls).encode())
        fwd = getattr(cls, "forward", None)
        if fwd is not None:
            h.update(_code_identity(fwd).encode())
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())


def model_digest(predictor: Any) -> str:
    """SHA-256 of a model's code identity and its weights.

    * torch modules (skorch nets through their ``module_``): the class and the
      source of ``forward`` of every submodule type, and all parameters and
      buffers (names, dtypes, shapes, values) -- another ``forward`` with the
      same weights, or other weights, give another digest;
    * sklearn-style estimators and callable objects: their pickled state (all
      fitted attributes), when they can be pickled;
    * functions and lambdas: their code, plus every torch module they use that
      can be seen (closure, bound ``self``, ``functools.partial`` arguments,
      global names).

    A model that can be identified only by its name and code (not picklable,
    no visible module) draws a ``UserWarning``: a resumed run cannot tell
    whether its weights changed.
    """
    h = hashlib.sha256()
    if getattr(predictor, "kind", None) == "torch":
        _module_digest(predictor.module, h)
        return h.hexdigest()
    model = getattr(predictor, "model", predictor)
    h.update(str(getattr(predictor, "name", type(model).__name__)).encode())
    h.update(_code_identity(model if inspect.isfunction(model) or inspect.ismethod(model) else type(model)).encode())
    modules = wrapped_modules(model)
    for m in modules:
        _module_digest(m, h)
    identified = bool(modules)
    if not identified and not inspect.isfunction(model):
        try:
            h.update(pickle.dumps(model, protocol=4))
            identified = True
        except Exception:  # noqa: BLE001 - any pickling failure means: identified by name and code only
            pass
    if not identified:
        warnings.warn(
            f"the model ({getattr(predictor, 'name', type(model).__name__)}) can only be identified by its name and "
            "code, not by its weights or the data it closes over: a checkpoint cannot tell whether it changed. "
            "Delete the checkpoint after changing the model, or pass the nn.Module itself",
            UserWarning, stacklevel=3,
        )
    return h.hexdigest()


class StreamDigest:
    """Digest of every evaluated sample (index, image, label), computed while the engine streams the data.

    Each sample is hashed once (BLAKE2b, 256 bits) and the hashes are added as
    four 64-bit lanes modulo 2**64, so the digest does not depend on the batch
    size, on the order of blocks, or on how samples are sharded over processes
    (shards add up, see :meth:`add`).  Costs one pass of hashing over bytes the
    engine reads anyway.

    >>> import numpy as np
    >>> a, b = StreamDigest(), StreamDigest()
    >>> x = np.zeros((4, 1, 2, 2), np.float32); y = np.arange(4)
    >>> a.update(np.arange(4), x, y); b.update(np.arange(2, 4), x[2:], y[2:]); b.update(np.arange(2), x[:2], y[:2])
    >>> a.hexdigest() == b.hexdigest()
    True
    """

    def __init__(self) -> None:
        self.lanes = np.zeros(4, np.uint64)
        self.count = 0

    def update(self, idx: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        idx = np.asarray(idx, dtype=np.int64)
        acc = self.lanes
        with np.errstate(over="ignore"):
            for i in range(len(idx)):
                h = hashlib.blake2b(idx[i].tobytes(), digest_size=32)
                h.update(y[i].tobytes())
                h.update(x[i].tobytes())
                acc += np.frombuffer(h.digest(), np.uint64)
        self.count += len(idx)

    def add(self, lanes: np.ndarray, count: int) -> None:
        """Add another shard's lanes and sample count."""
        with np.errstate(over="ignore"):
            self.lanes += np.asarray(lanes, dtype=np.uint64)
        self.count += int(count)

    def hexdigest(self) -> str:
        return f"{self.count}:" + self.lanes.tobytes().hex()


def data_digest(src: Any, indices: np.ndarray, n_probe: int = 8) -> str:
    """SHA-256 of the evaluated indices, their labels and up to ``n_probe`` evenly spaced images.

    A cheap first check before a run; every evaluated image is covered by
    :class:`StreamDigest`, which the runner computes while streaming and
    compares with the checkpoint's.
    """
    indices = np.asarray(indices, dtype=np.int64)
    parts = [str(tuple(src.image_shape)).encode(), str(int(src.n)).encode(), indices.tobytes()]
    if len(indices):
        probe = np.unique(indices[np.linspace(0, len(indices) - 1, min(n_probe, len(indices))).round().astype(int)])
        x, y = src.read(probe)
        parts += [np.ascontiguousarray(x, dtype=np.float32).tobytes(), np.asarray(y, dtype=np.int64).tobytes()]
    if getattr(src, "labels", None) is not None:
        parts.append(np.asarray(src.labels, dtype=np.int64)[indices].tobytes())
    return _sha(*parts)


def fingerprint(*, random_state: int, perturbation: str, units: list[list[int]], unit_names: list[str],
                class_names: list[str], shared_group_permutation: bool, fill_value: float | None,
                model: str, data: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the accumulated confusion matrices depend on (metric and aggregate excluded)."""
    fp = {
        "random_state": int(random_state),
        "perturbation": perturbation,
        "units": [[int(c) for c in u] for u in units],
        "unit_names": list(unit_names),
        "class_names": list(class_names),
        "shared_group_permutation": bool(shared_group_permutation),
        "fill_value": None if fill_value is None else float(fill_value),
        "model": model,
        "data": data,
    }
    fp.update(dict(extra or {}))
    return fp


def fingerprint_digest(fp: Mapping[str, Any]) -> str:
    return _sha(json.dumps(fp, sort_keys=True, default=str).encode())


def describe_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        if a.get(k) != b.get(k):
            va, vb = a.get(k), b.get(k)
            if isinstance(va, str) and len(va) == 64 and isinstance(vb, str) and len(vb) == 64:
                out.append(f"{k} differs")
            else:
                out.append(f"{k}: {va!r} vs {vb!r}")
    return "; ".join(out) or "no difference"
