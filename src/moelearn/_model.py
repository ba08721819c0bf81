"""The mixture-of-experts model as pure functions of its parameters.

``P(y | x) = sum_j pi_j(x) N(y | g(a_j . x), sigma^2)`` with one of two gates:

* ``softmax``: ``pi = softmax(G x)`` with the last row of ``G`` zero (``k = 2``:
  ``pi_1 = sigmoid(w . x)``);
* ``tree`` (hierarchical mixture of experts): a complete binary tree of depth ``D``
  with ``k = 2^D`` leaves (the experts) and ``k - 1`` internal nodes in heap order
  (node ``t`` has children ``2t + 1`` and ``2t + 2``); node ``t`` sends ``x`` left
  with probability ``sigmoid(v_t . x)``, and a leaf's probability is the product of
  the branch probabilities on its path. ``G`` holds the node vectors ``v_t``,
  shape ``(k - 1, d)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from moelearn._arrays import concat, like, namespace, projections
from moelearn._links import get_link
from moelearn._passes import RowSource, map_rows

Array = np.ndarray
HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


@dataclass(frozen=True)
class MoEParams:
    """Parameters of a mixture of experts in the user's input coordinates."""

    experts: Array  # (k, d) regressors a_j
    gating: Array  # (k, d) softmax logits, last row zero
    noise_std: float | Array  # shared sigma, or one per expert (k,)
    link: str
    gate: str = "softmax"  # or "tree"

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
    xp = namespace(a)
    top = xp.max(a, axis=0)
    return top + xp.log(xp.sum(xp.exp(a - top), axis=0))


def log_gate(logits: Array) -> Array:
    """Row-wise log-softmax of ``(n, k)`` logits."""
    return logits - logsumexp_rows(logits)[:, None]


@functools.lru_cache(maxsize=16)
def tree_paths(n_leaves: int) -> tuple[Array, Array]:
    """Which leaves lie left of, and under, each internal node of the complete tree.

    Returns boolean ``left`` and ``under`` of shape ``(k - 1, k)``: leaf ``l`` is in
    node ``t``'s left subtree (``left[t, l]``) or anywhere below ``t``
    (``under[t, l]``). Leaves are numbered left to right.
    """
    k = n_leaves
    if k < 2 or k & (k - 1):
        raise ValueError(f"a tree gate needs a power of 2 leaves >= 2; got {k}")
    left = np.zeros((k - 1, k), dtype=bool)
    under = np.zeros((k - 1, k), dtype=bool)
    for leaf in range(k):
        node = leaf + k - 1  # heap index of the leaf
        while node > 0:
            parent = (node - 1) // 2
            under[parent, leaf] = True
            left[parent, leaf] = node == 2 * parent + 1
            node = parent
    left.setflags(write=False)
    under.setflags(write=False)
    return left, under


def log_gate_cols(logits: Array, gate: str) -> Array:
    """Log gate probabilities, experts-by-rows ``(k, m)``, from the gate's logits.

    ``softmax``: ``logits`` are ``G x`` (k, m), normalised over the experts.
    ``tree``: ``logits`` are the node scores ``v_t . x`` (k - 1, m) and
    ``log pi_l = sum_t [l left of t] log sigmoid(s_t) + [l right of t]
    log sigmoid(-s_t)``.
    """
    if gate == "softmax":
        return logits - logsumexp_cols(logits)
    xp = namespace(logits)
    left, under = tree_paths(logits.shape[0] + 1)
    zeros = xp.zeros_like(logits)
    log_left = -xp.logaddexp(zeros, -logits)  # log sigmoid(s)
    log_right = -xp.logaddexp(zeros, logits)  # log sigmoid(-s)
    to_left = like(left.T.astype(float), logits)
    to_right = like((under & ~left).T.astype(float), logits)
    return to_left @ log_left + to_right @ log_right


def n_gate_rows(n_experts: int, gate: str) -> int:
    """Rows of ``G``: ``k`` softmax logits (last zero) or ``k - 1`` tree nodes."""
    return n_experts if gate == "softmax" else n_experts - 1


def log_joint(log_gates: Array, residuals: Array, noise_std: float | Array) -> Array:
    """``log pi_j(x) + log N(y | mean_j, sigma_j^2)`` from the residuals
    ``y - mean_j`` (n, k); ``noise_std`` shared or one per expert."""
    if np.ndim(noise_std):
        sigma = np.asarray(noise_std, float)
        z = residuals * like(1.0 / sigma, residuals)
        return log_gates - 0.5 * z * z - like(np.log(sigma), residuals) - HALF_LOG_2PI
    z = residuals / noise_std
    return log_gates - 0.5 * z * z - float(np.log(noise_std)) - HALF_LOG_2PI


def gate_proba(X: RowSource, params: MoEParams) -> Array:
    """Gate probabilities ``pi(x)``, shape (n, k) (one pass over ``X``)."""
    return map_rows(functools.partial(_gate_rows, params=params), X)


def _log_gate_cols(xc: Array, params: MoEParams) -> Array:
    """Log gate probabilities of rows ``xc``, experts-by-rows ``(k, m)``."""
    return log_gate_cols(projections(params.gating, xc), params.gate)


def _gate_rows(xc: Array, params: MoEParams) -> Array:
    return namespace(xc).exp(_log_gate_cols(xc, params)).T


def expert_means(X: RowSource, params: MoEParams) -> Array:
    """``g(a_j . x)`` for every expert, shape (n, k)."""
    return get_link(params.link).func(X @ like(params.experts.T, X))


def predict_mean(X: RowSource, params: MoEParams) -> Array:
    """``E[y | x] = sum_j pi_j(x) g(a_j . x)`` (one pass over ``X``)."""
    return map_rows(functools.partial(_mean_rows, params=params), X)


def _mean_rows(xc: Array, params: MoEParams) -> Array:
    return namespace(xc).sum(_gate_rows(xc, params) * expert_means(xc, params), axis=1)


def log_likelihood_terms(
    X: RowSource, y: Array, params: MoEParams
) -> tuple[Array, Array]:
    """Per-sample log-likelihood (n,) and posterior responsibilities (n, k)."""
    both = map_rows(functools.partial(_likelihood_rows, params=params), X, y)
    return both[:, 0], both[:, 1:]


def _likelihood_rows(xc: Array, yc: Array, params: MoEParams) -> Array:
    """``[log p(y|x), responsibilities]`` per row, shape (m, 1 + k)."""
    joint = log_joint(
        _log_gate_cols(xc, params).T,
        yc[:, None] - expert_means(xc, params),
        params.noise_std,
    )
    ll = logsumexp_rows(joint)
    return concat([ll[:, None], namespace(xc).exp(joint - ll[:, None])], axis=1)


def sample_outputs(
    X: RowSource, params: MoEParams, rng: np.random.Generator
) -> tuple[Array, Array]:
    """Draw ``z ~ pi(x)`` and ``y = g(a_z . x) + sigma eps``; returns ``(y, z)``."""
    gates = gate_proba(X, params)
    u = rng.random(X.shape[0])
    z = np.minimum(
        (gates.cumsum(axis=1) < u[:, None]).sum(axis=1), params.n_experts - 1
    )
    means = map_rows(functools.partial(expert_means, params=params), X)
    means = means[np.arange(X.shape[0]), z]
    sigma = np.broadcast_to(np.asarray(params.noise_std, float), (params.n_experts,))
    return means + sigma[z] * rng.standard_normal(X.shape[0]), z
