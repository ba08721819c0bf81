"""Reading data files, writing results atomically, and models as JSON (no pickle)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moelearn._mmap import release_pages
from moelearn._validation import check_unique_names

Array = np.ndarray

__all__ = [
    "Table",
    "atomic_path",
    "load_model",
    "read_table",
    "save_model",
    "stream_table",
    "write_table",
]

FORMAT = "moelearn-model"
FORMAT_VERSION = 1
SUFFIXES = (".csv", ".npy", ".npz", ".parquet")


@dataclass
class Table:
    """Numeric columns read from a file."""

    data: Array  # (n, p)
    columns: list[str]
    #: Columns read as text (:func:`read_features`' ``categorical``), by name.
    text: dict[str, Array] = field(default_factory=dict)

    def split(self, target: str | None) -> tuple[Array, Array | None, list[str]]:
        """``(X, y, feature_names)``; ``y`` is None when ``target`` is None."""
        if target is None:
            return self.data, None, list(self.columns)
        j = column_index(self.columns, target, "target")
        keep = [i for i in range(len(self.columns)) if i != j]
        return self.data[:, keep], self.data[:, j], [self.columns[i] for i in keep]

    def columns_named(self, names: list[str] | None, path: Path) -> Table:
        """The columns ``names`` in that order (all when None)."""
        if names is None:
            return self
        idx = _positions(path, self.columns, names)
        return Table(self.data[:, idx], list(names))


@dataclass
class Features:
    """A data file's columns ready to fit: :func:`read_features` and
    :func:`stream_table` give them."""

    X: Array
    y: Array
    sample_weight: Array | None
    names: list[str]
    #: Each categorical column's levels, the first the reference.
    categories: dict[str, list[str]] = field(default_factory=dict)
    #: Rows left out for a missing value (``drop_missing``).
    dropped: int = 0


#: Cells read as a missing value (besides NaN), as R, pandas and spreadsheets
#: write them.
MISSING = frozenset(
    {"", "NA", "N/A", "#N/A", "NaN", "nan", "-nan", "NULL", "null", "None"}
)


def check_finite(
    path: str | os.PathLike, data: Array, columns: list[str], done: int = 0
):
    """``ValueError`` naming the file, data row (counted from 1 after the header;
    ``done`` rows before ``data``) and column of the first NaN or infinite value."""
    bad = ~np.isfinite(data)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        if np.isnan(data[r, c]):
            raise ValueError(_missing_message(path, done + r, columns[c]))
        raise ValueError(
            f"{path}: an infinite value at data row {done + r + 1}, column "
            f"{columns[c]!r}; remove or impute it before fitting"
        )


def _missing_message(path: str | os.PathLike, row: int, column: str) -> str:
    return (
        f"{path}: a missing value (NaN, NA or empty) at data row {row + 1}, column "
        f"{column!r}; impute it, or leave out the rows with one (--drop-missing)"
    )


def column_index(columns: list[str], name: str, what: str) -> int:
    """Where column ``name`` is; ``ValueError`` listing the columns if absent."""
    if name not in columns:
        shown = ", ".join(map(repr, columns[:10])) + (
            " ..." if len(columns) > 10 else ""
        )
        raise ValueError(f"{what} column {name!r} not found; columns are: {shown}")
    return columns.index(name)


def feature_columns(
    columns: list[str],
    target: str,
    weight: str | None = None,
    features: list[str] | None = None,
    exclude: list[str] | None = None,
) -> tuple[int, int | None, list[int]]:
    """``(target index, weight index or None, feature indices)`` of a table with
    ``columns``: the named ``features`` in their order, or every column but the
    target, the weight and the ``exclude``d ones. ``ValueError`` for a name that
    is not a column, the target or weight named as a feature, a name given twice,
    or no feature left."""
    j = column_index(columns, target, "target")
    if weight is not None and weight == target:
        raise ValueError(f"weight column {weight!r} is the target column")
    w = None if weight is None else column_index(columns, weight, "weight")
    if features is not None:
        keep = [column_index(columns, name, "feature") for name in features]
        for name, i in zip(features, keep, strict=True):
            if i in (j, w):
                role = "target" if i == j else "weight"
                raise ValueError(f"feature {name!r} is the {role} column")
        twice = sorted({name for name in features if features.count(name) > 1})
        if twice:
            raise ValueError(f"feature column(s) {twice} named twice")
    else:
        dropped = {column_index(columns, name, "excluded") for name in exclude or ()}
        keep = [i for i in range(len(columns)) if i not in {j, w, *dropped}]
    if not keep:
        raise ValueError("no feature columns left: every column is excluded")
    return j, w, keep


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; use one of "
            + ", ".join(SUFFIXES)
        )
    return suffix


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> Table:
    """Read a numeric table from CSV (with a header), .npy, .npz or Parquet.

    * CSV: first line names the columns; every value read must be numeric.
    * .npy: a 2-D array; columns are named ``x0, x1, ...`` and the last ``y``.
    * .npz: arrays ``X`` (n, d) and ``y`` (n,) as written by ``moelearn simulate``,
      or any set of 1-D arrays of equal length (one column each).
    * Parquet (needs ``pyarrow``): numeric columns.

    ``columns`` names the columns to read, in that order (the others may hold
    anything, text included); all of them by default.
    """
    return _read_selected(path, lambda names: columns)


def read_features(
    path: str | os.PathLike,
    target: str,
    weight: str | None = None,
    features: list[str] | None = None,
    exclude: list[str] | None = None,
    categorical: list[str] | None = None,
    drop_missing: bool = False,
) -> Features:
    """The target, weight and feature columns (:func:`feature_columns`) of a
    data file, as :func:`stream_table` gives them but in memory. Only those
    columns are read, so the others may hold text or missing values.

    The ``categorical`` features (text or numeric codes) enter as one 0/1
    column per level but the first, named ``column=level``
    (:func:`encode_categories`). A missing value (:data:`MISSING`) in a column
    read is an error naming its row, or with ``drop_missing`` its row is left
    out (``Features.dropped`` counts them); an infinite value is an error."""
    categorical = list(categorical or [])
    select = _used_columns(path, target, weight, features, exclude)
    start = 1 if weight is None else 2
    chosen: list[str] = []

    def with_categories(names: list[str]) -> list[str]:
        chosen[:] = select(names) or names
        stray = [name for name in categorical if name not in chosen[start:]]
        if stray:
            raise ValueError(
                f"{path}: categorical column(s) {stray} are not among the features"
            )
        return chosen

    table = _read_selected(path, with_categories, frozenset(categorical))
    table, dropped = _complete_rows(path, table, drop_missing)
    categories = {
        name: category_levels(path, name, table.text[name]) for name in categorical
    }
    X, names = encode_categories(path, table, chosen[start:], categories)
    w_values = None if weight is None else table.data[:, 1]
    return Features(X, table.data[:, 0], w_values, names, categories, dropped)


def _complete_rows(
    path: str | os.PathLike, table: Table, drop_missing: bool
) -> tuple[Table, int]:
    """``table`` without the rows that have a missing value (NaN, or a
    :data:`MISSING` text), and how many they were; without ``drop_missing`` the
    first is an error. An infinite value is an error either way."""
    missing = np.isnan(table.data).any(axis=1)
    for values in table.text.values():
        missing |= np.isin(values, list(MISSING))
    if not drop_missing:
        check_finite(path, table.data, table.columns)
        for name, values in table.text.items():
            empty = np.isin(values, list(MISSING))
            if empty.any():
                raise ValueError(_missing_message(path, int(np.argmax(empty)), name))
        return table, 0
    if missing.all():
        raise ValueError(f"{path}: every row has a missing value")
    keep = ~missing
    kept = Table(
        table.data[keep],
        table.columns,
        {name: values[keep] for name, values in table.text.items()},
    )
    check_finite(path, kept.data, kept.columns)
    return kept, int(missing.sum())


#: At most this many 0/1 columns from one categorical column.
MAX_LEVELS = 1000


def category_levels(path: str | os.PathLike, name: str, values: Array) -> list[str]:
    """The levels of a categorical column, sorted (as numbers when they all are);
    the first is the reference, the one without a 0/1 column."""
    levels = sorted(set(values.tolist()))
    try:
        levels.sort(key=float)
    except ValueError:
        pass
    if len(levels) < 2:
        raise ValueError(
            f"{path}: categorical column {name!r} has a single level "
            f"{levels[0]!r}: it says nothing; leave it out"
        )
    if len(levels) > MAX_LEVELS + 1:
        raise ValueError(
            f"{path}: categorical column {name!r} has {len(levels)} levels, more "
            f"than {MAX_LEVELS + 1}: an id or a measurement, not a category"
        )
    return levels


def encode_categories(
    path: str | os.PathLike,
    table: Table,
    features: list[str],
    categories: dict[str, list[str]],
) -> tuple[Array, list[str]]:
    """The ``features`` of ``table`` as one matrix, each categorical column (its
    ``text``) replaced in place by the indicators ``x == level`` of its levels
    but the first, named ``column=level``. A level outside ``categories`` (one
    the model never saw) is an error naming the row."""
    columns, names = [], []
    for name in features:
        if name not in categories:
            columns.append(table.data[:, table.columns.index(name)])
            names.append(name)
            continue
        values, levels = table.text[name], categories[name]
        unknown = ~np.isin(values, levels)
        if unknown.any():
            row = int(np.argmax(unknown))
            raise ValueError(
                f"{path}: level {values[row]!r} of column {name!r} (data row "
                f"{row + 1}) is not one of the model's: {', '.join(levels[:10])}"
            )
        for level in levels[1:]:
            columns.append((values == level).astype(np.float64))
            names.append(f"{name}={level}")
    return np.column_stack(columns), names


#: Given a file's column names, the names to read (in order), or None for all.
Select = Callable[[list[str]], "list[str] | None"]


def _used_columns(
    path: str | os.PathLike,
    target: str,
    weight: str | None,
    features: list[str] | None,
    exclude: list[str] | None,
) -> Select:
    """The target's, the weight's (if any) and the features' names, in that
    order, from a file's column names (:func:`feature_columns`)."""

    def select(names: list[str]) -> list[str]:
        check_unique_names(Path(path), names)
        try:
            j, w, keep = feature_columns(names, target, weight, features, exclude)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return [names[i] for i in (j, *([] if w is None else [w]), *keep)]

    return select


