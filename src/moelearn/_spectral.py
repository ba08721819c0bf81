"""Method 1, step 1: the regressors from Stein-score moments (SPEC.md, Method 1).

Three chunked passes over the data:

1. input mean/covariance (the whitening of ``x``), marginal skewness and kurtosis,
   and a first block product ``T2 @ Omega``;
2. the Rayleigh–Ritz product ``T2 @ Q`` (skipped when ``d`` is at most the block
   width, where pass 1 already determines ``T2``);
3. ``T3(W, W, W)`` for the whitening ``W`` of ``T2``, for two polynomials of ``y``
   (``P3`` at zero noise and ``y`` itself), so that ``T3`` for any noise level is
   ``T3_0 - 3 sigma^2 T3_y`` without another pass.

The ``k x k x k`` whitened tensor is decomposed by the robust tensor power method;
regressors are un-whitened with their scale from the eigenvalues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moelearn._links import Link, Transforms, tensor_constants, transform_coefficients
from moelearn._moments import InputPass, input_pass, t2_product, t3_whitened
from moelearn._tensor import (
    orthogonal_polish,
    ritz_eigenpairs,
    robust_tensor_power,
    whitening_matrix,
)

Array = np.ndarray

OVERSAMPLING = 8


@dataclass(frozen=True)
class SpectralMoments:
    """Everything the passes over the data produce; solvable for any noise level."""

    link: Link
    transforms: Transforms  # at zero noise
    inputs: InputPass
    t2_values: Array  # Ritz values of T2, sorted by sign(c2) * value
    t2_vectors: Array  # (d, k) top eigenvectors of T2 (whitened coordinates)
    t3_zero_noise: Array  # (k, k, k) E[P3_0(y) S3](W, W, W)
    t3_linear: Array  # (k, k, k) E[y S3](W, W, W)
    sign: float  # sign of the T2 constant c2

    @property
    def n_experts(self) -> int:
        return self.t3_zero_noise.shape[0]

    @property
    def spectral_gap(self) -> float:
        """``|lambda_k| / |lambda_{k+1}|`` of ``T2`` (inf when ``k = d``)."""
        k = self.n_experts
        if len(self.t2_values) <= k:
            return float("inf")
        return float(abs(self.t2_values[k - 1]) / max(abs(self.t2_values[k]), 1e-300))


@dataclass(frozen=True)
class SpectralEstimate:
    experts: Array  # (k, d) in user coordinates
    weights: Array  # (k,) p_i = E[pi_i(x)] implied by the tensor scales
    tensor_values: Array  # (k,) eigenvalues of the whitened T3


def spectral_moments(
    X: Array, y: Array, link: Link, n_experts: int, rng: np.random.Generator
) -> SpectralMoments:
    """Compute the moment products (3 passes; 2 when ``d <= k + 8``)."""
    _n, d = X.shape
    transforms = transform_coefficients(link, 0.0)
    sign = float(np.sign(tensor_constants(transforms, link, 1.0)[0])) or 1.0
    p2 = transforms.p2(y)
    width = min(d, n_experts + OVERSAMPLING)
    omega = np.eye(d) if width == d else rng.standard_normal((d, width))
    inputs = input_pass(X, p2, omega)
    pairs = ritz_eigenpairs(
        lambda V: t2_product(X, p2, inputs.whitening, V),
        inputs.t2_start,
        inputs.omega,
        sign=sign,
    )
    top = sign * pairs.values[:n_experts]
    if np.any(top <= 0):
        raise ValueError(
            f"the second-order moment T2 has fewer than {n_experts} eigenvalues of the "
            "expected sign: the data do not support this many experts (or the link is "
            "wrong); try fewer experts"
        )
    W = whitening_matrix(pairs, n_experts)
    weights = np.column_stack([transforms.p3(y), y])
    t3 = t3_whitened(X, weights, inputs.whitening, W)
    return SpectralMoments(
        link,
        transforms,
        inputs,
        pairs.values,
        pairs.vectors[:, :n_experts],
        t3[0],
        t3[1],
        sign,
    )


def spectral_solve(
    moments: SpectralMoments,
    noise_std: float,
    rng: np.random.Generator,
    n_restarts: int,
) -> SpectralEstimate:
    """Regressors from the moments for noise level ``noise_std`` (no pass over data).

    With ``W^T a_i = s_i mu_i`` (``mu_i`` orthonormal eigenvectors of the whitened
    ``T3`` from the power method, then polished jointly over orthonormal frames;
    eigenvalue ``lambda_i``), ``|c2| p_i s_i^2 = 1`` and
    ``lambda_i = c3 p_i s_i^3`` give ``s_i = |c2| lambda_i / c3``; for links whose
    constants depend on ``|a_i| = |s_i| nu_i`` this is solved by fixed-point
    iteration. The eigenvalues are first rescaled by a common factor so that the
    implied weights ``p_i = E[pi_i(x)]`` sum to one, as they must; only their ratios
    then carry noise. ``a_i = s_i U_k D^{1/2} mu_i`` in whitened coordinates.
    """
    k = moments.n_experts
    tensor = moments.t3_zero_noise - 3.0 * noise_std**2 * moments.t3_linear
    comps = robust_tensor_power(tensor, k, rng, n_restarts=n_restarts)
    comps = orthogonal_polish(tensor, comps.vectors)
    transforms = Transforms(
        moments.transforms.alpha,
        moments.transforms.beta0,
        moments.transforms.gamma,
        float(noise_std),
    )
    root_d = np.sqrt(np.abs(moments.t2_values[:k]))
    directions = (moments.t2_vectors * root_d) @ comps.vectors.T  # (d, k): U D^1/2 mu
    nu = np.linalg.norm(directions, axis=0)

    def scales_and_weights(factor: float) -> tuple[Array, Array]:
        scales, weights = np.empty(k), np.empty(k)
        for i in range(k):
            scales[i], weights[i] = _scale(
                transforms, moments.link, factor * comps.values[i], nu[i]
            )
        return scales, weights

    # The weights p_i = E[pi_i(x)] sum to one; the eigenvalues share one noisy
    # common factor, so solve sum_i p_i(t lambda_i) = 1 for t (p_i ~ 1/t^2).
    log_t = 0.0
    for _ in range(60):
        scales, weights = scales_and_weights(np.exp(log_t))
        total = weights.sum()
        if not np.isfinite(total) or total <= 0 or abs(np.log(total)) < 1e-12:
            break
        log_t += 0.5 * np.log(total)
    if not np.all(np.isfinite(scales)):
        scales, weights = scales_and_weights(1.0)
    experts_w = (directions * scales).T
    experts = moments.inputs.whitening.to_raw(experts_w)
    return SpectralEstimate(experts, weights, comps.values)


def _scale(
    transforms: Transforms, link: Link, value: float, nu: float
) -> tuple[float, float]:
    """Scale ``s`` and weight ``p`` of one component with tensor eigenvalue ``value``.

    Solves ``s = |c2(r)| value / c3(r)`` with ``r = |s| nu`` by fixed-point
    iteration (immediate for linear ``g``), then ``p = 1 / (|c2| s^2)``.
    """
    norm = 1.0
    for _ in range(50):
        c2, c3 = tensor_constants(transforms, link, norm)
        s = abs(c2) * value / c3
        new_norm = max(abs(s) * nu, 1e-8)
        if abs(new_norm - norm) < 1e-10 * norm:
            break
        norm = new_norm
    weight = 1.0 / (abs(c2) * s * s) if s != 0 else np.inf
    return s, weight
