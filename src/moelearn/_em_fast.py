"""Optional compiled kernels (numba, the ``fast`` extra) for EM.

* EM's full-data pass (:func:`gradient_kernel`): one loop over rows does what
  the NumPy path does with several array operations: the projections
  ``a_j . x``, ``G_j . x``, the E-step and the gradient accumulation, so each
  row is read once and no temporaries are made; the rows are split between
  threads. Same formulas as :func:`moelearn._em._posterior` and
  :func:`moelearn._em._pass_sums`. The E-step runs a block of rows at a time,
  with an ``exp`` and a ``log`` written out in arithmetic that the compiler
  vectorises (:func:`_exp_nonpositive`, :func:`_log_positive`).
* The start race's runs on small tables (:func:`batched_runs`): each start's
  generalised EM of :func:`moelearn._em_batch.batched_em` run to its end in one
  compiled loop, the starts split between threads. Its E-step is the
  pass's (:func:`_posterior`) over all rows: measured in SpectralMoE fits
  (median of 30, 3 alternations), the race took 1.0-1.6 ms on NPreg k = 2
  and 13-15 ms on Boston k = 2, against 3.1-3.4 and 22-24 ms with an E-step
  row by row and libm's ``exp`` and ``log``.

Tests check that each agrees with its NumPy path. The first use in a new
environment compiles them (about 20 s each); numba caches the result.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from functools import partial

import numpy as np

try:
    import numba
except ImportError:  # the extra is not installed: the NumPy path is used
    numba = None  # type: ignore[assignment]

AVAILABLE = numba is not None
#: A kernel's first call in a process compiles it (or loads numba's cache of it,
#: well under a second); when that takes longer than this many seconds, a
#: notice on stderr says why the fit waits (about a minute, once per machine).
NOTICE_AFTER = 2.0
_READY: set[str] = set()  # the kernels (and signatures) called in this process
_NOTICED = threading.Event()  # the notice has been printed
_NOTICE = (
    "moelearn: compiling its fast kernels for this machine, once (up to a "
    "minute; numba caches them for later runs)"
)
#: The compiled pass takes chunks this many times the usual size (about 16 MiB):
#: each call starts the threads anew.
CHUNK_SCALE = 16
#: The compiled pass takes its rows in blocks of this many: the projections of
#: a block, then its E-step, then its gradient sums, each a loop along the
#: block's rows that the compiler vectorises. Measured at n = 1e6, d = 50, two
#: linear experts, against one pass ``X.T @ (X @ v)`` (4 alternations, median
#: of 7 each): 0.77-1.00 passes, against 1.30-1.53 with the E-step row by row
#: and libm's ``exp`` and ``log``.
BLOCK_ROWS = 256
LINK_CODES = {"linear": 0, "sigmoid": 1, "tanh": 2, "relu": 3}
# constants of the vectorised exp and log (see _exp_nonpositive, _log_positive)
_LOG2_E = 1.4426950408889634
_LN2_HIGH, _LN2_LOW = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_ROUNDING = 1.5 * 2.0**52  # x + this - this rounds x to an integer
_TWO_52 = 2.0**52
_SMALLEST, _LARGEST = 2.0**-1022, float(np.finfo(float).max)  # normal numbers
_EXP_TERMS = tuple(1.0 / math.factorial(i) for i in range(13, -1, -1))  # Horner's order
_LOG_TERMS = tuple(1.0 / (2 * i + 1) for i in range(9, -1, -1))

if AVAILABLE:
    # The block's steps are helpers inlined by numba (inline="always"): as plain
    # njit calls they ran 30-40 % slower (n=1e6, d=51, two linear experts: 86
    # against 61 ms), inlined they compile to the one loop. Their loops over a
    # block's rows are innermost, where the compiler vectorises them.
    _inline = partial(numba.njit, inline="always", fastmath=True)
    # exp and log below keep their operations' order (no "reassoc", which would
    # undo the reduction's compensation) and see infinities (no "ninf")
    _ordered = partial(numba.njit, fastmath={"contract"}, cache=True)

    @_ordered
    def _exp_nonpositive(x, rows, scratch):
        """``x[b] = exp(x[b])`` for ``b < rows`` and ``x[b] <= 0`` (``-inf``
        included), within about 1 ulp; 0 below ``-708`` (where ``exp`` is
        subnormal); NaN stays NaN. Vectorised, unlike libm's ``exp`` (4 times
        faster on a block).

        ``exp(x) = 2^n exp(r)`` with ``n = round(x / ln 2)`` (rounded by adding
        and subtracting ``1.5 2^52``) and ``r = x - n ln 2`` (``|r| <= ln(2) / 2``,
        ``ln 2`` split in two so that ``n ln2_hi`` is exact: Cody and Waite's
        reduction), ``exp(r)`` by its Taylor series to ``r^13`` (remainder below
        ``0.35^14 / 14! = 4e-18``), and ``2^n`` from its bits, ``(n + 1023) 2^52``.
        ``scratch``: an int64 array of at least ``rows`` entries.
        """
        shifted = scratch.view(np.float64)
        for b in range(rows):
            v = -708.0 if x[b] < -708.0 else x[b]  # (NaN goes through)
            t = v * _LOG2_E + _ROUNDING
            n = t - _ROUNDING
            r = (v - n * _LN2_HIGH) - n * _LN2_LOW
            p = _EXP_TERMS[0]
            for c in _EXP_TERMS[1:]:
                p = p * r + c
            shifted[b] = t  # (its low bits hold n)
            x[b] = 0.0 if x[b] < -708.0 else p
        for b in range(rows):
            scratch[b] = (scratch[b] + 1023) << 52
        for b in range(rows):
            x[b] *= shifted[b]

    @_ordered
    def _log_positive(x, rows, scratch):
        """``x[b] = log(x[b])`` for ``b < rows`` and positive normal ``x[b]``,
        within about 1 ulp; NaN for any other value (NaN, infinite, zero,
        negative or subnormal: the E-step's ratios are in ``[1 / k, k]``, and a
        NaN there must reach the log-likelihood). Vectorised.

        ``x = 2^e m`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` (from the bits), and
        ``log m = 2 atanh(f) = 2 (f + f^3 / 3 + ... + f^19 / 19)``, ``f = (m - 1)
        / (m + 1)`` (``|f| <= 0.172``: remainder below ``f^21 / 21 = 4e-18``).
        ``scratch``: an int64 array of shape ``(2, >= rows)``.
        """
        raw = x.view(np.int64)
        mantissa, exponent = scratch[0].view(np.float64), scratch[1].view(np.float64)
        for b in range(rows):
            scratch[0, b] = (raw[b] & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000
            scratch[1, b] = ((raw[b] >> 52) & 0x7FF) | 0x4330000000000000
        for b in range(rows):
            m = mantissa[b]  # in [1, 2)
            e = (exponent[b] - _TWO_52) - 1023.0
            high = m > 1.4142135623730951
            m = 0.5 * m if high else m
            e = e + 1.0 if high else e
            f = (m - 1.0) / (m + 1.0)
            s = f * f
            p = _LOG_TERMS[0]
            for c in _LOG_TERMS[1:]:
                p = p * s + c
            value = e * _LN2_HIGH + (e * _LN2_LOW + 2.0 * f * p)
            x[b] = value if _SMALLEST <= x[b] <= _LARGEST else np.nan

    @_inline
    def _project(X, first, rows, coef, proj):
        """``proj[r, b] = coef_r . x_i``, ``i = first + b``, for ``rows`` rows and
        every coefficient row ``r``."""
        for b in range(rows):
            for r in range(coef.shape[0]):
                acc = 0.0
                for c in range(X.shape[1]):
                    acc += coef[r, c] * X[first + b, c]
                proj[r, b] = acc

    @_inline
    def _accumulate(X, first, rows, cols, local):
        """``local[c] += cols[c, b] x_i``, ``i = first + b``, over ``rows`` rows."""
        for b in range(rows):
            for c in range(cols.shape[0]):
                w = cols[c, b]
                for col in range(X.shape[1]):
                    local[c, col] += w * X[first + b, col]

    @_inline
    def _residuals(proj, y, first, rows, k, link_code, res, deriv):
        """``res[j, b] = y_i - g(eta_j)`` and ``deriv[j, b] = g'(eta_j)``, ``eta_j
        = proj[j, b]``, ``i = first + b``, for the link ``g`` of ``link_code``."""
        for j in range(k):
            if link_code == 0:
                for b in range(rows):
                    res[j, b] = y[first + b] - proj[j, b]
                    deriv[j, b] = 1.0
            elif link_code == 1:
                for b in range(rows):
                    g = 1.0 / (1.0 + np.exp(-proj[j, b]))
                    res[j, b] = y[first + b] - g
                    deriv[j, b] = g * (1.0 - g)
            elif link_code == 2:
                for b in range(rows):
                    g = np.tanh(proj[j, b])
                    res[j, b] = y[first + b] - g
                    deriv[j, b] = 1.0 - g * g
            else:
                for b in range(rows):
                    res[j, b] = y[first + b] - max(proj[j, b], 0.0)
                    deriv[j, b] = 1.0 if proj[j, b] > 0.0 else 0.0

    @_inline
    def _softmax(values, rows, top, norm, scratch):
        """``values[j, b] <- exp(values[j, b] - top[b]) / norm[b]`` over ``j``, for
        ``b < rows``, keeping ``top[b] = max_j values[j, b]`` and ``norm[b] =
        sum_j exp(values[j, b] - top[b])``."""
        k = values.shape[0]
        for b in range(rows):
            top[b], norm[b] = values[0, b], 0.0
        for j in range(1, k):
            for b in range(rows):
                top[b] = max(top[b], values[j, b])
        for j in range(k):
            for b in range(rows):
                values[j, b] -= top[b]
            _exp_nonpositive(values[j], rows, scratch)
            for b in range(rows):
                norm[b] += values[j, b]
        for j in range(k):
            for b in range(rows):
                values[j, b] /= norm[b]

    @_inline
    def _posterior(logit, res, rows, inv_sigma, log_sigma, gate, resp, work, scratch):
        """Gate probabilities ``gate[j, b]`` and responsibilities ``resp[j, b]``
        from the logits and residuals of a block's rows; ``work[4]`` holds each
        row's ``log p(y_i | x_i)`` without the ``-log(2 pi) / 2`` term (``work[:4]``
        is scratch)."""
        for j in range(logit.shape[0]):
            for b in range(rows):
                gate[j, b] = logit[j, b]
                z = res[j, b] * inv_sigma[j]
                resp[j, b] = logit[j, b] - 0.5 * z * z - log_sigma[j]
        _softmax(gate, rows, work[0], work[1], scratch[0])
        _softmax(resp, rows, work[2], work[3], scratch[0])
        ll = work[4]
        for b in range(rows):
            ll[b] = work[3, b] / work[1, b]
        _log_positive(ll, rows, scratch)
        for b in range(rows):
            ll[b] += work[2, b] - work[0, b]

    @_inline
    def _block_sums(resp, gate, res, deriv, w, rows, fit_experts, rss, mass, cols):
        """Add the block's rows to ``rss[j]`` and ``mass[j]``; their gradient
        weights into ``cols``: ``r_j res_j g'_j`` for the experts (when
        fitted), then ``r_j - pi_j`` for the free gate rows (each times the
        row's weight ``w[b]``)."""
        k = resp.shape[0]
        for j in range(k):
            for b in range(rows):
                share = w[b] * resp[j, b]
                rss[j] += share * res[j, b] * res[j, b]
                mass[j] += share
        c = 0
        if fit_experts:
            for j in range(k):
                for b in range(rows):
                    cols[c, b] = w[b] * (resp[j, b] * res[j, b] * deriv[j, b])
                c += 1
        for j in range(k - 1):
            for b in range(rows):
                cols[c, b] = w[b] * (resp[j, b] - gate[j, b])
            c += 1

    @numba.njit(fastmath=True, parallel=True, cache=True)
    def _pass(
        X,
        y,
        coef,
        k,
        fit_experts,
        residuals,
        weighted,
        weights,
        inv_sigma,
        log_sigma,
        link_code,
        n_threads,
    ):
        n, d = X.shape
        offset = k if fit_experts else 0
        n_cols = 2 * k - 1 if fit_experts else k - 1
        grads = np.zeros((n_threads, n_cols, d))
        lls = np.zeros(n_threads)
        rsss = np.zeros((n_threads, k))
        masses = np.zeros((n_threads, k))
        step = (n + n_threads - 1) // n_threads
        for tid in numba.prange(n_threads):
            proj = np.empty((coef.shape[0], BLOCK_ROWS))
            res, deriv = np.empty((k, BLOCK_ROWS)), np.empty((k, BLOCK_ROWS))
            logit = np.zeros((k, BLOCK_ROWS))  # (the last row stays 0)
            gate, resp = np.empty((k, BLOCK_ROWS)), np.empty((k, BLOCK_ROWS))
            work = np.empty((5, BLOCK_ROWS))
            scratch = np.empty((2, BLOCK_ROWS), np.int64)
            w = np.ones(BLOCK_ROWS)
            cols = np.empty((n_cols, BLOCK_ROWS))
            local = np.zeros((n_cols, d))  # thread-local: no 3-D indexing in the loop
            ll = 0.0
            rss, mass = np.zeros(k), np.zeros(k)
            stop = min(n, (tid + 1) * step)
            for first in range(tid * step, stop, BLOCK_ROWS):
                rows = min(BLOCK_ROWS, stop - first)
                _project(X, first, rows, coef, proj)
                if fit_experts:
                    _residuals(proj, y, first, rows, k, link_code, res, deriv)
                else:  # (deriv is read only for the fitted experts)
                    for j in range(k):
                        for b in range(rows):
                            res[j, b] = residuals[first + b, j]
                for j in range(k - 1):
                    for b in range(rows):
                        logit[j, b] = proj[offset + j, b]
                if weighted:
                    for b in range(rows):
                        w[b] = weights[first + b]
                _posterior(
                    logit, res, rows, inv_sigma, log_sigma, gate, resp, work, scratch
                )
                for b in range(rows):
                    ll += w[b] * work[4, b]
                _block_sums(
                    resp, gate, res, deriv, w, rows, fit_experts, rss, mass, cols
                )
                _accumulate(X, first, rows, cols, local)
            grads[tid] = local
            lls[tid] = ll
            rsss[tid] = rss
            masses[tid] = mass
        return lls.sum(), rsss.sum(axis=0), masses.sum(axis=0), grads.sum(axis=0)


@contextlib.contextmanager
def _first_call(kernel: str):
    """Around a call of ``kernel``: if it is the first in this process (numba
    compiles the kernel or loads its cache) and takes over :data:`NOTICE_AFTER`
    seconds, :data:`_NOTICE` goes to stderr, once a process."""
    if kernel in _READY:
        yield
        return
    timer = threading.Timer(NOTICE_AFTER, _notice)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        _READY.add(kernel)


def _notice() -> None:
    if not _NOTICED.is_set():
        _NOTICED.set()
        print(_NOTICE, file=sys.stderr, flush=True)


def gradient_kernel(params, fit_experts: bool, weighted: bool = False):
    """A :func:`moelearn._passes.reduce_rows` kernel ``(X, y, residuals=...,
    weights=...) -> (sum of log p(y|x) without the -log(2 pi)/2 term, rss (k,),
    weight (k,), grad)`` with ``grad`` (n_cols, d), as
    :func:`moelearn._em._pass_sums`; with ``weighted`` every sum is weighted by
    ``weights``. Requires :data:`AVAILABLE`."""
    k = params.n_experts
    gating = params.gating[: k - 1]  # the last row is zero: its logit is 0
    coef = np.vstack([params.experts, gating]) if fit_experts else gating
    sigma = np.ascontiguousarray(
        np.broadcast_to(np.asarray(params.noise_std, float), (k,))
    )
    return partial(
        _gradient_sums,
        coef=np.ascontiguousarray(coef),
        k=k,
        fit_experts=fit_experts,
        inv_sigma=1.0 / sigma,
        log_sigma=np.log(sigma),
        link_code=LINK_CODES[params.link],
        weighted=weighted,
    )


def _gradient_sums(
    xc,
    yc,
    *,
    coef,
    k,
    fit_experts,
    inv_sigma,
    log_sigma,
    link_code,
    weighted,
    residuals=None,
    weights=None,
):
    res = np.zeros((1, k)) if fit_experts else np.ascontiguousarray(residuals)
    weights = np.ascontiguousarray(weights) if weighted else np.zeros(1)
    with _first_call(f"pass {xc.dtype}"):  # (each dtype compiles anew)
        return _pass(
            np.ascontiguousarray(xc),
            np.ascontiguousarray(yc),
            coef,
            k,
            fit_experts,
            res,
            weighted,
            weights,
            inv_sigma,
            log_sigma,
            link_code,
            numba.get_num_threads(),
        )


# ------------------------------------------------------- batched EM, compiled
#
# moelearn._em_batch.batched_em's generalised EM, one start after another in a
# compiled loop: on small tables its NumPy steps cost about 0.3 ms of calls an
# iteration whatever the size, most of a fit. A start's parameters are one flat
# vector ``theta = [a_1..a_k, G_1..G_k, sigma_1..sigma_k]`` (rows of ``D``); the
# steps, acceptance and stopping rules are _em_batch's (see its docstrings), and
# a test checks that the two paths agree.

if AVAILABLE:
    _compiled = partial(numba.njit, cache=True, error_model="numpy")

    @_compiled
    def _nan_max(a, b):
        """``max(a, b)``, NaN if either is (as ``np.maximum``)."""
        return b if (b != b or b > a) else a

    @_compiled
    def _quadratic(v, M):
        """``v^T M v``."""
        out = 0.0
        for a in range(v.shape[0]):
            for c in range(v.shape[0]):
                out += v[a] * M[a, c] * v[c]
        return out

    @_compiled
    def _lu_solve(A, b):
        """``A^{-1} b`` by elimination with partial pivoting (LAPACK ``gesv``'s
        method); ``ok`` False when a pivot column is zero (singular ``A``)."""
        m = A.shape[0]
        M, x = A.copy(), b.copy()
        for c in range(m):
            p, big = c, abs(M[c, c])
            for r in range(c + 1, m):
                if abs(M[r, c]) > big:
                    p, big = r, abs(M[r, c])
            if big == 0.0:
                return x, False
            if p != c:
                for q in range(m):
                    M[c, q], M[p, q] = M[p, q], M[c, q]
                x[c], x[p] = x[p], x[c]
            for r in range(c + 1, m):
                f = M[r, c] / M[c, c]
                for q in range(c, m):
                    M[r, q] -= f * M[c, q]
                x[r] -= f * x[c]
        for c in range(m - 1, -1, -1):
            acc = x[c]
            for q in range(c + 1, m):
                acc -= M[c, q] * x[q]
            x[c] = acc / M[c, c]
        return x, True

    @_compiled
    def _ridged_solve(A, b):
        """``moelearn._em_batch._solve`` for one matrix: a ridge of ``1e-10``
        of the mean diagonal, more where ``A`` is singular."""
        m = A.shape[0]
        trace = 0.0
        for c in range(m):
            trace += A[c, c]
        scale = _nan_max(trace / m, 1e-300)
        for ridge in (1e-10, 1e-6, 1e-2):
            ridged = A.copy()
            for c in range(m):
                ridged[c, c] += ridge * scale
            x, ok = _lu_solve(ridged, b)
            if ok:
                return x
        return np.linalg.lstsq(A, b)[0]

    # The kernels below take the table transposed, ``Xt`` (D, n): their inner
    # loops run along the rows, where the compiler vectorises them (the sums
    # with ``reassoc``: their order is free, as NumPy's products' is).
    _summing = partial(_compiled, fastmath={"reassoc", "contract"})

    @_summing
    def _project_rows(Xt, theta, n_rows, out):
        """``out[r] = theta_row(r) . x_i`` for every row ``i`` and ``r < n_rows``."""
        D, n = Xt.shape
        out[:] = 0.0
        for r in range(n_rows):
            for c in range(D):
                coef = theta[r * D + c]
                for i in range(n):
                    out[r, i] += coef * Xt[c, i]

    @_compiled
    def _evaluate(data, theta, k, penalty, half_log_2pi, work):
        """The E-step into ``work``'s ``resp``, ``gates`` (k, n) and ``weight``
        (k,); returns the penalised log-likelihood and the log-likelihood's
        sum. The full-data pass's E-step (:func:`_posterior`) over all rows."""
        Xt, y, w, _, metric = data
        proj, resp, gates, weight, res, rows_work, scratch = work
        D, n = Xt.shape
        kD, noise = k * D, 2 * k * D
        _project_rows(Xt, theta, 2 * k, proj)  # means, then logits
        sigma = theta[noise:]
        for j in range(k):
            for i in range(n):
                res[j, i] = y[i] - proj[j, i]
        _posterior(
            proj[k:],
            res,
            n,
            1.0 / sigma,
            np.log(sigma),
            gates,
            resp,
            rows_work,
            scratch,
        )
        ll_sum = 0.0
        for i in range(n):
            ll_sum += (rows_work[4, i] - half_log_2pi) * w[i]
        for j in range(k):
            acc = 0.0
            for i in range(n):
                acc += resp[j, i] * w[i]
            weight[j] = acc
        ridge = 0.0
        for t in range(k - 1):
            ridge += _quadratic(theta[kD + t * D : kD + (t + 1) * D], metric)
        return ll_sum - 0.5 * penalty * ridge, ll_sum

    @_compiled
    def _m_step(data, theta, k, penalty, floor, shared, fit_experts, work, new):
        """The generalised M-step from ``theta`` into ``new``: weighted least
        squares for the experts (when fitted), the noise levels at the new
        experts, one penalised Newton step for the free gate rows."""
        Xt, y, w, total, metric = data
        proj, resp, gates, weight = work[:4]
        new[:] = theta
        if fit_experts:
            _expert_step(Xt, y, w, resp, k, new)
        _noise_step(Xt, y, w, total, resp, weight, k, floor, shared, proj, new)
        if k > 1:
            _gate_step(Xt, w, metric, theta, k, penalty, resp, gates, new)

    @_summing
    def _weighted_gram(Xt, weights, out):
        """``out = sum_i weights_i x_i x_i^T``."""
        D, n = Xt.shape
        scaled = np.empty(n)
        for a in range(D):
            for i in range(n):
                scaled[i] = weights[i] * Xt[a, i]
            for c in range(a, D):
                acc = 0.0
                for i in range(n):
                    acc += scaled[i] * Xt[c, i]
                out[a, c] = acc
                out[c, a] = acc

    @_summing
    def _expert_step(Xt, y, w, resp, k, new):
        """``a_j = (sum_i w_i r_ij x_i x_i^T)^{-1} sum_i w_i r_ij y_i x_i``."""
        D, n = Xt.shape
        A, b, weights = np.empty((D, D)), np.empty(D), np.empty(n)
        for j in range(k):
            for i in range(n):
                weights[i] = resp[j, i] * w[i]
            _weighted_gram(Xt, weights, A)
            for a in range(D):
                acc = 0.0
                for i in range(n):
                    acc += weights[i] * Xt[a, i] * y[i]
                b[a] = acc
            new[j * D : (j + 1) * D] = _ridged_solve(A, b)

    @_summing
    def _noise_step(Xt, y, w, total, resp, weight, k, floor, shared, proj, new):
        """``sigma_j^2 = sum_i w_i r_ij (y_i - a_j . x_i)^2 / sum_i w_i r_ij``
        (per expert) or pooled over ``j`` (shared), with the new ``a_j``."""
        D, n = Xt.shape
        _project_rows(Xt, new, k, proj)
        rss = np.zeros(k)
        for j in range(k):
            acc = 0.0
            for i in range(n):
                res = y[i] - proj[j, i]
                acc += resp[j, i] * w[i] * res * res
            rss[j] = acc
        for j in range(k):
            var = rss.sum() / total if shared else rss[j] / max(weight[j], 1e-300)
            new[2 * k * D + j] = max(np.sqrt(var), floor)

    @_summing
    def _gate_step(Xt, w, metric, theta, k, penalty, resp, gates, new):
        """One penalised Newton step for the free gate rows ``t < k - 1``:
        gradient ``sum_i w_i (r_it - pi_it) x_i - lambda C G_t``, Hessian
        ``sum_i w_i pi_ia (delta_ab - pi_ib) x_i x_i^T + lambda C delta_ab``."""
        D, n = Xt.shape
        kD, t = k * D, k - 1
        grad, H = np.zeros(t * D), np.zeros((t * D, t * D))
        block, weights = np.empty((D, D)), np.empty(n)
        for a in range(t):
            for c in range(D):
                acc = 0.0
                for i in range(n):
                    acc += (resp[a, i] - gates[a, i]) * w[i] * Xt[c, i]
                grad[a * D + c] = acc
            for bb in range(a, t):
                same = 1.0 if a == bb else 0.0
                for i in range(n):
                    weights[i] = gates[a, i] * (same - gates[bb, i]) * w[i]
                _weighted_gram(Xt, weights, block)
                H[a * D : (a + 1) * D, bb * D : (bb + 1) * D] = block
        for a in range(t):
            for c in range(D):
                for e in range(D):
                    grad[a * D + c] -= penalty * theta[kD + a * D + e] * metric[e, c]
            H[a * D : (a + 1) * D, a * D : (a + 1) * D] += penalty * metric
            for bb in range(a + 1, t):
                H[bb * D : (bb + 1) * D, a * D : (a + 1) * D] = H[
                    a * D : (a + 1) * D, bb * D : (bb + 1) * D
                ].T
        new[kD : kD + t * D] += _ridged_solve(H, grad)

    @_compiled
    def _change(theta, new, metric, k, D):
        """The step's size: the largest move of an expert or gate row in the
        ``metric``, or relative move of a noise level."""
        change = 0.0
        for r in range(2 * k):
            delta = new[r * D : (r + 1) * D] - theta[r * D : (r + 1) * D]
            change = _nan_max(change, np.sqrt(max(_quadratic(delta, metric), 0.0)))
        noise = 2 * k * D
        for j in range(k):
            move = abs(new[noise + j] - theta[noise + j]) / theta[noise + j]
            change = _nan_max(change, move)
        return change

    @_compiled
    def _extrapolate(base, prev, plain, theta, noise):
        """SQUAREM's proposal from ``base``, ``prev`` and ``plain`` into
        ``theta``, in the coordinates ``(a, G, log sigma)``."""
        P = theta.shape[0]
        t0, t1, t2 = base.copy(), prev.copy(), plain.copy()
        for p in range(noise, P):
            t0[p], t1[p], t2[p] = np.log(t0[p]), np.log(t1[p]), np.log(t2[p])
        r = t1 - t0
        v = t2 - 2.0 * t1 + t0
        alpha = -np.sqrt(np.sum(r * r)) / max(np.sqrt(np.sum(v * v)), 1e-300)
        alpha = min(alpha, -1.0)
        theta[:] = t0 - 2.0 * alpha * r + alpha * alpha * v
        for p in range(noise, P):
            theta[p] = np.exp(theta[p])

    @_compiled
    def _run_start(data, theta, k, settings, history):
        """One start's run (moves ``theta``); its iterations and whether it
        converged. ``data`` is ``(Xt, y, w, total, metric)``, ``settings``
        :func:`batched_runs`' keywords in the order of :data:`SETTINGS`."""
        (
            shared,
            fit_experts,
            max_iter,
            tol,
            floor,
            weight_floor,
            penalty,
            max_halvings,
            half_log_2pi,
        ) = settings
        Xt, total, metric = data[0], data[3], data[4]
        D, n = Xt.shape
        noise = 2 * k * D
        prev, base, plain, new = theta.copy(), theta.copy(), theta.copy(), theta.copy()
        base_ok, extrapolated, has_prev = False, False, False
        prev_value, n_iter, halvings, flat = -np.inf, 0, 0, 0
        work = (
            np.empty((2 * k, n)),  # projections: means, then logits
            np.empty((k, n)),  # responsibilities
            np.empty((k, n)),  # gate probabilities
            np.empty(k),  # the experts' posterior weights
            np.empty((k, n)),  # residuals
            np.empty((5, n)),  # _posterior's rows' work
            np.empty((2, n), np.int64),  # its exp's and log's scratch
        )
        weight = work[3]
        while True:
            value, ll_sum = _evaluate(data, theta, k, penalty, half_log_2pi, work)
            thin = weight.min() < weight_floor
            worse = has_prev and not (
                value >= prev_value - 1e-10 * (1.0 + abs(prev_value))
            )
            worse = worse or (extrapolated and thin)
            if n_iter >= max_iter:
                if worse:
                    theta[:] = prev
                return n_iter, False
            if worse:
                if extrapolated:  # fall back to the plain step
                    theta[:] = plain
                    extrapolated = False
                    base[:] = prev
                    base_ok = True
                else:  # halve the plain step
                    base_ok = False
                    halvings += 1
                    if halvings > max_halvings:
                        theta[:] = prev
                        return n_iter, False
                    theta[:] = 0.5 * (theta + prev)
                continue
            if not np.isfinite(value) or thin:
                return n_iter, False
            halvings = 0
            gain = (value - prev_value) / total
            small = gain < tol**1.5 * max(1.0, abs(value / total))
            flat = flat + 1 if (has_prev and small) else 0
            if flat >= 2:
                return n_iter, True
            history[n_iter] = ll_sum / total
            n_iter += 1
            prev_value, has_prev = value, True
            prev[:] = theta
            _m_step(data, theta, k, penalty, floor, shared, fit_experts, work, new)
            change = _change(theta, new, metric, k, D)
            jump = base_ok
            if not jump:
                base[:] = theta
            plain[:] = new
            base_ok = not jump
            theta[:] = plain
            extrapolated = False
            if change < tol:
                return n_iter, True
            if jump:
                _extrapolate(base, prev, plain, theta, noise)
                extrapolated = True

    @_compiled(parallel=True)
    def _runs(data, thetas, k, settings, n_iter, converged, history):
        """Every start's run (the rows of ``thetas``), one per thread."""
        for s in numba.prange(thetas.shape[0]):
            n_iter[s], converged[s] = _run_start(
                data, thetas[s], k, settings, history[s]
            )


#: :func:`batched_runs`' keywords, in the order :func:`_run_start` unpacks them.
SETTINGS = (
    "shared",
    "fit_experts",
    "max_iter",
    "tol",
    "floor",
    "weight_floor",
    "penalty",
    "max_halvings",
    "half_log_2pi",
)


def batched_runs(X, y, weights, covariance, E, G, sigma, **settings):
    """:func:`moelearn._em_batch.batched_em`'s runs from the starts ``(E, G,
    sigma)`` (stacked over starts, ``G``'s last rows zero), compiled: the
    final ``(E, G, sigma)``, each start's iterations, whether it converged and
    its mean log-likelihoods (``n_iter[s]`` of row ``s``). ``settings``: the
    keywords of :data:`SETTINGS`, batched_em's. Requires :data:`AVAILABLE`."""
    S, k, D = E.shape
    thetas = np.concatenate([E.reshape(S, -1), G.reshape(S, -1), sigma], axis=1)
    n_iter, converged = np.zeros(S, np.int64), np.zeros(S, np.bool_)
    history = np.zeros((S, max(settings["max_iter"], 1)))
    Xt = np.ascontiguousarray(X.T, dtype=float)  # (the kernels run along rows)
    y = np.ascontiguousarray(y, dtype=float)
    weights = np.ascontiguousarray(weights, dtype=float)
    metric = np.ascontiguousarray(covariance, dtype=float)
    ordered = tuple(settings[name] for name in SETTINGS)  # (KeyError if one is missing)
    data = (Xt, y, weights, float(weights.sum()), metric)
    if S == 1:
        # one start runs without the threads: after a parallel region OpenMP's
        # threads spin for a while, and the BLAS calls that follow (the NumPy
        # path's, on larger tables) ran 10-20 % slower (Boston, k = 2 and 3)
        with _first_call("start"):
            n_iter[0], converged[0] = _run_start(
                data, thetas[0], k, ordered, history[0]
            )
    else:
        with _first_call("runs"):
            _runs(data, thetas, k, ordered, n_iter, converged, history)
    E = thetas[:, : k * D].reshape(S, k, D)
    G = thetas[:, k * D : 2 * k * D].reshape(S, k, D)
    return E, G, thetas[:, 2 * k * D :], n_iter, converged, history
