"""Cheap starting points for EM besides the spectral step.

Each start is a :class:`~moelearn._model.MoEParams` on the columns EM runs on
(``[x, 1]`` when intercepts are fitted). They serve two guarantees:

* **never worse than one expert**: :func:`regression_split` puts every expert at
  the (weighted) least-squares fit with its noise level, so the mixture *is* the
  one-expert model whatever the gate, and EM, which never lowers the objective,
  ends at least there;
* **never worse than fewer experts**: :func:`split_expert` turns a fit with
  ``k - 1`` experts into a start with ``k`` that is nearly the same model.

:func:`residual_bands` is a data-driven start for tables whose experts differ in
level or slope: the least-squares residuals, cut into ``k`` quantile bands, each
band's own least-squares fit an expert.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moelearn._model import MoEParams
from moelearn._passes import reduce_rows, take_rows

Array = np.ndarray

#: Rows the residual-band start fits its experts on.
BAND_ROWS = 20_000
#: Logit spread of a random gate row: standard deviation over the inputs.
GATE_SPREAD = 1.0


@dataclass(frozen=True)
class LeastSquares:
    """The one-expert model ``y = b . x + sigma eps`` fitted by least squares."""

    coef: Array  # (D,)
    noise_std: float
    log_likelihood: float  # mean per (weighted) row, at the MLE


def least_squares(
    X,
    y: Array,
    mean: Array,
    covariance: Array,
    sample_weight: Array | None = None,
    x_y: Array | None = None,
) -> LeastSquares:
    """Weighted least squares on the columns of ``X`` from their ``mean`` and
    ``covariance`` (the Gram matrix ``E[x x^T] = Cov + mean mean^T``) and
    ``E[x y]`` (``x_y``, or one pass). A constant column (variance 0,
    mean 1) is an intercept.

    ``sigma^2 = E[y^2] - b^T E[x y]`` and the mean log-likelihood
    ``-log(2 pi sigma^2) / 2 - 1/2``.
    """
    w = np.ones(len(y)) if sample_weight is None else sample_weight
    xy = x_y
    if xy is None:
        xy = reduce_rows(_cross_products, X, y * w) / float(w.sum())
    gram = covariance + np.outer(mean, mean)
    coef = np.linalg.lstsq(gram, xy, rcond=None)[0]
    y2 = float(np.average(y * y, weights=w))  # E[y^2]
    var = max(y2 - float(coef @ xy), 1e-12 * y2, 1e-300)
    ll = -0.5 * np.log(2.0 * np.pi * var) - 0.5
    return LeastSquares(coef, float(np.sqrt(var)), float(ll))


def _cross_products(xc: Array, wyc: Array) -> Array:
    return wyc @ xc


def random_rows(
    rng: np.random.Generator,
    n_rows: int,
    mean: Array,
    transform: Array,
    spread: float | Array = GATE_SPREAD,
    level: float | Array = 0.0,
) -> Array:
    """``n_rows`` random rows on the columns of ``X`` (``mean``, whitening
    ``transform`` of the non-constant ones): uniform directions whose values
    ``x . row`` have standard deviation ``spread`` over the inputs. A last
    constant column (``mean`` one longer than ``transform``) gets the offset that
    makes each row's mean value ``level``. ``spread`` and ``level`` may be given
    per row."""
    d = transform.shape[0]
    directions = rng.standard_normal((n_rows, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    slopes = np.reshape(spread, (-1, 1)) * directions @ transform.T
    if mean.shape[0] == d:
        return slopes
    return np.column_stack([slopes, level - slopes @ mean[:d]])


def random_gate(
    rng: np.random.Generator, n_rows: int, mean: Array, transform: Array
) -> Array:
    """``n_rows`` gate rows: :func:`random_rows` with logits of standard deviation
    :data:`GATE_SPREAD`, centred."""
    return random_rows(rng, n_rows, mean, transform)


def random_starts(
    rng: np.random.Generator,
    n_starts: int,
    template: MoEParams,
    mean: Array,
    transform: Array,
    y_mean: float,
    y_std: float,
    gate_spread: float = GATE_SPREAD,
) -> list[MoEParams]:
    """Experts in random directions whose predictions have spread ``y_std`` and,
    with intercepts, mean ``y_mean``; random gate rows whose logits have spread
    ``gate_spread``, centred; ``template``'s noise. :class:`moelearn.EMMoE`'s
    start (one), and the start race's random starts: ``n_starts`` drawn at once,
    the same values as one at a time."""
    k = template.n_experts
    # each start's k expert rows, then its k - 1 gate rows
    spread = np.tile(np.r_[np.full(k, y_std), np.full(k - 1, gate_spread)], n_starts)
    level = np.tile(np.r_[np.full(k, y_mean), np.zeros(k - 1)], n_starts)
    rows = random_rows(rng, n_starts * (2 * k - 1), mean, transform, spread, level)
    starts = []
    for own in np.split(rows, n_starts):
        gating = np.zeros_like(template.gating)
        gating[: k - 1] = own[k:]
        starts.append(replace(template, experts=own[:k], gating=gating))
    return starts


def regression_split(
    fit: LeastSquares,
    n_experts: int,
    gating_rows: int,
    rng: np.random.Generator,
    mean: Array,
    transform: Array,
    template: MoEParams,
) -> MoEParams:
    """Every expert at the least-squares fit, a random gate: exactly the one-expert
    model (its likelihood), from which EM moves the experts apart along the gate."""
    experts = np.tile(fit.coef, (n_experts, 1))
    gating = np.zeros((gating_rows, experts.shape[1]))
    free = n_experts - 1
    gating[:free] = random_gate(rng, free, mean, transform)
    return replace(
        template,
        experts=experts,
        gating=gating,
        noise_std=_noise_like(template, fit.noise_std),
    )


def residual_bands(
    X, y: Array, fit: LeastSquares, template: MoEParams, rng: np.random.Generator
) -> MoEParams:
    """Experts fitted by least squares on the ``k`` quantile bands of the
    least-squares residuals (on at most :data:`BAND_ROWS` random rows); the gate
    starts at zero, the noise at the bands' pooled residual level."""
    n = X.shape[0]
    rows = (
        np.arange(n)
        if n <= BAND_ROWS
        else np.sort(rng.choice(n, size=BAND_ROWS, replace=False))
    )
    Xs, ys = np.asarray(take_rows(X, rows)), y[rows]
    k = template.n_experts
    resid = ys - Xs @ fit.coef
    edges = np.quantile(resid, np.linspace(0.0, 1.0, k + 1)[1:-1])
    band = np.searchsorted(edges, resid)
    experts, rss = np.tile(fit.coef, (k, 1)), 0.0
    for j in range(k):
        inside = band == j
        if inside.sum() > Xs.shape[1]:
            experts[j] = np.linalg.lstsq(Xs[inside], ys[inside], rcond=None)[0]
        rss += float(np.sum((ys[inside] - Xs[inside] @ experts[j]) ** 2))
    sigma = max(np.sqrt(rss / len(ys)), 1e-3 * fit.noise_std)
    return replace(
        template,
        experts=experts,
        gating=np.zeros_like(template.gating),
        noise_std=_noise_like(template, sigma),
    )


