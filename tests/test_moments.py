"""Chunked contractions against explicit tensors (test-only oracles, d <= 6)."""

import math
import warnings

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermeval

from conftest import correlated_inputs
from moelearn._moments import (
    SINGLE_PRECISION_ERROR,
    RowInputs,
    hermite_indices,
    input_pass,
    projected_moments,
    regression_degree,
    single_precision_centre,
    t2_product,
)


def explicit_whitened(X):
    mean = X.mean(axis=0)
    cov = np.cov(X.T, bias=True)
    evals, evecs = np.linalg.eigh(cov)
    L = evecs @ np.diag(evals**-0.5) @ evecs.T
    return (X - mean) @ L, mean, cov


def explicit_t2(Z, w):
    d = Z.shape[1]
    S2 = np.einsum("ni,nj->nij", Z, Z) - np.eye(d)
    return np.einsum("n,nij->ij", w, S2) / len(w)


def explicit_t3(Z, w):
    d = Z.shape[1]
    eye = np.eye(d)
    S3 = (
        np.einsum("ni,nj,nk->nijk", Z, Z, Z)
        - np.einsum("ni,jk->nijk", Z, eye)
        - np.einsum("nj,ik->nijk", Z, eye)
        - np.einsum("nk,ij->nijk", Z, eye)
    )
    return np.einsum("n,nijk->ijk", w, S3) / len(w)


@pytest.fixture
def data(global_random_seed):
    rng = np.random.default_rng(global_random_seed)
    X = correlated_inputs(3000, 5, rng)
    w = rng.standard_normal(3000) ** 2
    return X, w, rng


