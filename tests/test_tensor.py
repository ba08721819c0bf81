import numpy as np
import pytest

from moelearn._tensor import (
    _power_iterate,
    krylov_eigenpairs,
    orthogonal_polish,
    ritz_eigenpairs,
    robust_tensor_power,
    whitening_matrix,
)


def planted(k, rng):
    V = np.linalg.qr(rng.standard_normal((k, k)))[0].T  # rows orthonormal
    lam = rng.uniform(1.0, 3.0, k)
    return np.einsum("r,ra,rb,rc->abc", lam, V, V, V), lam, V


def match(found, true):
    """Max error over rows after the best assignment (rows are unit vectors)."""
    return max(min(np.linalg.norm(f - t) for f in found) for t in true)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_power_method_recovers_planted_decomposition(k, global_random_seed):
    rng = np.random.default_rng(global_random_seed)
    T, lam, V = planted(k, rng)
    comps = robust_tensor_power(T, k, rng)
    assert match(comps.vectors, V) < 1e-8
    np.testing.assert_allclose(np.sort(comps.values), np.sort(lam), rtol=1e-8)
    polished = orthogonal_polish(T, comps.vectors)
    assert match(polished.vectors, V) < 1e-8


def test_polish_reduces_error_of_a_noisy_tensor(global_random_seed):
    """With noise, joint orthogonal refinement does not move far from the truth."""
    rng = np.random.default_rng(global_random_seed)
    T, _, V = planted(3, rng)
    noise = _symmetric_noise(rng, 3, 0.02)
    comps = orthogonal_polish(T + noise, robust_tensor_power(T + noise, 3, rng).vectors)
    np.testing.assert_allclose(comps.vectors @ comps.vectors.T, np.eye(3), atol=1e-10)
    assert match(comps.vectors, V) < 0.1


@pytest.mark.parametrize("k", [2, 3])
def test_the_last_component_from_orthogonality_polishes_to_the_same_frame(
    k, global_random_seed
):
    """The k-th component is taken orthogonal to the others instead of by power
    iteration on the deflated tensor; on a noisy tensor (where that iteration
    does not converge) the polished frame is the one the iterated component
    polishes to."""
    rng = np.random.default_rng(global_random_seed)
    T, _, V = planted(k, rng)
    T = T + _symmetric_noise(rng, k, 0.05)
    comps = robust_tensor_power(T, k, rng)
    deflated = T - np.einsum(
        "r,ra,rb,rc->abc", comps.values[:-1], *[comps.vectors[:-1]] * 3
    )
    iterated = comps.vectors.copy()
    iterated[-1] = _power_iterate(deflated, comps.vectors[-1], 50, 1e-12)
    ours, theirs = orthogonal_polish(T, comps.vectors), orthogonal_polish(T, iterated)
    assert match(ours.vectors, theirs.vectors) < 1e-8
    assert match(ours.vectors, V) < 0.2


def _symmetric_noise(rng, k, scale):
    noise = rng.standard_normal((k, k, k)) * scale
    return (
        sum(
            noise.transpose(p)
            for p in [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (1, 0, 2), (2, 1, 0)]
        )
        / 6
    )


@pytest.mark.parametrize("width", [4, 8])
def test_ritz_eigenpairs_match_eigh(width, global_random_seed):
    rng = np.random.default_rng(global_random_seed)
    d = 8
    U = np.linalg.qr(rng.standard_normal((d, d)))[0]
    values = np.array([3.0, 2.0, -0.05, 0.04, 0.03, -0.02, 0.01, 0.0])
    A = (U * values) @ U.T
    omega = rng.standard_normal((d, width))
    pairs = ritz_eigenpairs(lambda V: A @ V, A @ omega, omega, n_power_iter=1)
    np.testing.assert_allclose(pairs.values[:2], [3.0, 2.0], rtol=1e-6)
    for j in range(2):
        assert abs(abs(pairs.vectors[:, j] @ U[:, j]) - 1) < 1e-6
    W = whitening_matrix(pairs, 2)
    np.testing.assert_allclose(W.T @ A @ W, np.eye(2), atol=1e-6)


@pytest.mark.parametrize("noise", [0.01, 0.05])
def test_krylov_eigenpairs_correct_a_nearly_right_start(noise, global_random_seed):
    """From one product with a start block whose columns are the leading
    eigenvectors tilted by ``eps = 0.2``, the leading eigenvectors come out an
    order of magnitude closer than the start (the error is second order in the
    tilt and the noise: over 50 seeds at most 0.077 eps), while Rayleigh–Ritz on
    the start alone keeps an error of about ``eps`` (at least 0.82 eps)."""
    rng = np.random.default_rng(global_random_seed)
    d, width, eps = 60, 4, 0.2
    U = np.linalg.qr(rng.standard_normal((d, d)))[0]
    values = np.concatenate([[2.0, 1.0], noise * rng.uniform(-1, 1, d - 2)])
    A = (U * values) @ U.T
    start = U[:, :width] + eps * rng.standard_normal((d, width)) / np.sqrt(d)
    pairs = krylov_eigenpairs(A @ start, start)
    np.testing.assert_allclose(pairs.values[:2], [2.0, 1.0], atol=0.05 * eps)  # 0.031
    Q = np.linalg.qr(start)[0]
    ritz = Q @ np.linalg.eigh(Q.T @ A @ Q)[1][:, ::-1]
    for j in range(2):
        assert np.sqrt(max(0.0, 1 - (pairs.vectors[:, j] @ U[:, j]) ** 2)) < 0.15 * eps
    assert np.sqrt(1 - (ritz[:, 0] @ U[:, 0]) ** 2) > 0.5 * eps
