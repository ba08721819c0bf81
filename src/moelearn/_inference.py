"""Standard errors and confidence intervals of a fitted mixture of experts.

The free parameters are, in order: each expert's row (slopes, then its
intercept when the model has one), the free gate rows (``k - 1`` for a softmax
gate, whose last row is the zero reference; every node for a tree), then
``log sigma`` (one, or one per expert). Three covariances of their estimate:

* ``"observed"``: ``I^{-1}``, the inverse observed information of the
  log-likelihood at the fit. ``I = I_c - I_m``: the complete-data information
  minus the posterior covariance of the complete-data scores (Louis 1982),
  summed over the rows in one pass (:func:`moelearn._em.information`);
* ``"sandwich"``: ``I^{-1} (sum_i s_i s_i^T) I^{-1}`` with ``s_i`` the rows'
  scores, robust to a misspecified noise model (Huber 1967, White 1982);
* ``"bootstrap"``: the covariance of EM refits on resampled rows. Each
  replicate reweights the rows by multinomial counts and runs EM *from the
  fit*, so every replicate keeps the fit's labelling of the experts (a
  bootstrap that refits from scratch can swap them and inflate the errors).

``sigma``'s standard error follows from ``log sigma``'s by the delta method,
``se(sigma) = sigma se(log sigma)``; its interval is the exponentiated interval
of ``log sigma`` (it stays positive).

Cost: one pass of ``O(n p^2)`` for ``p = (2k - 1) D + k`` parameters and a
``p x p`` inverse; at ``d = 50, k = 3`` (``p = 258``) and ``n = 1e6`` about
``7e10`` operations. The bootstrap costs its replicates' EM runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy import stats

from moelearn._em import GATE_PENALTY, ColumnMoments, em, information
from moelearn._model import MoEParams

Array = np.ndarray

KINDS = ("observed", "sandwich", "bootstrap")


@dataclass(frozen=True)
class ParameterCovariance:
    """The estimate's covariance in the free parameters, and their names."""

    values: Array  # (p,) the estimates (log sigma for the noise)
    covariance: Array  # (p, p)
    labels: list[tuple[str, int, str]]  # (group, expert or gate row, term)
    kind: str
    n_bootstrap: int = 0


def free_values(params: MoEParams, fit_noise: bool = True) -> Array:
    """The free parameters as one vector (see the module's docstring)."""
    parts = [params.experts.ravel(), params.gating[: params.n_experts - 1].ravel()]
    if fit_noise:
        parts.append(np.log(np.atleast_1d(np.asarray(params.noise_std, float))))
    return np.concatenate(parts)


def parameter_labels(
    params: MoEParams, feature_names: list[str]
) -> list[tuple[str, int, str]]:
    """``(group, index, term)`` for each free parameter: ``("expert", j, name)``,
    ``("gate", t, name)``, ``("noise", j, "sigma")`` (``j = -1``: shared)."""
    D = params.experts.shape[1]
    terms = list(feature_names) + ["intercept"] * (D - len(feature_names))
    labels = [("expert", j, t) for j in range(params.n_experts) for t in terms]
    labels += [("gate", r, t) for r in range(params.n_experts - 1) for t in terms]
    if np.ndim(params.noise_std):
        labels += [("noise", j, "sigma") for j in range(params.n_experts)]
    else:
        labels.append(("noise", -1, "sigma"))
    return labels


#: Copies of the ``p x p`` information the observed and sandwich covariances hold
#: at once (the pass's sums for the information and the scores' outer products,
#: the assembled matrices, the inverse): measured peak at d = 400, n = 2e4
#: (p = 1201): 63 MiB, 5.7 matrices.
INFORMATION_COPIES = 6


def check_information_size(n_parameters: int, free_bytes: int | None = None) -> None:
    """``MemoryError`` with advice when the information matrices of
    ``n_parameters`` free parameters (:data:`INFORMATION_COPIES` of ``8 p^2``
    bytes) would take more than half the free memory. Every kind needs them: the
    bootstrap's EM refits take Newton steps on them too."""
    need = INFORMATION_COPIES * 8 * n_parameters**2
    if free_bytes is None:
        try:
            free_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return  # (no way to know here: try)
    if need > free_bytes / 2:
        raise MemoryError(
            f"standard errors of {n_parameters} parameters need {n_parameters}^2 "
            f"information matrices, about {need / 2**30:.1f} GiB, more than half "
            f"the free memory ({free_bytes / 2**30:.1f} GiB): fit fewer columns "
            "(the matrices grow as (number of columns x (2k - 1))^2) or run on a "
            "machine with more memory"
        )


