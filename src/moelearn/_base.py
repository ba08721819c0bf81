"""What every moelearn estimator shares: data checks and the fitted-model API."""

from __future__ import annotations

import functools
import sys
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from moelearn import _validation as v
from moelearn._arrays import is_dask, is_torch, to_host
from moelearn._docstrings import shared_entries
from moelearn._links import LINKS
from moelearn._model import (
    MoEParams,
    gate_proba,
    log_likelihood_terms,
    predict_mean,
    sample_outputs,
)
from moelearn._moments import SingularColumnsError
from moelearn._passes import fit_threads, with_ones

Array = np.ndarray

#: Columns (and ``y``) whose root mean square lies outside this range are
#: rescaled before fitting (see ``MoEBase._rescale``).
RESCALE_RANGE = (1e-3, 1e3)


def _is_dask_frame(X) -> bool:
    return type(X).__module__.startswith("dask.") and hasattr(X, "to_dask_array")


def _read_by_passes(X) -> bool:
    """Inputs that stay where they are and are read in row chunks (Dask, PyTorch)."""
    return is_dask(X) or is_torch(X) or _is_dask_frame(X)


def _like(X, out: Array):
    """``out`` as a tensor of ``X``'s floating dtype on its device when ``X`` is a
    PyTorch tensor; else unchanged."""
    if not is_torch(X):
        return out
    import torch

    dtype = X.dtype if X.is_floating_point() else torch.get_default_dtype()
    return torch.as_tensor(out, device=X.device).to(dtype)


def names_singular_columns(fit):
    """Decorate an estimator's ``fit`` so that a singular input covariance is
    reported with the columns' names (:meth:`MoEBase.column_names`), not their
    positions."""

    @functools.wraps(fit)
    def named_fit(self, *args, **kwargs):
        try:
            return fit(self, *args, **kwargs)
        except SingularColumnsError as exc:
            names = self.column_names()
            if names is None:
                raise
            raise exc.named(names) from None

    return named_fit


def shares_the_cores(fit):
    """Decorate an estimator's ``fit`` so that its passes run their chunks on the
    cores BLAS may use, and a small problem's linear algebra on one BLAS thread
    (:func:`moelearn._passes.fit_threads`)."""

    @functools.wraps(fit)
    def threaded_fit(self, X, *args, **kwargs):
        with fit_threads(_free_parameters(self, X)):
            return fit(self, X, *args, **kwargs)

    return threaded_fit


def _free_parameters(estimator, X) -> int:
    """About how many free parameters ``estimator`` fits to ``X``: ``(2 k - 1)
    (d + 1) + k`` (slopes and an intercept per expert and free gate row, a noise
    level per expert), before either is validated (0 if they are not numbers)."""
    try:
        k, d = int(estimator.n_experts), int(np.shape(X)[1])
    except (TypeError, ValueError, IndexError):
        return 0
    return (2 * k - 1) * (d + 1) + k


