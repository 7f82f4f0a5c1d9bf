"""Loading models and data from files, safely (no code from a file runs unless you opt in).

A model file is one of

* a **TorchScript** archive (``torch.jit.script(model).save(path)``): runs in the
  TorchScript interpreter, no Python code from the file is executed;
* a **pxpermute weights file** (:func:`save_model`): a ``state_dict`` plus the name
  and shape of the architecture, read with ``torch.load(weights_only=True)``;
* a bare **state_dict** (``torch.save(model.state_dict(), path)``, or a
  ``.safetensors`` file when the ``safetensors`` package is installed) together
  with the architecture given by name: ``load_model(path, arch="resnet18")``
  (channels and classes are read from the weights' shapes);
* a whole pickled ``nn.Module`` (``torch.save(model, path)``): unpickling it runs
  code named in the file, so :func:`load_model` refuses it with
  :class:`UnsafeModelFileError` unless ``trust_pickle=True``.

Deciding which kind a file is never executes its code: the zip's member names
are inspected, ``torch.load(weights_only=True)`` (a restricted unpickler that
builds only tensors and plain containers) is tried, and for the refusal message
the pickle's opcodes are read with :mod:`pickletools` to name the classes it
would import.

Data files (:func:`load_data`): HDF5 in the package's layout (written by
:func:`pxpermute.datasets.write_hdf5_dataset`, read lazily) or with ``X``/``y``
datasets (as the published apoptotic-cell file), and ``.npz`` archives with ``X``
(N, C, H, W) and ``y`` (N,) (or ``images``/``labels``), read without pickle.

Examples
--------
>>> import tempfile, torch
>>> from pxpermute.models import SmallCNN
>>> d = tempfile.mkdtemp()
>>> net = SmallCNN(3, 2, width=4)
>>> torch.save(net.state_dict(), f"{d}/weights.pt")
>>> model = load_model(f"{d}/weights.pt", arch="small_cnn")
>>> model(torch.zeros(1, 3, 16, 16)).shape
torch.Size([1, 2])
"""
from __future__ import annotations

import io as _io
import os
import pickletools
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ModelFileError",
    "UnsafeModelFileError",
    "DataFileError",
    "ModelDataMismatchError",
    "ModelFileInfo",
    "inspect_model_file",
    "load_model",
    "save_model",
    "load_data",
    "check_model_fits",
    "ARCHITECTURES",
    "Download",
    "FileStatus",
    "download_catalog",
    "download_status",
    "fetch",
]

#: architectures a state_dict can be loaded into (built by :func:`pxpermute.models.build_model`)
ARCHITECTURES: tuple[str, ...] = ("resnet18", "small_cnn")
MODEL_FORMAT = "pxpermute-model"
MODEL_FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, unreadable, truncated, or holds something that is not a usable model."""


class UnsafeModelFileError(ModelFileError):
    """A model file is a pickled Python object: loading it would run code from the file."""


class DataFileError(ValueError):
    """A data file is missing, unreadable, truncated, or not in a supported layout."""


class ModelDataMismatchError(ValueError):
    """The model cannot be applied to the data (channels, image size or number of classes differ)."""


@dataclass
class ModelFileInfo:
    """What a model file holds, found without running any code from it.

    Attributes
    ----------
    path : Path
    kind : str
        ``"torchscript"``, ``"pxpermute"`` (weights + architecture, :func:`save_model`),
        ``"state_dict"``, ``"safetensors"`` or ``"pickle"`` (a whole pickled object).
    arch, n_channels, n_classes : optional
        Recorded in a pxpermute weights file.
    model_kwargs : dict
    channel_names, class_names : list of str, optional
        Recorded in a pxpermute weights file.
    imports : list of str
        ``module.name`` of every class or function a pickle would import (kind ``"pickle"``).
    n_tensors : int
        Tensors in a state_dict.
    """

    path: Path
    kind: str
    arch: str | None = None
    n_channels: int | None = None
    n_classes: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    channel_names: list[str] | None = None
    class_names: list[str] | None = None
    imports: list[str] = field(default_factory=list)
    n_tensors: int = 0


# ---------------------------------------------------------------------------------------------
# inspecting a model file (never runs its code)
# ---------------------------------------------------------------------------------------------
def _pickle_imports(blob: bytes, limit: int = 200_000) -> list[str]:
    """``module.name`` of the globals a pickle references, read from its opcodes (nothing is executed)."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for i, (op, arg, _pos) in enumerate(pickletools.genops(_io.BytesIO(blob))):
            if i > limit:
                break
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif op.name == "STOP":
                break
    except Exception:  # truncated or not a pickle: report what was read
        pass
    seen: dict[str, None] = {}
    for n in names:
        seen.setdefault(n, None)
    return list(seen)


_SAFE_IMPORT_PREFIXES = ("collections.OrderedDict", "torch._utils._rebuild", "torch.FloatStorage", "torch.LongStorage",
                         "torch.storage", "torch._tensor", "torch.device", "builtins.set", "builtins.frozenset",
                         "torch.Size", "numpy.", "_codecs.encode", "builtins.bytearray", "__builtin__.set")


