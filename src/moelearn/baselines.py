"""The classic algorithms moelearn is measured against."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np
from scipy.optimize import minimize_scalar

from moelearn import _starts
from moelearn import _validation as v
from moelearn._base import MoEBase, names_singular_columns, shares_the_cores
from moelearn._docstrings import shared_entries
from moelearn._em import em, em_columns
from moelearn._gradients import nll_gradient, squared_error_gradient
from moelearn._links import get_link
from moelearn._model import MoEParams, log_likelihood_terms
from moelearn._moments import input_whitening
from moelearn._optim import MinibatchMixin
from moelearn._passes import with_ones
from moelearn.exceptions import ConvergenceWarning, not_converged_message, warn

Array = np.ndarray

__all__ = ["EMMoE", "GradientMoE"]


#: The settings both baselines add to the common ones.
_RANDOM_START_CONSTRAINTS = {
    "init_gate_norm": v.real(0.0),
    "fit_intercept": v.boolean,
    "noise_type": v.one_of("shared", "per_expert"),
}


@shared_entries
class EMMoE(MoEBase):
    r"""Mixture of experts learned by joint EM from random starts (Jordan & Jacobs).

    The same model as :class:`moelearn.SpectralMoE`; each of ``n_init`` random
    starts is run to convergence by EM (E-step posteriors; M-step weighted least
    squares for the experts, an IRLS/Newton step for the gate, and ``sigma``), and
    the start reaching the highest log-likelihood is kept. This is the "traditional
    algorithm" that can stop at a local optimum; it is here as the baseline.

    Random starts, in whitened input coordinates: each regressor a uniform
    direction with norm ``std(y)`` (linear experts) or 1 (other links); each
    non-reference gate row a uniform direction with norm ``init_gate_norm``;
    ``sigma`` = ``std(y)`` unless ``noise_std`` is given.

    Parameters
    ----------
    n_experts : int, default=2
        Number of experts ``k``.
    link : {'linear', 'sigmoid'}, default='linear'
    noise_std : float or None, default=None
        Known noise level (held fixed); ``None`` estimates it.
    max_iter : int, default=200
        Maximum EM iterations per start.
    tol : float, default=1e-4
        EM stops when no parameter row moves more than ``tol`` (whitened units).
    {random_starts}
    fit_intercept : bool, default=False
        Also learn expert intercepts and gate biases (``intercept_``,
        ``gating_intercept_``), as :class:`moelearn.SpectralMoE` does.
    noise_type : {'shared', 'per_expert'}, default='shared'
        One noise level for all experts, or one per expert (``noise_std_`` then
        has shape (n_experts,)).
    {seeded_starts}

    Attributes
    ----------
    {fitted_like_spectral}
    intercept_, gating_intercept_ : ndarray of shape (n_experts,)
        Only with ``fit_intercept=True``.
    n_experts_ : int
        Experts in the kept fit (EM drops an expert whose posterior weight falls
        below its floor).
    converged_ : bool
        Whether the kept start converged.
    n_iter_ : int
        EM iterations of the kept start.
    log_likelihood_curve_ : list of float
        Mean log-likelihood per iteration of the kept start.
    init_log_likelihoods_ : ndarray of shape (n_init,)
        Final mean log-likelihood of every start.
    {fit_record}

    References
    ----------
    Jordan, Jacobs, "Hierarchical mixtures of experts and the EM algorithm",
    Neural Computation 6 (1994).
    """

    _one_expert_per_feature = False

    _parameter_constraints: ClassVar[dict] = {
        **MoEBase._common_constraints,
        **_RANDOM_START_CONSTRAINTS,
    }

    def __init__(
        self,
        n_experts: int = 2,
        *,
        link: str = "linear",
        noise_std: float | None = None,
        max_iter: int = 200,
        tol: float = 1e-4,
        n_init: int = 5,
        init_gate_norm: float = 1.0,
        fit_intercept: bool = False,
        noise_type: str = "shared",
        random_state=None,
        verbose: int = 0,
    ):
        self.n_experts = n_experts
        self.link = link
        self.noise_std = noise_std
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.init_gate_norm = init_gate_norm
        self.fit_intercept = fit_intercept
        self.noise_type = noise_type
        self.random_state = random_state
        self.verbose = verbose

    @names_singular_columns
    @shares_the_cores
    def fit(self, X, y, sample_weight=None):
        """Run EM from ``n_init`` random starts and keep the best.

        {Parameters:X_y_fit}
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights: EM maximises ``sum_i w_i log p(y_i | x_i)``.

        {Returns:fitted}
        """
        rng, X, y = self._begin_fit(X, y)
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0])
        for name in ("intercept_", "gating_intercept_"):  # from an earlier fit
            self.__dict__.pop(name, None)
        start = time.perf_counter()
        # One chunked pass for the input covariance (the step-size metric and the
        # whitened frame the random starts are drawn in).
        whitening = input_whitening(X)
        X_em, moments = em_columns(
            X, whitening.mean, whitening.covariance, self.fit_intercept
        )
        noise = self.noise_std if self.noise_std is not None else float(np.std(y))
        k, D = self.n_experts, X_em.shape[1]
        template = MoEParams(
            np.zeros((k, D)),
            np.zeros((k, D)),
            np.full(k, noise) if self.noise_type == "per_expert" else noise,
            self.link,
        )
        y_mean = float(np.average(y, weights=sample_weight))
        best, best_ll, finals = None, -np.inf, []
        for init in range(self.n_init):
            (params,) = _starts.random_starts(
                rng,
                1,
                template,
                moments.mean,
                whitening.transform,
                y_mean if self.fit_intercept else 0.0,
                float(np.std(y)) if self.link == "linear" else 1.0,
                self.init_gate_norm,
            )
            result = em(
                X_em,
                y,
                params,
                fit_experts=True,
                fit_noise=self.noise_std is None,
                moments=moments,
                sample_weight=sample_weight,
                max_iter=self.max_iter,
                tol=self.tol,
                rng=rng,
                stage=f"start {init + 1}",
                callback=self._progress if self.verbose >= 2 else None,
            )
            terms = log_likelihood_terms(X_em, y, result.params)[0]
            ll = float(np.average(terms, weights=sample_weight))
            finals.append(ll)
            self._log(1, f"start {init + 1}/{self.n_init}: mean log-lik {ll:.6f}")
            if ll > best_ll:
                best, best_ll = result, ll
        self._set_fitted(best, X.shape[1], finals)
        self.fit_times_ = {"em": time.perf_counter() - start}
        return self

    def _set_fitted(self, best, d: int, finals: list[float]) -> None:
        """The kept start's parameters and record; a warning if it did not
        converge."""
        if self.max_iter > 0 and not best.converged:
            warn(
                not_converged_message(
                    f"EM (the best of {self.n_init} starts)", self.max_iter, self.tol
                )
                + " Or try moelearn.SpectralMoE.",
                ConvergenceWarning,
            )
        self._set_parameters(best.params, d)
        self.converged_ = bool(best.converged)
        self.n_iter_ = best.n_iter
        self.log_likelihood_curve_ = list(self._in_raw_units(best.log_likelihood))
        self.init_log_likelihoods_ = self._in_raw_units(np.array(finals))


@shared_entries
class GradientMoE(MinibatchMixin, MoEBase):
    r"""Mixture of experts learned by (stochastic) gradient descent from random starts.

    Minimises, jointly in the regressors, the gate and (for ``loss='nll'``)
    ``log sigma``, either the negative log-likelihood
    ``-mean_i log sum_j pi_j(x_i) N(y_i | g(a_j . x_i), sigma^2)`` or the squared
    error ``mean_i (y_i - sum_j pi_j(x_i) g(a_j . x_i))^2``, by minibatch Adam or
    SGD, from ``n_init`` random starts drawn as in :class:`EMMoE`; the start with
    the highest training log-likelihood is kept. The squared error does not
    involve ``sigma``: it is then set to the maximiser of the likelihood with the
    other parameters fixed. This is the other "traditional algorithm" of docs/method.md.

    Parameters
    ----------
    n_experts : int, default=2
        Number of experts ``k``.
    link : {'linear', 'sigmoid'}, default='linear'
    fit_intercept : bool, default=False
        Give every expert an intercept and every gate row a bias, as
        :class:`EMMoE` does (``intercept_``, ``gating_intercept_``).
    noise_type : {'shared', 'per_expert'}, default='shared'
        One ``sigma`` for all experts, or one ``sigma_j`` each (``loss='l2'``:
        the shared maximiser of the likelihood, repeated).
    loss : {'nll', 'l2'}, default='nll'
    optimizer : {'adam', 'sgd'}, default='adam'
    batch_size : int, default=1000
        Rows per minibatch.
    learning_rate : float, default=0.05
        Step size at epoch 0, decaying as ``1 / sqrt(1 + epoch)``; parameters are
        optimised in whitened input units, so one rate suits any input scaling.
    max_iter : int, default=30
        Maximum epochs per start.
    tol : float, default=1e-3
        Stop when consecutive tail-averaged iterates differ by less than ``tol``.
    {random_starts}
    noise_std : float or None, default=None
        Known noise level (held fixed); ``None`` learns it.
    {seeded_starts}

    Attributes
    ----------
    {fitted_like_spectral}
    loss_curve_ : list of float
        Mean minibatch loss per epoch of the kept start.
    converged_ : bool
    n_iter_ : int
        Epochs of the kept start.
    init_log_likelihoods_ : ndarray of shape (n_init,)
    {fit_record}
    """

    _accepts_dask = False

    _one_expert_per_feature = False

    _parameter_constraints: ClassVar[dict] = {
        **MoEBase._common_constraints,
        "loss": v.one_of("nll", "l2"),
        "optimizer": v.one_of("adam", "sgd"),
        "batch_size": v.integer(1),
        "learning_rate": v.real(0.0, open_low=True),
        **_RANDOM_START_CONSTRAINTS,
    }

    def __init__(
        self,
        n_experts: int = 2,
        *,
        link: str = "linear",
        fit_intercept: bool = False,
        noise_type: str = "shared",
        loss: str = "nll",
        optimizer: str = "adam",
        batch_size: int = 1000,
        learning_rate: float = 0.05,
        max_iter: int = 30,
        tol: float = 1e-3,
        n_init: int = 5,
        init_gate_norm: float = 1.0,
        noise_std: float | None = None,
        random_state=None,
        verbose: int = 0,
    ):
        self.n_experts = n_experts
        self.link = link
        self.fit_intercept = fit_intercept
        self.noise_type = noise_type
        self.loss = loss
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.init_gate_norm = init_gate_norm
        self.noise_std = noise_std
        self.random_state = random_state
        self.verbose = verbose

    @names_singular_columns
    @shares_the_cores
    def fit(self, X, y):
        """Run minibatch gradient descent from ``n_init`` random starts.

        {Parameters:X_y_fit}

        {Returns:fitted}
        """
        rng, X, y = self._begin_fit(X, y)
        for name in ("intercept_", "gating_intercept_"):  # from an earlier fit
            self.__dict__.pop(name, None)
        d, k = X.shape[1], self.n_experts
        start = time.perf_counter()
        whitening = input_whitening(X)
        Z = with_ones(X) if self.fit_intercept else X
        n_noise = k if self.noise_type == "per_expert" else 1
        packing = _Packing(
            whitening.transform, whitening.mean, k, d, self.fit_intercept, n_noise
        )
        objective = partial(self._objective, Z, y, packing)
        noise0 = self.noise_std if self.noise_std is not None else float(np.std(y))
        best, best_ll, finals = None, -np.inf, []
        for init in range(self.n_init):
            flat0 = packing.random_start(
                rng,
                float(np.std(y)) if self.link == "linear" else 1.0,
                float(np.mean(y)),
                self.init_gate_norm,
                noise0,
            )
            result = self._minimise(
                objective, flat0, X.shape[0], rng, f"start {init + 1}"
            )
            params = self._start_params(packing, result.params, Z, y, noise0)
            ll = float(log_likelihood_terms(Z, y, params)[0].mean())
            finals.append(ll)
            self._log(1, f"start {init + 1}/{self.n_init}: mean log-lik {ll:.6f}")
            if ll > best_ll:
                best, best_ll = (params, result), ll
        params, result = best
        if self.max_iter > 0 and not result.converged:
            warn(
                f"gradient descent did not settle within max_iter={self.max_iter} "
                f"epochs (tol={self.tol}) from the best of {self.n_init} starts",
                ConvergenceWarning,
            )
        self._set_parameters(params, d)
        self._set_curve(result)
        self.init_log_likelihoods_ = self._in_raw_units(np.array(finals))
        self.fit_times_ = {"gradient": time.perf_counter() - start}
        return self

    def _objective(
        self, Z: Array, y: Array, packing: _Packing, flat: Array, rows: Array
    ) -> tuple[float, Array]:
        """The loss on ``rows`` and its gradient in the packed parameters."""
        experts, gating, noise = packing.unpack(flat)
        link = get_link(self.link)
        if self.loss == "nll":
            g = nll_gradient(Z[rows], y[rows], experts, gating, noise, link)
        else:
            g = squared_error_gradient(Z[rows], y[rows], experts, gating, link)
        learn_noise = self.loss == "nll" and self.noise_std is None
        n_noise = packing.n_noise
        log_noise = np.broadcast_to(g.log_noise, (n_noise,))
        grad = np.concatenate(
            packing.from_raw(g.experts)
            + packing.from_raw(g.gating[:-1])
            + [log_noise if learn_noise else np.zeros(n_noise)]
        )
        return g.loss, grad

    def _start_params(
        self, packing: _Packing, flat: Array, Z: Array, y: Array, noise0: float
    ) -> MoEParams:
        """A start's result as parameters (the l2 loss: sigma by likelihood)."""
        experts, gating, noise = packing.unpack(flat)
        if self.loss == "l2" and self.noise_std is None:
            noise = _likelihood_noise(Z, y, experts, gating, self.link, noise0)
            noise = np.full(packing.k, noise) if packing.n_noise > 1 else noise
        return MoEParams(experts, gating, noise, self.link)

    def _set_curve(self, result) -> None:
        """``loss_curve_``, ``converged_`` and ``n_iter_`` of the kept start."""
        self.loss_curve_ = result.loss_curve
        if self._scales is not None:  # the loss in y's units
            t = self._scales[1]
            curve = np.asarray(result.loss_curve, float)
            self.loss_curve_ = list(
                curve + np.log(t) if self.loss == "nll" else curve * t * t
            )
        self.converged_ = bool(result.converged)
        self.n_iter_ = result.n_epochs


