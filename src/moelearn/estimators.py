"""User-facing estimators: thin classes over the kernels."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import linear_sum_assignment

from moelearn import _em_batch, _starts
from moelearn import _validation as v
from moelearn._base import MoEBase, names_singular_columns, shares_the_cores
from moelearn._docstrings import shared_entries
from moelearn._em import (
    MIN_EXPERT_WEIGHT,
    ColumnMoments,
    EMResult,
    em,
    em_columns,
    offset_score_statistics,
)
from moelearn._links import get_link
from moelearn._model import MoEParams, log_likelihood_terms, n_gate_rows
from moelearn._moments import Whitening, input_whitening
from moelearn._passes import RowSource, take_rows
from moelearn._scores import ScoreFunction, density_from_estimator
from moelearn._spectral import SpectralMoments, spectral_moments, spectral_solve
from moelearn.exceptions import (
    ConvergenceWarning,
    ExpertsDroppedWarning,
    FitError,
    NonGaussianInputWarning,
    SpectralReliabilityWarning,
    not_converged_message,
    warn,
)
from moelearn.metrics import parameter_error

Array = np.ndarray

__all__ = ["NonGaussianInputWarning", "SpectralMoE", "SpectralReliabilityWarning"]


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
#: probability 6e-7 per statistic when there are none; on 50 000 rows it flags a
#: mean score of 0.022 standard deviations (the test costs half a pass at n = 1e6,
#: d = 50; on 200 000 rows it cost two).
_OFFSET_TEST_ROWS, _OFFSET_Z = 50_000, 5.0
# Alternative starts (SpectralMoE._other_starts): regression splits and random
# starts (more on small tables, up to _MAX_RANDOM_STARTS), short runs of
# _SHORT_ITER iterations on at most _SHORT_ROWS rows, of which the best
# _CONTINUED (twice as many on small tables) go on on all rows.
_N_SPLIT_STARTS, _N_RANDOM_STARTS, _MAX_RANDOM_STARTS, _SHORT_ITER = 2, 6, 20, 10
_SHORT_ROWS, _CONTINUED = 5000, 2
#: Gating EM before refinement learns the gate on this many rows per gate
#: parameter (at least _SHORT_ROWS; all rows when the table has fewer than twice).
_GATING_ROWS_PER_PARAMETER = 20
# Short runs that go all at once (moelearn._em_batch) take this many generalised
# EM iterations: about as cheap as _SHORT_ITER of one start at a time. On a small
# table (the runs see every row) they run to the end instead (max_iter): ranked
# after 30 iterations, a slower start that would end higher was cut (NPreg and
# Boston, k = 3: 4 of 20 random_states ended 0.013-0.040 per row below EMMoE(10)).
_BATCH_ITER = 30
#: The whole-table runs stop at this fraction of ``tol``: classic EM converges linearly,
#: so on a slow climb a step below ``tol`` can still be far from the maximum (Boston,
#: 4 experts: one start stopped at 0.1143 per row with tol 1e-4 and 1e-5, and
#: reached 0.1222 with 1e-6, where EM's Newton steps take it).
_WHOLE_TABLE_TOL = 0.01
_MIN_SHARE = MIN_EXPERT_WEIGHT
#: Mean log-likelihoods closer than this (relative) are a tie between chains.
_TIE = 1e-12


@shared_entries
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
    noise_type : {'shared', 'per_expert'}, default='shared'
        One noise level for all experts, or one per expert (``sigma_j``, as R's
        flexmix and mixtools fit). The spectral step's transforms of ``y`` assume
        a shared level; EM then fits one per expert.
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
    extra_starts : {'auto', 'always', 'never'}, default='auto'
        Also run EM from cheap alternative starts (two splits of the one-expert
        least-squares fit with random gates, and the least-squares residuals'
        quantile bands; :mod:`moelearn._starts`): 10 iterations each, the most
        likely one then to convergence, and keep it if it beats the spectral
        start. ``'auto'`` does so when the diagnostics doubt the moments
        (non-Gaussian inputs, a weak ``T2``, a large refinement shift) or the fit
        ended below the one-expert model; every start's result is in
        ``diagnostics_['starts']``. A regression split starts exactly at the
        one-expert model, so the fit's likelihood is never below it.
    input_density : str, int, GaussianMixture or callable, default='gaussian'
        Whose Stein scores ``S_m = (-1)^m grad^m p / p`` the moments use
        (docs/method.md, section 3b). ``'gaussian'``: the inputs' Gaussian
        approximation (the Hermite tensors of the whitened inputs). ``'mixture'``:
        a Gaussian mixture with full covariances fitted to a row sample
        (scikit-learn's ``GaussianMixture``, its size chosen by BIC among 1 to 5);
        an int fixes the size; a fitted ``GaussianMixture`` over the same columns
        is used as given (for cross-validation wrap it in
        ``sklearn.frozen.FrozenEstimator``, or ``clone`` unfits it). Then
        ``S_m = sum_c r_c(x) S_m^(c)(x)`` (``r_c`` the components'
        responsibilities): 3 passes, the ``T2`` pass ``O(C d^2)`` a row, the
        ``T3`` pass ``O(C d k)`` (it reuses the responsibilities kept by the
        first, ``n x C`` single-precision numbers). A callable ``score(X)``
        returning ``grad log p`` for rows ``X`` (same shape, the columns' units)
        is differenced for the higher scores (``2 d + 1`` calls a row for
        ``T2``, ``2 (k + 2) + 1`` when ``d > 2 (k + 6)``, ``1 + 2k + 2k^2`` for
        ``T3``). The
        right scores remove the bias the inputs' shape gives the moments; what
        an asymmetric density leaves of the gate's cross terms stays (refinement
        corrects it). The gain is largest on inputs with clusters or skewed,
        heavy-tailed columns (docs/results.md, section 8).
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
    noise_std_ : float or ndarray of shape (n_experts_,)
        Noise level ``sigma`` (one per expert with ``noise_type='per_expert'``).
    n_experts_ : int
        Experts in the fitted model: fewer than ``n_experts`` when EM dropped an
        expert whose share of the posterior weight fell below 0.5 % (or two rows
        per column); an ``ExpertsDroppedWarning`` says so.
    spectral_experts_ : ndarray of shape (n_experts, n_features) or None
        The regressors from the spectral step alone; None when it could not run
        (more experts than input columns).
    converged_ : bool
        Whether every EM stage met ``tol`` within ``max_iter``.
    n_iter_ : int
        EM iterations over all stages.
    log_likelihood_curve_ : list of float
        Mean log-likelihood at each EM iteration.
    diagnostics_ : dict
        ``t2_eigenvalues``, ``spectral_gap``, ``tensor_eigenvalues``,
        ``mixing_weights`` (spectral), ``input_skewness``, ``input_kurtosis``,
        ``one_expert_log_likelihood``, ``starts`` (each start's name, mean
        log-likelihood, iterations, convergence, experts), ``kept_start``,
        ``dropped_experts``, ``input_density`` (whose scores the spectral step
        used: ``name``, ``n_components``, the ``bic`` of each size tried and
        whether the mixture's EM ``converged``; scikit-learn's warning is not
        shown).
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

    # more experts than columns: the alternative starts alone (see _fit)
    _one_expert_per_feature = False

    _parameter_constraints: ClassVar[dict] = {
        **MoEBase._common_constraints,
        "refine": v.boolean,
        "fit_intercept": v.boolean,
        "noise_type": v.one_of("shared", "per_expert"),
        "extra_starts": v.one_of("auto", "always", "never"),
        "input_density": v.density_rule,
    }
    # After the gating stage, restart from the spectral regressors re-solved at the
    # estimated noise (subclasses whose gating stage moves the experts do not).
    _restart_from_spectral: ClassVar[bool] = True
    _spectral_step = True

    def __init__(
        self,
        n_experts: int = 2,
        *,
        link: str = "linear",
        noise_std: float | None = None,
        noise_type: str = "shared",
        refine: bool = True,
        fit_intercept: bool = False,
        extra_starts: str = "auto",
        input_density="gaussian",
        max_iter: int = 200,
        tol: float = 1e-4,
        n_init: int = 10,
        random_state=None,
        verbose: int = 0,
    ):
        self.n_experts = n_experts
        self.link = link
        self.noise_std = noise_std
        self.noise_type = noise_type
        self.refine = refine
        self.fit_intercept = fit_intercept
        self.extra_starts = extra_starts
        self.input_density = input_density
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    @names_singular_columns
    @shares_the_cores
    def fit(self, X, y, sample_weight=None):
        """Learn the parameters from samples ``X`` and targets ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs: a NumPy array or memory map, a pandas or polars DataFrame, a
            Dask array or a PyTorch tensor.
        y : array-like of shape (n_samples,)
            Targets.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights; the moments become weighted means and EM
            maximises ``sum_i w_i log p(y_i | x_i)`` (an integer weight acts as
            that many copies of the row).

        {Returns:fitted}
        """
        return self._fit(X, y, sample_weight)

    def _fit(self, X, y, sample_weight=None, warm_starts=()):
        """The stages of :meth:`fit`; ``warm_starts`` (parameters on EM's columns)
        join the alternative starts (``select_n_experts`` passes the fit with one
        expert fewer, split)."""
        ctx = self._prepare(X, y, sample_weight)
        warm_starts = [
            self._raw_params(w, ctx.n_features, inverse=True) for w in warm_starts
        ]
        race = False
        if self.n_experts > ctx.n_features:
            moments, fit = None, self._without_spectral(ctx)
        else:
            moments, spectral = self._spectral_stage(ctx)
            race = self._refine_in_race(ctx)
            fit = self._moment_path(ctx, moments, spectral, refine=not race)
        fit = self._other_starts(ctx, fit, list(warm_starts), race)
        self._check_fit(ctx, fit)
        self._set_fitted(ctx, fit, moments)
        return self

    # ---------------------------------------------------------------- stages
    def _prepare(self, X, y, sample_weight) -> _FitContext:
        """Check the settings and data; the context the stages share."""
        rng, X, y = self._begin_fit(X, y)
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0])
        for name in ("intercept_", "gating_intercept_"):  # from an earlier fit
            self.__dict__.pop(name, None)
        n, d = X.shape
        self._log(
            1, f"fitting {self.n_experts} {self.link} experts to {n} x {d} inputs"
        )
        return _FitContext(
            X=X,
            y=y,
            sample_weight=sample_weight,
            rng=rng,
            n_features=d,
            callback=self._progress if self.verbose >= 2 else None,
        )

    def _spectral_stage(self, ctx: _FitContext):
        """Method 1's moments and tensor step; the input and moment checks."""
        start = time.perf_counter()
        link = get_link(self.link)
        moments = spectral_moments(
            ctx.X,
            ctx.y,
            link,
            self.n_experts,
            ctx.rng,
            ctx.sample_weight,
            self._input_density(ctx.n_features),
        )
        ctx.flags += self._warn_about_inputs(
            moments, ctx.X.shape[0], offsets_modelled=self.fit_intercept
        )
        ctx.flags += self._warn_about_moments(moments)
        noise = self.noise_std if self.noise_std is not None else 0.0
        spectral = spectral_solve(moments, noise, ctx.rng, self.n_init)
        ctx.set_columns(moments.inputs.whitening, self.fit_intercept, moments.x_y)
        ctx.times["spectral"] = time.perf_counter() - start
        self._log(1, f"spectral step done in {ctx.times['spectral']:.2f} s")
        return moments, spectral

    def _first_pass_checks_finite(self, X) -> bool:
        """With Gaussian scores and at most one expert per column, the spectral
        step's first pass (:func:`moelearn._moments.input_pass`) sums every
        value of ``X`` and names a NaN or infinite one; validation skips its own
        pass. (A mixture density is fitted to a row sample before that pass.)"""
        return (
            self.n_experts <= X.shape[1]
            and isinstance(self.input_density, str)
            and self.input_density == "gaussian"
        )

    def _without_spectral(self, ctx: _FitContext) -> _Candidate:
        """More experts than input columns: the tensor step, which finds one
        regressor per whitened direction, cannot run; the fit comes from the
        alternative starts alone (an empty candidate they all beat)."""
        if self.max_iter == 0:
            raise ValueError(
                f"n_experts={self.n_experts} exceeds n_features={ctx.n_features}: "
                "the spectral step finds at most one expert per input column, and "
                "max_iter=0 leaves nothing else; set max_iter > 0"
            )
        warn(
            f"n_experts={self.n_experts} exceeds n_features={ctx.n_features}: the "
            "spectral step finds at most one expert per input column and was "
            "skipped; the fit comes from EM's alternative starts (regression "
            "splits, random starts, residual bands; diagnostics_['starts'])",
            SpectralReliabilityWarning,
        )
        ctx.set_columns(input_whitening(ctx.X), self.fit_intercept)
        ctx.flags.append("features")
        D, rows = ctx.X_em.shape[1], n_gate_rows(self.n_experts, self._gate)
        empty = MoEParams(
            np.zeros((self.n_experts, D)), np.zeros((rows, D)), 1.0, self.link
        )
        return _Candidate("spectral (skipped)", empty)

    def _refine_in_race(self, ctx: _FitContext) -> bool:
        """Whether the spectral start is refined in the start race instead of on
        its own: when the race will run anyway (the diagnostics already doubt the
        moments, or it is asked for) and its short runs go all at once
        (:func:`moelearn._em_batch.supports`), the spectral start joins them
        after gating EM, so that it costs a full refinement only if it leads."""
        return (
            self.refine
            and self.max_iter > 0
            and (self.extra_starts == "always" or bool(ctx.flags))
            and self.extra_starts != "never"
            and _em_batch.supports(self.link, self._gate, self.noise_std is None)
        )

    def _moment_path(
        self, ctx: _FitContext, moments, spectral, refine: bool = True
    ) -> _Candidate:
        """From the spectral regressors: gating EM, then (if ``refine``) joint-EM
        refinement."""
        fit = self._spectral_candidate(ctx, spectral)
        if self.max_iter == 0:
            return fit
        self._gating_path(ctx, fit, moments, spectral, refine)
        if self.refine and refine:
            self._refinement(ctx, fit)
        return fit

    def _spectral_candidate(self, ctx: _FitContext, spectral) -> _Candidate:
        """The spectral regressors as a start: intercepts through the means, a
        flat gate, the noise level they leave."""
        k = self.n_experts
        experts = spectral.experts
        if self.fit_intercept:
            # Each intercept starts where the expert's line passes through the
            # means, b_j = mean(y) - a_j . mean(x).
            y_mean = np.average(ctx.y, weights=ctx.sample_weight)
            offsets = y_mean - experts @ ctx.whitening.mean
            experts = np.column_stack([experts, offsets])
        gate_shape = (n_gate_rows(k, self._gate), ctx.X_em.shape[1])
        sigma = _initial_noise(
            ctx.X_em,
            ctx.y,
            MoEParams(experts, np.zeros(gate_shape), 1.0, self.link),
            self.noise_std,
        )
        noise = np.full(k, sigma) if self.noise_type == "per_expert" else sigma
        params = MoEParams(experts, np.zeros(gate_shape), noise, self.link, self._gate)
        return _Candidate("spectral", params, spectral_experts=spectral.experts)

    def _gating_path(
        self, ctx: _FitContext, fit: _Candidate, moments, spectral, refine: bool
    ) -> None:
        """Gating EM with the spectral regressors fixed; then the moments re-solved
        at the noise level it found (no pass over the data)."""
        d = ctx.n_features
        start = time.perf_counter()
        # Before refinement the gate only has to be a good start: a looser tol,
        # and a subset of the rows (ctx.gating_rows).
        gating_tol = (
            max(self.tol, _GATING_TOL_BEFORE_REFINE) if self.refine else self.tol
        )

        def gating_em(params: MoEParams) -> MoEParams:
            if not refine:
                # in the race the spectral start is one of the short runs'
                # starts: its gate is learned on their rows, by their steps
                batched = self._batched_em(
                    ctx, [params], self.max_iter, gating_tol, fit_experts=False
                )
                return fit.add(batched[0])
            rows = ctx.gating_rows(params.gating.size) if self.refine else None
            return fit.add(
                self._em(
                    ctx,
                    params,
                    fit_experts=False,
                    stage="gating",
                    tol=gating_tol,
                    rows=rows,
                )
            )

        params = self._gating_stage(ctx, fit.params, gating_em)
        fit.mixing_weights, fit.tensor_values = spectral.weights, spectral.tensor_values
        if self.noise_std is None:
            # Re-solve at the estimated noise, keeping each expert in the place
            # the gate learned for it.
            pooled = float(np.sqrt(np.mean(np.square(params.noise_std))))
            spectral = spectral_solve(moments, pooled, ctx.rng, self.n_init)
            order = _matching_order(spectral.experts, params.experts[:, :d])
            fit.spectral_experts = spectral.experts[order]
            fit.mixing_weights = spectral.weights[order]
            fit.tensor_values = spectral.tensor_values[order]
            if self._restart_from_spectral:
                experts = np.column_stack([fit.spectral_experts, params.experts[:, d:]])
                params = replace(params, experts=experts)
                if not self.refine:  # let the gate adjust to the new regressors
                    params = gating_em(params)
        fit.params = params
        ctx.times["gating"] = time.perf_counter() - start
        self._log(
            1,
            f"gating EM done in {ctx.times['gating']:.2f} s ({fit.n_iter} iterations)",
        )

    def _batched_em(
        self, ctx: _FitContext, starts, max_iter: int, tol: float, fit_experts=True
    ) -> list[EMResult]:
        """:func:`moelearn._em_batch.batched_em` from ``starts`` on the start
        race's rows."""
        X, y, weights = ctx.short_table
        return _em_batch.batched_em(
            X,
            y,
            starts,
            covariance=ctx.moments.metric,
            max_iter=max_iter,
            tol=tol,
            sample_weight=weights,
            fit_experts=fit_experts,
        )

    def _refinement(self, ctx: _FitContext, fit: _Candidate) -> None:
        """Joint EM from the gated spectral start (and from the second start a
        subclass suggests, keeping the better); the shift check."""
        start, before = time.perf_counter(), fit.n_iter
        first = self._em(ctx, fit.params, fit_experts=True, stage="refine")
        fit.add(first)
        second_start = self._second_start(ctx, fit.params)
        if second_start is not None:
            second = self._em(ctx, second_start, fit_experts=True, stage="refine")
            if second.final_log_likelihood > first.final_log_likelihood:
                fit.add(second, replace_history=True)
                self._log(1, "the second start reached a higher likelihood")
            else:
                fit.n_iter += second.n_iter
        ctx.times["refine"] = time.perf_counter() - start
        self._log(
            1,
            f"refinement done in {ctx.times['refine']:.2f} s "
            f"({fit.n_iter - before} iterations)",
        )
        ctx.flags += self._warn_about_shift(ctx, fit)

    def _other_starts(
        self,
        ctx: _FitContext,
        fit: _Candidate,
        warm_starts: list[MoEParams],
        race: bool = False,
    ) -> _Candidate:
        """The one-expert model and, when asked (or when the diagnostics doubt the
        moments, or there are warm starts, or the fit is below one expert),
        other starts (:mod:`moelearn._starts`): warm starts run on all rows;
        the cheap starts run :data:`_SHORT_ITER` iterations on at most
        :data:`_SHORT_ROWS` rows, and the best :data:`_CONTINUED` of them (twice
        as many when the short runs saw every row) go on on all rows while they
        can still win (:meth:`_race`). The most likely
        chain is kept; if it is below one expert, the one-expert start is run on
        all rows (EM from that model cannot end below it). With ``race`` the
        spectral start ``fit`` (gated, not refined) is one of the short runs'
        starts."""
        lsq = _starts.least_squares(
            ctx.X_em,
            ctx.y,
            *ctx.moments.known(),
            ctx.sample_weight,
            ctx.moments.x_y,
        )
        ctx.diagnostics["one_expert_log_likelihood"] = lsq.log_likelihood
        if not race:
            ctx.starts.append(fit.summary())
        wanted = self.extra_starts == "always" or (
            self.extra_starts == "auto"
            and (ctx.flags or warm_starts or fit.log_likelihood < lsq.log_likelihood)
        )
        if self.max_iter == 0 or not wanted:
            return fit
        start = time.perf_counter()
        pool = self._start_pool(ctx, lsq)
        one_expert = pool[0][1]
        best = fit
        if race:
            pool.insert(0, (fit.name, fit.params))
            best = _Candidate("(none yet)", fit.params)  # every chain beats it
        for i, warm in enumerate(warm_starts):  # (k - 1 experts, split)
            if self.noise_type == "per_expert" and np.ndim(warm.noise_std) == 0:
                warm = replace(warm, noise_std=np.full(warm.n_experts, warm.noise_std))
            best = self._continue(ctx, _Candidate(f"warm start {i + 1}", warm), best)
        # (in the race, the spectral chain's record includes its gating EM)
        best = self._run_pool(ctx, pool, best, {fit.name: fit.n_iter} if race else {})
        if best.log_likelihood < lsq.log_likelihood:
            best = self._continue(ctx, _Candidate("one expert", one_expert), best)
        ctx.times["other_starts"] = time.perf_counter() - start
        if race:  # the spectral chain's record first, as without the race
            ctx.starts.sort(key=lambda record: record["start"] != fit.name)
        if best is not fit:
            self._log(1, f"the start '{best.name}' reached a higher likelihood")
        best.spectral_experts = fit.spectral_experts
        best.mixing_weights, best.tensor_values = fit.mixing_weights, fit.tensor_values
        return best

    def _run_pool(
        self, ctx: _FitContext, pool, best: _Candidate, earlier: dict[str, int]
    ) -> _Candidate:
        """Short runs from every start of ``pool``; the most likely continue on
        all rows against ``best`` while they can win; the winner. ``earlier``:
        iterations some starts' chains ran before (by name)."""
        subset, shorts = self._short_runs(ctx, pool)
        for short in shorts:
            short.n_iter += earlier.get(short.name, 0)
        reference = best.log_likelihood  # the leader, on the short runs' rows
        if subset is not None and np.isfinite(reference):
            reference = _short_rows_log_likelihood(ctx, best.params)
        # small tables (short runs on all rows): continuing is cheap, so more do
        continued = _CONTINUED if subset is not None else 2 * _CONTINUED
        for rank, short in enumerate(shorts):
            promising = _extrapolated(short.history) > reference + self.tol**2
            if rank >= continued or not promising:
                ctx.starts.append(short.summary(rows=subset))
                continue
            if subset is not None:
                short.history = []  # the subset's values are not comparable
            best = self._continue(ctx, short, best, resume=subset is None)
        return best

    def _start_pool(self, ctx: _FitContext, lsq) -> list[tuple[str, MoEParams]]:
        """The cheap starts, shaped for the experts asked for: regression splits
        (the first is the one-expert model), random starts, residual bands."""
        white, mean = ctx.whitening, ctx.moments.known()[0]
        k, rows = self.n_experts, n_gate_rows(self.n_experts, self._gate)
        D = ctx.X_em.shape[1]
        noise = lsq.noise_std if self.noise_std is None else self.noise_std
        template = MoEParams(
            np.zeros((k, D)),
            np.zeros((rows, D)),
            np.full(k, noise) if self.noise_type == "per_expert" else float(noise),
            self.link,
            self._gate,
        )
        pool = [
            (
                f"regression split {i + 1}",
                _starts.regression_split(
                    lsq, k, rows, ctx.rng, mean, white.transform, template
                ),
            )
            for i in range(_N_SPLIT_STARTS)
        ]
        w = ctx.sample_weight
        y_mean = float(np.average(ctx.y, weights=w))
        y_std = float(np.sqrt(np.average((ctx.y - y_mean) ** 2, weights=w)))
        # small tables: more random starts, as their runs are cheap
        n_random = int(
            np.clip(
                _N_RANDOM_STARTS * _SHORT_ROWS / len(ctx.y),
                _N_RANDOM_STARTS,
                _MAX_RANDOM_STARTS,
            )
        )
        randoms = _starts.random_starts(
            ctx.rng,
            n_random,
            template,
            mean,
            white.transform,
            y_mean if self.fit_intercept else 0.0,
            y_std if self.link == "linear" else 1.0,
        )
        pool += [(f"random {i + 1}", params) for i, params in enumerate(randoms)]
        bands = _starts.residual_bands(ctx.X_em, ctx.y, lsq, template, ctx.rng)
        return [*pool, ("residual bands", bands)]

    def _short_runs(self, ctx: _FitContext, pool) -> tuple[Array | None, list]:
        """:data:`_SHORT_ITER` EM iterations from each start, on a random subset
        of :data:`_SHORT_ROWS` rows when there are more; most likely first. For
        linear experts with a softmax gate all starts run at once
        (:func:`moelearn._em_batch.batched_em`, generalised EM steps); otherwise
        one after another (:func:`moelearn._em.em`); all at once, when they see
        every row, they run to the end (``max_iter``)."""
        subset = ctx.short_rows
        if _em_batch.supports(self.link, self._gate, self.noise_std is None):
            starts = [params for _, params in pool]
            if subset is not None:
                results = self._batched_em(ctx, starts, _BATCH_ITER, self.tol)
            else:  # to their end, at the tighter tolerance (_WHOLE_TABLE_TOL)
                tol = self.tol * _WHOLE_TABLE_TOL
                results = self._batched_em(ctx, starts, self.max_iter, tol)
        else:
            results = [
                self._em(
                    ctx,
                    params,
                    fit_experts=True,
                    stage=name,
                    max_iter=_SHORT_ITER,
                    rows=subset,
                )
                for name, params in pool
            ]
        shorts = []
        for (name, params), result in zip(pool, results, strict=True):
            short = _Candidate(name, params)
            short.add(result)
            shorts.append(short)
        shorts.sort(key=lambda c: c.log_likelihood, reverse=True)
        return subset, shorts

    def _continue(
        self, ctx: _FitContext, chain: _Candidate, best: _Candidate, resume=False
    ) -> _Candidate:
        """Race ``chain`` on all rows against ``best`` (unless ``resume`` and it
        has converged already); record it; the more likely of the two."""
        if not (resume and chain.converged):
            self._race(ctx, chain, best.log_likelihood)
        ctx.starts.append(chain.summary())
        # chains that reach the same maximum differ by rounding (which depends on
        # how the rows were summed): the earlier keeps it
        leader = best.log_likelihood
        margin = _TIE * (1.0 + abs(leader)) if np.isfinite(leader) else 0.0
        return chain if chain.log_likelihood > leader + margin else best

    def _race(self, ctx: _FitContext, chain: _Candidate, leader: float) -> None:
        """Continue ``chain`` on all rows, :data:`_SHORT_ITER` iterations at a
        time, until it converges, runs out of ``max_iter``, or its extrapolated
        log-likelihood (:func:`_extrapolated`) falls below the ``leader``'s
        (judged first from the record it brings: a short run on all rows)."""
        used = 0
        while used < self.max_iter:
            if _extrapolated(chain.history) < leader - self.tol**2:
                return  # (left unconverged: it cannot win)
            budget = min(_SHORT_ITER, self.max_iter - used)
            result = self._em(
                ctx, chain.params, fit_experts=True, stage=chain.name, max_iter=budget
            )
            chain.add(result)
            used += result.n_iter
            if chain.converged or result.n_iter < budget:
                return

    def _check_fit(self, ctx: _FitContext, fit: _Candidate) -> None:
        """Refuse non-finite results; warn about dropped experts, no convergence
        and offsets the model lacks."""
        params = fit.params
        values = [params.experts, params.gating, np.asarray(params.noise_std)]
        if not all(np.all(np.isfinite(a)) for a in values):
            raise FitError(
                "the fit ended with non-finite parameters; standardise the columns "
                "of X and y, or try fewer experts or fit_intercept=True"
            )
        if fit.dropped:
            warn(
                f"{len(fit.dropped)} of {self.n_experts} experts fell below "
                f"{100 * _MIN_SHARE:g}% of the posterior weight (or 2 rows per "
                f"column) and were dropped: the data support {params.n_experts} "
                f"experts here (n_experts_), as R's flexmix would report. Fit "
                "fewer experts, or use select_n_experts.",
                ExpertsDroppedWarning,
            )
        if self.max_iter > 0 and not fit.converged:
            warn(
                not_converged_message("EM", self.max_iter, self.tol),
                ConvergenceWarning,
            )
        if not self.fit_intercept and self.max_iter > 0:
            self._warn_about_offsets(ctx.X_em, ctx.y, params, ctx.rng)

    def _set_fitted(self, ctx: _FitContext, fit: _Candidate, moments) -> None:
        self._set_parameters(fit.params, ctx.n_features)
        self.spectral_experts_ = fit.spectral_experts
        if self._scales is not None and fit.spectral_experts is not None:
            s, t = self._scales
            self.spectral_experts_ = fit.spectral_experts * t / s
        self.converged_ = fit.converged
        self.n_iter_ = fit.n_iter
        self.log_likelihood_curve_ = list(self._in_raw_units(fit.history))
        for start in ctx.starts:
            start["log_likelihood"] = float(self._in_raw_units(start["log_likelihood"]))
        if "one_expert_log_likelihood" in ctx.diagnostics:
            ctx.diagnostics["one_expert_log_likelihood"] = float(
                self._in_raw_units(ctx.diagnostics["one_expert_log_likelihood"])
            )
        self.fit_times_ = ctx.times
        self.diagnostics_ = {
            "t2_eigenvalues": None if moments is None else moments.t2_values,
            "spectral_gap": None if moments is None else moments.spectral_gap,
            "tensor_eigenvalues": fit.tensor_values,
            "mixing_weights": fit.mixing_weights,
            "input_skewness": None if moments is None else moments.inputs.skewness,
            "input_kurtosis": (
                None if moments is None else moments.inputs.excess_kurtosis
            ),
            "starts": ctx.starts,
            "kept_start": fit.name,
            "dropped_experts": fit.dropped,
            "input_density": None if moments is None else moments.density,
            **ctx.diagnostics,
        }

    # ------------------------------------------------------------- helpers
    def _input_density(self, n_features: int):
        """``input_density`` as :func:`spectral_moments` takes it: a fitted
        mixture becomes a :class:`MixtureDensity` over the (rescaled) columns."""
        spec = self.input_density
        if isinstance(spec, (str, int, np.integer)):
            return spec if isinstance(spec, str) else int(spec)
        if callable(spec):
            if self._scales is None:
                return ScoreFunction(spec)
            # the fit sees x' = x / s, whose score is s * score(s * x')
            return ScoreFunction(partial(_rescaled_score, spec, self._scales[0]))
        density = density_from_estimator(spec, n_features)
        if self._scales is not None:  # the fit sees X / s
            density = density.affine(np.zeros(n_features), np.diag(1 / self._scales[0]))
        return density

    def _gating_stage(self, ctx: _FitContext, params, gating_em) -> MoEParams:
        """Learn the gate with the spectral regressors fixed (a hook for subclasses
        whose gate depends on how the experts are arranged)."""
        return gating_em(params)

    def _second_start(self, ctx: _FitContext, params) -> MoEParams | None:
        """A second start for refinement that the refined fit ``params`` suggests,
        or ``None`` (a hook; the better of the two refined fits is kept)."""
        return None

    def _em(
        self,
        ctx: _FitContext,
        params,
        *,
        fit_experts,
        stage,
        tol=None,
        max_iter=None,
        rows: Array | None = None,
    ) -> EMResult:
        """EM on the fit's data (or on its ``rows``) with this estimator's
        settings."""
        common = ctx.common()
        X, y = ctx.X_em, ctx.y
        if rows is not None:
            X, y = take_rows(X, rows), y[rows]
            if ctx.sample_weight is not None:
                common["sample_weight"] = ctx.sample_weight[rows]
        return em(
            X,
            y,
            params,
            fit_experts=fit_experts,
            fit_noise=self.noise_std is None,
            max_iter=self.max_iter if max_iter is None else max_iter,
            tol=self.tol if tol is None else tol,
            stage=stage,
            **common,
        )

    def _warn_about_shift(self, ctx: _FitContext, fit: _Candidate) -> list[str]:
        """Warn when refinement moved the regressors far beyond the spectral
        step's sampling error (its moments were biased)."""
        d, n = ctx.n_features, ctx.X.shape[0]
        slopes = fit.params.experts[:, :d]
        assert fit.spectral_experts is not None  # (the moment path's candidate)
        if slopes.shape[0] != fit.spectral_experts.shape[0]:
            return ["dropped"]
        shift = parameter_error(fit.spectral_experts, slopes, experts_only=True)
        expected = 3.0 * np.sqrt(d / n) * max(1.0, float(np.abs(slopes).max()))
        ctx.diagnostics["spectral_shift"] = shift
        ctx.diagnostics["spectral_shift_ratio"] = shift / expected
        if shift <= _MAX_SPECTRAL_SHIFT * expected:
            return []
        warn(
            f"the spectral step was biased: refinement moved the regressors by "
            f"{shift:.3g}, {shift / expected:.0f} times the spectral step's "
            f"sampling error (about {expected:.2g}). The moment identities carry "
            "cross terms here (ReLU links, 3 or more experts, a gate bias or "
            "non-Gaussian inputs); refinement started near, not at, the truth. "
            "With extra_starts='auto' (the default) cheap alternative starts were "
            "also tried and the most likely fit kept (diagnostics_['starts']).",
            SpectralReliabilityWarning,
        )
        return ["shift"]

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
        z = max(z_experts.max(initial=0.0), z_gate.max(initial=0.0))
        if z > _OFFSET_Z:
            which = []
            if z_gate.max(initial=0.0) > _OFFSET_Z:
                which.append(f"a gate bias (z = {z_gate.max():.1f})")
            if z_experts.max(initial=0.0) > _OFFSET_Z:
                which.append(f"expert intercepts (z = {z_experts.max():.1f})")
            warn(
                f"the data show {' and '.join(which)} that the model has none of "
                f"(score test on {len(rows)} rows, z > {_OFFSET_Z:g}). The spectral "
                "step's identities assume no offsets, and the fitted model cannot "
                "represent them: use fit_intercept=True.",
                SpectralReliabilityWarning,
            )

    def _warn_about_inputs(
        self, moments: SpectralMoments, n: int, offsets_modelled: bool
    ) -> list[str]:
        """Warn when the inputs break the spectral step's assumptions (shape,
        offsets, too few rows); the reason flag, or none."""
        inputs = moments.inputs
        reasons, suggest = self._shape_reasons(moments, n)
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
            advice = (
                " input_density='mixture' (CLI: --input-density mixture) uses the "
                "scores of a Gaussian mixture fitted to the inputs instead, which "
                "cut this bias by 2 to 20 times on clustered, skewed and "
                "heavy-tailed inputs (docs/results.md, section 8)."
                if suggest
                else ""
            )
            warn(
                "the spectral step's guarantees may not hold: "
                + "; ".join(reasons)
                + ". Its regressors can be biased; EM refinement (refine=True) "
                "corrects a moderate bias but may find a local optimum if it is "
                "large." + advice,
                NonGaussianInputWarning,
            )
        return ["inputs"] if reasons else []

    def _shape_reasons(self, moments: SpectralMoments, n: int) -> tuple[list, bool]:
        """What the inputs' shape says against the scores used: skewed or
        heavy-tailed columns under Gaussian scores, discrete columns under a
        fitted mixture; and whether to suggest the mixture's scores."""
        inputs = moments.inputs
        reasons = []
        skew_se, kurt_se = np.sqrt(6.0 / n), np.sqrt(24.0 / n)
        skewed = np.abs(inputs.skewness) > max(_SKEW_LIMIT, 5 * skew_se)
        heavy = np.abs(inputs.excess_kurtosis) > max(_KURTOSIS_LIMIT, 5 * kurt_se)
        names = self.column_names()

        def name(j: int) -> str:
            return names[j] if names is not None else str(j)

        # A density's own scores account for the shape (docs/method.md, 3b), but
        # a continuous mixture fitted to discrete columns gives unreliable ones.
        modelled = moments.density["n_components"] != 1
        discrete = np.flatnonzero(inputs.few_values)
        suggest = False
        if modelled and moments.density["name"] != "score function" and discrete.size:
            listed = ", ".join(name(j) for j in discrete[:5])
            reasons.append(
                f"the Gaussian mixture was fitted to {discrete.size} column(s) with "
                f"few distinct values ({listed}): no continuous density describes "
                "them, so their scores are unreliable (input_density='gaussian' "
                "may serve better; docs/results.md, section 8)"
            )
        if (skewed.any() or heavy.any()) and not modelled:
            suggest = not discrete.size
            cols = np.flatnonzero(skewed | heavy)
            shown = ", ".join(
                f"{name(j)} (skewness "
                f"{inputs.skewness[j]:.1f}, excess kurtosis "
                f"{inputs.excess_kurtosis[j]:.1f})"
                for j in cols[:3]
            )
            more = f" and {len(cols) - 3} more" if len(cols) > 3 else ""
            reasons.append(
                f"{len(cols)} column(s) have skewness or excess kurtosis far from a "
                f"Gaussian's 0: {shown}{more}"
            )
        return reasons, suggest

    def _warn_about_moments(self, moments: SpectralMoments) -> list[str]:
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
            return []
        warn(
            f"the spectral step cannot be trusted: {problem}. The data may not support "
            f"{k} experts or this link; the fit may be a poor local optimum.",
            SpectralReliabilityWarning,
        )
        return ["moments"]


@dataclass
class _FitContext:
    """What the stages of one fit share: the data as EM sees them (``[X, 1]``
    with intercepts), the input moments, the random generator, and what the
    stages report (times, diagnostics, reasons to doubt the moments, starts)."""

    X: Any
    y: Array
    sample_weight: Array | None
    rng: np.random.Generator
    n_features: int
    callback: Any = None
    # EM's columns, set by set_columns before any EM runs
    X_em: Any = field(init=False)
    whitening: Whitening = field(init=False)
    moments: ColumnMoments = field(init=False)  # of EM's columns
    times: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    starts: list[dict] = field(default_factory=list)

    @cached_property
    def short_rows(self) -> Array | None:
        """The rows the start race's short runs use: a random subset of
        :data:`_SHORT_ROWS` (drawn when first asked for), or ``None`` for all
        when there are no more."""
        n = len(self.y)
        if n <= _SHORT_ROWS:
            return None
        return np.sort(self.rng.choice(n, size=_SHORT_ROWS, replace=False))

    @cached_property
    def short_table(self) -> tuple[Array, Array, Array | None]:
        """EM's columns, targets and weights on :attr:`short_rows` (all rows when
        ``None``), in memory, gathered once for the race's batched runs and its
        reference likelihood."""
        rows = self.short_rows
        rows = np.arange(len(self.y)) if rows is None else rows
        weights = None if self.sample_weight is None else self.sample_weight[rows]
        return take_rows(self.X_em, rows), self.y[rows], weights

    def gating_rows(self, n_gate_parameters: int) -> Array | None:
        """The rows gating EM learns a start's gate on before refinement: a
        random subset of :data:`_GATING_ROWS_PER_PARAMETER` rows per gate
        parameter, at least the race's (:attr:`short_rows`, the same rows when
        as many); ``None`` (all rows) when the table has fewer than twice as
        many."""
        n, size = len(self.y), _GATING_ROWS_PER_PARAMETER * n_gate_parameters
        if size <= _SHORT_ROWS:
            return self.short_rows
        if n < 2 * size:
            return None
        return np.sort(self.rng.choice(n, size=size, replace=False))

    def set_columns(
        self, whitening: Whitening, intercept: bool, x_y: Array | None = None
    ) -> None:
        """EM's columns and their moments (:func:`moelearn._em.em_columns`);
        ``x_y``: ``E[x y]`` when a pass has summed it."""
        self.whitening = whitening
        y_mean = 0.0
        if x_y is not None and intercept:
            y_mean = float(np.average(self.y, weights=self.sample_weight))
        self.X_em, self.moments = em_columns(
            self.X, whitening.mean, whitening.covariance, intercept, x_y, y_mean
        )

    def common(self) -> dict:
        """The keyword arguments every EM run of this fit takes."""
        return {
            "moments": self.moments,
            "rng": self.rng,
            "sample_weight": self.sample_weight,
            "callback": self.callback,
        }


@dataclass
class _Candidate:
    """One chain of EM runs from a start: where it is, and its record."""

    name: str
    params: MoEParams
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = True
    dropped: list[int] = field(default_factory=list)
    spectral_experts: Array | None = None
    mixing_weights: Array | None = None
    tensor_values: Array | None = None

    def add(self, result: EMResult, replace_history: bool = False) -> MoEParams:
        """Continue the chain with an EM run from its current parameters."""
        self.history = (
            list(result.log_likelihood)
            if replace_history
            else self.history + result.log_likelihood
        )
        self.n_iter += result.n_iter
        self.converged = result.converged  # the last run decides
        self.dropped = self.dropped + result.dropped
        self.params = result.params
        return result.params

    @property
    def log_likelihood(self) -> float:
        """The last mean log-likelihood EM measured (``-inf`` before any)."""
        return self.history[-1] if self.history else -np.inf

    def summary(self, rows: Array | None = None) -> dict:
        """The chain's record; ``rows``: the subset its EM ran on (None: all)."""
        return {
            "start": self.name,
            "log_likelihood": float(self.log_likelihood),
            "n_iter": self.n_iter,
            "converged": self.converged,
            "n_experts": self.params.n_experts,
            "rows": "all" if rows is None else len(rows),
        }


def _short_rows_log_likelihood(ctx: _FitContext, params: MoEParams) -> float:
    """The mean log-likelihood of ``params`` on the start race's rows."""
    X, y, weights = ctx.short_table
    return float(np.average(log_likelihood_terms(X, y, params)[0], weights=weights))


def _rescaled_score(score, s: Array, x: Array) -> Array:
    """``grad log p'(x')`` of ``x' = x / s``, from ``score`` of ``x``."""
    return s * np.asarray(score(x * s), dtype=float)


def _extrapolated(history: list[float]) -> float:
    """Where a run's mean log-likelihood is heading: the last value plus the
    geometric tail of its gains, ``g r / (1 - r)`` with ``g`` the last gain and
    ``r`` the ratio of the last two (at most 0.95: EM's linear rate)."""
    if len(history) < 3:
        return np.inf
    previous, last = history[-2] - history[-3], history[-1] - history[-2]
    if last <= 0.0:
        return history[-1]
    rate = min(last / previous, 0.95) if previous > 0.0 else 0.95
    return history[-1] + last * rate / (1.0 - rate)


def _matching_order(new: Array, old: Array) -> Array:
    """The order of ``new``'s rows that best matches ``old``'s, row by row."""
    cost = np.linalg.norm(new[:, None, :] - old[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost.T)
    return cols[np.argsort(rows)]


def _initial_noise(
    X: RowSource, y: Array, params: MoEParams, known: float | None
) -> float:
    """Starting ``sigma`` for EM: the known value, else the RMS best-expert residual."""
    if known is not None:
        return float(known)
    g = get_link(params.link).func
    m = min(len(y), 20_000)
    resid = y[:m, None] - g(take_rows(X, slice(0, m)) @ params.experts.T)
    rms = float(np.sqrt(np.mean(np.min(resid**2, axis=1))))
    return max(rms, 1e-6 * float(np.std(y)) + 1e-12)
