"""The pass engine's threads: a pass's chunks run on several threads and give
what one thread gives, in the same order."""

import multiprocessing
import threading
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import moelearn._passes as passes
from moelearn import SpectralMoE, make_moe
from moelearn._arrays import one_blas_thread


@pytest.fixture
def three_threads(monkeypatch):
    """Passes run on three threads (whatever the machine's cores), or on one
    under ``one_blas_thread``."""
    real = passes.blas_threads
    if real() < 2:
        pytest.skip("BLAS may use one thread here")
    monkeypatch.setattr(passes, "blas_threads", lambda: 3 if real() > 1 else 1)


def _sums(xc, w):
    """A kernel with a small result: weighted Gram matrix and weight."""
    return xc.T @ (xc * w[:, None]), float(w.sum())


def _names(xc):
    """A map kernel that records the thread it ran on, a row each."""
    return np.full(len(xc), threading.current_thread().name, dtype=object)


def _data(n=50_000, d=7):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)), rng.random(n)


def test_threaded_passes_give_the_one_thread_sums(three_threads):
    """Several threads, the results added in row order: the same bits as one
    thread (one BLAS thread in both, so that BLAS splits no product)."""
    X, w = _data()
    with passes.fixed_chunk_rows(700):  # 72 chunks
        threaded = passes.reduce_rows(_sums, X, w)
        names = passes.map_rows(_names, X)
        with one_blas_thread():  # pass_threads() is then 1
            alone = passes.reduce_rows(_sums, X, w)
            alone_names = passes.map_rows(_names, X)
    assert np.array_equal(threaded[0], alone[0]) and threaded[1] == alone[1]
    assert {n for n in names if n.startswith("moelearn-pass")}  # (threads ran)
    assert set(alone_names) == {threading.main_thread().name}
    assert len(names) == len(X)


def test_threaded_passes_report_every_chunk_in_order(three_threads):
    X, w = _data(20_000)
    seen = []
    with (
        passes.fixed_chunk_rows(300),
        passes.report_passes(
            lambda number, done, total: seen.append((number, done, total))
        ),
    ):
        passes.reduce_rows(_sums, X, w)
    assert [done for _, done, _ in seen] == [*range(300, 20_000, 300), 20_000]
    assert {number for number, _, _ in seen} == {1}


def test_a_kernels_error_reaches_the_caller_and_stops_the_pass(three_threads):
    X, w = _data(20_000)
    started = []

    def failing(xc, wc):
        started.append(len(started))
        if len(started) == 10:
            raise ValueError("chunk ten is bad")
        return _sums(xc, wc)

    with passes.fixed_chunk_rows(100), pytest.raises(ValueError, match="chunk ten"):
        passes.reduce_rows(failing, X, w)
    assert len(started) < 200  # the chunks after it were not all run
    with passes.fixed_chunk_rows(100):  # the threads are free for the next pass
        assert passes.reduce_rows(_sums, X, w)[1] == pytest.approx(w.sum())


def test_kernels_run_in_the_callers_context(three_threads):
    """NumPy's error state (a context variable) holds in the pass's threads."""
    X, w = _data(20_000)
    w[15_000] = 0.0

    def dividing(xc, wc):
        return (1.0 / wc).sum()

    with np.errstate(divide="raise"), pytest.raises(FloatingPointError):
        with passes.fixed_chunk_rows(100):
            passes.reduce_rows(dividing, X, w)


def test_a_blas_thread_limit_holds_for_the_passes():
    """Under threadpoolctl's limit of one thread, a fit's passes run on the
    calling thread only, and give the fit the threads give."""
    X, y, _ = make_moe(20_000, 5, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threaded = SpectralMoE(random_state=0).fit(X, y)
        with threadpool_limits(limits=1):
            assert passes.pass_threads() == 1
            alone = SpectralMoE(random_state=0).fit(X, y)
    assert np.array_equal(threaded.experts_, alone.experts_)
    assert np.array_equal(threaded.gating_, alone.gating_)


def _child(queue):
    X, w = _data(20_000)
    with passes.fixed_chunk_rows(100):
        queue.put(passes.reduce_rows(_sums, X, w)[1])


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork here"
)
def test_a_forked_child_runs_threaded_passes(three_threads):
    """The parent's pass threads are not in a forked child: it starts its own
    (reusing the parent's pool would wait for ever)."""
    X, w = _data(20_000)
    with passes.fixed_chunk_rows(100):
        passes.reduce_rows(_sums, X, w)  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with warnings.catch_warnings():  # (forking a process with threads warns)
        warnings.simplefilter("ignore", DeprecationWarning)
        child = context.Process(target=_child, args=(queue,))
        child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    assert queue.get(timeout=5) == pytest.approx(w.sum())
