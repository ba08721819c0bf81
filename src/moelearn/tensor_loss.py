"""Method 2: regressors from the tensor loss ``L4``, the gate from ``L_log`` (docs/method.md, section 4)."""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from moelearn import _validation as v
from moelearn._base import MoEBase, names_singular_columns, shares_the_cores
from moelearn._docstrings import shared_entries
from moelearn._gradients import nll_gradient
from moelearn._links import get_link
from moelearn._moments import RowInputs
from moelearn._optim import MinibatchMixin
from moelearn._spectral import second_moment_eigenpairs
from moelearn._tensor_loss import coupling_matrix, tensor_loss_terms
from moelearn.exceptions import SpectralReliabilityWarning, warn

Array = np.ndarray

__all__ = ["TensorLossMoE"]

#: ``P4(y) = y^4 - CONTROL * E[y^2] * y^2``. Any multiple of ``y^2`` leaves
#: ``T4`` unchanged for two experts (``E[y^2 S4(x)] = 0``: the gate's odd part
#: times an even function averages to zero); it acts as a control variate. For one
#: standard linear expert the variance-optimal multiple is 9.6 for the cross terms
#: and 15.7 for the diagonal ones; 12 measured best over seeds (median error 0.055
#: vs 0.13 with the talk's ``6 (1 + sigma^2)``, d=10, n=1e5).
CONTROL = 12.0
SIGN_ROWS = 20_000
EXHAUSTIVE_SIGNS = 8
#: Eigenvalues of ``M2`` below this fraction of the largest are floored (and warned
#: about): ``Q`` scales by ``lambda^{-1/2}`` and would amplify noise without bound.
MIN_EIGENVALUE_RATIO = 1e-3


