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

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from threadpoolctl import threadpool_limits

from moelearn import _em_fast
from moelearn._links import get_link, sigmoid
from moelearn._model import MoEParams, log_gate_cols, tree_paths
from moelearn._moments import input_whitening
from moelearn._passes import (
    concat,
    einsum,
    is_torch,
    like,
    map_rows,
    namespace,
    projections,
    reduce_rows,
    row_slices,
    take_rows,
)

Array = np.ndarray
ProgressCallback = Callable[[str, int, float, float], None]

_MIN_CURVATURE_ROWS = 20_000
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)
_MAX_HALVINGS = 30
#: Above this many columns the Newton matrices come from their Gaussian structure.
STRUCTURED_CURVATURE_FEATURES = 600
# Use the compiled full-data pass (numba, the ``fast`` extra) when it is installed.
USE_COMPILED = True


@dataclass
class EMResult:
    params: MoEParams
    n_iter: int
    converged: bool
    log_likelihood: list[float] = field(default_factory=list)  # mean, per iteration


def curvature_rows(n_samples: int, n_features: int, rng: np.random.Generator):
    """Rows used for the Newton matrices: all (``None``) or a sorted random subset.

    The subset has ``max(20000, 50 d)`` rows, so the matrices' relative error
    ``~ sqrt(d / m)`` stays below 0.05 and EM's rate of convergence barely changes.
    """
    m = max(_MIN_CURVATURE_ROWS, 50 * n_features)
    if n_samples <= m:
        return None
    return np.sort(rng.choice(n_samples, size=m, replace=False))


def expert_residuals(X: Array, y: Array, params: MoEParams) -> Array:
    """``y_i - g(a_j . x_i)`` for all rows and experts, shape (n, k) (one pass)."""
    return map_rows(
        partial(_residual_rows, link=params.link, experts=params.experts), X, y
    )


def _residual_rows(xc: Array, yc: Array, link: str, experts: Array) -> Array:
    return yc[:, None] - get_link(link).func(xc @ like(experts.T, xc))


def _posterior(logits: Array, res: Array, noise_std: float):
    """Log-likelihoods, responsibilities and gate probabilities, experts-by-rows.

    ``r_j = softmax_j(l_j - res_j^2 / (2 sigma^2))`` (the gate's normaliser cancels)
    and ``log p(y|x) = lse_j(l_j - res_j^2/2sigma^2) - lse_j(l_j) - log sigma
    - log(2 pi)/2``: two exponentials per expert and row, one logarithm per row.
    """
    xp = namespace(logits)
    top = xp.max(logits, axis=0)
    gates = xp.exp(logits - top)
    gate_norm = xp.sum(gates, axis=0)
    gates /= gate_norm
    z = res * (1.0 / noise_std)
    a = logits - 0.5 * z * z
    a_top = xp.max(a, axis=0)
    resp = xp.exp(a - a_top)
    norm = xp.sum(resp, axis=0)
    resp /= norm
    constant = float(np.log(noise_std) + _HALF_LOG_2PI)
    ll = a_top - top + xp.log(norm / gate_norm) - constant
    return ll, resp, gates


@dataclass
class _Stats:
    ll_sum: float = 0.0
    rss: float = 0.0
    grad: Array | None = None  # (d, n_cols)
    hess_experts: Array | None = None  # (k, d, d)
    hess_gate: Array | None = None  # ((k-1) d, (k-1) d)
    gate_missing: Array | None = None  # ((k-1) d, (k-1) d), gating stage only

    def expand(self, structure: _StructuredCurvature, k: int) -> None:
        """Replace the structured (feature-space) matrices by the ``d x d`` ones."""
        if self.hess_experts is not None:
            self.hess_experts = np.array(
                [structure.expand(H) for H in self.hess_experts]
            )
        for name in ("hess_gate", "gate_missing"):
            M = getattr(self, name)
            if M is None:
                continue
            m = M.shape[0] // (k - 1)
            blocks = [
                [
                    structure.expand(M[a * m : (a + 1) * m, b * m : (b + 1) * m])
                    for b in range(k - 1)
                ]
                for a in range(k - 1)
            ]
            setattr(self, name, np.block(blocks))


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
        eta, logits = None, projections(params.gating, xc)
        res = resc.T
    # The softmax is normalised inside _posterior; a tree's leaf log-probabilities
    # are already normalised.
    scores = logits if params.gate == "softmax" else log_gate_cols(logits, "tree")
    return (*_posterior(scores, res, params.noise_std), res, eta, logits)


