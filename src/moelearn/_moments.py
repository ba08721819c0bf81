"""Stein-score moments computed from samples in row chunks.

Nothing here forms a ``d x d x d`` tensor. The second-order moment is used only
through block products ``T2 @ V`` and the third-order one only within the span of
``k`` orthonormal directions ``U``, each an average over samples of low-dimensional
projections:

* ``T2 V = E[P2(y) (x x^T - I)] V = E[P2(y) x (x^T V)] - E[P2(y)] V``;
* ``T2(U, U)`` and ``T3(U, U, U)`` are ``E[P(y) S_m(z)]`` for ``z = U^T x``, whose
  entries are Hermite polynomials ``He_alpha(z)`` (:func:`projected_moments`).

Here ``x`` is the *whitened* input ``L^T (x_raw - mean)``; the kernels take raw rows
and fold the affine map into the vectors, so the data are never copied.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from moelearn._arrays import empty, like, namespace, projections
from moelearn._mmap import release_pages
from moelearn._passes import RowSource, chunk_rows, reduce_rows, row_slices, take_rows
from moelearn._validation import check_finite_2d

Array = np.ndarray


@dataclass(frozen=True)
class Whitening:
    """Affine map ``x_w = L^T (x - mean)`` with ``L^T Cov(x) L = I``."""

    mean: Array  # (d,)
    transform: Array  # L, (d, d)
    covariance: Array  # (d, d)

    @property
    def root(self) -> Array:
        """``L^{-1} = Cov^{1/2}``: a whitened vector ``v`` is ``L^{-1} v`` in raw
        coordinates (gradients map back by it: ``grad_w = L^{-1} grad``)."""
        return self.covariance @ self.transform

    def to_raw(self, V: Array) -> Array:
        """Vectors acting on whitened inputs, as vectors acting on centred raw inputs.

        ``x_w . v = (x - mean) . (L v)``; works row-wise for ``V`` of shape ``(k, d)``.
        """
        return V @ self.transform.T


@dataclass(frozen=True)
class InputPass:
    """What the first pass over the data learns."""

    whitening: Whitening
    skewness: Array  # per raw column
    excess_kurtosis: Array  # per raw column
    t2_start: Array  # T2 @ omega_w, (d, m), in whitened coordinates
    omega: Array  # the whitened start block omega_w, (d, m)
    few_values: Array  # per raw column: at most FEW_VALUES distinct values sampled


@dataclass
class RowInputs:
    """The rows a spectral step reads, gathered once: ``X`` (any row source), its
    sample weights (``None``: every row weighs 1) and the row sample
    :func:`row_sample` picks, read into memory at most once (on a memory map or a
    Dask array, gathering it reads much of the data). ``sample`` may be given:
    those rows in memory (:func:`input_pass` takes any rows, for the marginal
    shape; :func:`projected_moments` pairs them with :meth:`sample_rows`); else
    :meth:`sampled` reads them."""

    X: RowSource
    sample_weight: Array | None = None
    sample: Array | None = None

    @classmethod
    def of(cls, X: RowSource, sample_weight: Array | None = None) -> RowInputs:
        """The inputs with their row sample read now."""
        inputs = cls(X, sample_weight)
        inputs.sampled()
        return inputs

    @property
    def total(self) -> float:
        """``sum_i w_i`` (the number of rows without weights)."""
        w = self.sample_weight
        return float(self.X.shape[0] if w is None else w.sum())

    def weighted(self, values: Array) -> Array:
        """``w_i values_i`` row by row (``values`` unchanged without weights)."""
        w = self.sample_weight
        if w is None:
            return values
        return values * (w if values.ndim == 1 else w[:, None])

    def sample_rows(self):
        """The row sample's rows in ``X`` (:func:`row_sample`)."""
        return row_sample(self.X.shape[0])

    def sampled(self) -> Array:
        """The row sample, read the first time it is asked for."""
        if self.sample is None:
            self.sample = take_rows(self.X, self.sample_rows())
        return self.sample


