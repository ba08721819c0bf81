"""Passes over the rows: the only way the learners read the inputs ``X``.

Three operations, each one pass (or less) over ``X``:

* :func:`reduce_rows` — ``sum_chunks kernel(X_chunk, *per_row_chunks)``, for the
  moments, EM's gradients and Newton matrices;
* :func:`map_rows` — the kernel's per-row results, stacked (residuals, predictions);
* :func:`take_rows` — some rows as an in-memory array (a Newton subset, a screen).

``X`` may be

* an in-memory array: the kernel runs on consecutive row chunks of about 1 MiB;
* a memory-mapped array (``np.load(..., mmap_mode="r")``, :func:`moelearn.io.
  stream_table`): the same, and each chunk's pages are released once read, so a
  file larger than memory is read with about one chunk resident;
* a PyTorch tensor (on any device; the ``torch`` extra): the kernels run on the
  tensor's chunks where the tensor lives (in float64), through the array API
  (:func:`namespace`, :func:`like`); only their small results (sums of ``d x d``
  at most, or the per-row results of a map) come back to the host;
* a Dask array (rows chunked, the ``dask`` extra): a pass is one Dask computation,
  a task per block (the kernel on the block's row chunks) and a tree of sums, run
  by the active scheduler (e.g. a ``dask.distributed`` cluster). The per-row
  vectors (``y`` and what is computed from it, ``n x k`` at most) stay with the
  caller and travel with the tasks; ``X`` stays where Dask keeps it.

Kernels are module-level functions (or ``functools.partial`` of them) returning an
array, a float or a tuple of those, so that partial results add up and the tasks
can be sent to other processes. They take their array functions from
``xp = namespace(chunk)`` and move their NumPy parameters next to the chunk with
``like(parameter, chunk)``, so that one kernel serves NumPy arrays and tensors.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextvars import ContextVar
from functools import cache
from typing import Any, Protocol

import numpy as np

from moelearn._arrays import (
    _host,
    _host_results,
    _on_device,
    add_results,
    blas_threads,
    is_dask,
    is_torch,
    like,
    one_blas_thread,
)
from moelearn._mmap import _append_ones, _mapping, _WithOnes, release_pages

Array = np.ndarray


class RowSource(Protocol):
    """What a pass reads: a 2-D table indexed by rows. A NumPy array or memory
    map, a Dask array, a PyTorch tensor, or ``[X, 1]`` over a memory map
    (:func:`with_ones`); :func:`take_rows` turns any slice of it into NumPy."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, rows: Any, /) -> Any: ...


Kernel = Callable[..., Any]

#: Bytes of ``X`` per chunk: the chunk and the kernels' temporaries stay in cache,
#: and NumPy's temporaries stay below the 4 MiB from which it asks the kernel for
#: huge pages (fresh pages to fault in at every allocation). At n=1e6, d=50 (3
#: interleaved fits) 1 MiB made the spectral step 5.3-5.7 passes and the whole fit
#: 19.3-19.4, against 6.4 and 22.1 with 4 MiB; 256 KiB was slower again (7.8,
#: 22.8).
_CHUNK_BYTES = 1 << 20
#: At least this many rows per chunk (wide inputs): at d=400, n=2e5, 327-row chunks
#: made the spectral step 2.06 s against 1.70 s with 1310 rows.
_MIN_CHUNK_ROWS = 1024


#: Rows per chunk set by :func:`fixed_chunk_rows` (None: from the sizes above).
_FIXED_ROWS: ContextVar[int | None] = ContextVar("moelearn_chunk_rows", default=None)


@contextlib.contextmanager
def fixed_chunk_rows(rows: int) -> Iterator[None]:
    """Within the block, every pass in this thread reads ``rows`` rows a chunk
    (tests use it to check that chunk sums add up; Dask's workers keep theirs)."""
    token = _FIXED_ROWS.set(int(rows))
    try:
        yield
    finally:
        _FIXED_ROWS.reset(token)


def chunk_rows(n_features: int, scale: int = 1) -> int:
    """Rows per chunk for ``n_features`` columns of float64 (about 1 MiB, at least
    1024 rows; times ``scale``), unless :func:`fixed_chunk_rows` says otherwise."""
    fixed = _FIXED_ROWS.get()
    if fixed is not None:
        return fixed
    rows = scale * _CHUNK_BYTES // (8 * max(n_features, 1))
    return int(np.clip(rows, scale * _MIN_CHUNK_ROWS, scale << 16))


