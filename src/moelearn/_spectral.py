"""Method 1, step 1: the regressors from Stein-score moments (docs/method.md, section 3).

Two chunked passes over the data (four when ``d`` is large next to ``n``):

1. input mean/covariance (the whitening of ``x``), marginal skewness and kurtosis,
   and a block product ``T2 @ Omega``. When ``d <= 2 (k + 6)`` the block is the
   identity and determines ``T2``. Otherwise ``Omega`` spans ``T2``'s leading
   eigenvectors estimated on a row sample (:func:`sample_start_block`), and
   Rayleigh–Ritz on ``span[Omega, T2 Omega]`` corrects them to the whole data's
   (:func:`moelearn._tensor.krylov_eigenpairs`); when the sample's ``d x d`` work
   would cost more than it saves, ``Omega`` is random and two more passes follow:
   one subspace iteration ``T2 @ Q`` and the Rayleigh–Ritz product ``T2 @ Q``;
2. ``T3`` within the span ``U`` of ``T2``'s ``k`` leading eigenvectors, for two
   polynomials of ``y`` (``P3`` at zero noise and ``y`` itself, so that ``T3`` for
   any noise level is ``T3_0 - 3 sigma^2 T3_y`` without another pass), estimated by
   least squares on the Hermite polynomials of ``U^T x``
   (:func:`moelearn._moments.projected_moments`), and whitened by ``T2``'s
   eigenvalues: ``T3(W, W, W)`` with ``W = U |Lambda|^{-1/2}``.

The ``k x k x k`` whitened tensor is decomposed by the robust tensor power method;
regressors are un-whitened with their scale from the eigenvalues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from moelearn._links import Link, Transforms, tensor_constants, transform_coefficients
from moelearn._moments import (
    InputPass,
    RowInputs,
    column_means,
    input_pass,
    inverse_sqrt,
    projected_moments,
    regression_degree,
    t2_product,
)
from moelearn._passes import RowSource, unreported
from moelearn._scores import MixtureDensity, ScoreFunction, fit_mixture_density
from moelearn._tensor import (
    Eigenpairs,
    krylov_eigenpairs,
    orthogonal_polish,
    ritz_eigenpairs,
    robust_tensor_power,
    whitening_matrix,
)

Array = np.ndarray

OVERSAMPLING = 6
#: Extra columns of a start block from a row sample (it already nearly spans T2's
#: leading eigenvectors). Spectral error, 2 linear experts, median of 8 seeds (3 at
#: n=1e6), with k+2 columns against the exact eigendecomposition of T2:
#: d=50, n=1e5 0.0566 (exact 0.0565); d=200, n=1e5 0.1046 (0.1050); d=50, n=1e6
#: 0.0175 (0.0175); the random block with a subspace iteration: 0.0568, 0.1123,
#: 0.0175. Rayleigh–Ritz on the sample's block alone: 0.072, 0.147, 0.068.
SAMPLE_OVERSAMPLING = 2
#: Rows of the sample the start block is estimated on, per feature (at least
#: 10000). The correction errs by about the sample's relative error
#: ``sqrt(d / m)`` times the whole data's: at d=200, n=1e6 (3 seeds) 20000 rows gave
#: 0.0363, 30000 rows 0.0334 against the exact eigendecomposition's 0.0333; at
#: d=50, n=1e6 (4 seeds) 7500 rows 0.0182, 15000 rows 0.0175 (exact 0.0175).
START_ROWS_PER_FEATURE = 300
#: Subspace iterations before Rayleigh–Ritz when the block is not square. T2's
#: spectrum past the k-th eigenvalue is sampling noise of size ~2 sqrt(d Var/n), so a
#: single random block leaves it in the estimated eigenvectors. Measured spectral
#: error (2 linear experts, n=1e5, median of 8 seeds): d=50 0.103 -> 0.056 with one
#: iteration (0.057 with two); d=200 0.40 -> 0.11 (0.10), the explicit eigh's level.
POWER_ITERATIONS = 1


@dataclass(frozen=True)
class SpectralMoments:
    """Everything the passes over the data produce; solvable for any noise level."""

    link: Link
    transforms: Transforms  # at zero noise
    inputs: InputPass
    t2_values: Array  # Ritz values of T2, sorted by sign(c2) * value
    t2_vectors: Array  # (d, k) top eigenvectors of T2 (whitened coordinates)
    t3_zero_noise: Array  # (k, k, k) E[P3_0(y) S3](W, W, W)
    t3_linear: Array  # (k, k, k) E[y S3](W, W, W)
    sign: float  # sign of the T2 constant c2
    sign_ok: bool  # T2 has n_experts eigenvalues of the sign c2 predicts
    t2_noise: float  # about the operator norm of T2's sampling error
    density: dict  # the input density whose scores were used (name, components)
    # E[x y] (weighted), from the second pass; None when that pass did not sum it
    x_y: Array | None = None

    @property
    def n_experts(self) -> int:
        return self.t3_zero_noise.shape[0]

    @property
    def spectral_gap(self) -> float:
        """``|lambda_k| / |lambda_{k+1}|`` of ``T2`` (inf when ``k = d``)."""
        k = self.n_experts
        if len(self.t2_values) <= k:
            return float("inf")
        return float(abs(self.t2_values[k - 1]) / max(abs(self.t2_values[k]), 1e-300))


@dataclass(frozen=True)
class SpectralEstimate:
    experts: Array  # (k, d) in user coordinates
    weights: Array  # (k,) p_i = E[pi_i(x)] implied by the tensor scales
    tensor_values: Array  # (k,) eigenvalues of the whitened T3


def spectral_moments(
    X: RowSource,
    y: Array,
    link: Link,
    n_experts: int,
    rng: np.random.Generator,
    sample_weight: Array | None = None,
    input_density: str | int | MixtureDensity | ScoreFunction = "gaussian",
) -> SpectralMoments:
    """Compute the moment products, as weighted means with ``sample_weight``.

    ``input_density`` says whose scores ``S_m`` the moments use: ``'gaussian'``
    (the Hermite tensors of the whitened inputs; 4 passes, 2 when ``d <= 2 (k +
    6)``), a :class:`~moelearn._scores.MixtureDensity` or
    :class:`~moelearn._scores.ScoreFunction` over the raw columns, or
    ``'mixture'`` / a number of components, for a Gaussian mixture fitted to the
    row sample (:func:`~moelearn._scores.fit_mixture_density`; one component
    means the Gaussian scores). With a mixture or a score function: 3 passes
    (the input pass, ``T2`` whole or on a start block from the row sample, ``T3``
    on its leading directions); for a mixture of ``C`` components the ``T2`` pass
    costs ``O(C d^2)`` a row and keeps the rows' responsibilities, so that the
    ``T3`` pass costs ``O(C d k)``.
    """
    d = X.shape[1]
    transforms = transform_coefficients(link, 0.0)
    sign = float(np.sign(tensor_constants(transforms, link, 1.0)[0])) or 1.0
    p2 = transforms.p2(y)
    # One row sample serves every pass (on a memory map or a Dask array, gathering
    # it reads much of the data).
    rows_in = RowInputs.of(X, sample_weight)
    density, described = _resolve_density(
        input_density,
        rows_in.sampled(),
        rng,
        None if sample_weight is None else sample_weight[rows_in.sample_rows()],
    )
    kept = None  # the density's per-row values from the T2 pass, for T3's
    if density is None:
        inputs, pairs = second_moment_eigenpairs(rows_in, p2, n_experts, rng, sign)
    else:
        inputs, pairs, kept = _density_eigenpairs(rows_in, p2, density, n_experts, sign)
    sign_ok = bool(np.all(sign * pairs.values[:n_experts] > 0))
    if not sign_ok:  # fall back to the largest magnitudes; the caller warns
        order = np.argsort(-np.abs(pairs.values))
        pairs = type(pairs)(pairs.values[order], pairs.vectors[:, order])
    t2_noise = _t2_noise(p2, d, sample_weight)
    # T3 within the span of T2's leading eigenvectors, from the second pass. (T2's
    # block is re-estimated there too, but is not used: for tanh experts the common
    # norm hangs on T2's eigenvalues, and with the re-estimated ones the spectral
    # error at d=10, n=1e6 grew from 0.014 to 0.021 (median of seeds 0-5).)
    U = pairs.vectors[:, :n_experts]
    responses = np.column_stack([transforms.p3(y), y])
    t3_block, x_y = _t3_block(rows_in, responses, inputs, U, density, n_experts, kept)
    scale = U.T @ whitening_matrix(pairs, n_experts)  # diag(|lambda|^-1/2)
    t3 = np.einsum("qabc,ai,bj,ck->qijk", t3_block, scale, scale, scale)
    return SpectralMoments(
        link,
        transforms,
        inputs,
        pairs.values,
        U,
        t3[0],
        t3[1],
        sign,
        sign_ok,
        t2_noise,
        described,
        x_y,
    )


def _t2_noise(p2: Array, d: int, sample_weight: Array | None) -> float:
    """The operator norm of ``T2``'s sampling error, about ``2 tau sqrt(d / n)``.

    A ``d x d`` matrix of independent entries with sd ``tau / sqrt(n)`` has
    operator norm about ``2 tau sqrt(d / n)``; ``tau^2 ~ Var(P2)`` for the entries
    of ``P2 (x x^T - I)`` (a constant in ``P2`` adds nothing: the sample-whitened
    sum of ``x x^T - I`` is 0). With weights, ``n`` is Kish's effective sample
    size.
    """
    if sample_weight is None:
        n_effective = float(len(p2))
        p2_var = float(np.var(p2))
    else:
        n_effective = sample_weight.sum() ** 2 / float(np.sum(sample_weight**2))
        p2_var = float(
            np.average(
                (p2 - np.average(p2, weights=sample_weight)) ** 2,
                weights=sample_weight,
            )
        )
    return float(2.0 * np.sqrt(d * p2_var / n_effective))


def _t3_block(
    rows_in: RowInputs,
    responses: Array,
    inputs: InputPass,
    U: Array,
    density,
    n_experts: int,
    kept: Array | None = None,
) -> tuple[Array, Array | None]:
    """``T3`` (and ``E[y S3]``) within the span ``U`` of ``T2``'s leading
    eigenvectors, from the second pass: Hermite regressions for Gaussian scores
    (with ``E[x y]`` from the same pass, for least squares: ``y`` is the last
    response), or the density's own third-moment contraction (``E[x y]``
    ``None``; ``kept``: what the density's ``T2`` pass kept of the rows).

    (``T2``'s block is re-estimated in the Hermite pass too, but is not used: for
    tanh experts the common norm hangs on ``T2``'s eigenvalues, and with the
    re-estimated ones the spectral error at d=10, n=1e6 grew from 0.014 to 0.021,
    median of seeds 0-5.)
    """
    if density is None:
        _, t3, x_y = projected_moments(
            rows_in, responses, inputs.whitening, U, regression_degree(n_experts)
        )
        return t3, x_y
    # In raw coordinates grad_w = L^-1 grad, so T3_w(U, U, U) = T3(L^-1 U, ...).
    V = inputs.whitening.root @ U
    weighted = rows_in.weighted(responses)
    moment = density.third_moment(rows_in.X, weighted, V, kept)
    return moment / rows_in.total, None


def _resolve_density(
    spec, sample: Array, rng: np.random.Generator, sample_weight: Array | None
) -> tuple[MixtureDensity | ScoreFunction | None, dict]:
    """The density whose scores the moments use (``None``: the Gaussian's) and
    its description for ``diagnostics_['input_density']``."""
    if isinstance(spec, MixtureDensity):
        return spec, {"name": "given", "n_components": spec.n_components}
    if isinstance(spec, ScoreFunction):
        return spec, {"name": "score function", "n_components": None}
    if spec == "gaussian":
        return None, {"name": "gaussian", "n_components": 1}
    n_components = None if spec == "mixture" else int(spec)
    density, bics = fit_mixture_density(
        np.asarray(sample), n_components, rng, sample_weight
    )
    described = {
        "name": "mixture" if n_components is None else "mixture (given size)",
        "n_components": density.n_components,
        "bic": bics,
        "converged": density.converged,
    }
    return (None if density.n_components == 1 else density), described


def _density_eigenpairs(
    rows_in: RowInputs,
    p2: Array,
    density: MixtureDensity | ScoreFunction,
    n_components: int,
    sign: float,
) -> tuple[InputPass, Eigenpairs, Array | None]:
    """The input pass, then ``T2 = E[P2(y) S2(x)]`` for the density's scores (one
    pass) and its eigenpairs in whitened coordinates, ``T2_w = L^-1 T2 L^-1``
    (``L = Cov^{-1/2}``); and what that pass kept of the rows for the ``T3`` pass
    (a mixture's responsibilities, or ``None``).

    ``T2`` is taken whole when ``d <= 2 (n_components + 6)``; else only its
    product with a start block from the row sample (:func:`sample_start_block`
    with the density), corrected by :func:`~moelearn._tensor.krylov_eigenpairs`,
    as for Gaussian scores: in raw coordinates ``T2_w Omega_w = L^-1 (T2
    Omega)`` for ``Omega_w = L Omega``.
    """
    X = rows_in.X
    d = X.shape[1]
    inputs = input_pass(rows_in, np.zeros(X.shape[0]), np.zeros((d, 1)))
    root = inputs.whitening.root
    kept = density.row_memory(X)
    q = rows_in.weighted(p2)
    block = None
    if d > 2 * (n_components + OVERSAMPLING):
        block = sample_start_block(
            *_start_rows(rows_in, q), n_components + SAMPLE_OVERSAMPLING, density
        )
    if block is None:
        t2 = root @ density.second_moment(X, q, root, kept) / rows_in.total
        return inputs, ritz_eigenpairs(None, t2, np.eye(d), sign=sign), kept
    product = root @ density.second_moment(X, q, block, kept) / rows_in.total
    omega = np.linalg.solve(root, block)
    return inputs, krylov_eigenpairs(product, omega, sign), kept


def second_moment_eigenpairs(
    rows_in: RowInputs,
    p2: Array,
    n_components: int,
    rng: np.random.Generator,
    sign: float,
) -> tuple[InputPass, Eigenpairs]:
    """The input pass and the leading eigenpairs of ``E[P2(y) S2(x)]`` (1–3 passes).

    When ``d <= 2 (n_components + OVERSAMPLING)`` the start block is the identity
    and the input pass determines the matrix exactly. Otherwise the start block
    comes from a row sample (:func:`sample_start_block`) and is corrected by
    :func:`moelearn._tensor.krylov_eigenpairs` without another pass, when that
    pays (:func:`_sample_start_pays`); else it is random, with
    :data:`POWER_ITERATIONS` subspace iterations and one Rayleigh–Ritz pass.
    ``p2`` is ``P2(y)``; the sample weights, if any, are applied here.
    """
    X = rows_in.X
    n, d = X.shape
    width = n_components + OVERSAMPLING
    p2 = rows_in.weighted(p2)
    total = rows_in.total
    if d <= 2 * width:
        inputs = input_pass(rows_in, p2, np.eye(d))
        return inputs, ritz_eigenpairs(None, inputs.t2_start, inputs.omega, sign=sign)
    start_rows, start_p2 = _start_rows(rows_in, p2)
    omega = None
    if _sample_start_pays(n, len(start_rows), d, width):
        omega = sample_start_block(
            start_rows, start_p2, n_components + SAMPLE_OVERSAMPLING
        )
    if omega is not None:
        inputs = input_pass(rows_in, p2, omega)
        return inputs, krylov_eigenpairs(inputs.t2_start, inputs.omega, sign)
    inputs = input_pass(rows_in, p2, rng.standard_normal((d, width)))
    pairs = ritz_eigenpairs(
        lambda V: t2_product(X, p2, inputs.whitening, V, total),
        inputs.t2_start,
        inputs.omega,
        n_power_iter=POWER_ITERATIONS,
        sign=sign,
    )
    return inputs, pairs


def _start_rows(rows_in: RowInputs, p2: Array) -> tuple[Array, Array]:
    """The start block's rows, an evenly strided part of the row sample (about
    ``max(START_ROWS_PER_FEATURE d, 10 000)`` of them, or all), and their ``p2``
    (``p2`` has a value per row of X)."""
    sample = rows_in.sampled()  # a strided view of an in-memory X (no copy)
    d = sample.shape[1]
    every = max(1, len(sample) // max(START_ROWS_PER_FEATURE * d, 10_000))
    return sample[::every], p2[rows_in.sample_rows()][::every]


def _sample_start_pays(n_samples: int, n_sample: int, d: int, width: int) -> bool:
    """Whether a start block from ``n_sample`` rows costs less than the two passes
    it saves: its work, about ``1.5 m d^2 + 3 d^3`` (the sample's covariance and
    ``T2``, two ``d x d`` eigendecompositions), against ``4 n d w`` (two products
    with a ``w``-column block)."""
    return 1.5 * n_sample * d + 3.0 * d * d < 4.0 * n_samples * width


def sample_start_block(
    sample: Array,
    p2: Array,
    width: int,
    density: MixtureDensity | ScoreFunction | None = None,
) -> Array | None:
    """A raw-coordinate start block spanning ``T2``'s leading eigenvectors as a row
    sample estimates them.

    The sample is whitened by its own mean and covariance (``z = L_s^T (x -
    m_s)``) and ``T2_s = mean(P2 z z^T) - mean(P2) I``; its ``width`` eigenvectors
    ``V`` of largest magnitude (either sign, so that a model whose ``T2`` has the
    unexpected sign is still covered) give ``Omega = L_s V``, which the input
    pass maps to ``L^{-1} L_s V``, close to ``V`` in the whole data's whitened
    coordinates. With a ``density``, ``T2_s = L_s^-1 mean(P2 S2(x)) L_s^-1`` from its
    scores, and ``Omega = L_s^-1 V`` (``T2``'s products take raw directions
    ``L^-1 v``). ``None`` when the sample's covariance is singular.
    """
    m, d = sample.shape
    sample = np.ascontiguousarray(sample)  # a strided view: each pass over it is slow
    centred = sample - column_means(sample)
    try:
        transform = inverse_sqrt(centred.T @ centred / m)
    except ValueError:
        return None
    if density is not None:
        root = np.linalg.inv(transform)
        with unreported():  # (the sample is in memory: no pass over the data)
            t2 = root @ density.second_moment(sample, p2, root) / m
    else:
        weighted = (centred * p2[:, None]).T @ centred / m  # mean(P2 x x^T), centred
        t2 = transform.T @ weighted @ transform - float(np.mean(p2)) * np.eye(d)
    values, vectors = np.linalg.eigh(0.5 * (t2 + t2.T))
    V = vectors[:, np.argsort(-np.abs(values))[:width]]
    return transform @ V if density is None else root @ V


def spectral_solve(
    moments: SpectralMoments,
    noise_std: float,
    rng: np.random.Generator,
    n_restarts: int,
) -> SpectralEstimate:
    """Regressors from the moments for noise level ``noise_std`` (no pass over data).

    With ``W^T a_i = s_i mu_i`` (``mu_i`` orthonormal eigenvectors of the whitened
    ``T3`` from the power method, then polished jointly over orthonormal frames;
    eigenvalue ``lambda_i``), ``|c2| p_i s_i^2 = 1`` and
    ``lambda_i = c3 p_i s_i^3`` give ``s_i = |c2| lambda_i / c3`` when the constants
    do not depend on the norm (linear ``g``); the eigenvalues are first rescaled by a
    common factor so that the implied weights ``p_i = E[pi_i(x)]`` sum to one, as
    they must, and only their ratios carry noise. For links whose constants depend
    on ``|a_i| = |s_i| nu_i``, the norm comes from :func:`_common_norm`.
    ``a_i = s_i U_k D^{1/2} mu_i`` in whitened coordinates.
    """
    k = moments.n_experts
    tensor = moments.t3_zero_noise - 3.0 * noise_std**2 * moments.t3_linear
    comps = robust_tensor_power(tensor, k, rng, n_restarts=n_restarts)
    comps = orthogonal_polish(tensor, comps.vectors)
    transforms = moments.transforms.at_noise(noise_std)
    root_d = np.sqrt(np.abs(moments.t2_values[:k]))
    directions = (moments.t2_vectors * root_d) @ comps.vectors.T  # (d, k): U D^1/2 mu
    nu = np.linalg.norm(directions, axis=0)

    if not _constants_depend_on_norm(transforms, moments.link):
        # s_i = |c2| lambda_i / c3 in closed form. The weights p_i = 1 / (|c2| s_i^2)
        # must sum to one and the eigenvalues share one noisy common factor t, so
        # rescale: p_i ~ 1 / t^2 gives t^2 = sum_i p_i.
        c2, c3 = tensor_constants(transforms, moments.link, 1.0)
        scales = abs(c2) * comps.values / c3
        weights = 1.0 / (abs(c2) * scales * scales)
        total = weights.sum()
        if np.isfinite(total) and total > 0:
            scales, weights = scales * np.sqrt(total), weights / total
    else:
        # For saturating links (sigmoid) the eigenvalue barely informs the norm:
        # lambda = c3(r) r / (|c2(r)| nu) is flat in r near |a| = 1, and a 10 %
        # change of sigma moved its root from |a| = 1 to 0.85 or 1.2. T2's whitening
        # and sum_i p_i = 1 give a well-conditioned common norm instead; experts of
        # unequal norms get a biased start, which refinement corrects.
        r = _common_norm(transforms, moments.link, nu, comps.values)
        c2, c3 = tensor_constants(transforms, moments.link, r)
        scales = np.sign(c3) * r / nu
        weights = 1.0 / (abs(c2) * scales * scales)
    scales = np.where(np.isfinite(scales), scales, 1.0)
    experts_w = (directions * scales).T
    experts = moments.inputs.whitening.to_raw(experts_w)
    return SpectralEstimate(experts, weights, comps.values)


def _constants_depend_on_norm(transforms: Transforms, link: Link) -> bool:
    """Whether ``c2, c3`` change with ``|a|`` (not for linear ``g``)."""
    ref = np.array(tensor_constants(transforms, link, 1.0))
    return any(
        not np.allclose(tensor_constants(transforms, link, r), ref, rtol=1e-9)
        for r in (0.5, 2.0)
    )


def _common_norm(
    transforms: Transforms, link: Link, nu: Array, eigenvalues: Array
) -> float:
    """The norm ``r`` all experts share when ``sum_i p_i = 1``.

    Whitening gives ``p_i = nu_i^2 / (|c2(r)| r^2)``, so ``|c2(r)| r^2 = sum_i nu_i^2``,
    solved for ``log r`` in [log 0.2, log 5]. For saturating links ``|c2(r)| r^2``
    rises and falls (tanh peaks near ``r = 1``), so the equation can have two roots
    or, through sampling noise, none: every root on a fine grid is refined, and
    among several the one whose implied tensor eigenvalues
    ``c3(r) s_i / |c2(r)|`` (``s_i = r / nu_i``) match the observed ones best is
    kept; with no root, the ``r`` that comes closest.
    """
    target = np.log(np.sum(nu * nu))

    def f(x: float) -> float:
        c2 = abs(tensor_constants(transforms, link, float(np.exp(x)))[0])
        return np.log(c2 + 1e-300) + 2.0 * x - target

    grid = np.linspace(np.log(0.2), np.log(5.0), 97)
    values = np.array([f(x) for x in grid])
    roots = [
        brentq(f, grid[i], grid[i + 1], xtol=1e-10)
        for i in range(len(grid) - 1)
        if values[i] == 0.0 or values[i] * values[i + 1] < 0
    ]
    if not roots:
        return float(np.exp(grid[np.argmin(np.abs(values))]))
    if len(roots) == 1:
        return float(np.exp(roots[0]))

    def eigenvalue_misfit(x: float) -> float:
        r = float(np.exp(x))
        c2, c3 = tensor_constants(transforms, link, r)
        predicted = c3 * (r / nu) / abs(c2)
        ratio = np.abs(predicted) / np.maximum(np.abs(eigenvalues), 1e-300)
        return float(np.sum(np.log(ratio + 1e-300) ** 2))

    return float(np.exp(min(roots, key=eigenvalue_misfit)))
