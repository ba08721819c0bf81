"""User-facing estimators: thin classes over the kernels."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
from scipy.linalg import block_diag
from scipy.optimize import linear_sum_assignment
from sklearn.exceptions import ConvergenceWarning

from moelearn import _validation as v
from moelearn._base import MoEBase
from moelearn._em import EMResult, em, offset_score_statistics
from moelearn._links import get_link
from moelearn._model import MoEParams, n_gate_rows
from moelearn._passes import take_rows, with_ones
from moelearn._spectral import SpectralMoments, spectral_moments, spectral_solve
from moelearn.metrics import parameter_error

Array = np.ndarray

__all__ = ["NonGaussianInputWarning", "SpectralMoE", "SpectralReliabilityWarning"]


class NonGaussianInputWarning(UserWarning):
    """The inputs look far from Gaussian, so Method 1's guarantees do not apply."""


class SpectralReliabilityWarning(UserWarning):
    """The moments do not have the structure the model implies: the spectral start
    (and so the fit) may be poor."""


# Marginal shape beyond which the inputs are called "far from Gaussian": a
# skewness or excess kurtosis this large visibly biases the Stein moments.
_SKEW_LIMIT, _KURTOSIS_LIMIT, _MEAN_LIMIT = 0.5, 1.0, 0.5
_GATING_TOL_BEFORE_REFINE = 1e-2
# |lambda_k| of T2 below this many noise levels: the k-th direction is lost in noise.
_MIN_SIGNAL_TO_NOISE = 3.0
#: Refinement moving the regressors this many times the spectral step's expected
#: sampling error (3 sqrt(d/n) per unit norm) means the moment identities were
#: biased (cross terms: ReLU, k >= 3 softmax, gate bias, non-Gaussian inputs).
#: Measured ratios: linear and sigmoid k=2 at most 2; k=3 softmax about 5-25;
#: ReLU 4-38 (d=10, n=1e6).
_MAX_SPECTRAL_SHIFT = 10.0
#: Rows and threshold of the score test for offsets the model lacks: |z| > 5 has
#: probability 6e-7 per statistic when there are none.
_OFFSET_TEST_ROWS, _OFFSET_Z = 200_000, 5.0