@shared_entries
class MoEBase(RegressorMixin, BaseEstimator):
    """Base of the mixture-of-experts estimators.

    Subclasses learn ``experts_`` (k, d), ``gating_`` (k, d, last row zero),
    ``noise_std_`` and declare ``n_experts``, ``link`` and ``verbose``.
    """

    # The gate's form: "softmax" (gating_ is (k, d), last row zero) or "tree".
    _gate: ClassVar[str] = "softmax"
    # Whether fit runs on Dask arrays (passes only; no random minibatches).
    _accepts_dask: ClassVar[bool] = True
    #: Whether fit rescales badly scaled in-memory data (see :meth:`_rescale`).
    _rescales: ClassVar[bool] = True
    #: Whether the method needs ``n_experts <= n_features`` (it whitens the inputs
    #: onto one direction per expert).
    _one_expert_per_feature: ClassVar[bool] = True
    #: Whether a fit has ``spectral_experts_`` (None when the step could not run).
    _spectral_step: ClassVar[bool] = False
    #: ``(s, t)``: the column and target scales the fit divided by (None: none).
    _scales: tuple[Array, float] | None
    # Rules for the parameters every estimator has; subclasses add their own.
    _common_constraints: ClassVar[dict] = {
        "n_experts": v.integer(2),
        "link": v.link_rule(*LINKS),
        "noise_std": v.none_or(v.real(0.0, open_low=True)),
        "max_iter": v.integer(0),
        "tol": v.real(0.0),
        "n_init": v.integer(1),
        "verbose": v.integer(0),
    }

    def column_names(self) -> list[str] | None:
        """The input columns' names, for messages.

        Returns
        -------
        list of str or None
            ``feature_names_in_`` (a DataFrame's columns), else the names the
            command line read from the file's header, else ``None``.
        """
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            names = getattr(self, "_input_names", None)
        return None if names is None else [str(name) for name in names]

    def _begin_fit(self, X, y) -> tuple[np.random.Generator, Array, Array]:
        """Check the parameters (declared rules, then :meth:`_check_params`) and the
        data; return the random generator and the validated ``X, y``, rescaled
        when their scale is far from 1 (:meth:`_rescale`)."""
        v.validate_params(self, self._parameter_constraints)
        self._check_params()
        rng = v.check_random_state(self.random_state)
        X, y = self._validate_training_data(X, y)
        X, y = self._rescale(X, y)
        return rng, X, y

    def _rescale(self, X, y) -> tuple[Array, Array]:
        """In-memory data whose columns (or ``y``, linear experts) have a root
        mean square outside :data:`RESCALE_RANGE` are divided by it, so the fit
        is the same at any scale (its tolerances and floors assume values near
        1: measured, the fit changed from scale 1e7 or 1e-7 on). The fitted
        attributes are mapped back (:meth:`_set_parameters`,
        :meth:`_in_raw_units`): slopes ``a t / s``, gate slopes ``G / s``,
        intercepts and ``sigma`` times ``t``, log-likelihoods minus ``log t``."""
        self._scales = None
        if not (self._rescales and isinstance(X, np.ndarray)):
            return X, y
        low, high = RESCALE_RANGE
        columns = v.root_mean_square(X)
        # (y keeps its scale for non-linear links, whose outputs are bounded, and
        # with a known noise level, given in y's units)
        scale_y = self.link == "linear" and getattr(self, "noise_std", None) is None
        target = float(v.root_mean_square(y)) if scale_y else 1.0
        off = (columns > 0) & ((columns < low) | (columns > high))
        s = np.where(off, columns, 1.0) if off.any() else np.ones(X.shape[1])
        t = target if (target < low or target > high) else 1.0
        if not off.any() and t == 1.0:
            return X, y
        self._scales = (s, t)
        return X / s, y / t

    def _in_raw_units(self, log_likelihood):
        """A mean log-likelihood (float or array) of the rescaled fit, in ``y``'s
        units."""
        if self._scales is None:
            return log_likelihood
        return np.asarray(log_likelihood, float) - np.log(self._scales[1])

    def _raw_params(
        self, params: MoEParams, n_features: int, inverse: bool = False
    ) -> MoEParams:
        """Parameters fitted on rescaled data, in the data's own units (or, with
        ``inverse``, parameters in the data's units, e.g. a warm start, in the
        rescaled fit's): slopes times ``t / s``, intercepts and ``sigma`` times
        ``t``, gate slopes over ``s``."""
        scales = getattr(self, "_scales", None)
        if scales is None:
            return params
        s, t = scales
        if inverse:
            s, t = 1.0 / s, 1.0 / t
        d = n_features
        experts, gating = params.experts.copy(), params.gating.copy()
        experts[:, :d] *= t / s
        experts[:, d:] *= t
        gating[:, :d] /= s
        noise = np.asarray(params.noise_std, float) * t
        return replace(
            params,
            experts=experts,
            gating=gating,
            noise_std=noise if noise.ndim else float(noise),
        )

    def _check_params(self) -> None:
        """Rules that relate several parameters; subclasses raise ``ValueError``
        (and call this one)."""
        if getattr(self, "noise_type", "shared") == "per_expert" and (
            self.noise_std is not None
        ):
            raise ValueError(
                "noise_std (a known, shared noise level) cannot be combined with "
                "noise_type='per_expert'; drop one of them"
            )

    def _set_parameters(self, params: MoEParams, n_features: int) -> None:
        """The fitted attributes from parameters on EM's columns (``[x, 1]`` when
        they hold intercepts): ``experts_``, ``gating_``, ``intercept_`` and
        ``gating_intercept_`` (with intercepts), ``noise_std_``, ``n_experts_``."""
        d = n_features
        params = self._raw_params(params, d)
        self.experts_, self.gating_ = params.experts[:, :d], params.gating[:, :d]
        if params.experts.shape[1] > d:
            self.intercept_ = params.experts[:, d]
            self.gating_intercept_ = params.gating[:, d]
        noise = params.noise_std
        self.noise_std_ = np.asarray(noise, float) if np.ndim(noise) else float(noise)
        self.n_experts_ = params.n_experts

    def _validate_training_data(self, X, y) -> tuple[Array, Array]:
        deferred = False  # X's values left to the fit's first pass
        if _read_by_passes(X) or _read_by_passes(y):
            X, y = self._validate_dask(X, y, reset=True)
        else:
            v.check_numeric_columns(X)
            X, y = validate_data(
                self,
                X,
                y,
                dtype=np.float64,
                ensure_all_finite=False,
                y_numeric=True,
                order="C",
                ensure_min_features=1,
            )
            deferred = self._first_pass_checks_finite(X)
            X = v.check_finite_2d(X, values=not deferred)
            y = v.check_target(y, X.shape[0])
            names = getattr(self, "feature_names_in_", None)
            v.check_scale(X, "X", None if names is None else list(names))
            v.check_scale(y, "y")

        def refuse(message: str):
            if deferred:  # X's values first, as when they are checked here
                v.check_finite_2d(X)
            raise ValueError(message)

        n, d = X.shape
        k = self.n_experts
        if k > d and self._one_expert_per_feature:
            refuse(
                f"n_experts={k} exceeds n_features={d}: {type(self).__name__} finds "
                "at most one expert per input column (it whitens the inputs onto k "
                "directions); SpectralMoE, EMMoE and GradientMoE fit more"
            )
        n_params = 2 * k * d + 1
        if n < n_params:
            refuse(
                f"n_samples={n} is too small for n_features={d} and n_experts={k}: "
                f"the model has {n_params} parameters; the spectral step's error is "
                "about 3 * sqrt(d / n), so use many more samples than parameters"
            )
        if np.ptp(y) == 0:
            refuse("y is constant: there is nothing to learn")
        return X, y

    def _first_pass_checks_finite(self, X) -> bool:
        """Whether the fit's first pass over the in-memory ``X`` (validated,
        float64) checks that its values are finite, so that validation need not
        read them: no, unless an estimator says so."""
        return False

    def _validate_dask(self, X, y, *, reset: bool):
        """Dask or PyTorch inputs: ``X`` stays where it is (a Dask array becomes
        float64 chunked by rows; checked in one pass); ``y`` (one float a row) is
        brought into memory as NumPy."""
        if not self._accepts_dask:
            raise TypeError(
                f"{type(self).__name__} draws random minibatches and needs X as a "
                "NumPy array: pass X.compute() or X.cpu().numpy(), or fit "
                "SpectralMoE, HierarchicalMoE or EMMoE, which read Dask arrays and "
                "PyTorch tensors in passes"
            )
        if _is_dask_frame(X):
            if reset:
                self.feature_names_in_ = np.asarray([str(c) for c in X.columns])
            X = X.to_dask_array(lengths=True)
        elif reset:
            self.__dict__.pop("feature_names_in_", None)
        X = v.check_finite_2d(X)
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is "
                f"expecting {self.n_features_in_} features as input"
            )
        if y is not None:
            y = v.check_target(np.asarray(to_host(y)), X.shape[0])
        return X, y

    # ------------------------------------------------------------- inference
    def _params(self) -> MoEParams:
        """The fitted parameters; with intercepts, as slopes on ``[x, 1]``."""
        check_is_fitted(self)
        experts, gating = self.experts_, self.gating_
        if hasattr(self, "intercept_"):
            experts = np.column_stack([experts, self.intercept_])
            gating = np.column_stack([gating, self.gating_intercept_])
        return MoEParams(experts, gating, self.noise_std_, self.link, self._gate)

    def _inputs(self, X) -> Array:
        """Validated inputs; with intercepts, ``[X, 1]``."""
        check_is_fitted(self)
        if _read_by_passes(X):
            X = self._validate_dask(X, None, reset=False)[0]
        else:
            v.check_numeric_columns(X)
            X = validate_data(
                self, X, reset=False, dtype=np.float64, ensure_all_finite=False
            )
            X = v.check_finite_2d(X)
        if hasattr(self, "intercept_"):
            X = with_ones(X)
        return X

    def predict(self, X) -> Array:
        """Conditional mean ``E[y | x] = sum_j pi_j(x) g(a_j . x)``.

        {Parameters:X}

        Returns
        -------
        ndarray of shape (n_samples,)
            The prediction of each row (a tensor for a tensor ``X``).
        """
        return _like(X, predict_mean(self._inputs(X), self._params()))

    def predict_proba(self, X) -> Array:
        """Gate probabilities ``pi(x)``.

        {Parameters:X}

        Returns
        -------
        ndarray of shape (n_samples, n_experts)
            Each row's gate probabilities (rows sum to one).
        """
        return _like(X, gate_proba(self._inputs(X), self._params()))

    def posterior_proba(self, X, y) -> Array:
        """The posterior responsibilities ``P(expert j | x, y)``.

        {Parameters:X_y}

        Returns
        -------
        ndarray of shape (n_samples, n_experts)
            Each row's posterior probability of each expert.
        """
        Xv = self._inputs(X)
        y = v.check_target(np.asarray(to_host(y)), Xv.shape[0])
        return _like(X, log_likelihood_terms(Xv, y, self._params())[1])

    def log_likelihood(self, X, y) -> Array:
        """Log-likelihood ``log p(y_i | x_i)`` of each row.

        {Parameters:X_y}

        Returns
        -------
        ndarray of shape (n_samples,)
            ``log sum_j pi_j(x_i) N(y_i | g(a_j . x_i), sigma_j^2)``.
        """
        Xv = self._inputs(X)
        y = v.check_target(np.asarray(to_host(y)), Xv.shape[0])
        return _like(X, log_likelihood_terms(Xv, y, self._params())[0])

    def score(self, X, y, sample_weight=None) -> float:
        """Mean log-likelihood ``(1/n) sum_i log p(y_i | x_i)`` (higher is better).

        {Parameters:X_y}
        sample_weight : array-like of shape (n_samples,), optional
            Weights of the mean.

        Returns
        -------
        float
            The (weighted) mean log-likelihood per row.
        """
        ll = np.asarray(to_host(self.log_likelihood(X, y)))
        weights = None if sample_weight is None else to_host(sample_weight)
        return float(np.average(ll, weights=weights))

    def sample(self, X, random_state=None) -> tuple[Any, Any]:
        """Draw ``y ~ P(y | x)`` for each row of ``X``.

        {Parameters:X}
        random_state : int, Generator or None
            Seeds the draws.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            The drawn targets.
        expert_index : ndarray of shape (n_samples,)
            The expert each row's target was drawn from.
        """
        y, z = sample_outputs(
            self._inputs(X), self._params(), v.check_random_state(random_state)
        )
        if is_torch(X):
            import torch

            return _like(X, y), torch.as_tensor(z, device=X.device)
        return y, z

    # ------------------------------------------------------------- predictive
    def _mixture(self, X) -> tuple[Array, Array, Array]:
        from moelearn._predictive import mixture_components

        return mixture_components(np.asarray(to_host(self._inputs(X))), self._params())

    def predict_quantiles(self, X, q) -> Array:
        """The quantiles of the predictive distribution of ``y`` given each row.

        ``y | x`` is the Gaussian mixture ``sum_j pi_j(x) N(mu_j(x), sigma_j^2)``;
        its quantiles solve ``sum_j pi_j Phi((y - mu_j) / sigma_j) = q``.

        {Parameters:X}
        q : float or array-like of shape (m,)
            Levels in (0, 1).

        Returns
        -------
        ndarray of shape (n_samples, m), or (n_samples,) for a scalar ``q``
            The quantiles of each row.
        """
        from moelearn._predictive import quantiles

        levels = np.atleast_1d(np.asarray(q, float))
        if levels.ndim != 1 or np.any((levels <= 0) | (levels >= 1)):
            raise ValueError(f"quantile levels must lie in (0, 1); got {q!r}")
        out = quantiles(levels, *self._mixture(X))
        return out[:, 0] if np.ndim(q) == 0 else out

    def predict_interval(self, X, coverage: float = 0.9) -> Array:
        """The central ``coverage`` predictive interval of ``y`` for each row.

        It runs between the ``(1 - coverage) / 2`` and ``(1 + coverage) / 2``
        quantiles of :meth:`predict_quantiles`. Where the experts disagree the
        distribution has several modes and this interval, with equal tails, can
        span the gap between them.

        {Parameters:X}
        coverage : float, default=0.9
            The interval's probability, in (0, 1).

        Returns
        -------
        ndarray of shape (n_samples, 2)
            Each row's lower and upper end.
        """
        if not 0.0 < coverage < 1.0:
            raise ValueError(f"coverage must be between 0 and 1; got {coverage!r}")
        tail = (1.0 - coverage) / 2.0
        return self.predict_quantiles(X, [tail, 1.0 - tail])

    def predict_density(self, X, y) -> Array:
        """The predictive density ``p(y_i | x_i)`` of each row.

        {Parameters:X_y}

        Returns
        -------
        ndarray of shape (n_samples,)
            ``exp`` of :meth:`log_likelihood`.
        """
        return np.exp(np.asarray(to_host(self.log_likelihood(X, y))))

    # ------------------------------------------------------------- criteria
    def n_parameters(self) -> int:
        """Free parameters of the fitted model.

        Returns
        -------
        int
            The experts' rows, the free gate rows (``k - 1`` for a softmax gate)
            and the noise level(s).
        """
        params = self._params()
        k, D = params.experts.shape
        gate_rows = params.gating.shape[0] - (params.gate == "softmax")
        return k * D + gate_rows * D + int(np.size(params.noise_std))

    def aic(self, X, y) -> float:
        """The Akaike information criterion ``-2 log L + 2 p`` (lower is better).

        {Parameters:X_y}

        Returns
        -------
        float
            AIC on ``X, y``, ``p`` = :meth:`n_parameters`.
        """
        return float(-2.0 * np.sum(self.log_likelihood(X, y)) + 2 * self.n_parameters())

    def bic(self, X, y) -> float:
        """The Bayesian information criterion ``-2 log L + p log n``.

        {Parameters:X_y}

        Returns
        -------
        float
            BIC on ``X, y`` (lower is better), ``p`` = :meth:`n_parameters`.
        """
        n = len(np.asarray(to_host(y)))
        ll = float(np.sum(to_host(self.log_likelihood(X, y))))
        return -2.0 * ll + self.n_parameters() * np.log(n)

    def icl(self, X, y) -> float:
        """The integrated completed likelihood criterion (Biernacki et al. 2000).

        BIC plus twice the entropy ``-sum_ij r_ij log r_ij`` of the posterior
        assignments, which penalises experts that overlap.

        {Parameters:X_y}

        Returns
        -------
        float
            ICL on ``X, y`` (lower is better).
        """
        resp = np.asarray(to_host(self.posterior_proba(X, y)))
        entropy = -float(np.sum(resp * np.log(np.clip(resp, 1e-300, None))))
        return self.bic(X, y) + 2.0 * entropy

    # ------------------------------------------------------------- uncertainty
    def parameter_covariance(
        self,
        X,
        y,
        *,
        kind: str = "observed",
        sample_weight=None,
        n_bootstrap: int = 200,
        random_state=None,
    ):
        """The covariance of the fitted parameters, measured on the training data.

        {Parameters:X_y_fitted}
        kind : {'observed', 'sandwich', 'bootstrap'}, default='observed'
            ``I^{-1}`` from the observed information of the log-likelihood
            (Louis' formula, one pass over the rows); the sandwich
            ``I^{-1} (sum_i s_i s_i^T) I^{-1}``, robust to a misspecified noise
            model; or ``n_bootstrap`` EM refits on resampled rows, each started
            from the fit, so no replicate swaps the experts' labels.
        {bootstrap_options}

        Returns
        -------
        ParameterCovariance
            ``values`` (the free parameters: experts' rows, the free gate rows,
            ``log sigma``), ``covariance``, ``labels`` ``(group, index, term)``.
        """
        from moelearn._inference import estimate_covariance

        Xv = self._inputs(X)
        y = v.check_target(np.asarray(to_host(y)), Xv.shape[0])
        if sample_weight is not None:
            sample_weight = v.check_sample_weight(sample_weight, Xv.shape[0])
        names = [str(c) for c in getattr(self, "feature_names_in_", [])] or [
            f"x{i}" for i in range(self.n_features_in_)
        ]
        return estimate_covariance(
            Xv,
            y,
            self._params(),
            names,
            kind=kind,
            sample_weight=sample_weight,
            n_bootstrap=n_bootstrap,
            rng=v.check_random_state(random_state),
        )

    def summary(
        self,
        X,
        y,
        *,
        kind: str = "observed",
        coverage: float = 0.95,
        sample_weight=None,
        n_bootstrap: int = 200,
        random_state=None,
    ):
        """A table of the fitted parameters with standard errors and intervals.

        Standard errors, z statistics, two-sided p-values (against 0) and
        ``coverage`` confidence intervals. One row per parameter: ``group``
        (``expert``, ``gate``, ``noise``), ``index`` (the expert, or gate row;
        ``-1`` for a shared ``sigma``),
        ``term`` (the feature's name, ``intercept`` or ``sigma``), ``estimate``,
        ``std_error``, ``z``, ``p_value``, ``ci_low``, ``ci_high``. Intervals are
        ``estimate +- z_{(1 + coverage) / 2} std_error``; for ``sigma`` the
        exponentiated interval of ``log sigma`` (no z-test: sigma > 0). A softmax
        gate's last row is the zero reference and has no row. See
        :meth:`parameter_covariance` for ``kind``.

        {Parameters:X_y_fitted}
        kind : {'observed', 'sandwich', 'bootstrap'}, default='observed'
            How the covariance is estimated (:meth:`parameter_covariance`).
        coverage : float, default=0.95
            The intervals' probability.
        {bootstrap_options}

        Returns
        -------
        pandas.DataFrame or numpy structured array
            A DataFrame when pandas is installed.
        """
        from moelearn._inference import summary_rows

        estimate = self.parameter_covariance(
            X,
            y,
            kind=kind,
            sample_weight=sample_weight,
            n_bootstrap=n_bootstrap,
            random_state=random_state,
        )
        rows = summary_rows(estimate, coverage)
        try:
            import pandas as pd
        except ImportError:
            names = list(rows[0])
            formats = ["U8", "i8", "U64"] + ["f8"] * (len(names) - 3)
            return np.array(
                [tuple(r.values()) for r in rows],
                dtype={"names": names, "formats": formats},
            )
        return pd.DataFrame(rows)

    # ------------------------------------------------------------- progress
    def _log(self, level: int, message: str) -> None:
        if self.verbose >= level:
            print(f"[moelearn] {message}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------ model files
    def _to_json(self) -> dict:
        """The fitted estimator as the fields of a model file (:func:`moelearn.io.
        save_model` adds the format tag); :meth:`_from_json` reads them back."""
        if not isinstance(self.link, str):
            raise ValueError(
                f"a model with a callable link "
                f"({getattr(self.link, '__name__', self.link)!r}) cannot be saved as "
                "JSON: code is not data. Keep the callable in your program and save "
                "experts_, gating_ and noise_std_ yourself"
            )
        names = getattr(self, "feature_names_in_", None)
        offsets = hasattr(self, "intercept_")
        spectral = getattr(self, "spectral_experts_", None)
        return {
            "params": {k: v for k, v in self.get_params().items() if _jsonable(v)},
            "link": self.link,
            "n_features": int(self.n_features_in_),
            "feature_names": None if names is None else [str(n) for n in names],
            "experts": self.experts_.tolist(),
            "gating": self.gating_.tolist(),
            "noise_std": (
                np.asarray(self.noise_std_).tolist()
                if np.ndim(self.noise_std_)
                else float(self.noise_std_)
            ),
            "intercept": self.intercept_.tolist() if offsets else None,
            "gating_intercept": self.gating_intercept_.tolist() if offsets else None,
            "spectral_experts": (
                None if spectral is None else np.asarray(spectral).tolist()
            ),
            "converged": bool(self.converged_),
            "n_iter": int(self.n_iter_),
        }

    @classmethod
    def _from_json(cls, obj: dict, path: Any) -> Any:
        """The fitted estimator a model file's fields describe, every field's type
        and shape checked (``ValueError`` naming ``path`` and the field)."""
        experts, gating = (
            _array_field(obj, "experts", path),
            _array_field(obj, "gating", path),
        )
        has_spectral = obj.get("spectral_experts") is not None
        spectral = (
            _array_field(obj, "spectral_experts", path) if has_spectral else experts
        )
        d = obj.get("n_features")
        if not isinstance(d, int) or experts.shape[1] != d:
            raise ValueError(
                f"{path}: experts have shape {experts.shape}, n_features is {d!r}"
            )
        model = cls()
        tree = model._gate == "tree"
        gate_shape = (experts.shape[0] - tree, d)
        if gating.shape != gate_shape or spectral.shape != experts.shape:
            raise ValueError(
                f"{path}: experts, gating and spectral_experts shapes differ"
            )
        if not tree and np.any(gating[-1] != 0):
            raise ValueError(f"{path}: the last gating row must be zero")
        noise = _noise_field(obj.get("noise_std"), experts.shape[0], path)
        names = _names_field(obj.get("feature_names"), d, path)
        _configure(model, obj, experts.shape[0], tree, path)
        model.experts_, model.gating_ = experts, gating
        if has_spectral:
            model.spectral_experts_ = spectral
        elif cls._spectral_step:  # fitted without it (more experts than columns)
            model.spectral_experts_ = None
        if obj.get("intercept") is not None:
            offsets = {
                "intercept": experts.shape[0],
                "gating_intercept": gating.shape[0],
            }
            for key, size in offsets.items():
                setattr(model, key + "_", _array_field(obj, key, path, shape=(size,)))
        model.noise_std_ = noise
        model.n_experts_ = experts.shape[0]
        model.n_features_in_ = d
        if names is not None:
            model.feature_names_in_ = np.asarray(names, dtype=object)
        model.converged_ = bool(obj.get("converged", True))
        model.n_iter_ = int(obj.get("n_iter", 0))
        model.target_name_ = obj.get("target")
        categories = _categories_field(obj.get("categories"), names, path)
        if categories:
            model.categories_ = categories
        return model

    def _progress(self, stage: str, iteration: int, ll: float, change: float) -> None:
        self._log(
            2, f"{stage} iter {iteration:3d}: mean log-lik {ll:.6f}, step {change:.2e}"
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _array_field(obj: dict, key: str, path: Any, shape=None) -> Array:
    """A finite numeric field: a 2-D array, or of the given ``shape``."""
    try:
        arr = np.asarray(obj[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: field {key!r} is missing or not numeric") from None
    if shape is not None and (arr.shape != shape or not np.isfinite(arr).all()):
        raise ValueError(f"{path}: field {key!r} must hold {shape[0]} finite numbers")
    if shape is None and (arr.ndim != 2 or not np.isfinite(arr).all()):
        raise ValueError(f"{path}: field {key!r} must be a finite 2-D array")
    return arr


def _noise_field(noise, n_experts: int, path: Any) -> float | Array:
    """``noise_std``: a positive number, or a list of one per expert."""
    if isinstance(noise, list):  # one per expert
        try:
            values = np.asarray(noise, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.zeros(0)
        if values.shape != (n_experts,) or not np.all(
            np.isfinite(values) & (values > 0)
        ):
            raise ValueError(
                f"{path}: noise_std must be a positive number or one per expert"
            )
        return values
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise > 0:
        raise ValueError(f"{path}: noise_std must be a positive number")
    return float(noise)


def _names_field(names, d: int, path: Any) -> list | None:
    """``feature_names``: absent, or ``d`` distinct names."""
    if names is None:
        return None
    if not isinstance(names, list) or len(names) != d:
        raise ValueError(f"{path}: feature_names must list {d} names")
    v.check_unique_names(path, [str(n) for n in names])
    return names


def _categories_field(categories, names: list | None, path: Any) -> dict | None:
    """``categories`` (written by ``moelearn fit --categorical``): absent, or
    each column's levels, at least two, whose 0/1 columns ``column=level`` (all
    levels but the first) are among the feature names."""
    if categories is None:
        return None
    well_formed = isinstance(categories, dict) and all(
        isinstance(levels, list)
        and len(levels) >= 2
        and all(isinstance(level, str) for level in levels)
        for levels in categories.values()
    )
    if not well_formed:
        raise ValueError(f"{path}: categories must map columns to lists of levels")
    encoded = {
        f"{column}={level}" for column, ls in categories.items() for level in ls[1:]
    }
    if not encoded <= set(names or ()):
        raise ValueError(f"{path}: categories name 0/1 columns the model does not have")
    return categories


def _configure(model, obj: dict, n_experts: int, tree: bool, path: Any) -> None:
    """The estimator's settings from the file (its ``link`` and ``params``),
    checked against the number of experts it holds."""
    link = obj.get("link")
    if link not in LINKS:
        raise ValueError(f"{path}: unknown link {link!r}")
    params = dict(obj.get("params") or {})
    params.setdefault("n_experts", n_experts)
    params["link"] = link
    valid = set(model.get_params())
    try:
        model.set_params(**{k: v for k, v in params.items() if k in valid})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid settings ({exc})") from None
    # EM may have dropped experts: a fit can hold fewer than it was asked for.
    if not 1 <= n_experts <= model.n_experts or (tree and model.n_experts != n_experts):
        raise ValueError(
            f"{path}: {n_experts} experts do not fit the settings "
            f"({model.n_experts} expected)"
        )
