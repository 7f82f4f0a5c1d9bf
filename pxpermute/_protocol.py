"""The result protocol: ``to_frame()``, ``summary()`` (text), ``plot()``, ``save(path)`` / ``load(path)``.

Every result type of the package follows it.  Saving goes through
:func:`pxpermute._fileio.save_bundle` (atomic JSON + NPZ with a SHA-256 of the
NPZ), so a damaged file raises :class:`~pxpermute._fileio.ResultFileError`,
the one error type of every result file.

A result class derives from :class:`SavableResult` and implements two hooks:

* ``_to_bundle(self, prefix) -> (meta, arrays)``: JSON-able metadata and the
  arrays, with every array key starting with ``prefix`` (so results nest: a
  panel comparison stores its cross-validation results, a k ablation its
  importance run);
* ``_from_bundle(cls, meta, arrays, prefix)``: the inverse.

The helpers below encode the pieces that occur everywhere: pandas frames
(numeric columns exactly, in the NPZ; text columns in the JSON),
:class:`~pxpermute.result.ImportanceResult` and ragged lists of index arrays.

This module belongs to the ground floor: it imports only the file format and
the result class, so training and evaluation can both use it.

Example
-------
>>> import pandas as pd
>>> meta, arrays = frame_to_bundle(pd.DataFrame({"a": [1, 2], "b": ["x", None]}), "t")
>>> frame_from_bundle(meta, arrays, "t").b.tolist()
['x', None]
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._fileio import ResultFileError, jsonable, load_bundle, save_bundle

__all__ = [
    "SavableResult",
    "ResultFileError",
    "frame_to_bundle",
    "frame_from_bundle",
    "importance_to_bundle",
    "importance_from_bundle",
    "ragged_to_bundle",
    "ragged_from_bundle",
    "as_float",
]


def as_float(value: Any) -> float:
    """A float read back from JSON (where NaN was written as ``null``)."""
    return float("nan") if value is None else float(value)


# -----------------------------------------------------------------------------
# pandas frames
# -----------------------------------------------------------------------------
def frame_to_bundle(df: pd.DataFrame, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Encode a DataFrame: numeric and boolean columns go to the NPZ (bit-exact), others to the JSON.

    A non-default index is stored as leading columns and restored.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    index_names: list[Any] | None = None
    if not isinstance(df.index, pd.RangeIndex) or df.index.start != 0 or df.index.step != 1:
        index_names = list(df.index.names)
        df = df.reset_index()
    columns, arrays = [], {}
    for j, name in enumerate(df.columns):
        s = df.iloc[:, j]
        col: dict[str, Any] = {"name": jsonable(name), "dtype": str(s.dtype)}
        if s.dtype.kind in "biuf":
            key = f"{prefix}.c{j}"
            arrays[key] = s.to_numpy()
            col["npz"] = key
        else:
            col["values"] = [None if _is_missing(v) else jsonable(v) for v in s.tolist()]
        columns.append(col)
    meta = {"columns": columns, "n_rows": int(len(df)), "index": jsonable(index_names),
            "column_names_type": type(df.columns).__name__}
    return meta, arrays


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def frame_from_bundle(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str) -> pd.DataFrame:
    """Inverse of :func:`frame_to_bundle`."""
    data: dict[Any, Any] = {}
    names = []
    n = int(meta["n_rows"])
    for col in meta["columns"]:
        name = col["name"]
        if "npz" in col:
            values = arrays[col["npz"]]
            if values.shape != (n,):
                raise ValueError(f"column {name!r} has shape {values.shape}, expected ({n},)")
            series = pd.Series(values, dtype=col["dtype"])
        else:
            values = col["values"]
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values, expected {n}")
            series = pd.Series(values, dtype=object if col["dtype"] == "object" else col["dtype"])
        names.append(name)
        data[len(names) - 1] = series
    df = pd.DataFrame(data) if names else pd.DataFrame(index=range(n))
    df.columns = names
    if meta.get("index") is not None:
        k = len(meta["index"])
        df = df.set_index(names[:k])
        df.index.names = meta["index"]
    return df


# -----------------------------------------------------------------------------
# ragged index arrays (folds of different sizes)
# -----------------------------------------------------------------------------
def ragged_to_bundle(parts: Sequence[Any], key: str) -> dict[str, np.ndarray]:
    """A list of 1-D arrays as one flat array plus lengths."""
    parts = [np.asarray(p).reshape(-1) for p in parts]
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return {f"{key}.flat": flat, f"{key}.len": np.array([p.size for p in parts], np.int64)}


def ragged_from_bundle(arrays: Mapping[str, np.ndarray], key: str) -> list[np.ndarray]:
    """Inverse of :func:`ragged_to_bundle`."""
    flat, lengths = arrays[f"{key}.flat"], arrays[f"{key}.len"]
    if int(lengths.sum()) != flat.size or (lengths < 0).any():
        raise ValueError(f"{key}: lengths {lengths.tolist()} do not add up to {flat.size} values")
    return list(np.split(flat, np.cumsum(lengths)[:-1])) if lengths.size else []


# -----------------------------------------------------------------------------
# ImportanceResult inside another result
# -----------------------------------------------------------------------------
_IMPORTANCE_ARRAYS = ("importances", "present_classes", "drops", "baseline_scores", "confusion",
                      "baseline_confusion", "bootstrap_confusion", "bootstrap_baseline_confusion", "folds",
                      "fold_baseline_scores", "fold_baseline_confusion")


def importance_to_bundle(result: Any, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Encode an :class:`~pxpermute.result.ImportanceResult` nested in another result.

    The same fields as :meth:`ImportanceResult.save` (pooled folds included).
    """
    present = [n for n in _IMPORTANCE_ARRAYS if getattr(result, n, None) is not None]
    arrays = {f"{prefix}.{name}": getattr(result, name) for name in present}
    meta = {"channel_names": result.channel_names, "class_names": result.class_names, "groups": result.groups,
            "info": result.info, "arrays": present}
    if getattr(result, "folds", None) is not None:
        meta["fold_keys"] = result.fold_keys
        meta["fold_name"] = result.fold_name
    return meta, arrays


