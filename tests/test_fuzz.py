"""Property-based fuzzing (issue 16): the readers, the model loader and the
estimators on generated input. The property everywhere: a correct result, or
the documented error type with a one-line message; never another exception, a
non-finite prediction or a partial file. How many cases each target generated
is checked and listed at the end of the test run ("fuzzing: generated cases per
target")."""

from __future__ import annotations

import json
import string
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from moelearn import EMMoE, SpectralMoE  # noqa: E402
from moelearn.exceptions import FitError  # noqa: E402
from moelearn.io import load_model, read_features, read_table, save_model  # noqa: E402

FILE_CASES = 2000
FIT_CASES = 2000  # each a fit of at most 200 rows: about 30 ms
QUICK = settings(
    max_examples=FILE_CASES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


def one_line(exc: Exception) -> bool:
    text = str(exc)
    return bool(text) and "\n" not in text.strip()


class Counter:
    def __init__(self, name: str, expected: int):
        self.name, self.expected, self.count = name, expected, 0

    def __call__(self):
        self.count += 1

    def report(self):
        from conftest import FUZZ_CASES

        FUZZ_CASES[self.name] = self.count
        assert self.count >= self.expected


cell = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.text(string.printable, max_size=6),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e308", "1e-320", '"1"', "1,5"]),
)
separator = st.sampled_from([",", ";", "\t", "|", ", "])


@st.composite
def csv_text(draw):
    n_cols = draw(st.integers(1, 5))
    header = draw(
        st.lists(
            st.text(string.ascii_letters + string.digits + " _\"'", max_size=6),
            min_size=n_cols,
            max_size=n_cols,
        )
    )
    sep = draw(separator)
    rows = draw(st.lists(st.lists(cell, min_size=0, max_size=n_cols + 1), max_size=6))
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


def read_or_none(read, *args, **kwargs):
    """``read(*args, **kwargs)``, or None once its ValueError is one line."""
    try:
        return read(*args, **kwargs)
    except ValueError as exc:
        assert one_line(exc), str(exc)
        return None


def test_fuzz_csv_reader(tmp_path):
    """Random CSV text (separators, quoting, ragged rows, huge and tiny
    numbers, NaN, text): read whole, a Table of finite-or-not floats with
    unique names; read with its first column as the target and its second as
    categorical, features of matching rows, each level but the first a 0/1
    column named ``column=level``. Either way, or a one-line ValueError."""
    path = tmp_path / "f.csv"
    counter = Counter("CSV reader", FILE_CASES)

    @QUICK
    @given(csv_text())
    def check(text):
        counter()
        path.write_text(text, encoding="utf-8")
        table = read_or_none(read_table, path)
        if table is not None:
            assert table.data.dtype == np.float64
            assert table.data.shape[1] == len(table.columns)
            assert len(set(table.columns)) == len(table.columns)
        header = [name.strip() for name in text.split("\n", 1)[0].split(",")]
        if len(header) < 3:
            return
        read = read_or_none(read_features, path, header[0], categorical=[header[1]])
        if read is not None:
            assert read.X.shape == (len(read.y), len(read.names))
            coded = [n for n in read.names if n.startswith(f"{header[1]}=")]
            assert len(coded) == len(read.categories[header[1]]) - 1
            columns = [read.names.index(n) for n in coded]
            assert set(np.unique(read.X[:, columns])) <= {0.0, 1.0}

    check()
    counter.report()


def test_fuzz_binary_files(tmp_path):
    """Random bytes under each supported suffix: a table or a one-line
    ValueError."""
    counter = Counter("binary files", FILE_CASES)

    @QUICK
    @given(
        st.binary(max_size=300), st.sampled_from([".csv", ".npy", ".npz", ".parquet"])
    )
    def check(data, suffix):
        counter()
        if suffix == ".parquet":
            pytest.importorskip("pyarrow")
        path = tmp_path / f"b{suffix}"
        path.write_bytes(data)
        read_or_none(read_table, path)

    check()
    counter.report()


@pytest.fixture(scope="module")
def model_json(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 3))
    y = np.where(X[:, 0] > 0, X[:, 1], -X[:, 2]) + 0.1 * rng.standard_normal(2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpectralMoE(2, random_state=0, fit_intercept=True).fit(X, y)
    path = tmp_path_factory.mktemp("fuzz") / "m.json"
    save_model(model, path)
    return json.loads(path.read_text()), X


json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True)
    | st.integers(-(10**20), 10**20)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def test_fuzz_model_loader(tmp_path, model_json):
    """A saved model with one field replaced by random JSON, deleted, or the
    whole file replaced: a model whose predictions are finite, or a one-line
    ValueError."""
    obj, X = model_json
    path = tmp_path / "m.json"
    counter = Counter("model loader", FILE_CASES)
    keys = sorted(obj)

    @QUICK
    @given(
        st.sampled_from([*keys, "<whole>", "<delete>"]),
        json_value,
        st.sampled_from(keys),
    )
    def check(key, value, victim):
        counter()
        if key == "<whole>":
            mutated = value
        else:
            mutated = dict(obj)
            if key == "<delete>":
                mutated.pop(victim)
            else:
                mutated[key] = value
        path.write_text(json.dumps(mutated))
        try:
            model = load_model(path)
        except ValueError as exc:
            assert one_line(exc), str(exc)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.all(np.isfinite(model.predict(X)))

    check()
    counter.report()


@st.composite
def training_data(draw):
    n = draw(st.sampled_from([3, 40, 200]))
    d = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((n, d)) * draw(st.sampled_from([1.0, 1e-6, 1e6]))
    y = X[:, 0] * (X[:, -1] > 0) + 0.1 * rng.standard_normal(n)
    kind = draw(
        st.sampled_from(["clean", "nan", "inf", "constant", "duplicate", "int"])
    )
    if kind == "nan":
        X[draw(st.integers(0, n - 1)), 0] = np.nan
    elif kind == "inf":
        y[draw(st.integers(0, n - 1))] = np.inf
    elif kind == "constant":
        X[:, 0] = 3.0
    elif kind == "duplicate" and d > 1:
        X[:, 1] = X[:, 0]
    elif kind == "int":
        X = np.round(X).astype(np.int64)
    return X, y, draw(st.integers(2, 3)), draw(st.booleans())


@pytest.mark.parametrize("estimator", ["spectral", "em"])
def test_fuzz_fit_and_predict(estimator):
    """Random shapes, scales, NaN/inf, constant and duplicate columns, integer
    inputs: a fit with finite predictions, or a one-line ValueError/FitError."""
    counter = Counter(f"fit ({estimator})", FIT_CASES)

    @settings(max_examples=FIT_CASES, deadline=None, derandomize=True)
    @given(training_data())
    def check(case):
        counter()
        X, y, k, intercept = case
        model = (
            SpectralMoE(k, fit_intercept=intercept, random_state=0, max_iter=30)
            if estimator == "spectral"
            else EMMoE(
                k, fit_intercept=intercept, n_init=1, random_state=0, max_iter=30
            )
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model.fit(X, y)
            except (ValueError, FitError) as exc:
                assert one_line(exc), str(exc)
                return
            predictions = model.predict(X)
        assert predictions.shape == (X.shape[0],)
        assert np.all(np.isfinite(predictions))

    check()
    counter.report()
