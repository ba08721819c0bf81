"""Stein scores of a Gaussian-mixture input density, used in row chunks.

For an input density ``p`` the ``m``-th score is ``S_m(x) = (-1)^m grad^m p(x) /
p(x)``, and Stein's identity ``E[h(x) S_m(x)] = E[grad^m h(x)]`` holds for any
smooth ``h`` (docs/method.md, section 3b). For a mixture ``p = sum_c w_c N(mu_c,
Sigma_c)`` the derivatives are linear in ``p``, so

    ``S_m(x) = sum_c r_c(x) S_m^(c)(x)``,

with ``r_c(x)`` the posterior responsibilities and, for ``Lambda_c = Sigma_c^-1``
and ``u_c = Lambda_c (x - mu_c)``, the Gaussian scores

    ``S2^(c) = u_c u_c^T - Lambda_c``,
    ``S3^(c) = u_c (x) u_c (x) u_c - (u_c (x) Lambda_c + two permutations)``.

Writing ``Lambda_c = R_c R_c^T`` (``R_c`` the precision's Cholesky factor, as
scikit-learn's ``precisions_cholesky_``) and ``v_c = R_c^T (x - mu_c)``:

* ``E[q S2] = sum_c R_c (E[q r_c v_c v_c^T] - E[q r_c] I) R_c^T``: one weighted
  Gram matrix per component; or only ``E[q S2] Omega`` for a ``d x w`` block,
  ``sum_c R_c (E[q r_c v_c (B_c^T v_c)^T] - E[q r_c] B_c)`` with ``B_c = R_c^T
  Omega``;
* ``E[q S3](V, V, V) = sum_c E[q r_c (z (x) z (x) z - sym(z (x) M_c))]`` with ``z =
  B_c^T v_c``, ``B_c = R_c^T V`` and ``M_c = B_c^T B_c = V^T Lambda_c V``: ``k``
  numbers a row per component.

A row costs ``O(C d^2)`` in the ``T2`` pass (each component's Mahalanobis
distance, in single precision where rounding cannot matter,
:attr:`MixtureDensity.row_dtype`; and the Gram matrices, unless only ``T2
Omega`` is wanted); that pass keeps the rows' responsibilities (``n x C``,
single precision, :meth:`MixtureDensity.row_memory`), so that the ``T3`` pass
costs ``O(C d k)`` a row, ``z = (R_c B_c)^T x - B_c^T R_c^T mu_c`` in one product
for all components. Nothing larger than ``C`` matrices of ``d x d`` is formed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import numpy as np

from moelearn._arrays import one_blas_thread, to_host
from moelearn._passes import kernels_write_per_row, reduce_rows

Array = np.ndarray

#: Most components :func:`fit_mixture_density` tries when choosing by BIC.
MAX_COMPONENTS = 5
#: Most rows the mixture is fitted on (or ``100 d`` if more), within the sample.
MIXTURE_ROWS = 50_000
#: The score passes take chunks this many times the usual size (fewer NumPy
#: calls on small arrays).
CHUNK_SCALE = 1
#: Rows on which :func:`fit_mixture_density` chooses the number of components.
SELECTION_ROWS = 10_000
#: Most a row's Mahalanobis distance (so its log-responsibilities) may move by
#: rounding in the ``T2`` pass (:attr:`MixtureDensity.row_dtype`). Were every
#: row's error of one sign, ``T2`` would move by 1e-3 of ``E[|q| |S2|]``, the size
#: of its sampling error at n = 1e6; they vary in sign from row to row (measured
#: on the benchmark's 3-component inputs at d = 50: bound 1e-4, at most 3.6e-5 a
#: row, 4e-6 rms; ``T2`` moved by 2e-7 of its largest entry).
LOG_ROUNDING = 1e-3


@dataclass(frozen=True)
class MixtureDensity:
    """``p(x) = sum_c w_c N(x | mu_c, Sigma_c)`` with ``Sigma_c^-1 = R_c R_c^T``."""

    weights: Array  # (C,)
    means: Array  # (C, d)
    factors: Array  # (C, d, d) R_c
    converged: bool = True  # whether the EM that fitted it met its tolerance

    @property
    def n_components(self) -> int:
        return len(self.weights)

    @cached_property
    def _log_norms(self) -> Array:
        """``log w_c + log |det R_c| - (d / 2) log(2 pi)`` per component."""
        d = self.means.shape[1]
        log_dets = np.array([np.linalg.slogdet(R)[1] for R in self.factors])
        return np.log(self.weights) + log_dets - 0.5 * d * math.log(2 * math.pi)

    @classmethod
    def from_covariances(
        cls, weights: Array, means: Array, covariances: Array, converged: bool = True
    ) -> MixtureDensity:
        """From full covariances ``Sigma_c`` (``(C, d, d)``); ``ValueError`` when
        one is not positive definite."""
        factors = []
        for c, cov in enumerate(np.asarray(covariances, float)):
            try:
                lower = np.linalg.cholesky(0.5 * (cov + cov.T))
            except np.linalg.LinAlgError:
                raise ValueError(
                    f"the input density's component {c} has a covariance that is "
                    "not positive definite"
                ) from None
            # Sigma = L L^T, so Sigma^-1 = L^-T L^-1 = R R^T with R = L^-T.
            factors.append(np.linalg.inv(lower).T)
        weights = np.asarray(weights, float)
        return cls(
            weights / weights.sum(),
            np.asarray(means, float),
            np.array(factors),
            converged,
        )

    def affine(self, shift: Array, matrix: Array) -> MixtureDensity:
        """The density of ``x' = shift + matrix @ x`` (``matrix`` invertible)."""
        means = shift + self.means @ matrix.T
        # Cov' = A Cov A^T, so Lambda' = A^-T R R^T A^-1 and R' = A^-T R.
        factors = np.einsum("ji,cjk->cik", np.linalg.inv(matrix), self.factors)
        return MixtureDensity(self.weights, means, factors, self.converged)

    @cached_property
    def _offsets(self) -> Array:
        """``[R_1^T mu_1 .. R_C^T mu_C]`` (``(C d,)``)."""
        return np.concatenate(
            [m @ R for m, R in zip(self.means, self.factors, strict=True)]
        )

    @cached_property
    def _augmented(self) -> Array:
        """``[[R_1 .. R_C]^T, -offsets]`` (``(C d, d + 1)``)."""
        factors = np.concatenate([R.T for R in self.factors])
        return np.column_stack([factors, -self._offsets])

    @cached_property
    def row_dtype(self) -> type:
        """The precision of the ``T2`` pass's products: single, unless rounding
        could move a typical row's Mahalanobis distance by more than
        :data:`LOG_ROUNDING`.

        In single precision (``u = 2^-24``) each entry of ``v_c = R_c^T x - R_c^T
        mu_c`` is off by about ``u sqrt(d) (||R_c|| sqrt(E|x|^2) + |R_c^T mu_c|)``
        (rounding ``x`` and the product), and ``|v_c|^2`` by ``2 sqrt(d)`` times
        that, for a row with ``|v_c| ~ sqrt(d)``. Columns whose means are far
        from zero next to their spread, or components far narrower than the data,
        make it large; the pass is then in double precision.
        """
        offsets = self._offsets
        d = self.means.shape[1]
        second = sum(
            w * (np.trace(np.linalg.inv(R @ R.T)) + m @ m)
            for w, m, R in zip(self.weights, self.means, self.factors, strict=True)
        )  # E|x|^2
        sizes = [
            np.linalg.norm(R, 2) * np.sqrt(second)
            + np.linalg.norm(offsets[c * d : (c + 1) * d])
            for c, R in enumerate(self.factors)
        ]
        bound = 2.0 * d * 2.0**-24 * max(sizes)
        return np.float32 if bound <= LOG_ROUNDING else np.float64

    def log_components(
        self, x: Array, dtype: type = np.float64
    ) -> tuple[Array, list[Array]]:
        """``log(w_c N(x_i | mu_c, Sigma_c))`` (``(C, rows)``) and each component's
        ``v_c = R_c^T (x - mu_c)``, rows as columns (``(d, rows)``, contiguous), the
        latter computed in ``dtype``."""
        C, d = self.means.shape
        # One product for all components: [R_1 .. R_C]^T x - [R_1^T mu_1 ..], as
        # [[R_1 .. R_C]^T, -offsets] [x, 1]^T (the rows are copied in ``dtype``).
        rows = np.empty((len(x), d + 1), dtype)
        rows[:, :d] = x
        rows[:, d] = 1.0
        stacked: Array = self._augmented.astype(dtype, copy=False) @ rows.T
        projected = [stacked[c * d : (c + 1) * d] for c in range(C)]
        logs = np.empty((C, len(x)))
        for c, v in enumerate(projected):
            logs[c] = self._log_norms[c] - 0.5 * np.einsum("ij,ij->j", v, v)
        return logs, projected

    def responsibilities(
        self, x: Array, dtype: type = np.float64
    ) -> tuple[Array, list[Array]]:
        """Posterior ``r_c(x_i)`` (``(C, rows)``) and the ``v_c`` of
        :meth:`log_components`."""
        r, projected = self.log_components(x, dtype)
        r -= r.max(axis=0)
        np.exp(r, out=r)
        r /= r.sum(axis=0)
        return r, projected

    def row_memory(self, X) -> Array | None:
        """An ``(n, C)`` single-precision array for :meth:`second_moment` to keep the
        rows' responsibilities in, for :meth:`third_moment`; ``None`` where a pass
        hands its kernels copies of the rows' arrays (:func:`kernels_write_per_row`)."""
        if not kernels_write_per_row(X):
            return None
        return np.empty((X.shape[0], self.n_components), dtype=np.float32)

    def second_moment(
        self, X, q: Array, block: Array, keep: Array | None = None
    ) -> Array:
        """``sum_i q_i S2(x_i) @ block`` (``d x w``), in one pass
        (:func:`second_score_moment`)."""
        return second_score_moment(X, q, self, block, keep)[0]

    def third_moment(
        self, X, responses: Array, V: Array, kept: Array | None = None
    ) -> Array:
        """:func:`third_score_moment`."""
        return third_score_moment(X, responses, self, V, kept)

    def score_s1(self, x: Array) -> Array:
        """``S1(x) = -grad log p(x) = sum_c r_c Lambda_c (x - mu_c)``, ``(rows, d)``
        (for tests and callers that check Stein's identity)."""
        r, projected = self.responsibilities(x)
        return sum((self.factors[c] @ (v * r[c])).T for c, v in enumerate(projected))


