"""Files larger than memory, read in batches into a memory-mapped ``X``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from moelearn._mmap import release_pages
from moelearn.io._features import (
    Features,
    _complete_rows,
    _used_columns,
    _with_categorical,
    category_levels,
    encode_categories,
)
from moelearn.io._tables import (
    Select,
    Table,
    _csv_header,
    _not_numeric,
    _positions,
    _suffix,
    _text_columns,
    level_texts,
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
    categorical: list[str] | None = None,
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
    (:func:`feature_columns`); the ``categorical`` ones enter as 0/1 columns
    per level (:func:`encode_categories`), their levels found by a first pass
    over those columns.

    Yields
    ------
    Features
        ``X`` the memory map.
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
    categorical = list(categorical or [])
    start = 1 if weight is None else 2  # (columns: target, weight, features)
    select, chosen = _with_categorical(
        path,
        _used_columns(path, target, weight, features, exclude),
        categorical,
        start,
    )
    text = frozenset(categorical)
    categories = _streamed_levels(path, suffix, select, text, drop_missing)
    batches, columns, total = _open_batches(path, suffix, select, text)
    with tempfile.TemporaryDirectory(prefix="moelearn-", dir=scratch) as folder:
        raw = Path(folder) / "X.raw"
        targets: list[Array] = []
        weights: list[Array] = []
        names: list[str] = []
        done = kept = 0
        with open(raw, "wb") as fh:
            for block, texts in batches:
                table, _ = _complete_rows(
                    path, Table(block, columns, texts), drop_missing, done
                )
                X, names = encode_categories(path, table, chosen[start:], categories)
                fh.write(np.ascontiguousarray(X).tobytes())
                targets.append(table.data[:, 0].copy())
                if weight is not None:
                    weights.append(table.data[:, 1].copy())
                done, kept = done + len(block), kept + len(table.data)
                if progress is not None:
                    progress(done, total)
        if kept == 0:
            what = "every row has a missing value" if done else "no data rows"
            raise ValueError(f"{path}: {what}")
        _release_arrow_memory()
        X = np.memmap(raw, dtype=np.float64, mode="r", shape=(kept, len(names)))
        w = np.concatenate(weights) if weights else None
        y = np.concatenate(targets)
        yield Features(X, y, w, names, categories, done - kept)


def _streamed_levels(
    path: Path, suffix: str, select: Select, text: frozenset[str], drop_missing: bool
) -> dict[str, list[str]]:
    """The levels of the ``text`` columns, from a pass over the rows that are
    complete (:func:`category_levels`)."""
    if not text:
        return {}
    seen: dict[str, set[str]] = {name: set() for name in text}
    batches, columns, _ = _open_batches(path, suffix, select, text)
    done = 0
    for block, texts in batches:
        table, _ = _complete_rows(
            path, Table(block, columns, texts), drop_missing, done
        )
        for name, values in table.text.items():
            seen[name].update(values.tolist())
        done += len(block)
    return {
        name: category_levels(path, name, np.array(sorted(levels), dtype=object))
        for name, levels in seen.items()
    }


def _release_arrow_memory() -> None:
    """Hand pyarrow's freed buffers back to the OS (its pool keeps them)."""
    try:
        import pyarrow as pa
    except ImportError:
        return
    pa.default_memory_pool().release_unused()


def _open_batches(
    path: Path, suffix: str, select: Select, text: frozenset[str] = frozenset()
):
    """``(iterator of (float64 block, {text column: strings}), numeric column
    names, rows or None)`` of the columns ``select`` chooses, in its order; those
    in ``text`` read as strings (a missing one ``""``)."""
    if suffix == ".npy":
        return _npy_batches(path, select, text)
    try:
        import pyarrow as pa
    except ImportError:
        raise ValueError(
            f"{path}: streaming CSV or Parquet needs pyarrow: pip install "
            "'moelearn[parquet]'"
        ) from None
    opener = _parquet_batches if suffix == ".parquet" else _csv_batches
    try:
        batches, names, total = opener(path, select, text)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: cannot read the file ({exc})") from None
    numeric = [name for name in names if name not in text]
    return _arrow_blocks(path, batches, names, text), numeric, total


