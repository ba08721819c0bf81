"""Stein-score moments computed from samples in row chunks.

Nothing here forms a ``d x d x d`` tensor. The second-order moment is used only
through block products ``T2 @ V`` and the third-order one only through its
contraction ``T3(W, W, W)`` with a ``d x k`` whitening matrix, each an average over
samples of low-dimensional projections:

* ``T2 V = E[P2(y) (x x^T - I)] V = E[P2(y) x (x^T V)] - E[P2(y)] V``;
* ``T3(W, W, W)_abc = E[P3(y) (z_a z_b z_c - z_a M_bc - z_b M_ac - z_c M_ab)]``
  with ``z = W^T x`` and ``M = W^T W``.

Here ``x`` is the *whitened* input ``L^T (x_raw - mean)``; the kernels take raw rows
and fold the affine map into the vectors, so the data are never copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from moelearn._passes import (
    chunk_rows,
    like,
    namespace,
    reduce_rows,
    release_pages,
    row_slices,
    take_rows,
)

Array = np.ndarray


@dataclass(frozen=True)
class Whitening:
    """Affine map ``x_w = L^T (x - mean)`` with ``L^T Cov(x) L = I``."""

    mean: Array  # (d,)
    transform: Array  # L, (d, d)
    covariance: Array  # (d, d)

    def to_raw(self, V: Array) -> Array:
        """Vectors acting on whitened inputs, as vectors acting on centred raw inputs.

        ``x_w . v = (x - mean) . (L v)``; works row-wise for ``V`` of shape ``(k, d)``.
        """
        return V @ self.transform.T


@dataclass(frozen=True)
class InputPass:
    """What the first pass over the data learns."""

    whitening: Whitening
    skewness: Array  # per raw column
    excess_kurtosis: Array  # per raw column
    t2_start: Array  # T2 @ omega_w, (d, m), in whitened coordinates
    omega: Array  # the whitened start block omega_w, (d, m)


def input_pass(
    X: Array,
    p2: Array,
    omega_raw: Array,
    sample_weight: Array | None = None,
    sample: Array | None = None,
) -> InputPass:
    """One pass: input mean/covariance, marginal shape, and a first ``T2`` block product.

    The whitening is unknown until the pass ends, so the product is accumulated
    against the raw block ``omega_raw`` about a provisional centre ``c`` and
    corrected afterwards; the whitened start block is ``omega_w = L^{-1} omega_raw``.
    Returns ``T2 @ omega_w`` exactly as a second pass with the final whitening
    would. ``c`` is the first chunk's mean when the columns' means are large next
    to their spread (to avoid cancellation), else zero (no copy of the rows).
    Skewness and kurtosis come from ``sample``, the rows :func:`row_sample`
    picks (read here when not given; standard error ``sqrt(6 / m)`` <= 0.011),
    unweighted.
    With ``sample_weight`` every expectation is the weighted mean
    ``sum_i w_i f_i / sum_i w_i`` and ``p2`` holds ``w_i P2(y_i)`` (as for
    :func:`t2_product`).
    """
    d = X.shape[1]
    first = take_rows(X, slice(0, chunk_rows(d)))
    centre = first.mean(axis=0)
    if np.all(np.abs(centre) <= 10.0 * (first.std(axis=0) + 1e-300)):
        centre = np.zeros(d)  # cancellation costs at most two digits
    kernel = partial(_input_sums, centre=centre, omega_raw=omega_raw)
    if sample_weight is None:
        n = X.shape[0]
        sums, s2, p2_xxo = reduce_rows(kernel, X, p2)
    else:
        n = float(sample_weight.sum())
        sums, s2, p2_xxo = reduce_rows(kernel, X, p2, sample_weight)
    s1, p2_x = sums
    p2_sum = float(p2.sum())
    delta = s1 / n  # mean - centre
    mean = centre + delta
    cov = s2 / n - np.outer(delta, delta)
    cov = 0.5 * (cov + cov.T)
    transform = inverse_sqrt(cov)
    if sample is None:
        sample = take_rows(X, row_sample(X.shape[0]))
    skewness, kurtosis = _marginal_shape(sample)
    release_pages(X)  # a memory map's sample may be a view of it

    # sum p2 (x - mean)(x - mean)^T omega, from sums about the centre.
    do = delta @ omega_raw
    c2o = (
        p2_xxo.T
        - np.outer(p2_x, do)
        - np.outer(delta, p2_x @ omega_raw)
        + p2_sum * np.outer(delta, do)
    ) / n
    p2_mean = p2_sum / n
    omega_w = transform.T @ cov @ omega_raw  # L^{-1} omega_raw
    t2_start = transform.T @ c2o - p2_mean * omega_w
    return InputPass(
        Whitening(mean, transform, cov), skewness, kurtosis, t2_start, omega_w
    )


def _input_sums(xc: Array, w: Array, *sw: Array, centre: Array, omega_raw: Array):
    """``[sum x, sum p2 x]``, ``sum x x^T`` and ``sum p2 (omega^T x) x^T`` (the
    last transposed) over a chunk, about ``centre``; with a sample weight ``sw``
    the first two sums are weighted by it (``w`` already carries it)."""
    xp = namespace(xc)
    if np.any(centre != 0):
        xc = xc - like(centre, xc)
    if sw:
        s1, s2 = sw[0] @ xc, xc.T @ (sw[0][:, None] * xc)
    else:
        s1, s2 = xp.sum(xc, axis=0), xc.T @ xc
    return (s1, w @ xc), s2, ((like(omega_raw.T, xc) @ xc.T) * w) @ xc


def input_whitening(X: Array) -> Whitening:
    """The input whitening alone (mean, covariance, ``Cov^{-1/2}``), in one pass."""
    n, d = X.shape
    return input_pass(X, np.zeros(n), np.zeros((d, 1))).whitening


SAMPLE_ROWS = 50_000


def row_sample(n_samples: int) -> slice:
    """Evenly strided rows, ``SAMPLE_ROWS`` to ``2 SAMPLE_ROWS`` of them (all when
    fewer), for what a subset measures well enough: the inputs' marginal shape and
    the spectral step's start block."""
    return slice(None, None, max(1, n_samples // SAMPLE_ROWS))


def _marginal_shape(sample: Array) -> tuple[Array, Array]:
    """Per-column skewness and excess kurtosis of the rows ``sample``."""
    m, d = sample.shape
    mean = sample.mean(axis=0)
    powers = np.zeros((3, d))
    for rows in row_slices(m, d):
        c = sample[rows] - mean
        c2 = c * c
        powers += [
            c2.sum(axis=0),
            np.einsum("ij,ij->j", c2, c),
            np.einsum("ij,ij->j", c2, c2),
        ]
    m2, m3, m4 = powers / m
    m2 = np.where(m2 > 0, m2, np.inf)
    return m3 / m2**1.5, m4 / (m2 * m2) - 3.0


def inverse_sqrt(cov: Array) -> Array:
    """Symmetric ``Cov^{-1/2}``; ``ValueError`` when columns are (near) collinear."""
    evals, evecs = np.linalg.eigh(cov)
    top = evals[-1] if evals.size else 0.0
    if not np.isfinite(top) or top <= 0 or evals[0] <= 1e-10 * top:
        raise ValueError(
            "the columns of X are constant or (nearly) collinear: their covariance "
            "is singular; drop or combine redundant columns"
        )
    return (evecs / np.sqrt(evals)) @ evecs.T


def t2_product(
    X: Array, p2: Array, whitening: Whitening, V: Array, total: float | None = None
) -> Array:
    """``T2 @ V`` for whitened ``V`` (d, m), in one chunked pass.

    ``T2 V = L^T E[P2(y) (x - mean) (x - mean)^T] L V - E[P2(y)] V``. With sample
    weights, ``p2`` holds ``w_i P2(y_i)`` and ``total`` is ``sum_i w_i``.
    """
    n = X.shape[0] if total is None else total
    U = whitening.transform @ V  # acts on centred raw rows
    offset = (whitening.mean @ U)[:, None]
    acc, acc_sum = reduce_rows(partial(_t2_sums, U=U, offset=offset), X, p2)
    centred = (acc.T - np.outer(whitening.mean, acc_sum)) / n
    return whitening.transform.T @ centred - (p2.sum() / n) * V


def _t3_sums(xc: Array, weights: Array, U: Array, offset: Array):
    """``sum_i P(y_i) z_a z_b z_c`` (q, k * k, k) and ``sum_i P(y_i) z_a`` (q, k),
    ``z = U^T x - offset``, over a chunk."""
    xp = namespace(xc)
    z = like(U.T, xc) @ xc.T - like(offset, xc)  # (k, rows): contiguous rows
    k = z.shape[0]
    pairs = xp.reshape(z[:, None, :] * z[None, :, :], (k * k, -1))
    wT = np.ascontiguousarray(weights.T) if xp is np else weights.T  # (q, rows)
    cube = xp.stack([(pairs * w) @ z.T for w in wT])
    return cube, wT @ z.T


def _t2_sums(xc: Array, w: Array, U: Array, offset: Array):
    """``sum p2 (U^T x - offset) x^T`` and ``sum p2 (U^T x - offset)`` over a chunk."""
    weighted = (like(U.T, xc) @ xc.T - like(offset, xc)) * w  # (m, rows): contiguous
    return weighted @ xc, namespace(xc).sum(weighted, axis=1)


def t3_whitened(
    X: Array, weights: Array, whitening: Whitening, W: Array, total: float | None = None
) -> Array:
    """``T3(W, W, W)`` for each weight column, in one chunked pass.

    Parameters
    ----------
    X : (n, d) raw inputs.
    weights : (n, q) values ``P(y_i)`` of ``q`` polynomials of ``y``.
    whitening : the input whitening.
    W : (d, k) matrix acting on whitened inputs.
    total : ``sum_i w_i`` when ``weights`` carry sample weights (default ``n``).

    Returns
    -------
    (q, k, k, k) array: ``E[P(y) S3(x)]`` contracted with ``W`` on every mode.
    """
    k = W.shape[1]
    weights = weights.reshape(X.shape[0], -1)
    n = X.shape[0] if total is None else total
    q = weights.shape[1]
    U = whitening.transform @ W
    offset = (whitening.mean @ U)[:, None]
    cube, first = reduce_rows(partial(_t3_sums, U=U, offset=offset), X, weights)
    cube = cube.reshape(q, k, k, k) / n
    first /= n
    M = W.T @ W
    sym = (
        np.einsum("qa,bc->qabc", first, M)
        + np.einsum("qb,ac->qabc", first, M)
        + np.einsum("qc,ab->qabc", first, M)
    )
    return cube - sym