class SpectralMoE(MoEBase):
    r"""Mixture of experts learned by spectral moments, then EM (Method 1).

    The model is

    .. math::
        P(y \mid x) = \sum_{j=1}^{k} \pi_j(x)\, \mathcal{N}(y \mid g(a_j^\top x), \sigma^2),
        \qquad \pi(x) = \operatorname{softmax}(G x),

    with the last row of ``G`` zero (for two experts ``pi_1 = sigmoid(w^T x)``).
    ``fit`` whitens ``X``; recovers the regressors ``a_j`` from the Stein-score
    moments ``T2 = E[P2(y) S2(x)]`` and ``T3 = E[P3(y) S3(x)]`` (whitening by
    ``T2``, robust tensor power method on the whitened ``T3``) without knowing the
    gate; learns the gate by EM with the regressors fixed; and, with
    ``refine=True``, runs joint EM from there to the maximum-likelihood estimate.
    The moments are only ever used through chunked contractions with samples.

    The guarantees need Gaussian inputs (any mean and covariance) and a gate
    without bias; a warning says when the inputs look far from that.

    Parameters
    ----------
    n_experts : int, default=2
        Number of experts ``k`` (at most ``n_features``).
    link : {'linear', 'sigmoid', 'tanh', 'relu'} or callable, default='linear'
        The experts' link ``g``; a callable is any elementwise function (its
        transforms of ``y`` are solved by quadrature; such a model cannot be saved
        as JSON). For ReLU, and for three or more experts, the moments carry gate
        cross terms: the spectral start is biased and refinement removes the bias.
    noise_std : float or None, default=None
        Noise level ``sigma`` if known (then held fixed); ``None`` estimates it.
    refine : bool, default=True
        Run joint EM (experts, gate and noise) after the spectral + gating stage.
    fit_intercept : bool, default=False
        Also learn expert intercepts ``b_j`` and gate biases ``c_j``:
        ``g(a_j . x + b_j)`` and ``softmax(G x + c)``. The spectral step still
        assumes neither (its moment identities hold only without them), so it gives
        the slopes' start; the gating EM and refinement then fit the offsets. With
        a large gate bias the start is biased and refinement, which corrects a
        moderate bias, may stop at a local optimum (``diagnostics_`` and the
        warnings say when refinement moved far). Without ``fit_intercept``, ``fit``
        tests for offsets the data show and warns if it finds them.
    max_iter : int, default=200
        Maximum EM iterations per stage (gating EM, refinement). ``0`` stops after
        the spectral step (gate left at zero).
    tol : float, default=1e-4
        EM stops when no parameter row moves more than ``tol`` (in whitened units).
        EM converges linearly (rate ~0.15 at sigma = 0.1), so what remains is a few
        times ``tol / 10``: far below the MLE's own error (~1.6 sigma sqrt(d/n)).
        When ``refine=True`` the gating stage, which only provides refinement's
        start, stops at ``max(tol, 1e-2)``.
    n_init : int, default=10
        Random restarts of the tensor power method per component.
    random_state : int, Generator or None, default=None
        Seeds the power method's restarts and the Newton subsample.
    verbose : int, default=0
        ``1`` prints each stage to stderr, ``2`` also each EM iteration.

    Attributes
    ----------
    experts_ : ndarray of shape (n_experts, n_features)
        Regressors ``a_j`` in the input coordinates.
    gating_ : ndarray of shape (n_experts, n_features)
        Gate logits ``G``; the last row is zero.
    intercept_, gating_intercept_ : ndarray of shape (n_experts,)
        Expert intercepts ``b`` and gate biases ``c`` (last zero); only with
        ``fit_intercept=True``.
    noise_std_ : float
        Noise level ``sigma``.
    spectral_experts_ : ndarray of shape (n_experts, n_features)
        The regressors from the spectral step alone.
    converged_ : bool
        Whether every EM stage met ``tol`` within ``max_iter``.
    n_iter_ : int
        EM iterations over all stages.
    log_likelihood_curve_ : list of float
        Mean log-likelihood at each EM iteration.
    diagnostics_ : dict
        ``t2_eigenvalues``, ``spectral_gap``, ``tensor_eigenvalues``,
        ``mixing_weights`` (spectral), ``input_skewness``, ``input_kurtosis``.
    fit_times_ : dict
        Seconds spent in each stage (``spectral``, ``gating``, ``refine``).
    n_features_in_ : int
    feature_names_in_ : ndarray of str, only when X has string column names

    References
    ----------
    Makkuva, Oh, Kannan, Viswanath, "Breaking the gridlock in Mixture-of-Experts:
    Consistent and Efficient Algorithms", ICML 2019.

    Examples
    --------
    >>> from moelearn import SpectralMoE, make_moe, parameter_error
    >>> X, y, truth = make_moe(20_000, 5, random_state=0)
    >>> model = SpectralMoE(random_state=0).fit(X, y)
    >>> parameter_error(model, truth) < 0.1
    True
    """

    _parameter_constraints: ClassVar[dict] = {
        **MoEBase._common_constraints,
        "refine": v.boolean,
        "fit_intercept": v.boolean,
    }
    # After the gating stage, restart from the spectral regressors re-solved at the
    # estimated noise (subclasses whose gating stage moves the experts do not).
    _restart_from_spectral: ClassVar[bool] = True

    def __init__(
        self,
        n_experts: int = 2,
        *,
        link: str = "linear",
        noise_std: float | None = None,
        refine: bool = True,
        fit_intercept: bool = False,
        max_iter: int = 200,
        tol: float = 1e-4,
        n_init: int = 10,
        random_state=None,
        verbose: int = 0,
    ):
        self.n_experts = n_experts
        self.link = link
        self.noise_std = noise_std
        self.refine = refine
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, sample_weight=None):
        """Learn the parameters from samples ``X`` (n, d) and targets ``y`` (n,).

        ``sample_weight`` (n,), optional: non-negative weights; the moments become
        weighted means and EM maximises ``sum_i w_i log p(y_i | x_i)`` (an integer
        weight acts as that many copies of the row).

        Returns
        -------
        self : SpectralMoE
        """
        rng, X, y = self._begin_fit(X, y)
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0])
        n, d = X.shape
        link = get_link(self.link)
        self._stage_diagnostics: dict = {}  # what the stages' hooks report
        for name in ("intercept_", "gating_intercept_"):  # from an earlier fit
            self.__dict__.pop(name, None)
        self._log(
            1, f"fitting {self.n_experts} {self.link} experts to {n} x {d} inputs"
        )

        start = time.perf_counter()
        moments = spectral_moments(X, y, link, self.n_experts, rng, sample_weight)
        self._warn_about_inputs(moments, n, offsets_modelled=self.fit_intercept)
        self._warn_about_moments(moments)
        noise = self.noise_std if self.noise_std is not None else 0.0
        spectral = spectral_solve(moments, noise, rng, self.n_init)
        times = {"spectral": time.perf_counter() - start}
        self._log(1, f"spectral step done in {times['spectral']:.2f} s")

        covariance = moments.inputs.whitening.covariance
        column_moments = (moments.inputs.whitening.mean, covariance)
        experts = spectral.experts
        if self.fit_intercept:
            # EM runs on [X, 1]; each intercept starts where the expert's line
            # passes through the means, b_j = mean(y) - a_j . mean(x).
            X = with_ones(X)
            column_moments = (
                np.append(column_moments[0], 1.0),
                block_diag(covariance, 0.0),
            )
            covariance = block_diag(covariance, 1.0)
            y_mean = np.average(y, weights=sample_weight)
            offsets = y_mean - experts @ moments.inputs.whitening.mean
            experts = np.column_stack([experts, offsets])
        gate_shape = (n_gate_rows(self.n_experts, self._gate), X.shape[1])
        params = MoEParams(experts, np.zeros(gate_shape), noise, self.link, self._gate)
        params = replace(params, noise_std=_initial_noise(X, y, params, self.noise_std))
        common = {
            "covariance": covariance,
            "column_moments": column_moments,
            "rng": rng,
            "sample_weight": sample_weight,
            "callback": self._progress if self.verbose >= 2 else None,
        }
        record = _EMRecord()

        if self.max_iter > 0:
            start = time.perf_counter()
            # Before refinement the gate only has to be a good start: a looser tol.
            gating_tol = (
                max(self.tol, _GATING_TOL_BEFORE_REFINE) if self.refine else self.tol
            )

            def gating_em(params: MoEParams) -> MoEParams:
                return record.add(
                    self._em(
                        X,
                        y,
                        params,
                        fit_experts=False,
                        stage="gating",
                        tol=gating_tol,
                        **common,
                    )
                )

            params = self._gating_stage(X, y, params, gating_em, common)
            if self.noise_std is None:
                # Re-solve the moments at the estimated noise (no pass over the data),
                # keeping each expert in the place the gate learned for it.
                spectral = spectral_solve(moments, params.noise_std, rng, self.n_init)
                order = _matching_order(spectral.experts, params.experts[:, :d])
                spectral = replace(
                    spectral,
                    experts=spectral.experts[order],
                    weights=spectral.weights[order],
                    tensor_values=spectral.tensor_values[order],
                )
                if self._restart_from_spectral:
                    experts = np.column_stack([spectral.experts, params.experts[:, d:]])
                    params = replace(params, experts=experts)
                    if not self.refine:  # let the gate adjust to the new regressors
                        params = gating_em(params)
            times["gating"] = time.perf_counter() - start
            self._log(
                1,
                f"gating EM done in {times['gating']:.2f} s ({record.n_iter} iterations)",
            )

            if self.refine:
                start, before = time.perf_counter(), record.n_iter

                def refine_em(params: MoEParams) -> EMResult:
                    return self._em(
                        X,
                        y,
                        params,
                        fit_experts=True,
                        stage="refine",
                        tol=self.tol,
                        **common,
                    )

                first = refine_em(params)
                params = record.add(first)
                second_start = self._second_start(X, y, params, common)
                if second_start is not None:
                    second = refine_em(second_start)
                    if _final_log_likelihood(second) > _final_log_likelihood(first):
                        params = record.add(second)
                        self._log(1, "the second start reached a higher likelihood")
                    else:
                        record.n_iter += second.n_iter
                times["refine"] = time.perf_counter() - start
                self._log(
                    1,
                    f"refinement done in {times['refine']:.2f} s "
                    f"({record.n_iter - before} iterations)",
                )
            if not record.converged:
                warnings.warn(
                    f"EM did not converge within max_iter={self.max_iter} iterations "
                    f"per stage (tol={self.tol}). Increase max_iter or tol; check that "
                    "n_experts and link suit the data.",
                    ConvergenceWarning,
                    stacklevel=2,
                )

        slopes, gates = params.experts[:, :d], params.gating[:, :d]
        shift = parameter_error(spectral.experts, slopes, experts_only=True)
        expected = 3.0 * np.sqrt(d / n) * max(1.0, float(np.abs(slopes).max()))
        if self.refine and self.max_iter > 0 and shift > _MAX_SPECTRAL_SHIFT * expected:
            warnings.warn(
                f"the spectral step was biased: refinement moved the regressors by "
                f"{shift:.3g}, {shift / expected:.0f} times the spectral step's "
                f"sampling error (about {expected:.2g}). The moment identities carry "
                "cross terms here (ReLU links, 3 or more experts, a gate bias or "
                "non-Gaussian inputs); refinement started near, not at, the truth and "
                "reached a local optimum of the likelihood, most likely the global "
                "one. To check, compare score() with EMMoE(n_init=10).",
                SpectralReliabilityWarning,
                stacklevel=2,
            )
        if not self.fit_intercept and self.max_iter > 0:
            self._warn_about_offsets(X, y, params, rng)
        self.experts_, self.gating_ = slopes, gates
        if self.fit_intercept:
            self.intercept_ = params.experts[:, d]
            self.gating_intercept_ = params.gating[:, d]
        self.noise_std_ = float(params.noise_std)
        self.spectral_experts_ = spectral.experts
        self.converged_ = record.converged
        self.n_iter_ = record.n_iter
        self.log_likelihood_curve_ = record.history
        self.fit_times_ = times
        self.diagnostics_ = {
            "t2_eigenvalues": moments.t2_values,
            "spectral_gap": moments.spectral_gap,
            "tensor_eigenvalues": spectral.tensor_values,
            "mixing_weights": spectral.weights,
            "input_skewness": moments.inputs.skewness,
            "input_kurtosis": moments.inputs.excess_kurtosis,
            "spectral_shift": shift,
            "spectral_shift_ratio": shift / expected,
            **self._stage_diagnostics,
        }
        del self._stage_diagnostics
        return self

    def _gating_stage(self, X, y, params, gating_em, common) -> MoEParams:
        """Learn the gate with the spectral regressors fixed (a hook for subclasses
        whose gate depends on how the experts are arranged)."""
        return gating_em(params)

    def _second_start(self, X, y, params, common) -> MoEParams | None:
        """A second start for refinement that the refined fit ``params`` suggests,
        or ``None`` (a hook; the better of the two refined fits is kept)."""
        return None

    def _em(self, X, y, params, *, fit_experts, stage, **common):
        return em(
            X,
            y,
            params,
            fit_experts=fit_experts,
            fit_noise=self.noise_std is None,
            max_iter=self.max_iter,
            stage=stage,
            **common,
        )

    def _warn_about_offsets(self, X, y, params: MoEParams, rng) -> None:
        """Score test for the gate biases and expert intercepts the model lacks
        (intercepts only after refinement)."""
        n = X.shape[0]
        rows = (
            np.arange(n)
            if n <= _OFFSET_TEST_ROWS
            else np.sort(rng.choice(n, size=_OFFSET_TEST_ROWS, replace=False))
        )
        z_experts, z_gate = offset_score_statistics(X, y, params, rows)
        if not self.refine:
            # The score test needs the parameters at the model's MLE: without
            # refinement only the gate is (given the spectral regressors), and the
            # spectral regressors' own error shows as intercepts (z = 15 measured on
            # the demo's data, which have none).
            z_experts = np.zeros_like(z_experts)
        z = max(z_experts.max(), z_gate.max())
        if z > _OFFSET_Z:
            which = []
            if z_gate.max() > _OFFSET_Z:
                which.append(f"a gate bias (z = {z_gate.max():.1f})")
            if z_experts.max() > _OFFSET_Z:
                which.append(f"expert intercepts (z = {z_experts.max():.1f})")
            warnings.warn(
                f"the data show {' and '.join(which)} that the model has none of "
                f"(score test on {len(rows)} rows, z > {_OFFSET_Z:g}). The spectral "
                "step's identities assume no offsets, and the fitted model cannot "
                "represent them: use fit_intercept=True.",
                SpectralReliabilityWarning,
                stacklevel=3,
            )

    def _warn_about_inputs(
        self, moments: SpectralMoments, n: int, offsets_modelled: bool
    ) -> None:
        inputs = moments.inputs
        reasons = []
        skew_se, kurt_se = np.sqrt(6.0 / n), np.sqrt(24.0 / n)
        skewed = np.abs(inputs.skewness) > max(_SKEW_LIMIT, 5 * skew_se)
        heavy = np.abs(inputs.excess_kurtosis) > max(_KURTOSIS_LIMIT, 5 * kurt_se)
        if skewed.any() or heavy.any():
            cols = np.flatnonzero(skewed | heavy)
            reasons.append(
                f"{len(cols)} column(s) (e.g. {cols[:5].tolist()}) have skewness or "
                "excess kurtosis far from a Gaussian's 0"
            )
        white = inputs.whitening
        offset = float(np.linalg.norm(white.mean @ white.transform))
        if offset > _MEAN_LIMIT and not offsets_modelled:
            reasons.append(
                f"the inputs' mean is {offset:.2f} standard deviations from 0, so the "
                "model without intercepts has gate and expert offsets after centring "
                "(fit_intercept=True models them)"
            )
        d = white.mean.shape[0]
        expected = 3.0 * np.sqrt(d / n)
        if expected > 0.3:
            reasons.append(
                f"few samples: the spectral error is about 3*sqrt(d/n) = {expected:.2f} "
                f"(n={n}, d={d})"
            )
        if reasons:
            warnings.warn(
                "the spectral step's guarantees may not hold: "
                + "; ".join(reasons)
                + ". Its regressors can be biased; EM refinement (refine=True) "
                "corrects a moderate bias but may find a local optimum if it is large.",
                NonGaussianInputWarning,
                stacklevel=3,
            )

    def _warn_about_moments(self, moments: SpectralMoments) -> None:
        k, values = self.n_experts, moments.t2_values
        shown = np.round(values[: k + 1], 4).tolist()
        if not moments.sign_ok:
            problem = (
                f"T2 has fewer than {k} eigenvalues of the sign a {self.link} mixture "
                f"implies (top values {shown}); the largest magnitudes were used instead"
            )
        elif abs(values[k - 1]) < _MIN_SIGNAL_TO_NOISE * moments.t2_noise:
            problem = (
                f"T2's eigenvalue {k} is not separated from its sampling noise (top "
                f"values {shown}, noise level about {moments.t2_noise:.3g}): experts "
                "nearly parallel, too few samples, or no such structure in the data"
            )
        else:
            return
        warnings.warn(
            f"the spectral step cannot be trusted: {problem}. The data may not support "
            f"{k} experts or this link; the fit may be a poor local optimum.",
            SpectralReliabilityWarning,
            stacklevel=3,
        )