def second_score_moment(
    X,
    q: Array,
    density: MixtureDensity,
    block: Array | None = None,
    keep: Array | None = None,
) -> tuple[Array, float]:
    """``T = sum_i q_i S2(x_i)`` (``d x d``), or ``T @ block`` for a ``d x w``
    ``block``, and ``sum_i q_i``, in one pass; each row's responsibilities
    ``r_c(x_i)`` are written to ``keep`` (``(n, C)``), if given.

    For a block less than half as wide as it is tall, each component's sum is
    ``sum q r_c v_c (B_c^T v_c)^T`` with ``B_c = R_c^T block``: ``4 C d w`` a row
    instead of the Gram matrices' ``2 C d^2``; ``T block = sum_c R_c (that -
    (sum q r_c) B_c)``.
    """
    blocks = None
    if block is not None and 2 * block.shape[1] < block.shape[0]:
        blocks = [(R.T @ block).astype(density.row_dtype) for R in density.factors]
    sums, totals = reduce_rows(
        partial(_second_sums, density=density, blocks=blocks),
        X,
        q,
        scale=CHUNK_SCALE,
        keep=keep,
    )
    factors = density.factors
    if blocks is not None:
        products = [
            R @ (S - s * B.astype(float))
            for R, S, s, B in zip(factors, sums, totals, blocks, strict=True)
        ]
        return np.sum(products, axis=0), float(q.sum())
    parts = [
        R @ (G - s * np.eye(len(R))) @ R.T
        for R, G, s in zip(factors, sums, totals, strict=True)
    ]
    moment = np.sum(parts, axis=0)
    moment = 0.5 * (moment + moment.T)
    return (moment if block is None else moment @ block), float(q.sum())