@dataclass
class _Packing:
    """:class:`GradientMoE`'s flat parameter vector: the experts' whitened slopes
    (and offsets at the inputs' mean), then the ``k - 1`` free gate rows' alike,
    then ``log sigma`` (one, or one per expert). With ``L`` the whitening and
    ``m`` the mean, a whitened row ``(w, b)`` is the raw ``(L^T w, b - L^T w . m)``
    (``slopes @ L.T`` for rows)."""

    L: Array
    mean: Array
    k: int
    d: int
    intercept: bool
    n_noise: int

    @property
    def cuts(self) -> Array:
        k, d, c = self.k, self.d, int(self.intercept)
        sizes = [k * d, k * c, (k - 1) * d, (k - 1) * c, self.n_noise]
        return np.cumsum(sizes)[:-1]

    def to_raw(self, slopes_w: Array, offsets: Array) -> Array:
        slopes = slopes_w @ self.L.T
        if not self.intercept:
            return slopes
        return np.column_stack([slopes, offsets - slopes @ self.mean])

    def unpack(self, flat: Array) -> tuple[Array, Array, float | Array]:
        """``(experts, gating, noise_std)`` in raw coordinates."""
        k, d = self.k, self.d
        ew, eb, gw, gb, log_noise = np.split(flat, self.cuts)
        experts = self.to_raw(ew.reshape(k, d), eb)
        gating = np.zeros((k, experts.shape[1]))
        gating[:-1] = self.to_raw(gw.reshape(k - 1, d), gb)
        noise = np.exp(log_noise)
        return experts, gating, noise if self.n_noise > 1 else float(noise[0])

    def from_raw(self, grad: Array) -> list[Array]:
        """A gradient in the raw parameters' rows, in the whitened ones."""
        d = self.d
        slopes = grad[:, :d]
        if not self.intercept:
            return [(slopes @ self.L).ravel(), np.zeros(0)]
        offsets = grad[:, d]
        return [((slopes - np.outer(offsets, self.mean)) @ self.L).ravel(), offsets]

    def random_start(
        self, rng, expert_norm: float, y_mean: float, gate_norm: float, noise0: float
    ) -> Array:
        """Experts uniform on the sphere with ``y``'s spread, offsets at ``y``'s
        mean, gate rows of norm ``gate_norm``, ``sigma = noise0``."""
        k, d, c = self.k, self.d, int(self.intercept)
        return np.concatenate(
            [
                (_random_rows(rng, k, d) * expert_norm).ravel(),
                np.full(k * c, y_mean),
                (_random_rows(rng, k - 1, d) * gate_norm).ravel(),
                np.zeros((k - 1) * c),
                np.full(self.n_noise, np.log(noise0)),
            ]
        )


def _likelihood_noise(X, y, experts, gating, link, upper) -> float:
    """``sigma`` maximising the likelihood with the other parameters fixed."""

    def neg_ll(log_sigma: float) -> float:
        params = MoEParams(experts, gating, float(np.exp(log_sigma)), link)
        return -float(log_likelihood_terms(X, y, params)[0].mean())

    hi = np.log(max(upper, 1e-12)) + 1.0
    res = minimize_scalar(neg_ll, bounds=(hi - 12.0, hi), method="bounded")
    return float(np.exp(res.x))


def _random_rows(rng: np.random.Generator, rows: int, d: int) -> Array:
    """``rows`` directions uniform on the unit sphere."""
    out = rng.standard_normal((rows, d))
    return out / np.linalg.norm(out, axis=1, keepdims=True)
