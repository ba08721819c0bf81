"""EM from many starts at once (moelearn._em_batch): each start runs as it would
alone, the objective never falls, and the fixed point is EM's; on the NumPy
path and on the compiled one (numba), which agree."""

import numpy as np
import pytest

import moelearn._em_batch as batch_module
from moelearn import _em_fast, make_moe
from moelearn._em import ColumnMoments, em
from moelearn._em_batch import batched_em, supports
from moelearn._model import MoEParams, log_likelihood_terms


@pytest.fixture(params=["numpy", "compiled"])
def path(request, monkeypatch):
    """Run the test's batched EM on the NumPy path or the compiled one."""
    if request.param == "compiled":
        if not _em_fast.AVAILABLE:
            pytest.skip("numba (the 'fast' extra) is not installed")
        monkeypatch.setattr(batch_module, "COMPILED_ROWS", 10**9)
    else:
        monkeypatch.setattr(batch_module, "COMPILED_ROWS", 0)
    return request.param


def _with_ones(X):
    return np.column_stack([X, np.ones(len(X))])


def _random_starts(rng, k, D, n_starts, per_expert=True):
    starts = []
    for _ in range(n_starts):
        gating = rng.standard_normal((k, D))
        gating[-1] = 0.0
        noise = rng.uniform(0.5, 1.5, k) if per_expert else float(rng.uniform(0.5, 1))
        starts.append(MoEParams(rng.standard_normal((k, D)), gating, noise, "linear"))
    return starts


def _data(seed, n=3000, d=3, k=2):
    X, y, truth = make_moe(n, d, n_experts=k, noise_std=0.2, random_state=seed)
    return _with_ones(X), y, truth


def _newton_em(X, y, start, cov, fit_experts):
    """em() from ``start`` to tol 1e-9 (the reference fixed point)."""
    return em(
        X,
        y,
        start,
        fit_experts=fit_experts,
        moments=ColumnMoments(cov),
        max_iter=500,
        tol=1e-9,
        rng=np.random.default_rng(0),
    )


def test_each_start_runs_as_it_would_alone(path, global_random_seed):
    """Stacking starts couples nothing: a start's result in a batch of six equals
    its result in a batch of one (to rounding)."""
    X, y, _ = _data(global_random_seed)
    rng = np.random.default_rng(global_random_seed)
    starts = _random_starts(rng, 2, X.shape[1], 6)
    cov = np.cov(X, rowvar=False)
    together = batched_em(X, y, starts, covariance=cov, max_iter=25, tol=1e-6)
    for start, joint in zip(starts, together, strict=True):
        (alone,) = batched_em(X, y, [start], covariance=cov, max_iter=25, tol=1e-6)
        assert alone.n_iter == joint.n_iter
        assert alone.converged == joint.converged
        np.testing.assert_allclose(alone.log_likelihood, joint.log_likelihood)
        np.testing.assert_allclose(alone.params.experts, joint.params.experts)
        np.testing.assert_allclose(alone.params.gating, joint.params.gating)


@pytest.mark.parametrize("per_expert", [True, False])
def test_the_likelihood_never_falls(path, per_expert, global_random_seed):
    """Without the gate ridge the objective is the log-likelihood: every
    recorded value (extrapolated steps included) is at least the one before (to
    the acceptance rule's rounding allowance, as for em()),
    and the returned parameters are at least as likely as the last record."""
    X, y, _ = _data(global_random_seed, k=3)
    rng = np.random.default_rng(global_random_seed + 1)
    starts = _random_starts(rng, 3, X.shape[1], 8, per_expert)
    results = batched_em(
        X,
        y,
        starts,
        covariance=np.eye(X.shape[1]),
        max_iter=60,
        tol=1e-8,
        gate_penalty=0.0,
        min_expert_weight=0.0,
    )
    for result in results:
        curve = np.array(result.log_likelihood)
        assert np.all(np.diff(curve) >= -1e-10 * (1 + np.abs(curve[:-1])))
        final = log_likelihood_terms(X, y, result.params)[0].mean()
        assert final >= curve[-1] - 1e-10
        assert np.ndim(result.params.noise_std) == (1 if per_expert else 0)