def _second_sums(
    xc,
    q: Array,
    density: MixtureDensity,
    blocks: list[Array] | None,
    keep: Array | None = None,
):
    """Per component ``sum q r_c v_c v_c^T`` (``blocks`` ``None``) or ``sum q r_c
    v_c (B_c^T v_c)^T``, and ``sum q r_c``, over a chunk (and ``r_c`` into the
    chunk's rows of ``keep``); the products in :attr:`MixtureDensity.row_dtype`."""
    dtype = density.row_dtype
    r, projected = density.responsibilities(to_host(xc), dtype)
    if keep is not None:
        keep[:] = r.T
    weights = r * to_host(q)
    single = weights.astype(dtype)
    if blocks is None:
        sums = [(v * w) @ v.T for v, w in zip(projected, single, strict=True)]
    else:
        sums = [
            v @ ((B.T @ v) * w).T
            for v, w, B in zip(projected, single, blocks, strict=True)
        ]
    return np.array(sums, dtype=np.float64), weights.sum(axis=1)


def third_score_moment(
    X,
    responses: Array,
    density: MixtureDensity,
    V: Array,
    kept: Array | None = None,
) -> Array:
    """``sum_i q_ij S3(x_i)(V, V, V)`` for each column ``q_j`` of ``responses``
    (``(n, p)``), ``V`` of shape ``(d, k)``, in one pass; shape ``(p, k, k, k)``.
    ``kept`` holds the rows' responsibilities (:func:`second_score_moment`'s
    ``keep``); without it they are computed again."""
    blocks = np.einsum("cji,jk->cik", density.factors, V)  # B_c = R_c^T V
    # z_c = B_c^T R_c^T (x - mu_c) = (R_c B_c)^T x - (R_c B_c)^T mu_c, all c at once
    RB = np.einsum("cij,cjk->cik", density.factors, blocks)
    projections = RB.transpose(0, 2, 1).reshape(-1, V.shape[0])  # (C k, d)
    offsets = np.einsum("ci,cik->ck", density.means, RB).ravel()
    cubes, firsts = reduce_rows(
        partial(
            _third_sums,
            density=density,
            projections=projections,
            offsets=offsets,
        ),
        X,
        responses,
        scale=CHUNK_SCALE,
        kept=kept,
    )
    moment = cubes
    for c, B in enumerate(blocks):
        M = B.T @ B  # V^T Lambda_c V
        m = firsts[c]  # (p, k)
        moment = moment - (
            np.einsum("qa,bc->qabc", m, M)
            + np.einsum("qb,ac->qabc", m, M)
            + np.einsum("qc,ab->qabc", m, M)
        )
    return moment


