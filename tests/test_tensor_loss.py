"""Method 2: the L4 kernel, the minibatch optimiser and TensorLossMoE."""

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss

from moelearn import TensorLossMoE, make_moe, parameter_error
from moelearn._optim import minimize_minibatch
from moelearn._tensor_loss import coupling_matrix, tensor_loss_terms


def explicit_s4(z):
    """The fourth Stein score of N(0, I) at z as a d^4 array (test oracle only)."""
    d = z.size
    eye = np.eye(d)
    zz = np.outer(z, z)
    quad = np.einsum("a,b,c,e->abce", z, z, z, z)
    pair = sum(
        np.einsum(spec, zz, eye)
        for spec in (
            "ab,ce->abce",
            "ac,be->abce",
            "ae,bc->abce",
            "bc,ae->abce",
            "be,ac->abce",
            "ce,ab->abce",
        )
    )
    const = (
        np.einsum("ab,ce->abce", eye, eye)
        + np.einsum("ac,be->abce", eye, eye)
        + np.einsum("ae,bc->abce", eye, eye)
    )
    return quad - pair + const


@pytest.fixture
def small_problem():
    rng = np.random.default_rng(0)
    b, d, k = 40, 4, 3
    Z = rng.standard_normal((b, d))
    w = rng.standard_normal(b) / b
    U = rng.standard_normal((d, k))
    T4 = sum(wi * explicit_s4(z) for wi, z in zip(w, Z, strict=False))
    return Z, w, U, T4


def test_loss_equals_the_explicit_tensor_contraction(small_problem):
    Z, w, U, T4 = small_problem
    k = U.shape[1]
    C = coupling_matrix(k, 0.7)
    explicit = sum(
        C[j, m] * np.einsum("abce,a,b,c,e->", T4, U[:, j], U[:, j], U[:, m], U[:, m])
        for j in range(k)
        for m in range(k)
    )
    value = tensor_loss_terms(Z @ U, w, U.T @ U, C).value
    assert value == pytest.approx(explicit, rel=1e-12)


def test_gradient_matches_finite_differences(small_problem):
    Z, w, U, _ = small_problem
    C = coupling_matrix(U.shape[1], 0.7)

    def value(V):
        return tensor_loss_terms(Z @ V, w, V.T @ V, C).value

    terms = tensor_loss_terms(Z @ U, w, U.T @ U, C)
    grad = Z.T @ terms.coef_rows + U @ terms.coef_columns
    eps = 1e-6
    numeric = np.zeros_like(U)
    for idx in np.ndindex(*U.shape):
        E = np.zeros_like(U)
        E[idx] = eps
        numeric[idx] = (value(U + E) - value(U - E)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-7 * np.abs(grad).max())


def test_t4_has_no_gate_terms_in_population():
    """For two linear experts with a sigmoid gate and no bias,
    T4(u, u, v, v) = 12 sum_i (a_i.u)^2 (a_i.v)^2 exactly: computed here by
    Gauss–Hermite quadrature in the 3-D span of (a1, a2, w), with the y^2 control
    variate of P4 included (it must add nothing)."""
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    a1, a2, w = (
        basis @ np.array([1.0, 0.0, 0.0]),
        basis @ [0.6, 0.8, 0.0],
        basis @ [0.3, -1.0, 1.5],
    )
    nodes, weights = hermegauss(24)
    weights = weights / weights.sum()
    grid = np.stack(np.meshgrid(nodes, nodes, nodes, indexing="ij"), -1).reshape(-1, 3)
    wts = np.einsum("i,j,k->ijk", weights, weights, weights).ravel()
    sigma, m2 = 0.3, 1.7

    def cond_moment(mean, power):  # E[(mean + sigma eps)^power]
        return {
            2: mean**2 + sigma**2,
            4: mean**4 + 6 * mean**2 * sigma**2 + 3 * sigma**4,
        }[power]

    gate = 1 / (1 + np.exp(-grid @ w))
    p4 = sum(
        g * (cond_moment(grid @ a, 4) - 12 * m2 * cond_moment(grid @ a, 2))
        for g, a in ((gate, a1), (1 - gate, a2))
    )
    U = rng.standard_normal((3, 2))
    C = np.array([[0.0, 1.0], [1.0, 0.0]])  # the cross term T4(u,u,v,v) twice
    got = tensor_loss_terms(grid @ U, wts * p4, U.T @ U, C).value / 2
    want = 12 * sum((a @ U[:, 0]) ** 2 * (a @ U[:, 1]) ** 2 for a in (a1, a2))
    assert got == pytest.approx(want, rel=1e-9)