def test_the_fixed_point_is_ems(path, global_random_seed):
    """From near the truth, batched EM and the Newton-accelerated em() stop at
    the same maximum: parameters within 1e-4 (both at tol 1e-9; the stopping
    rule leaves a distance of about tol / (1 - rate) with EM's rate below 0.9)."""
    X, y, truth = _data(global_random_seed, n=5000)
    zero = np.zeros((2, 1))
    start = MoEParams(
        np.hstack([truth["experts"] + 0.05, zero]),
        np.hstack([truth["gating"], zero]),
        np.array([0.3, 0.3]),
        "linear",
    )
    cov = np.cov(X, rowvar=False)
    (batch,) = batched_em(X, y, [start], covariance=cov, max_iter=2000, tol=1e-9)
    newton = _newton_em(X, y, start, cov, fit_experts=True)
    assert batch.converged and newton.converged
    np.testing.assert_allclose(batch.params.experts, newton.params.experts, atol=1e-4)
    np.testing.assert_allclose(batch.params.gating, newton.params.gating, atol=1e-4)
    np.testing.assert_allclose(
        batch.params.noise_std, newton.params.noise_std, atol=1e-4
    )


def test_gating_em_keeps_the_experts_and_reaches_ems_gate(path, global_random_seed):
    """With ``fit_experts=False`` (Method 1's gating EM) the experts do not move
    and the gate and noise levels stop where em()'s gating EM does (1e-4, as
    above), even from an expert with almost no rows (fixed experts are never
    dropped)."""
    X, y, truth = _data(global_random_seed, n=5000)
    zero = np.zeros((2, 1))
    experts = np.hstack([truth["experts"] + 0.1, zero])
    gating = np.zeros((2, X.shape[1]))
    gating[0, -1] = -8.0  # the first expert starts with almost no weight
    start = MoEParams(experts, gating, np.array([0.5, 0.5]), "linear")
    cov = np.cov(X, rowvar=False)
    (batch,) = batched_em(
        X, y, [start], covariance=cov, max_iter=2000, tol=1e-9, fit_experts=False
    )
    newton = _newton_em(X, y, start, cov, fit_experts=False)
    assert batch.converged and newton.converged
    np.testing.assert_array_equal(batch.params.experts, experts)
    np.testing.assert_allclose(batch.params.gating, newton.params.gating, atol=1e-4)
    np.testing.assert_allclose(
        batch.params.noise_std, newton.params.noise_std, atol=1e-4
    )


def test_gram_products_equal_the_blockwise_sums(monkeypatch, global_random_seed):
    """The small-table shortcut (every Gram matrix from the rows' flattened
    products) and the block-of-starts sums give the same runs."""
    monkeypatch.setattr(batch_module, "COMPILED_ROWS", 0)
    X, y, _ = _data(global_random_seed, n=600, k=3)
    rng = np.random.default_rng(global_random_seed)
    starts = _random_starts(rng, 3, X.shape[1], 5)
    cov = np.cov(X, rowvar=False)
    shortcut = batched_em(X, y, starts, covariance=cov, max_iter=10, tol=1e-8)
    monkeypatch.setattr(batch_module, "_GRAM_BYTES", 1)
    blockwise = batched_em(X, y, starts, covariance=cov, max_iter=10, tol=1e-8)
    for a, b in zip(shortcut, blockwise, strict=True):
        assert a.n_iter == b.n_iter
        np.testing.assert_allclose(a.params.experts, b.params.experts, rtol=1e-8)
        np.testing.assert_allclose(a.params.gating, b.params.gating, rtol=1e-8)
        np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-12)


