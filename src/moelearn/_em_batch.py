"""Generalised EM from many starts at once, on an in-memory table.

The start race (:meth:`moelearn.SpectralMoE._short_runs`) runs a few EM
iterations from each of up to 25 cheap starts on at most 5 000 rows. Run one
start at a time, those runs cost about a millisecond of Python per iteration
whatever the table's size, which on small tables is most of the fit. Here every
start's parameters are stacked along a leading axis ``s`` and each step is one
batched array expression, so ``S`` starts cost little more than one.

The step is :meth:`moelearn._em._Objective.em_step`'s, for linear experts and a
softmax gate (docs/method.md, section 5):

* E-step ``r_ij = pi_j(x_i) N(y_i | a_j . x_i, sigma_j^2) / p(y_i | x_i)``;
* experts: weighted least squares, ``a_j = (sum_i w_i r_ij x_i x_i^T)^{-1}
  sum_i w_i r_ij y_i x_i``;
* noise: ``sigma_j^2 = sum_i w_i r_ij (y_i - a_j . x_i)^2 / sum_i w_i r_ij``
  (per expert) or the pooled sum over ``j`` divided by ``sum_i w_i`` (shared),
  with the new ``a_j``;
* gate: one Newton step on the expected complete-data log-likelihood with the
  ridge ``(lambda / 2) sum_t G_t^T C G_t``: gradient
  ``sum_i w_i (r_it - pi_it) x_i - lambda C G_t``, Hessian
  ``sum_i w_i pi_ia (delta_ab - pi_ib) x_i x_i^T + lambda C delta_ab``.

A step that lowers a start's penalised log-likelihood is halved for that start
until it does not, and the stopping rules are :func:`moelearn._em.em`'s (a
parameter change below ``tol`` in whitened units, or two iterations in a row
that raise the objective by less than ``tol^1.5`` per row). A start one of whose
experts falls below the weight floor stops there (``EMResult.converged`` False);
:func:`~moelearn._em.em`, continuing it, drops the expert. Memory is
``O(S n k + S k D^2)``.

With numba (the ``fast`` extra), a race on a small table (:func:`_compiled_pays`)
runs compiled instead: the same steps, each start to its end in one loop
(:func:`moelearn._em_fast.batched_runs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moelearn import _em_fast
from moelearn._em import (
    GATE_PENALTY,
    MAX_HALVINGS,
    MIN_EXPERT_WEIGHT,
    EMResult,
    expert_weight_floor,
    min_noise_level,
)
from moelearn._model import HALF_LOG_2PI, MoEParams

Array = np.ndarray

#: Tables of at most this many rows and columns run compiled
#: (:func:`moelearn._em_fast.batched_runs`, with numba): every race subset.
#: Measured, 10-24 starts, 30 iterations, k = 2-4: compiled 1.3-2.2 times faster
#: at 5 000 rows (CPS1988, flights and synthetic, 7-32 columns), 1.35-3.4 times at
#: 400-2 000 rows.
COMPILED_ROWS, COMPILED_COLUMNS = 5000, 32


def supports(link: Any, gate: str, fit_noise: bool) -> bool:
    """Whether :func:`batched_em` fits this model: linear experts, a softmax
    gate, the noise level(s) fitted."""
    return link == "linear" and gate == "softmax" and fit_noise


@dataclass
class _Evaluation:
    """One E-step for a set of starts (arrays over ``s``)."""

    value: Array  # (S,) penalised log-likelihood
    ll_mean: Array  # (S,) mean log-likelihood per row
    resp: Array  # (S, k, n) posterior responsibilities
    gates: Array  # (S, k, n) gate probabilities
    weight: Array  # (S, k) posterior weight of each expert


class _Batch:
    """The table, its weights and the objective shared by every start. Per-row
    arrays are laid out ``(S, k, n)``, so that sums over experts run along
    contiguous rows."""

    def __init__(self, X, y, weights, covariance, penalty):
        self.X, self.y = X, y
        self.Xt = np.ascontiguousarray(X.T)
        self.Xy = np.column_stack([X, y])
        self.w = weights  # (ones without sample weights)
        self.total = float(weights.sum())
        self.metric, self.penalty = covariance, penalty
        n, D = X.shape
        # the rows' products [x_i, y_i] x_i^T, flattened: every weighted Gram
        # matrix of every start and expert is then one matrix product with them
        # (kept only while small; else a block of starts at a time)
        self.products = None
        if 8 * n * (D + 1) * D <= _GRAM_BYTES:
            self.products = (self.Xy[:, :, None] * X[:, None, :]).reshape(n, -1)

    def grams(self, weights: Array, with_y: bool = True) -> Array:
        """``sum_i weights[..., i] x_i [x_i, y_i]``: ``(..., D, D + 1)`` (the last
        column ``sum_i weights_i y_i x_i``), or ``(..., D, D)`` without
        ``with_y``. From the rows' products when kept (one matrix product for
        any leading shape); else in blocks of starts, for ``weights`` of shape
        ``(S, n)`` only (callers go an expert at a time: memory ``O(S D^2)``)."""
        n, D = self.X.shape
        cols = D + 1 if with_y else D
        if self.products is not None:
            out = weights.reshape(-1, n) @ self.products[:, : cols * D]
            # (the products' layout is [x, y] x^T: transposed, a view)
            return out.reshape(*weights.shape[:-1], cols, D).swapaxes(-1, -2)
        return _weighted_grams(weights, self.Xt, self.Xy if with_y else self.X)

    def evaluate(self, E: Array, G: Array, sigma: Array) -> _Evaluation:
        """The E-step and the penalised log-likelihood of each start."""
        k = E.shape[1]
        both = np.concatenate([E, G], axis=1) @ self.Xt  # (S, 2k, n)
        means, logits = both[:, :k], both[:, k:]
        top = logits.max(axis=1, keepdims=True)
        gates = np.exp(logits - top)
        total = gates.sum(axis=1, keepdims=True)
        gates /= total
        z = (self.y - means) / sigma[:, :, None]
        joint = logits - top - np.log(total) - 0.5 * z * z
        joint -= np.log(sigma)[:, :, None] + HALF_LOG_2PI
        top = joint.max(axis=1, keepdims=True)
        top[~np.isfinite(top)] = 0.0
        resp = np.exp(joint - top)
        total = resp.sum(axis=1, keepdims=True)
        resp /= total
        rows = (top + np.log(total))[:, 0]  # (S, n) log p(y_i | x_i)
        free = G[:, :-1]
        ridge = np.einsum("std,de,ste->s", free, self.metric, free)
        with np.errstate(invalid="ignore"):
            ll_sum = rows @ self.w
        return _Evaluation(
            value=ll_sum - 0.5 * self.penalty * ridge,
            ll_mean=ll_sum / self.total,
            resp=resp,
            gates=gates,
            weight=resp @ self.w,
        )

    def m_step(
        self,
        ev: _Evaluation,
        E: Array,
        G: Array,
        shared: bool,
        floor: float,
        fit_experts: bool = True,
    ):
        """The generalised M-step for each start: ``(E, G, sigma)`` (``E`` kept
        unless ``fit_experts``)."""
        S, k, D = G.shape
        weighted = ev.resp * self.w  # (S, k, n)
        if fit_experts:
            # [A_j | b_j] = sum_i w_i r_ij x_i [x_i, y_i]
            if self.products is not None:  # all starts and experts at once
                grams = self.grams(weighted)
                E = _solve(grams[..., :D], grams[..., D])
            else:
                E = np.empty((S, k, D))
                for j in range(k):
                    grams = self.grams(weighted[:, j])
                    E[:, j] = _solve(grams[..., :D], grams[..., D])
        res = self.y - E @ self.Xt
        rss = np.einsum("skn,skn->sk", weighted, res * res)
        if shared:
            var = np.repeat(rss.sum(1, keepdims=True) / self.total, k, axis=1)
        else:
            var = rss / np.maximum(ev.weight, 1e-300)
        sigma = np.maximum(np.sqrt(var), floor)
        return E, self._gate_step(ev, G), sigma

    def _gate_step(self, ev: _Evaluation, G: Array) -> Array:
        """One penalised Newton step for the free gate rows (the last stays 0)."""
        X, w, C, lam = self.X, self.w, self.metric, self.penalty
        S, k, D = G.shape
        t = k - 1
        free = G[:, :t]
        diff = (ev.resp - ev.gates)[:, :t] * w  # (S, t, n)
        grad = diff @ X - lam * free @ C  # (S, t, D)
        pi = ev.gates[:, :t]
        pairs = [(a, b) for a in range(t) for b in range(a, t)]
        h = np.stack([pi[:, a] * ((a == b) - pi[:, b]) for a, b in pairs], axis=1)
        H = np.zeros((S, t, D, t, D))
        # every pair in one product from the rows' products, else a pair at a time
        blocks = None if self.products is None else self.grams(h * w, with_y=False)
        for p, (a, b) in enumerate(pairs):
            if blocks is None:
                H[:, a, :, b, :] = self.grams(h[:, p] * w, with_y=False)
            else:
                H[:, a, :, b, :] = blocks[:, p]
            if a == b:
                H[:, a, :, a, :] += lam * C
            else:
                H[:, b, :, a, :] = H[:, a, :, b, :].transpose(0, 2, 1)
        step = _solve(H.reshape(S, t * D, t * D), grad.reshape(S, t * D))
        new = G.copy()
        new[:, :t] += step.reshape(S, t, D)
        return new


def batched_em(
    X: Array,
    y: Array,
    starts: list[MoEParams],
    *,
    covariance: Array,
    max_iter: int,
    tol: float,
    sample_weight: Array | None = None,
    min_noise_std: float = 0.0,
    gate_penalty: float = GATE_PENALTY,
    min_expert_weight: float = MIN_EXPERT_WEIGHT,
    fit_experts: bool = True,
) -> list[EMResult]:
    """At most ``max_iter`` generalised EM iterations from each of ``starts``
    (experts held fixed unless ``fit_experts``: Method 1's gating EM).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_columns)
        EM's columns (with the ones column when the model has offsets), in memory.
    y : ndarray of shape (n_samples,)
        Targets.
    starts : list of MoEParams
        Starting points with the same number of experts, linear experts and a
        softmax gate (:func:`supports`); shared or per-expert noise, as the
        first start has it.
    covariance : ndarray of shape (n_columns, n_columns)
        The columns' covariance: the gate ridge's metric and the step sizes'.
    max_iter : int
        Iterations per start.
    tol : float
        The stopping tolerance of :func:`moelearn._em.em`.
    sample_weight : ndarray of shape (n_samples,), optional
        Row weights.
    min_noise_std : float, default=0.0
        Floor on the noise levels (at least ``1e-6 std(y)``).
    gate_penalty : float
        The ridge ``lambda`` on the gate rows.
    min_expert_weight : float
        Share of the total weight below which an expert stops its start (when
        the experts are fitted: as in :func:`~moelearn._em.em`, fixed experts are
        never dropped).
    fit_experts : bool, default=True
        Whether the experts' coefficients are fitted; the gate and the noise
        levels always are.

    Returns
    -------
    list of EMResult
        One per start, in their order: where it ended, its iterations, whether
        it converged and its mean log-likelihood per iteration.
    """
    shared = np.ndim(starts[0].noise_std) == 0
    k = starts[0].n_experts
    E = np.stack([p.experts for p in starts]).astype(float)
    G = np.stack([p.gating - p.gating[-1] for p in starts]).astype(float)
    sigma = np.stack(
        [np.broadcast_to(np.asarray(p.noise_std, float), (k,)) for p in starts]
    )
    floor = min_noise_level(y, min_noise_std)
    w = np.ones(len(y)) if sample_weight is None else sample_weight
    weight_floor = expert_weight_floor(X.shape[1], float(w.sum()), min_expert_weight)
    if not fit_experts:
        weight_floor = 0.0
    S = len(starts)
    if _compiled_pays(X.shape):
        E, G, sigma, n_iter, converged, history = _em_fast.batched_runs(
            X,
            y,
            w,
            covariance,
            E,
            G,
            sigma,
            shared=shared,
            fit_experts=fit_experts,
            max_iter=max_iter,
            tol=tol,
            floor=floor,
            weight_floor=weight_floor,
            penalty=gate_penalty,
            max_halvings=MAX_HALVINGS,
            half_log_2pi=HALF_LOG_2PI,
        )
        histories = [history[s, : n_iter[s]].tolist() for s in range(S)]
        return _results(E, G, sigma, n_iter, converged, histories, shared)
    batch = _Batch(X, y, w, covariance, gate_penalty)
    state = _State(S, E, G, sigma)  # (which moves E, G and sigma in place)
    while state.active.any():
        idx = np.flatnonzero(state.active)
        ev = batch.evaluate(state.E[idx], state.G[idx], state.sigma[idx])
        step = state.judge(idx, ev, max_iter, tol, batch.total, weight_floor)
        if step.size:
            picked = ev  # (step is a subset of idx: when as long, the same)
            if step.size < idx.size:
                sub = np.searchsorted(idx, step)
                picked = _Evaluation(
                    ev.value[sub],
                    ev.ll_mean[sub],
                    ev.resp[sub],
                    ev.gates[sub],
                    ev.weight[sub],
                )
            E_new, G_new, sigma_new = batch.m_step(
                picked, state.E[step], state.G[step], shared, floor, fit_experts
            )
            state.propose(step, E_new, G_new, sigma_new, covariance, tol)
    return _results(
        state.E,
        state.G,
        state.sigma,
        state.n_iter,
        state.converged,
        state.history,
        shared,
    )


def _compiled_pays(shape: tuple[int, int]) -> bool:
    """Whether the starts run compiled: numba is installed and the table is
    small (:data:`COMPILED_ROWS`, :data:`COMPILED_COLUMNS`), where NumPy's
    fixed cost of calls, about 0.3 ms an iteration, dominates."""
    n, D = shape
    return _em_fast.AVAILABLE and n <= COMPILED_ROWS and D <= COMPILED_COLUMNS


def _results(E, G, sigma, n_iter, converged, histories, shared) -> list[EMResult]:
    """One :class:`EMResult` per start from the stacked final parameters."""
    return [
        EMResult(
            MoEParams(
                E[s].copy(),
                G[s].copy(),
                sigma[s].copy() if not shared else float(sigma[s, 0]),
                "linear",
                "softmax",
            ),
            int(n_iter[s]),
            bool(converged[s]),
            list(histories[s]),
        )
        for s in range(len(E))
    ]


class _State:
    """Where each start is, its last accepted point, and :func:`em`'s counters.

    Each start's parameters are one row of ``theta``, ``[a, G, sigma]``
    flattened; ``E``, ``G`` and ``sigma`` are views of it, and the points the
    steps come back to (``prev``, ``base``, ``plain``) are arrays of its shape.

    Every other step is extrapolated (SQUAREM, Varadhan and Roland 2008, their
    scheme S3): from an accepted plain step ``theta_1 = F(theta_0)`` and the
    next plain proposal ``theta_2 = F(theta_1)``, with ``r = theta_1 - theta_0``
    and ``v = theta_2 - 2 theta_1 + theta_0``, the proposal is
    ``theta_0 - 2 alpha r + alpha^2 v`` with ``alpha = min(-1, -|r| / |v|)``
    (``alpha = -1`` gives ``theta_2``), in the coordinates ``(a, G, log sigma)``.
    An extrapolated proposal that lowers the objective is replaced by
    ``theta_2``.
    """

    def __init__(self, S: int, E: Array, G: Array, sigma: Array):
        _, k, D = E.shape
        self.theta = np.concatenate([E.reshape(S, -1), G.reshape(S, -1), sigma], axis=1)
        self.E = self.theta[:, : k * D].reshape(S, k, D)
        self.G = self.theta[:, k * D : 2 * k * D].reshape(S, k, D)
        self.sigma = self.theta[:, 2 * k * D :]
        self.prev = self.theta.copy()
        self.base = self.theta.copy()
        self.plain = self.theta.copy()
        self.base_ok = np.zeros(S, bool)  # current = F(base) by a plain step
        self.extrapolated = np.zeros(S, bool)  # current is an extrapolated point
        self.prev_value = np.full(S, -np.inf)
        self.has_prev = np.zeros(S, bool)
        self.active = np.ones(S, bool)
        self.converged = np.zeros(S, bool)
        self.n_iter = np.zeros(S, int)
        self.halvings = np.zeros(S, int)
        self.flat = np.zeros(S, int)
        self.history: list[list[float]] = [[] for _ in range(S)]

    def judge(self, idx, ev: _Evaluation, max_iter, tol, total, weight_floor):
        """Accept, halve or stop each evaluated start; the starts to step."""
        value = ev.value
        thin = ev.weight.min(axis=1) < weight_floor
        worse = self.has_prev[idx] & ~(
            value >= self.prev_value[idx] - 1e-10 * (1.0 + np.abs(self.prev_value[idx]))
        )
        worse |= self.extrapolated[idx] & thin  # (a jump that empties an expert)
        spent = self.n_iter[idx] >= max_iter
        # (each case's bookkeeping only when it occurs: on a small table the
        # index operations on empty sets are a visible part of an iteration)
        if spent.any():
            # out of iterations: the last proposal is kept only if it did not
            # lower the objective
            last = idx[spent]
            back = last[worse[spent]]
            self.theta[back] = self.prev[back]
            self.active[last] = False
        retreating = worse & ~spent
        if retreating.any():
            self._retreat(idx[retreating])
        ok = ~worse & ~spent
        lost = ok & (~np.isfinite(value) | thin)
        if lost.any():
            self.active[idx[lost]] = False  # em() drops the expert (or reports)
            ok &= ~lost
        s = idx[ok]
        self.halvings[s] = 0
        gain = (value[ok] - self.prev_value[s]) / total
        small = gain < tol**1.5 * np.maximum(1.0, np.abs(value[ok] / total))
        self.flat[s] = np.where(self.has_prev[s] & small, self.flat[s] + 1, 0)
        done = s[self.flat[s] >= 2]
        self.converged[done] = True
        self.active[done] = False
        going = self.flat[s] < 2
        step = s[going]
        for i, mean in zip(step.tolist(), ev.ll_mean[ok][going].tolist(), strict=True):
            self.history[i].append(mean)
        self.n_iter[step] += 1
        self.prev_value[step] = value[ok][going]
        self.has_prev[step] = True
        self.prev[step] = self.theta[step]
        return step

    def _retreat(self, retreat: Array) -> None:
        """The starts ``retreat`` lowered the objective: a failed extrapolation
        falls back to the plain step; a plain step is halved (up to
        ``MAX_HALVINGS`` times, then the start stops at its last point)."""
        jumped = self.extrapolated[retreat]
        fallback, halve = retreat[jumped], retreat[~jumped]
        self.theta[fallback] = self.plain[fallback]
        self.extrapolated[fallback] = False
        self.base[fallback] = self.prev[fallback]  # the plain step F(prev) is current
        self.base_ok[fallback] = True
        self.base_ok[halve] = False
        self.halvings[halve] += 1
        give_up = halve[self.halvings[halve] > MAX_HALVINGS]
        self.theta[give_up] = self.prev[give_up]
        self.active[give_up] = False
        halve = halve[self.halvings[halve] <= MAX_HALVINGS]
        self.theta[halve] = 0.5 * (self.theta[halve] + self.prev[halve])

    def propose(self, s: Array, E: Array, G: Array, sigma: Array, metric, tol):
        """Move the starts ``s`` to their M-step (or its extrapolation); stop
        those whose plain step barely moved them."""
        delta = np.concatenate([E - self.E[s], G - self.G[s]], axis=1)
        rows = np.einsum("sid,de,sie->si", delta, metric, delta)
        noise = np.abs(sigma - self.sigma[s]) / self.sigma[s]
        change = np.maximum(np.sqrt(np.maximum(rows, 0.0)).max(1), noise.max(1))
        jump = s[self.base_ok[s]]
        plain = s[~self.base_ok[s]]
        # the plain proposals: the next extrapolation's base is the current point
        self.base[plain] = self.theta[plain]
        self.plain[s] = np.concatenate(
            [E.reshape(len(s), -1), G.reshape(len(s), -1), sigma], axis=1
        )
        self.base_ok[plain] = True
        self.base_ok[jump] = False
        done = change < tol
        jump = jump[~done[np.searchsorted(s, jump)]]
        self.theta[s] = self.plain[s]
        self.extrapolated[s] = False
        if jump.size:
            self._extrapolate(jump)
        self.converged[s[done]] = True
        self.active[s[done]] = False

    def _extrapolate(self, s: Array) -> None:
        """The SQUAREM proposal for the starts ``s`` (see the class docstring)."""
        noise = slice(self.theta.shape[1] - self.sigma.shape[1], None)
        theta0, theta1, theta2 = self.base[s], self.prev[s], self.plain[s]
        for theta in (theta0, theta1, theta2):  # (copies: fancy indexing)
            theta[:, noise] = np.log(theta[:, noise])
        r = theta1 - theta0
        v = theta2 - 2.0 * theta1 + theta0
        norm_v = np.linalg.norm(v, axis=1)
        alpha = -np.linalg.norm(r, axis=1) / np.maximum(norm_v, 1e-300)
        alpha = np.minimum(alpha, -1.0)[:, None]
        theta = theta0 - 2.0 * alpha * r + alpha**2 * v
        theta[:, noise] = np.exp(theta[:, noise])
        self.theta[s] = theta
        self.extrapolated[s] = True


#: Bytes of the ``(starts, D, n)`` temporary of :func:`_weighted_grams`.
_GRAM_BYTES = 8 << 20


def _weighted_grams(weights: Array, Xt: Array, right: Array) -> Array:
    """``sum_i weights[s, i] x_i right_i^T`` for each start ``s``: ``(S, D, m)``
    from ``weights`` (S, n), ``Xt`` (D, n) and ``right`` (n, m), a block of
    starts at a time so that the weighted copy of ``X`` stays within
    :data:`_GRAM_BYTES` (at d = 400 on 5 000 rows one start's is 16 MB)."""
    S, (D, n) = weights.shape[0], Xt.shape
    step = max(1, _GRAM_BYTES // (8 * D * n))
    out = np.empty((S, D, right.shape[1]))
    for start in range(0, S, step):
        block = slice(start, start + step)
        out[block] = (weights[block, None, :] * Xt) @ right
    return out


def _solve(A: Array, b: Array) -> Array:
    """``A^{-1} b`` for stacks of symmetric positive semi-definite ``A``, with a
    ridge of ``1e-10`` of the mean diagonal (more where a matrix is singular)."""
    scale = np.maximum(np.einsum("...ii->...", A) / A.shape[-1], 1e-300)
    for ridge in (1e-10, 1e-6, 1e-2):
        ridged = A.copy()
        np.einsum("...ii->...i", ridged)[...] += ridge * scale[..., None]
        try:
            return np.linalg.solve(ridged, b[..., None])[..., 0]
        except np.linalg.LinAlgError:
            continue
    flat_A, flat_b = A.reshape(-1, *A.shape[-2:]), b.reshape(-1, b.shape[-1])
    return np.stack(
        [
            np.linalg.lstsq(a, v, rcond=None)[0]
            for a, v in zip(flat_A, flat_b, strict=True)
        ]
    ).reshape(b.shape)
