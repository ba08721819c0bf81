"""EM for mixtures of experts: the gate with fixed regressors, or everything jointly.

Each iteration is a generalised EM step (Jordan & Jacobs 1994):

* E-step: ``r_ij = pi_j(x_i) N(y_i | g(a_j . x_i), sigma^2) / p(y_i | x_i)``;
* M-step, one Newton (IRLS) step on the expected complete log-likelihood ``Q``:
  experts ``a_j += H_j^{-1} sum_i r_ij (y_i - g_ij) g'_ij x_i`` with
  ``H_j = sum_i r_ij g'_ij^2 x_i x_i^T`` (exact weighted least squares for linear g);
  gate ``G += H_G^{-1} sum_i (r_i - pi_i) x_i`` with the multinomial-logistic
  Hessian ``H_G[a, b] = sum_i pi_ia (delta_ab - pi_ib) x_i x_i^T``;
  ``sigma^2 = sum_ij r_ij (y_i - g_ij)^2 / n``.

With the experts fixed (the gating stage) the gate's step uses its observed
information instead, ``H_G - sum_i Cov_r(e_a, e_b) x_i x_i^T`` (the posterior's
variance subtracted): Newton on the log-likelihood itself, converging faster than
EM; where that matrix is not positive definite the M-step's ``H_G`` is used.

The gradient of ``Q`` at the current parameters is the gradient of the observed
log-likelihood (Fisher's identity), so it is always computed over all rows, in one
chunked pass. The Newton matrices only precondition it: above
:func:`curvature_rows`' threshold they are estimated from a fixed random subset of
rows, which changes the speed of convergence, never the fixed point. With the
``fast`` extra (numba) installed, that full-data pass is one compiled, threaded loop
over the rows (:mod:`moelearn._em_fast`). A step that lowers the log-likelihood is
halved until it does not.

At large ``d`` (above :data:`STRUCTURED_CURVATURE_FEATURES`) even a subset's
``d x d`` Newton matrices cost ``O(m d^2)`` per iteration, far more than the
gradient's ``O(n d k)``. There they come from their structure under Gaussian
inputs instead (:class:`_StructuredCurvature`): every row's weight depends on ``x``
only through the ``2k - 1`` projections ``s = Q (x - mean)`` on the parameter rows
``Q``, and the rest of ``x`` is Gaussian and independent of ``s``, so
``sum_i w_i x_i x_i^T`` is ``C (sum_i w_i u_i u_i^T) C^T + (sum_i w_i) Cov_e`` with
``u = [1, s]``, ``C`` the regression of ``x`` on ``u`` and ``Cov_e`` its residual
covariance: an ``O(n d k)`` pass and a few ``d x d`` products per iteration.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
from scipy.linalg import LinAlgError, block_diag, cho_factor, cho_solve, eigh
from scipy.optimize import brentq

from moelearn import _em_fast
from moelearn._arrays import (
    concat,
    einsum,
    is_torch,
    like,
    namespace,
    one_blas_thread,
    projections,
    to_host,
)
from moelearn._links import get_link, sigmoid
from moelearn._model import HALF_LOG_2PI, MoEParams, log_gate_cols, tree_paths
from moelearn._moments import input_whitening
from moelearn._passes import (
    SMALL_PROBLEM_PARAMETERS,
    RowSource,
    map_rows,
    reduce_rows,
    row_slices,
    take_rows,
    with_ones,
)

Array = np.ndarray
ProgressCallback = Callable[[str, int, float, float], None]

_MIN_CURVATURE_ROWS = 10_000
#: Up to this many columns the curvature sums use the rows' pairwise products.
_PRODUCT_COLUMNS = 40
MAX_HALVINGS = 30
#: After a step smaller than this (whitened units) EM keeps the Newton matrices
#: of a row subset instead of summing them again: they move by about that
#: fraction, against the subset's sampling error of 0.1-0.2.
_KEEP_CURVATURE_STEP = 0.05
#: EM stops once its steps shrink at least this fast and predict the rest of the
#: way below ``tol`` (:meth:`_EMState.contracted`).
_CONTRACTION = 0.5
#: Above this many columns the Newton matrices come from their Gaussian structure.
STRUCTURED_CURVATURE_FEATURES = 600
# Use the compiled full-data pass (numba, the ``fast`` extra) when it is installed.
USE_COMPILED = True
#: Ridge on the gate rows in the inputs' metric (see :class:`_Objective`).
GATE_PENALTY = 1e-2
#: An expert whose share of the total posterior weight falls below this (or below
#: twice the number of columns, in rows) is dropped.
MIN_EXPERT_WEIGHT = 5e-3
#: A Newton step moves no gate logit or expert mean (per standard deviation of the
#: inputs; experts in noise levels) by more than this: the step is shrunk to it.
_MAX_NEWTON_MOVE = 4.0
#: Shares of the missing information added back when the observed information is
#: not positive definite, for problems above :data:`_EIGEN_PARAMETERS`
#: (see :meth:`_Objective.newton`).
_BLEND = (0.0, 0.25, 0.5, 0.75, 0.9)
#: Up to this many parameters the trust-region step is solved exactly, on the
#: generalised eigenvalues of the observed and complete-data information.
_EIGEN_PARAMETERS = 400
#: How often a trust-region step that the move cap would halve is re-solved on a
#: smaller radius.
_RESOLVE = 6


@dataclass
class EMResult:
    params: MoEParams
    n_iter: int
    converged: bool
    log_likelihood: list[float] = field(default_factory=list)  # mean, per iteration
    dropped: list[int] = field(default_factory=list)  # experts dropped (start's order)

    @property
    def final_log_likelihood(self) -> float:
        """The last mean log-likelihood measured (``-inf`` if no step was made)."""
        return self.log_likelihood[-1] if self.log_likelihood else -np.inf


def curvature_rows(
    n_samples: int, n_features: int, rng: np.random.Generator, n_params: int = 0
):
    """Rows used for the Newton matrices: all (``None``) or a sorted random subset.

    The subset has ``max(10000, 50 d, 50 p)`` rows for ``p`` free parameters, so
    the matrices' relative error ``~ sqrt(p / m)`` stays below about 0.15 and
    Newton's steps converge at about that rate (the gradient is always exact).
    """
    m = max(_MIN_CURVATURE_ROWS, 50 * n_features, 50 * n_params)
    if n_samples <= 2 * m:  # one fused pass over all rows costs less
        return None
    return np.sort(rng.choice(n_samples, size=m, replace=False))


@dataclass(frozen=True)
class ColumnMoments:
    """What :func:`em` measures its columns with: the step ``metric`` (its steps'
    sizes and the gate ridge's metric: the columns' covariance, a constant
    column counted as one standard deviation) and, when known, the columns'
    ``mean`` and ``covariance`` (a constant column: mean 1, variance 0), from
    which the Newton matrices above :data:`STRUCTURED_CURVATURE_FEATURES`
    columns take their Gaussian structure; and ``E[x y]`` of the columns when a
    pass has summed it (least squares then needs no pass of its own)."""

    metric: Array
    mean: Array | None = None
    covariance: Array | None = None
    x_y: Array | None = None

    def known(self) -> tuple[Array, Array]:
        """``(mean, covariance)``; ``ValueError`` when only the metric is known."""
        if self.mean is None or self.covariance is None:
            raise ValueError("the columns' mean and covariance are not known")
        return self.mean, self.covariance


def em_columns(
    X: RowSource,
    mean: Array,
    cov: Array,
    intercept: bool,
    x_y: Array | None = None,
    y_mean: float = 0.0,
) -> tuple[RowSource, ColumnMoments]:
    """EM's columns and their :class:`ColumnMoments`, from the inputs' ``mean``
    and covariance ``cov`` (and, when a pass has summed it, ``x_y = E[x y]``;
    with ``intercept`` also ``y_mean = E[y]``, the constant column's); with
    ``intercept`` the columns are ``[X, 1]``."""
    cross = None
    if x_y is not None:
        cross = np.append(x_y, y_mean) if intercept else x_y
    if not intercept:
        return X, ColumnMoments(cov, mean, cov, cross)
    return with_ones(X), ColumnMoments(
        block_diag(cov, 1.0), np.append(mean, 1.0), block_diag(cov, 0.0), cross
    )


def expert_residuals(X: RowSource, y: Array, params: MoEParams) -> Array:
    """``y_i - g(a_j . x_i)`` for all rows and experts, shape (n, k) (one pass)."""
    return map_rows(
        partial(_residual_rows, link=params.link, experts=params.experts), X, y
    )


def _residual_rows(xc: Array, yc: Array, link: str, experts: Array) -> Array:
    return yc[:, None] - get_link(link).func(xc @ like(experts.T, xc))


def _posterior(logits: Array, res: Array, noise_std: float | Array):
    """Log-likelihoods, responsibilities and gate probabilities, experts-by-rows.

    ``r_j = softmax_j(l_j - res_j^2 / (2 sigma_j^2) - log sigma_j)`` (the gate's
    normaliser cancels) and ``log p(y|x) = lse_j(l_j - res_j^2/2sigma_j^2 -
    log sigma_j) - lse_j(l_j) - log(2 pi)/2``: two exponentials per expert and
    row, one logarithm per row. ``noise_std`` is shared (a number) or one per
    expert (shape (k,)).
    """
    xp = namespace(logits)
    top = xp.max(logits, axis=0)
    gates = xp.exp(logits - top)
    gate_norm = xp.sum(gates, axis=0)
    gates /= gate_norm
    if np.ndim(noise_std):
        sigma = np.asarray(noise_std, float)[:, None]
        z = res * like(1.0 / sigma, res)
        a = logits - 0.5 * z * z - like(np.log(sigma), res)
        constant = HALF_LOG_2PI
    else:
        z = res * (1.0 / noise_std)
        a = logits - 0.5 * z * z
        constant = float(np.log(noise_std) + HALF_LOG_2PI)
    a_top = xp.max(a, axis=0)
    resp = xp.exp(a - a_top)
    norm = xp.sum(resp, axis=0)
    resp /= norm
    ll = a_top - top + xp.log(norm / gate_norm) - constant
    return ll, resp, gates


@dataclass
class _Stats:
    """One pass's sums at the current parameters.

    ``grad`` holds the raw column sums ``sum_i c_i x_i`` with ``c = [r_j res_j
    g'_j (experts, when fitted), gate score weights]``, shape (D, n_cols);
    ``rss`` and ``weight`` the per-expert ``sum_i r_ij res_ij^2`` and
    ``sum_i r_ij``; ``complete`` and ``observed`` the complete-data and observed
    information in the free parameters (see :func:`_curvature_sums`), when asked.
    """

    ll_sum: float
    rss: Array  # (k,)
    weight: Array  # (k,)
    grad: Array  # (D, n_cols)
    complete: Array | None = None  # (p, p)
    observed: Array | None = None  # (p, p)

    def information(self) -> tuple[Array, Array]:
        """``(observed, complete)``: the pass must have computed them."""
        if self.observed is None or self.complete is None:
            raise RuntimeError("the pass did not compute the information matrices")
        return self.observed, self.complete


class _StructuredCurvature:
    """Newton matrices ``sum_i w_i x_i x_i^T`` from their structure under Gaussian
    inputs, for weights that depend on ``x`` only through the parameter rows ``Q``.

    With ``x ~ N(mean, Cov)`` and ``T`` such that ``s = T^T Q (x - mean)`` has
    identity covariance, ``x = mean + B s + e`` with ``B = Cov Q^T T`` and ``e``
    independent of ``s`` with covariance ``Cov_e = Cov - B B^T``. Hence
    ``E[w x x^T] = C E[w u u^T] C^T + E[w] Cov_e`` with ``u = [1, s]`` and
    ``C = [mean, B]``. The pass accumulates the small ``sum_i w_i u_i u_i^T``
    (:meth:`features` gives ``u``); :meth:`expand` returns the ``d x d`` matrix.
    Exact in expectation; in a sample its error is of the order ``sqrt(d / n)``,
    which only slows EM's convergence (the gradient is exact).
    """

    def __init__(self, mean: Array, covariance: Array, params: MoEParams):
        Q = np.vstack([params.experts, params.gating[: params.n_experts - 1]])
        CQ = covariance @ Q.T  # (d, r)
        values, vectors = np.linalg.eigh(Q @ CQ)
        keep = values > 1e-10 * max(values.max(initial=0.0), 1e-300)
        T = vectors[:, keep] / np.sqrt(values[keep])
        self.projection = Q.T @ T  # s = (x - mean) @ projection
        self.offset = mean @ self.projection
        basis = CQ @ T  # B
        self.C = np.column_stack([mean, basis])
        self.residual_cov = covariance - basis @ basis.T

    def features(self, xc: Array) -> Array:
        """``u = [1, s]`` for rows ``xc``, shape (m, r + 1)."""
        s = xc @ like(self.projection, xc) - like(self.offset, xc)
        return concat([namespace(xc).ones_like(s[:, :1]), s], axis=1)

    def expand(self, M: Array) -> Array:
        """``C M C^T + M_00 Cov_e`` (``M_00 = sum_i w_i``)."""
        return self.C @ M @ self.C.T + M[0, 0] * self.residual_cov


@dataclass(frozen=True)
class _PassSpec:
    """What one EM pass computes (picklable: it travels with Dask tasks)."""

    params: MoEParams
    fit_experts: bool
    gradient: bool
    curvature: bool
    structure: _StructuredCurvature | None = None
    weighted: bool = False  # the last per-row array holds sample weights
    fit_noise: bool = True
    scores: bool = False  # also the sums of the rows' score outer products
    # the x x^T blocks of the curvature in single precision (Newton matrices from
    # a row subset, whose sampling error is far larger)
    single: bool = False


def noise_groups(params: MoEParams, fit_noise: bool) -> Array:
    """Which experts share each free noise parameter: ``(s, k)`` 0/1 rows, one row
    (all ones) for a shared ``sigma``, the identity for one ``sigma_j`` per expert,
    none when ``sigma`` is held fixed."""
    k = params.n_experts
    if not fit_noise:
        return np.zeros((0, k))
    return np.eye(k) if np.ndim(params.noise_std) == 1 else np.ones((1, k))


def _estep(xc: Array, yc: Array, resc: Array | None, spec: _PassSpec):
    """Log-likelihoods (m,), responsibilities, gates, residuals, ``eta`` and the
    gate's logits for a chunk; per-expert arrays are experts-by-rows (``(k, m)``).
    ``resc`` (m, k) holds the fixed experts' residuals when they are not fitted."""
    params = spec.params
    k = params.n_experts
    if spec.fit_experts:
        proj = projections(np.vstack([params.experts, params.gating]), xc)
        eta, logits = proj[:k], proj[k:]
        res = yc - get_link(params.link).func(eta)
    else:
        assert resc is not None  # (the fixed experts' residuals are passed)
        eta, logits = None, projections(params.gating, xc)
        res = resc.T
    # The softmax is normalised inside _posterior; a tree's leaf log-probabilities
    # are already normalised.
    scores = logits if params.gate == "softmax" else log_gate_cols(logits, "tree")
    return (*_posterior(scores, res, params.noise_std), res, eta, logits)


def _pass_sums(
    xc: Array,
    yc: Array,
    *,
    spec: _PassSpec,
    residuals: Array | None = None,
    weights: Array | None = None,
) -> tuple:
    """One chunk's ``(ll_sum, rss, weight, grad)`` (:class:`_Stats`) and, with
    ``spec.curvature``, the information sums of :func:`_curvature_sums`; a kernel
    for :func:`moelearn._passes.reduce_rows`. ``residuals``: the fixed experts'
    (gating stage); ``weights``: the sample weights, which multiply every row's
    terms."""
    params = spec.params
    xp = namespace(xc)
    sw = weights
    ll, resp, gates, res, eta, logits = _estep(xc, yc, residuals, spec)
    out: tuple = ()
    if spec.gradient:
        cols, _ = gate_terms(params.gate, logits, gates, resp, False)
        resp_w = resp if sw is None else resp * sw
        if sw is not None:
            ll, cols = ll * sw, cols * sw
        if spec.fit_experts:
            deriv = get_link(params.link).deriv(eta)
            cols = concat([resp_w * res * deriv, cols])
        out = (
            float(ll.sum()),
            xp.sum(resp_w * (res * res), axis=1),
            xp.sum(resp_w, axis=1),
            (cols @ xc).T,
        )
    if spec.curvature:
        out += _curvature_sums(xc, resp, gates, res, eta, logits, sw, spec)
    return out


def _curvature_sums(xc, resp, gates, res, eta, logits, sw, spec: _PassSpec) -> tuple:
    """Complete-data and observed information of a chunk's rows (Louis 1982).

    Given a row's latent expert ``z``, its complete-data score in the free
    parameters is ``u_c(z) x`` for the vector parameters (expert ``j``:
    ``u = [z = j] e_j`` with ``e_j = res_j g'_j / sigma_j^2``; gate row ``t``: the
    score weight ``c_t(z)`` of :func:`gate_terms`) and ``v_l(z)`` for
    ``log sigma_l`` (``[z in l] (res_z^2 / sigma_z^2 - 1)``). The observed
    information is the complete-data information ``E_r[-d^2 log p(y, z | x)]``
    minus the posterior covariance of the scores, ``Cov_r(u, v)``; both are sums
    over rows of per-row weights times ``x x^T``, ``x`` or 1. The experts'
    curvature is the Gauss-Newton one (``g'^2``; exact for linear experts).

    Returns the sums ``(observed_xx, observed_xs, observed_ss, complete_xx,
    complete_xs, complete_ss)``: ``*_xx`` (pairs, D, D), the blocks of the
    vector components' pairs :func:`curvature_pairs` lists (the others are zero
    or mirrored), ``*_xs`` (P, S, D) and ``*_ss`` (S, S) for the noise
    parameters. ``D`` is the width of ``x`` (or of the structured features).
    With ``spec.scores``, three more: the sums of the rows' score outer
    products ``s_i s_i^T`` (``s_i = E_r[u] x_i`` and ``E_r[v]``), the "meat" of
    the sandwich covariance.
    """
    params = spec.params
    k = params.n_experts
    xp = namespace(xc)
    var = np.broadcast_to(np.asarray(params.noise_std, float) ** 2, (k,))
    inv_var = like(1.0 / var[:, None], resp)
    groups = noise_groups(params, spec.fit_noise)
    s = groups.shape[0]
    deriv: Any = get_link(params.link).deriv(eta) if spec.fit_experts else None
    e: Any = res * deriv * inv_var if spec.fit_experts else None
    q = res * res * inv_var - 1.0
    values = _latent_scores(spec, resp, gates, logits, e, q, groups)  # (C, k, m)
    mean = einsum("czm,zm->cm", values, resp)
    cov = -mean[:, None] * mean[None]
    for z in range(k):  # (faster than a three-operand einsum)
        cov = cov + (values[:, z] * resp[z])[:, None] * values[None, :, z]
    n_vec = values.shape[0] - s
    complete = xp.zeros_like(cov)
    _, gate_complete = gate_terms(params.gate, logits, gates, resp, True)
    g0 = k if spec.fit_experts else 0
    complete[g0 : g0 + k - 1, g0 : g0 + k - 1] = gate_complete
    if spec.fit_experts:
        for j in range(k):
            complete[j, j] = resp[j] * deriv[j] ** 2 * inv_var[j]
    for group in range(s):
        members = np.flatnonzero(groups[group])
        row = n_vec + group
        complete[row, row] = 2.0 * xp.sum(resp[members] * (q[members] + 1.0), axis=0)
        if spec.fit_experts:
            for member in members:
                complete[member, row] = complete[row, member] = (
                    2.0 * resp[member] * e[member]
                )
    observed = complete - cov
    if sw is not None:
        observed, complete = observed * sw, complete * sw
    f = xc if spec.structure is None else spec.structure.features(xc)
    every, nonzero = curvature_pairs(params, spec.fit_experts)
    matrices = [(observed, every), (complete, nonzero)]
    if spec.scores:  # the rows' scores are the posterior means of u, v
        outer = mean[:, None] * mean[None]
        matrices.append((outer if sw is None else outer * sw, every))
    out: tuple = ()
    for weights, pairs in matrices:
        out += (
            _weighted_grams(f, weights[:n_vec, :n_vec], pairs, spec.single),
            einsum("cdm,mi->cdi", weights[:n_vec, n_vec:], f),
            xp.sum(weights[n_vec:, n_vec:], axis=2),
        )
    return out


def _latent_scores(spec: _PassSpec, resp, gates, logits, e, q, groups) -> Array:
    """The complete-data scores' weights for each latent expert ``z``: (C, k, m)
    for the C free components (experts' ``[z = j] e_j`` when fitted, the gate
    rows' score weights, the noise groups' ``[z in l] q_z``)."""
    params = spec.params
    k = params.n_experts
    eye = like(np.eye(k), resp)
    parts = []
    if spec.fit_experts:
        parts.append(eye[:, :, None] * e[None])
    if params.gate == "softmax":
        parts.append(eye[: k - 1, :, None] - gates[: k - 1, None, :])
    else:
        left, under = tree_paths(k)
        left, under = like(left.astype(float), resp), like(under.astype(float), resp)
        parts.append(left[:, :, None] - under[:, :, None] * sigmoid(logits)[:, None, :])
    if groups.shape[0]:
        parts.append(like(groups, resp)[:, :, None] * q[None])
    return concat(parts)


def curvature_pairs(
    params: MoEParams, fit_experts: bool
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The blocks ``(c, d)``, ``c <= d``, of the vector components (experts when
    fitted, then the free gate rows) that the observed information fills (all)
    and that the complete-data information fills (each expert with itself; the
    gate rows with each other for a softmax gate, each node with itself for a
    tree)."""
    k = params.n_experts
    g0 = k if fit_experts else 0
    n_vec = g0 + k - 1
    every = [(c, d) for c in range(n_vec) for d in range(c, n_vec)]
    gate_pairs = [
        (g0 + a, g0 + b)
        for a in range(k - 1)
        for b in range(a, k - 1)
        if a == b or params.gate == "softmax"
    ]
    return every, [(j, j) for j in range(g0)] + gate_pairs


def _weighted_grams(
    f: Array, weights: Array, pairs: list[tuple[int, int]], single: bool = False
) -> Array:
    """``out[i] = sum_m weights[c, d, m] f_m f_m^T`` for each of the upper
    ``pairs[i] = (c, d)``, ``c <= d``, of symmetric ``weights`` (P, P, m).

    Narrow ``f`` (NumPy, at most :data:`_PRODUCT_COLUMNS` columns): one matrix
    product of the rows' distinct products ``f_ia f_ib`` (``a <= b``) with all
    the pairs' weights. Otherwise one product per ``c``:
    ``f^T [w_cd1 * f, w_cd2 * f, ...]``. With ``single`` (NumPy) the products run
    in single precision (relative rounding about ``1e-7``; the sums are returned
    in double)."""
    P, (m, D) = weights.shape[0], f.shape
    out = like(np.zeros((len(pairs), D, D)), f)
    if single and isinstance(f, np.ndarray):
        f, weights = f.astype(np.float32), weights.astype(np.float32)
    if isinstance(f, np.ndarray) and D <= _PRODUCT_COLUMNS and pairs:
        upper_a, upper_b = np.triu_indices(D)
        products = f[:, upper_a] * f[:, upper_b]  # (m, D (D + 1) / 2)
        cs, ds = np.array(pairs).T
        sums = products.T @ weights[cs, ds].T  # (D (D + 1) / 2, pairs)
        for i in range(len(pairs)):
            out[i][upper_a, upper_b] = sums[:, i]
            out[i][upper_b, upper_a] = sums[:, i]
        return out
    position = {pair: i for i, pair in enumerate(pairs)}
    for c in range(P):
        ds = [d for (c2, d) in pairs if c2 == c]
        if not ds:
            continue
        stacked = (weights[c, ds].T[:, :, None] * f[:, None, :]).reshape(m, -1)
        grams = f.T @ stacked  # (D, len(ds) D)
        for i, d in enumerate(ds):
            out[position[(c, d)]] = grams[:, i * D : (i + 1) * D]
    return out


def gate_terms(
    gate: str, logits: Array, gates: Array, resp: Array, curvature: bool
) -> tuple[Array, Array | None]:
    """The gate's per-row score weights and complete-data Newton weights, for
    ``m`` rows.

    Returns ``cols`` (k - 1, m) with ``grad_t = sum_i cols_ti x_i`` and, with
    ``curvature``, the complete-data Hessian's weights ``W`` (k - 1, k - 1, m)
    with ``H[a, b] = sum_i W_abi x_i x_i^T``. With a row's latent expert ``z``
    and score weights ``c_t(z)``, ``cols = E_r[c]`` (the posterior covariance of
    ``c`` is part of :func:`_curvature_sums`).

    * softmax: ``c_a(z) = [z = a] - pi_a``, so ``cols = r_a - pi_a`` and
      ``W_ab = pi_a (delta_ab - pi_b)``;
    * tree: ``c_t(z) = [z left of t] - [z under t] s_t`` with ``s_t =
      sigmoid(v_t . x)``, so ``cols_t = h^L_t - h_t s_t`` (``h_t`` the posterior
      mass under ``t``, ``h^L_t`` under its left child; Jordan & Jacobs' HME
      M-step) and ``W`` is diagonal, ``W_tt = h_t s_t (1 - s_t)``.
    """
    if gate == "softmax":
        cols = resp[:-1] - gates[:-1]
        if not curvature:
            return cols, None
        eye = like(np.eye(cols.shape[0])[:, :, None], resp)
        return cols, gates[:-1, None] * (eye - gates[None, :-1])
    left, under = tree_paths(resp.shape[0])
    left, under = like(left.astype(float), resp), like(under.astype(float), resp)
    s = sigmoid(logits)
    mass = under @ resp
    cols = left @ resp - mass * s
    if not curvature:
        return cols, None
    t = cols.shape[0]
    complete = like(np.zeros((t, t, resp.shape[1])), resp)
    diagonal = mass * s * (1.0 - s)
    for node in range(t):
        complete[node, node] = diagonal[node]
    return cols, complete


class _Problem:
    """Data and settings shared by the passes of one EM run."""

    def __init__(
        self,
        X,
        y,
        fit_experts: bool,
        residuals: Array | None,
        column_moments: tuple[Array, Array] | None = None,
        sample_weight: Array | None = None,
        fit_noise: bool = True,
    ):
        self.X, self.y = X, y
        self.fit_experts = fit_experts
        self.fit_noise = fit_noise
        self.residuals = residuals  # (n, k) when the experts are fixed
        # (mean, covariance) of X's columns when the Newton matrices are structured
        self.column_moments = column_moments
        self.sample_weight = sample_weight
        self.total = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        self._subset: tuple | None = None  # (indices, X, per-row arrays) in memory

    def _per_row(self) -> dict:
        """The per-row arrays a pass's kernel takes, by name."""
        return {"residuals": self.residuals, "weights": self.sample_weight}

    def _subset_rows(self, subset: Array) -> tuple:
        """The Newton subset's rows, read once per EM run: ``(X rows, y, named
        per-row arrays)``."""
        if self._subset is None or self._subset[0] is not subset:
            named = {
                name: None if a is None else a[subset]
                for name, a in self._per_row().items()
            }
            rows = take_rows(self.X, subset)
            self._subset = (subset, rows, self.y[subset], named)
        return self._subset[1:]

    def uses_compiled_pass(self, params: MoEParams, subset: Array | None) -> bool:
        """Whether :meth:`run_pass` takes the gradient from the compiled (numba)
        pass: with a Newton subset, dense Newton matrices and a supported model."""
        return (
            subset is not None
            and not is_torch(self.X)  # the compiled pass takes NumPy chunks
            and self.column_moments is None
            and USE_COMPILED
            and _em_fast.AVAILABLE
            and params.link in _em_fast.LINK_CODES
            and params.gate == "softmax"
        )

    def run_pass(
        self, params: MoEParams, subset: Array | None, curvature: bool = True
    ) -> _Stats:
        """Gradient over all rows; information matrices (with ``curvature``) over
        ``subset`` (or all rows), or from their structure (over all rows) when
        ``column_moments`` is set."""
        n = self.total
        weighted = self.sample_weight is not None
        structure = None
        if self.column_moments is not None:
            structure = _StructuredCurvature(*self.column_moments, params)
            subset = None
        fused = subset is None and curvature
        settings: dict[str, Any] = dict(
            structure=structure, weighted=weighted, fit_noise=self.fit_noise
        )
        if self.uses_compiled_pass(params, subset):
            kernel = _em_fast.gradient_kernel(params, self.fit_experts, weighted)
            ll, rss, weight, grad = reduce_rows(
                kernel,
                self.X,
                self.y,
                scale=_em_fast.CHUNK_SCALE,
                own_threads=True,
                **self._per_row(),
            )
            stats = _Stats(ll - n * HALF_LOG_2PI, rss, weight, grad.T)
        else:
            spec = _PassSpec(params, self.fit_experts, True, fused, **settings)
            sums = reduce_rows(
                partial(_pass_sums, spec=spec), self.X, self.y, **self._per_row()
            )
            stats = _Stats(*sums[:4])
            if fused:
                stats.observed, stats.complete = _assemble(
                    sums[4:], structure, params, self.fit_experts
                )
        if curvature and not fused:
            spec = _PassSpec(
                params, self.fit_experts, False, True, single=True, **settings
            )
            assert subset is not None  # (else the pass was fused)
            Xs, ys, named = self._subset_rows(subset)
            sums = reduce_rows(partial(_pass_sums, spec=spec), Xs, ys, **named)
            scale = n / (float(named["weights"].sum()) if weighted else len(subset))
            observed, complete = _assemble(sums, structure, params, self.fit_experts)
            stats.observed, stats.complete = observed * scale, complete * scale
        stats.rss, stats.weight = np.asarray(stats.rss), np.asarray(stats.weight)
        return stats


def information(
    X, y: Array, params: MoEParams, sample_weight: Array | None = None
) -> tuple[Array, Array]:
    """The observed information of the log-likelihood at ``params`` and the sum
    of the rows' score outer products, over all rows, in one pass.

    Both are ``(p, p)`` in the free parameters in :func:`_curvature_sums`' order:
    each expert's row, the ``k - 1`` free gate rows, then ``log sigma`` (one, or
    one per expert). The observed information is ``I_c - I_m`` (Louis 1982,
    exact: no Newton subset, no ridge); the outer products, ``sum_i w_i s_i
    s_i^T``, are the middle of the sandwich ``I^{-1} (sum s s^T) I^{-1}``.
    """
    spec = _PassSpec(
        params, True, False, True, weighted=sample_weight is not None, scores=True
    )
    sums = reduce_rows(partial(_pass_sums, spec=spec), X, y, weights=sample_weight)
    host = [np.asarray(to_host(part)) for part in sums]
    every, _ = curvature_pairs(params, True)
    return (
        _matrix(host[0], host[1], host[2], None, every),
        _matrix(host[6], host[7], host[8], None, every),
    )


def _assemble(
    sums: tuple, structure: _StructuredCurvature | None, params: MoEParams, fit_experts
) -> tuple:
    """The observed and complete-data information matrices, ``(p, p)`` in the
    free parameters (vector components' ``D`` entries each, then the noise
    parameters), from :func:`_curvature_sums`' sums."""
    every, nonzero = curvature_pairs(params, fit_experts)
    host = [np.asarray(to_host(s)) for s in sums]
    return (
        _matrix(host[0], host[1], host[2], structure, every),
        _matrix(host[3], host[4], host[5], structure, nonzero),
    )


def _matrix(
    blocks: Any, xs: Array, ss: Array, structure, pairs: list[tuple[int, int]]
) -> Array:
    """The symmetric matrix whose vector blocks ``(c, d)`` are ``blocks[i]`` for
    ``pairs[i]`` (mirrored; the rest zero), with the noise rows ``xs``, ``ss``;
    filled in place (no ``(P, P, D, D)`` copy: at d = 400 each is 12 MB)."""
    if structure is not None:
        blocks = [structure.expand(block) for block in blocks]
        xs = np.einsum("ij,csj->csi", structure.C, xs)
    P, S = xs.shape[:2]
    D = blocks[0].shape[-1] if len(blocks) else xs.shape[-1]
    out = np.zeros((P * D + S, P * D + S))
    for (c, d), block in zip(pairs, blocks, strict=True):
        out[c * D : (c + 1) * D, d * D : (d + 1) * D] = block
        if c != d:
            out[d * D : (d + 1) * D, c * D : (c + 1) * D] = block.T
    side = xs.transpose(0, 2, 1).reshape(P * D, S)
    out[: P * D, P * D :] = side
    out[P * D :, : P * D] = side.T
    out[P * D :, P * D :] = ss
    return out


def _newton_solve(H: Array, g: Array) -> Array:
    """``H^{-1} g`` for a positive semi-definite ``H``, with a tiny ridge if needed."""
    scale = max(float(np.trace(H)) / H.shape[0], 1e-300)
    for ridge in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        try:
            return cho_solve(cho_factor(H + ridge * scale * np.eye(H.shape[0])), g)
        except LinAlgError:
            continue
    return np.linalg.lstsq(H, g, rcond=None)[0]


def _interpolate(a: MoEParams, b: MoEParams, t: float) -> MoEParams:
    return replace(
        a,
        experts=a.experts + t * (b.experts - a.experts),
        gating=a.gating + t * (b.gating - a.gating),
        noise_std=a.noise_std + t * (b.noise_std - a.noise_std),
    )


def _step_size(old: MoEParams, new: MoEParams, covariance: Array) -> float:
    """Largest parameter change in whitened units (rows measured in ``Cov``'s
    metric; ``sigma`` relative)."""
    delta = np.vstack([new.experts - old.experts, new.gating - old.gating])
    rows = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", delta, covariance, delta), 0.0))
    noise = np.abs(np.asarray(new.noise_std) - old.noise_std) / old.noise_std
    return float(max(rows.max(), np.max(noise)))


class _Objective:
    """The penalised log-likelihood EM maximises and its steps.

    ``sum_i w_i log p(y_i | x_i) - (lambda / 2) sum_t G_t^T C G_t``: the gate's
    rows get a ridge in the inputs' metric ``C`` (the logits' variance), so that
    on separable data the gate stays finite (a Gaussian prior with standard
    deviation ``1 / sqrt(lambda)`` on each logit's slope per standard deviation of
    ``x``; with ``lambda = 0.01`` it moves the MLE by about ``0.01 / n`` of its
    size).
    """

    def __init__(
        self, metric: Array, penalty: float, fit_experts: bool, fit_noise: bool
    ):
        self.metric, self.penalty = metric, penalty
        self.fit_experts, self.fit_noise = fit_experts, fit_noise
        # the trust radius in the complete-data information's norm (None: not
        # needed yet) and the last Newton step's predicted rise and length
        self.radius: float | None = None
        self._predicted: float | None = None
        self._length = 0.0
        self._last_step: tuple[Array, Array] | None = None  # (step, gradient)

    def value(self, stats: _Stats, params: MoEParams) -> float:
        G = params.gating[: _n_free_gate_rows(params)]
        ridge = np.einsum("ij,jk,ik->", G, self.metric, G)
        return stats.ll_sum - 0.5 * self.penalty * float(ridge)

    def gradient(self, stats: _Stats, params: MoEParams) -> Array:
        """The free parameters' gradient: experts, gate rows, ``log sigma``."""
        k = params.n_experts
        t = _n_free_gate_rows(params)
        var = np.broadcast_to(np.asarray(params.noise_std, float) ** 2, (k,))
        parts = []
        grad = stats.grad
        if self.fit_experts:
            parts.append((grad[:, :k] / var).T.ravel())
        gate = grad[:, -t:].T if t else np.zeros((0, grad.shape[0]))
        parts.append((gate - self.penalty * params.gating[:t] @ self.metric).ravel())
        groups = noise_groups(params, self.fit_noise)
        parts.append(groups @ (stats.rss / var - stats.weight))
        return np.concatenate(parts)

    def penalised(self, info: Array, params: MoEParams) -> Array:
        """``info`` plus the ridge's curvature on the gate blocks."""
        t, D = _n_free_gate_rows(params), params.gating.shape[1]
        start = params.n_experts * D if self.fit_experts else 0
        out = info.copy()
        for row in range(t):
            block = slice(start + row * D, start + (row + 1) * D)
            out[block, block] += self.penalty * self.metric
        return out

    def newton(self, stats: _Stats, params: MoEParams) -> MoEParams | None:
        """The trust-region Newton step on the penalised log-likelihood.

        With ``g`` the gradient, ``H = I_c - I_m`` the observed information
        (complete-data minus missing) and ``C = I_c`` the complete-data
        information (EM's own metric), the step maximises the quadratic model
        ``g^T s - s^T H s / 2`` over ``||s||_C <= radius``:
        ``s = (H + mu C)^{-1} g`` with the least ``mu >= 0`` that makes
        ``H + mu C`` positive definite and the step fit the radius (found on the
        generalised eigenvalues of ``(H, C)``). Inside the radius and with ``H``
        positive definite this is Newton's step; with large ``mu`` it tends to
        EM's. Far from a maximum ``H`` is indefinite and the step follows its
        directions of negative curvature, where EM creeps. The radius grows when
        the objective rose as the model predicted (:meth:`judge`) and shrinks
        when it did not. Above :data:`_EIGEN_PARAMETERS` parameters the step is
        ``(H + t I_m)^{-1} g`` for the first ``t`` in :data:`_BLEND` that makes
        the matrix positive definite (Cholesky factorisations alone). ``None``
        if no step was found."""
        gradient = self.gradient(stats, params)
        observed, complete = (self.penalised(m, params) for m in stats.information())
        self._predicted = None
        step: Array | None
        if gradient.shape[0] <= _EIGEN_PARAMETERS:
            solve = self._region_solver(observed, complete, gradient)
            if solve is None:
                return None
            step = self._resolved(params, solve, complete)
        else:
            step = self._blended_step(observed, complete, gradient)
        if step is None or not np.all(np.isfinite(step)):
            return None
        step = step * self._trust(params, step)
        self._predicted = float(gradient @ step - 0.5 * step @ observed @ step)
        self._last_step = (step, gradient)
        self._length = float(np.sqrt(max(step @ complete @ step, 0.0)))
        return self._apply(params, step)

    def secant(self, stats: _Stats, params: MoEParams) -> Array:
        """The observed information ``H`` of ``stats`` (a subset's, kept from an
        earlier point) corrected by the last Newton step ``s`` and the change of
        the gradient over all rows it made (a BFGS update), so that it holds
        exactly along ``s``: ``H - H s s^T H / (s^T H s) + u u^T / (u^T s)`` with
        ``u = g_before - g_after`` less the ridge's part; ``H`` unchanged unless
        both curvatures are positive. At n = 1e6, d = 50 (9 fits) it saved one
        of 5 refinement iterations in 3 fits and added none."""
        assert self._last_step is not None  # (a Newton step was taken)
        step, before = self._last_step
        H = stats.information()[0]
        curvature = self.penalised(np.zeros_like(H), params) @ step  # the ridge's
        change = before - self.gradient(stats, params) - curvature
        Hs = H @ step
        along, secant = float(step @ Hs), float(change @ step)
        if along <= 0.0 or secant <= 0.0:
            return H
        return H - np.outer(Hs, Hs) / along + np.outer(change, change) / secant

    def _resolved(self, params: MoEParams, solve, complete: Array) -> Array:
        """The trust-region step; one the move cap would shrink shrinks the
        radius instead and is re-solved (shrinking the step would keep its
        direction, which may run mostly along one barely curved gate row)."""
        step = solve()
        for _ in range(_RESOLVE):
            shrink = self._trust(params, step)
            if shrink > 0.5 or not np.all(np.isfinite(step)):
                break
            self.radius = shrink * float(np.sqrt(max(step @ complete @ step, 0.0)))
            step = solve()
        return step

    def _region_solver(
        self, H: Array, C: Array, g: Array
    ) -> Callable[[], Array] | None:
        """A function returning the trust-region step for the current radius
        (one generalised eigendecomposition of ``(H, C)`` serves every radius)."""
        scale = max(float(np.trace(C)) / C.shape[0], 1e-300)
        try:
            lam, V = eigh(H, C + 1e-12 * scale * np.eye(C.shape[0]))
        except (LinAlgError, ValueError):
            return None
        gt = V.T @ g  # the gradient in the eigenbasis (V^T C V = 1)
        em_length = float(np.sqrt(np.sum(gt**2)))

        def length(mu: float) -> float:
            return float(np.sqrt(np.sum((gt / (lam + mu)) ** 2)))

        floor = max(0.0, -float(lam[0])) * (1.0 + 1e-9) + 1e-12

        def solve() -> Array:
            if lam[0] > 0 and (self.radius is None or length(0.0) <= self.radius):
                mu = 0.0
            else:
                if self.radius is None:  # indefinite at the start: EM's length
                    self.radius = em_length
                if self.radius <= 0.0:
                    return np.zeros_like(g)
                if length(floor) <= self.radius:
                    mu = floor  # (the "hard case": the step stays inside)
                else:
                    high = floor + em_length / self.radius + 1.0
                    mu = brentq(
                        lambda m: length(m) - self.radius, floor, high, xtol=1e-14
                    )
            return V @ (gt / (lam + mu))

        return solve

    @staticmethod
    def _blended_step(H: Array, C: Array, g: Array) -> Array | None:
        for t in _BLEND:
            try:
                factor = cho_factor(H + t / (1.0 - t) * C)
            except (LinAlgError, ValueError):
                continue
            return cho_solve(factor, g) / (1.0 - t)  # (H + t (C - H))^{-1} g
        return None

    def judge(self, gain: float) -> None:
        """Adapts the trust radius to how the last Newton step did: ``gain`` is
        the objective's actual rise, against the model's prediction."""
        if self._predicted is None or self._predicted <= 0:
            return
        ratio = gain / self._predicted
        if ratio < 0.25:
            self.radius = 0.25 * self._length
        elif ratio > 0.75 and self.radius is not None:
            self.radius = max(self.radius, 2.0 * self._length)

    def em_step(self, stats: _Stats, params: MoEParams, floor: float) -> MoEParams:
        """The generalised EM step: weighted least squares for each expert, one
        Newton step on the expected complete-data log-likelihood for the gate
        (complete-data information), ``sigma`` in closed form."""
        k, D = params.n_experts, params.gating.shape[1]
        t = _n_free_gate_rows(params)
        grad = self.gradient(stats, params)
        info = self.penalised(stats.information()[1], params)
        step, start = np.zeros(grad.shape[0]), 0
        blocks = [D] * k if self.fit_experts else []
        if t:
            blocks.append(t * D)
        for size in blocks:
            part = slice(start, start + size)
            step[part] = _newton_solve(info[part, part], grad[part])
            start += size
        new = self._apply(params, step)
        if self.fit_noise:
            groups = noise_groups(params, True)
            var = (groups @ stats.rss) / np.maximum(groups @ stats.weight, 1e-300)
            sigma = np.maximum(np.sqrt(var), floor)
            new = replace(new, noise_std=sigma if sigma.size > 1 else float(sigma[0]))
        return new

    def _trust(self, params: MoEParams, step: Array) -> float:
        """Shrinks a Newton step that would move a gate row's logit or an expert's
        mean by more than :data:`_MAX_NEWTON_MOVE` (in the inputs' standard
        deviations and, for experts, noise levels), or ``sigma`` by more than a
        factor ``e``."""
        moved = self._apply(params, step, clip_noise=False)
        k = params.n_experts
        sigma = np.broadcast_to(np.asarray(params.noise_std, float), (k,))
        size = 0.0
        for old, new, scale in (
            (params.experts, moved.experts, sigma[:, None]),
            (params.gating, moved.gating, 1.0),
        ):
            delta = (new - old) / scale
            size = max(
                size,
                float(
                    np.sqrt(np.einsum("ij,jk,ik->i", delta, self.metric, delta)).max()
                ),
            )
        log_noise = np.abs(np.log(np.asarray(moved.noise_std) / params.noise_std))
        size = max(size / _MAX_NEWTON_MOVE, float(np.max(log_noise)))
        return 1.0 if size <= 1.0 else 1.0 / size

    def _apply(
        self, params: MoEParams, step: Array, clip_noise: bool = True
    ) -> MoEParams:
        k, D = params.n_experts, params.gating.shape[1]
        t = _n_free_gate_rows(params)
        start, experts = 0, params.experts
        if self.fit_experts:
            experts = experts + step[: k * D].reshape(k, D)
            start = k * D
        gating = params.gating.copy()
        gating[:t] += step[start : start + t * D].reshape(t, D)
        noise = params.noise_std
        if self.fit_noise:
            groups = noise_groups(params, True)
            change = np.exp(groups.T @ step[start + t * D :])
            if clip_noise:
                change = np.clip(change, np.exp(-1.0), np.exp(1.0))
            noise = np.asarray(params.noise_std) * (
                change if np.ndim(noise) else change[0]
            )
            noise = noise if np.ndim(noise) else float(noise)
        return replace(params, experts=experts, gating=gating, noise_std=noise)


def _n_free_gate_rows(params: MoEParams) -> int:
    """``k - 1`` (softmax: the last row is the zero reference; tree: the nodes)."""
    return params.n_experts - 1


def _drop_experts(params: MoEParams, drop: Array) -> MoEParams:
    """``params`` without the experts ``drop`` (softmax gate: the rows of the
    others, re-referenced so the last is zero)."""
    keep = np.setdiff1d(np.arange(params.n_experts), drop)
    gating = params.gating[keep] - params.gating[keep[-1]]
    noise = params.noise_std
    if np.ndim(noise):
        noise = np.asarray(noise)[keep]
    return replace(params, experts=params.experts[keep], gating=gating, noise_std=noise)


def em(
    X: RowSource,
    y: Array,
    params: MoEParams,
    *,
    fit_experts: bool,
    fit_noise: bool = True,
    moments: ColumnMoments,
    max_iter: int,
    tol: float,
    rng: np.random.Generator,
    sample_weight: Array | None = None,
    min_noise_std: float = 0.0,
    gate_penalty: float = GATE_PENALTY,
    min_expert_weight: float = MIN_EXPERT_WEIGHT,
    step: str = "newton",
    stage: str = "em",
    callback: ProgressCallback | None = None,
) -> EMResult:
    """EM from ``params``, accelerated by Newton steps on the observed
    log-likelihood; experts held fixed unless ``fit_experts``, the noise level(s)
    unless ``fit_noise``.

    Every iteration reads the data once: the log-likelihood, its gradient over
    all rows and the information matrices over the Newton subset (after a step
    below :data:`_KEEP_CURVATURE_STEP` the subset's matrices are kept instead:
    they moved less than their sampling error). The step
    (``step='newton'``) solves the observed information (complete-data minus
    missing information, Louis' formula: :func:`_curvature_sums`) against the
    gradient of the penalised log-likelihood (:class:`_Objective`), shrunk to a
    trust region; where that matrix is not positive definite, or the step
    lowered the objective, the generalised EM step (``step='em'``: weighted
    least squares for the experts, a complete-data Newton step for the gate,
    ``sigma`` in closed form) is taken instead, and halved until the objective
    does not fall.

    An expert whose total posterior weight ``sum_i w_i r_ij`` falls below
    ``max(2 D, min_expert_weight * sum_i w_i)`` (``D`` the columns of ``X``) is
    dropped (softmax gates only, when the experts are fitted): its regression
    would rest on too few rows to be well posed. ``EMResult.dropped`` lists them.

    Stops when the largest change of a parameter row, measured in whitened units
    (``sqrt(delta^T Cov delta)``), and the relative change of ``sigma`` fall
    below ``tol``; or, when the Newton matrices are approximate (from a subset
    or their structure: the steps converge linearly), when the steps shrink
    geometrically (``r``, twice the larger of the last two ratios of step
    sizes, at most 0.5) and the rest of the way they predict,
    ``|step| r / (1 - r)``, is below ``tol``; or
    when the mean objective per row rose by less than ``tol^1.5`` (relative to
    ``max(1, |objective|)``; a rise of ``tol^2`` is what a step of ``tol`` near
    the maximum gives) in two iterations running (a ridge the likelihood barely
    rises along, e.g. a gate sharpening towards a hard boundary);
    ``converged`` is False if ``max_iter`` iterations did not get
    there (then the last step is kept only if one more pass shows it did not
    lower the objective) or no step could raise the objective.

    ``moments`` (:class:`ColumnMoments`) holds the step metric and, when known,
    the columns' mean and covariance; with those and more than
    :data:`STRUCTURED_CURVATURE_FEATURES` columns, the Newton matrices come from
    their Gaussian structure (:class:`_StructuredCurvature`). ``sample_weight``
    makes every sum over rows a weighted one (the weighted log-likelihood).
    """
    if step not in ("newton", "em"):
        raise ValueError(f"step must be 'newton' or 'em'; got {step!r}")
    n, d = X.shape
    residuals = None if fit_experts else expert_residuals(X, y, params)
    column_moments = None
    structured = d > STRUCTURED_CURVATURE_FEATURES
    if structured and moments.mean is not None and moments.covariance is not None:
        column_moments = (moments.mean, moments.covariance)
    covariance = moments.metric
    problem = _Problem(
        X, y, fit_experts, residuals, column_moments, sample_weight, fit_noise
    )
    n_params = (2 * params.n_experts - 1) * d + params.n_experts
    subset = curvature_rows(n, d, rng, n_params)
    total = problem.total  # the weighted number of rows
    objective = _Objective(covariance, gate_penalty, fit_experts, fit_noise)
    # sigma -> 0 where an expert fits some rows exactly: a floor keeps the
    # likelihood finite
    noise_floor = min_noise_level(y, min_noise_std)
    # experts are dropped from softmax gates only (a tree's shape is fixed)
    can_drop = fit_experts and params.gate == "softmax"
    weight_floor = (
        expert_weight_floor(d, total, min_expert_weight) if can_drop else -np.inf
    )
    with _blas_limit(problem.uses_compiled_pass(params, subset), n_params):
        state = _EMState(params, noise_floor)
        return state.run(
            problem,
            objective,
            subset,
            max_iter=max_iter,
            tol=tol,
            step=step,
            weight_floor=weight_floor,
            stage=stage,
            callback=callback,
        )


def min_noise_level(y: Array, min_noise_std: float = 0.0) -> float:
    """The floor on ``sigma``: where an expert fits some rows exactly ``sigma ->
    0``, and the floor keeps the likelihood finite (at least ``1e-6 std(y)``)."""
    return max(min_noise_std, 1e-6 * float(np.std(y)), 1e-12)


def expert_weight_floor(n_columns: int, total: float, share: float) -> float:
    """The posterior weight below which an expert is dropped: two rows per
    column, or ``share`` of the total weight."""
    return max(2.0 * n_columns, share * total)


def _blas_limit(compiled: bool, n_params: int):
    """One BLAS thread while EM runs the ``compiled`` pass or has few parameters.

    The compiled pass runs its own threads: BLAS threads left spinning after a
    multi-threaded BLAS call would compete with them for the cores (measured at
    n=1e6, d=50 on 2 cores: the pass took 2-3x longer); small problems' matrices
    are too small to share out (Boston, 78 parameters: the step's eigh took 5 ms
    with two threads, 0.9 ms with one)."""
    if compiled or n_params <= SMALL_PROBLEM_PARAMETERS:
        return one_blas_thread()
    return nullcontext()


class _EMState:
    """Where :func:`em` is: the current parameters, the last accepted ones with
    their objective and pass sums, and the counters of its safeguards."""

    def __init__(self, params: MoEParams, noise_floor: float):
        self.current = params
        self.previous: tuple[MoEParams, float, _Stats] | None = None
        self.took_newton = False
        self.halvings = self.flat = 0
        self.steps: list[float] = []  # sizes of the steps since the last setback
        self.noise_floor = noise_floor
        self.labels = np.arange(params.n_experts)  # the start's expert numbers
        self.dropped: list[int] = []

    def run(
        self,
        problem: _Problem,
        objective: _Objective,
        subset,
        *,
        max_iter: int,
        tol: float,
        step: str,
        weight_floor: float,
        stage: str,
        callback,
    ) -> EMResult:
        """:func:`em`'s iterations from the current parameters."""
        n, history = problem.total, []  # (the weighted number of rows)
        # Newton matrices from a subset or from their Gaussian structure are
        # approximate: the steps then converge linearly (else quadratically)
        linear = subset is not None or problem.column_moments is not None
        n_iter, converged = 0, False
        kept = None  # a subset's Newton matrices, kept while the steps are small
        while n_iter < max_iter:
            stats = problem.run_pass(self.current, subset, curvature=kept is None)
            if kept is not None:
                stats.complete, stats.observed = kept
            value = objective.value(stats, self.current)
            if self.fell(value, objective):
                kept = None
                if not self.retreat(objective):
                    break
                continue
            if not np.isfinite(value):
                raise FloatingPointError(
                    f"{stage}: the log-likelihood is not finite at the start "
                    "(check the inputs' scale and the starting parameters)"
                )
            if self.drop_thin(stats.weight, weight_floor):
                kept = None
                continue
            if kept is not None and self.took_newton:
                stats.observed = objective.secant(stats, self.current)
                kept = (stats.complete, stats.observed)
            self.halvings = 0
            if self.stalled(value, n, tol):  # the objective has stopped rising
                converged = True
                break
            n_iter += 1
            history.append(stats.ll_sum / n)
            proposal = self.propose(objective, stats, step, problem.fit_noise)
            change = _step_size(self.current, proposal, objective.metric)
            if callback is not None:
                callback(stage, n_iter, stats.ll_sum / n, change)
            self.previous = (self.current, value, stats)
            self.current = proposal
            if subset is not None and change < _KEEP_CURVATURE_STEP:
                kept = (stats.complete, stats.observed)
            else:
                kept = None
            if change < tol or (linear and self.contracted(change, tol)):
                converged = True
                break
        else:
            self.settle(problem, objective, subset)
        return EMResult(self.current, n_iter, converged, history, self.dropped)

    def fell(self, value: float, objective: _Objective) -> bool:
        """Whether ``value`` is below the last accepted objective (to rounding);
        after a Newton step, the trust region learns how it did."""
        if self.previous is None:
            return False
        if self.took_newton:
            objective.judge(value - self.previous[1])
        last = self.previous[1]
        return not value >= last - 1e-10 * (1.0 + abs(last))

    def retreat(self, objective: _Objective) -> bool:
        """After a step that lowered the objective: the EM step from the last
        point in place of a Newton step, else half the step; False when the
        halvings are used up (the last point is kept)."""
        assert self.previous is not None  # (a step was taken from it)
        before, _, stats = self.previous
        self.steps = []
        if self.took_newton:
            self.current = objective.em_step(stats, before, self.noise_floor)
            self.took_newton = False
            return True
        self.halvings += 1
        if self.halvings > MAX_HALVINGS:
            self.current = before
            return False
        self.current = _interpolate(before, self.current, 0.5)
        return True

    def drop_thin(self, weights: Array, floor: float) -> bool:
        """Drop the experts whose posterior weight is below ``floor`` (keeping at
        least one); whether any was."""
        if self.current.n_experts == 1 or weights.min() >= floor:
            return False
        gone = np.flatnonzero(weights < floor)
        if len(gone) == self.current.n_experts:
            gone = np.delete(gone, np.argmax(weights))
        self.dropped += self.labels[gone].tolist()
        self.labels = np.delete(self.labels, gone)
        self.current = _drop_experts(self.current, gone)
        self.previous, self.took_newton, self.steps = None, False, []
        return True

    def settle(self, problem: _Problem, objective: _Objective, subset) -> None:
        """At ``max_iter``: one more pass measures the last proposal, which is
        kept only if it did not lower the objective."""
        if self.previous is not None:
            stats = problem.run_pass(self.current, subset, curvature=False)
            if not objective.value(stats, self.current) >= self.previous[1]:
                self.current = self.previous[0]

    def contracted(self, change: float, tol: float) -> bool:
        """Whether the steps shrink geometrically and the rest of the way they
        predict, ``change r / (1 - r)``, is below ``tol``: the step just taken
        ends within ``tol`` of the fixed point. ``r`` is twice the larger of the
        last two ratios of step sizes (they vary by up to twice from one
        iteration to the next as Newton's fast early steps give way to the
        linear rate of approximate curvature, about 0.1-0.2), and must be at
        most :data:`_CONTRACTION`. It saves the pass that would only confirm
        convergence."""
        self.steps.append(change)
        if len(self.steps) < 3:
            return False
        a, b, c = self.steps[-3:]
        rate = 2.0 * max(b / max(a, 1e-300), c / max(b, 1e-300))
        return rate <= _CONTRACTION and change * rate / (1.0 - rate) < tol

    def stalled(self, value: float, n: float, tol: float) -> bool:
        """Whether the objective per row rose by less than ``tol^1.5`` twice
        running."""
        if self.previous is None:
            return False
        gain = (value - self.previous[1]) / n
        self.flat = self.flat + 1 if gain < tol**1.5 * max(1.0, abs(value / n)) else 0
        return self.flat >= 2

    def propose(
        self, objective: _Objective, stats: _Stats, step: str, fit_noise: bool
    ) -> MoEParams:
        """The next point: the trust-region Newton step (``step='newton'``) or,
        where there is none, the EM step; noise levels at least the floor."""
        proposal = objective.newton(stats, self.current) if step == "newton" else None
        self.took_newton = proposal is not None
        if proposal is None:
            proposal = objective.em_step(stats, self.current, self.noise_floor)
        if fit_noise:
            sigma = np.maximum(np.asarray(proposal.noise_std), self.noise_floor)
            proposal = replace(
                proposal, noise_std=sigma if sigma.ndim else float(sigma)
            )
        return proposal


def offset_score_statistics(
    X: RowSource, y: Array, params: MoEParams, rows: Array
) -> tuple[Array, Array]:
    """Score statistics for the expert intercepts and gate biases ``params`` lacks.

    Adding an intercept ``b_j`` to expert ``j`` (``g(a_j . x + b_j)``) or a bias
    ``c_t`` to a gate row adds, per sample, the score ``s_i = r_ij res_ij
    g'_ij / sigma^2`` or the gate's score weight (:func:`gate_terms`), evaluated
    at ``b = c = 0``. Without offsets in the data each sum ``sum_i s_i`` has mean
    zero; ``z = |sum_i s_i| / sqrt(sum_i s_i^2)`` is then about standard normal
    (conservative, as the fitted parameters absorb part of the variance).
    Computed over ``rows``; returns ``(z_experts (k,), z_gate (k - 1,))``.
    """
    spec = _PassSpec(params, True, False, False)
    sums: Any = 0.0
    squares: Any = 0.0
    for part in row_slices(len(rows), X.shape[1]):  # a chunk of the rows at a time
        idx = rows[part]
        chunk_sums, chunk_squares = _offset_scores(take_rows(X, idx), y[idx], spec)
        sums, squares = sums + chunk_sums, squares + chunk_squares
    z = np.abs(sums) / np.sqrt(np.maximum(squares, 1e-300))
    k = params.n_experts
    return z[:k], z[k:]


def _offset_scores(xc: Array, yc: Array, spec: _PassSpec) -> tuple[Array, Array]:
    """Sums and sums of squares of the offsets' per-row scores over a chunk."""
    params = spec.params
    _, resp, gates, res, eta, logits = _estep(xc, yc, None, spec)
    cols, _ = gate_terms(params.gate, logits, gates, resp, False)
    deriv = get_link(params.link).deriv(eta)
    var = np.broadcast_to(np.asarray(params.noise_std, float) ** 2, (resp.shape[0],))
    scores = concat([resp * res * deriv / like(var[:, None], resp), cols])
    return scores.sum(axis=1), (scores * scores).sum(axis=1)


def joint_em_from(
    X: RowSource, y: Array, params: MoEParams, *, tol: float = 1e-7, max_iter: int = 500
) -> MoEParams:
    """Joint EM (experts, gate, noise) from ``params`` to its fixed point.

    Used for reference optima, e.g. the MLE reached from the true parameters.
    """
    inputs = input_whitening(X)
    return em(
        X,
        y,
        params,
        fit_experts=True,
        moments=ColumnMoments(inputs.covariance, inputs.mean, inputs.covariance),
        max_iter=max_iter,
        tol=tol,
        rng=np.random.default_rng(0),
    ).params
