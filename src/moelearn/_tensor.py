"""Whitening from block products with ``T2`` and the robust tensor power method.

References
----------
Halko, Martinsson, Tropp (2011), "Finding structure with randomness", Alg. 4.4/5.3.
Anandkumar, Ge, Hsu, Kakade, Telgarsky (2014), "Tensor decompositions for learning
latent variable models", JMLR 15, Alg. 1 (robust tensor power method).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class Eigenpairs:
    values: Array  # (m,) Ritz values, sorted by sign * value, largest first
    vectors: Array  # (d, m)


def ritz_eigenpairs(
    apply: Callable[[Array], Array] | None,
    start_product: Array,
    start_block: Array,
    n_power_iter: int = 0,
    sign: float = 1.0,
) -> Eigenpairs:
    """Eigenpairs of a symmetric operator from block products, largest ``sign * value`` first.

    ``start_product = A @ start_block`` is given (it comes from a pass that was made
    anyway). When the block is square the operator is recovered exactly,
    ``A = Y Omega^{-1}``; otherwise ``Q = orth(Y)`` is refined by ``n_power_iter``
    subspace iterations and the Rayleigh–Ritz matrix ``Q^T A Q`` costs one more
    product.
    """
    d, m = start_block.shape
    Y = start_product
    if m >= d:
        full = np.linalg.solve(start_block.T, Y.T)  # (Y Omega^{-1})^T
        full = 0.5 * (full + full.T)
        values, vectors = np.linalg.eigh(full)
    else:
        if apply is None:
            raise ValueError("a block narrower than the operator needs `apply`")
        Q = np.linalg.qr(Y)[0]
        for _ in range(n_power_iter):
            Q = np.linalg.qr(apply(Q))[0]
        B = Q.T @ apply(Q)
        values, small = np.linalg.eigh(0.5 * (B + B.T))
        vectors = Q @ small
    order = np.argsort(-sign * values)
    return Eigenpairs(values[order], vectors[:, order])


def krylov_eigenpairs(
    start_product: Array, start_block: Array, sign: float = 1.0
) -> Eigenpairs:
    """Eigenpairs of a symmetric ``A`` from one block product ``Y = A Omega``, for a
    start block that nearly spans ``A``'s leading eigenvectors.

    With ``Q R = Omega`` (``Q`` orthonormal), ``A Q = Y R^{-1}``,
    ``B = Q^T A Q`` and the part of ``A Q`` outside ``span(Q)``,
    ``A Q - Q B = Q_2 R_2``, Rayleigh–Ritz on the block Krylov space
    ``span[Q, A Q] = span[Q, Q_2]`` needs ``[[B, R_2^T], [R_2, Q_2^T A Q_2]]``. The
    last block would cost another product; it is set to zero. That is exact when
    ``A`` vanishes on the complement of ``span(Q)``, and otherwise errs in the
    leading eigenvectors by about ``|Q_2^T A Q_2| |R_2| / lambda^2``: the product of
    ``A``'s size away from its leading eigenvectors (for ``T2``, its sampling
    noise) and the start's error. Returns ``2 m`` pairs, largest
    ``sign * value`` first.
    """
    Q, R = np.linalg.qr(start_block)
    AQ = np.linalg.solve(R.T, start_product.T).T
    B = 0.5 * (Q.T @ AQ + AQ.T @ Q)
    Q2, R2 = np.linalg.qr(AQ - Q @ B)
    M = np.block([[B, R2.T], [R2, np.zeros_like(B)]])
    values, small = np.linalg.eigh(0.5 * (M + M.T))
    order = np.argsort(-sign * values)
    return Eigenpairs(values[order], np.hstack([Q, Q2]) @ small[:, order])


def whitening_matrix(pairs: Eigenpairs, n_components: int) -> Array:
    """``W = U_k |Lambda_k|^{-1/2}`` so that ``W^T T2 W = sign * I``.

    Eigenvalues that vanish (data that do not determine ``k`` directions, which the
    estimators warn about) are floored at ``1e-12`` of the largest magnitude, or
    at 1 when all vanish, so that ``W`` stays finite.
    """
    values = np.abs(pairs.values[:n_components])
    top = float(np.max(np.abs(pairs.values), initial=0.0))
    floor = 1e-12 * top if top > 0 and np.isfinite(top) else 1.0
    return pairs.vectors[:, :n_components] / np.sqrt(np.maximum(values, floor))


@dataclass(frozen=True)
class TensorComponents:
    values: Array  # (k,) eigenvalues lambda_i = T(v_i, v_i, v_i)
    vectors: Array  # (k, k) rows v_i, unit norm


def robust_tensor_power(
    T: Array,
    n_components: int,
    rng: np.random.Generator,
    n_restarts: int = 10,
    n_iter: int = 50,
    tol: float = 1e-12,
) -> TensorComponents:
    """Decompose a (nearly) orthogonally decomposable symmetric ``k x k x k`` tensor.

    For each component: ``n_restarts`` random unit starts, each iterated
    ``u <- T(I, u, u) / |T(I, u, u)|`` up to ``n_iter`` times; the start with the
    largest ``T(u, u, u)`` is polished, then deflated,
    ``T <- T - lambda u^{x3}``. Signs are fixed so that every ``lambda >= 0``.
    ``T`` is the whitened tensor (``k`` = number of experts), never a
    ``d``-dimensional one.
    """
    T = np.array(T, dtype=float)
    k = T.shape[0]
    values = np.zeros(n_components)
    vectors = np.zeros((n_components, k))
    for i in range(n_components):
        starts = rng.standard_normal((n_restarts, k))
        U = _power_iterate_rows(
            T, starts / np.linalg.norm(starts, axis=1)[:, None], n_iter, tol
        )
        vals = np.einsum("abc,ra,rb,rc->r", T, U, U, U)
        # T(-u, -u, -u) = -T(u, u, u): keep lambda >= 0
        U, vals = U * np.where(vals < 0, -1.0, 1.0)[:, None], np.abs(vals)
        u = _power_iterate(T, U[int(np.argmax(vals))], n_iter, tol)
        lam = float(np.einsum("abc,a,b,c->", T, u, u, u))
        if lam < 0:
            u, lam = -u, -lam
        values[i], vectors[i] = lam, u
        T = T - lam * np.einsum("a,b,c->abc", u, u, u)
    return TensorComponents(values, vectors)


def orthogonal_polish(
    T: Array, vectors: Array, n_iter: int = 500, tol: float = 1e-13
) -> TensorComponents:
    """Refine components jointly over orthonormal frames.

    In whitened coordinates the true components are orthonormal, but deflation
    passes each component's error on to the next. This fixed-point iteration
    ``V <- polar([T(I, v_j, v_j)]_j)`` (polar factor ``U V^T`` of the SVD) seeks an
    orthonormal frame maximising ``sum_j T(v_j, v_j, v_j)``, treating all components
    alike. Signs are then fixed so every ``lambda_j = T(v_j, v_j, v_j) >= 0``.
    """
    V = _polar(np.asarray(vectors, dtype=float))
    for _ in range(n_iter):
        new = _polar(np.einsum("abc,jb,jc->ja", T, V, V))
        done = np.abs(new - V).max() < tol
        V = new
        if done:
            break
    values = np.einsum("abc,ja,jb,jc->j", T, V, V, V)
    signs = np.where(values < 0, -1.0, 1.0)
    return TensorComponents(values * signs, V * signs[:, None])


def _polar(Y: Array) -> Array:
    u, _, vt = np.linalg.svd(Y, full_matrices=False)
    return u @ vt


def _power_iterate_rows(T: Array, U: Array, n_iter: int, tol: float) -> Array:
    """``u <- T(I, u, u) / |T(I, u, u)|`` from every row of ``U`` at once (the
    restarts of :func:`robust_tensor_power`: one array expression a step), each
    row stopping on its own: when it moves less than ``tol``, or ``T(I, u, u)``
    vanishes. The sign is kept from step to step (odd tensors can flip it)."""
    U = U.copy()
    k = T.shape[0]
    unfolded = T.reshape(k, k * k).T  # T(I, u, u) = (u (x) u) @ unfolded
    active = np.ones(len(U), dtype=bool)
    for _ in range(n_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        u = U[rows]
        v = (u[:, :, None] * u[:, None, :]).reshape(len(rows), k * k) @ unfolded
        norms = np.sqrt(np.einsum("ra,ra->r", v, v))
        moving = norms != 0.0
        v /= np.where(moving, norms, 1.0)[:, None]
        v *= np.where(np.einsum("ra,ra->r", v, u) < 0, -1.0, 1.0)[:, None]
        v = np.where(moving[:, None], v, u)
        moved = v - u
        done = np.sqrt(np.einsum("ra,ra->r", moved, moved)) < tol
        U[rows] = v
        active[rows[~moving | done]] = False
    return U


def _power_iterate(T: Array, u: Array, n_iter: int, tol: float) -> Array:
    """``u <- T(I, u, u) / |T(I, u, u)|`` from one start, up to ``n_iter`` times
    (:func:`_power_iterate_rows` with one row)."""
    return _power_iterate_rows(T, u[None, :], n_iter, tol)[0]
