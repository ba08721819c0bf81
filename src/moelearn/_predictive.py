"""The predictive distribution of a mixture of experts, and scores of it.

Given ``x``, ``y`` follows the Gaussian mixture
``p(y | x) = sum_j pi_j(x) N(y | mu_j(x), sigma_j^2)`` with ``mu_j = g(a_j . x)``:
its CDF is ``F(y | x) = sum_j pi_j Phi((y - mu_j) / sigma_j)``. Quantiles solve
``F(y | x) = q`` row by row by bisection (``F`` is increasing; the root lies
between the smallest ``mu_j - 9 sigma_j`` and the largest ``mu_j + 9 sigma_j``,
where ``F`` is below 1e-18 and above 1 - 1e-18). Where the experts disagree the
distribution is multimodal and its central interval can cover a gap between the
modes: :func:`interval` returns that central interval, the one with equal tails.

The continuous ranked probability score of a Gaussian mixture has a closed form
(Grimit et al. 2006): with ``A(m, s^2) = 2 s phi(m / s) + m (2 Phi(m / s) - 1)``,
``CRPS(F, y) = sum_j pi_j A(y - mu_j, sigma_j^2)
- 1/2 sum_jk pi_j pi_k A(mu_j - mu_k, sigma_j^2 + sigma_k^2)``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from moelearn._model import MoEParams, expert_means, gate_proba

Array = np.ndarray

_BISECTIONS = 80  # halves the bracket to 2^-80 of its width: below rounding


def mixture_components(X: Array, params: MoEParams) -> tuple[Array, Array, Array]:
    """Per row: gate weights ``(n, k)``, expert means ``(n, k)``, noise ``(k,)``."""
    sigma = np.broadcast_to(
        np.asarray(params.noise_std, float), (params.n_experts,)
    ).copy()
    return np.asarray(gate_proba(X, params)), np.asarray(expert_means(X, params)), sigma


def cdf(y: Array, weights: Array, means: Array, sigma: Array) -> Array:
    """``F(y_i | x_i)`` for ``y`` of shape (n,) or (n, m) (m values per row)."""
    y = np.asarray(y, float)
    extra = y.ndim == 2
    z = (
        (y[..., None] if extra else y[:, None]) - (means[:, None] if extra else means)
    ) / sigma
    w = weights[:, None] if extra else weights
    return np.sum(w * ndtr(z), axis=-1)


def quantiles(q: Array, weights: Array, means: Array, sigma: Array) -> Array:
    """The ``q`` quantiles (levels in (0, 1), shape (m,)) of each row's
    predictive distribution, shape (n, m)."""
    q = np.atleast_1d(np.asarray(q, float))
    low = np.min(means - 9.0 * sigma, axis=1)[:, None] * np.ones((1, q.size))
    high = np.max(means + 9.0 * sigma, axis=1)[:, None] * np.ones((1, q.size))
    for _ in range(_BISECTIONS):
        middle = 0.5 * (low + high)
        below = cdf(middle, weights, means, sigma) < q
        low = np.where(below, middle, low)
        high = np.where(below, high, middle)
    return 0.5 * (low + high)


def interval(coverage: float, weights: Array, means: Array, sigma: Array) -> Array:
    """The central ``coverage`` interval per row, shape (n, 2)."""
    tail = (1.0 - coverage) / 2.0
    return quantiles(np.array([tail, 1.0 - tail]), weights, means, sigma)


def density(y: Array, weights: Array, means: Array, sigma: Array) -> Array:
    """``p(y_i | x_i)``, shape (n,)."""
    z = (np.asarray(y, float)[:, None] - means) / sigma
    return np.sum(weights * np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * sigma), axis=1)


def _a(m: Array, variance: Array) -> Array:
    s = np.sqrt(variance)
    u = m / s
    return 2.0 * s * np.exp(-0.5 * u * u) / np.sqrt(2.0 * np.pi) + m * (
        2.0 * ndtr(u) - 1.0
    )


def crps(y: Array, weights: Array, means: Array, sigma: Array) -> Array:
    """The CRPS of each row's predictive mixture at ``y`` (lower is better)."""
    y = np.asarray(y, float)
    var = sigma**2
    first = np.sum(weights * _a(y[:, None] - means, var), axis=1)
    pair_means = means[:, :, None] - means[:, None, :]
    pair_var = var[:, None] + var[None, :]
    pair_weights = weights[:, :, None] * weights[:, None, :]
    second = 0.5 * np.sum(pair_weights * _a(pair_means, pair_var), axis=(1, 2))
    return first - second
