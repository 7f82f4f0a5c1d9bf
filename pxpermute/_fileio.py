"""One file format for every saved result: a JSON file plus an NPZ file with a checksum.

``save_bundle(path, meta, arrays)`` writes ``<path>.json`` (metadata, human
readable) and ``<path>.npz`` (the arrays, compressed).  Both are written to a
temporary name first and renamed (:func:`atomic_write`), so an interrupted save
never leaves a half-written file behind; the JSON records the SHA-256 of the NPZ,
so :func:`load_bundle` notices a truncated or corrupted pair and raises
:class:`ResultFileError` - the one error type of every damaged result file.

Every result type of the package (``ImportanceResult`` and the evaluation
results) saves through these two functions; ``kind`` names the type so that a
file of one type is not silently read as another.

Example
-------
>>> import tempfile, numpy as np
>>> from pxpermute._fileio import save_bundle, load_bundle
>>> d = tempfile.mkdtemp()
>>> _ = save_bundle(f"{d}/run", {"note": "demo"}, {"x": np.arange(3)}, kind="Demo")
>>> meta, arrays = load_bundle(f"{d}/run", kind="Demo")
>>> meta["note"], arrays["x"].tolist()
('demo', [0, 1, 2])
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ResultFileError", "atomic_write", "jsonable", "save_bundle", "load_bundle", "bundle_paths"]

FORMAT = "pxpermute-result"
FORMAT_VERSION = 1
_RESERVED = ("format", "format_version", "kind", "npz_sha256")


class ResultFileError(OSError):
    """A saved result is missing, truncated, corrupted, of another kind or otherwise inconsistent."""


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename.

    A reader never sees a half-written file: it sees the old file or the new one.
    Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def jsonable(obj: Any) -> Any:
    """``obj`` turned into plain JSON types (numpy scalars/arrays -> Python; NaN/inf -> ``None``)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def bundle_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The ``(json, npz)`` pair of paths for ``path`` (with or without a ``.json``/``.npz`` suffix).

    Only ``.json`` / ``.npz`` are stripped; any other dot belongs to the name, so
    ``run.seed1`` gives ``run.seed1.json`` + ``run.seed1.npz`` (not ``run.json``).

    >>> [p.name for p in bundle_paths("out/run.seed1")]
    ['run.seed1.json', 'run.seed1.npz']
    """
    stem = Path(path)
    if stem.suffix in (".json", ".npz"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")


def _write_pair(files: list[tuple[Path, bytes]]) -> None:
    """Write every file to a temporary name (fsynced) first, then rename them all.

    Nothing at the final paths is touched until every byte is on disk, so a
    failing write (full disk, permissions) leaves an earlier pair loadable.
    """
    tmps: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmps.append((tmp, path))
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, path in tmps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            if tmp.exists():
                tmp.unlink()


def save_bundle(
    path: str | os.PathLike,
    meta: Mapping[str, Any],
    arrays: Mapping[str, Any],
    *,
    kind: str | None = None,
) -> Path:
    """Save a result as ``<path>.json`` (``meta``) + ``<path>.npz`` (``arrays``).

    Parameters
    ----------
    path : path-like
        Stem of the pair; a ``.json`` or ``.npz`` suffix is stripped, any other
        suffix is kept (``run.seed1`` -> ``run.seed1.json`` + ``run.seed1.npz``).
    meta : mapping
        JSON-able metadata (numpy values are converted, non-finite floats become
        ``null``).  The keys ``format``, ``format_version``, ``kind`` and
        ``npz_sha256`` are reserved.
    arrays : mapping of str to array-like
        Numeric/boolean/string arrays (no Python objects: they would need pickle
        to load).  ``None`` values are skipped.
    kind : str, optional
        The result type, e.g. ``"ROARResult"``; :func:`load_bundle` can insist on it.

    Returns
    -------
    Path
        The JSON path.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> p = save_bundle(tempfile.mkdtemp() + "/r", {"a": 1}, {"x": np.ones(2)})
    >>> p.suffix
    '.json'
    """
    clash = [k for k in _RESERVED if k in meta]
    if clash:
        raise ValueError(f"meta keys {clash} are reserved by the file format; rename them")
    clean: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if value is None:
            continue
        arr = np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which cannot be saved without pickle; "
                            "convert it to a numeric or string array")
        clean[str(name)] = arr
    json_path, npz_path = bundle_paths(path)
    buf = io.BytesIO()
    np.savez_compressed(buf, **clean)
    blob = buf.getvalue()
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
           "npz_sha256": hashlib.sha256(blob).hexdigest()}
    doc.update(jsonable(dict(meta)))
    text = json.dumps(doc, indent=2, allow_nan=False)  # everything serialised before any file is touched
    _write_pair([(npz_path, blob), (json_path, text.encode())])
    return json_path


def load_bundle(path: str | os.PathLike, *, kind: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a pair written by :func:`save_bundle`: ``(meta, arrays)``.

    Parameters
    ----------
    path : path-like
        Stem of the pair, or either of its files.
    kind : str, optional
        Expected result type; a file saved with another ``kind`` raises.  Files
        written before ``kind`` existed (no ``kind`` recorded) are accepted.

    Raises
    ------
    ResultFileError
        A file is missing, the JSON is not valid, it is not a pxpermute result,
        it is of another kind, or the NPZ does not match its checksum.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> p = save_bundle(tempfile.mkdtemp() + "/r", {"a": 1}, {"x": np.ones(2)})
    >>> load_bundle(p)[0]["a"]
    1
    """
    json_path, npz_path = bundle_paths(path)
    for p in (json_path, npz_path):
        if not p.exists():
            raise ResultFileError(f"result file {p} is missing (a result is a .json + .npz pair)")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultFileError(f"{json_path} is not valid JSON (truncated or corrupted?): {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ResultFileError(f"{json_path} is not a pxpermute result file")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ResultFileError(f"{json_path} has format version {meta.get('format_version')}, newer than this "
                              f"package reads ({FORMAT_VERSION}); upgrade pxpermute")
    found = meta.get("kind")
    if kind is not None and found is not None and found != kind:
        raise ResultFileError(f"{json_path} holds a {found}, not a {kind}; load it with {found}.load")
    blob = npz_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("npz_sha256"):
        raise ResultFileError(f"{npz_path} does not match the checksum recorded in {json_path}: corrupted or truncated")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as err:  # pragma: no cover - checksum matched, so only a foreign writer gets here
        raise ResultFileError(f"{npz_path} cannot be read: {err}") from err
    return meta, arrays