def test_integer_weights_act_as_copies(path, global_random_seed):
    X, y, _ = _data(global_random_seed, n=400)
    rng = np.random.default_rng(global_random_seed)
    weights = rng.integers(0, 4, len(y)).astype(float)
    copies = np.repeat(np.arange(len(y)), weights.astype(int))
    starts = _random_starts(rng, 2, X.shape[1], 3)
    cov = np.eye(X.shape[1])
    weighted = batched_em(
        X, y, starts, covariance=cov, max_iter=15, tol=1e-8, sample_weight=weights
    )
    copied = batched_em(
        X[copies], y[copies], starts, covariance=cov, max_iter=15, tol=1e-8
    )
    for a, b in zip(weighted, copied, strict=True):
        np.testing.assert_allclose(a.params.experts, b.params.experts, rtol=1e-7)
        np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-9)


def test_an_expert_that_loses_its_rows_stops_its_start(path):
    """A start whose second expert has no rows (its gate logit at -30) stops at
    once, unconverged, for em() to drop the expert; the others go on."""
    X, y, _ = _data(0, n=500)
    good = MoEParams(
        np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]),
        np.zeros((2, 4)),
        np.array([1.0, 1.0]),
        "linear",
    )
    empty = MoEParams(
        good.experts,
        np.array([[0, 0, 0, 30.0], [0, 0, 0, 0]]),
        good.noise_std,
        "linear",
    )
    a, b = batched_em(X, y, [good, empty], covariance=np.eye(4), max_iter=20, tol=1e-8)
    assert a.n_iter > 1
    assert b.n_iter == 0 and not b.converged


def test_supports_linear_experts_with_a_softmax_gate_only():
    assert supports("linear", "softmax", fit_noise=True)
    assert not supports("linear", "softmax", fit_noise=False)
    assert not supports("tanh", "softmax", True)
    assert not supports("linear", "tree", True)


@pytest.mark.skipif(not _em_fast.AVAILABLE, reason="numba is not installed")
@pytest.mark.parametrize(
    "per_expert, fit_experts, weighted",
    [(True, True, False), (False, True, True), (True, False, True)],
)
def test_the_compiled_runs_are_the_numpy_runs(
    monkeypatch, per_expert, fit_experts, weighted, global_random_seed
):
    """The compiled path takes the NumPy path's steps: the same iterations and
    stops, the parameters and the recorded log-likelihoods equal to rounding
    (1e-9; the sums are taken in another order), with shared or per-expert
    noise, fixed experts and row weights."""
    X, y, _ = _data(global_random_seed, n=300, k=3)
    rng = np.random.default_rng(global_random_seed)
    starts = _random_starts(rng, 3, X.shape[1], 6, per_expert)
    weights = rng.uniform(0.2, 2.0, len(y)) if weighted else None
    runs = {}
    for rows in (0, 10**9):
        monkeypatch.setattr(batch_module, "COMPILED_ROWS", rows)
        runs[rows] = batched_em(
            X,
            y,
            starts,
            covariance=np.cov(X, rowvar=False),
            max_iter=40,
            tol=1e-7,
            sample_weight=weights,
            fit_experts=fit_experts,
        )
    for a, b in zip(runs[0], runs[10**9], strict=True):
        assert (a.n_iter, a.converged) == (b.n_iter, b.converged)
        np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-9)
        for name in ("experts", "gating", "noise_std"):
            np.testing.assert_allclose(
                getattr(a.params, name), getattr(b.params, name), atol=1e-9
            )
        assert np.ndim(a.params.noise_std) == np.ndim(b.params.noise_std)


def test_small_tables_take_the_compiled_path_when_it_pays():
    """NPreg's start race (160 rows, 3 columns) and a large table's (its 5 000-row
    subset) run compiled; a table of more rows, or of 40 columns, does not."""
    assert batch_module._compiled_pays((160, 3)) == _em_fast.AVAILABLE
    assert batch_module._compiled_pays((5000, 10)) == _em_fast.AVAILABLE
    assert not batch_module._compiled_pays((5001, 10))
    assert not batch_module._compiled_pays((500, 40))