@shared_entries
class TensorLossMoE(MinibatchMixin, MoEBase):
    r"""Mixture of experts learned by minimising designed losses with SGD (Method 2).

    Regressors: with ``P4(y) = y^4 - 12 E[y^2] y^2`` (linear experts, sigmoid gate,
    no bias) the moment ``T4 = E[P4(y) S4(x)]`` equals ``12 sum_i a_i^{(4)}``. The
    inputs are whitened, and then so are the regressors: with
    ``M2 = E[y^2 S2(x)] = sum_i a_i a_i^T = U Lambda U^T`` (top ``k``), the map
    ``Q = U Lambda^{-1/2} U^T + c^{-1/2} (I - U U^T)`` (``c`` the mean of the top
    eigenvalues) makes ``Q a_i`` orthonormal, and

    ``L4(B) = sum_{j != l} T4(Qb_j, Qb_j, Qb_l, Qb_l) - mu sum_j T4(Qb_j, Qb_j, Qb_j, Qb_j)
    + lambda sum_j (|b_j|^2 - 1)^2``

    is minimised over ``B`` from a random start by minibatch Adam or SGD. Every
    local minimum of ``L4`` is global (the truth up to permutation and sign) and
    saddles have negative curvature. By default the columns of ``B`` are searched
    in the span of ``U``, where the truth lies (``B = U C``, ``C`` k x k): the other
    ``d - k`` directions carry only the sampling noise of ``T4``, and leaving them
    out halved the error (median 0.058 -> 0.028 at d=10, n=1e5);
    ``subspace='full'`` searches all of ``R^d``, the setting of the landscape
    theorem. Each minibatch costs
    ``O(batch d k + batch k^2)``; no ``d^4`` array exists. Columns are
    normalised (the minimiser's norm is ``sqrt(lambda / (lambda - 12 mu))``) and
    mapped back, ``a_j = Q^{-1} b_j``. ``T4`` is even, so each sign is chosen to
    minimise ``mean_i min_j (y_i - a_j . x_i)^2`` on a row subsample.

    Gate: with the regressors fixed, ``L_log`` — the negative log-likelihood in the
    gate and ``sigma`` — is minimised from ``G = 0`` by the same optimiser.

    Parameters
    ----------
    n_experts : int, default=2
        For ``k >= 3`` (softmax gate) ``T4`` picks up cross terms of the size of
        the gate–regressor correlations; the result is then a biased start.
    link : {'linear'}, default='linear'
        ``T4`` with this ``P4`` is derived for linear experts only.
    optimizer : {'adam', 'sgd'}, default='adam'
    batch_size : int, default=1000
        Rows per minibatch.
    learning_rate : float, default=0.05
        Step size at epoch 0; it decays as ``1 / sqrt(1 + epoch)``.
    max_iter : int, default=30
        Maximum epochs, for each of the two losses.
    tol : float, default=1e-3
        Stop when consecutive epoch-averaged iterates differ by less than ``tol``.
    mu : float, default=1.0
        Weight of the diagonal terms of ``L4``.
    penalty : float, default=24.0
        ``lambda`` of the norm penalty; must exceed ``12 mu``, else ``L4`` is
        unbounded below.
    subspace : {'span', 'full'}, default='span'
        Where the columns of ``B`` are searched (see above).
    noise_std : float or None, default=None
        Known noise level (held fixed in ``L_log``); ``None`` learns it.
    random_state : int, Generator or None, default=None
        Seeds the random starts and the minibatches.
    verbose : int, default=0
        ``1`` prints progress to stderr.

    Attributes
    ----------
    {fitted_like_spectral}
    loss_curve_ : list of float
        Mean minibatch ``L4`` per epoch.
    gating_loss_curve_ : list of float
        Mean minibatch ``L_log`` per epoch.
    converged_ : bool
        Whether both losses met ``tol`` within ``max_iter`` epochs.
    n_iter_ : int
        Epochs, both losses together.
    diagnostics_ : dict
        ``m2_eigenvalues``: the leading eigenvalues of ``M2`` (the smallest of the
        first ``k`` against the next tells whether the whitening can be trusted).
    {fit_record}

    References
    ----------
    Makkuva, Oh, Kannan, Viswanath, "Learning in gated neural networks",
    AISTATS 2020. Ge, Lee, Ma, "Learning one-hidden-layer neural networks with
    landscape design", ICLR 2018.
    """

    _accepts_dask = False
    # sets its fitted attributes itself, in the units it fitted in
    _rescales = False

    _parameter_constraints: ClassVar[dict] = {
        **MoEBase._common_constraints,
        "link": v.one_of("linear"),
        "optimizer": v.one_of("adam", "sgd"),
        "batch_size": v.integer(1),
        "learning_rate": v.real(0.0, open_low=True),
        "mu": v.real(0.0, open_low=True),
        "penalty": v.real(0.0, open_low=True),
        "subspace": v.one_of("span", "full"),
    }
    _parameter_constraints.pop("n_init")

    def __init__(
        self,
        n_experts: int = 2,
        *,
        link: str = "linear",
        optimizer: str = "adam",
        batch_size: int = 1000,
        learning_rate: float = 0.05,
        max_iter: int = 30,
        tol: float = 1e-3,
        mu: float = 1.0,
        penalty: float = 24.0,
        subspace: str = "span",
        noise_std: float | None = None,
        random_state=None,
        verbose: int = 0,
    ):
        self.n_experts = n_experts
        self.link = link
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.mu = mu
        self.penalty = penalty
        self.subspace = subspace
        self.noise_std = noise_std
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self) -> None:
        super()._check_params()
        if self.penalty <= 12.0 * self.mu:
            raise ValueError(
                f"penalty={self.penalty} must exceed 12 * mu = {12.0 * self.mu}: "
                "otherwise L4 is unbounded below"
            )

    @names_singular_columns
    @shares_the_cores
    def fit(self, X, y):
        """Minimise ``L4`` for the regressors, then ``L_log`` for the gate.

        {Parameters:X_y_fit}

        {Returns:fitted}
        """
        rng, X, y = self._begin_fit(X, y)
        k = self.n_experts
        times = {}
        start = time.perf_counter()
        m2 = float(np.mean(y * y))
        inputs, pairs = second_moment_eigenpairs(
            RowInputs(X), y * y - m2, k, rng, sign=1.0
        )
        whitening = inputs.whitening
        values = pairs.values[:k]
        if not np.all(values > MIN_EIGENVALUE_RATIO * abs(pairs.values[0])):
            warn(
                f"M2 = E[y^2 S2(x)] has eigenvalues {np.round(values, 6).tolist()}: "
                f"fewer than {k} are clearly positive, so the data do not support "
                f"{k} experts, or the model is far from its assumptions; the "
                "regressors found cannot be trusted",
                SpectralReliabilityWarning,
            )
            values = np.maximum(values, MIN_EIGENVALUE_RATIO * abs(pairs.values[0]))
            values = np.maximum(values, 1e-300)
        frame = _OrthonormalisingMap(pairs.vectors[:, :k], values)
        self.diagnostics_ = {"m2_eigenvalues": pairs.values.copy()}
        times["moments"] = time.perf_counter() - start

        start = time.perf_counter()
        columns, curve, regressors = self._minimise_l4(X, y, m2, whitening, frame, rng)
        experts = whitening.to_raw(frame.apply(columns, 0.5).T)
        experts, hard_residual = _resolve_signs(X, y, experts, rng)
        times["regressors"] = time.perf_counter() - start

        start = time.perf_counter()
        noise0 = self.noise_std or max(float(np.sqrt(hard_residual)), 1e-3 * np.std(y))
        gating, noise, gate_fit = self._minimise_gate_loss(
            X, y, experts, whitening.transform, noise0, rng
        )
        times["gating"] = time.perf_counter() - start

        self.experts_ = experts
        self.gating_ = gating
        self.noise_std_ = noise
        self.loss_curve_ = curve
        self.gating_loss_curve_ = gate_fit.loss_curve
        self.converged_ = bool(regressors.converged and gate_fit.converged)
        self.n_iter_ = regressors.n_epochs + gate_fit.n_epochs
        self.fit_times_ = times
        if self.max_iter > 0 and not self.converged_:
            warn(
                f"SGD did not settle within max_iter={self.max_iter} epochs "
                f"(tol={self.tol}); increase max_iter or tol",
                ConvergenceWarning,
            )
        return self

    def _minimise_l4(self, X, y, m2, whitening, frame, rng):
        n, d = X.shape
        k = self.n_experts
        # In the coordinates Q makes orthonormal, T4 = 12 sum_i (Q a_i . b)^4 does not
        # depend on the scale of y: no rescaling is needed.
        weights = y**4 - CONTROL * m2 * y * y
        weights -= weights.mean()
        coupling = coupling_matrix(k, self.mu)
        L, mean, lam = whitening.transform, whitening.mean, self.penalty

        # Coordinates of the columns of B: all of R^d, or the span of M2's top
        # eigenvectors (B = basis @ C), where the truth lies; the latter leaves out
        # the d - k directions in which T4 is pure noise.
        span = self.subspace == "span"
        dim = k if span else d

        def columns(C: Array) -> Array:
            return frame.basis @ C if span else C

        def objective(flat: Array, rows: Array) -> tuple[float, Array]:
            B = columns(flat.reshape(dim, k))
            U = frame.apply(B, -0.5)  # whitened input coordinates
            R = L @ U  # acts on centred raw rows
            Xb = X[rows]
            terms = tensor_loss_terms(
                Xb @ R - mean @ R, weights[rows] / len(rows), U.T @ U, coupling
            )
            coef = terms.coef_rows
            grad_U = L.T @ (Xb.T @ coef - np.outer(mean, coef.sum(axis=0)))
            grad_U += U @ terms.coef_columns
            norms = np.sum(B * B, axis=0) - 1.0
            grad = frame.apply(grad_U, -0.5) + 4.0 * lam * B * norms
            if span:
                grad = frame.basis.T @ grad
            return terms.value + lam * float(norms @ norms), grad.ravel()

        C0 = rng.standard_normal((dim, k))
        C0 /= np.linalg.norm(C0, axis=0)
        result = self._minimise(objective, C0.ravel(), n, rng, "L4")
        B = columns(result.params.reshape(dim, k))
        B = B / np.maximum(np.linalg.norm(B, axis=0), 1e-300)
        return B, result.loss_curve, result

    def _minimise_gate_loss(self, X, y, experts, L, noise0, rng):
        """``L_log``: negative log-likelihood in the gate (and ``sigma``), experts fixed.

        The gate rows are optimised in whitened units ``G_raw = G_w L^T`` so that
        one learning rate suits every input scaling.
        """
        k, d = experts.shape
        link = get_link(self.link)
        fit_noise = self.noise_std is None

        def objective(flat: Array, rows: Array) -> tuple[float, Array]:
            gating_w = flat[:-1].reshape(k - 1, d)
            gating = np.vstack([gating_w @ L.T, np.zeros((1, d))])
            noise = float(np.exp(flat[-1]))
            g = nll_gradient(X[rows], y[rows], experts, gating, noise, link)
            grad_w = g.gating[:-1] @ L
            return g.loss, np.append(grad_w.ravel(), g.log_noise if fit_noise else 0.0)

        start = np.append(np.zeros((k - 1) * d), np.log(noise0))
        result = self._minimise(objective, start, X.shape[0], rng, "L_log")
        gating = np.zeros((k, d))
        gating[:-1] = result.params[:-1].reshape(k - 1, d) @ L.T
        return gating, float(np.exp(result.params[-1])), result