def _pass_sums(xc: Array, yc: Array, *extra: Array, spec: _PassSpec) -> tuple:
    """One chunk's ``(ll_sum, rss, grad, hess_experts, hess_gate, gate_missing)``
    (``None`` for what ``spec`` does not ask for); a kernel for
    :func:`moelearn._passes.reduce_rows`. ``extra`` holds the fixed experts'
    residuals (gating stage) and then the sample weights (``spec.weighted``);
    with weights every row's terms are multiplied by its weight."""
    params = spec.params
    k = params.n_experts
    link = get_link(params.link)
    xp = namespace(xc)
    resc = None if spec.fit_experts else extra[0]
    sw = extra[-1] if spec.weighted else None
    ll, resp, gates, res, eta, logits = _estep(xc, yc, resc, spec)
    missing = spec.curvature and not spec.fit_experts
    cols, complete, posterior_var = gate_terms(
        params.gate, logits, gates, resp, spec.curvature, missing
    )
    if sw is not None:
        ll, resp_w = ll * sw, resp * sw
        cols = cols * sw
        if spec.curvature:
            complete = complete * sw
            posterior_var = None if posterior_var is None else posterior_var * sw
    else:
        resp_w = resp
    ll_sum = rss = grad = hess_experts = hess_gate = gate_missing = None
    if spec.gradient:
        ll_sum = float(ll.sum())
        rss = float(xp.sum(resp_w * (res * res)))
        if spec.fit_experts:
            cols = concat([resp_w * res * link.deriv(eta), cols])
        grad = (cols @ xc).T
    if spec.curvature:
        f = xc if spec.structure is None else spec.structure.features(xc)
        m = f.shape[1]
        if spec.fit_experts:
            weight = resp_w * link.deriv(eta) ** 2
            hess_experts = xp.stack([f.T @ (weight[j][:, None] * f) for j in range(k)])
        hess_gate = like(np.zeros(((k - 1) * m, (k - 1) * m)), xc)
        gate_missing = xp.zeros_like(hess_gate) if missing else None
        for a in range(k - 1):
            for b in range(a, k - 1):
                block = slice(a * m, (a + 1) * m), slice(b * m, (b + 1) * m)
                if a == b or params.gate == "softmax":
                    w = complete[a, b]
                    hess_gate[block] = f.T @ (w[:, None] * f)
                if missing:
                    # The posterior's variance: complete-data minus this is the
                    # gate's observed information with the experts fixed.
                    w = posterior_var[a, b]
                    gate_missing[block] = f.T @ (w[:, None] * f)
    return ll_sum, rss, grad, hess_experts, hess_gate, gate_missing


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
    ):
        self.X, self.y = X, y
        self.fit_experts = fit_experts
        self.residuals = residuals  # (n, k) when the experts are fixed
        # (mean, covariance) of X's columns when the Newton matrices are structured
        self.column_moments = column_moments
        self.sample_weight = sample_weight
        self.total = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        self._subset: tuple | None = None  # (indices, X, per-row arrays) in memory

    def _per_row(self) -> tuple:
        arrays = [self.y, self.residuals, self.sample_weight]
        return tuple(a for a in arrays if a is not None)

    def _subset_rows(self, subset: Array) -> tuple:
        """The Newton subset's rows, read once per EM run."""
        if self._subset is None or self._subset[0] is not subset:
            per_row = tuple(a[subset] for a in self._per_row())
            self._subset = (subset, take_rows(self.X, subset), per_row)
        return self._subset[1], self._subset[2]

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

    def run_pass(self, params: MoEParams, subset: Array | None) -> _Stats:
        """Gradient over all rows; Newton matrices over ``subset`` (or all rows),
        or from their structure (over all rows) when ``column_moments`` is set."""
        n = self.total
        k = params.n_experts
        weighted = self.sample_weight is not None
        structure = None
        if self.column_moments is not None:
            structure = _StructuredCurvature(*self.column_moments, params)
            subset = None
        fused = subset is None
        stats = _Stats()
        if self.uses_compiled_pass(params, subset):
            kernel = _em_fast.gradient_kernel(params, self.fit_experts, weighted)
            ll, stats.rss, stats.grad = reduce_rows(
                kernel, self.X, *self._per_row(), scale=_em_fast.CHUNK_SCALE
            )
            stats.ll_sum = ll - n * (np.log(params.noise_std) + _HALF_LOG_2PI)
            stats.grad = stats.grad.T
        else:
            spec = _PassSpec(params, self.fit_experts, True, fused, structure, weighted)
            sums = reduce_rows(partial(_pass_sums, spec=spec), self.X, *self._per_row())
            stats.ll_sum, stats.rss, stats.grad = sums[:3]
            if fused:
                stats.hess_experts, stats.hess_gate, stats.gate_missing = sums[3:]
        if not fused:
            spec = _PassSpec(params, self.fit_experts, False, True, None, weighted)
            Xs, per_row = self._subset_rows(subset)
            sums = reduce_rows(partial(_pass_sums, spec=spec), Xs, *per_row)
            scale = n / (float(per_row[-1].sum()) if weighted else len(subset))
            stats.hess_experts, stats.hess_gate, stats.gate_missing = (
                None if m is None else m * scale for m in sums[3:]
            )
        # Symmetrise the gate matrices from their upper blocks.
        stats.hess_gate = _symmetric_from_upper(stats.hess_gate)
        if stats.gate_missing is not None:
            stats.gate_missing = _symmetric_from_upper(stats.gate_missing)
        if structure is not None:
            stats.expand(structure, k)
        return stats