def row_slices(
    n_samples: int, n_features: int, *, mapped: Any = None, scale: int = 1
) -> Iterator[slice]:
    """Consecutive row slices covering ``range(n_samples)``.

    With ``mapped`` (the array the loop reads), a memory-mapped array's pages of
    each chunk are handed back to the OS when the loop moves on
    (:func:`release_pages`), so a pass over a file larger than memory keeps about
    one chunk resident. ``scale`` multiplies the chunk size (for compiled kernels
    that split a chunk between threads).
    """
    step = chunk_rows(n_features, scale)
    for start in range(0, n_samples, step):
        rows = slice(start, min(start + step, n_samples))
        yield rows
        if mapped is not None:
            release_pages(mapped, rows)


#: Partial sums are added in groups of this many (the depth of the Dask tree).
_TREE_WIDTH = 8


#: ``(callback, [passes so far])`` of :func:`report_passes` in this thread, or None.
_PROGRESS: ContextVar[tuple[Callable[[int, int, int], None], list[int]] | None] = (
    ContextVar("moelearn_pass_progress", default=None)
)


@contextlib.contextmanager
def report_passes(callback: Callable[[int, int, int], None]) -> Iterator[None]:
    """Within the block, ``callback(pass_number, rows_done, rows_total)`` is called
    after every chunk of every pass over the rows made in this thread (a Dask
    cluster's passes run elsewhere and are not reported)."""
    token = _PROGRESS.set((callback, [0]))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@contextlib.contextmanager