def input_pass(
    inputs: RowInputs,
    p2: Array,
    omega_raw: Array,
    marginal_shape: bool = True,
) -> InputPass:
    """One pass: input mean/covariance, marginal shape, and a first ``T2`` block product.

    The whitening is unknown until the pass ends, so the product is accumulated
    against the raw block ``omega_raw`` about a provisional centre ``c`` and
    corrected afterwards; the whitened start block is ``omega_w = L^{-1} omega_raw``.
    Returns ``T2 @ omega_w`` exactly as a second pass with the final whitening
    would. Skewness and kurtosis come from the inputs' row sample
    (:meth:`RowInputs.sampled`), at most :data:`SHAPE_ROWS` of its rows,
    unweighted; without ``marginal_shape`` they are NaN and no sample is read.

    With a sample already read and no weights, the chunks' sums are accumulated
    in single precision when the sample shows that rounding cannot matter
    (:func:`single_precision_centre`); else in double precision, about the first
    chunk's mean when the columns' means are large next to their spread (to avoid
    cancellation), else about zero (no copy of the rows). With sample weights
    every expectation is the weighted mean ``sum_i w_i f_i / sum_i w_i`` and
    ``p2`` holds ``w_i P2(y_i)`` (:meth:`RowInputs.weighted`, as for
    :func:`t2_product`).
    """
    X = inputs.X
    d = X.shape[1]
    # A NaN or infinite value in X (validation may leave the check to this pass)
    # makes the sums' arithmetic warn: the error below names it instead. (Other
    # warnings pass through as raised, so that the filters treat them as usual.)
    with np.errstate(invalid="ignore", over="ignore"):
        centre, (s1, p2_x, s2, p2_xxo) = _input_pass_sums(inputs, p2, omega_raw)
    if not (np.all(np.isfinite(s1)) and np.all(np.isfinite(s2))):
        check_finite_2d(X)
        raise ValueError(
            "the inputs' sums overflowed: rescale the columns of X (e.g. "
            "standardise them)"
        )
    total = inputs.total
    p2_sum = float(p2.sum())
    delta = s1 / total  # mean - centre
    mean = centre + delta
    cov = s2 / total - np.outer(delta, delta)
    cov = 0.5 * (cov + cov.T)
    transform = inverse_sqrt(cov)
    skewness = kurtosis = np.full(d, np.nan)
    few_values = np.zeros(d, dtype=bool)
    if marginal_shape:
        sample = inputs.sampled()
        skewness, kurtosis = _marginal_shape(sample[:: -(-len(sample) // SHAPE_ROWS)])
        few_values = _few_values(sample)
        release_pages(X)  # a memory map's sample may be a view of it

    # sum p2 (x - mean)(x - mean)^T omega, from sums about the centre.
    do = delta @ omega_raw
    c2o = (
        p2_xxo.T
        - np.outer(p2_x, do)
        - np.outer(delta, p2_x @ omega_raw)
        + p2_sum * np.outer(delta, do)
    ) / total
    p2_mean = p2_sum / total
    omega_w = transform.T @ cov @ omega_raw  # L^{-1} omega_raw
    t2_start = transform.T @ c2o - p2_mean * omega_w
    return InputPass(
        Whitening(mean, transform, cov),
        skewness,
        kurtosis,
        t2_start,
        omega_w,
        few_values,
    )


def _input_pass_sums(inputs: RowInputs, p2: Array, omega_raw: Array):
    """The pass of :func:`input_pass`: its centre ``c`` and the sums about it,
    ``sum (x - c)``, ``sum p2 (x - c)``, ``sum (x - c)(x - c)^T`` and
    ``sum p2 (omega^T (x - c))(x - c)^T``; in single precision where the row
    sample allows it, else in double precision."""
    X, sample_weight, sample = inputs.X, inputs.sample_weight, inputs.sample
    n, d = X.shape
    centre = None
    if sample is not None and sample_weight is None:
        centre = single_precision_centre(sample, n)
    if centre is not None:
        gram = reduce_rows(
            partial(_single_precision_sums, centre=centre, omega_raw=omega_raw), X, p2
        )
        return centre, (gram[d, :d], gram[d + 1, :d], gram[:d, :d], gram[d + 2 :, :d])
    first = take_rows(X, slice(0, chunk_rows(d)))
    centre = first.mean(axis=0)
    if np.all(np.abs(centre) <= 10.0 * (first.std(axis=0) + 1e-300)):
        centre = np.zeros(d)  # cancellation costs at most two digits
    kernel = partial(_input_sums, centre=centre, omega_raw=omega_raw)
    per_row = (p2,) if sample_weight is None else (p2, sample_weight)
    (s1, p2_x), s2, p2_xxo = reduce_rows(kernel, X, *per_row)
    return centre, (s1, p2_x, s2, p2_xxo)


def _input_sums(xc: Array, w: Array, *sw: Array, centre: Array, omega_raw: Array):
    """``[sum x, sum p2 x]``, ``sum x x^T`` and ``sum p2 (omega^T x) x^T`` (the
    last transposed) over a chunk, about ``centre``; with a sample weight ``sw``
    the first two sums are weighted by it (``w`` already carries it)."""
    xp = namespace(xc)
    if np.any(centre != 0):
        xc = xc - like(centre, xc)
    if sw:
        s1, s2 = sw[0] @ xc, xc.T @ (sw[0][:, None] * xc)
    else:
        s1, s2 = xp.sum(xc, axis=0), xc.T @ xc
    return (s1, w @ xc), s2, (projections(omega_raw.T, xc) * w) @ xc


def _single_precision_sums(xc: Array, p2: Array, centre: Array, omega_raw: Array):
    """The sums of :func:`_input_sums` (unweighted) as one Gram matrix ``B^T B`` of
    the single-precision columns ``B = [x - c, 1, p2, p2 omega^T (x - c)]`` over a
    chunk (returned in double precision): one symmetric product, at half the
    cost of double precision. ``B`` is filled in place (20 ms a pass less than
    joining its columns, at n = 1e6, d = 50)."""
    xp = namespace(xc)
    if np.any(centre != 0):
        xc = xc - like(centre, xc)
    rows, d = xc.shape
    columns = empty(xc, (rows, d + 2 + omega_raw.shape[1]), xp.float32)
    columns[:, :d] = xc  # rounded as it is copied
    columns[:, d] = 1.0
    columns[:, d + 1] = p2
    omega = xp.astype(like(omega_raw, xc), xp.float32)
    columns[:, d + 2 :] = (columns[:, :d] @ omega) * columns[:, d + 1 : d + 2]
    return xp.astype(columns.T @ columns, xp.float64)


#: The rounding error single precision may add to the whitened covariance
#: (``L^T Cov L = I``), bounded as in :func:`single_precision_centre`: 1% of its
#: sampling error ``sqrt(2 / n)`` at n = 2e6 (both errors shrink as ``1 / sqrt(n)``).
SINGLE_PRECISION_ERROR = 1e-5
#: Most rows of the sample :func:`single_precision_centre` checks.
PRECISION_CHECK_ROWS = 10_000


def single_precision_centre(sample: Array, n_samples: int) -> Array | None:
    """A centre ``c`` about which single-precision sums of ``x x^T`` over
    ``n_samples`` rows keep the whitened covariance within
    :data:`SINGLE_PRECISION_ERROR`, judged from the row ``sample``: zero, else the
    sample's mean, else ``None`` (accumulate in double precision).

    Rounding the sums ``S_ij = sum (x_i - c_i)(x_j - c_j)`` to relative precision
    ``u = 2^-24`` moves the whitened covariance by less than ``u sqrt(d) /
    lambda_min(R)``, ``R = D^{-1/2} Cov D^{-1/2}`` with ``D`` the diagonal of
    ``E[(x - c)(x - c)^T]`` (the correlation matrix when ``c`` is the mean: a
    far-off centre or collinear columns lose digits); measured at n = 1e6, d = 50,
    for ``lambda_min`` from 1 down to 1e-6, by 0.02-0.17 of it. The check uses at most
    :data:`PRECISION_CHECK_ROWS` rows and at most an eighth of the data (it costs
    ``m d^2 / 2`` against the ``n d^2 / 4`` it saves), and needs ``4 d`` of them;
    with few rows ``lambda_min`` comes out low, which errs toward double precision.
    Columns whose spread about ``c`` is outside ``[1e-15, 1e15]`` are summed in
    double precision (their squares could underflow or overflow).
    """
    d = sample.shape[1]
    m = min(len(sample), n_samples // 8, PRECISION_CHECK_ROWS)
    if m < 4 * d:
        return None
    rows = sample[:: len(sample) // m][:m]
    mean = column_means(rows)
    centred = rows - mean
    cov = centred.T @ centred / m
    lowest = 2.0**-24 * np.sqrt(d) / SINGLE_PRECISION_ERROR
    for centre in (np.zeros(d), mean):
        scale = np.sqrt(np.diag(cov) + (mean - centre) ** 2)
        if not np.all((scale > 1e-15) & (scale < 1e15)):
            continue  # squares could underflow or overflow in single precision
        if np.linalg.eigvalsh(cov / np.outer(scale, scale))[0] >= lowest:
            return centre
    return None


def input_whitening(X: RowSource) -> Whitening:
    """The input whitening alone (mean, covariance, ``Cov^{-1/2}``), in one pass."""
    n, d = X.shape
    return input_pass(
        RowInputs(X), np.zeros(n), np.zeros((d, 1)), marginal_shape=False
    ).whitening


SAMPLE_ROWS = 50_000
#: Most rows the marginal skewness and kurtosis are measured on: standard errors
#: ``sqrt(6 / m)`` = 0.017 and ``sqrt(24 / m)`` = 0.035, far below the 0.5 and 1.0
#: beyond which ``fit`` calls the inputs far from Gaussian (on all 50 000 sampled
#: rows they took 13 ms at d = 50, a quarter of a pass).
SHAPE_ROWS = 20_000


def row_sample(n_samples: int) -> slice:
    """Evenly strided rows, ``SAMPLE_ROWS`` to ``2 SAMPLE_ROWS`` of them (all when
    fewer), for what a subset measures well enough: the inputs' marginal shape,
    the spectral step's start block and the Hermite expansion of its ``T3`` pass."""
    return slice(None, None, max(1, n_samples // SAMPLE_ROWS))


def column_means(rows: Array) -> Array:
    """Column means as a matrix-vector product: for a strided row sample (a view of
    every ``s``-th row) BLAS takes 1.1 ms where ``rows.mean(axis=0)`` takes 11 ms
    (50000 x 50)."""
    return np.ones(len(rows)) @ rows / len(rows)


#: A column with at most this many distinct values among :data:`VALUE_ROWS`
#: sampled rows counts as discrete (dummies, codes, months): no continuous
#: density describes it, and a fitted mixture's scores there are unreliable.
FEW_VALUES = 20
VALUE_ROWS = 1000


def _few_values(sample: Array) -> Array:
    """Per column, whether the first :data:`VALUE_ROWS` rows of ``sample`` hold at
    most :data:`FEW_VALUES` distinct values (and there are more rows than that)."""
    rows = np.sort(np.asarray(sample[: min(len(sample), VALUE_ROWS)]), axis=0)
    if len(rows) <= 2 * FEW_VALUES:
        return np.zeros(rows.shape[1], dtype=bool)
    distinct = 1 + np.count_nonzero(np.diff(rows, axis=0), axis=0)
    return distinct <= FEW_VALUES


def _marginal_shape(sample: Array) -> tuple[Array, Array]:
    """Per-column skewness and excess kurtosis of the rows ``sample``."""
    m, d = sample.shape
    mean = column_means(sample)
    powers = np.zeros((3, d))
    for rows in row_slices(m, d):
        c = sample[rows] - mean
        c2 = c * c
        powers += [
            c2.sum(axis=0),
            np.einsum("ij,ij->j", c2, c),
            np.einsum("ij,ij->j", c2, c2),
        ]
    m2, m3, m4 = powers / m
    m2 = np.where(m2 > 0, m2, np.inf)
    return m3 / m2**1.5, m4 / (m2 * m2) - 3.0


class SingularColumnsError(ValueError):
    """The inputs' covariance is singular: ``columns`` (counted from 0) are
    constant (``constant``) or (nearly) collinear. :meth:`named` gives the same
    error with the columns' names (estimators re-raise it so)."""

    def __init__(
        self, columns: list[int], constant: bool, names: list[str] | None = None
    ):
        self.columns, self.constant, self.names = list(columns), constant, names
        listed = ", ".join(
            repr(str(names[j])) if names is not None else str(j)
            for j in self.columns[:5]
        )
        if constant:
            text = (
                f"column(s) {listed} of X are constant: drop them (with "
                "fit_intercept=True the model has its own constant)"
            )
        else:
            text = (
                f"columns {listed} of X are (nearly) collinear: one is a "
                "combination of the others, so their covariance is singular; drop "
                "or combine them"
            )
        super().__init__(text)

    def named(self, names) -> SingularColumnsError:
        return SingularColumnsError(self.columns, self.constant, list(names))

    def __reduce__(self):  # (raised in Dask workers: pickled with its fields)
        return (type(self), (self.columns, self.constant, self.names))


def _singular_columns(cov: Array, null_direction: Array) -> SingularColumnsError:
    """Which columns make the covariance singular: the constant ones, or else
    those that carry the near-null direction."""
    variances = np.diag(cov)
    scale = max(float(variances.max(initial=0.0)), 1e-300)
    constant = np.flatnonzero(variances <= 1e-12 * scale)
    if constant.size:
        return SingularColumnsError(constant.tolist(), True)
    weights = np.abs(null_direction) * np.sqrt(np.maximum(variances, 0.0))
    involved = np.flatnonzero(weights > 0.1 * weights.max())
    return SingularColumnsError(involved.tolist(), False)


def inverse_sqrt(cov: Array) -> Array:
    """Symmetric ``Cov^{-1/2}``; ``ValueError`` when columns are (near) collinear."""
    evals, evecs = np.linalg.eigh(cov)
    top = evals[-1] if evals.size else 0.0
    if not np.isfinite(top) or top <= 0 or evals[0] <= 1e-10 * top:
        raise _singular_columns(cov, evecs[:, 0])
    return (evecs / np.sqrt(evals)) @ evecs.T


def t2_product(
    X: RowSource, p2: Array, whitening: Whitening, V: Array, total: float | None = None
) -> Array:
    """``T2 @ V`` for whitened ``V`` (d, m), in one chunked pass.

    ``T2 V = L^T E[P2(y) (x - mean) (x - mean)^T] L V - E[P2(y)] V``. With sample
    weights, ``p2`` holds ``w_i P2(y_i)`` and ``total`` is ``sum_i w_i``.
    """
    n = X.shape[0] if total is None else total
    U = whitening.transform @ V  # acts on centred raw rows
    offset = (whitening.mean @ U)[:, None]
    acc, acc_sum = reduce_rows(partial(_t2_sums, U=U, offset=offset), X, p2)
    centred = (acc.T - np.outer(whitening.mean, acc_sum)) / n
    return whitening.transform.T @ centred - (p2.sum() / n) * V


def _t2_sums(xc: Array, w: Array, U: Array, offset: Array):
    """``sum p2 (U^T x - offset) x^T`` and ``sum p2 (U^T x - offset)`` over a chunk."""
    weighted = (projections(U.T, xc) - like(offset, xc)) * w
    return weighted @ xc, namespace(xc).sum(weighted, axis=1)


#: Most Hermite polynomials the moment regression (:func:`projected_moments`) fits:
#: degree 4 for 2 or 3 experts (15, 35 polynomials), degree 3 for 4 (35), the plain
#: sample means beyond. The pass evaluates each polynomial on every row: a depth-2
#: hierarchical fit (k = 4, d = 10, n = 1e6) took 3.45-3.63 s with degree 4 (70
#: polynomials), 2.95-3.16 s with degree 3 and 3.02-3.16 s with the plain means.
#: The gain is in the sampling noise of two-expert fits; with more experts the
#: gate's cross terms bias the spectral start more than its noise does.
MAX_REGRESSION_FEATURES = 35


#: The Hermite pass takes chunks this many times the usual size: its temporaries
#: are ``p`` rows long (about 1.3 MB at p = 15, d = 50) and its chunk a view, so
#: fewer, larger chunks cost less: 87 ms against 106 ms at n = 1e6, d = 50.
HERMITE_CHUNK_SCALE = 4


def hermite_indices(k: int, degree: int) -> list[tuple[int, ...]]:
    """The multi-indices ``alpha`` of ``k`` variables with ``|alpha| <= degree``, by
    degree."""
    indices = []
    for m in range(degree + 1):
        for variables in itertools.combinations_with_replacement(range(k), m):
            indices.append(tuple(variables.count(j) for j in range(k)))
    return indices


def regression_degree(k: int) -> int | None:
    """The highest degree (4 or 3) whose Hermite polynomials in ``k`` variables
    number at most :data:`MAX_REGRESSION_FEATURES`; ``None`` when none does."""
    for degree in (4, 3):
        if len(hermite_indices(k, degree)) <= MAX_REGRESSION_FEATURES:
            return degree
    return None


def hermite_features(z: Array, indices: list[tuple[int, ...]]) -> Array:
    """``He_alpha(z) = prod_j He_{alpha_j}(z_j)`` (probabilists' Hermite
    polynomials, ``He_{m+1}(t) = t He_m(t) - m He_{m-1}(t)``) for each ``alpha``.

    ``z`` is ``(k, rows)``; returns ``(len(indices), rows)``. For NumPy the
    products are written into the result, with no temporaries: at n = 1e6, k = 2
    the polynomials took about 7 ms a pass against 15-20 ms when gathered.
    """
    xp = namespace(z)
    he = [xp.ones_like(z), z]
    for m in range(1, max(2, max(map(sum, indices)))):
        he.append(z * he[m] - m * he[m - 1])
    if xp is not np:
        return xp.stack(
            [math.prod(he[a][j] for j, a in enumerate(alpha)) for alpha in indices]
        )
    k = z.shape[0]
    features = np.empty((len(indices), z.shape[1]))
    for row, alpha in zip(features, indices, strict=True):
        if k == 1:
            row[...] = he[alpha[0]][0]
            continue
        np.multiply(he[alpha[0]][0], he[alpha[1]][1], out=row)
        for j in range(2, k):
            row *= he[alpha[j]][j]
    return features


def _projected_features(
    xc: Array, U: Array, offset: Array, indices: list[tuple[int, ...]]
) -> Array:
    """``He_alpha(z)`` for ``z = U^T x - offset`` of a chunk's rows, ``(p, rows)``."""
    z = projections(U.T, xc) - like(offset, xc)
    return hermite_features(z, indices)


def _hermite_fit_sums(
    xc: Array,
    responses: Array,
    *sw: Array,
    U: Array,
    offset: Array,
    indices: list[tuple[int, ...]],
):
    """The least-squares sums ``sum_i s_i He(z_i) He(z_i)^T`` (p, p) and
    ``sum_i s_i He(z_i) P(y_i)^T`` (p, q), ``z = U^T x - offset``, over a chunk."""
    features = _projected_features(xc, U, offset, indices)
    weighted = features * sw[0] if sw else features
    return weighted @ features.T, weighted @ responses


def _residual_sums(
    xc: Array,
    responses: Array,
    *sw: Array,
    U: Array,
    offset: Array,
    indices: list[tuple[int, ...]],
    coefficients: Array,
):
    """``sum_i s_i He(z_i) (P(y_i) - beta^T He(z_i))^T`` (p, q), ``z = U^T x -
    offset``, over a chunk (``s_i`` the sample weights, 1 without), and ``sum_i
    s_i P_q(y_i) x_i`` (d,) for the last response column."""
    features = _projected_features(xc, U, offset, indices)
    residuals = responses - features.T @ like(coefficients, xc)
    sums = (features * sw[0] if sw else features) @ residuals
    last = responses[:, -1] * sw[0] if sw else responses[:, -1]
    return sums, last @ xc


def projected_moments(
    inputs: RowInputs,
    responses: Array,
    whitening: Whitening,
    U: Array,
    degree: int | None,
) -> tuple[Array, Array, Array]:
    """``E[P_j(y) S2(z)]`` and ``E[P_j(y) S3(z)]`` of the projected whitened inputs
    ``z = U^T x`` (orthonormal ``U``, ``d x k``), for each column ``P_j(y)`` of
    ``responses``, in one chunked pass, and ``E[P_q(y) x]`` of the last column
    (least squares' ``E[x y]`` when it is ``y``).

    ``z`` is standard normal, so the score tensors are Hermite polynomials,
    ``S_m(z)_{i_1..i_m} = He_alpha(z)`` with ``alpha`` the counts of the indices,
    and ``E[He_alpha He_gamma] = alpha! [alpha = gamma]``. Hence for any
    coefficients ``beta``

        ``E[P He_alpha] = alpha! beta_alpha + E[He_alpha (P - sum_gamma beta_gamma He_gamma)]``.

    With ``degree``, ``beta`` is the least-squares fit of ``P`` on every
    ``He_gamma(z)`` with ``|gamma| <= degree`` on the inputs' row sample
    (:meth:`RowInputs.sampled`), and the pass averages the second
    term over all rows: the fitted parts of ``P``, which carry much of its
    variance, no longer add sampling noise (a control variate; to first order the
    error is that of the least-squares fit on all rows, and it is that fit exactly
    when the sample is all rows). With ``degree=None``, ``beta = 0``: the plain
    weighted means of ``P S_m(z)``.

    Returns ``(q, k, k)`` and ``(q, k, k, k)`` arrays and the ``(d,)`` mean.
    """
    X, sample_weight = inputs.X, inputs.sample_weight
    k = U.shape[1]
    responses = responses.reshape(X.shape[0], -1)
    indices = hermite_indices(k, degree or 3)
    transform = whitening.transform @ U
    offset = (whitening.mean @ transform)[:, None]
    factorials = np.array([math.prod(map(math.factorial, a)) for a in indices])
    coefficients: Array = np.zeros((len(indices), responses.shape[1]))
    if degree is not None:
        rows = inputs.sample_rows()
        per_sample: tuple[Array, ...] = (responses[rows],)
        if sample_weight is not None:
            per_sample += (sample_weight[rows],)
        sample = np.asarray(inputs.sampled())
        gram, cross = 0.0, 0.0
        # In chunks, which stay in cache; not reduce_rows: this is no pass over X.
        for part in row_slices(*sample.shape, scale=HERMITE_CHUNK_SCALE):
            sums = _hermite_fit_sums(
                sample[part],
                *(a[part] for a in per_sample),
                U=transform,
                offset=offset,
                indices=indices,
            )
            gram, cross = gram + sums[0], cross + sums[1]
        # Normal equations: the Hermite polynomials are orthogonal for Gaussian z,
        # so the Gram matrix is close to diag(alpha!).
        coefficients = np.linalg.lstsq(gram, cross, rcond=None)[0]
    kernel = partial(
        _residual_sums,
        U=transform,
        offset=offset,
        indices=indices,
        coefficients=coefficients,
    )
    per_row = (responses,) if sample_weight is None else (responses, sample_weight)
    sums, last_x = reduce_rows(kernel, X, *per_row, scale=HERMITE_CHUNK_SCALE)
    moments = factorials[:, None] * coefficients + sums / inputs.total
    position = {alpha: i for i, alpha in enumerate(indices)}
    return (
        _moment_tensor(moments, position, 2, k),
        _moment_tensor(moments, position, 3, k),
        last_x / inputs.total,
    )


def _moment_tensor(moments: Array, position: dict, order: int, k: int) -> Array:
    """The ``(q,) + (k,) * order`` tensors whose entry ``i_1..i_m`` is row
    ``alpha(i_1..i_m)`` of ``moments`` (``E[P He_alpha]``)."""
    tensor = np.empty((moments.shape[1],) + (k,) * order)
    for entry in itertools.product(range(k), repeat=order):
        alpha = tuple(entry.count(j) for j in range(k))
        where: Any = (slice(None), *entry)
        tensor[where] = moments[position[alpha]]
    return tensor
