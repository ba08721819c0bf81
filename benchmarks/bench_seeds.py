"""Issue 15's acceptance over many random_states, not one.

``bench_real.py`` judges every fit from ``random_state=0``. Both moelearn's fit
and EMMoE(n_init=10) draw random starts, so one seed can flatter either. Here
each table and ``k`` is fitted from :data:`SEEDS` random_states (fewer on the
large tables), SpectralMoE (per-expert noise, intercepts) against
EMMoE(n_init=10) with the *same* random_state, and each pair is judged by the
issue's criteria: training log-likelihood at least EMMoE's minus 0.005 per row
and at least linear regression's and the same seed's ``k - 1`` fit's (minus
1e-3), converged, in at most a third of EMMoE's time (one fit each, timed side
by side, as ``bench_real.py`` times them: fits under a second as the median of
5). The table counts the seeds that meet each criterion and gives the
spread of both methods' likelihoods.

Usage: ``python benchmarks/bench_seeds.py [--out FILE] [--tables ...]`` (about
5 minutes; R for NPreg and CO2).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from moelearn import EMMoE, SpectralMoE

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import emit  # noqa: E402
from bench_real import linear_regression, ours, warm_up  # noqa: E402
from real_tables import R_TABLES, TABLES, load_table  # noqa: E402

#: random_states per table: fewer where EMMoE(10) takes seconds a fit.
SEEDS = {"cps1988": 5, "flights": 5}
DEFAULT_SEEDS = 10
#: The acceptance margins: EMMoE(10)'s likelihood minus 0.005 per row; the
#: simpler models' minus 1e-3 (select_n_experts' tolerance).
EM_MARGIN, NESTED_MARGIN, TIME_SHARE = 0.005, 1e-3, 1.0 / 3.0


def seed_rows(name: str, seeds: int) -> list[str]:
    """The table's two rows (k = 2, 3), each seed's pair printed as it ends."""
    table = load_table(name, seed=0)
    one = linear_regression(table)["train"]
    settings = dict(noise_type="per_expert", fit_intercept=True)
    results = {2: [], 3: []}
    for seed in range(seeds):
        previous = one
        for k in (2, 3):
            fit = ours(SpectralMoE(k, random_state=seed, **settings), table)
            em = ours(EMMoE(k, n_init=10, random_state=seed, **settings), table)
            ll, ratio = fit["train"], fit["seconds"] / em["seconds"]
            results[k].append(
                dict(
                    ll=ll,
                    em=em["train"],
                    nested=ll >= max(one, previous) - NESTED_MARGIN,
                    converged=fit["converged"],
                    ratio=ratio,
                )
            )
            print(
                f"{name} k={k} seed {seed}: {ll:.4f} against EMMoE(10) "
                f"{em['train']:.4f}, time ratio {ratio:.2f}",
                file=sys.stderr,
                flush=True,
            )
            previous = ll
    rows = []
    for k, runs in results.items():
        ll = np.array([r["ll"] for r in runs])
        em = np.array([r["em"] for r in runs])
        ratio = np.array([r["ratio"] for r in runs])
        diff = ll - em
        rows.append(
            f"| {name} | {k} | {len(runs)} | {int(np.sum(diff >= -EM_MARGIN))} "
            f"| {diff.min():+.4f} | {sum(r['nested'] for r in runs)} "
            f"| {sum(r['converged'] for r in runs)} "
            f"| {int(np.sum(ratio <= TIME_SHARE))} | {np.median(ratio):.2f} "
            f"| {ll.min():.4f} / {np.median(ll):.4f} / {ll.max():.4f} "
            f"| {em.min():.4f} / {np.median(em):.4f} / {em.max():.4f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "seeds.md"))
    parser.add_argument(
        "--tables",
        nargs="+",
        default=[t for t in TABLES if t not in R_TABLES or shutil.which("Rscript")],
    )
    args = parser.parse_args()
    warm_up()
    lines = [
        "# Issue 15's acceptance over random_states",
        "",
        "`python benchmarks/bench_seeds.py`. SpectralMoE (per-expert noise,",
        "intercepts) against EMMoE(n_init=10) from the same `random_state`, on",
        "the standardised training rows of `bench_real.py`'s tables",
        f"({DEFAULT_SEEDS} random_states; "
        + ", ".join(f"{t} {n}" for t, n in SEEDS.items())
        + "). Columns: the seeds at which ours is",
        f"at least EMMoE(10)'s log-likelihood minus {EM_MARGIN} per row, and the",
        "worst difference; at least linear regression's and its own k - 1 fit's",
        f"(same seed, minus {NESTED_MARGIN}); converged; in at most a third of",
        "EMMoE(10)'s time (side by side; under a second, the median of 5), and",
        "the median time ratio; both methods' log-likelihoods per row",
        "(min / median / max).",
        "",
        (
            "| table | k | seeds | >= EMMoE(10) - 0.005 | worst - EMMoE(10) "
            "| >= LR and k - 1 | converged | time <= 1/3 | median time ratio "
            "| ours: min / median / max | EMMoE(10): min / median / max |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name in args.tables:
        lines += seed_rows(name, SEEDS.get(name, DEFAULT_SEEDS))
    emit("\n".join(lines) + "\n", Path(args.out))


if __name__ == "__main__":
    main()