def _read_selected(
    path: str | os.PathLike, select: Select, text: frozenset[str] = frozenset()
) -> Table:
    """The columns ``select`` chooses: those named in ``text`` as strings (in
    ``Table.text``), the others as numbers."""
    path = Path(path)

    def numeric(names: list[str]) -> list[str] | None:
        wanted = select(names)
        return wanted if not text else [n for n in wanted or names if n not in text]

    table = _read_numbers(path, numeric)
    if text:
        table.text = _read_text(path, sorted(text), len(table.data))
    return table


def _read_numbers(path: Path, select: Select) -> Table:
    suffix = _suffix(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        if suffix == ".csv":
            return _read_csv(path, select)
        if suffix == ".parquet":
            return _read_parquet(path, select)
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.ndim != 2 or arr.shape[1] < 2:
                raise ValueError(
                    f"{path}: expected a 2-D array with >= 2 columns, got shape {arr.shape}"
                )
            names = [f"x{i}" for i in range(arr.shape[1] - 1)] + ["y"]
            table = Table(_numeric(arr, path), names)
        else:
            table = _read_npz(path)
        return table.columns_named(select(table.columns), path)
    except (OSError, EOFError, KeyError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the file ({exc})") from None
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read the file ({exc})") from None


def _read_text(path: Path, names: list[str], n_rows: int) -> dict[str, Array]:
    """Columns ``names`` as strings (numbers written as read from a CSV file, or
    as integers where they are whole); a missing value is ``""``."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header = _csv_header(path)
        idx = _positions(path, header, names)
        with open(path, newline="") as fh:  # (numpy skips blank lines too)
            rows = [row for row in csv.reader(fh) if "".join(row).strip()][1:]
        found = {
            name: np.array(
                [row[i].strip() if i < len(row) else "" for row in rows], dtype=object
            )
            for name, i in zip(names, idx, strict=True)
        }
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=names)
        found = {
            name: np.array(
                ["" if v is None else _level_text(v) for v in table[name].to_pylist()],
                dtype=object,
            )
            for name in names
        }
    else:
        full = _read_numbers(path, lambda columns: names)
        found = {
            name: np.array([_level_text(v) for v in full.data[:, j]], dtype=object)
            for j, name in enumerate(names)
        }
    for name, values in found.items():
        if len(values) != n_rows:
            raise ValueError(f"{path}: column {name!r} has a different number of rows")
    return found


def _level_text(value: Any) -> str:
    """A level's text: whole numbers without a decimal point."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _positions(path: Path, names: list[str], wanted: list[str]) -> list[int]:
    """Where the ``wanted`` columns are among ``names``."""
    try:
        return [column_index(names, name, "the") for name in wanted]
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _numeric(arr: Any, path: Path) -> Array:
    try:
        return np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: the data are not numeric") from None


def _read_csv(path: Path, select: Select) -> Table:
    names = _csv_header(path)
    wanted = select(names)
    used = list(range(len(names)))
    if wanted is not None:
        used = _positions(path, names, wanted)
    try:
        data = _load_csv(path, None)  # (every column: each row's length checked)
    except ValueError as exc:
        cell = _failing_cell(str(exc))
        if cell is None or (cell[0] in used and cell[1] not in MISSING):
            raise ValueError(_csv_value_error(path, names, used, str(exc))) from None
        # Text in a column that is not read, or a missing value: the columns
        # read alone, and missing values as NaN.
        _check_row_lengths(path, len(names))
        try:
            data = _load_csv(path, used)
        except ValueError as exc:
            cell = _failing_cell(str(exc))
            if cell is None or cell[1] not in MISSING:
                message = _csv_value_error(path, names, used, str(exc))
                raise ValueError(message) from None
            data = _csv_numbers(path, names, used)
    else:
        if data.shape[0] and data.shape[1] != len(names):
            raise ValueError(
                f"{path}: {len(names)} column names but {data.shape[1]} values per row"
            )
        if wanted is not None and data.shape[0]:
            data = data[:, used]
    if data.shape[0] == 0:
        raise ValueError(f"{path}: no data rows after the header")
    return Table(data, [names[i] for i in used])


def _failing_cell(message: str) -> tuple[int, str] | None:
    """The column (from 0) and stripped text of the cell numpy.loadtxt's
    ``message`` says it could not read as a number."""
    found = re.search(r"string '(.*)' to float64 at row \d+, column (\d+)", message)
    return None if found is None else (int(found.group(2)) - 1, found.group(1).strip())


def _csv_numbers(path: Path, names: list[str], used: list[int]) -> Array:
    """The ``used`` columns of a CSV file parsed cell by cell (slower than
    numpy.loadtxt, which has no missing values): :data:`MISSING` as NaN."""
    with open(path, newline="") as fh:  # (numpy skips blank lines too)
        rows = [row for row in csv.reader(fh) if "".join(row).strip()][1:]
    data = np.empty((len(rows), len(used)))
    for r, row in enumerate(rows):
        for j, i in enumerate(used):
            text = row[i].strip()
            try:
                data[r, j] = np.nan if text in MISSING else float(text)
            except ValueError:
                where = f"{text!r} at data row {r + 1} (line {r + 2})"
                columns = _text_columns(path, names, used) or [names[i]]
                raise ValueError(_not_numeric(path, columns, f" ({where})")) from None
    return data


def _load_csv(path: Path, usecols: list[int] | None) -> Array:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
        return np.loadtxt(
            path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64, usecols=usecols
        )


def _check_row_lengths(path: Path, n_columns: int) -> None:
    """``ValueError`` at the first data row without ``n_columns`` values."""
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        for row_number, row in enumerate(rows, start=1):
            if row and len(row) != n_columns:
                raise ValueError(_ragged_row(path, row_number, len(row), n_columns))


def _ragged_row(path: Path, row: int, got: int, want: int) -> str:
    return (
        f"{path}: data row {row} (line {row + 1}) has {got} values, the "
        f"header names {want} columns; every line needs one value per column"
    )


def _csv_header(path: Path) -> list[str]:
    """The column names of a CSV file's first line; a clear error when there are
    none, they repeat, the line is numbers, or the file is not comma-separated."""
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise ValueError(f"{path}: the file is empty")
    names = [h.strip() for h in header]
    if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
        sep = next(sep for sep in ";\t|" if sep in names[0])
        raise ValueError(
            f"{path}: the header is one column, {names[0][:40]!r}: the file seems "
            f"separated by {sep!r}; moelearn reads comma-separated files (convert "
            "it, e.g. in pandas: read_csv(sep=...).to_csv(...))"
        )
    check_unique_names(path, names)
    try:
        float(names[0])
    except ValueError:
        return names
    raise ValueError(f"{path}: the first line must name the columns (found a number)")


def _csv_value_error(
    path: Path, names: list[str], used: Iterable[int], message: str
) -> str:
    """numpy.loadtxt's ``message`` said as where in the file, and what; text in
    the ``used`` columns is named for all of them at once."""
    ragged = re.search(
        r"number of columns changed from (\d+) to (\d+) at row (\d+)", message
    )
    if ragged:
        want, got, row = (int(g) for g in ragged.groups())
        return _ragged_row(path, row, got, want)
    found = re.search(r"string '(.*)' to float64 at row (\d+), column (\d+)", message)
    if not found:
        return f"{path}: non-numeric or missing value ({message})"
    text, row, col = found.group(1), int(found.group(2)), int(found.group(3))
    where = f"data row {row + 1} (line {row + 2})"
    if not 0 < col <= len(names):
        return f"{path}: non-numeric value {text!r} at {where}"
    text_columns = _text_columns(path, names, used) or [names[col - 1]]
    return _not_numeric(
        path, text_columns, f" ({text!r} at {where}, column {names[col - 1]!r})"
    )


#: Data rows :func:`_text_columns` looks at.
TEXT_SCAN_ROWS = 1000


def _text_columns(path: Path, names: list[str], used: Iterable[int]) -> list[str]:
    """The ``used`` columns with a non-numeric value in the first
    :data:`TEXT_SCAN_ROWS` data rows."""
    used = list(used)
    found: set[int] = set()
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        for _, row in zip(range(TEXT_SCAN_ROWS), rows, strict=False):
            for i in used:
                if i < len(row) and i not in found and row[i].strip() not in MISSING:
                    try:
                        float(row[i])
                    except ValueError:
                        found.add(i)
    return [names[i] for i in used if i in found]


def _read_npz(path: Path) -> Table:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an .npz archive")
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if "X" in keys:
            X = _numeric(archive["X"], path)
            if X.ndim != 2:
                raise ValueError(f"{path}: array X must be 2-D, got shape {X.shape}")
            names = [f"x{i}" for i in range(X.shape[1])]
            cols = [X]
            for key in keys:
                arr = archive[key]
                if key != "X" and arr.ndim == 1 and arr.shape[0] == X.shape[0]:
                    cols.append(_numeric(arr, path)[:, None])
                    names.append(key)
            return Table(np.hstack(cols), names)
        arrays = {k: archive[k] for k in keys if archive[k].ndim == 1}
    lengths = {a.shape[0] for a in arrays.values()}
    if not arrays or len(lengths) != 1:
        raise ValueError(f"{path}: expected an array 'X' or 1-D arrays of equal length")
    return Table(
        np.column_stack([_numeric(a, path) for a in arrays.values()]), list(arrays)
    )


def _read_parquet(path: Path, select: Select) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"{path}: reading Parquet needs pyarrow: pip install 'moelearn[parquet]'"
        ) from None
    names = list(pq.read_schema(path).names)
    check_unique_names(path, names)
    wanted = select(names)
    if wanted is not None:
        _positions(path, names, wanted)
    table = pq.read_table(path, columns=wanted)
    cols, text = [], []
    for name in table.column_names:
        try:
            col = table.column(name).to_numpy(zero_copy_only=False)
            cols.append(col.astype(np.float64))
        except (TypeError, ValueError):
            text.append(name)
    if text:
        raise ValueError(_not_numeric(path, text))
    return Table(np.column_stack(cols), list(table.column_names))


def _not_numeric(path: Path, columns: list[str], example: str = "") -> str:
    """The error for ``columns`` of text (or other non-numbers)."""
    listed = ", ".join(repr(name) for name in columns)
    one = len(columns) == 1
    typed = all(name.isprintable() and "," not in name for name in columns)
    names = ",".join(columns)
    return (
        f"{path}: {'column' if one else 'columns'} {listed} "
        f"{'is' if one else 'are'} not numeric{example}; leave "
        f"{'it' if one else 'them'} out"
        + (f" (--exclude {names})" if typed else "")
        + f" or enter {'it' if one else 'them'} as categories, one 0/1 column per "
        "level" + (f" (--categorical {names})" if typed else "")
    )


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    An exception (or Ctrl-C) inside the block removes the temporary file, so no
    half-written output is ever left at ``path``.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ValueError(f"{path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent or "."
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
        WRITTEN.append(str(path))
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


#: Every path :func:`atomic_path` has put in place in this process, in order (the
#: command line says which were written when a run is interrupted).
WRITTEN: list[str] = []


def write_table(path: str | os.PathLike, columns: dict[str, Array]) -> None:
    """Write equal-length 1-D columns to CSV, .npz or Parquet, atomically."""
    path = Path(path)
    suffix = _suffix(path)
    names = list(columns)
    data = np.column_stack([np.asarray(columns[k], dtype=float) for k in names])
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            np.savetxt(
                tmp,
                data,
                delimiter=",",
                header=",".join(names),
                comments="",
                fmt="%.17g",
            )
        elif suffix == ".npz":
            with open(tmp, "wb") as fh:
                arrays: dict[str, Any] = {k: data[:, i] for i, k in enumerate(names)}
                np.savez(fh, **arrays)
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, data)
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError(
                    f"{path}: writing Parquet needs pyarrow: pip install 'moelearn[parquet]'"
                ) from None
            pq.write_table(pa.table({k: data[:, i] for i, k in enumerate(names)}), tmp)


def write_json(path: str | os.PathLike, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------- models
def save_model(model: Any, path: str | os.PathLike, **metadata: Any) -> None:
    """Write a fitted estimator's parameters and settings as JSON (atomically):
    the format tag, the estimator's own fields (its ``_to_json``) and
    ``metadata``."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    obj = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "estimator": type(model).__name__,
        **model._to_json(),
        **metadata,
    }
    write_json(path, obj)


def load_model(path: str | os.PathLike):
    """Read a model written by :func:`save_model` (any moelearn estimator).

    Checks every field's type and shape.
    """
    from moelearn.baselines import EMMoE, GradientMoE
    from moelearn.estimators import SpectralMoE
    from moelearn.hierarchical import HierarchicalMoE
    from moelearn.tensor_loss import TensorLossMoE

    classes = {
        cls.__name__: cls
        for cls in (SpectralMoE, HierarchicalMoE, EMMoE, GradientMoE, TensorLossMoE)
    }
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such model file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a moelearn model file ({exc})") from None
    except RecursionError:
        raise ValueError(
            f"{path}: not a moelearn model file (nested too deeply to read)"
        ) from None
    try:
        _check_header(obj, path, classes)
        return classes[obj["estimator"]]._from_json(obj, path)
    except (TypeError, KeyError, AttributeError, IndexError) as exc:
        # a field of the wrong kind that the checks below did not foresee
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(
            f"{path}: not a valid moelearn model file (a field has the wrong "
            f"type: {reason})"
        ) from None


def _check_header(obj, path: Path, classes: dict) -> None:
    """The format tag, its version and a known estimator."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not a moelearn model file (missing format tag)")
    if obj.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: model format version {obj.get('version')!r} is not supported"
        )
    if obj.get("estimator") not in classes:
        raise ValueError(f"{path}: unknown estimator {obj.get('estimator')!r}")


