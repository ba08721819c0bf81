"""Do the standard errors mean what they say? Coverage of 95 % intervals
(issue 18).

Usage: ``python benchmarks/bench_calibration.py [--replicates 200]
[--bootstrap-replicates 40] [--resamples 100] [--out FILE]``.

Each replicate draws n = 2e4 rows, d = 5 standard Gaussian inputs, from one
fixed two-expert model (linear experts with intercepts, a gate with a bias,
noise levels 0.1 and 0.2), fits ``SpectralMoE(fit_intercept=True,
noise_type='per_expert')`` and asks whether each parameter's 95 % interval
holds the truth. Coverage is reported per parameter group; with R replicates
and P parameters in a group its standard error is about
``sqrt(0.95 * 0.05 / R)`` (rows are correlated within a replicate, so read it as
a lower bound). The bootstrap (EM refits from the fit on resampled rows) is
slower: it runs on the first ``--bootstrap-replicates`` replicates with
``--resamples`` resamples each.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from moelearn import SpectralMoE
from moelearn._model import MoEParams, sample_outputs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import emit  # noqa: E402

N, D = 20_000, 5
TRUTH = MoEParams(
    experts=np.array(
        [[1.0, -0.5, 0.0, 0.5, 0.2, 0.3], [-0.5, 1.0, 0.5, 0.0, -0.2, -0.3]]
    ),
    gating=np.array([[1.5, 0.5, -1.0, 0.0, 0.0, 0.4], [0.0] * 6]),
    noise_std=np.array([0.1, 0.2]),
    link="linear",
)


def truth_values(swapped: bool) -> np.ndarray:
    """The true parameters in the order of the summary's rows, for a fit whose
    experts come in the truth's order or (``swapped``) the other: then the free
    gate row, expert 0's logit against expert 1's, changes sign."""
    order = [1, 0] if swapped else [0, 1]
    gate = -TRUTH.gating[0] if swapped else TRUTH.gating[0]
    noise = np.asarray(TRUTH.noise_std)[order]
    return np.concatenate([TRUTH.experts[order].ravel(), gate, noise])


def one_replicate(
    seed: int, kinds: list[str], resamples: int = 100
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    y, _ = sample_outputs(np.column_stack([X, np.ones(N)]), TRUTH, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpectralMoE(
            2, fit_intercept=True, noise_type="per_expert", random_state=seed
        ).fit(X, y)
    swapped = np.linalg.norm(model.experts_[0] - TRUTH.experts[0, :D]) > np.linalg.norm(
        model.experts_[1] - TRUTH.experts[0, :D]
    )
    truth = truth_values(swapped)
    out = {}
    for kind in kinds:
        table = model.summary(X, y, kind=kind, n_bootstrap=resamples, random_state=seed)
        inside = (table["ci_low"] <= truth) & (truth <= table["ci_high"])
        out[kind] = (table["group"].to_numpy(), inside.to_numpy())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--bootstrap-replicates", type=int, default=40)
    parser.add_argument("--resamples", type=int, default=100, help="per bootstrap")
    parser.add_argument("--out", default=str(HERE / "results" / "calibration.md"))
    args = parser.parse_args()
    hits: dict[str, dict[str, list]] = {}
    start = time.perf_counter()
    for seed in range(args.replicates):
        kinds = ["observed", "sandwich"]
        if seed < args.bootstrap_replicates:
            kinds.append("bootstrap")
        result = one_replicate(seed, kinds, args.resamples)
        for kind, (groups, inside) in result.items():
            for group in np.unique(groups):
                hits.setdefault(kind, {}).setdefault(group, []).append(
                    inside[groups == group]
                )
        if (seed + 1) % 20 == 0:
            print(f"{seed + 1} replicates, {time.perf_counter() - start:.0f} s")
    lines = [
        "# Coverage of 95 % intervals",
        "",
        (
            f"`python benchmarks/bench_calibration.py` (n = {N}, d = {D}, two linear "
            "experts with intercepts, gate with a bias, sigma = 0.1 and 0.2; "
            "`SpectralMoE(fit_intercept=True, noise_type='per_expert')`). Share of "
            "the replicates whose interval holds the true value, per parameter group "
            "(parameters x replicates intervals each); the bootstrap on the first "
            f"{args.bootstrap_replicates} replicates, {args.resamples} resamples each."
        ),
        "",
        "| standard errors | group | intervals | coverage | binomial s.e. |",
        "|---|---|---:|---:|---:|",
    ]
    for kind, groups in hits.items():
        for group, rows in groups.items():
            inside = np.concatenate(rows)
            replicates = len(rows)
            se = np.sqrt(0.95 * 0.05 / replicates)
            lines.append(
                f"| {kind} | {group} | {inside.size} | {inside.mean():.3f} | {se:.3f} |"
            )
    lines += ["", f"Total time {time.perf_counter() - start:.0f} s."]
    emit("\n".join(lines) + "\n", Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
