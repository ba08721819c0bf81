"""Files larger than memory, read in batches into a memory-mapped ``X``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from moelearn._mmap import release_pages
from moelearn.io._features import Features, _used_columns
from moelearn.io._tables import (
    Select,
    _csv_header,
    _not_numeric,
    _positions,
    _suffix,
    _text_columns,
    check_finite,
)

Array = np.ndarray


#: Rows per batch when streaming a file (about 8 MiB of float64 at 20 columns).
STREAM_BATCH_ROWS = 50_000


#: CSV is streamed in blocks of this many bytes (pyarrow splits at line ends).
STREAM_CSV_BLOCK_BYTES = 8 << 20


@contextlib.contextmanager
def stream_table(
    path: str | os.PathLike,
    target: str,
    scratch: str | os.PathLike | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    weight: str | None = None,
    features: list[str] | None = None,
    exclude: list[str] | None = None,
    drop_missing: bool = False,
) -> Iterator[Features]:
    """Stream a data file into a memory-mapped ``X`` and an in-memory ``y``.

    The file is read in batches: :data:`STREAM_BATCH_ROWS` rows of Parquet (pyarrow)
    or ``.npy`` (a read-only memory map), :data:`STREAM_CSV_BLOCK_BYTES` of CSV
    and the feature columns are written, batch by batch, to a float64 ``.npy``
    scratch file in ``scratch`` (the system's temporary folder by default), which
    is opened read-only as ``X``: the estimators' chunked passes then read it with
    about one chunk resident at a time (:func:`moelearn._moments.release_pages`).
    Memory: ``y`` (8 bytes a row) plus a batch. The scratch file (8 bytes per
    feature and row) is removed when the block ends. ``progress(rows_done,
    rows_total or None)`` is called after each batch. A missing value (NaN, or
    a :data:`MISSING` cell), an infinite or a non-numeric one raises
    ``ValueError`` naming the row and column; with ``drop_missing`` the rows
    with a missing value are left out instead (``Features.dropped``).

    ``weight`` names a column of sample weights, kept in memory like ``y``;
    ``features`` or ``exclude`` choose the feature columns
    (:func:`feature_columns`).

    Yields
    ------
    Features
        ``X`` the memory map; no ``categories``.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if suffix == ".npz":
        raise ValueError(
            f"{path}: .npz archives cannot be streamed (they are zipped); convert "
            "to .npy, CSV or Parquet"
        )
    select = _used_columns(path, target, weight, features, exclude)
    batches, columns, total = _open_batches(path, suffix, select)
    start = 1 if weight is None else 2  # (columns: target, weight, features)
    with tempfile.TemporaryDirectory(prefix="moelearn-", dir=scratch) as folder:
        raw = Path(folder) / "X.raw"
        targets: list[Array] = []
        weights: list[Array] = []
        done = kept = 0
        with open(raw, "wb") as fh:
            for block in batches:
                missing = np.isnan(block).any(axis=1)
                if drop_missing and missing.any():
                    block, done = block[~missing], done + int(missing.sum())
                check_finite(path, block, columns, done)
                fh.write(np.ascontiguousarray(block[:, start:]).tobytes())
                targets.append(block[:, 0].copy())
                if weight is not None:
                    weights.append(block[:, 1].copy())
                done, kept = done + len(block), kept + len(block)
                if progress is not None:
                    progress(done, total)
        if kept == 0:
            what = "every row has a missing value" if done else "no data rows"
            raise ValueError(f"{path}: {what}")
        _release_arrow_memory()
        shape = (kept, len(columns) - start)
        X = np.memmap(raw, dtype=np.float64, mode="r", shape=shape)
        w = np.concatenate(weights) if weights else None
        y = np.concatenate(targets)
        yield Features(X, y, w, columns[start:], dropped=done - kept)


def _release_arrow_memory() -> None:
    """Hand pyarrow's freed buffers back to the OS (its pool keeps them)."""
    try:
        import pyarrow as pa
    except ImportError:
        return
    pa.default_memory_pool().release_unused()


def _open_batches(path: Path, suffix: str, select: Select):
    """``(iterator of float64 (rows, columns) blocks, column names, rows or None)``
    of the columns ``select`` chooses, in its order."""
    if suffix == ".npy":
        return _npy_batches(path, select)
    try:
        import pyarrow as pa
    except ImportError:
        raise ValueError(
            f"{path}: streaming CSV or Parquet needs pyarrow: pip install "
            "'moelearn[parquet]'"
        ) from None
    opener = _parquet_batches if suffix == ".parquet" else _csv_batches
    try:
        batches, names, total = opener(path, select)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: cannot read the file ({exc})") from None
    return _arrow_blocks(path, batches, names), names, total


def _npy_batches(path: Path, select: Select):
    """A ``.npy`` file's blocks, memory-mapped (pages released after each)."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.dtype.kind not in "fiu":
        raise ValueError(
            f"{path}: expected a numeric 2-D array with >= 2 columns, got "
            f"{arr.dtype} of shape {arr.shape}"
        )
    names = [f"x{i}" for i in range(arr.shape[1] - 1)] + ["y"]
    wanted = select(names) or names
    idx = _positions(path, names, wanted)

    def npy_blocks():
        for start in range(0, arr.shape[0], STREAM_BATCH_ROWS):
            rows = slice(start, start + STREAM_BATCH_ROWS)
            block = np.asarray(arr[rows][:, idx], dtype=np.float64)
            release_pages(arr, rows)
            yield block

    return npy_blocks(), wanted, arr.shape[0]


def _parquet_batches(path: Path, select: Select):
    """A Parquet file's record batches of the chosen columns, their names and the
    row count."""
    import pyarrow.parquet as pq

    # pre_buffer=False: with it, pyarrow keeps every row group it has read.
    source = pq.ParquetFile(path, pre_buffer=False)
    names = list(source.schema_arrow.names)
    wanted = select(names) or names
    _positions(path, names, wanted)
    text = [name for name in wanted if not _numeric_type(source.schema_arrow, name)]
    if text:
        raise ValueError(_not_numeric(path, text))
    batches = source.iter_batches(batch_size=STREAM_BATCH_ROWS, columns=wanted)
    return batches, wanted, source.metadata.num_rows


def _csv_batches(path: Path, select: Select):
    """A CSV file's record batches of the chosen columns (as float64) and their
    names; text in those columns (seen in the first rows) is an error naming
    them all."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    names = _csv_header(path)
    wanted = select(names) or names
    text = _text_columns(path, names, _positions(path, names, wanted))
    if text:
        raise ValueError(_not_numeric(path, text))
    # Every column read as float64: type inference on the first block alone would
    # reject a later block's decimals in an integer-looking column.
    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=STREAM_CSV_BLOCK_BYTES),
        convert_options=pcsv.ConvertOptions(
            include_columns=wanted, column_types=dict.fromkeys(wanted, pa.float64())
        ),
    )
    return reader, list(reader.schema.names), None


def _numeric_type(schema, name: str) -> bool:
    """Whether the Arrow ``schema`` types column ``name`` as a number."""
    import pyarrow as pa

    kind = schema.field(name).type
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))


def _arrow_blocks(path: Path, batches, names: list[str]):
    """Record batches as float64 blocks (a missing value NaN); a non-numeric
    column is an error naming it."""
    import pyarrow as pa

    try:
        for batch in batches:
            cols = []
            for name, col in zip(names, batch.columns, strict=True):
                if not _numeric_type(batch.schema, name):
                    raise ValueError(_not_numeric(path, [name]))
                values = col.to_numpy(zero_copy_only=False)  # (nulls: NaN)
                cols.append(values.astype(np.float64))
            yield np.column_stack(cols)
    except pa.ArrowException as exc:
        raise ValueError(f"{path}: cannot read the file ({exc})") from None
