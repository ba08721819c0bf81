"""A table's columns as a fit's inputs: the target, weight and feature
columns chosen by name, categorical columns as 0/1 columns per level, and the
rows with a missing value refused or left out."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moelearn._validation import check_unique_names
from moelearn.io._tables import (
    MISSING,
    Select,
    Table,
    _missing_message,
    _read_selected,
    check_finite,
    column_index,
)

Array = np.ndarray


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
    #: The file's data rows (from 0) that the rows of ``X`` are.
    rows: Array | None = None


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
    start = 1 if weight is None else 2
    select, chosen = _with_categorical(
        path,
        _used_columns(path, target, weight, features, exclude),
        categorical,
        start,
    )
    table = _read_selected(path, select, frozenset(categorical))
    table, missing = _complete_rows(path, table, drop_missing)
    if len(table.data) == 0:
        raise ValueError(f"{path}: every row has a missing value")
    categories = {
        name: category_levels(path, name, table.text[name]) for name in categorical
    }
    X, names = encode_categories(path, table, chosen[start:], categories)
    w_values = None if weight is None else table.data[:, 1]
    return Features(
        X,
        table.data[:, 0],
        w_values,
        names,
        categories,
        int(missing.sum()),
        np.flatnonzero(~missing),
    )


def _complete_rows(
    path: str | os.PathLike, table: Table, drop_missing: bool, done: int = 0
) -> tuple[Table, Array]:
    """``table`` without the rows that have a missing value (NaN, or a
    :data:`MISSING` text), and which they were (a mask of ``table``'s rows);
    without ``drop_missing`` the first is an error. An infinite value is an error
    either way. Errors count rows from ``done`` (the rows before ``table``)."""
    missing = np.isnan(table.data).any(axis=1)
    for values in table.text.values():
        missing |= np.isin(values, list(MISSING))
    if not drop_missing:
        check_finite(path, table.data, table.columns, done)
        for name, values in table.text.items():
            empty = np.isin(values, list(MISSING))
            if empty.any():
                row = done + int(np.argmax(empty))
                raise ValueError(_missing_message(path, row, name))
        return table, np.zeros(len(table.data), dtype=bool)
    check_finite(path, np.where(missing[:, None], 0.0, table.data), table.columns, done)
    keep = ~missing
    texts = {name: values[keep] for name, values in table.text.items()}
    return Table(table.data[keep], table.columns, texts), missing


def _with_categorical(
    path: str | os.PathLike, select: Select, categorical: list[str], start: int
) -> tuple[Select, list[str]]:
    """``select``, checking that the ``categorical`` columns are among its
    features (from position ``start``), and the list it fills with its choice."""
    chosen: list[str] = []

    def checked(names: list[str]) -> list[str]:
        chosen[:] = select(names) or names
        stray = [name for name in categorical if name not in chosen[start:]]
        if stray:
            raise ValueError(
                f"{path}: categorical column(s) {stray} are not among the features"
            )
        return chosen

    return checked, chosen


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


def model_features(model, path: str, drop_missing: bool = False) -> Features:
    """The model's feature columns of the data file ``path`` (``y`` empty); with
    ``drop_missing`` the rows with a missing value are left out (``rows`` says
    which are kept)."""
    return _model_columns(model, path, None, drop_missing)


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
    table, missing = _complete_rows(path, table, drop_missing)
    if len(table.data) == 0:
        raise ValueError(f"{path}: every row has a missing value")
    dropped, rows = int(missing.sum()), np.flatnonzero(~missing)
    start = 0 if target is None else 1
    y = table.data[:, 0] if target is not None else np.empty(0)
    if names is None:
        X = table.data[:, start:]
        if X.shape[1] != model.n_features_in_:
            raise ValueError(
                f"{path}: {X.shape[1]} feature columns, the model expects "
                f"{model.n_features_in_}"
            )
        return Features(X, y, None, table.columns[start:], {}, dropped, rows)
    X, encoded = encode_categories(path, table, columns_of_names, categories)
    X = X[:, [encoded.index(n) for n in names]]
    return Features(X, y, None, names, categories, dropped, rows)
