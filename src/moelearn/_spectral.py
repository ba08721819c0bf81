"""Method 1, step 1: the regressors from Stein-score moments (SPEC.md, Method 1).

Three chunked passes over the data:

1. input mean/covariance (the whitening of ``x``), marginal skewness and kurtosis,
   and a first block product ``T2 @ Omega``;
2. the Rayleigh–Ritz product ``T2 @ Q`` (skipped when ``d <= 2 (k + 6)``: then
   the start block is square and pass 1 already determines ``T2``);
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

OVERSAMPLING = 6


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
    sign_ok: bool  # T2 has n_experts eigenvalues of the sign c2 predicts
    t2_noise: float  # about the operator norm of T2's sampling error

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
    """Compute the moment products (3 passes; 2 when ``d <= 2 (k + 6)``)."""
    _n, d = X.shape
    transforms = transform_coefficients(link, 0.0)
    sign = float(np.sign(tensor_constants(transforms, link, 1.0)[0])) or 1.0
    p2 = transforms.p2(y)
    width = n_experts + OVERSAMPLING
    if d <= 2 * width:  # a square start block gives T2 exactly and saves a pass
        width = d
    omega = np.eye(d) if width == d else rng.standard_normal((d, width))
    inputs = input_pass(X, p2, omega)
    pairs = ritz_eigenpairs(
        lambda V: t2_product(X, p2, inputs.whitening, V),
        inputs.t2_start,
        inputs.omega,
        sign=sign,
    )
    sign_ok = bool(np.all(sign * pairs.values[:n_experts] > 0))
    if not sign_ok:  # fall back to the largest magnitudes; the caller warns
        order = np.argsort(-np.abs(pairs.values))
        pairs = type(pairs)(pairs.values[order], pairs.vectors[:, order])
    # A d x d matrix of independent entries with sd tau / sqrt(n) has operator
    # norm about 2 tau sqrt(d / n); tau^2 ~ Var(P2) for the entries of P2 (x x^T - I)
    # (a constant in P2 adds nothing: the sample-whitened sum of x x^T - I is 0).
    t2_noise = float(2.0 * np.sqrt(d * np.var(p2) / X.shape[0]))
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
        sign_ok,
        t2_noise,
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
    constants depend on ``|a_i| = |s_i| nu_i`` this is solved for ``|a_i|`` by
    :class:`_ScaleSolver`. For links whose constants do not depend on the norm
    (linear), the eigenvalues are first rescaled by a common factor so that the
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

    solve_scale = _ScaleSolver(transforms, moments.link)
    if solve_scale.constant:
        # s_i = |c2| lambda_i / c3 in closed form. The weights p_i = 1 / (|c2| s_i^2)
        # must sum to one and the eigenvalues share one noisy common factor t, so
        # rescale: p_i ~ 1 / t^2 gives t^2 = sum_i p_i.
        c2, c3 = tensor_constants(transforms, moments.link, 1.0)
        scales = abs(c2) * comps.values / c3
        weights = 1.0 / (abs(c2) * scales * scales)
        total = weights.sum()
        if np.isfinite(total) and total > 0:
            scales, weights = scales * np.sqrt(total), weights / total
    else:
        # The eigenvalue is ambiguous near h's peak: take the solution nearest the
        # common norm that sum_i p_i = 1 implies.
        near = solve_scale.common_norm(nu)
        scales, weights = np.empty(k), np.empty(k)
        for i in range(k):
            scales[i], weights[i] = solve_scale(comps.values[i], nu[i], near)
    scales = np.where(np.isfinite(scales), scales, 1.0)
    experts_w = (directions * scales).T
    experts = moments.inputs.whitening.to_raw(experts_w)
    return SpectralEstimate(experts, weights, comps.values)


class _ScaleSolver:
    """Solves ``r = nu |c2(r)| lambda / |c3(r)|`` for the norm ``r = |a_i|``.

    With ``x = log r`` the equation reads ``h(x) = log(nu lambda)``,
    ``h(x) = x + log|c3(e^x)| - log|c2(e^x)|``, which depends only on the link and
    noise: ``h`` is tabulated once on ``r`` in [0.2, 5] (whitened units), the
    crossing nearest ``r = 1`` is taken and polished by secant steps on exact
    constants; without a crossing, the closest point. For saturating links ``h`` is
    flat near ``r = 1`` (sigmoid: ``h`` peaks there), so two solutions can lie on
    either side of the peak; the one nearest the common norm implied by
    ``sum_i p_i = 1`` (:meth:`common_norm`) is taken. (A plain fixed-point
    iteration diverges for the sigmoid.)
    """

    GRID = np.linspace(np.log(0.2), np.log(5.0), 97)

    def __init__(self, transforms: Transforms, link: Link):
        self.transforms, self.link = transforms, link
        self.h = np.array([self._h(x) for x in self.GRID])
        # Only the interval around r = 1 where c3 keeps its sign: where c3 crosses
        # zero, log|c3| has a pole that would look like a crossing.
        signs = np.sign([self._constants(x)[1] for x in self.GRID])
        centre = int(np.argmin(np.abs(self.GRID)))
        lo = centre
        while lo > 0 and signs[lo - 1] == signs[centre]:
            lo -= 1
        hi = centre
        while hi < len(signs) - 1 and signs[hi + 1] == signs[centre]:
            hi += 1
        self.valid = slice(lo, hi + 1)
        # Linear-type links: c2, c3 do not depend on r, h(x) = x + const.
        self.constant = bool(np.ptp(self.h - self.GRID) < 1e-9)

    def _constants(self, x: float) -> tuple[float, float]:
        return tensor_constants(self.transforms, self.link, float(np.exp(x)))

    def _h(self, x: float) -> float:
        c2, c3 = self._constants(x)
        return x + np.log(abs(c3) + 1e-300) - np.log(abs(c2) + 1e-300)

    def common_norm(self, nu: Array) -> float:
        """``log r`` solving ``sum_i p_i = 1`` when all experts share the norm ``r``.

        ``p_i = nu_i^2 / (|c2(r)| r^2)``, so ``|c2(r)| r^2 = sum_i nu_i^2``: a
        well-conditioned equation (monotone for the built-in links), unlike the
        tensor eigenvalue's, which is flat near ``r = 1`` for saturating links.
        """
        grid = self.GRID[self.valid]
        lhs = np.array(
            [np.log(abs(self._constants(x)[0]) + 1e-300) + 2 * x for x in grid]
        )
        return float(grid[np.argmin(np.abs(lhs - np.log(np.sum(nu * nu))))])

    def __call__(
        self, value: float, nu: float, near: float = 0.0
    ) -> tuple[float, float]:
        """Scale ``s = |c2| value / c3`` (signed) and weight ``p = 1 / (|c2| s^2)``.

        Of several solutions for ``log r``, the one nearest ``near`` is taken.
        """
        target = np.log(max(value * nu, 1e-300))
        grid = self.GRID[self.valid]
        diff = self.h[self.valid] - target
        crossings = np.flatnonzero(np.sign(diff[:-1]) != np.sign(diff[1:]))
        if crossings.size:
            i = crossings[np.argmin(np.abs(grid[crossings] - near))]
            x0, x1 = grid[i], grid[i + 1]
            f0, f1 = diff[i], diff[i + 1]
            for _ in range(20):  # secant polish, kept inside the bracket
                if f1 == f0:
                    break
                x2 = x1 - f1 * (x1 - x0) / (f1 - f0)
                x0, f0 = x1, f1
                x1, f1 = x2, self._h(x2) - target
                if abs(f1) < 1e-12:
                    break
            x = x1
        else:  # no exact solution on the grid: the closest point
            x = grid[np.argmin(np.abs(diff))]
        c2, c3 = self._constants(x)
        s = np.sign(c3) * np.exp(x) / nu  # consistent with r = |s| nu
        return s, 1.0 / (abs(c2) * s * s)