def _third_sums(
    xc,
    responses: Array,
    density: MixtureDensity,
    projections: Array,
    offsets: Array,
    kept: Array | None = None,
):
    """``sum q r_c z (x) z (x) z`` (over components) and per component ``sum q r_c
    z`` over a chunk, ``z = B_c^T v_c``: the rows ``c k .. (c + 1) k`` of
    ``projections x^T - offsets``. ``kept`` is the chunk's ``r_c``, if known."""
    x = to_host(xc)
    r = density.responsibilities(x, density.row_dtype)[0] if kept is None else kept.T
    C, k = density.n_components, len(offsets) // density.n_components
    p = responses.shape[1]
    pairs = [(a, b) for a in range(k) for b in range(a, k)]
    cubes = np.zeros((p, k, len(pairs)))
    firsts = np.empty((C, p, k))
    # Rows as columns, (C k, rows) and (p, rows): contiguous row products.
    projected = projections @ x.T
    projected -= offsets[:, None]
    columns = np.ascontiguousarray(to_host(responses).T)
    for c in range(C):
        z = projected[c * k : (c + 1) * k]
        weights = columns * r[c]
        squares = np.array([z[a] * z[b] for a, b in pairs])
        weighted = (weights[:, None, :] * z[None, :, :]).reshape(p * k, -1)
        cubes += (weighted @ squares.T).reshape(p, k, len(pairs))
        firsts[c] = weights @ z.T
    full = np.empty((p, k, k, k))
    for j, (a, b) in enumerate(pairs):
        full[:, :, a, b] = full[:, :, b, a] = cubes[:, :, j]
    return full, firsts


