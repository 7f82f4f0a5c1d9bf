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


def duplicate_mask(images, *, block_size: int = 256) -> np.ndarray:
    """``True`` for every cell that repeats an earlier cell byte for byte.

    Parameters
    ----------
    images : array-like, shape (N, ...)
        One entry per cell (any dtype; compared exactly): a NumPy array or a lazy
        array (:class:`~pxpermute.datasets.LazyHDF5Array`,
        :class:`~pxpermute.datasets.HDF5CellFiles`), read ``block_size`` cells at a
        time so memory stays bounded by one block.
    block_size : int, default 256
        Cells read per block.

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
    if isinstance(images, (list, tuple)):
        images = np.asarray(images)
    n = len(images)
    seen: set[bytes] = set()
    out = np.zeros(n, bool)
    step = max(1, int(block_size))
    for start in range(0, n, step):
        block = np.asarray(images[start:min(n, start + step)])
        for j, cell in enumerate(block):
            key = hashlib.blake2b(np.ascontiguousarray(cell).tobytes(), digest_size=16).digest()
            if key in seen:
                out[start + j] = True
            else:
                seen.add(key)
    return out
