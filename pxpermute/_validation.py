"""One family of argument checks for every public function of the package.

Modelled on scikit-learn's ``validate_params``: a check says what was expected
and what arrived, and raises :class:`ParameterError`, which is both a
``ValueError`` and a ``TypeError`` (like sklearn's ``InvalidParameterError``),
so callers can catch either.

Use the ``check_*`` functions at the top of a public function, or declare the
constraints once with :func:`validate_params`::

    @validate_params({"n_repeats": Int(1), "metric": Options(METRICS), "progress": Bool()})
    def run(model, data, *, n_repeats=100, metric="f1", progress=True): ...

Randomness
----------
Every public function that draws random numbers takes ``random_state``, and
its default is :data:`DEFAULT_RANDOM_STATE` = 42 (the seed of the published
protocol), so that running the same call twice gives the same result.  An
``int`` >= 0 picks another reproducible stream; ``None`` draws a fresh seed from
the operating system, which results record (``info["random_state"]``) so the run
can still be repeated.  Use :func:`check_random_state` to normalise the argument.

Example
-------
>>> from pxpermute._validation import check_int
>>> check_int(5, "n_repeats", low=1)
5
>>> check_int(0, "n_repeats", low=1)
Traceback (most recent call last):
...
ParameterError: n_repeats must be an integer >= 1, got 0
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Collection, Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = [
    "ParameterError",
    "check_bool",
    "check_int",
    "check_float",
    "check_choice",
    "check_random_state",
    "Bool",
    "Int",
    "Float",
    "Options",
    "validate_params",
    "RANDOM_STATE_DOC",
    "DEFAULT_RANDOM_STATE",
]

#: The package's one default seed (the published protocol's), for every function that draws random numbers.
DEFAULT_RANDOM_STATE: int = 42

RANDOM_STATE_DOC = (
    "random_state : int or None, default 42\n"
    "    Seed (int >= 0) for reproducible results; None draws a fresh seed, recorded in the result."
)


class ParameterError(ValueError, TypeError):
    """An argument has the wrong type or value (both a ``ValueError`` and a ``TypeError``)."""


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return text if isinstance(value, (bool, int, float, str)) or value is None else f"{text} ({type(value).__name__})"


def _bounds(low: float | None, high: float | None, closed: str) -> str:
    lo_op = ">=" if closed in ("both", "left") else ">"
    hi_op = "<=" if closed in ("both", "right") else "<"
    if low is not None and high is not None:
        lb = "[" if lo_op == ">=" else "("
        rb = "]" if hi_op == "<=" else ")"
        return f"in {lb}{low}, {high}{rb}"
    if low is not None:
        return f"{lo_op} {low}"
    if high is not None:
        return f"{hi_op} {high}"
    return ""


def _in_range(v: float, low: float | None, high: float | None, closed: str) -> bool:
    if low is not None and (v < low or (v == low and closed in ("neither", "right"))):
        return False
    return not (high is not None and (v > high or (v == high and closed in ("neither", "left"))))


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool (numpy bools accepted), else :class:`ParameterError`."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ParameterError(f"{name} must be True or False, got {_show(value)}")


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None,
              allow_none: bool = False) -> int | None:
    """``value`` as an int within ``[low, high]`` (bools rejected; ``None`` only with ``allow_none``)."""
    if value is None and allow_none:
        return None
    bounds = _bounds(low, high, "both")
    what = f"an integer {bounds}".rstrip() + (" or None" if allow_none else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise ParameterError(f"{name} must be {what}, got {_show(value)}")
    if not _in_range(int(value), low, high, "both"):
        raise ParameterError(f"{name} must be {what}, got {int(value)}")
    return int(value)


def check_float(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                closed: str = "both", allow_none: bool = False) -> float | None:
    """``value`` as a finite float within the interval (``closed``: both/left/right/neither)."""
    if value is None and allow_none:
        return None
    bounds = _bounds(low, high, closed)
    what = f"a number {bounds}".rstrip() + (" or None" if allow_none else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise ParameterError(f"{name} must be {what}, got {_show(value)}")
    v = float(value)
    if not math.isfinite(v) or not _in_range(v, low, high, closed):
        raise ParameterError(f"{name} must be {what}, got {value!r}")
    return v


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``, else :class:`ParameterError` listing them."""
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a set/dict
        ok = False
    if not ok:
        shown = sorted(map(str, choices))
        raise ParameterError(f"{name} must be one of {shown}, got {_show(value)}")
    return value


def check_random_state(value: Any, name: str = "random_state", *, draw: bool = True) -> int | None:
    """Normalise a ``random_state``: an int >= 0 as is; ``None`` -> a fresh seed (``draw=True``) or None.

    A ``numpy.random.Generator`` is turned into a seed drawn from it.

    >>> check_random_state(3)
    3
    >>> isinstance(check_random_state(None), int)
    True
    """
    if value is None:
        return int(np.random.SeedSequence().entropy % (2**63)) if draw else None
    if isinstance(value, np.random.Generator):
        return int(value.integers(2**63))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral) or value < 0:
        raise ParameterError(f"{name} must be a non-negative int or None, got {_show(value)}")
    return int(value)


# -- declarative constraints ------------------------------------------------------
class _Constraint:
    def __call__(self, value: Any, name: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class Bool(_Constraint):
    """A bool."""

    def __call__(self, value: Any, name: str) -> Any:
        return check_bool(value, name)


class Int(_Constraint):
    """An int in ``[low, high]`` (either bound optional), or None with ``allow_none``."""

    def __init__(self, low: int | None = None, high: int | None = None, *, allow_none: bool = False) -> None:
        self.low, self.high, self.allow_none = low, high, allow_none

    def __call__(self, value: Any, name: str) -> Any:
        return check_int(value, name, low=self.low, high=self.high, allow_none=self.allow_none)


class Float(_Constraint):
    """A finite number in an interval (``closed``: both/left/right/neither)."""

    def __init__(self, low: float | None = None, high: float | None = None, *, closed: str = "both",
                 allow_none: bool = False) -> None:
        self.low, self.high, self.closed, self.allow_none = low, high, closed, allow_none

    def __call__(self, value: Any, name: str) -> Any:
        return check_float(value, name, low=self.low, high=self.high, closed=self.closed, allow_none=self.allow_none)


class Options(_Constraint):
    """One of a fixed set of values."""

    def __init__(self, choices: Collection[Any]) -> None:
        self.choices = choices

    def __call__(self, value: Any, name: str) -> Any:
        return check_choice(value, name, self.choices)


def validate_params(constraints: Mapping[str, _Constraint | Callable[[Any, str], Any]]) -> Callable:
    """Decorator: check the named arguments of every call against ``constraints``.

    A constraint is one of :class:`Bool`, :class:`Int`, :class:`Float`,
    :class:`Options`, or any callable ``(value, name)`` that raises on a bad value.
    Only arguments the caller passed *or* that have defaults are checked.

    >>> @validate_params({"k": Int(1)})
    ... def f(*, k=10):
    ...     return k
    >>> f(k=3)
    3
    """

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        unknown = set(constraints) - set(sig.parameters)
        if unknown:
            raise TypeError(f"validate_params: {fn.__name__} has no parameter(s) {sorted(unknown)}")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            for name, check in constraints.items():
                check(bound.arguments[name], name)
            return fn(*args, **kwargs)

        return wrapper

    return decorate
