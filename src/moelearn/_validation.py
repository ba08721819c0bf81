"""Small validators: parameters, arrays, random state. Messages name the problem."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from moelearn._arrays import is_dask, is_torch, namespace, to_host
from moelearn._passes import reduce_rows

Array = np.ndarray


def check_random_state(seed: Any) -> np.random.Generator:
    """A ``Generator`` from ``None``, an int, a ``Generator`` or a ``RandomState``."""
    if seed is None or isinstance(seed, numbers.Integral):
        return np.random.default_rng(None if seed is None else int(seed))
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.RandomState):
        return np.random.default_rng(seed.randint(2**31 - 1))
    raise ValueError(
        f"random_state must be None, an int or a numpy Generator; got {seed!r}"
    )


def integer(low: int, high: float = np.inf) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return (
            isinstance(v, numbers.Integral)
            and not isinstance(v, bool)
            and (low <= int(v) <= high)
        )

    check.__doc__ = f"an int in [{low}, {high}]"
    return check


def real(low: float, high: float = np.inf, *, open_low: bool = False):
    def check(v: Any) -> bool:
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            return False
        try:
            x = float(v)
        except OverflowError:  # an int beyond float's range
            return False
        return (
            bool(np.isfinite(x)) and (x > low if open_low else x >= low) and x <= high
        )

    check.__doc__ = f"a finite number {'>' if open_low else '>='} {low}"
    return check


def one_of(*choices: Any):
    def check(v: Any) -> bool:
        return any(v is c or (isinstance(v, str) and v == c) for c in choices)

    check.__doc__ = "one of " + ", ".join(repr(c) for c in choices)
    return check


def link_rule(*names: str):
    """A built-in link name or a callable ``g``."""
    named = one_of(*names)

    def check(v: Any) -> bool:
        return named(v) or callable(v)

    check.__doc__ = named.__doc__ + " or a callable"
    return check


def density_rule(v: Any) -> bool:
    """'gaussian', 'mixture', a number of mixture components in [1, 20], a
    fitted Gaussian mixture (with weights_, means_ and covariances_) or a score
    callable (rows -> grad log p)"""
    if callable(v):
        return True
    if isinstance(v, str):
        return v in ("gaussian", "mixture")
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return 1 <= int(v) <= 20
    # (an unfitted scikit-learn mixture passes here and is refused, with advice,
    # when it is read: moelearn._scores.density_from_estimator)
    return hasattr(v, "covariance_type") or all(
        hasattr(v, name) for name in ("weights_", "means_", "covariances_")
    )


def boolean(v: Any) -> bool:
    """a bool"""
    return isinstance(v, (bool, np.bool_))


def none_or(rule):
    def check(v: Any) -> bool:
        return v is None or rule(v)

    check.__doc__ = f"None or {rule.__doc__}"
    return check


def validate_params(estimator: Any, constraints: dict[str, Callable[[Any], bool]]):
    """Raise ``ValueError`` naming the first parameter that breaks its rule."""
    for name, rule in constraints.items():
        value = getattr(estimator, name)
        if not rule(value):
            rule_text = " ".join((rule.__doc__ or "").split())  # one line
            value_text = " ".join(repr(value).split())
            if len(value_text) > 80:  # an object's whole repr (arrays and all)
                value_text = f"a {type(value).__name__}"
            raise ValueError(
                f"{type(estimator).__name__}: {name} must be {rule_text}; "
                f"got {value_text}"
            )


def check_numeric_columns(X: Any) -> None:
    """A pandas or polars DataFrame's columns of text (or dates, categories):
    ``ValueError`` naming them all, with the encoding that puts them in."""
    if hasattr(X, "select_dtypes"):  # pandas
        text = [str(c) for c in X.select_dtypes(exclude=["number", "bool"]).columns]
        encode = (
            f"pandas.get_dummies(X, columns={text!r}, drop_first=True, dtype=float)"
        )
    elif hasattr(X, "schema") and hasattr(X, "to_dummies"):  # polars
        text = [
            str(c)
            for c, kind in X.schema.items()
            if not (kind.is_numeric() or str(kind) == "Boolean")
        ]
        encode = f"X.to_dummies(columns={text!r}, drop_first=True)"
    else:
        return
    if text:
        listed = ", ".join(map(repr, text))
        raise ValueError(
            f"X's column(s) {listed} are not numeric: encode them, e.g. {encode} "
            "for one 0/1 column per level, or drop them"
        )


def check_finite_2d(X: Any, name: str = "X", values: bool = True) -> Array:
    """A C-contiguous float64 2-D array with only finite values (a Dask array
    stays one: float64, chunked by rows only; a PyTorch tensor stays as it is;
    both checked in one pass). Without ``values`` a NumPy array's values are not
    read (the caller's first pass checks them)."""
    if is_dask(X) or is_torch(X):
        return _check_rows_source(X, name)
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (n_samples, n_features); got shape {arr.shape}"
            + (". Reshape 1-D data with X.reshape(-1, 1)" if arr.ndim == 1 else "")
        )
    if values:
        _check_finite(arr, name)
    return np.ascontiguousarray(arr)