def split_expert(
    params: MoEParams, share: Array, rng: np.random.Generator, transform: Array
) -> MoEParams:
    """A softmax-gated fit with one more expert: the expert with the largest
    ``share`` of the gate is copied, and the two copies' gate rows are pushed
    apart along a random direction (logit spread 0.5 over the inputs), so the
    start is nearly the fitted model.

    With a gate bias (a last constant column, ``params.gating`` one wider than
    ``transform``) both copies' biases drop by ``log 2``, so the pair's gate
    weight is the copied expert's times ``cosh(delta . x)``: the start's
    log-likelihood is within ``O(delta^2)`` of the fit's. Without one, the pair
    takes twice the copied expert's weight and the start can be far less likely
    (a k-expert gate without biases does not contain every (k-1)-expert one)."""
    j = int(np.argmax(share))
    d = transform.shape[0]
    direction = rng.standard_normal(d)
    direction = 0.25 * direction / np.linalg.norm(direction) @ transform.T
    delta = np.zeros(params.gating.shape[1])
    delta[:d] = direction
    gating = np.vstack([params.gating, params.gating[j] + delta])
    gating[j] -= delta
    if params.gating.shape[1] > d:
        gating[[j, -1], d] -= np.log(2.0)
    gating -= gating[-1]
    experts = np.vstack([params.experts, params.experts[j]])
    noise = params.noise_std
    if np.ndim(noise):
        noise = np.append(noise, np.asarray(noise)[j])
    return replace(params, experts=experts, gating=gating, noise_std=noise)


def _noise_like(template: MoEParams, sigma: float):
    """``sigma`` shaped as ``template``'s noise (shared or one per expert)."""
    if np.ndim(template.noise_std):
        return np.full(template.n_experts, sigma)
    return float(sigma)
