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
    # One loop, on purpose: split into njit helpers (_residual, _posterior, ...) it
    # ran 30-40 % slower (n=1e6, d=51, two linear experts: 86 against 61 ms).
    @numba.njit(fastmath=True, parallel=True, cache=True)
    def _pass(  # noqa: C901
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
        n_rows = coef.shape[0]
        offset = k if fit_experts else 0
        n_cols = 2 * k - 1 if fit_experts else k - 1
        grads = np.zeros((n_threads, n_cols, d))
        lls = np.zeros(n_threads)
        rsss = np.zeros((n_threads, k))
        masses = np.zeros((n_threads, k))
        step = (n + n_threads - 1) // n_threads
        for tid in numba.prange(n_threads):
            proj = np.empty(n_rows)
            res = np.empty(k)
            deriv = np.empty(k)
            gate = np.empty(k)
            resp = np.empty(k)
            logit = np.empty(k)
            cols = np.empty(n_cols)
            local = np.zeros((n_cols, d))  # thread-local: no 3-D indexing in the loop
            ll = 0.0
            rss = np.zeros(k)
            mass = np.zeros(k)
            for i in range(tid * step, min(n, (tid + 1) * step)):
                for r in range(n_rows):
                    acc = 0.0
                    for c in range(d):
                        acc += coef[r, c] * X[i, c]
                    proj[r] = acc
                for j in range(k):
                    if fit_experts:
                        eta = proj[j]
                        if link_code == 0:
                            res[j] = y[i] - eta
                            deriv[j] = 1.0
                        elif link_code == 1:
                            g = 1.0 / (1.0 + np.exp(-eta))
                            res[j] = y[i] - g
                            deriv[j] = g * (1.0 - g)
                        elif link_code == 2:
                            g = np.tanh(eta)
                            res[j] = y[i] - g
                            deriv[j] = 1.0 - g * g
                        else:
                            res[j] = y[i] - max(eta, 0.0)
                            deriv[j] = 1.0 if eta > 0.0 else 0.0
                    else:
                        res[j] = residuals[i, j]
                for j in range(k - 1):
                    logit[j] = proj[offset + j]
                logit[k - 1] = 0.0
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
                wi = weights[i] if weighted else 1.0
                ll += wi * (a_top - top + np.log(norm / gate_norm))
                for j in range(k):
                    resp[j] /= norm
                    gate[j] /= gate_norm
                    rss[j] += wi * resp[j] * res[j] * res[j]
                    mass[j] += wi * resp[j]
                c = 0
                if fit_experts:
                    for j in range(k):
                        cols[c] = resp[j] * res[j] * deriv[j]
                        c += 1
                for j in range(k - 1):
                    cols[c] = resp[j] - gate[j]
                    c += 1
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