def _unsafe_imports(imports: Sequence[str]) -> list[str]:
    out = [n for n in imports if not n.startswith(_SAFE_IMPORT_PREFIXES) and not n.endswith("Storage")]
    return out or list(imports)


def _zip_members(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return None


def _is_torchscript(members: Sequence[str]) -> bool:
    return any("/code/" in m or m.startswith("code/") for m in members) and any(
        m.endswith("constants.pkl") for m in members
    )


def _data_pkl(path: Path, members: Sequence[str] | None) -> bytes:
    try:
        if members is not None:
            name = next((m for m in members if m.endswith("data.pkl")), None)
            if name is None:
                return b""
            with zipfile.ZipFile(path) as zf:
                return zf.read(name)
        with open(path, "rb") as fh:
            return fh.read(4 << 20)
    except Exception:
        return b""


def _legacy_imports(path: Path) -> list[str]:
    """Globals of the pickles in a legacy (non-zip) ``torch.save`` file or a plain pickle file."""
    blob = _data_pkl(path, None)
    names: list[str] = []
    # a legacy torch file is several pickles in a row (magic number, protocol, sys info, object)
    buf = _io.BytesIO(blob)
    for _ in range(4):
        start = buf.tell()
        try:
            for _op in pickletools.genops(buf):  # stops after STOP
                pass
        except Exception:
            names += _pickle_imports(blob[start:])
            break
        names += _pickle_imports(blob[start:buf.tell()])
        if buf.tell() >= len(blob):
            break
    return list(dict.fromkeys(names))


def _check_exists(path: str | os.PathLike, what: str, error: type[Exception]) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} path must be a str or path-like, got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise error(f"{what} {p} does not exist")
    if p.is_dir():
        raise error(f"{what} {p} is a folder, expected a file")
    try:
        with open(p, "rb"):
            pass
    except OSError as err:
        raise error(f"cannot read {what} {p}: {err.strerror or err}") from err
    if p.stat().st_size == 0:
        raise error(f"{what} {p} is empty (0 bytes)")
    return p