#: Finite-difference step of :class:`ScoreFunction`, in whitened units. The
#: truncation error shrinks as ``STEP^2`` and the rounding error of the second
#: differences grows as ``u / STEP^2`` (``u`` the score's own relative precision:
#: it must be computed in double precision). Measured on a 3-component mixture
#: with sharp responsibilities (d = 4): relative error of ``T3`` 0.015 at 1e-3,
#: 1.6e-4 at 1e-4, 1.4e-5 at 3e-5; of ``T2`` 2e-4, 2e-6, 2e-7.
STEP = 1e-4


@dataclass(frozen=True)
class ScoreFunction:
    """A user's score: ``function(x)`` returns ``grad log p(x)`` for rows ``x``
    (``(rows, d)`` in, ``(rows, d)`` out), in the raw columns' units.

    With ``s = grad log p`` and ``H = grad s``,

        ``S2 = s s^T + H``,  ``S3 = -(s (x) s (x) s + sym(s (x) H) + grad H)``,

    and the derivatives of ``s`` come from central differences along the
    directions asked for, with step :data:`STEP` in whitened units: ``H v =
    (s(x + h v) - s(x - h v)) / 2h`` and ``grad H(u, v, w) = u . (s(x + h v + h w)
    - s(x + h v - h w) - s(x - h v + h w) + s(x - h v - h w)) / 4h^2``. ``T2``
    times a ``w``-column block takes ``2 w + 1`` calls a row (``w = d`` when ``T2``
    is wanted whole), ``T3`` ``1 + 2 k + 2 k^2``.
    """

    function: Callable[[Array], Array]

    def __call__(self, x: Array) -> Array:
        s = np.asarray(self.function(x), dtype=float)
        if s.shape != x.shape:
            raise ValueError(
                f"the input density's score function returned shape {s.shape} "
                f"for {x.shape[0]} rows of {x.shape[1]} columns; it must return "
                "grad log p(x), one row per input row"
            )
        bad = ~np.isfinite(s).all(axis=1)
        if bad.any():
            raise ValueError(
                "the input density's score function returned a non-finite value "
                f"(at an input row of {x[np.argmax(bad)].round(4).tolist()})"
            )
        return s

    def row_memory(self, X) -> None:
        """Nothing is kept between passes (:meth:`MixtureDensity.row_memory`)."""
        return None

    def second_moment(
        self, X, q: Array, block: Array, keep: Array | None = None
    ) -> Array:
        """``sum_i q_i S2(x_i) @ block`` in one pass; the block's columns (of about
        unit whitened length) carry the differences (``keep`` is left alone:
        :meth:`row_memory` gives ``None``)."""
        return reduce_rows(partial(_difference_second_sums, score=self, D=block), X, q)

    def third_moment(
        self, X, responses: Array, V: Array, kept: Array | None = None
    ) -> Array:
        """``sum_i q_ij S3(x_i)(V, V, V)`` for each column of ``responses``."""
        return reduce_rows(
            partial(_difference_third_sums, score=self, V=V), X, responses
        )


def _difference_second_sums(xc, q: Array, score: ScoreFunction, D: Array) -> Array:
    """``sum q (s s^T + H) D`` over a chunk."""
    x, q = to_host(xc), to_host(q)
    s = score(x)
    h = STEP
    total = (s * q[:, None]).T @ (s @ D)
    hessian = np.empty_like(total)
    for i, v in enumerate(D.T):
        column = (score(x + h * v) - score(x - h * v)) / (2 * h)  # H v per row
        hessian[:, i] = q @ column
    return total + hessian


