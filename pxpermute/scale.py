"""Scale and speed for the engine: distributed runs, adaptive k, resumable checkpoints.

Everything here orchestrates :func:`pxpermute.importance.accumulate`, which
streams a set of sample indices once for a range of *global* repeat ids and
returns summable confusion matrices.  Three facts make the features below exact
rather than approximate:

* permutations are a pure function of (seed, sample index, unit, repeat), so a
  sample gets the same perturbation whichever process, batch or chunk handles it;
* confusion matrices over disjoint sample sets add up (distributed shards);
* confusion matrices of disjoint repeat ranges concatenate (chunks of repeats,
  resumed runs, adaptive k).

Distributed
    Under ``torchrun`` -- or any initialized :mod:`torch.distributed` process
    group -- :func:`run_repeats` gives every rank a contiguous shard of the
    sample indices and all-reduces (sums) the confusion matrices after each
    chunk, so every rank ends with the same result, equal to the single-process
    one.  Ranks check that they agree on the configuration (seed, data, model,
    channels) before computing anything.

Adaptive k
    With an :class:`AdaptiveK` rule repeats are added in chunks and the run stops
    once the ranking is settled (see :class:`AdaptiveK` for the rule), at most
    at ``n_repeats``.

Checkpoints
    With ``checkpoint=path`` the accumulated matrices are written after every
    finished chunk (atomically: temporary file + rename, with a SHA-256 checksum
    and a fingerprint of the configuration).  A rerun with the same arguments
    continues from the file and gives the identical final result; a corrupted
    file or one written for another configuration raises :class:`CheckpointError`.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

__all__ = [
    "AdaptiveK",
    "CheckpointError",
    "distributed_context",
    "shard_indices",
    "fingerprint",
    "save_checkpoint",
    "load_checkpoint",
    "run_repeats",
    "ranking_settled",
    "init_distributed",
    "load_model",
    "load_data",
    "runtime_vs_loco",
    "auto_batch_size",
]

CHECKPOINT_MAGIC = b"PXPERMUTE-CHECKPOINT\n"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is corrupted, truncated, or belongs to another configuration."""


