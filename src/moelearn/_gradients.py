"""Minibatch losses and gradients of the mixture of experts in its parameters.

All take rows ``Z`` (b, d) in the coordinates the parameters act on and return
means over the rows. With ``eta = Z G^T`` (gate logits, last row of ``G`` zero),
``m_j = g(a_j . z)``, residuals ``e_ij = y_i - m_ij``, gates ``pi`` and posterior
responsibilities ``r``:

* negative log-likelihood ``-log sum_j pi_j N(y | m_j, sigma^2)``:
  ``d/dG_j = -(r_j - pi_j) z``, ``d/da_j = -r_j e_j g'(a_j . z) z / sigma^2``,
  ``d/dlog sigma = -sum_j r_j (e_j^2 / sigma^2 - 1)``;
* squared error ``(y - f)^2`` with ``f = sum_j pi_j m_j``:
  ``d/da_j = -2 (y - f) pi_j g'(a_j . z) z``,
  ``d/dG_j = -2 (y - f) pi_j (m_j - f) z``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moelearn._links import Link
from moelearn._model import log_gate, log_joint, logsumexp_rows

Array = np.ndarray


@dataclass(frozen=True)
class LossGradient:
    loss: float
    experts: Array  # (k, d)
    gating: Array  # (k, d), last row zero
    log_noise: float  # derivative in log sigma (0 for the squared error)


def nll_gradient(
    Z: Array,
    y: Array,
    experts: Array,
    gating: Array,
    noise_std: float | Array,
    link: Link,
) -> LossGradient:
    """Mean negative log-likelihood over the rows and its gradient; ``noise_std``
    shared (a float: ``log_noise`` a float) or one per expert (``(k,)``: one
    ``log_noise`` derivative each, ``-mean_i r_ij (res_ij^2 / sigma_j^2 - 1)``)."""
    b = Z.shape[0]
    log_gates = log_gate(Z @ gating.T)
    pre = Z @ experts.T
    residuals = y[:, None] - link.func(pre)
    joint = log_joint(log_gates, residuals, noise_std)
    ll = logsumexp_rows(joint)
    resp = np.exp(joint - ll[:, None])
    grad_gating = -((resp - np.exp(log_gates)).T @ Z) / b
    grad_gating[-1] = 0.0
    var = np.asarray(noise_std, float) ** 2
    scaled = residuals / np.sqrt(var)
    grad_experts = -((resp * residuals * link.deriv(pre) / var).T @ Z) / b
    per_expert = -np.sum(resp * (scaled * scaled - 1.0), axis=0) / b
    grad_log_noise = per_expert if np.ndim(noise_std) else float(per_expert.sum())
    return LossGradient(-float(ll.mean()), grad_experts, grad_gating, grad_log_noise)


def squared_error_gradient(
    Z: Array, y: Array, experts: Array, gating: Array, link: Link
) -> LossGradient:
    """Mean squared error of ``E[y | x]`` over the rows and its gradient."""
    b = Z.shape[0]
    gates = np.exp(log_gate(Z @ gating.T))
    pre = Z @ experts.T
    means = link.func(pre)
    fitted = (gates * means).sum(axis=1)
    error = y - fitted
    weighted = error[:, None] * gates
    grad_experts = -2.0 * ((weighted * link.deriv(pre)).T @ Z) / b
    grad_gating = -2.0 * ((weighted * (means - fitted[:, None])).T @ Z) / b
    grad_gating[-1] = 0.0
    return LossGradient(float(np.mean(error * error)), grad_experts, grad_gating, 0.0)
