"""Memory-mapped inputs: release the pages a pass has read, and ``[X, 1]``
without copying the file.

A pass over a file larger than memory keeps about one chunk resident: after
each chunk its pages are handed back to the OS (:func:`release_pages`; the
mapping is read-only and file-backed, so the data stay valid). ``_WithOnes``
adds the constant column a chunk at a time.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

Array = np.ndarray


def _mapping(X: Any) -> tuple[mmap.mmap, int] | None:
    """The read-only file mapping behind ``X`` and the offset of ``X``'s first byte
    in it, or ``None`` for arrays in memory."""
    base = X
    while base is not None and not isinstance(getattr(base, "_mmap", None), mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not X.flags.c_contiguous:
        return None
    mm = base._mmap
    if mm.closed:
        return None
    start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    return mm, X.ctypes.data - start


def release_pages(X: Any, rows: slice | None = None) -> None:
    """Drop a memory-mapped ``X``'s resident pages for ``rows`` (all rows if None).

    The mapping is read-only and file-backed, so the data stay valid: a later read
    faults the pages back in from the page cache or the file. A no-op for arrays in
    memory and where ``madvise`` is not available.
    """
    if isinstance(X, _WithOnes):
        X = X.X
    found = _mapping(X) if hasattr(mmap, "MADV_DONTNEED") else None
    if found is None:
        return
    mm, offset = found
    row_bytes = X.strides[0] if X.ndim > 1 else X.itemsize
    first, last = (0, X.shape[0]) if rows is None else (rows.start, rows.stop)
    begin = offset + first * row_bytes
    end = min(offset + last * row_bytes, len(mm))
    begin -= begin % mmap.PAGESIZE
    if end > begin:
        mm.madvise(mmap.MADV_DONTNEED, begin, end - begin)


class _WithOnes:
    """``[X, 1]`` for a memory-mapped ``X``, built a chunk at a time (the rows a
    pass or :func:`take_rows` reads), so that a file is not copied into memory."""

    def __init__(self, X: Any):
        self.X = X
        self.shape = (X.shape[0], X.shape[1] + 1)
        self.ndim, self.dtype = 2, np.dtype(np.float64)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> Array:
        return _append_ones(self.X[rows])


def _append_ones(X: Any) -> Array:
    """``[X, 1]`` as a new in-memory float64 array."""
    return np.column_stack([np.asarray(X, dtype=np.float64), np.ones(X.shape[0])])