def truth_to_json(truth: dict) -> dict:
    """The true parameters of :func:`moelearn.make_moe` or ``make_hme`` as a
    truth file's fields."""
    return {
        "experts": np.asarray(truth["experts"]).tolist(),
        "gating": np.asarray(truth["gating"]).tolist(),
        "noise_std": float(truth["noise_std"]),
        "link": truth["link"],
        "gate": truth.get("gate", "softmax"),
    }


def read_truth(path: str) -> dict:
    """The true parameters of a truth file written by ``moelearn simulate``
    (:func:`truth_to_json`); ``ValueError`` naming the file otherwise."""
    try:
        truth = json.loads(Path(path).read_text())
        experts = np.asarray(truth["experts"], dtype=float)
        gating = np.asarray(truth["gating"], dtype=float) if "gating" in truth else None
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a truth file with 'experts' and 'gating' ({exc})"
        ) from None
    return {
        "experts": experts,
        "gating": gating,
        "gate": truth.get("gate", "softmax"),
        "noise_std": truth.get("noise_std"),
    }


def write_table_npz(path: Path, X: np.ndarray, y: np.ndarray) -> None:
    """``X`` and ``y`` as one ``.npz`` file (arrays ``X`` and ``y``), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, X=X, y=y)


def model_features(model, path: str) -> np.ndarray:
    """The model's feature columns of the data file ``path``."""
    return _model_columns(model, path, None, False).X


