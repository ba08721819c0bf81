"""Spike optima within the floor: CO2, three experts.

On mixtools' CO2 data (28 rows, one feature) flexmix's best three-component fit
(-0.7229 per row) has a component of 3.7 rows, below moelearn's expert weight
floor (2 rows per column: 4 rows); moelearn's fit is -0.8089. This benchmark asks
what the highest likelihood *within* the floor is: it maximises the
log-likelihood of the three-expert model (per-expert noise, intercepts) subject
to every expert's posterior weight ``sum_i r_ij >= 4`` by SLSQP from
:data:`STARTS` random starts, then runs moelearn's EM (with its floor) from the
best point found, and reports the distinct optima with their smallest noise level
and expert weight.

Usage: ``python benchmarks/bench_spikes.py [--out FILE]`` (about 2 minutes; R
for the data).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from _report import emit
from moelearn._em import MIN_EXPERT_WEIGHT, em, em_columns, expert_weight_floor
from moelearn._model import MoEParams, log_likelihood_terms
from moelearn._moments import input_whitening

HERE = Path(__file__).resolve().parent
STARTS, K = 300, 3


class Problem:
    """The log-likelihood per row and the experts' posterior weights of the
    ``K``-expert model on ``(x, y)``, as functions of a flat parameter vector
    ``[a (K, 2), G (K - 1, 2), log sigma (K,)]`` (columns ``[1, x]``), each
    computed once per vector."""

    def __init__(self, x, y):
        self.Z = np.column_stack([np.ones(len(y)), x])
        self.y = y
        self._key, self._value = None, None

    def unpack(self, p):
        experts = p[: 2 * K].reshape(K, 2)
        gates = np.vstack([p[2 * K : 4 * K - 2].reshape(K - 1, 2), np.zeros(2)])
        return experts, gates, np.exp(p[4 * K - 2 :])

    def _evaluate(self, p):
        key = p.tobytes()
        if key != self._key:
            experts, gates, sigma = self.unpack(p)
            logits = self.Z @ gates.T
            log_gate = logits - logsumexp(logits, axis=1, keepdims=True)
            z = (self.y[:, None] - self.Z @ experts.T) / sigma
            joint = log_gate - 0.5 * z**2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
            ll = logsumexp(joint, axis=1)
            weight = np.exp(joint - ll[:, None]).sum(axis=0)
            self._key, self._value = key, (float(ll.mean()), weight)
        return self._value

    def neg_ll(self, p):
        return -self._evaluate(p)[0]

    def weight(self, p):
        return self._evaluate(p)[1]


def search(problem: Problem, floor: float, rng) -> list[tuple[float, np.ndarray]]:
    """SLSQP from :data:`STARTS` random starts, every expert's weight at least
    ``floor``: (log-likelihood per row, parameters) of each feasible end."""
    ends = []
    constraint = {"type": "ineq", "fun": lambda p: problem.weight(p) - floor}
    for _ in range(STARTS):
        start = np.concatenate(
            [
                rng.standard_normal(2 * K),
                2.0 * rng.standard_normal(2 * K - 2),
                np.log(rng.uniform(0.05, 0.6, K)),
            ]
        )
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            result = minimize(
                problem.neg_ll,
                start,
                method="SLSQP",
                constraints=[constraint],
                options={"maxiter": 500, "ftol": 1e-12},
            )
        if np.isfinite(result.fun) and problem.weight(result.x).min() >= floor - 1e-6:
            ends.append((-float(result.fun), result.x))
    return ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "spikes.md"))
    args = parser.parse_args()
    from real_tables import load_table

    table = load_table("co2", seed=0)
    X, y = table.X_train, table.y_train
    problem = Problem(X[:, 0], y)
    floor = expert_weight_floor(2, len(y), MIN_EXPERT_WEIGHT)  # (columns x, 1)
    ends = search(problem, floor, np.random.default_rng(0))
    optima: dict[float, tuple[int, np.ndarray]] = {}
    for ll, p in ends:
        key = round(ll, 4)
        count, _ = optima.get(key, (0, p))
        optima[key] = (count + 1, p)
    lines = [
        "# Spike optima within the floor: CO2, three experts",
        "",
        "`python benchmarks/bench_spikes.py`. The three-expert model (per-expert",
        "noise, intercepts) on mixtools' CO2 data (28 rows), its log-likelihood",
        f"maximised by SLSQP from {STARTS} random starts subject to every expert's",
        f"posterior weight being at least moelearn's floor ({floor:.0f} rows).",
        f"{len(ends)} ends were feasible. The distinct ends (to 4 decimals), the",
        "best ten: how many starts reached each, the smallest noise level and",
        "the smallest expert weight (rows).",
        "",
        "| log-likelihood per row | starts | min sigma | min rows |",
        "|---:|---:|---:|---:|",
    ]
    for key in sorted(optima, reverse=True)[:10]:
        count, p = optima[key]
        sigma = problem.unpack(p)[2]
        weight = problem.weight(p)
        lines.append(
            f"| {key:.4f} | {count} | {sigma.min():.4f} | {weight.min():.2f} |"
        )
    best_ll, best = max(ends, key=lambda end: end[0])
    experts, gates, sigma = problem.unpack(best)
    whitening = input_whitening(X)
    X_em, moments = em_columns(X, whitening.mean, whitening.covariance, True)
    start = MoEParams(experts[:, ::-1].copy(), gates[:, ::-1].copy(), sigma, "linear")
    result = em(
        X_em,
        y,
        start,
        fit_experts=True,
        moments=moments,
        max_iter=500,
        tol=1e-6,
        rng=np.random.default_rng(0),
    )
    ll = float(log_likelihood_terms(X_em, y, result.params)[0].mean())
    lines += [
        "",
        (
            f"moelearn's EM from the best end ({best_ll:.4f}): {ll:.4f} per row after "
            f"{result.n_iter} iterations, converged {result.converged}, experts "
            f"dropped {len(result.dropped)}, noise levels "
            + ", ".join(f"{s:.4f}" for s in np.ravel(result.params.noise_std))
            + ". flexmix's and SpectralMoE's fits: `benchmarks/results/real.md`."
        ),
    ]
    emit("\n".join(lines) + "\n", Path(args.out))


if __name__ == "__main__":
    main()
