"""Optional compiled kernel (numba, the ``fast`` extra) for EM's full-data pass.

One loop over rows does what the NumPy path does with several array operations:
the projections ``a_j . x``, ``G_j . x``, the E-step and the gradient accumulation,
so each row is read once and no temporaries are made; the rows are split between
threads. Same formulas as :func:`moelearn._em._posterior` and :func:`moelearn._em._pass_sums`;
a test checks the two paths agree.
"""

from __future__ import annotations

from functools import partial

import numpy as np

try:
    import numba
except ImportError:  # the extra is not installed: the NumPy path is used
    numba = None  # type: ignore[assignment]

AVAILABLE = numba is not None
#: The compiled pass takes chunks this many times the usual size (about 16 MiB):
#: each call starts the threads anew.
CHUNK_SCALE = 16
LINK_CODES = {"linear": 0, "sigmoid": 1, "tanh": 2, "relu": 3}

if AVAILABLE:
    # The row's steps are helpers inlined by numba (inline="always"): as plain
    # njit calls they ran 30-40 % slower (n=1e6, d=51, two linear experts: 86
    # against 61 ms), inlined they compile to the one loop.
    _inline = partial(numba.njit, inline="always", fastmath=True)

    @_inline
    def _project(X, i, coef, proj):
        """``proj_r = coef_r . x_i`` for every coefficient row ``r``."""
        for r in range(coef.shape[0]):
            acc = 0.0
            for c in range(X.shape[1]):
                acc += coef[r, c] * X[i, c]
            proj[r] = acc

    @_inline
    def _residuals(proj, y_i, k, link_code, res, deriv):
        """``res_j = y_i - g(eta_j)`` and ``deriv_j = g'(eta_j)``, ``eta_j =
        proj_j``, for the link ``g`` of ``link_code``."""
        for j in range(k):
            eta = proj[j]
            if link_code == 0:
                res[j] = y_i - eta
                deriv[j] = 1.0
            elif link_code == 1:
                g = 1.0 / (1.0 + np.exp(-eta))
                res[j] = y_i - g
                deriv[j] = g * (1.0 - g)
            elif link_code == 2:
                g = np.tanh(eta)
                res[j] = y_i - g
                deriv[j] = 1.0 - g * g
            else:
                res[j] = y_i - max(eta, 0.0)
                deriv[j] = 1.0 if eta > 0.0 else 0.0

    @_inline
    def _posterior(logit, res, inv_sigma, log_sigma, gate, resp):
        """Gate probabilities ``gate`` and responsibilities ``resp`` from the
        logits and residuals; returns ``log p(y_i | x_i)`` without the
        ``-log(2 pi) / 2`` term."""
        k = logit.shape[0]
        top = logit[0]
        for j in range(1, k):
            top = max(top, logit[j])
        gate_norm = 0.0
        for j in range(k):
            gate[j] = np.exp(logit[j] - top)
            gate_norm += gate[j]
        a_top = -np.inf
        for j in range(k):
            z = res[j] * inv_sigma[j]
            resp[j] = logit[j] - 0.5 * z * z - log_sigma[j]
            a_top = max(a_top, resp[j])
        norm = 0.0
        for j in range(k):
            resp[j] = np.exp(resp[j] - a_top)
            norm += resp[j]
        for j in range(k):
            resp[j] /= norm
            gate[j] /= gate_norm
        return a_top - top + np.log(norm / gate_norm)

    @_inline
    def _gradient_columns(resp, gate, res, deriv, fit_experts, cols):
        """The row's gradient weights: ``r_j res_j g'_j`` for the experts (when
        fitted), then ``r_j - pi_j`` for the free gate rows."""
        k = resp.shape[0]
        c = 0
        if fit_experts:
            for j in range(k):
                cols[c] = resp[j] * res[j] * deriv[j]
                c += 1
        for j in range(k - 1):
            cols[c] = resp[j] - gate[j]
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
            proj = np.empty(coef.shape[0])
            res, deriv = np.empty(k), np.ones(k)
            gate, resp, logit = np.empty(k), np.empty(k), np.zeros(k)
            cols = np.empty(n_cols)
            local = np.zeros((n_cols, d))  # thread-local: no 3-D indexing in the loop
            ll = 0.0
            rss, mass = np.zeros(k), np.zeros(k)
            for i in range(tid * step, min(n, (tid + 1) * step)):
                _project(X, i, coef, proj)
                if fit_experts:
                    _residuals(proj, y[i], k, link_code, res, deriv)
                else:
                    res[:] = residuals[i]
                logit[: k - 1] = proj[offset : offset + k - 1]  # (the last is 0)
                wi = weights[i] if weighted else 1.0
                ll += wi * _posterior(logit, res, inv_sigma, log_sigma, gate, resp)
                for j in range(k):
                    rss[j] += wi * resp[j] * res[j] * res[j]
                    mass[j] += wi * resp[j]
                _gradient_columns(resp, gate, res, deriv, fit_experts, cols)
                for c in range(n_cols):
                    w = wi * cols[c]
                    for col in range(d):
                        local[c, col] += w * X[i, col]
            grads[tid] = local
            lls[tid] = ll
            rsss[tid] = rss
            masses[tid] = mass
        return lls.sum(), rsss.sum(axis=0), masses.sum(axis=0), grads.sum(axis=0)


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