@pytest.mark.parametrize("mean_scale", [0.3, 50.0])
def test_input_pass_matches_explicit(small_chunks, global_random_seed, mean_scale):
    rng = np.random.default_rng(global_random_seed)
    X = correlated_inputs(3000, 5, rng, mean_scale=mean_scale)
    w = rng.standard_normal(3000) ** 2
    omega = rng.standard_normal((5, 3))
    result = input_pass(RowInputs(X), w, omega)
    Z, mean, cov = explicit_whitened(X)
    np.testing.assert_allclose(result.whitening.mean, mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(result.whitening.covariance, cov, rtol=1e-8, atol=1e-10)
    L = result.whitening.transform
    np.testing.assert_allclose(L.T @ cov @ L, np.eye(5), atol=1e-8)
    np.testing.assert_allclose(
        result.t2_start, explicit_t2(Z, w) @ result.omega, atol=1e-8
    )
    centred = X - mean
    skew = (centred**3).mean(0) / centred.var(0) ** 1.5
    np.testing.assert_allclose(result.skewness, skew, atol=1e-8)


@pytest.mark.parametrize("mean_scale", [0.3, 50.0])
def test_single_precision_input_pass_matches_double(
    small_chunks, global_random_seed, mean_scale
):
    """Well-conditioned correlated inputs, given a row sample, are summed in single precision
    (about zero, or about the sample's mean when the means are far off): the
    whitened covariance stays within SINGLE_PRECISION_ERROR of the double-precision
    one, and the T2 product within it times the scale of the terms that cancel in
    ``T2 omega = E[P2 x x^T] omega - E[P2] omega`` (``E|P2| |omega|``)."""
    rng = np.random.default_rng(global_random_seed)
    mixing = np.eye(5) + 0.2 * rng.standard_normal((5, 5)) / np.sqrt(5)
    X = rng.standard_normal((20_000, 5)) @ mixing + mean_scale * rng.standard_normal(5)
    w = rng.standard_normal(20_000) ** 2
    omega = rng.standard_normal((5, 3))
    centre = single_precision_centre(X[::2], len(X))
    assert centre is not None
    assert np.any(centre != 0) == (mean_scale > 10)
    single = input_pass(RowInputs(X, sample=X[::2]), w, omega)
    double = input_pass(RowInputs(X), w, omega)
    L = double.whitening.transform
    error = L.T @ single.whitening.covariance @ L - np.eye(5)
    assert np.linalg.norm(error, 2) < SINGLE_PRECISION_ERROR
    assert np.abs(single.whitening.covariance - double.whitening.covariance).max() > 0
    np.testing.assert_allclose(single.whitening.mean, double.whitening.mean, atol=1e-5)
    scale = np.abs(w).mean() * np.linalg.norm(double.omega, axis=0).max()
    np.testing.assert_allclose(
        single.t2_start, double.t2_start, atol=SINGLE_PRECISION_ERROR * scale
    )


def test_collinear_inputs_are_summed_in_double_precision(global_random_seed):
    """Two columns with correlation 0.9995 (lowest correlation eigenvalue 5e-4):
    single precision could lose the whitened covariance's last digits, so the pass
    is the double-precision one, exactly."""
    rng = np.random.default_rng(global_random_seed)
    X = rng.standard_normal((20_000, 5))
    X[:, 1] = X[:, 0] + 0.03 * X[:, 1]
    w = rng.standard_normal(20_000) ** 2
    omega = rng.standard_normal((5, 3))
    assert single_precision_centre(X[::2], len(X)) is None
    got = input_pass(RowInputs(X, sample=X[::2]), w, omega)
    want = input_pass(RowInputs(X), w, omega)
    np.testing.assert_array_equal(got.whitening.covariance, want.whitening.covariance)
    np.testing.assert_array_equal(got.t2_start, want.t2_start)


@pytest.mark.parametrize("column_scale", [1e18, 1e-18])
def test_extreme_scales_are_summed_in_double_precision(column_scale):
    """A column whose squares would overflow or underflow in single precision
    keeps the pass in double precision; well-scaled, the same data would not."""
    X = np.random.default_rng(0).standard_normal((20_000, 5))
    assert single_precision_centre(X, len(X)) is not None
    X[:, 2] *= column_scale
    assert single_precision_centre(X, len(X)) is None


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hermite_features_match_numpy_polynomials(k):
    from moelearn._moments import hermite_features

    z = np.random.default_rng(k).standard_normal((k, 50))
    indices = hermite_indices(k, 4)
    got = hermite_features(z, indices)
    unit = np.eye(5)
    want = [
        np.prod([hermeval(z[j], unit[a]) for j, a in enumerate(alpha)], axis=0)
        for alpha in indices
    ]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_far_off_means_are_summed_about_the_mean_in_single_precision():
    """Means of 1e16 put the squares about zero out of single precision's range,
    so the centre is the sample's mean (as documented), not double precision; the
    whitened covariance stays within SINGLE_PRECISION_ERROR of the double one."""
    rng = np.random.default_rng(0)
    X = 1e3 * rng.standard_normal((20_000, 5)) + 1e16
    w = rng.standard_normal(20_000) ** 2
    centre = single_precision_centre(X[::2], len(X))
    assert centre is not None and np.all(centre > 1e15)
    single = input_pass(RowInputs(X, sample=X[::2]), w, rng.standard_normal((5, 3)))
    double = input_pass(RowInputs(X), w, rng.standard_normal((5, 3)))
    L = double.whitening.transform
    error = L.T @ single.whitening.covariance @ L - np.eye(5)
    assert np.linalg.norm(error, 2) < SINGLE_PRECISION_ERROR


def test_t2_product_matches_explicit(data, small_chunks):
    X, w, rng = data
    white = input_pass(RowInputs(X), w, rng.standard_normal((5, 2))).whitening
    Z, _, _ = explicit_whitened(X)
    V = rng.standard_normal((5, 4))
    np.testing.assert_allclose(
        t2_product(X, w, white, V), explicit_t2(Z, w) @ V, atol=1e-10
    )


def _orthonormal(rng, d, k):
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


@pytest.mark.parametrize("weighted", [False, True])
def test_projected_moments_plain_means_match_explicit(data, small_chunks, weighted):
    X, w, rng = data
    white = input_pass(RowInputs(X), w, rng.standard_normal((5, 2))).whitening
    Z, _, _ = explicit_whitened(X)
    U = _orthonormal(rng, 5, 3)
    responses = np.column_stack([w, np.sin(w)])
    sw = rng.uniform(0.5, 2.0, len(w)) if weighted else np.ones(len(w))
    t2, t3, _ = projected_moments(
        RowInputs(X, sw if weighted else None), responses, white, U, None
    )
    scale = len(w) / sw.sum()
    for j in range(2):
        r = responses[:, j] * sw * scale
        np.testing.assert_allclose(t2[j], U.T @ explicit_t2(Z, r) @ U, atol=1e-10)
        want = np.einsum("ijk,ia,jb,kc->abc", explicit_t3(Z, r), U, U, U)
        np.testing.assert_allclose(t3[j], want, atol=1e-10)


def _explicit_hermite_fit(z, response, degree, sw):
    """Weighted least squares of the response on He_alpha(z), |alpha| <= degree,
    times alpha! (numpy's HermiteE evaluation)."""
    indices = hermite_indices(z.shape[1], degree)
    columns = []
    for alpha in indices:
        column = np.ones(len(z))
        for j, power in enumerate(alpha):
            column *= hermeval(z[:, j], np.eye(degree + 1)[power])
        columns.append(column)
    F = np.column_stack(columns) * np.sqrt(sw)[:, None]
    beta = np.linalg.lstsq(F, response * np.sqrt(sw), rcond=None)[0]
    factorials = [np.prod([math.factorial(a) for a in alpha]) for alpha in indices]
    return dict(zip(indices, beta * factorials, strict=True))


@pytest.mark.parametrize("weighted", [False, True])
def test_projected_moments_regression_matches_explicit_least_squares(
    data, small_chunks, weighted
):
    X, w, rng = data
    white = input_pass(RowInputs(X), w, rng.standard_normal((5, 2))).whitening
    Z, _, _ = explicit_whitened(X)
    U = _orthonormal(rng, 5, 2)
    sw = rng.uniform(0.5, 2.0, len(w)) if weighted else np.ones(len(w))
    t2, t3, _ = projected_moments(
        RowInputs(X, sw if weighted else None), w[:, None], white, U, 4
    )
    fit = _explicit_hermite_fit(Z @ U, w, 4, sw)
    for entry in np.ndindex(2, 2):
        alpha = tuple(entry.count(j) for j in range(2))
        np.testing.assert_allclose(t2[(0, *entry)], fit[alpha], atol=1e-9)
    for entry in np.ndindex(2, 2, 2):
        alpha = tuple(entry.count(j) for j in range(2))
        np.testing.assert_allclose(t3[(0, *entry)], fit[alpha], atol=1e-9)


def test_projected_moments_regression_is_exact_for_polynomial_responses(
    global_random_seed,
):
    """A response that is a polynomial of degree <= 4 in z is fitted exactly, so its
    moments come out exact from 400 rows, where the plain means err by about
    sd / sqrt(n) ~ 0.5."""
    rng = np.random.default_rng(global_random_seed)
    X = correlated_inputs(400, 5, rng)
    white = input_pass(RowInputs(X), np.zeros(400), np.zeros((5, 1))).whitening
    U = _orthonormal(rng, 5, 2)
    z = (X - white.mean) @ white.transform @ U
    # 1 + z1 + 3 He3(z1) + 2 z1 z2 + He4(z2): E[P S2] = [[0, 2], [2, 0]] and
    # E[P S3] = 18 at (0, 0, 0), 0 elsewhere.
    response = (
        1 + z[:, 0] + 3 * (z[:, 0] ** 3 - 3 * z[:, 0]) + 2 * z[:, 0] * z[:, 1]
    ) + (z[:, 1] ** 4 - 6 * z[:, 1] ** 2 + 3)
    want2 = np.array([[0.0, 2.0], [2.0, 0.0]])
    want3 = np.zeros((2, 2, 2))
    want3[0, 0, 0] = 18.0
    t2, t3, _ = projected_moments(RowInputs(X), response[:, None], white, U, 4)
    np.testing.assert_allclose(t2[0], want2, atol=1e-9)
    np.testing.assert_allclose(t3[0], want3, atol=1e-9)
    _, plain3, _ = projected_moments(RowInputs(X), response[:, None], white, U, None)
    assert np.abs(plain3[0] - want3).max() > 0.1


def test_projected_moments_one_step_is_close_to_least_squares_on_all_rows(
    global_random_seed,
):
    """With more rows than the sample (200000 against 50000), the expansion is fitted
    on the sample and the pass averages the residuals: to first order this is the
    least-squares fit on all rows. It differs from that fit by a fraction of the
    plain means' difference (0.01-0.21 of it over seeds 0-4)."""
    from moelearn import make_moe
    from moelearn._links import get_link, transform_coefficients

    X, y, truth = make_moe(200_000, 4, random_state=global_random_seed)
    p3 = transform_coefficients(get_link("linear"), 0.0).p3(y)
    white = input_pass(RowInputs(X), p3, np.eye(4)).whitening
    Z, _, _ = explicit_whitened(X)
    U = np.linalg.qr(truth["experts"].T)[0]
    fit = _explicit_hermite_fit(Z @ U, p3, 4, np.ones(len(p3)))
    least_squares = np.array(
        [fit[tuple(e.count(j) for j in range(2))] for e in np.ndindex(2, 2, 2)]
    )
    one_step = projected_moments(RowInputs(X), p3[:, None], white, U, 4)[1][0].ravel()
    plain = projected_moments(RowInputs(X), p3[:, None], white, U, None)[1][0].ravel()
    gap = np.abs(one_step - least_squares).max()
    assert gap < 0.5 * np.abs(plain - least_squares).max()


def test_regression_degree_bounds_the_features():
    assert [regression_degree(k) for k in (1, 2, 3, 4, 5)] == [4, 4, 4, 3, None]
    assert [len(hermite_indices(k, 4)) for k in (2, 3)] == [15, 35]


def _summands_t2(Z, w):
    return w[:, None, None] * (np.einsum("ni,nj->nij", Z, Z) - np.eye(Z.shape[1]))


def _summands_t3(Z, w):
    eye = np.eye(Z.shape[1])
    S3 = (
        np.einsum("ni,nj,nk->nijk", Z, Z, Z)
        - np.einsum("ni,jk->nijk", Z, eye)
        - np.einsum("nj,ik->nijk", Z, eye)
        - np.einsum("nk,ij->nijk", Z, eye)
    )
    return w[:, None, None, None] * S3


def assert_moment_identities(X, y, A, link_name, sigma):
    """T2 = sum_i c2 p_i a_i a_i^T and T3 = sum_i c3 p_i a_i^{x3} with p_i = 1/2 (a
    gate without bias): every entry within 5 standard errors (the summands'
    standard deviation / sqrt(n)), and the test able to see T3."""
    from moelearn._links import get_link, tensor_constants, transform_coefficients

    link = get_link(link_name)
    t = transform_coefficients(link, sigma)
    c2, c3 = tensor_constants(t, link, 1.0)
    true_t2 = 0.5 * c2 * A.T @ A
    true_t3 = 0.5 * c3 * np.einsum("ri,rj,rk->ijk", A, A, A)
    for summands, truth_tensor in [
        (_summands_t2(X, t.p2(y)), true_t2),
        (_summands_t3(X, t.p3(y)), true_t3),
    ]:
        se = summands.std(axis=0) / np.sqrt(X.shape[0])
        z = np.abs(summands.mean(axis=0) - truth_tensor) / se
        assert z.max() < 5, z.max()
    assert np.abs(true_t3).max() > 10 * se.max()  # the test has power


@pytest.mark.parametrize("link", ["linear", "sigmoid", "tanh"])
def test_moments_have_no_gate_cross_terms(link, global_random_seed):
    """Population identities (docs/method.md, section 3), whatever the gate
    direction."""
    from moelearn import make_moe

    sigma = 0.1
    X, y, truth = make_moe(
        400_000, 3, link=link, noise_std=sigma, random_state=global_random_seed
    )
    assert_moment_identities(X, y, truth["experts"], link, sigma)


def test_relu_moments_are_exact_when_the_gate_is_orthogonal(global_random_seed):
    """ReLU has no parity: the transforms cancel He2/He4 (T3) and He1/He3 (T2), and
    the He6+ remainders couple gate and regressors unless w is orthogonal to them
    (docs/method.md, section 3). With w orthogonal the identities hold."""
    from moelearn._model import MoEParams, sample_outputs

    rng = np.random.default_rng(global_random_seed)
    sigma = 0.1
    basis = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    A = np.vstack([basis[:, 0], 0.6 * basis[:, 0] + 0.8 * basis[:, 1]])
    gating = np.vstack([1.5 * basis[:, 2], np.zeros(3)])
    X = rng.standard_normal((400_000, 3))
    y, _ = sample_outputs(X, MoEParams(A, gating, sigma, "relu"), rng)
    assert_moment_identities(X, y, A, "relu", sigma)


def test_sigmoid_needs_its_quadratic_term(global_random_seed):
    """Negative control: for sigmoid experts, P3 without the alpha y^2 term gives a
    tensor that no multiple of sum_i a_i^{x3} fits within the sampling error."""
    from moelearn import make_moe
    from moelearn._links import get_link, transform_coefficients

    n, sigma = 400_000, 0.1
    X, y, truth = make_moe(
        n, 3, link="sigmoid", noise_std=sigma, random_state=global_random_seed
    )
    t = transform_coefficients(get_link("sigmoid"), sigma)
    summands = _summands_t3(X, y**3 + t.beta * y)  # alpha dropped
    A = truth["experts"]
    structure = np.einsum("ri,rj,rk->ijk", A, A, A)
    T = summands.mean(axis=0)
    best = (T * structure).sum() / (structure * structure).sum()  # best c in c*sum a^3
    z = np.abs(T - best * structure) / (summands.std(axis=0) / np.sqrt(n))
    # Under "no cross terms" the largest of 27 z-scores exceeds 6 with p < 1e-7.
    assert z.max() > 6


@pytest.mark.parametrize("seed", range(3))
def test_t2_eigenspace_matches_the_exact_one_at_large_d(seed):
    """d=100, n=2e4: the randomised block (k + 6 columns) must find the sample T2's
    top-2 eigenspace. Measured distance ||UU^T - EE^T|| over 6 seeds: 0.04-0.07 with
    the subspace iteration, 0.28-0.45 without (T2's noise eigenvalues, ~2 sqrt(d/n)
    times the signal's scale, leak into a single random block); bound 0.15."""
    from moelearn import make_moe
    from moelearn._links import get_link, transform_coefficients
    from moelearn._spectral import second_moment_eigenpairs

    X, y, _ = make_moe(20_000, 100, random_state=seed)
    p2 = transform_coefficients(get_link("linear"), 0.0).p2(y)
    rng = np.random.default_rng(seed)
    inputs, pairs = second_moment_eigenpairs(RowInputs(X), p2, 2, rng, 1.0)
    assert _distance_to_exact_eigenspace(X, p2, inputs, pairs) < 0.15


def _distance_to_exact_eigenspace(X, p2, inputs, pairs, k: int = 2) -> float:
    """``||UU^T - EE^T||`` between the found top-``k`` eigenspace of ``T2`` and the
    one of the sample ``T2`` formed explicitly (``d x d`` only)."""
    Z = (X - inputs.whitening.mean) @ inputs.whitening.transform
    t2 = (Z * p2[:, None]).T @ Z / len(p2) - p2.mean() * np.eye(X.shape[1])
    values, vectors = np.linalg.eigh(t2)
    E = vectors[:, np.argsort(-values)[:k]]
    U = pairs.vectors[:, :k]
    return float(np.linalg.norm(U @ U.T - E @ E.T, 2))


@pytest.mark.parametrize("seed", range(2))
def test_t2_eigenspace_from_a_sample_start_in_one_pass(seed):
    """d=40, n=2e5: the start block comes from a row sample and is corrected
    without another pass, so the whole spectral step reads the data twice, and the
    top-2 eigenspace is the sample T2's. Measured ||UU^T - EE^T|| over 4 seeds:
    0.0030-0.0034 (the random block with a subspace iteration, two more passes:
    0.0008-0.0023), far below the sampling error sqrt(d / n) = 0.014; bound 0.015."""
    from moelearn import make_moe
    from moelearn._links import get_link, transform_coefficients
    from moelearn._passes import report_passes
    from moelearn._spectral import second_moment_eigenpairs

    X, y, _ = make_moe(200_000, 40, random_state=seed)
    p2 = transform_coefficients(get_link("linear"), 0.0).p2(y)
    passes = set()
    with report_passes(lambda number, done, total: passes.add(number)):
        inputs, pairs = second_moment_eigenpairs(
            RowInputs(X), p2, 2, np.random.default_rng(seed), 1.0
        )
    assert len(passes) == 1
    assert _distance_to_exact_eigenspace(X, p2, inputs, pairs) < 0.015


@pytest.mark.parametrize("d", [10, 40])
def test_spectral_step_reads_every_row_twice(d):
    """Both paths (T2 exact at d=10, a sample start block at d=40): two passes over
    all rows; the row samples (start block, Hermite fit) are not passes."""
    from moelearn import make_moe
    from moelearn._links import get_link
    from moelearn._passes import report_passes
    from moelearn._spectral import spectral_moments

    X, y, _ = make_moe(200_000, d, random_state=0)
    totals = {}
    with report_passes(lambda number, done, total: totals.setdefault(number, total)):
        spectral_moments(X, y, get_link("linear"), 2, np.random.default_rng(0))
    assert totals == {1: 200_000, 2: 200_000}


def _count_strided_gathers(monkeypatch, *modules) -> list:
    """The strided ``take_rows`` calls (row samples) the modules make, recorded."""
    gathers = []
    for module in modules:
        original = module.take_rows

        def counting(X, rows, original=original):
            if isinstance(rows, slice) and rows.step not in (None, 1):
                gathers.append(rows)
            return original(X, rows)

        monkeypatch.setattr(module, "take_rows", counting)
    return gathers


@pytest.mark.parametrize("d", [10, 40])
def test_spectral_step_gathers_its_row_sample_once(monkeypatch, d):
    """The strided row sample (a gather that reads much of a memory map or a Dask
    array) is taken once (by RowInputs, in _moments) and serves both passes."""
    import moelearn._moments as moments_module
    import moelearn._spectral as spectral_module
    from moelearn import make_moe
    from moelearn._links import get_link

    X, y, _ = make_moe(200_000, d, random_state=0)
    gathers = _count_strided_gathers(monkeypatch, moments_module)
    spectral_module.spectral_moments(
        X, y, get_link("linear"), 2, np.random.default_rng(0)
    )
    assert len(gathers) == 1


def test_input_whitening_reads_no_row_sample(monkeypatch, data):
    """The whitening alone (for EM's start) needs no marginal shape, so it gathers
    no row sample; it equals the input pass's whitening."""
    import moelearn._moments as moments_module
    from moelearn._moments import input_whitening

    X, w, rng = data
    want = input_pass(RowInputs(X), w, rng.standard_normal((5, 2))).whitening
    monkeypatch.setattr(moments_module, "row_sample", lambda n: slice(None, None, 2))
    strided = _count_strided_gathers(monkeypatch, moments_module)
    got = input_whitening(X)
    assert strided == []
    np.testing.assert_allclose(got.transform, want.transform, rtol=1e-12)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-12)


def test_warnings_from_the_input_pass_show_once_per_place(monkeypatch):
    """A warning raised while the input pass sums the rows reaches the filters
    as raised: under the "default" filter it shows once per place (captured and
    re-emitted after the pass, it showed on every fit)."""
    from moelearn import _moments

    summed = _moments._input_pass_sums

    def noisy(*args):
        warnings.warn("a warning from the sums", UserWarning, stacklevel=1)
        return summed(*args)

    monkeypatch.setattr(_moments, "_input_pass_sums", noisy)
    X = np.random.default_rng(0).standard_normal((500, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            _moments.input_whitening(X)
    assert [str(w.message) for w in caught] == ["a warning from the sums"]