@dataclass
class _EMRecord:
    """Iterations, convergence and likelihood history over the EM stages of a fit."""

    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = True

    def add(self, result: EMResult) -> MoEParams:
        self.history += result.log_likelihood
        self.n_iter += result.n_iter
        self.converged = self.converged and result.converged
        return result.params


def _final_log_likelihood(result: EMResult) -> float:
    """The mean log-likelihood an EM run ended at (``-inf`` if it made no step)."""
    return result.log_likelihood[-1] if result.log_likelihood else -np.inf


def _matching_order(new: Array, old: Array) -> Array:
    """The order of ``new``'s rows that best matches ``old``'s, row by row."""
    cost = np.linalg.norm(new[:, None, :] - old[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost.T)
    return cols[np.argsort(rows)]


def _initial_noise(X: Array, y: Array, params: MoEParams, known: float | None) -> float:
    """Starting ``sigma`` for EM: the known value, else the RMS best-expert residual."""
    if known is not None:
        return float(known)
    g = get_link(params.link).func
    m = min(len(y), 20_000)
    resid = y[:m, None] - g(take_rows(X, slice(0, m)) @ params.experts.T)
    rms = float(np.sqrt(np.mean(np.min(resid**2, axis=1))))
    return max(rms, 1e-6 * float(np.std(y)) + 1e-12)