def check_sample_weight(sample_weight: Any, n_samples: int) -> Array | None:
    """``None``, or a float64 vector of ``n_samples`` finite, non-negative weights
    with a positive sum."""
    if sample_weight is None:
        return None
    w = check_target(to_host(sample_weight), n_samples, "sample_weight")
    if np.any(w < 0):
        raise ValueError("sample_weight has negative values; weights must be >= 0")
    if not w.sum() > 0:
        raise ValueError("sample_weight is zero for every row: no row carries weight")
    return w


#: Columns whose root mean square lies outside this range are refused: their
#: reciprocal or square would leave double precision's range.
SCALE_RANGE = (1e-152, 1e152)


#: Rows (evenly spaced) that estimate a column's scale.
SCALE_ROWS = 10_000


def root_mean_square(arr: Array) -> Array:
    """Root mean square of each column of ``arr`` (or of a 1-D ``arr``) over at
    most :data:`SCALE_ROWS` evenly spaced rows (a scale, not a statistic),
    computed without overflow or underflow at any finite scale."""
    step = -(-arr.shape[0] // SCALE_ROWS)
    arr = arr[::step]
    # (invalid: an infinite value, which the finite check names, gives NaN)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        peak = np.max(np.abs(arr), axis=0)
        safe = np.where(peak > 0, peak, 1.0)
        return peak * np.sqrt(np.mean((arr / safe) ** 2, axis=0))


def check_scale(arr: Array, name: str, columns: list[str] | None = None) -> None:
    """``ValueError`` naming the first column (of a 2-D ``arr``; the array, for a
    1-D one) whose root mean square is outside :data:`SCALE_RANGE`."""
    rms = np.atleast_1d(root_mean_square(arr))
    low, high = SCALE_RANGE
    bad = np.flatnonzero(((rms < low) & (rms > 0)) | (rms > high))
    if bad.size:
        j = int(bad[0])
        what = name if arr.ndim == 1 else f"{name} column {_column_name(j, columns)}"
        raise ValueError(
            f"{what} has values of size {rms[j]:.1e}, outside {low:g}..{high:g}: "
            "rescale it (e.g. standardise the columns): its reciprocal or square "
            "would leave double precision's range"
        )


def _column_name(j: int, columns: list[str] | None) -> str:
    return repr(str(columns[j])) if columns is not None else str(j)


def check_target(y: Any, n_samples: int, name: str = "y") -> Array:
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,); got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(
            f"X and {name} have different numbers of rows: {n_samples} and {arr.shape[0]}"
        )
    _check_finite(arr, name)
    return np.ascontiguousarray(arr)


def _chunked_sum(arr: Array) -> float:
    """Sum of all values, one pass over row chunks (a memory-mapped file's pages
    are released as the pass goes)."""
    if arr.ndim != 2:
        return float(np.add.reduce(arr, axis=None))
    return float(reduce_rows(_sum_rows, arr))


def _sum_rows(xc: Array) -> float:
    return float(namespace(xc).sum(xc))


def _count_nonfinite(xc: Array) -> int:
    xp = namespace(xc)
    return int(xp.sum(~xp.isfinite(xc)))


def _check_rows_source(X, name: str):
    """Checks of a Dask array or a PyTorch tensor, which stay where they are."""
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (n_samples, n_features); got shape "
            f"{tuple(X.shape)}"
        )
    if is_torch(X):
        if X.is_complex():
            raise ValueError(f"{name} must be real; got dtype {X.dtype}")
    else:
        if any(np.isnan(c) for c in X.shape):
            raise ValueError(
                f"{name}'s number of rows is unknown; compute the chunk sizes first "
                "(X.compute_chunk_sizes(), or to_dask_array(lengths=True))"
            )
        if X.dtype.kind not in "fiub":
            raise ValueError(f"{name} must be numeric; got dtype {X.dtype}")
        X = X.astype(np.float64)
        if len(X.chunks[1]) > 1:
            X = X.rechunk({1: -1})
    if not np.isfinite(_chunked_sum(X)):
        count = reduce_rows(_count_nonfinite, X)
        if count:
            raise ValueError(
                f"{name} contains {count} non-finite value(s) (NaN or infinite); "
                "remove or impute them before fitting"
            )
    return X


def _check_finite(arr: Array, name: str) -> None:
    # Fast path: the sum is finite when every value is (NaN and inf propagate); only
    # if it is not (or overflowed) are the values checked one by one.
    if np.isfinite(_chunked_sum(arr)):
        return
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        where = f"row {bad[0]}" + (f", column {bad[1]}" if arr.ndim == 2 else "")
        kind = "NaN" if np.isnan(arr[tuple(bad)]) else "infinite value"
        count = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"{name} contains {count} non-finite value(s) (first: {kind} at {where}); "
            "remove or impute them before fitting"
        )


def check_unique_names(path: Any, names: list[str]) -> None:
    """``ValueError`` naming a column name that appears more than once (the
    model finds its features by name: a repeated one would read the wrong
    column)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(
                f"{path}: column name {name!r} appears twice (columns {seen[name] + 1} "
                f"and {i + 1}); give every column its own name"
            )
        seen[name] = i
