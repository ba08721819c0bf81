import numpy as np
import pytest

from moelearn._tensor import (
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
    noise = rng.standard_normal(T.shape) * 0.02
    noise = (
        sum(
            noise.transpose(p)
            for p in [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (1, 0, 2), (2, 1, 0)]
        )
        / 6
    )
    comps = orthogonal_polish(T + noise, robust_tensor_power(T + noise, 3, rng).vectors)
    np.testing.assert_allclose(comps.vectors @ comps.vectors.T, np.eye(3), atol=1e-10)
    assert match(comps.vectors, V) < 0.1


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
