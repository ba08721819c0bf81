"""How many experts do the data support? ``select_n_experts``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np

from moelearn import _validation as v
from moelearn._arrays import like, to_host
from moelearn._docstrings import shared_entries
from moelearn._links import get_link
from moelearn._model import MoEParams, gate_proba, log_likelihood_terms
from moelearn._moments import input_whitening, row_sample
from moelearn._passes import RowSource, reduce_rows, take_rows, with_ones
from moelearn._scores import fit_mixture_density
from moelearn._starts import split_expert
from moelearn.estimators import SpectralMoE

Array = np.ndarray

__all__ = ["ExpertSelection", "select_n_experts"]


@dataclass
class ExpertSelection:
    """What :func:`select_n_experts` measured.

    Attributes
    ----------
    n_experts : int
        The number of experts with the smallest ``criterion``.
    bic : dict of int to float
        ``BIC(k) = -2 log L_k + p_k log n`` with ``p_k = (2k - 1) D + s`` free
        parameters (``k`` regressors, ``k - 1`` gate rows on ``D`` columns, ``d``
        or ``d + 1`` with intercepts; ``s`` noise levels).
    aic : dict of int to float
        ``AIC(k) = -2 log L_k + 2 p_k``.
    icl : dict of int to float
        ``ICL(k) = BIC(k) + 2 EN_k`` with ``EN_k = -sum_ij r_ij log r_ij`` the
        entropy of the posterior assignments (Biernacki et al. 2000): it also
        penalises experts that overlap.
    criterion : str
        The criterion that chose ``n_experts``.
    log_likelihood : dict of int to float
        Total log-likelihood of the fit with ``k`` experts.
    t2_eigenvalues : ndarray
        Eigenvalues of Method 1's ``T2`` (from the largest fit that ran the
        spectral step, ``k <= d``), largest first: ``T2`` has rank ``k``, so a gap
        after the ``k``-th is a second, fit-free opinion.
    eigengap_n_experts : int or None
        ``argmax_j |lambda_j| / |lambda_{j+1}|`` over ``j <= max_experts``; None
        when ``T2`` has fewer than two eigenvalues to compare (one input column,
        or ``max_experts=1``). A ``d x d`` matrix shows no gap after its
        ``d``-th eigenvalue, so this opinion never exceeds ``d - 1``.
    models : dict of int to estimator
        The fitted models (``k = 1`` is a single linear-link regression).
    """

    n_experts: int
    bic: dict[int, float]
    log_likelihood: dict[int, float]
    t2_eigenvalues: Array
    eigengap_n_experts: int | None
    models: dict[int, object] = field(repr=False)
    aic: dict[int, float] = field(default_factory=dict)
    icl: dict[int, float] = field(default_factory=dict)
    criterion: str = "bic"


@shared_entries
def select_n_experts(
    X,
    y,
    *,
    max_experts: int = 5,
    link: str = "linear",
    criterion: str = "bic",
    random_state=None,
    **fit_params,
) -> ExpertSelection:
    """Choose the number of experts by BIC over Method 1 fits with ``k = 1 .. max_experts``.

    Each ``k >= 2`` is fitted by :class:`SpectralMoE` (spectral start, gating EM,
    joint-EM refinement, so the likelihood is the MLE's; for ``k > d``, where
    the spectral step cannot run, from EM's alternative starts), with the fit for
    ``k - 1`` experts, its largest expert split in two, as one more start. With
    ``fit_intercept=True`` the split is the same model up to ``O(0.01)`` of a nat
    per row, so the log-likelihoods never fall as ``k`` grows (measured: within
    1e-3 per row). Without gate biases they can: a k-expert gate without biases
    does not contain every (k-1)-expert one (the split would need a bias of
    ``-log 2``; on two-expert data, k = 3 ended 0.034 per row below k = 2).
    ``k = 1`` is one expert fitted by least squares (linear link) or
    Gauss-Newton.
    The eigen-gap of ``T2`` is reported alongside as a check that needs no fit.

    {Parameters:X_y_fit}
    max_experts : int, default=5
        Largest ``k`` tried. A fit that drops experts below the weight floor
        counts the experts it kept (its criteria are then those of a smaller
        model).
    link : str, default='linear'
        The experts' link ``g``.
    criterion : {'bic', 'aic', 'icl'}, default='bic'
        What chooses ``k`` (all three are reported).
    random_state : int, Generator or None
        Seeds every fit.
    **fit_params
        Passed to :class:`SpectralMoE` (e.g. ``noise_std``). With
        ``input_density='mixture'`` (or a number of components) the mixture is
        fitted once and shared by every ``k``. ``max_iter`` defaults
        to 50 here: over-specified fits (``k`` above the truth) converge slowly
        and gain little likelihood, and 50 iterations cut the time of a sweep to
        ``k = 5`` at n = 2e5, d = 10 from 37 s to 11 s with the same choice.

    Returns
    -------
    ExpertSelection
        The chosen ``k``, every criterion and likelihood, and the fits.
    """
    # The estimators' checks; Dask arrays and dataframes and tensors stay where they are.
    X, y = SpectralMoE(n_experts=1, link=link)._validate_training_data(X, y)
    n = X.shape[0]
    if not (isinstance(max_experts, (int, np.integer)) and max_experts >= 1):
        raise ValueError(f"max_experts must be an integer >= 1; got {max_experts!r}")
    if criterion not in ("bic", "aic", "icl"):
        raise ValueError(f"criterion must be 'bic', 'aic' or 'icl'; got {criterion!r}")
    rng = v.check_random_state(random_state)
    fit_params.setdefault("max_iter", 50)
    density = fit_params.get("input_density", "gaussian")
    if density == "mixture" or isinstance(density, (int, np.integer)):
        fit_params["input_density"] = _shared_density(X, density, rng)
    intercept = bool(fit_params.get("fit_intercept", False))
    per_expert = fit_params.get("noise_type", "shared") == "per_expert"
    X_em = with_ones(X) if intercept else X
    loglik: dict[int, float] = {}
    models: dict[int, Any] = {}
    loglik[1], models[1] = _single_expert(X_em, y, link)
    transform = input_whitening(X).transform
    sample = take_rows(X_em, slice(None, None, max(1, n // 20_000)))
    previous = models[1]
    for k in range(2, max_experts + 1):
        warm = previous
        while warm.n_experts < k:  # (once, unless the last fit dropped experts)
            share = gate_proba(sample, warm).mean(axis=0)
            warm = split_expert(warm, share, rng, transform)
        model = SpectralMoE(n_experts=k, link=link, random_state=rng, **fit_params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # over-specified k warns by design
            model._fit(X, y, warm_starts=[warm])
        models[k] = model
        loglik[k] = float(model.score(X, y) * n)
        previous = model._params()
    bic, aic, icl = _criteria(loglik, models, X, y, n, X_em.shape[1], per_expert)
    gap_k, values = _eigen_gap(models, max_experts)
    scores = {"bic": bic, "aic": aic, "icl": icl}[criterion]
    best = min(scores, key=lambda k: scores[k])
    return ExpertSelection(
        best, bic, loglik, values, gap_k, models, aic, icl, criterion
    )


def _shared_density(X, spec, rng: np.random.Generator):
    """The input mixture every ``k`` shares (``input_density='mixture'`` or a
    number of components), fitted once on the row sample; ``'gaussian'`` when one
    component is chosen. Returned as a fitted-mixture object in ``X``'s units, as
    :class:`SpectralMoE` takes one."""
    sample = np.asarray(to_host(take_rows(X, row_sample(X.shape[0]))))
    density, _ = fit_mixture_density(
        sample, None if spec == "mixture" else int(spec), rng
    )
    if density.n_components == 1:
        return "gaussian"
    precisions = np.einsum("cij,ckj->cik", density.factors, density.factors)
    return SimpleNamespace(
        weights_=density.weights,
        means_=density.means,
        covariances_=np.linalg.inv(precisions),
        covariance_type="full",
    )


def _assignment_entropy(model, X, y) -> float:
    """``-sum_ij r_ij log r_ij`` over the rows' posterior assignments."""
    resp = np.asarray(to_host(model.posterior_proba(X, y)))
    return -float(np.sum(resp * np.log(np.clip(resp, 1e-300, None))))


def _criteria(loglik, models, X, y, n: int, D: int, per_expert: bool):
    """BIC, AIC and ICL of each fit: ``-2 log L`` plus
    ``p log n``, ``2 p`` or BIC plus twice the assignment entropy, with ``p =
    (2m - 1) D`` regression and gate coefficients and the noise levels, ``m`` the
    experts the fit kept."""
    bic: dict[int, float] = {}
    aic: dict[int, float] = {}
    icl: dict[int, float] = {}
    for k, ll in loglik.items():
        m = getattr(models[k], "n_experts_", k)
        n_params = (2 * m - 1) * D + (m if per_expert and m > 1 else 1)
        bic[k] = -2.0 * ll + n_params * np.log(n)
        aic[k] = -2.0 * ll + 2.0 * n_params
        icl[k] = bic[k] + (2.0 * _assignment_entropy(models[k], X, y) if k > 1 else 0.0)
    return bic, aic, icl


def _eigen_gap(models: dict, max_experts: int) -> tuple[int | None, Array]:
    """The ``k`` at the largest ratio of consecutive ``|eigenvalues|`` of ``T2``
    (from the diagnostics of the largest fit that ran the spectral step), and the
    eigenvalues; None when there are fewer than two."""
    spectral = [
        models[k].diagnostics_["t2_eigenvalues"]
        for k in range(2, max_experts + 1)
        if models[k].diagnostics_["t2_eigenvalues"] is not None
    ]
    values = np.asarray(spectral[-1]) if spectral else np.array([])
    magnitudes = np.abs(values[: max_experts + 1])
    if magnitudes.size < 2:
        return None, values
    ratios = magnitudes[:-1] / np.maximum(magnitudes[1:], 1e-300)
    return int(np.argmax(ratios) + 1), values


def _single_expert(X: RowSource, y: Array, link: str) -> tuple[float, MoEParams]:
    """Log-likelihood of one expert ``y = g(a . x) + sigma eps`` at its MLE.

    Least squares from passes over the rows: the normal equations for a linear
    link; Gauss-Newton steps (halved until the residual sum falls) for the others.
    """
    A, b = reduce_rows(_normal_equations, X, y)
    coef = _solve(A, b)
    if link == "linear":
        rss = reduce_rows(partial(_residual_sum, link=link, coef=coef), X, y)
    else:
        coef, rss = _gauss_newton(X, y, link, coef)
    sigma = float(np.sqrt(rss / X.shape[0]))
    params = MoEParams(
        coef[None, :], np.zeros((1, X.shape[1])), max(sigma, 1e-300), link
    )
    ll = float(log_likelihood_terms(X, y, params)[0].sum())
    return ll, params


_GAUSS_NEWTON_ITER = 50


def _gauss_newton(X, y, link: str, coef: Array) -> tuple[Array, float]:
    """Least squares for ``y = g(X a)`` from ``coef``: Gauss-Newton steps, each
    halved until the residual sum falls; one pass per trial point (its ``J^T J``
    and ``J^T r`` serve the next step). Returns the coefficients and their RSS."""
    JJ, Jr, rss = reduce_rows(partial(_gauss_newton_sums, link=link, coef=coef), X, y)
    for _ in range(_GAUSS_NEWTON_ITER):
        step, improved = _solve(JJ, Jr), False
        for _ in range(30):
            trial = coef + step
            sums = reduce_rows(partial(_gauss_newton_sums, link=link, coef=trial), X, y)
            if sums[2] <= rss:
                improved = rss - sums[2] > 1e-12 * rss
                coef, (JJ, Jr, rss) = trial, sums
                break
            step = step / 2
        if not improved:
            break
    return coef, rss


def _solve(A: Array, b: Array) -> Array:
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _normal_equations(xc: Array, yc: Array) -> tuple[Array, Array]:
    return xc.T @ xc, xc.T @ yc


def _gauss_newton_sums(xc: Array, yc: Array, link: str, coef: Array):
    """``J^T J``, ``J^T r`` and ``r^T r`` with ``r = y - g(X a)``, ``J = g'(X a) X``."""
    g = get_link(link)
    eta = xc @ like(coef, xc)
    r = yc - g.func(eta)
    J = g.deriv(eta)[:, None] * xc
    return J.T @ J, J.T @ r, float(r @ r)


def _residual_sum(xc: Array, yc: Array, link: str, coef: Array) -> float:
    r = yc - get_link(link).func(xc @ like(coef, xc))
    return float(r @ r)
