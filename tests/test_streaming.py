"""Fits on memory-mapped data and files streamed in batches (``stream_table``)."""

import sys
import warnings

import numpy as np
import pytest

import moelearn.io._stream as stream_module
from moelearn import SpectralMoE, make_moe
from moelearn._mmap import _WithOnes, release_pages
from moelearn._passes import with_ones
from moelearn.cli import main
from moelearn.io import load_model, read_table, stream_table, write_table

pytest.importorskip("pyarrow")


def _fit(X, y, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SpectralMoE(random_state=0, **settings).fit(X, y)


@pytest.fixture
def data():
    X, y, _ = make_moe(30_000, 5, random_state=4)
    return X, y


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".npy"])
def test_streamed_file_equals_the_loaded_one(tmp_path, monkeypatch, data, suffix):
    """Batches (made small here so that there are many) rebuild the same columns."""
    monkeypatch.setattr(stream_module, "STREAM_BATCH_ROWS", 7_000)
    monkeypatch.setattr(stream_module, "STREAM_CSV_BLOCK_BYTES", 1 << 19)
    X, y = data
    path = tmp_path / f"data{suffix}"
    write_table(path, {**{f"x{i}": X[:, i] for i in range(5)}, "y": y})
    loaded, target, names = read_table(path).split("y")
    seen = []
    with stream_table(
        path, "y", tmp_path, lambda done, total: seen.append(done)
    ) as streamed:
        Xs, ys, weights = streamed.X, streamed.y, streamed.sample_weight
        streamed_names = streamed.names
        assert weights is None
        assert isinstance(Xs, np.memmap) and not Xs.flags.writeable
        np.testing.assert_array_equal(Xs, loaded)
        np.testing.assert_array_equal(ys, target)
        assert streamed_names == names
    assert seen[-1] == len(y) and len(seen) >= 5
    assert not list(tmp_path.glob("moelearn-*"))  # the scratch file is gone


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_fit_on_a_memory_map_equals_the_in_memory_fit(tmp_path, data, fit_intercept):
    """Also with intercepts, where the constant column is added chunk by chunk
    (``[X, 1]`` of a memory map is never built whole)."""
    X, y = data
    if fit_intercept:
        X, y = X + 2.0, y + 0.5
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    assert isinstance(with_ones(mapped), _WithOnes)
    settings = {"fit_intercept": fit_intercept}
    on_disk, in_memory = _fit(mapped, y, **settings), _fit(X, y, **settings)
    np.testing.assert_allclose(on_disk.experts_, in_memory.experts_, rtol=1e-10)
    np.testing.assert_allclose(on_disk.gating_, in_memory.gating_, rtol=1e-10)
    assert on_disk.noise_std_ == pytest.approx(in_memory.noise_std_, rel=1e-10)
    if fit_intercept:
        np.testing.assert_allclose(on_disk.intercept_, in_memory.intercept_, rtol=1e-9)
        np.testing.assert_allclose(on_disk.predict(mapped), in_memory.predict(X))


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_released_pages_leave_the_resident_set(tmp_path):
    """A pass over a 240 MB memory map with release keeps the resident set within a
    few chunks; without release the whole file would become resident."""

    def rss_mb():
        with open("/proc/self/status") as fh:
            line = next(s for s in fh if s.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    n, d = 1_000_000, 30
    path = tmp_path / "big.npy"
    out = np.lib.format.open_memmap(path, mode="w+", shape=(n, d))
    out[:] = 1.0
    out.flush()
    del out
    X = np.load(path, mmap_mode="r")
    release_pages(X)
    before = rss_mb()
    from moelearn._passes import row_slices

    total = 0.0
    for rows in row_slices(n, d, mapped=X):
        total += float(X[rows].sum())
    assert total == n * d
    assert rss_mb() - before < 40
    X[::1000].sum()  # the data stay readable after release


def test_stream_errors_name_the_row_and_column(tmp_path, data):
    X, y = data
    X = X.copy()
    X[12_345, 2] = np.nan
    path = tmp_path / "bad.parquet"
    write_table(path, {**{f"x{i}": X[:, i] for i in range(5)}, "y": y})
    with pytest.raises(
        ValueError,
        match=r"missing value \(NaN, NA or empty\) at data row 12346, column 'x2'",
    ):
        with stream_table(path, "y", tmp_path):
            pass
    with pytest.raises(ValueError, match="target column 'z' not found"):
        with stream_table(path, "z", tmp_path):
            pass
    with pytest.raises(ValueError, match="weight column 'y' is the target column"):
        with stream_table(path, "y", tmp_path, weight="y"):
            pass
    np.savez(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(ValueError, match="cannot be streamed"):
        with stream_table(tmp_path / "d.npz", "y"):
            pass
    assert not list(tmp_path.glob("moelearn-*"))


def test_cli_streamed_fit_writes_the_same_model(tmp_path, data, capsys):
    X, y = data
    path = tmp_path / "data.parquet"
    write_table(path, {**{f"x{i}": X[:, i] for i in range(5)}, "y": y})
    common = ["fit", str(path), "--target", "y", "--seed", "1"]
    assert main([*common, "--stream", "no", "--out", str(tmp_path / "a.json")]) == 0
    assert main([*common, "--stream", "yes", "--out", str(tmp_path / "b.json")]) == 0
    assert "reading: 30,000 rows (100%)" in capsys.readouterr().err
    a = load_model(tmp_path / "a.json")
    b = load_model(tmp_path / "b.json")
    np.testing.assert_allclose(b.experts_, a.experts_, rtol=1e-10)
    np.testing.assert_allclose(b.gating_, a.gating_, rtol=1e-10)
    for stream, name in (("no", "c.json"), ("yes", "d.json")):
        args = ["--stream", stream, "--fit-intercept", "--out", str(tmp_path / name)]
        assert main([*common, *args]) == 0
    c = load_model(tmp_path / "c.json")
    d = load_model(tmp_path / "d.json")
    np.testing.assert_allclose(d.experts_, c.experts_, rtol=1e-10)
    np.testing.assert_allclose(d.intercept_, c.intercept_, rtol=1e-8, atol=1e-12)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_scattered_rows_of_a_memory_map(tmp_path):
    """take_rows gathers rows spread over a file (Newton subsets, strided samples)
    without making the whole file resident, in any index order."""
    from moelearn._passes import take_rows

    n, d = 1_000_000, 30
    path = tmp_path / "big.npy"
    out = np.lib.format.open_memmap(path, mode="w+", shape=(n, d))
    out[:] = np.arange(n, dtype=float)[:, None]
    out.flush()
    del out
    X = np.load(path, mmap_mode="r")
    release_pages(X)
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(n, size=20_000, replace=False))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak resident set to the current one
    peak_before = _hwm_mb()
    rows = take_rows(X, idx)
    strided = take_rows(X, slice(None, None, 40))
    assert _hwm_mb() - peak_before < 80  # the file is 240 MB
    np.testing.assert_array_equal(rows[:, 0], idx)
    np.testing.assert_array_equal(strided[:, 0], np.arange(0, n, 40))
    shuffled = rng.permutation(idx)
    np.testing.assert_array_equal(take_rows(X, shuffled)[:, 0], shuffled)


def _hwm_mb():
    with open("/proc/self/status") as fh:
        line = next(s for s in fh if s.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def test_every_pass_reports_its_progress(data, monkeypatch):
    """report_passes sees each pass over all rows from its first chunk to its
    last, as many as the fit made (counted at the pass engine)."""
    import moelearn._passes as passes

    X, y = data
    made = []
    chunk_results = passes._chunk_results

    def counted(kernel, rows_of, *args, **kwargs):
        made.append(rows_of.shape[0])
        return chunk_results(kernel, rows_of, *args, **kwargs)

    monkeypatch.setattr(passes, "_chunk_results", counted)
    seen: dict[int, list[int]] = {}
    with passes.report_passes(
        lambda number, done, total: seen.setdefault(number, []).append(done)
    ):
        _fit(X, y)
    full = [rows for rows in seen.values() if rows[-1] == len(y)]
    assert len(full) == made.count(len(y)) >= 4  # spectral step and EM
    assert all(rows == sorted(rows) for rows in seen.values())
    assert list(seen) == list(range(1, len(seen) + 1))


@pytest.mark.parametrize("stream", ["no", "yes"])
def test_cli_weight_column_gives_the_weighted_fit(tmp_path, data, stream):
    """--weight COL: the column weights the rows and is not a feature; loaded or
    streamed, the model equals the library's weighted fit."""
    X, y = data
    w = np.random.default_rng(2).integers(0, 3, size=len(y)).astype(float)
    path = tmp_path / "data.parquet"
    write_table(path, {**{f"x{i}": X[:, i] for i in range(5)}, "w": w, "y": y})
    out = tmp_path / "model.json"
    args = ["fit", str(path), "--target", "y", "--weight", "w", "--seed", "0"]
    assert main([*args, "--stream", stream, "-q", "--out", str(out)]) == 0
    model = load_model(out)
    assert list(model.feature_names_in_) == [f"x{i}" for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = SpectralMoE(random_state=0).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(model.experts_, expected.experts_, rtol=1e-10)
    np.testing.assert_allclose(model.gating_, expected.gating_, rtol=1e-10)
    assert main([*args[:-2], "--weight", "nope", "--out", str(out)]) == 2
    assert main([*args, "--method", "gd", "--out", str(out)]) == 2


def test_cli_streamed_experts_auto(tmp_path, capsys):
    """--experts auto runs on the streamed memory map like any other fit."""
    X, y, _ = make_moe(30_000, 5, n_experts=3, random_state=3)
    path = tmp_path / "data.parquet"
    write_table(path, {**{f"x{i}": X[:, i] for i in range(5)}, "y": y})
    out = tmp_path / "m.json"
    args = ["fit", str(path), "--target", "y", "--experts", "auto", "--stream", "yes"]
    assert main([*args, "--max-experts", "4", "--out", str(out)]) == 0
    assert "chose 3 experts" in capsys.readouterr().out
    assert load_model(out).experts_.shape == (3, 5)