# -----------------------------------------------------------------------------
# adaptive k
# -----------------------------------------------------------------------------
@dataclass(frozen=True)
class AdaptiveK:
    """Rule for adding permutation repeats in chunks until the ranking is settled.

    After every chunk of ``chunk`` repeats, once at least ``min_repeats`` are
    done, the run stops if **either**

    1. *the ranking is resolved*: every pair of units adjacent in the current
       ranking is settled, i.e. their ``confidence`` t-intervals of the mean
       importance over repeats are disjoint, **or** their summary importances
       differ by at most ``tol`` times the range of importances (``max - min``)
       -- a tie that more repeats would not usefully order (e.g. two channels
       the model ignores, both near 0; channels with identical repeats are
       always tied) --, **or** both intervals' half-widths are at most ``tol``
       times the range: both are measured precisely enough that more repeats
       could only swap them by a negligible amount; **or**
    2. *the ranking is stable*: the ranking (order of all units) has been the
       same at the last ``patience + 1`` evaluations, i.e. unchanged while
       ``patience * chunk`` repeats were added.

    The run never exceeds ``n_repeats`` (the cap, 100 by default as published);
    ``result.info["n_repeats"]`` is the k actually used and
    ``result.info["adaptive"]`` records the rule and why it stopped.

    Parameters
    ----------
    min_repeats : int, default 20
        Repeats before the first check.
    chunk : int, default 10
        Repeats added between checks.
    patience : int, default 3
        Unchanged consecutive rankings (after the first) required by rule 2.
    confidence : float, default 0.95
        Level of the t-intervals of rule 1.
    tol : float, default 0.02
        Relative tie tolerance of rule 1 (fraction of the importance range).

    Examples
    --------
    >>> rule = AdaptiveK(min_repeats=10, chunk=5)
    >>> rule.checkpoints(30)
    [10, 15, 20, 25, 30]
    """

    min_repeats: int = 20
    chunk: int = 10
    patience: int = 3
    confidence: float = 0.95
    tol: float = 0.02

    def __post_init__(self) -> None:
        for name in ("min_repeats", "chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"AdaptiveK.{name} must be an integer >= 1, got {v!r}")
        if self.min_repeats < 2:
            raise ValueError(f"AdaptiveK.min_repeats must be >= 2 (a confidence interval needs 2 repeats), got {self.min_repeats}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, (int, np.integer)) or self.patience < 1:
            raise ValueError(f"AdaptiveK.patience must be an integer >= 1, got {self.patience!r}")
        if not 0 < float(self.confidence) < 1:
            raise ValueError(f"AdaptiveK.confidence must lie in (0, 1), got {self.confidence!r}")
        if not 0 <= float(self.tol) < 1:
            raise ValueError(f"AdaptiveK.tol must lie in [0, 1), got {self.tol!r}")

    def checkpoints(self, n_repeats: int) -> list[int]:
        """Repeat counts at which the rule is evaluated (the last one is the cap)."""
        pts = list(range(self.min_repeats, n_repeats, self.chunk))
        return [p for p in pts if p < n_repeats] + [n_repeats]

    @classmethod
    def coerce(cls, value: Any) -> "AdaptiveK | None":
        """``False``/``None`` -> None, ``True`` -> defaults, a mapping -> fields, an AdaptiveK as is."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"min_repeats", "chunk", "patience", "confidence", "tol"}
            if unknown:
                raise TypeError(f"unknown adaptive option(s) {sorted(unknown)}; valid: min_repeats, chunk, patience, confidence, tol")
            return cls(**value)
        raise TypeError(f"adaptive must be a bool, a dict of options or an AdaptiveK, got {type(value).__name__}")


def ranking_settled(importances: np.ndarray, *, aggregate: str = "mean", rule: AdaptiveK | None = None,
                    history: list[tuple[int, ...]] | None = None) -> tuple[bool, str]:
    """Evaluate the :class:`AdaptiveK` rule on per-repeat importances ``(R, U)``.

    ``history`` holds the rankings seen at earlier evaluations (oldest first);
    the current ranking is appended to it.  Returns ``(settled, reason)``.

    Examples
    --------
    >>> imp = np.array([[0.5, 0.1, 0.0], [0.52, 0.12, 0.0], [0.49, 0.09, 0.0]])
    >>> ranking_settled(imp)
    (True, 'resolved')
    """
    from scipy import stats

    rule = rule or AdaptiveK()
    imp = np.asarray(importances, dtype=np.float64)
    R, U = imp.shape
    summary = np.median(imp, axis=0) if aggregate == "median" else imp.mean(axis=0)
    order = tuple(int(i) for i in np.argsort(-summary, kind="stable"))
    if history is not None:
        history.append(order)
    if U < 2:
        return True, "single unit"
    mean = imp.mean(axis=0)
    half = (stats.t.ppf(0.5 + rule.confidence / 2, R - 1) * imp.std(axis=0, ddof=1) / math.sqrt(R)) if R > 1 else np.full(U, np.inf)
    tie = rule.tol * float(summary.max() - summary.min())
    resolved = True
    for a, b in zip(order[:-1], order[1:]):
        if abs(summary[a] - summary[b]) <= tie or max(half[a], half[b]) <= tie:
            continue
        if not (mean[a] - half[a] > mean[b] + half[b]):
            resolved = False
            break
    if resolved:
        return True, "resolved"
    if history is not None and len(history) >= rule.patience + 1 and len(set(history[-(rule.patience + 1):])) == 1:
        return True, "stable"
    return False, "unsettled"


# -----------------------------------------------------------------------------
# distributed helpers
# -----------------------------------------------------------------------------
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


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    dev = _reduce_device(t)
    buf = t.to(dev).contiguous()
    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
    return buf.to(t.device)


def _broadcast_object(obj: Any) -> Any:
    lst = [obj]
    torch.distributed.broadcast_object_list(lst, src=0)
    return lst[0]


def agree_seed(random_state: int) -> int:
    """In a distributed run, every rank takes rank 0's seed (``random_state=None`` draws one per rank)."""
    if distributed_context()[1] == 1:
        return random_state
    return int(_broadcast_object(int(random_state)))


def check_ranks_agree(fp: Mapping[str, Any]) -> None:
    """Raise on every rank if the ranks' configuration fingerprints differ."""
    rank, world = distributed_context()
    if world == 1:
        return
    digest = _fingerprint_digest(fp)
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (digest, fp))
    ref_digest, ref = gathered[0]
    for r, (d, other) in enumerate(gathered):
        if d != ref_digest:
            diff = _diff(ref, other)
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


# -----------------------------------------------------------------------------
# fingerprints and checkpoint files
# -----------------------------------------------------------------------------
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


def _fingerprint_digest(fp: Mapping[str, Any]) -> str:
    return _sha(json.dumps(fp, sort_keys=True, default=str).encode())


def _diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
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


def save_checkpoint(path: str | os.PathLike, fp: Mapping[str, Any], baseline: np.ndarray, confusion: np.ndarray,
                    n_forward_images: int, extras: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write a checkpoint atomically (temporary file + fsync + rename).

    Layout: the line ``PXPERMUTE-CHECKPOINT``, one line of JSON header
    (format version, configuration fingerprint, repeats done, payload size and
    SHA-256), then an ``.npz`` payload with ``baseline`` (K, K) and
    ``confusion`` (R, U, K, K), plus ``extra_<name>`` arrays (e.g. bootstrap
    counts pooled over the finished repeats).
    """
    path = Path(path)
    buf = io.BytesIO()
    arrays = {f"extra_{k}": np.asarray(v) for k, v in (extras or {}).items() if v is not None}
    np.savez(buf, baseline=np.asarray(baseline), confusion=np.asarray(confusion), **arrays)
    payload = buf.getvalue()
    header = {
        "format_version": CHECKPOINT_VERSION,
        "fingerprint": dict(fp),
        "fingerprint_sha256": _fingerprint_digest(fp),
        "repeats_done": int(np.asarray(confusion).shape[0]),
        "n_forward_images": int(n_forward_images),
        "payload_bytes": len(payload),
        "payload_sha256": _sha(payload),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    blob = CHECKPOINT_MAGIC + json.dumps(header, sort_keys=True, default=str).encode() + b"\n" + payload
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, fp: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint; returns ``{"baseline", "confusion", "extras", "n_forward_images", "header"}``.

    Raises :class:`CheckpointError` if the file is corrupted or truncated (bad
    header, size or checksum) or, when ``fp`` is given, if it was written for a
    different configuration (the message names what differs).
    """
    path = Path(path)
    blob = path.read_bytes()
    hint = f"delete {path} to start over, or pass another checkpoint path"
    if not blob.startswith(CHECKPOINT_MAGIC):
        raise CheckpointError(f"{path} is not a pxpermute checkpoint (missing header); {hint}")
    rest = blob[len(CHECKPOINT_MAGIC):]
    nl = rest.find(b"\n")
    try:
        header = json.loads(rest[:nl].decode()) if nl >= 0 else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or "payload_sha256" not in header:
        raise CheckpointError(f"checkpoint {path} is corrupted (unreadable header); {hint}")
    if header.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {header.get('format_version')}, "
                              f"this pxpermute reads version {CHECKPOINT_VERSION}; {hint}")
    payload = rest[nl + 1:]
    if len(payload) != header.get("payload_bytes") or _sha(payload) != header["payload_sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated (checksum mismatch); {hint}")
    if header.get("fingerprint_sha256") != _fingerprint_digest(header.get("fingerprint", {})):
        raise CheckpointError(f"checkpoint {path} is corrupted (configuration record does not match its checksum); {hint}")
    if fp is not None and header["fingerprint_sha256"] != _fingerprint_digest(fp):
        raise CheckpointError(
            f"checkpoint {path} was written for a different configuration ({_diff(header['fingerprint'], dict(fp))}); {hint}"
        )
    with np.load(io.BytesIO(payload)) as z:
        baseline, confusion = z["baseline"], z["confusion"]
        extras = {k[len("extra_"):]: z[k] for k in z.files if k.startswith("extra_")}
    if confusion.shape[0] != header["repeats_done"]:
        raise CheckpointError(f"checkpoint {path} is inconsistent (repeat count); {hint}")
    return {"baseline": baseline, "confusion": confusion, "extras": extras,
            "n_forward_images": int(header["n_forward_images"]), "header": header}


# -----------------------------------------------------------------------------
# the orchestration loop
# -----------------------------------------------------------------------------
def _collector_state(collector: Any) -> dict[str, np.ndarray]:
    """Arrays a side collector (e.g. :class:`pxpermute.stats.BootstrapCollector`) pooled so far."""
    if collector is None:
        return {}
    if hasattr(collector, "state"):
        return {k: v for k, v in collector.state().items() if v is not None}
    return {k: getattr(collector, k) for k in ("baseline", "confusion") if getattr(collector, k, None) is not None}


def _collector_load(collector: Any, state: Mapping[str, np.ndarray]) -> None:
    if collector is None or not state:
        return
    if hasattr(collector, "load_state"):
        collector.load_state(dict(state))
    else:
        for k, v in state.items():
            setattr(collector, k, np.asarray(v))


def _reduce_acc(acc: Any) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    base, conf, nf = acc.baseline, acc.confusion, int(acc.n_forward_images)
    if distributed_context()[1] > 1:
        if base is not None:
            base = _all_reduce_sum(base)
        conf = _all_reduce_sum(conf)
        nf = int(_all_reduce_sum(torch.tensor([nf], dtype=torch.int64, device=conf.device)).item())
    return base, conf, nf


def run_repeats(
    plan: Any,
    indices: np.ndarray,
    n_repeats: int,
    *,
    accumulate: Callable[..., Any],
    adaptive: AdaptiveK | None = None,
    chunk: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    fp: Mapping[str, Any] | None = None,
    score: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    aggregate: str = "mean",
    progress: bool = False,
    desc: str = "",
    collector: Any = None,
) -> dict[str, Any]:
    """Run ``accumulate`` over repeat chunks, shards and checkpoints; return summed matrices.

    Parameters
    ----------
    plan, accumulate
        The engine's plan and :func:`pxpermute.importance.accumulate`.
    indices : ndarray
        Sample indices evaluated (all of them; each rank takes its shard).
    n_repeats : int
        Repeats wanted (the cap when ``adaptive`` is given).
    adaptive : AdaptiveK, optional
        Stop early once the ranking is settled (needs ``score``).
    chunk : int, optional
        Repeats per chunk without ``adaptive`` (default: all at once, or 10
        with a checkpoint).
    checkpoint : path, optional
        Partial-result file, written after every chunk (rank 0) and resumed from.
    fp : mapping
        Configuration fingerprint (required with ``checkpoint``; checked across ranks).
    score : callable (baseline (K, K), confusion (R, U, K, K)) -> importances (R, U)
        Used by the adaptive rule.
    collector : optional
        Side accumulator fed by a wrapped ``accumulate`` with counts pooled over
        repeats (the bootstrap); its arrays (``state()``/``load_state()``, else
        its ``baseline``/``confusion`` attributes) are saved in and restored
        from the checkpoint.  Pooled counts cannot be cut to fewer repeats, so
        resuming from a checkpoint with more repeats than used raises.

    Returns
    -------
    dict with ``baseline`` (K, K) and ``confusion`` (R, U, K, K) numpy arrays,
    ``n_forward_images`` (this run, all ranks), ``n_repeats`` (k used),
    ``resumed_repeats``, ``world_size``, ``adaptive`` (info dict or None).
    """
    rank, world = distributed_context()
    if fp is not None:
        check_ranks_agree(fp)
    if checkpoint is not None and fp is None:
        raise ValueError("a checkpoint needs the configuration fingerprint fp")
    if adaptive is not None:
        points = adaptive.checkpoints(n_repeats)
    else:
        step = int(chunk) if chunk else (10 if checkpoint is not None else n_repeats)
        points = list(range(step, n_repeats, step)) + [n_repeats]
    local = shard_indices(np.asarray(indices, dtype=np.int64), rank, world)

    # resume
    base_np: np.ndarray | None = None
    conf_parts: list[np.ndarray] = []
    done = loaded = 0
    if checkpoint is not None:
        state: Any = None
        if rank == 0 and Path(checkpoint).exists():
            try:
                state = load_checkpoint(checkpoint, fp)
            except CheckpointError as err:
                state = err
        if world > 1:
            state = _broadcast_object(state)
        if isinstance(state, Exception):
            raise state
        if state is not None:
            base_np = state["baseline"]
            conf_parts = [state["confusion"][:n_repeats]]
            done = conf_parts[0].shape[0]
            loaded = state["confusion"].shape[0]
            _collector_load(collector, state.get("extras", {}))
    resumed = done
    n_forward = 0

    from tqdm.auto import tqdm

    prev = 0
    total = 0
    for p in points:
        if p > done:
            total += plan.n_passes(len(local), p - max(prev, done), with_baseline=False)
        prev = p
    total += 0 if base_np is not None else math.ceil(len(local) / plan.block_size(max(len(local), 1)))
    bar = tqdm(total=total, disable=not progress, desc=desc, unit="pass")
    history: list[tuple[int, ...]] = []
    info_adaptive = None
    stopped = "cap"
    k = done
    try:
        for p in points:
            if p > done:
                acc = accumulate(plan, local, range(done, p), with_baseline=base_np is None, bar=bar)
                b, c, nf = _reduce_acc(acc)
                if base_np is None:
                    base_np = b.cpu().numpy()
                conf_parts.append(c.cpu().numpy())
                n_forward += nf
                done = p
                if checkpoint is not None and rank == 0:
                    save_checkpoint(checkpoint, fp, base_np, np.concatenate(conf_parts), n_forward,
                                    extras=_collector_state(collector))
            k = p
            if adaptive is not None and p >= adaptive.min_repeats and p < n_repeats:
                conf = np.concatenate(conf_parts)[:p]
                settled, why = ranking_settled(score(base_np, conf), aggregate=aggregate, rule=adaptive, history=history)
                if settled:
                    stopped = why
                    break
    finally:
        bar.close()
    confusion = np.concatenate(conf_parts)[:k]
    if loaded > k and _collector_state(collector):
        raise CheckpointError(
            f"checkpoint {checkpoint} holds {loaded} repeats but this run uses {k}; the bootstrap counts in it are "
            "pooled over all of them and cannot be cut: use n_repeats >= the checkpoint's repeats or a new checkpoint"
        )
    if adaptive is not None:
        info_adaptive = dict(asdict(adaptive), cap=int(n_repeats), k_used=int(k), stopped=stopped,
                             evaluations=len(history))
    return {"baseline": base_np, "confusion": confusion, "n_forward_images": int(n_forward), "n_repeats": int(k),
            "resumed_repeats": int(min(resumed, k)), "world_size": int(world), "adaptive": info_adaptive}


# -----------------------------------------------------------------------------
# files for the command line: saved models and data
# -----------------------------------------------------------------------------
def load_model(path: str | os.PathLike, *, map_location: str | None = "cpu") -> torch.nn.Module:
    """Load a TorchScript file or a ``torch.save``-d full ``nn.Module``.

    A full-module pickle executes code when loaded (``weights_only=False``):
    only load model files you trust.  A bare ``state_dict`` is rejected with an
    explanation, since it does not say which architecture to build.

    Examples
    --------
    >>> model = load_model("model.pt")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still the portable format
            return torch.jit.load(str(path), map_location=map_location)
    except Exception:
        pass
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"{path} is neither a TorchScript file nor a torch.save'd model: {type(err).__name__}: {err}") from err
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, Mapping):
        raise TypeError(
            f"{path} holds a {type(obj).__name__} (a state_dict?), not a model; save the whole module "
            "(torch.save(model, path)) or a TorchScript file (torch.jit.script(model).save(path))"
        )
    if callable(obj):
        return obj
    raise TypeError(f"{path} holds a {type(obj).__name__}, expected an nn.Module or TorchScript model")


def load_data(path: str | os.PathLike) -> Any:
    """Open an HDF5 file written by :func:`~pxpermute.datasets.write_hdf5_dataset` (lazily) or an ``.npz`` with ``X``, ``y``.

    Returns an :class:`~pxpermute.IFCDataset`.

    Examples
    --------
    >>> ds = load_data("test.h5")  # doctest: +SKIP
    """
    from .datasets import IFCDataset, load_hdf5_dataset

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf"):
        return load_hdf5_dataset(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            missing = {"X", "y"} - set(z.files)
            if missing:
                raise ValueError(f"{path} must contain arrays 'X' (N, C, H, W) and 'y' (N,); missing {sorted(missing)}, found {z.files}")
            kw: dict[str, Any] = {}
            for key in ("channel_names", "class_names"):
                if key in z.files:
                    kw[key] = [str(s) for s in z[key]]
            X, y = z["X"], z["y"]
        if X.ndim != 4:
            raise ValueError(f"{path}: X must have shape (N, C, H, W), got {X.shape}")
        return IFCDataset(X.astype(np.float32, copy=False), y, name=path.stem, **kw)
    raise ValueError(f"unsupported data file {path}: expected .h5/.hdf5 (pxpermute HDF5) or .npz with X, y")


# -----------------------------------------------------------------------------
# run time: PXPermute vs leave-one-channel-out retraining
# -----------------------------------------------------------------------------
def runtime_vs_loco(
    dataset: Any,
    *,
    n_splits: int = 5,
    folds: int | None = None,
    n_repeats: int = 100,
    adaptive: bool = True,
    random_state: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = False,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Measure PXPermute against leave-one-channel-out (LOCO) retraining on the same data and hardware.

    The paper's protocol (Shetab Boushehri et al. 2024: per fold 65 min for
    PXPermute vs 364 min for LOCO on WBC, 5.6x): stratified cross-validation with
    all channels (:func:`pxpermute.training.cross_validate`) gives the models;
    PXPermute runs with each fold's model on that fold's test cells (``n_repeats``
    and, with ``adaptive``, adaptive k); LOCO retrains once per left-out channel
    on the same fold (:func:`pxpermute.training.train_classifier`, the same
    recipe and seed as the cross-validation), importance = F1-macro drop on
    the fold's test cells.  Per fold LOCO costs C trainings (C + 1 counting the
    all-channel model, the paper's convention) and PXPermute one importance
    run.  All in one process, so the ratios are measured under the same load.

    Parameters
    ----------
    dataset : IFCDataset
    n_splits : int
        Cross-validation folds (for every training).
    folds : int, optional
        Run PXPermute and LOCO on only the first ``folds`` folds (seconds are per fold).
    n_repeats, adaptive, random_state, batch_size, device, progress
        PXPermute settings (``random_state`` also seeds the training).
    **train_kwargs
        Training recipe for every model (``model``, ``max_epochs`` ...).

    Returns
    -------
    dict
        Seconds per fold (``train_s_per_model``, ``pxpermute_s_per_fold``,
        ``loco_s_per_fold``, ``loco_s_per_fold_paper``), the ``speedup`` ratios,
        per-fold importances of both methods (``pxpermute_importance``,
        ``loco_importance``, arrays (folds, C)), their rankings and Spearman rho.
    ``train_s_per_model`` comes from the all-channel cross-validation.

    Examples
    --------
    >>> from pxpermute.datasets.synthetic import make_synthetic
    >>> ds = make_synthetic("apoptotic", n_samples=200, image_size=16)  # doctest: +SKIP
    >>> r = runtime_vs_loco(ds, n_splits=2, n_repeats=10, model="small_cnn", max_epochs=2)  # doctest: +SKIP
    >>> r["speedup"]  # doctest: +SKIP
    """
    from scipy.stats import spearmanr

    from .importance import channel_importance
    from .metrics import compute_metric, confusion_matrix
    from .training import cross_validate, train_classifier

    C = dataset.n_channels
    if C < 2:
        raise ValueError("leave-one-channel-out needs at least 2 channels")
    kw = dict(train_kwargs, device=device)
    t = time.perf_counter()
    ref = cross_validate(dataset, n_splits=n_splits, random_state=random_state, progress=progress, **kw)
    t_ref = time.perf_counter() - t
    n_folds = min(folds or n_splits, n_splits)
    px_s, pxa_s, px_imp, pxa_k = [], [], [], []
    for f in range(n_folds):
        test = dataset.subset(ref.test_indices[f])
        opts = dict(n_repeats=n_repeats, random_state=random_state, batch_size=batch_size, device=device, progress=progress)
        t = time.perf_counter()
        res = channel_importance(ref.models[f], test, **opts)
        px_s.append(time.perf_counter() - t)
        px_imp.append(res.importance)
        if adaptive:
            t = time.perf_counter()
            ra = channel_importance(ref.models[f], test, adaptive=True, **opts)
            pxa_s.append(time.perf_counter() - t)
            pxa_k.append(int(ra.info["n_repeats"]))
    loco_s, loco_imp = [], []
    present = np.bincount(dataset.labels, minlength=dataset.n_classes) > 0
    for f in range(n_folds):
        te = ref.test_indices[f]
        x_te, y_te = dataset.get_batch(np.asarray(te))
        t = time.perf_counter()
        drops = []
        for c in range(C):
            keep = [i for i in range(C) if i != c]
            net = train_classifier(dataset, train_indices=ref.train_indices[f], channels=keep,
                                   random_state=random_state, **kw)
            pred = np.asarray(net.predict(np.ascontiguousarray(x_te[:, keep])))
            f1 = compute_metric(confusion_matrix(y_te, pred, dataset.n_classes), "f1_macro", present)[0]
            drops.append(float(ref.f1_macro[f]) - float(f1))
        loco_s.append(time.perf_counter() - t)
        loco_imp.append(drops)
    px_imp_a, loco_imp_a = np.array(px_imp), np.array(loco_imp)
    train = t_ref / n_splits
    loco = float(np.mean(loco_s))
    px = float(np.mean(px_s))
    names = list(dataset.channel_names)
    out: dict[str, Any] = {
        "data": dataset.name, "n_samples": len(dataset), "image_shape": list(dataset.image_shape),
        "n_channels": C, "n_splits": n_splits, "pxpermute_folds": n_folds, "n_repeats": n_repeats,
        "model": str(train_kwargs.get("model", "resnet18")), "max_epochs": train_kwargs.get("max_epochs"),
        "epochs_trained": [int(len(m.history)) for m in ref.models],
        "f1_macro_all_channels": float(np.mean(ref.f1_macro)),
        "train_s_per_model": train, "pxpermute_s_per_fold": px,
        "loco_s_per_fold": loco, "loco_s_per_fold_paper": loco + train,
        "speedup": loco / px, "speedup_paper": (loco + train) / px,
        "pxpermute_importance": px_imp_a, "loco_importance": loco_imp_a,
        "pxpermute_ranking": [names[i] for i in np.argsort(-px_imp_a.mean(0), kind="stable")],
        "loco_ranking": [names[i] for i in np.argsort(-loco_imp_a.mean(0), kind="stable")],
        "spearman": float(spearmanr(px_imp_a.mean(0), loco_imp_a.mean(0)).statistic),
    }
    if adaptive:
        out.update(pxpermute_adaptive_s_per_fold=float(np.mean(pxa_s)), adaptive_k_used=pxa_k,
                   speedup_adaptive=loco / float(np.mean(pxa_s)))
    return out


# -----------------------------------------------------------------------------
# batch size
# -----------------------------------------------------------------------------
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
        The engine's wrapped model (:func:`pxpermute.importance.as_predictor`).
    image_shape : (C, H, W)
    n_classes : int

    Examples
    --------
    >>> from pxpermute.importance import as_predictor
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