def importance_from_bundle(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str) -> Any:
    """Inverse of :func:`importance_to_bundle`."""
    from .result import ImportanceResult

    a = {name: arrays[f"{prefix}.{name}"] for name in meta["arrays"]}
    extra = {}
    if "folds" in a:
        extra = dict(folds=a["folds"], fold_keys=meta.get("fold_keys"), fold_name=meta.get("fold_name", "fold"),
                     fold_baseline_scores=a.get("fold_baseline_scores"),
                     fold_baseline_confusion=a.get("fold_baseline_confusion"))
    return ImportanceResult(
        a["importances"], channel_names=meta["channel_names"], class_names=meta["class_names"],
        drops=a.get("drops"), baseline_scores=a.get("baseline_scores"), confusion=a.get("confusion"),
        baseline_confusion=a.get("baseline_confusion"), present=a.get("present_classes"), groups=meta.get("groups"),
        info=meta.get("info"), bootstrap_confusion=a.get("bootstrap_confusion"),
        bootstrap_baseline_confusion=a.get("bootstrap_baseline_confusion"), **extra,
    )


# -----------------------------------------------------------------------------
# the mix-in
# -----------------------------------------------------------------------------
def _package_version() -> str:
    from ._version import __version__

    return __version__


class SavableResult:
    """Mix-in giving a result ``save(path)`` / ``load(path)`` through :mod:`pxpermute._fileio`.

    Subclasses implement ``_to_bundle(prefix)`` and ``_from_bundle(meta, arrays, prefix)``.
    """

    def _to_bundle(self, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def _from_bundle(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str) -> Any:  # pragma: no cover
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>.json`` (metadata, text columns) and ``<path>.npz`` (arrays); returns the JSON path.

        Written atomically (temporary file + rename); the JSON records the
        SHA-256 of the NPZ, so :meth:`load` detects a damaged pair.  Fitted
        networks are not part of the file (save those with ``torch.save``).
        """
        meta, arrays = self._to_bundle("r")
        return save_bundle(path, {"result": meta, "pxpermute_version": _package_version()}, arrays,
                           kind=type(self).__name__)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Any:
        """Read a result written by :meth:`save`.

        Raises
        ------
        ResultFileError
            A file is missing, truncated, corrupted, of another result type, or
            its content is inconsistent.
        """
        meta, arrays = load_bundle(path, kind=cls.__name__)
        try:
            return cls._from_bundle(meta["result"], arrays, "r")
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as err:
            raise ResultFileError(f"{path} is not a consistent {cls.__name__} file: {type(err).__name__}: {err}") from err