def test_minibatch_optimiser_reaches_least_squares():
    """Tail-averaged Adam on a least-squares problem lands near the exact solution
    (the averaged iterate's error is well below the per-batch noise)."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((20_000, 5))
    x_true = rng.standard_normal(5)
    b = A @ x_true + 0.1 * rng.standard_normal(20_000)
    exact = np.linalg.lstsq(A, b, rcond=None)[0]

    def objective(x, rows):
        r = A[rows] @ x - b[rows]
        return float(r @ r) / len(rows), 2 * A[rows].T @ r / len(rows)

    result = minimize_minibatch(
        objective,
        np.zeros(5),
        20_000,
        batch_size=200,
        learning_rate=0.05,
        optimizer="adam",
        max_epochs=40,
        tol=1e-4,
        rng=rng,
    )
    assert np.max(np.abs(result.params - exact)) < 5e-3
    assert result.loss_curve[-1] < result.loss_curve[0]


def test_sgd_steps_are_capped_not_divergent():
    """Quartic loss from far away: plain SGD would overflow; the capped step does not."""

    def objective(x, rows):
        return float(np.sum(x**4)), 4 * x**3

    result = minimize_minibatch(
        objective,
        np.full(3, 50.0),
        100,
        batch_size=10,
        learning_rate=0.01,
        optimizer="sgd",
        max_epochs=30,
        tol=0.0,
        rng=np.random.default_rng(0),
    )
    assert np.all(np.abs(result.params) < 50.0)


@pytest.mark.parametrize("subspace", ["span", "full"])
def test_recovers_regressors_and_gate_from_random_start(subspace):
    """d=5, n=1e5: at d=10 the error over 50 trials had median 0.028 (span) and
    0.058 (full), worst 0.086 and 0.18 (fourth moments: noisier than Method 1);
    the bounds are 0.1 (the success threshold) and 0.15. Then L_log gives the gate
    and sigma."""
    X, y, truth = make_moe(100_000, 5, random_state=2)
    model = TensorLossMoE(random_state=0, subspace=subspace).fit(X, y)
    limit = 0.1 if subspace == "span" else 0.15
    assert parameter_error(model, truth, experts_only=True) < limit
    assert parameter_error(model, truth) < limit + 0.05
    assert model.noise_std_ == pytest.approx(0.1, rel=0.3)
    assert len(model.loss_curve_) >= 2 and len(model.gating_loss_curve_) >= 2
    assert model.loss_curve_[-1] < model.loss_curve_[0]


def test_penalty_must_dominate_mu():
    X, y, _ = make_moe(2_000, 3, random_state=0)
    with pytest.raises(ValueError, match=r"penalty=10\.0 must exceed 12"):
        TensorLossMoE(mu=1.0, penalty=10.0).fit(X, y)


def test_only_linear_experts():
    X, y, _ = make_moe(2_000, 3, random_state=0)
    with pytest.raises(ValueError, match="link"):
        TensorLossMoE(link="sigmoid").fit(X, y)


def test_equivariant_to_the_units_of_x_and_y():
    """Rescaling x by 3 and y by 100 rescales the regressors by 100/3 and sigma by
    100, and changes nothing else (same random start)."""
    X, y, _ = make_moe(20_000, 4, random_state=5)
    base = TensorLossMoE(random_state=0, max_iter=5).fit(X, y)
    scaled = TensorLossMoE(random_state=0, max_iter=5).fit(3 * X, 100 * y)
    np.testing.assert_allclose(scaled.experts_ * 3 / 100, base.experts_, atol=1e-8)
    np.testing.assert_allclose(scaled.gating_ * 3, base.gating_, atol=1e-6)
    assert scaled.noise_std_ / 100 == pytest.approx(base.noise_std_, rel=1e-6)