def estimate_covariance(
    X,
    y: Array,
    params: MoEParams,
    feature_names: list[str],
    *,
    kind: str = "observed",
    sample_weight: Array | None = None,
    n_bootstrap: int = 200,
    rng: np.random.Generator | None = None,
    covariance_metric: Array | None = None,
    max_iter: int = 200,
    tol: float = 1e-6,
) -> ParameterCovariance:
    """The covariance of the fitted ``params`` on the rows ``X`` (EM's columns,
    ``[x, 1]`` with intercepts), ``y``: one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    values = free_values(params)
    labels = parameter_labels(params, feature_names)
    check_information_size(len(values))
    if kind == "bootstrap":
        if rng is None:
            rng = np.random.default_rng()
        draws = _bootstrap(
            X,
            y,
            params,
            n_bootstrap,
            rng,
            sample_weight,
            covariance_metric,
            max_iter,
            tol,
        )
        cov = np.atleast_2d(np.cov(draws, rowvar=False))
        return ParameterCovariance(values, cov, labels, kind, n_bootstrap)
    observed, meat = information(X, y, params, sample_weight)
    inverse = _inverse(observed)
    cov = inverse if kind == "observed" else inverse @ meat @ inverse
    return ParameterCovariance(values, cov, labels, kind)


def _inverse(information_matrix: Array) -> Array:
    """The inverse of a symmetric information matrix; a singular or indefinite
    one (a flat direction of the likelihood, a fit not at a maximum) is an
    error, as its standard errors would be meaningless.

    Judged on the matrix scaled to a unit diagonal, ``D^-1/2 I D^-1/2`` with
    ``D = diag(I)``: its eigenvalues do not depend on the parameters' units (an
    expert's slope per unit of a column in the hundreds and a noise level in the
    hundreds made ``I``'s own eigenvalues span more than 1e10 on a fit that is
    well determined)."""
    diagonal = np.diag(information_matrix)
    values = np.zeros(1)
    if diagonal.min(initial=1.0) > 0:
        unit = 1.0 / np.sqrt(diagonal)
        values, vectors = np.linalg.eigh(information_matrix * np.outer(unit, unit))
    if values.min() <= 1e-10 * max(float(np.abs(values).max()), 1e-300):
        raise np.linalg.LinAlgError(
            "the observed information is singular or not positive definite at "
            "this fit (a flat or saddle direction of the likelihood: collinear "
            "columns, an expert with almost no rows, or a fit that did not "
            "converge); its standard errors are undefined. Try kind='bootstrap', "
            "fewer experts, or refit with a larger max_iter"
        )
    scaled = vectors * unit[:, None]
    return (scaled / values) @ scaled.T


def _bootstrap(
    X, y, params, n_bootstrap, rng, sample_weight, metric, max_iter, tol
) -> Array:
    n = len(y)
    base = np.ones(n) if sample_weight is None else np.asarray(sample_weight, float)
    if metric is None:
        metric = np.cov(np.asarray(X), rowvar=False)
        metric = np.atleast_2d(metric) + np.diag(np.asarray(X).var(axis=0) == 0)
    draws = []
    for _ in range(n_bootstrap):
        counts = rng.multinomial(n, np.full(n, 1.0 / n)).astype(float)
        result = em(
            X,
            y,
            params,
            fit_experts=True,
            moments=ColumnMoments(metric),
            max_iter=max_iter,
            tol=tol,
            rng=rng,
            sample_weight=counts * base,
            gate_penalty=GATE_PENALTY,
            min_expert_weight=0.0,
        )
        if result.params.n_experts == params.n_experts:
            draws.append(free_values(result.params))
    if len(draws) < 2:
        raise RuntimeError("fewer than 2 bootstrap replicates kept every expert")
    return np.array(draws)


def summary_rows(estimate: ParameterCovariance, coverage: float) -> list[dict]:
    """One row per parameter: estimate, standard error, z, two-sided p-value
    (against 0) and the ``coverage`` interval, on the parameters' own scale."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be between 0 and 1; got {coverage!r}")
    quantile = stats.norm.ppf(0.5 + coverage / 2.0)
    se_free = np.sqrt(np.maximum(np.diag(estimate.covariance), 0.0))
    rows = []
    for (group, index, term), value, se in zip(
        estimate.labels, estimate.values, se_free, strict=True
    ):
        low, high = value - quantile * se, value + quantile * se
        if group == "noise":  # from log sigma: delta method, exp of the interval
            value, low, high = np.exp(value), np.exp(low), np.exp(high)
            se = value * se
        z = value / se if se > 0 and group != "noise" else np.nan
        rows.append(
            {
                "group": group,
                "index": index,
                "term": term,
                "estimate": float(value),
                "std_error": float(se),
                "z": float(z),
                "p_value": float(2.0 * stats.norm.sf(abs(z))),
                "ci_low": float(low),
                "ci_high": float(high),
            }
        )
    return rows
