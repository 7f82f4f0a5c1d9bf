"""Exact duplicate cells: find them by hashing each cell's pixels, keep the first copy.

Shared by the loaders (``drop_duplicates=True``).  Two cells are exact
duplicates when their arrays are byte-identical in every loaded channel; the
first occurrence (in the loader's order) is kept.  Near duplicates (the same
cell stored twice with a slightly different edge) are reported by
:func:`pxpermute.diagnostics.check_dataset`, not dropped: deciding they are one
cell needs a threshold, dropping byte-identical copies does not.
"""
from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["duplicate_mask"]


def duplicate_mask(images: np.ndarray) -> np.ndarray:
    """``True`` for every cell that repeats an earlier cell byte for byte.

    Parameters
    ----------
    images : array, shape (N, ...)
        One entry per cell (any dtype; compared exactly).

    Returns
    -------
    numpy.ndarray of bool, shape (N,)

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(12).reshape(4, 3); x[3] = x[1]
    >>> duplicate_mask(x).tolist()
    [False, False, False, True]
    """
    images = np.asarray(images)
    seen: set[bytes] = set()
    out = np.zeros(len(images), bool)
    for i, cell in enumerate(images):
        key = hashlib.blake2b(np.ascontiguousarray(cell).tobytes(), digest_size=16).digest()
        if key in seen:
            out[i] = True
        else:
            seen.add(key)
    return out