def _safe_torch_load(p: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``; errors become :class:`ModelFileError`/:class:`UnsafeModelFileError`."""
    import pickle

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text or "weights_only" in text:
            members = _zip_members(p)
            imports = _pickle_imports(_data_pkl(p, members)) if members is not None else _legacy_imports(p)
            raise UnsafeModelFileError(_unsafe_message(p, imports)) from err
        raise ModelFileError(
            f"{p} is not a readable model file (truncated or corrupted?): {_first_line(text)}") from err
    except Exception as err:
        raise ModelFileError(
            f"{p} is not a readable model file (truncated or corrupted?): {type(err).__name__}: {_first_line(str(err))}"
        ) from err


def _first_line(text: str, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _unsafe_message(p: Path, imports: Sequence[str]) -> str:
    shown = _unsafe_imports(imports)[:4]
    what = f" (it imports {', '.join(shown)})" if shown else ""
    return (
        f"{p} is a pickled Python object{what}; loading it would run code from the file, so it is refused. "
        "Save the model as TorchScript (torch.jit.script(model).save(path)) or as weights "
        "(pxpermute.io.save_model or torch.save(model.state_dict(), path)) and pass --arch, "
        "or, only if you trust where the file comes from, allow it with --trust-pickle (trust_pickle=True)"
    )


def _unwrap_state(obj: Any) -> dict[str, torch.Tensor] | None:
    """A plain ``{name: tensor}`` mapping (also inside ``{"state_dict": ...}``/``{"model_state_dict": ...}``)."""
    if not isinstance(obj, Mapping):
        return None
    for key in ("state_dict", "model_state_dict", "module_state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    if obj and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    return None


def _load_safetensors(p: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise ModelFileError(f"{p} is a .safetensors file; reading it needs the 'safetensors' package "
                             "(pip install safetensors)") from err
    try:
        return load_file(str(p))
    except Exception as err:
        raise ModelFileError(f"{p} is not a readable safetensors file (truncated or corrupted?): "
                             f"{_first_line(str(err))}") from err


def inspect_model_file(path: str | os.PathLike) -> ModelFileInfo:
    """Find out what a model file holds without running any code from it.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    ModelFileInfo

    Raises
    ------
    ModelFileError
        Missing, empty, truncated or unreadable file, or one that holds neither a
        model nor weights.

    Examples
    --------
    >>> inspect_model_file("model.pt").kind  # doctest: +SKIP
    'torchscript'
    """
    p = _check_exists(path, "model file", ModelFileError)
    info, _ = _inspect(p, map_location="cpu")
    return info


def _inspect(p: Path, map_location: Any) -> tuple[ModelFileInfo, Any]:
    if p.suffix.lower() == ".safetensors":
        state = _load_safetensors(p)
        return ModelFileInfo(p, "safetensors", n_tensors=len(state)), state
    members = _zip_members(p)
    if members is not None and _is_torchscript(members):
        return ModelFileInfo(p, "torchscript"), None
    if members is None:
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if magic == b"PK\x03\x04":
            raise ModelFileError(f"{p} is truncated or corrupted: it starts like a torch.save/TorchScript zip "
                                 "archive, but the archive cannot be read (its end is missing?)")
        if magic[:1] != b"\x80":  # every torch.save file is a zip archive or a binary pickle (PROTO opcode)
            raise ModelFileError(f"{p} is not a PyTorch model file (neither a zip archive nor a pickle); "
                                 "expected TorchScript, a state_dict or a pxpermute weights file")
    try:
        obj = _safe_torch_load(p, map_location=map_location)
    except UnsafeModelFileError:
        imports = _pickle_imports(_data_pkl(p, members)) if members is not None else _legacy_imports(p)
        return ModelFileInfo(p, "pickle", imports=imports), None
    if isinstance(obj, Mapping) and obj.get("format") == MODEL_FORMAT:
        state = _unwrap_state(obj)
        if state is None:
            raise ModelFileError(f"{p} is a pxpermute model file without weights (no 'state_dict'); save it again")
        if int(obj.get("format_version", 0)) > MODEL_FORMAT_VERSION:
            raise ModelFileError(f"{p} has model format version {obj.get('format_version')}, newer than this "
                                 f"package reads ({MODEL_FORMAT_VERSION}); upgrade pxpermute")
        info = ModelFileInfo(
            p, "pxpermute", arch=obj.get("arch"), n_channels=obj.get("n_channels"), n_classes=obj.get("n_classes"),
            model_kwargs=dict(obj.get("model_kwargs") or {}),
            channel_names=list(obj["channel_names"]) if obj.get("channel_names") else None,
            class_names=list(obj["class_names"]) if obj.get("class_names") else None,
            n_tensors=len(state),
        )
        return info, state
    state = _unwrap_state(obj)
    if state is not None:
        return ModelFileInfo(p, "state_dict", n_tensors=len(state)), state
    raise ModelFileError(
        f"{p} holds a {type(obj).__name__}, not a model: expected TorchScript, a state_dict (with --arch) "
        "or a pxpermute weights file (pxpermute.io.save_model)"
    )


# ---------------------------------------------------------------------------------------------
# state_dict -> architecture
# ---------------------------------------------------------------------------------------------
def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _split_normalizer(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """A ``Sequential(normalize=..., model=...)`` state (pxpermute.training networks) -> (body, normalizer)."""
    state = _strip_prefix(state, "module.")  # DataParallel / DistributedDataParallel
    if any(k.startswith("model.") for k in state):
        body = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        norm = {k[len("normalize."):]: v for k, v in state.items() if k.startswith("normalize.")}
        other = [k for k in state if not k.startswith(("model.", "normalize."))]
        if not other:
            return body, (norm or None)
    return state, None


_SHAPE_KEYS = {
    "resnet18": ("conv1.weight", "fc.weight"),
    "small_cnn": ("features.0.0.weight", "classifier.weight"),
}


def _shape_from_state(arch: str, state: Mapping[str, torch.Tensor]) -> tuple[int, int, dict[str, Any]]:
    first, last = _SHAPE_KEYS[arch]
    if first not in state or last not in state:
        looks = _guess_arch(state)
        hint = f"; its keys look like {looks!r}" if looks and looks != arch else ""
        sample = ", ".join(list(state)[:3])
        raise ModelFileError(
            f"the weights do not belong to a {arch} (no {first!r} / {last!r}; keys start with {sample}){hint}"
        )
    w_in, w_out = state[first], state[last]
    kwargs: dict[str, Any] = {}
    if arch == "small_cnn":
        kwargs["width"] = int(w_in.shape[0])
    return int(w_in.shape[1]), int(w_out.shape[0]), kwargs


def _guess_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    for name, (first, last) in _SHAPE_KEYS.items():
        if first in state and last in state:
            return name
    return None


def _build(arch: str, n_channels: int, n_classes: int, model_kwargs: Mapping[str, Any],
           normalizer: Mapping[str, torch.Tensor] | None) -> nn.Module:
    from .models import PercentileNormalization, build_model

    body = build_model(arch, n_channels, n_classes, **dict(model_kwargs))
    if normalizer is None:
        return body
    low, high = normalizer.get("low"), normalizer.get("high")
    if low is None or high is None:
        raise ModelFileError(f"the normalization layer's weights are incomplete (found {sorted(normalizer)}, "
                             "expected 'low' and 'high')")
    from collections import OrderedDict

    norm = PercentileNormalization(low.float().cpu().numpy(), high.float().cpu().numpy())
    return nn.Sequential(OrderedDict(normalize=norm, model=body))


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, p: Path) -> None:
    own = model.state_dict()
    bad_shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if bad_shapes or missing or unexpected:
        parts = []
        if bad_shapes:
            parts.append(f"shape mismatch: {'; '.join(bad_shapes[:3])}")
        if missing:
            parts.append(f"missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise ModelFileError(f"the weights in {p} do not fit a {arch} ({'; '.join(parts)})")
    model.load_state_dict(state)


def _check_arch(arch: Any) -> str:
    if not isinstance(arch, str) or arch.lower().replace("-", "_") not in ARCHITECTURES:
        raise ModelFileError(f"unknown architecture {arch!r}; choose one of {list(ARCHITECTURES)}")
    return arch.lower().replace("-", "_")


def load_model(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    n_channels: int | None = None,
    n_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    map_location: Any = "cpu",
) -> nn.Module:
    """Load a model file without running code from it (unless ``trust_pickle=True``).

    Parameters
    ----------
    path : path-like
        TorchScript archive, pxpermute weights file (:func:`save_model`),
        ``state_dict`` (``.pt``/``.pth``, or ``.safetensors``) or, with
        ``trust_pickle=True``, a whole pickled ``nn.Module``.
    arch : {"resnet18", "small_cnn"}, optional
        Architecture of a bare ``state_dict`` (a pxpermute weights file records it).
        The weights of a network trained with :func:`pxpermute.training.train_classifier`
        (``normalize.*`` + ``model.*`` keys) are rebuilt with their normalization layer.
    n_channels, n_classes : int, optional
        Checked against the weights' shapes (which determine them).
    model_kwargs : dict, optional
        Extra arguments of the architecture (``small_cnn``'s width is read from the weights).
    trust_pickle : bool, default False
        Allow a whole pickled module. **Unpickling runs code named in the file**:
        use it only for files from a source you trust.
    map_location : str or torch.device, default "cpu"

    Returns
    -------
    torch.nn.Module
        In evaluation mode.

    Raises
    ------
    UnsafeModelFileError
        The file is a pickled object and ``trust_pickle`` is False.
    ModelFileError
        Missing, truncated or unreadable file; weights that do not fit ``arch``;
        a state_dict without ``arch``.

    Examples
    --------
    >>> model = load_model("weights.pt", arch="resnet18")  # doctest: +SKIP
    >>> model = load_model("scripted.pt")  # TorchScript  # doctest: +SKIP
    """
    p = _check_exists(path, "model file", ModelFileError)
    if arch is not None:
        arch = _check_arch(arch)
    for name, v in (("n_channels", n_channels), ("n_classes", n_classes)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    info, state = _inspect(p, map_location=map_location)
    if info.kind == "torchscript":
        if arch is not None:
            warnings.warn(f"{p} is a TorchScript model; arch={arch!r} is ignored", stacklevel=2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torch.jit.load(str(p), map_location=map_location)
        except Exception as err:
            raise ModelFileError(f"{p} is a damaged TorchScript file (truncated or corrupted?): "
                                 f"{type(err).__name__}: {_first_line(str(err))}") from err
        return model.eval()
    if info.kind == "pickle":
        if not trust_pickle:
            raise UnsafeModelFileError(_unsafe_message(p, info.imports))
        try:
            obj = torch.load(p, map_location=map_location, weights_only=False)
        except Exception as err:
            raise ModelFileError(f"could not unpickle {p}: {type(err).__name__}: {_first_line(str(err))}") from err
        if isinstance(obj, nn.Module):
            return obj.eval()
        state = _unwrap_state(obj)
        if state is None:
            if callable(obj):
                return obj
            raise ModelFileError(f"{p} holds a {type(obj).__name__}, expected an nn.Module")
        info = ModelFileInfo(p, "state_dict", n_tensors=len(state))
    # weights: pxpermute format, bare state_dict or safetensors
    if info.kind == "pxpermute":
        rec = _check_arch(info.arch)
        if arch is not None and arch != rec:
            raise ModelFileError(f"{p} holds {rec} weights, but arch={arch!r} was given")
        arch = rec
    if arch is None:
        looks = _guess_arch(_split_normalizer(state)[0])
        hint = f" (the weights look like {looks!r}: pass --arch {looks})" if looks else ""
        raise ModelFileError(
            f"{p} holds a state_dict ({info.n_tensors} tensors) but not which network it belongs to; "
            f"give the architecture with --arch/arch= ({'|'.join(ARCHITECTURES)}){hint}"
        )
    body, norm = _split_normalizer(state)
    c, k, inferred = _shape_from_state(arch, body)
    for name, given, found in (("channels", n_channels, c), ("classes", n_classes, k),
                               ("channels", info.n_channels, c), ("classes", info.n_classes, k)):
        if given is not None and int(given) != found:
            raise ModelFileError(f"{p}: the weights are for {found} {name}, but {given} were given")
    kwargs = {**info.model_kwargs, **inferred, **dict(model_kwargs or {})}
    if arch == "resnet18":
        kwargs.pop("width", None)
    try:
        model = _build(arch, c, k, kwargs, norm)
    except ModelFileError:
        raise
    except Exception as err:
        raise ModelFileError(f"could not build a {arch} for {c} channels and {k} classes: {err}") from err
    if norm is not None:
        full = {f"model.{name}": v for name, v in body.items()}
        full.update({f"normalize.{name}": v for name, v in norm.items()})
        _load_into(model, full, arch, p)
    else:
        _load_into(model, body, arch, p)
    return model.to(map_location if map_location is not None else "cpu").eval()


def save_model(
    model: Any,
    path: str | os.PathLike,
    *,
    arch: str,
    model_kwargs: Mapping[str, Any] | None = None,
    channel_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Save a network's weights with its architecture, loadable by :func:`load_model` without ``--arch``.

    The file is a ``torch.save`` of plain data (strings, numbers, tensors), so it
    loads with ``torch.load(weights_only=True)``; nothing in it is executed.

    Parameters
    ----------
    model : nn.Module or fitted skorch net
        A ``resnet18``/``small_cnn`` from :mod:`pxpermute.models`, or the
        ``Sequential(normalize, model)`` of :func:`pxpermute.training.train_classifier`
        (a skorch net's ``module_`` is used).
    path : path-like
    arch : {"resnet18", "small_cnn"}
    model_kwargs : dict, optional
        Extra architecture options to record (``small_cnn``'s width is read from the weights).
    channel_names, class_names : list of str, optional
        Recorded so that a run can check them against the data.

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile
    >>> from pxpermute.models import SmallCNN
    >>> p = save_model(SmallCNN(2, 3, width=4), tempfile.mkdtemp() + "/m.pt", arch="small_cnn")
    >>> inspect_model_file(p).n_classes
    3
    """
    from ._fileio import atomic_write

    arch = _check_arch(arch)
    module = getattr(model, "module_", model)
    if not isinstance(module, nn.Module):
        raise TypeError(f"model must be an nn.Module or a fitted skorch net, got {type(model).__name__}")
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    body, _ = _split_normalizer(state)
    c, k, inferred = _shape_from_state(arch, body)
    for name, names, n in (("channel_names", channel_names, c), ("class_names", class_names, k)):
        if names is not None and len(list(names)) != n:
            raise ValueError(f"{len(list(names))} {name} for a network with {n}")
    doc = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "arch": arch,
        "n_channels": c, "n_classes": k, "model_kwargs": {**dict(model_kwargs or {}), **inferred},
        "channel_names": [str(s) for s in channel_names] if channel_names is not None else None,
        "class_names": [str(s) for s in class_names] if class_names is not None else None,
        "state_dict": state,
    }
    buf = _io.BytesIO()
    torch.save(doc, buf)
    return atomic_write(Path(path), buf.getvalue())


# ---------------------------------------------------------------------------------------------
# data files
# ---------------------------------------------------------------------------------------------
def load_data(
    path: str | os.PathLike,
    *,
    images_key: str | None = None,
    labels_key: str | None = None,
    channel_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> Any:
    """Open a data file as an :class:`~pxpermute.IFCDataset`.

    Parameters
    ----------
    path : path-like
        ``.h5``/``.hdf5``/``.hdf``: the package's HDF5 layout
        (:func:`pxpermute.datasets.write_hdf5_dataset`; read lazily, images stay on
        disk) or a file with ``X`` and ``y`` datasets (e.g. the published apoptotic
        cells).  ``.npz``: arrays ``X`` (N, C, H, W) and ``y`` (N,) (or ``images``
        and ``labels``), optionally ``channel_names`` and ``class_names``; read
        without pickle.
    images_key, labels_key : str, optional
        Names of the image and label arrays when they differ from the above.
    channel_names, class_names : list of str, optional
        Override the names stored in the file.

    Returns
    -------
    IFCDataset

    Raises
    ------
    DataFileError
        Missing, truncated or unreadable file, unsupported suffix, missing arrays,
        wrong shapes or labels.

    Examples
    --------
    >>> ds = load_data("test.h5")  # doctest: +SKIP
    """
    p = _check_exists(path, "data file", DataFileError)
    suffix = p.suffix.lower()
    try:
        if suffix in (".h5", ".hdf5", ".hdf"):
            return _load_h5(p, images_key, labels_key, channel_names, class_names)
        if suffix == ".npz":
            return _load_npz(p, images_key, labels_key, channel_names, class_names)
    except DataFileError:
        raise
    except (ValueError, TypeError, KeyError, OSError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise DataFileError(f"{p}: {_first_line(str(msg), 400)}") from err
    raise DataFileError(f"unsupported data file {p}: expected .h5/.hdf5 (pxpermute HDF5 layout or X/y) "
                        "or .npz with arrays X (N, C, H, W) and y (N,)")


def _load_h5(p: Path, images_key, labels_key, channel_names, class_names) -> Any:
    import h5py

    from .datasets import load_hdf5_dataset

    try:
        with h5py.File(p, "r") as fh:
            keys = set(fh.keys())
            has_layout = "images_key" in fh.attrs
    except OSError as err:
        raise DataFileError(
            f"{p} is not a readable HDF5 file (truncated or corrupted?): {_first_line(str(err))}") from err
    if images_key is None and not has_layout and "images" not in keys and "X" in keys:
        images_key = "X"
    if labels_key is None and not has_layout and "labels" not in keys and "y" in keys:
        labels_key = "y"
    for key, default in ((images_key, "images"), (labels_key, "labels")):
        if key is not None and key not in keys:
            raise DataFileError(f"{p} has no dataset {key!r}; it contains {sorted(keys)}")
        if key is None and not has_layout and default not in keys:
            raise DataFileError(f"{p} has no {default!r} (or X/y) dataset; it contains {sorted(keys)} "
                                "(pass images_key/labels_key, --images-key/--labels-key on the command line)")
    return load_hdf5_dataset(p, images_key=images_key, labels_key=labels_key, channel_names=channel_names,
                             class_names=class_names)


def _load_npz(p: Path, images_key, labels_key, channel_names, class_names) -> Any:
    from .datasets import IFCDataset

    try:
        z = np.load(p, allow_pickle=False)
    except Exception as err:
        raise DataFileError(f"{p} is not a readable .npz archive (truncated or corrupted?): "
                            f"{type(err).__name__}: {_first_line(str(err))}") from err
    with z:
        files = list(z.files)
        xk = images_key or ("X" if "X" in files else "images" if "images" in files else None)
        yk = labels_key or ("y" if "y" in files else "labels" if "labels" in files else None)
        if xk not in files or yk not in files:
            missing = [n for n, k in (("X", xk), ("y", yk)) if k not in files]
            raise DataFileError(f"{p} must contain arrays 'X' (N, C, H, W) and 'y' (N,); missing {missing}, "
                                f"found {files}")
        try:
            X, y = z[xk], z[yk]
            names: dict[str, list[str]] = {}
            for key in ("channel_names", "class_names"):
                if key in files:
                    names[key] = [str(s) for s in z[key]]
        except ValueError as err:  # object arrays would need pickle
            raise DataFileError(f"{p}: {_first_line(str(err))} (arrays holding Python objects are not read)") from err
        except Exception as err:
            raise DataFileError(f"{p} is damaged (truncated or corrupted?): {type(err).__name__}: "
                                f"{_first_line(str(err))}") from err
    if X.ndim != 4:
        raise DataFileError(f"{p}: {xk} must have shape (N, C, H, W), got {X.shape}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataFileError(f"{p}: {xk} must be numeric, got dtype {X.dtype}")
    if len(X) == 0:
        raise DataFileError(f"{p}: {xk} holds no images (shape {X.shape})")
    if channel_names is not None:
        names["channel_names"] = list(channel_names)
    if class_names is not None:
        names["class_names"] = list(class_names)
    return IFCDataset(X.astype(np.float32, copy=False), y, name=p.stem, **names)


# ---------------------------------------------------------------------------------------------
# does the model fit the data?
# ---------------------------------------------------------------------------------------------
def check_model_fits(model: Any, dataset: Any, *, device: Any = None, n_probe: int = 2) -> int | None:
    """Run the model on a couple of images and check it can score the data.

    Returns the number of classes the model predicts (``None`` for a model that
    returns labels).  Raises :class:`ModelDataMismatchError` naming what the data
    look like and what went wrong (wrong channel count, image size, fewer
    outputs than the data's classes).

    Examples
    --------
    >>> import numpy as np
    >>> from pxpermute import IFCDataset
    >>> from pxpermute.models import SmallCNN
    >>> ds = IFCDataset(np.zeros((4, 3, 16, 16), "float32"), [0, 1, 0, 1])
    >>> check_model_fits(SmallCNN(3, 2, width=4), ds)
    2
    """
    n = min(int(n_probe), len(dataset))
    if n == 0:
        raise ModelDataMismatchError("the data set is empty")
    x, _ = dataset.get_batch(np.arange(n))
    shape = tuple(x.shape[1:])
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    if device is not None:
        xt = xt.to(device)
    was_training = getattr(model, "training", None)
    try:
        if isinstance(model, nn.Module):
            model.eval()
        with torch.no_grad():
            out = model(xt)
    except Exception as err:
        raise ModelDataMismatchError(
            f"the model does not fit the data: images of shape (C, H, W) = {shape} "
            f"({', '.join(map(str, dataset.channel_names))}) gave {type(err).__name__}: {_first_line(str(err))}"
        ) from err
    finally:
        if was_training:
            model.train()
    if not isinstance(out, torch.Tensor):
        raise ModelDataMismatchError(f"the model returned a {type(out).__name__}, expected a tensor of class scores")
    if out.ndim == 1:
        return None
    if out.ndim != 2 or out.shape[0] != n:
        raise ModelDataMismatchError(f"the model returned shape {tuple(out.shape)} for {n} images; expected ({n}, K)")
    k = int(out.shape[1])
    n_data = len(dataset.class_names)
    labels = np.asarray(dataset.labels)
    top = int(labels.max()) + 1 if labels.size else 0
    if k < max(top, 2):
        raise ModelDataMismatchError(
            f"the model predicts {k} classes, but the data has labels up to {top - 1} "
            f"({n_data} classes: {', '.join(map(str, dataset.class_names[:8]))})"
        )
    return k


# ---------------------------------------------------------------------------------------------
# the download catalog: every data set and model the package can fetch (for `pxpermute fetch`/`info`)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Download:
    """One fetchable item: a data set, a reference table collection or a model's weights.

    ``files`` are :class:`~pxpermute.datasets._download.RemoteFile` entries; their
    ``relpath`` is relative to the data cache (``root="data"``) or, for
    torchvision weights, to torch's hub checkpoint folder (``root="torch_hub"``,
    verified by the hash prefix in the file name as torch does).  ``manual`` says
    how to obtain an item that has no public download URL.
    """

    name: str
    description: str
    files: tuple[Any, ...] = ()
    kind: str = "data"
    root: str = "data"
    manual: str | None = None


def download_catalog() -> dict[str, Download]:
    """Everything :func:`fetch` can download, by name.

    Built from the loaders' registries (cell cycle, published data sets, the
    paper's reference tables) plus pretrained weights, so a new registry entry is
    all a new item needs.

    Examples
    --------
    >>> "cellcycle" in download_catalog()
    True
    """
    from .datasets import cellcycle, published, reference

    cat: dict[str, Download] = {}

    def add(d: Download) -> None:
        cat[d.name] = d

    add(Download("cellcycle", "Jurkat cell cycle (Blasi et al. 2016): 21 TIFF montages, 3 channels, 7 classes",
                 tuple(cellcycle.CELLCYCLE_REGISTRY.values())))
    reg = published.REGISTRY
    add(Download("apoptotic", "apoptotic vs non-apoptotic cells (Kranich et al. 2020): one HDF5 file",
                 (reg["apoptotic"],)))
    add(Download("synapse", "immunological synapse formation (Dryad doi:10.5061/dryad.ht76hdrk7): zip archive",
                 (reg["synapse"],)))
    add(Download("synapse_sample_cell", "one real synapse-formation cell (scifAI layout)",
                 (reg["synapse_sample_cell"],)))
    wbc = published.DATASET_INFO.get("wbc", {})
    add(Download("wbc", "white blood cells (Lippeveld et al. 2020)", (), manual=(
        "no public download URL; obtain the HDF5 file from the authors (doi:10.1002/cyto.a.23920) and open it "
        "with pxpermute.datasets.load_wbc(path=...)" if not wbc.get("url") else None)))
    add(Download("reference", "the paper's published result tables (per-fold importances, panels, k ablation, "
                 "run time) and sample image", tuple(reference.REFERENCE_REGISTRY.values()), kind="reference"))
    try:  # optional registries of other modules (e.g. the .cif example file)
        from .datasets import cif  # noqa: F401

        for key in ("CIF_REGISTRY", "REGISTRY"):
            extra = getattr(cif, key, None)
            if isinstance(extra, Mapping):
                for name, entry in extra.items():
                    add(Download(f"cif_{name}" if not str(name).startswith("cif") else str(name),
                                 "ImageStream .cif example file", (entry,)))
                break
    except ImportError:
        pass
    add_pretrained = _pretrained_downloads()
    for d in add_pretrained:
        add(d)
    add(_imagenet_download())
    return cat


def _pretrained_downloads() -> list[Download]:
    """The pretrained tutorial models (package data listed in ``pxpermute/pretrained/registry.json``)."""
    from .datasets._download import RemoteFile

    try:
        from . import models as _models

        reg = _models.pretrained_registry() if hasattr(_models, "pretrained_registry") else {}
    except Exception:  # a damaged registry must not break `pxpermute info`
        return []
    out = []
    for name, entry in sorted((reg.get("models") or {}).items()):
        if not isinstance(entry, Mapping) or "file" not in entry:
            continue
        f = RemoteFile(relpath=str(entry["file"]), url=str(entry.get("url") or ""), sha256=entry.get("sha256"))
        out.append(Download(
            f"pretrained:{name}",
            f"pretrained tutorial model ({entry.get('architecture', '?')}, {entry.get('n_channels', '?')} channels, "
            f"{entry.get('n_classes', '?')} classes)",
            (f,), kind="model", root="pretrained",
            manual=None if entry.get("url") else "shipped inside the package; reinstall pxpermute if it is missing",
        ))
    return out


def _imagenet_download() -> Download:
    from .datasets._download import RemoteFile

    try:
        from torchvision.models import ResNet18_Weights

        url = ResNet18_Weights.IMAGENET1K_V1.url
    except Exception:  # torchvision missing or changed
        url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    return Download("resnet18_imagenet", "torchvision's ImageNet ResNet18 weights (models.resnet18(pretrained=True))",
                    (RemoteFile(relpath=url.rsplit("/", 1)[-1], url=url, sha256=None),), kind="model",
                    root="torch_hub")


def _root(item: Download, data_dir: str | os.PathLike | None) -> Path:
    if item.root == "torch_hub":
        return Path(torch.hub.get_dir()) / "checkpoints"
    if item.root == "pretrained":
        return Path(__file__).resolve().parent / "pretrained"
    from .datasets._download import cache_dir

    return cache_dir(data_dir)


def _hash_prefix(relpath: str) -> str | None:
    import re

    m = re.search(r"-([0-9a-f]{8,})\.[a-z]+$", relpath)
    return m.group(1) if m else None


@dataclass
class FileStatus:
    """State of one file of a :class:`Download` in the cache."""

    path: Path
    state: str  # "verified", "present" (no pinned hash), "missing", "corrupted", "downloaded"
    detail: str = ""


def _status(item: Download, entry: Any, root: Path) -> FileStatus:
    from .datasets._download import DataIntegrityError, DataUnavailableError, fetch_file, sha256sum

    target = root / entry.relpath
    if not target.exists():
        return FileStatus(target, "missing")
    if item.root == "torch_hub":
        prefix = _hash_prefix(entry.relpath)
        if prefix is None:
            return FileStatus(target, "present", "no hash to check")
        digest = sha256sum(target)
        if digest.startswith(prefix):
            return FileStatus(target, "verified")
        return FileStatus(target, "corrupted", f"SHA-256 {digest[:12]}... does not start with {prefix}")
    if item.root == "pretrained":  # package data: hash it, never write a marker into the installed package
        if entry.sha256 is None:
            return FileStatus(target, "present", "no pinned hash")
        digest = sha256sum(target)
        if digest == entry.sha256:
            return FileStatus(target, "verified")
        return FileStatus(target, "corrupted", f"SHA-256 {digest[:12]}... differs from the registry's "
                                               f"{entry.sha256[:12]}...; reinstall pxpermute")
    try:
        fetch_file(entry, data_dir=root, download=False, verify=True)
    except DataIntegrityError as err:
        return FileStatus(target, "corrupted", _first_line(str(err), 300))
    except DataUnavailableError:
        return FileStatus(target, "missing")
    if entry.sha256 is None:
        return FileStatus(target, "present", "no pinned hash")
    return FileStatus(target, "verified")


def download_status(name: str, *, data_dir: str | os.PathLike | None = None) -> list[FileStatus]:
    """State of every file of catalog item ``name`` (hashes checked; nothing is downloaded or written).

    Examples
    --------
    >>> [s.state for s in download_status("cellcycle")][:1]  # doctest: +SKIP
    ['verified']
    """
    cat = download_catalog()
    if name not in cat:
        raise ValueError(f"unknown download {name!r}; known: {', '.join(cat)}")
    item = cat[name]
    root = _root(item, data_dir)
    return [_status(item, e, root) for e in item.files]


def fetch(name: str, *, data_dir: str | os.PathLike | None = None) -> list[FileStatus]:
    """Download (if missing) and verify every file of catalog item ``name``.

    Files already present are verified, not downloaded again.  Offline, the
    error names the URL and the path to save the file at.

    Raises
    ------
    DataUnavailableError, DataIntegrityError
        From :mod:`pxpermute.datasets._download`.

    Examples
    --------
    >>> fetch("reference", data_dir="/path/to/cache")  # doctest: +SKIP
    """
    from .datasets._download import DataIntegrityError, DataUnavailableError, fetch_file

    cat = download_catalog()
    if name not in cat:
        raise ValueError(f"unknown download {name!r}; known: {', '.join(cat)}")
    item = cat[name]
    root = _root(item, data_dir)
    if item.manual:
        if item.files and all(_status(item, e, root).state in ("verified", "present") for e in item.files):
            return [_status(item, e, root) for e in item.files]
        raise DataUnavailableError(f"{name}: {item.manual}")
    out: list[FileStatus] = []
    for entry in item.files:
        before = _status(item, entry, root)
        if before.state == "corrupted":
            raise DataIntegrityError(f"{before.path} is corrupted ({before.detail}); delete it and fetch again")
        if before.state != "missing":
            out.append(before)
            continue
        if item.root == "torch_hub":
            target = root / entry.relpath
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(entry.url, str(target), hash_prefix=_hash_prefix(entry.relpath),
                                               progress=False)
            except Exception as err:
                raise DataUnavailableError(
                    f"could not download {entry.url} ({type(err).__name__}: {_first_line(str(err))}). "
                    f"Download it by hand and save it as {target}"
                ) from err
        else:
            fetch_file(entry, data_dir=root, download=True, verify=True)
        after = _status(item, entry, root)
        out.append(FileStatus(after.path, "downloaded" if after.state in ("verified", "present") else after.state,
                              after.detail))
    return out