def gate_terms(
    gate: str,
    logits: Array,
    gates: Array,
    resp: Array,
    curvature: bool,
    missing: bool,
) -> tuple[Array, Array | None, Array | None]:
    """The gate's per-row score weights and Newton weights, for ``m`` rows.

    Returns ``cols`` (k - 1, m) with ``grad_t = sum_i cols_ti x_i``; the
    complete-data Hessian's weights ``W`` (k - 1, k - 1, m) with
    ``H[a, b] = sum_i W_abi x_i x_i^T``; and the posterior variance of the score
    weights (same shape) when ``missing``. With a row's latent expert ``z`` and
    score weights ``c_t(z)``, ``cols = E_r[c]`` and the variance is ``Cov_r(c)``.

    * softmax: ``c_a(z) = [z = a] - pi_a``, so ``cols = r_a - pi_a``,
      ``W_ab = pi_a (delta_ab - pi_b)``, ``Cov_ab = r_a (delta_ab - r_b)``;
    * tree: ``c_t(z) = [z left of t] - [z under t] s_t`` with ``s_t =
      sigmoid(v_t . x)``, so ``cols_t = h^L_t - h_t s_t`` (``h_t`` the posterior
      mass under ``t``, ``h^L_t`` under its left child; Jordan & Jacobs' HME
      M-step) and ``W`` is diagonal, ``W_tt = h_t s_t (1 - s_t)``.
    """
    if gate == "softmax":
        cols = resp[:-1] - gates[:-1]
        if not curvature:
            return cols, None, None
        eye = like(np.eye(cols.shape[0])[:, :, None], resp)
        complete = gates[:-1, None] * (eye - gates[None, :-1])
        var = resp[:-1, None] * (eye - resp[None, :-1]) if missing else None
        return cols, complete, var
    left, under = tree_paths(resp.shape[0])
    left, under = like(left.astype(float), resp), like(under.astype(float), resp)
    s = sigmoid(logits)
    mass = under @ resp
    cols = left @ resp - mass * s
    if not curvature:
        return cols, None, None
    t = cols.shape[0]
    complete = like(np.zeros((t, t, resp.shape[1])), resp)
    diagonal = mass * s * (1.0 - s)
    for node in range(t):
        complete[node, node] = diagonal[node]
    var = None
    if missing:
        c = left[:, :, None] - under[:, :, None] * s[:, None, :]  # (k-1, k, m)
        var = einsum("alm,blm,lm->abm", c, c, resp) - cols[:, None] * cols[None]
    return cols, complete, var


def _symmetric_from_upper(M: Array) -> Array:
    return np.triu(M) + np.triu(M, 1).T


def _gate_step(stats: _Stats, grad: Array) -> Array:
    """Newton step for the gate.

    With the experts fixed, the observed information (complete-data Hessian minus
    the posterior's variance) gives Newton's fast convergence to the gate's MLE;
    where it is not positive definite (far from the optimum), and in joint EM, the
    complete-data Hessian (an EM M-step) is used.
    """
    if stats.gate_missing is not None:
        try:
            return cho_solve(cho_factor(stats.hess_gate - stats.gate_missing), grad)
        except LinAlgError:
            pass
    return _newton_solve(stats.hess_gate, grad)


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
    """Largest parameter change in whitened units (rows measured in ``Cov``'s metric)."""
    delta = np.vstack([new.experts - old.experts, new.gating - old.gating])
    rows = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", delta, covariance, delta), 0.0))
    return float(max(rows.max(), abs(new.noise_std - old.noise_std) / old.noise_std))


