"""Progress bars that degrade cleanly: the one place the package creates a tqdm bar.

``tqdm.auto`` picks the notebook widget inside Jupyter, but where ``ipywidgets``
is missing it emits ``TqdmWarning: IProgress not found`` (once per process) and
falls back to the console bar anyway.  :func:`progress_bar` checks for
``ipywidgets`` first and uses plain :mod:`tqdm.std` without it, and silences
tqdm's own import-time notes, so creating a bar never emits a warning.  With
``progress=False`` no bar is created at all.

This module belongs to the engine (it imports nothing from the package).
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import Any

__all__ = ["progress_bar", "tqdm_class"]


def _has_ipywidgets() -> bool:
    try:
        return importlib.util.find_spec("ipywidgets") is not None
    except (ImportError, ValueError):  # a broken or half-installed package
        return False


def tqdm_class() -> type:
    """``tqdm.auto.tqdm`` when ``ipywidgets`` is importable, else plain ``tqdm.std.tqdm``; never warns.

    Examples
    --------
    >>> issubclass(tqdm_class(), __import__("tqdm").tqdm)
    True
    """
    from tqdm.std import TqdmExperimentalWarning, TqdmWarning
    from tqdm.std import tqdm as std_tqdm

    if not _has_ipywidgets():
        return std_tqdm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)  # TqdmExperimentalWarning is a subclass
        warnings.simplefilter("ignore", TqdmExperimentalWarning)
        try:
            from tqdm.auto import tqdm as auto_tqdm
        except Exception:  # an ipywidgets that fails to import: the console bar still works
            return std_tqdm
    return auto_tqdm


def progress_bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one, ``total=...``), or nothing when ``progress`` is false.

    With ``progress=False`` it returns ``iterable`` itself (``None`` for a manual
    bar), so callers iterate over the result as usual and guard ``update`` /
    ``close`` with ``if bar is not None``.  Keyword arguments (``total``,
    ``desc``, ``unit`` ...) go to tqdm.

    Examples
    --------
    >>> progress_bar(range(3), progress=False)
    range(0, 3)
    >>> progress_bar(total=3, progress=False) is None
    True
    """
    if not progress:
        return iterable
    from tqdm.std import TqdmWarning
    from tqdm.std import tqdm as std_tqdm

    cls = tqdm_class()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        try:
            return cls(iterable, **kwargs)
        except ImportError:  # the notebook widget could not be built (an old ipywidgets): the console bar
            if cls is std_tqdm:
                raise
            return std_tqdm(iterable, **kwargs)
