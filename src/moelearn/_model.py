"""The mixture-of-experts model as pure functions of its parameters.

``P(y | x) = sum_j pi_j(x) N(y | g(a_j . x), sigma^2)``, ``pi = softmax(G x)`` with the
last row of ``G`` zero (``k = 2``: ``pi_1 = sigmoid(w . x)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moelearn._links import get_link
from moelearn._moments import row_slices

Array = np.ndarray
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


@dataclass(frozen=True)
class MoEParams:
    """Parameters of a mixture of experts in the user's input coordinates."""

    experts: Array  # (k, d) regressors a_j
    gating: Array  # (k, d) softmax logits, last row zero
    noise_std: float
    link: str

    @property
    def n_experts(self) -> int:
        return self.experts.shape[0]


def logsumexp_rows(a: Array) -> Array:
    """``log sum_j exp(a_ij)`` per row, stable."""
    return logsumexp_cols(a.T)


def logsumexp_cols(a: Array) -> Array:
    """``log sum_j exp(a_ji)`` per column of a ``(k, m)`` array, stable.

    Experts-by-rows layout: reductions over the ``k`` experts run along contiguous
    rows, which is far faster in NumPy than reducing a short last axis.
    """
    top = a.max(axis=0)
    return top + np.log(np.exp(a - top).sum(axis=0))


def log_gate(logits: Array) -> Array:
    """Row-wise log-softmax of ``(n, k)`` logits."""
    return logits - logsumexp_rows(logits)[:, None]


def log_joint(log_gates: Array, residuals: Array, noise_std: float) -> Array:
    """``log pi_j(x) + log N(y | mean_j, sigma^2)`` from the residuals ``y - mean_j``."""
    z = residuals / noise_std
    return log_gates - 0.5 * z * z - np.log(noise_std) - _HALF_LOG_2PI


def gate_proba(X: Array, params: MoEParams) -> Array:
    """Gate probabilities ``pi(x)``, shape (n, k)."""
    return np.exp(log_gate(X @ params.gating.T))


def expert_means(X: Array, params: MoEParams) -> Array:
    """``g(a_j . x)`` for every expert, shape (n, k)."""
    return get_link(params.link).func(X @ params.experts.T)


def predict_mean(X: Array, params: MoEParams) -> Array:
    """``E[y | x] = sum_j pi_j(x) g(a_j . x)``."""
    out = np.empty(X.shape[0])
    for rows in row_slices(*X.shape):
        out[rows] = (gate_proba(X[rows], params) * expert_means(X[rows], params)).sum(1)
    return out


def log_likelihood_terms(X: Array, y: Array, params: MoEParams) -> tuple[Array, Array]:
    """Per-sample log-likelihood (n,) and posterior responsibilities (n, k)."""
    n = X.shape[0]
    ll = np.empty(n)
    resp = np.empty((n, params.n_experts))
    for rows in row_slices(*X.shape):
        xc = X[rows]
        joint = log_joint(
            log_gate(xc @ params.gating.T),
            y[rows][:, None] - expert_means(xc, params),
            params.noise_std,
        )
        ll[rows] = logsumexp_rows(joint)
        resp[rows] = np.exp(joint - ll[rows][:, None])
    return ll, resp


def sample_outputs(
    X: Array, params: MoEParams, rng: np.random.Generator
) -> tuple[Array, Array]:
    """Draw ``z ~ pi(x)`` and ``y = g(a_z . x) + sigma eps``; returns ``(y, z)``."""
    gates = gate_proba(X, params)
    u = rng.random(X.shape[0])
    z = np.minimum(
        (gates.cumsum(axis=1) < u[:, None]).sum(axis=1), params.n_experts - 1
    )
    means = expert_means(X, params)[np.arange(X.shape[0]), z]
    return means + params.noise_std * rng.standard_normal(X.shape[0]), z
