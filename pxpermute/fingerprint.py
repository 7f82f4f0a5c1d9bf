"""What a run's confusion matrices depend on: configuration fingerprints and digests of model and data.

Checkpoints (:mod:`pxpermute.checkpoint`) record a fingerprint so that a file is
never resumed under another configuration; distributed runs
(:mod:`pxpermute.distributed`) compare the ranks' fingerprints before computing.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["fingerprint", "fingerprint_digest", "describe_difference", "model_digest", "data_digest"]


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def model_digest(predictor: Any) -> str:
    """SHA-256 of a torch model's parameters and buffers (names, dtypes, shapes, values).

    Models that are not torch modules (sklearn estimators, plain callables) are
    identified by their type name only.
    """
    module = getattr(predictor, "module", None) if getattr(predictor, "kind", None) == "torch" else None
    if module is None:
        return "name:" + str(getattr(predictor, "name", type(predictor).__name__))
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def data_digest(src: Any, indices: np.ndarray, n_probe: int = 8) -> str:
    """SHA-256 of the evaluated indices, their labels and up to ``n_probe`` evenly spaced images."""
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
