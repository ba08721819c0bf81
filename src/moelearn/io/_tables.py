"""Data files read into numeric tables: CSV (numpy, with a cell-by-cell fallback
for missing values), ``.npy``, ``.npz`` and Parquet; only the columns asked for,
and every failure one line naming the file, row and column."""

from __future__ import annotations

import csv
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moelearn._validation import check_unique_names

Array = np.ndarray


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


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; use one of "
            + ", ".join(SUFFIXES)
        )
    return suffix


def read_table(path: str | os.PathLike) -> Table:
    """Read a numeric table from CSV (with a header), .npy, .npz or Parquet.

    * CSV: first line names the columns; every value read must be numeric.
    * .npy: a 2-D array; columns are named ``x0, x1, ...`` and the last ``y``.
    * .npz: arrays ``X`` (n, d) and ``y`` (n,) as written by ``moelearn simulate``,
      or any set of 1-D arrays of equal length (one column each).
    * Parquet (needs ``pyarrow``): numeric columns.
    """
    return _read_selected(path, lambda names: None)


#: Given a file's column names, the names to read (in order), or None for all.
Select = Callable[[list[str]], "list[str] | None"]


def _read_selected(
    path: str | os.PathLike, select: Select, text: frozenset[str] = frozenset()
) -> Table:
    """The columns ``select`` chooses: those named in ``text`` as strings (in
    ``Table.text``), the others as numbers."""
    path = Path(path)

    def numeric(names: list[str]) -> list[str] | None:
        wanted = select(names)
        return wanted if not text else [n for n in wanted or names if n not in text]

    if text and path.suffix.lower() in (".npy", ".npz"):  # (numbers: read once)
        table = _read_numbers(path, select)
        names = [n for n in table.columns if n not in text]
        texts = {n: level_texts(table.data[:, table.columns.index(n)]) for n in text}
        return Table(table.columns_named(names, path).data, names, texts)
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
    """Columns ``names`` of a CSV or Parquet file as strings (numbers written as
    read from a CSV file, or as integers where they are whole); a missing value
    is ``""``."""
    if path.suffix.lower() == ".csv":
        idx = _positions(path, _csv_header(path), names)
        rows = _csv_filled_rows(path)
        found = {
            name: np.array(
                [row[i].strip() if i < len(row) else "" for row in rows], dtype=object
            )
            for name, i in zip(names, idx, strict=True)
        }
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=names)
        found = {name: level_texts(table[name].to_pylist()) for name in names}
    for name, values in found.items():
        if len(values) != n_rows:
            raise ValueError(f"{path}: column {name!r} has a different number of rows")
    return found


def level_texts(values: Iterable[Any]) -> Array:
    """Levels as text: whole numbers without a decimal point, a missing value
    (None) ``""``."""

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    return np.array([text(value) for value in values], dtype=object)


def _csv_rows(path: Path) -> Iterator[list[str]]:
    """A CSV file's data rows (after the header line), as the csv module splits
    them."""
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        yield from rows


def _csv_filled_rows(path: Path) -> list[list[str]]:
    """The data rows that are not blank (numpy.loadtxt skips those too)."""
    return [row for row in _csv_rows(path) if "".join(row).strip()]


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
    rows = _csv_filled_rows(path)
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
            path,
            delimiter=",",
            skiprows=1,
            ndmin=2,
            dtype=np.float64,
            usecols=usecols,
            comments=None,  # (CSV has no comments: "#" may be in a text cell)
            quotechar='"',  # (a quoted cell may hold commas)
        )


def _check_row_lengths(path: Path, n_columns: int) -> None:
    """``ValueError`` at the first data row without ``n_columns`` values."""
    for row_number, row in enumerate(_csv_rows(path), start=1):
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
    short = re.search(r"invalid column index \d+ at row (\d+) with (\d+) col", message)
    if short:  # (numpy.loadtxt with usecols)
        row, got = (int(g) for g in short.groups())
        return _ragged_row(path, row, got, len(names))
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
    for _, row in zip(range(TEXT_SCAN_ROWS), _csv_rows(path), strict=False):
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