def em(
    X: Array,
    y: Array,
    params: MoEParams,
    *,
    fit_experts: bool,
    fit_noise: bool = True,
    covariance: Array,
    max_iter: int,
    tol: float,
    rng: np.random.Generator,
    column_moments: tuple[Array, Array] | None = None,
    sample_weight: Array | None = None,
    min_noise_std: float = 0.0,
    stage: str = "em",
    callback: ProgressCallback | None = None,
) -> EMResult:
    """Generalised EM from ``params``; experts held fixed unless ``fit_experts``,
    the noise level unless ``fit_noise``.

    Stops when the largest change of a parameter row, measured in whitened units
    (``sqrt(delta^T Cov delta)``), and the relative change of ``sigma`` fall
    below ``tol``; ``converged`` is False if ``max_iter`` iterations did not get there
    (or a step could not raise the likelihood).

    ``column_moments`` is ``(mean, covariance)`` of ``X``'s columns (a constant
    column has variance 0); given, and with more than
    :data:`STRUCTURED_CURVATURE_FEATURES` columns, the Newton matrices come from
    their Gaussian structure (:class:`_StructuredCurvature`). ``sample_weight``
    makes every sum over rows a weighted one (the weighted log-likelihood).
    """
    n, d = X.shape
    k = params.n_experts
    residuals = None if fit_experts else expert_residuals(X, y, params)
    if d <= STRUCTURED_CURVATURE_FEATURES:
        column_moments = None
    problem = _Problem(X, y, fit_experts, residuals, column_moments, sample_weight)
    subset = curvature_rows(n, d, rng)
    n = problem.total  # the weighted number of rows
    # sigma -> 0 where an expert fits some rows exactly: a floor keeps the
    # likelihood finite
    noise_floor = max(min_noise_std, 1e-6 * float(np.std(y)), 1e-12)
    # The compiled pass runs its own threads: BLAS threads left spinning after a
    # multi-threaded BLAS call would compete with them for the cores (measured at
    # n=1e6, d=50 on 2 cores: the pass took 2-3x longer), so BLAS gets one thread.
    quiet = problem.uses_compiled_pass(params, subset)
    with threadpool_limits(limits=1, user_api="blas") if quiet else nullcontext():
        history: list[float] = []
        previous: tuple[MoEParams, float] | None = None
        current = params
        n_iter, halvings, converged = 0, 0, False
        while n_iter < max_iter:
            stats = problem.run_pass(current, subset)
            ll_mean = stats.ll_sum / n
            if previous is not None and not ll_mean >= previous[1] - 1e-10 * (
                1.0 + abs(previous[1])
            ):
                halvings += 1
                if halvings > _MAX_HALVINGS:
                    current = previous[0]
                    break
                current = _interpolate(previous[0], current, 0.5)
                continue
            halvings = 0
            n_iter += 1
            history.append(ll_mean)
            grad = stats.grad
            experts = current.experts
            if fit_experts:
                experts = experts + np.array(
                    [_newton_solve(stats.hess_experts[j], grad[:, j]) for j in range(k)]
                )
            gate_step = _gate_step(stats, grad[:, -(k - 1) :].T.reshape(-1))
            gating = current.gating.copy()
            gating[: k - 1] += gate_step.reshape(k - 1, d)
            noise = current.noise_std
            if fit_noise:
                noise = max(float(np.sqrt(stats.rss / n)), noise_floor)
            proposal = replace(current, experts=experts, gating=gating, noise_std=noise)
            change = _step_size(current, proposal, covariance)
            if callback is not None:
                callback(stage, n_iter, ll_mean, change)
            previous = (current, ll_mean)
            current = proposal
            if change < tol:
                converged = True
                break
        return EMResult(current, n_iter, converged, history)


def offset_score_statistics(
    X: Array, y: Array, params: MoEParams, rows: Array
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
    sums = squares = 0.0
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
    cols, _, _ = gate_terms(params.gate, logits, gates, resp, False, False)
    deriv = get_link(params.link).deriv(eta)
    scores = concat([resp * res * deriv / params.noise_std**2, cols])
    return scores.sum(axis=1), (scores * scores).sum(axis=1)


def joint_em_from(
    X: Array, y: Array, params: MoEParams, *, tol: float = 1e-7, max_iter: int = 500
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
        covariance=inputs.covariance,
        column_moments=(inputs.mean, inputs.covariance),
        max_iter=max_iter,
        tol=tol,
        rng=np.random.default_rng(0),
    ).params