class _OrthonormalisingMap:
    """``V -> (U Lambda^p U^T + c^p (I - U U^T)) V`` without a d x d matrix.

    On the span of ``U`` (the top eigenvectors of ``M2``) it scales by
    ``lambda^p``; on the rest by ``c^p`` with ``c`` the mean of the top
    eigenvalues, so that the noise of ``T4`` off the span is weighed in the same
    units of ``y``. ``p = -1/2`` is ``Q``, which makes the regressors orthonormal,
    and ``p = 1/2`` is ``Q^{-1}``.
    """

    def __init__(self, basis: Array, values: Array):
        self.basis = basis
        self.values = values
        self.rest = float(np.mean(values))

    def apply(self, V: Array, power: float) -> Array:
        rest = self.rest**power
        scale = (self.values**power - rest)[:, None]
        return rest * V + self.basis @ (scale * (self.basis.T @ V))


def _resolve_signs(
    X: Array, y: Array, experts: Array, rng: np.random.Generator
) -> tuple[Array, float]:
    """Signs of the regressors minimising ``mean_i min_j (y_i - s_j a_j . x_i)^2``.

    On at most :data:`SIGN_ROWS` random rows; every sign pattern is tried for
    ``k <= EXHAUSTIVE_SIGNS`` (a greedy search can stop at ``(-a_1, -a_2)`` when
    ``a_1 . a_2 < 0``), else single flips until none helps. Returns the signed
    regressors and the attained mean squared hard-assignment residual (a first
    ``sigma^2`` estimate).
    """
    n, k = X.shape[0], experts.shape[0]
    rows = (
        rng.choice(n, size=SIGN_ROWS, replace=False) if n > SIGN_ROWS else slice(None)
    )
    means = X[rows] @ experts.T
    target = y[rows][:, None]

    def cost(s: Array) -> float:
        r = target - means * s
        return float(np.mean(np.min(r * r, axis=1)))

    if k <= EXHAUSTIVE_SIGNS:
        patterns = 1.0 - 2.0 * ((np.arange(2**k)[:, None] >> np.arange(k)) & 1)
        costs = [cost(s) for s in patterns]
        best_index = int(np.argmin(costs))
        return experts * patterns[best_index][:, None], costs[best_index]
    signs = np.ones(k)
    best, improved = cost(signs), True
    while improved:
        improved = False
        for j in range(k):
            trial = signs.copy()
            trial[j] = -trial[j]
            c = cost(trial)
            if c < best:
                signs, best, improved = trial, c, True
    return experts * signs[:, None], best