def _difference_third_sums(xc, responses: Array, score: ScoreFunction, V: Array):
    """``sum q S3(V, V, V)`` over a chunk, from the score and its differences."""
    x, responses = to_host(xc), to_host(responses)
    h, k = STEP, V.shape[1]
    t = score(x) @ V  # (rows, k)
    hv = np.empty((len(x), k, k))  # V^T H V per row
    for b, v in enumerate(V.T):
        hv[:, :, b] = ((score(x + h * v) - score(x - h * v)) / (2 * h)) @ V
    third = np.empty((len(x), k, k, k))  # grad H (V, V, V) per row
    for b in range(k):
        for c in range(b, k):
            e, f = h * V[:, b], h * V[:, c]
            second = (
                score(x + e + f)
                - score(x + e - f)
                - score(x - e + f)
                + score(x - e - f)
            ) / (4 * h * h)
            third[:, :, b, c] = third[:, :, c, b] = second @ V
    per_row = (
        np.einsum("ia,ib,ic->iabc", t, t, t)
        + np.einsum("ia,ibc->iabc", t, hv)
        + np.einsum("ib,iac->iabc", t, hv)
        + np.einsum("ic,iab->iabc", t, hv)
        + third
    )
    return -np.einsum("iq,iabc->qabc", responses, per_row)