def model_data(
    model, path: str, target: str | None, drop_missing: bool = False
) -> Features:
    """The model's feature columns and the target of the data file ``path``;
    with ``drop_missing`` the rows with a missing value are left out."""
    target = target or getattr(model, "target_name_", None) or "y"
    return _model_columns(model, path, target, drop_missing)


def _model_columns(
    model, path: str, target: str | None, drop_missing: bool
) -> Features:
    """Only the model's features (by name when it knows them, else every column
    but the targets) and ``target`` (if any; ``y`` is empty without) are read,
    so the file's other columns may hold text or missing values. A categorical
    column the model was fitted with (``categories_``) is encoded by its
    levels."""
    names = getattr(model, "feature_names_in_", None)
    categories = getattr(model, "categories_", None) or {}
    source = {
        f"{column}={level}": column
        for column, levels in categories.items()
        for level in levels[1:]
    }
    names = None if names is None else [str(n) for n in names]
    columns_of_names = list(dict.fromkeys(source.get(n, n) for n in names or ()))
    targets = {target, getattr(model, "target_name_", None)}

    def select(columns: list[str]) -> list[str]:
        if target is not None and target not in columns:
            raise ValueError(
                f"{path}: target column {target!r} not found (use --target)"
            )
        if names is None:
            features = [c for c in columns if c not in targets]
        else:
            missing = [n for n in columns_of_names if n not in columns]
            if missing:
                raise ValueError(f"{path}: missing feature column(s) {missing[:5]}")
            features = columns_of_names
        return ([] if target is None else [target]) + features

    table = _read_selected(path, select, frozenset(categories))
    table, dropped = _complete_rows(path, table, drop_missing)
    start = 0 if target is None else 1
    y = table.data[:, 0] if target is not None else np.empty(0)
    if names is None:
        X = table.data[:, start:]
        if X.shape[1] != model.n_features_in_:
            raise ValueError(
                f"{path}: {X.shape[1]} feature columns, the model expects "
                f"{model.n_features_in_}"
            )
        return Features(X, y, None, table.columns[start:], dropped=dropped)
    X, encoded = encode_categories(path, table, columns_of_names, categories)
    X = X[:, [encoded.index(n) for n in names]]
    return Features(X, y, None, names, categories, dropped)
