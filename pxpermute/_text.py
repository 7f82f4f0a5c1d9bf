"""Printable text that fits a page: reprs, summaries and warnings wrapped at 100 characters.

The tutorials are read in an online book about 100 characters wide, so every
line the package prints -- a ``repr``, a ``summary()``, a warning -- is wrapped
there.  :func:`glue` marks a phrase that must stay on one line (a channel or
class name with spaces); :func:`fill` wraps, keeping short text unchanged.

This module belongs to the engine (it imports nothing from the package).
"""
from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import Any

__all__ = ["WIDTH", "glue", "fill", "name_list", "warning_text"]

#: the widest line the package prints
WIDTH = 100
_NBSP = "\u00a0"  # not whitespace to textwrap: a glued phrase is never split


def glue(text: Any) -> str:
    """``text`` as one unbreakable word for :func:`fill` (its spaces come back in the output)."""
    return str(text).replace(" ", _NBSP)


def name_list(items: Iterable[Any]) -> str:
    """``repr(list(items))``, with every item glued (a line may break only between items)."""
    return "[" + ", ".join(glue(repr(x)) for x in items) + "]"


def fill(text: str, width: int = WIDTH, indent: str = "  ", *, first: int | None = None) -> str:
    """Wrap every line of ``text`` at ``width`` characters, continuation lines indented by ``indent``.

    A line that starts with spaces keeps them, and its continuation lines are
    indented by those spaces plus ``indent``.  Lines that fit are returned unchanged; words (and :func:`glue`'d phrases)
    are never broken, not even at hyphens, so a single word longer than
    ``width`` stays whole.  ``first`` limits the first line to fewer characters
    (a warning's first line follows ``path:line: UserWarning: ``).

    Examples
    --------
    >>> fill("short stays as it is")
    'short stays as it is'
    >>> print(fill("aaa bbb ccc ddd", width=8))
    aaa bbb
      ccc
      ddd
    """
    out: list[str] = []
    for k, line in enumerate(str(text).split("\n")):
        lead = width - first if (first is not None and k == 0 and first < width) else 0
        if len(line) + lead <= width:
            out.append(line)
            continue
        own = line[: len(line) - len(line.lstrip(" "))]
        wrapped = textwrap.wrap(line.lstrip(" "), width, initial_indent=" " * lead + own,
                                subsequent_indent=own + indent, break_on_hyphens=False, break_long_words=False)
        if wrapped:
            wrapped[0] = wrapped[0][lead:]
        out.extend(wrapped or [""])
    return "\n".join(out).replace(_NBSP, " ")


def warning_text(message: str, *, first: int = 40, width: int = WIDTH) -> str:
    """A warning message in lines of at most ``width`` characters, the first at most ``first``.

    Python shows a warning as ``path:line: Category: message``; keeping the
    message's first line short keeps that line within the page too.
    """
    return fill(message, width, indent="", first=first)