def fit_mixture_density(
    sample: Array,
    n_components: int | None,
    rng: np.random.Generator,
    sample_weight: Array | None = None,
) -> tuple[MixtureDensity, list[float]]:
    """A Gaussian mixture with full covariances fitted to the row ``sample`` by
    scikit-learn's EM, and the BIC of each number of components tried.

    The sample is first standardised by its own mean and covariance (so the
    covariance floor ``reg_covar`` is relative) and the mixture mapped back. With
    ``n_components=None`` the number is the BIC's choice among 1 to
    :data:`MAX_COMPONENTS`, each fitted to :data:`SELECTION_ROWS` rows at
    scikit-learn's default tolerance (stopping once the BIC has risen twice in a
    row); the chosen size is then fitted to up to :data:`MIXTURE_ROWS` rows to a
    tight tolerance (1e-5 in the mean log-likelihood: on the flights table 1e-6
    took 132 iterations and moved it by 4e-5 more): the scores are derivatives
    of the density, and on the
    benchmark's 3-component inputs (d = 10, n = 3e5) the spectral error with
    10 000 rows was twice that with 50 000. With ``sample_weight``, rows are
    drawn with probabilities proportional to their weights (EM here takes none).

    The fits run with one BLAS thread: their products (``rows x d`` by ``d x d``,
    a component at a time) are too small to share out, and on two cores they
    took 2.2-2.8 times as long with two threads (flights, 5 components: 7.2-7.4
    against 3.1-3.2 s; the same mixture to 5e-16).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    standard, mean, root = _standardised_rows(sample, rng, sample_weight)
    d = standard.shape[1]
    seed = int(rng.integers(2**31 - 1))

    def mixture(c: int, rows: Array, **options) -> GaussianMixture:
        if c * (d + d * (d + 1) // 2 + 1) >= len(rows):
            raise ValueError(
                f"too few rows ({len(rows)}) to fit a {c}-component Gaussian "
                f"mixture to {d} input columns"
            )
        with warnings.catch_warnings(), one_blas_thread():
            warnings.simplefilter("ignore", ConvergenceWarning)  # (it is reported)
            return GaussianMixture(
                c, covariance_type="full", reg_covar=1e-4, random_state=seed, **options
            ).fit(rows)

    bics: list[float] = []
    start = {}
    if n_components is None:
        chosen, bics = _bic_choice(
            mixture, standard[:: max(1, len(standard) // SELECTION_ROWS)]
        )
        n_components = chosen.n_components
        start = {
            "weights_init": chosen.weights_,
            "means_init": chosen.means_,
            "precisions_init": chosen.precisions_,
        }
    best = mixture(n_components, standard, tol=1e-5, max_iter=300, **start)
    density = MixtureDensity.from_covariances(
        best.weights_, best.means_, best.covariances_, converged=best.converged_
    )
    return density.affine(mean, root), bics


def _standardised_rows(
    sample: Array, rng: np.random.Generator, sample_weight: Array | None
) -> tuple[Array, Array, Array]:
    """Up to ``max(MIXTURE_ROWS, 100 d)`` rows of ``sample`` (drawn with
    probabilities proportional to ``sample_weight`` when given, else evenly
    spaced), standardised: ``(rows - mean) Cov^{-1/2}``, with ``mean`` and
    ``Cov^{1/2}``."""
    m, d = sample.shape
    size = min(m, max(MIXTURE_ROWS, 100 * d))
    if sample_weight is not None:
        p = sample_weight / sample_weight.sum()
        rows = np.sort(rng.choice(m, size=size, replace=True, p=p))
    else:
        rows = np.arange(0, m, max(1, m // size))[:size]
    rows_x = np.asarray(sample[rows], float)
    mean = rows_x.mean(axis=0)
    centred = rows_x - mean
    evals, evecs = np.linalg.eigh(centred.T @ centred / len(rows_x))
    evals = np.maximum(evals, 1e-12 * max(evals[-1], 1e-300))
    root = (evecs * np.sqrt(evals)) @ evecs.T  # Cov^{1/2}
    return centred @ np.linalg.inv(root), mean, root


def _bic_choice(mixture, rows: Array) -> tuple[Any, list[float]]:
    """Mixtures of 1 to :data:`MAX_COMPONENTS` components fitted to ``rows`` by
    ``mixture(c, rows)``, until there are more parameters than rows or the BIC
    has risen twice in a row; the one of least BIC, and every BIC."""
    fits, bics = [], []
    for c in range(1, MAX_COMPONENTS + 1):
        try:
            fits.append(mixture(c, rows))
        except ValueError:
            break  # more parameters than rows
        bics.append(float(fits[-1].bic(rows)))
        if len(bics) >= 3 and bics[-1] > bics[-2] > bics[-3]:
            break  # the BIC rose twice in a row
    return fits[int(np.argmin(bics))], bics


def density_from_estimator(estimator, n_features: int) -> MixtureDensity:
    """A fitted scikit-learn ``GaussianMixture`` (or anything with ``weights_``,
    ``means_``, ``covariances_`` and ``covariance_type``) as a
    :class:`MixtureDensity` over the raw input columns."""
    try:
        weights = np.asarray(estimator.weights_, float)
        means = np.asarray(estimator.means_, float)
        covariances = np.asarray(estimator.covariances_, float)
    except AttributeError:
        raise ValueError(
            f"input_density is a {type(estimator).__name__} that is not fitted: fit "
            "it to X first. (scikit-learn's clone(), and so cross-validation and "
            "grid search, pass on an unfitted copy of a fitted estimator given as a "
            "parameter: wrap it in sklearn.frozen.FrozenEstimator to keep it fitted)"
        ) from None
    C = len(weights)
    kind = getattr(estimator, "covariance_type", "full")
    if kind == "full":
        full = covariances
    elif kind == "tied":
        full = np.broadcast_to(covariances, (C, n_features, n_features))
    elif kind == "diag":
        full = np.array([np.diag(c) for c in covariances])
    elif kind == "spherical":
        full = np.array([c * np.eye(n_features) for c in covariances])
    else:
        raise ValueError(f"unknown covariance_type {kind!r} of the input density")
    if means.shape != (C, n_features) or full.shape != (C, n_features, n_features):
        raise ValueError(
            f"the input density has means of shape {means.shape}, but X has "
            f"{n_features} columns: fit it to the same columns as the model"
        )
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(full))):
        raise ValueError("the input density's means or covariances are not finite")
    return MixtureDensity.from_covariances(weights, means, full)