def unreported() -> Iterator[None]:
    """Passes within the block are not reported to :func:`report_passes`: they
    run over a row sample in memory, not over the data."""
    token = _PROGRESS.set(None)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _chunk_results(
    kernel: Kernel,
    X: RowSource,
    per_row: tuple,
    names: tuple,
    scale: int = 1,
    own_threads: bool = False,
) -> Iterator[Any]:
    """``kernel`` on each row chunk of ``X``, the results in row order; each
    chunk is reported to :func:`report_passes`' callback (and a memory map's
    pages released) once its result is in.

    The chunks run on :func:`pass_threads` threads, one BLAS thread each, while
    each chunk's result is smaller than the chunk (so that the results waiting
    their turn cost little memory); else, and for kernels that run their own
    threads (``own_threads``, the compiled pass) or tensors' passes, one after
    another. The caller adds or stacks the results in row order either way, so
    the threads do not change them. BLAS's own threads share a chunk's small
    products out poorly: at n = 1e6, d = 50 on 2 cores the input pass's kernel
    took 107 ms on one BLAS thread, 206 ms on two, and 57-63 ms on two threads
    with one BLAS thread each (in a later hour 74-106 ms: how much of the
    second core this machine gets varies; see :func:`fit_threads`).
    """
    progress = _PROGRESS.get()
    number = 0
    if progress is not None:
        progress[1][0] += 1
        number = progress[1][0]
    slices = row_slices(*X.shape, scale=scale)

    def run(rows: slice) -> Any:
        return _call(kernel, _kernel_args(X, rows, per_row), names)

    def done(rows: slice) -> None:
        release_pages(X, rows)
        if progress is not None:
            progress[0](number, rows.stop, X.shape[0])

    first = next(slices, None)
    if first is None:
        return
    result = run(first)
    threads = 1 if own_threads or is_torch(X) else pass_threads()
    size = _result_bytes(result)
    room = (first.stop - first.start) * int(np.prod(X.shape[1:])) * 8
    done(first)
    yield result
    del result  # (not held while the next chunk's is computed)
    if threads == 1 or size > room:
        for rows in slices:
            result = run(rows)
            done(rows)
            yield result
            del result
        return
    group = int(np.clip(room // max(size, 1), 1, _GROUP_CHUNKS))
    yield from _threaded(run, done, slices, threads, group)


#: Chunks a pass's thread takes at a time: handing out a task costs about 0.1
#: ms (at n = 1e6, d = 50 the input pass took 80-100 ms with a chunk a task, 65
#: ms with 8).
_GROUP_CHUNKS = 8


def _threaded(
    run, done, slices: Iterator[slice], threads: int, group: int
) -> Iterator[Any]:
    """``run`` on each of ``slices`` on ``threads`` threads with one BLAS thread
    each, ``group`` consecutive chunks a task, at most ``2 threads`` tasks in
    flight; the results in order. Each task runs in a copy of the caller's
    context (its context variables, NumPy's error state)."""
    pool = _pool(threads, os.getpid())
    pending: collections.deque = collections.deque()

    def work(chunks: list[slice]) -> list:
        return [run(rows) for rows in chunks]

    def submit() -> None:
        chunks = list(itertools.islice(slices, group))
        if chunks:
            task = pool.submit(contextvars.copy_context().run, work, chunks)
            pending.append((chunks, task))

    with one_blas_thread():
        try:
            for _ in range(2 * threads):
                submit()
            while pending:
                chunks, task = pending.popleft()
                results = task.result()
                submit()
                for rows, result in zip(chunks, results, strict=True):
                    done(rows)
                    yield result
                del results, result
        finally:  # (an error, or the caller stopped early: no task left running)
            for _, task in pending:
                task.cancel()
            wait([task for _, task in pending])


#: Threads the passes run their chunks on, set for a fit by :func:`fit_threads`
#: (None: as many as BLAS may use at the time of the pass).
_PASS_THREADS: ContextVar[int | None] = ContextVar(
    "moelearn_pass_threads", default=None
)


def pass_threads() -> int:
    """Threads a pass runs its chunks on: as many as BLAS may use (so that a
    limit set with ``threadpoolctl`` or ``OMP_NUM_THREADS`` holds), counted when
    the fit began (:func:`fit_threads`) or else now."""
    threads = _PASS_THREADS.get()
    return blas_threads() if threads is None else threads


#: Up to this many free parameters a fit's (and EM's) linear algebra runs on one
#: BLAS thread (:func:`fit_threads`).
SMALL_PROBLEM_PARAMETERS = 400


@contextlib.contextmanager
def fit_threads(n_params: int) -> Iterator[None]:
    """Within the block (a fit of ``n_params`` free parameters), passes run their
    chunks on as many threads as BLAS may use at its start; up to
    :data:`SMALL_PROBLEM_PARAMETERS` BLAS runs one thread throughout.

    BLAS's idle threads spin for a while after each call, taking cores from the
    passes' threads and the compiled kernels' that follow, and a small
    problem's matrices are too small to share out (155 x 155: eigh took 2.2 ms
    on one thread, 4.4 on two). Measured at n = 1e6, d = 50 (6 fits each, in
    passes ``X.T @ (X @ v)``): the refinement took 9.5 passes with BLAS's
    threads, 8.4 with one BLAS thread; the spectral step 4.5, 5.0 with one BLAS
    thread, and 4.1 with one BLAS thread and the chunks on two threads."""
    token = _PASS_THREADS.set(pass_threads())
    try:
        small = n_params <= SMALL_PROBLEM_PARAMETERS
        with one_blas_thread() if small else contextlib.nullcontext():
            yield
    finally:
        _PASS_THREADS.reset(token)


@cache
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """The passes' threads in process ``pid`` (a forked child makes its own: the
    parent's threads are not in it)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="moelearn-pass")


def _result_bytes(result: Any) -> int:
    """Bytes of a kernel's result (arrays, floats, tuples of them)."""
    if isinstance(result, tuple):
        return sum(_result_bytes(part) for part in result)
    return int(getattr(result, "nbytes", 8))


def kernels_write_per_row(X: Any) -> bool:
    """Whether the kernels of a pass over ``X`` get views of the per-row arrays
    (:func:`_kernel_args`), so that what they write into them stays: not for a
    tensor ``X`` (the arrays are copied to its device) or a Dask array (its tasks
    get their own)."""
    return not (is_torch(X) or is_dask(X))


def _kernel_args(X: Any, rows: slice, per_row: tuple) -> tuple:
    """A chunk of ``X`` and of the per-row arrays, as the kernel takes them: NumPy
    float64, or for a tensor ``X`` tensors on its device."""
    if is_torch(X):
        chunk = _on_device(X[rows])
        return (chunk, *(like(a[rows], chunk) for a in per_row))
    return (_host(X[rows]), *(a[rows] for a in per_row))


def _call(kernel: Kernel, args: tuple, names: tuple[str, ...]) -> Any:
    """``kernel`` on a chunk's arguments, the last ``len(names)`` by name."""
    if not names:
        return kernel(*args)
    split = len(args) - len(names)
    return kernel(*args[:split], **dict(zip(names, args[split:], strict=True)))


def _local_reduce(
    kernel: Kernel,
    X: RowSource,
    per_row: tuple,
    scale: int = 1,
    names: tuple = (),
    own_threads: bool = False,
) -> Any:
    total = None
    for part in _chunk_results(kernel, X, per_row, names, scale, own_threads):
        total = add_results(part) if total is None else _add_into(total, part)
        del part  # (not held while the next chunk's is added)
    return _host_results(total)


def _add_into(total: Any, part: Any) -> Any:
    """``total + part`` for kernel results, adding NumPy arrays in place (``total``
    is the reduction's own copy): a sum of two new arrays would hold four copies
    at once, and EM's curvature sums at d = 400 are 23 MB a copy."""
    if isinstance(total, tuple):
        return tuple(_add_into(t, p) for t, p in zip(total, part, strict=True))
    if total is None:
        return None
    if (
        isinstance(total, np.ndarray)
        and total.ndim
        and np.shape(part) == total.shape
        and total.dtype == np.result_type(total, part)
    ):
        total += part
        return total
    return total + part


def _local_map(
    kernel: Kernel, X: RowSource, per_row: tuple, names: tuple = ()
) -> Array:
    parts = [_host_results(part) for part in _chunk_results(kernel, X, per_row, names)]
    return np.concatenate(parts, axis=0)


def _blocks(X) -> tuple[list, list[slice]]:
    """Dask blocks of whole rows and the row slice each covers."""
    if len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    bounds = np.cumsum((0, *X.chunks[0]))
    slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    return list(X.to_delayed().ravel()), slices


def reduce_rows(
    kernel: Kernel,
    X,
    *per_row: Array,
    scale: int = 1,
    own_threads: bool = False,
    **named: Array | None,
) -> Any:
    """``sum over row chunks c of kernel(X[c], *(a[c] for a in per_row),
    **{name: a[c] for name, a in named})``.

    ``per_row`` and ``named`` arrays have the rows first (a ``None`` named array
    is left out). Returns what the kernel returns, summed. ``scale`` multiplies
    the chunk size (:func:`row_slices`); a kernel that runs its own threads says
    so with ``own_threads`` (its chunks then run one after another).
    """
    per_row, names = _with_named(per_row, named)
    if not is_dask(X):
        return _local_reduce(kernel, X, per_row, scale, names, own_threads)
    import dask

    blocks, slices = _blocks(X)
    parts = [
        dask.delayed(_local_reduce, pure=True)(
            kernel, block, tuple(a[s] for a in per_row), scale, names
        )
        for block, s in zip(blocks, slices, strict=True)
    ]
    while len(parts) > 1:
        parts = [
            dask.delayed(add_results, pure=True)(*parts[i : i + _TREE_WIDTH])
            for i in range(0, len(parts), _TREE_WIDTH)
        ]
    return dask.compute(parts[0])[0]


def map_rows(kernel: Kernel, X: RowSource, *per_row: Array, **named) -> Array:
    """``kernel`` on every row chunk (per-row arrays as in :func:`reduce_rows`),
    results stacked along the first axis (in memory, whatever ``X`` is)."""
    per_row, names = _with_named(per_row, named)
    if not is_dask(X):
        return _local_map(kernel, X, per_row, names)
    import dask

    blocks, slices = _blocks(X)
    parts = [
        dask.delayed(_local_map, pure=True)(
            kernel, block, tuple(a[s] for a in per_row), names
        )
        for block, s in zip(blocks, slices, strict=True)
    ]
    return np.concatenate(dask.compute(*parts), axis=0)


def _with_named(per_row: tuple, named: dict) -> tuple[tuple, tuple[str, ...]]:
    """The positional and the (present) named per-row arrays as one tuple, and
    the names of its last entries."""
    present = {name: a for name, a in named.items() if a is not None}
    return (*per_row, *present.values()), tuple(present)


def take_rows(X: RowSource, rows: Any) -> Array:
    """``X[rows]`` as an in-memory float64 array (``rows`` a slice or sorted
    indices); a memory-mapped ``X``'s pages are released afterwards."""
    if is_dask(X):
        return np.asarray(X[rows].compute(), dtype=np.float64)
    if isinstance(X, _WithOnes):
        return _append_ones(take_rows(X.X, rows))
    if is_torch(X):
        if not isinstance(rows, slice):
            import torch

            rows = torch.as_tensor(np.asarray(rows), device=X.device)
        return _host(X[rows])
    if _mapping(X) is None or (isinstance(rows, slice) and rows.step in (None, 1)):
        return np.asarray(X[rows])
    # Scattered rows of a file mapping: gathered one chunk of the file at a time,
    # each chunk's pages released before the next (a page fault maps its
    # neighbours too, so rows spread over the file would make all of it resident).
    index = np.arange(X.shape[0])[rows] if isinstance(rows, slice) else rows
    if np.any(np.diff(index) < 0):
        order = np.argsort(index, kind="stable")
        return take_rows(X, index[order])[np.argsort(order)]
    out = np.empty((len(index), *X.shape[1:]), dtype=X.dtype)
    for part in row_slices(*X.shape):
        lo, hi = np.searchsorted(index, [part.start, part.stop])
        if hi > lo:  # only the file chunks that hold requested rows are touched
            out[lo:hi] = X[index[lo:hi]]
            release_pages(X, part)
    return out


def with_ones(X: RowSource) -> RowSource:
    """``[X, 1]``: the design with a constant column (for intercepts); a Dask
    array stays one, chunked by rows; a memory map is not copied (its rows get the
    column as the passes read them)."""
    if _mapping(X) is not None:
        return _WithOnes(X)
    if is_dask(X):
        import dask.array as da

        ones = da.ones((X.shape[0], 1), chunks=(X.chunks[0], 1))
        return da.concatenate([X, ones], axis=1).rechunk({1: -1})
    if is_torch(X):
        import torch

        return torch.cat([X, X.new_ones((X.shape[0], 1))], dim=1)
    return _append_ones(X)