def _npy_batches(path: Path, select: Select, text: frozenset[str]):
    """A ``.npy`` file's blocks, memory-mapped (pages released after each)."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.dtype.kind not in "fiu":
        raise ValueError(
            f"{path}: expected a numeric 2-D array with >= 2 columns, got "
            f"{arr.dtype} of shape {arr.shape}"
        )
    names = [f"x{i}" for i in range(arr.shape[1] - 1)] + ["y"]
    wanted = select(names) or names
    numeric = [name for name in wanted if name not in text]
    idx = _positions(path, names, numeric)
    coded = {name: names.index(name) for name in text}

    def npy_blocks():
        for start in range(0, arr.shape[0], STREAM_BATCH_ROWS):
            rows = slice(start, start + STREAM_BATCH_ROWS)
            block = np.asarray(arr[rows][:, idx], dtype=np.float64)
            texts = {
                name: level_texts(arr[rows, j].tolist()) for name, j in coded.items()
            }
            release_pages(arr, rows)
            yield block, texts

    return npy_blocks(), numeric, arr.shape[0]


def _parquet_batches(path: Path, select: Select, text: frozenset[str]):
    """A Parquet file's record batches of the chosen columns, their names and the
    row count."""
    import pyarrow.parquet as pq

    # pre_buffer=False: with it, pyarrow keeps every row group it has read.
    source = pq.ParquetFile(path, pre_buffer=False)
    names = list(source.schema_arrow.names)
    wanted = select(names) or names
    _positions(path, names, wanted)
    schema = source.schema_arrow
    words = [n for n in wanted if n not in text and not _numeric_type(schema, n)]
    if words:
        raise ValueError(_not_numeric(path, words))
    batches = source.iter_batches(batch_size=STREAM_BATCH_ROWS, columns=wanted)
    return batches, wanted, source.metadata.num_rows


def _csv_batches(path: Path, select: Select, text: frozenset[str]):
    """A CSV file's record batches of the chosen columns (as float64, those in
    ``text`` as strings) and their names; text in the others (seen in the first
    rows) is an error naming them all."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    names = _csv_header(path)
    wanted = select(names) or names
    numeric = [name for name in wanted if name not in text]
    words = _text_columns(path, names, _positions(path, names, numeric))
    if words:
        raise ValueError(_not_numeric(path, words))
    # Every column read as float64: type inference on the first block alone would
    # reject a later block's decimals in an integer-looking column.
    types = {name: pa.string() if name in text else pa.float64() for name in wanted}
    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=STREAM_CSV_BLOCK_BYTES),
        convert_options=pcsv.ConvertOptions(include_columns=wanted, column_types=types),
    )
    return reader, list(reader.schema.names), None


def _numeric_type(schema, name: str) -> bool:
    """Whether the Arrow ``schema`` types column ``name`` as a number."""
    import pyarrow as pa

    kind = schema.field(name).type
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))


def _arrow_blocks(path: Path, batches, names: list[str], text: frozenset[str]):
    """Record batches as float64 blocks (a missing value NaN) and the ``text``
    columns as strings (a missing one ``""``); a non-numeric column among the
    others is an error naming it."""
    import pyarrow as pa

    try:
        for batch in batches:
            cols, texts = [], {}
            for name, col in zip(names, batch.columns, strict=True):
                if name in text:
                    texts[name] = level_texts(col.to_pylist())
                    continue
                if not _numeric_type(batch.schema, name):
                    raise ValueError(_not_numeric(path, [name]))
                values = col.to_numpy(zero_copy_only=False)  # (nulls: NaN)
                cols.append(values.astype(np.float64))
            yield np.column_stack(cols), texts
    except pa.ArrowException as exc:
        raise ValueError(f"{path}: cannot read the file ({exc})") from None
