"""Speed and memory of SpectralMoE, as ratios measured side by side in one run.

* Time: spectral step and whole fit at n=1e6, d=50, each divided by the time of one
  pass ``X.T @ (X @ v)`` over the same array. Pass and fit are interleaved and
  repeated; the table gives the median ratio (these machines are noisy). The
  spectral step is timed again with two nearly collinear columns, which keep the
  input pass in double precision.
* Memory: peak of Python/NumPy allocations (tracemalloc) while fitting d=400,
  n=2e4, in a fresh subprocess, against the data size.

Targets (issue 2): whole fit <= 25 passes, spectral step <= 5 passes, peak memory
< 2 x data + 50 MB. Usage: ``python benchmarks/bench_fit.py [--out FILE] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from _report import emit
from moelearn import SpectralMoE, make_moe, parameter_error
from moelearn._links import get_link
from moelearn._moments import row_sample, single_precision_centre
from moelearn._passes import report_passes
from moelearn._spectral import spectral_moments

MEMORY_SCRIPT = r"""
import json, tracemalloc, warnings
import numpy as np
from moelearn import SpectralMoE
warnings.simplefilter("ignore")
n, d = {n}, {d}
rng = np.random.default_rng(0)
tracemalloc.start()
X = rng.standard_normal((n, d))
A = rng.standard_normal((2, d)); A /= np.linalg.norm(A, axis=1, keepdims=True)
w = rng.standard_normal(d); w *= 1.5 / np.linalg.norm(w)
z = rng.random(n) < 1 / (1 + np.exp(-X @ w))
y = np.where(z, X @ A[0], X @ A[1]) + 0.1 * rng.standard_normal(n)
del z
tracemalloc.reset_peak()
base = tracemalloc.get_traced_memory()[0]
SpectralMoE(random_state=0).fit(X, y)
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({{"data": X.nbytes + y.nbytes, "base": base, "peak": peak}}))
"""


def one_pass(X: np.ndarray, v: np.ndarray) -> float:
    start = time.perf_counter()
    X.T @ (X @ v)
    return time.perf_counter() - start


def time_ratios(n: int, d: int, repeats: int) -> dict:
    X, y, truth = make_moe(n, d, random_state=0)
    v = np.ones(d)
    one_pass(X, v)  # warm up
    rows = []
    for r in range(repeats):
        passes = [one_pass(X, v) for _ in range(3)]
        model = SpectralMoE(random_state=r)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, y)
        total = time.perf_counter() - start
        passes += [one_pass(X, v) for _ in range(3)]
        p = statistics.median(passes)
        rows.append(
            {
                "pass_s": p,
                "fit_s": total,
                "spectral_s": model.fit_times_["spectral"],
                "gating_s": model.fit_times_.get("gating", 0.0),
                "refine_s": model.fit_times_.get("refine", 0.0),
                "fit_passes": total / p,
                "spectral_passes": model.fit_times_["spectral"] / p,
                "n_iter": model.n_iter_,
                "error": parameter_error(model, truth),
            }
        )
    summary = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    seen: set[int] = set()
    with report_passes(lambda number, done, total: seen.add(number)):
        spectral_moments(X, y, get_link("linear"), 2, np.random.default_rng(0))
    summary["spectral_reads"] = len(seen)
    sample = X[row_sample(n)]
    summary["single"] = single_precision_centre(sample, n) is not None
    # The same data with two nearly collinear columns (correlation 0.9995): the
    # input pass sums in double precision.
    X[:, 1] = X[:, 0] + 0.03 * X[:, 1]
    assert single_precision_centre(X[row_sample(n)], n) is None
    ratios, seconds = [], []
    for r in range(repeats):
        passes = [one_pass(X, v) for _ in range(3)]
        start = time.perf_counter()
        spectral_moments(X, y, get_link("linear"), 2, np.random.default_rng(r))
        spectral = time.perf_counter() - start
        passes += [one_pass(X, v) for _ in range(3)]
        ratios.append(spectral / statistics.median(passes))
        seconds.append(spectral)
    summary["collinear_spectral_passes"] = statistics.median(ratios)
    summary["collinear_spectral_s"] = statistics.median(seconds)
    return summary


def memory(n: int, d: int) -> dict:
    script = MEMORY_SCRIPT.format(n=n, d=d)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=50)
    args = parser.parse_args()

    t = time_ratios(args.n, args.d, args.repeats)
    m = memory(20_000, 400)
    mb = 1024**2
    limit = 2 * m["data"] + 50 * mb
    lines = [
        "# SpectralMoE: speed and memory",
        "",
        (
            f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
            f"numpy {np.__version__}; median of {args.repeats} repeats, interleaved."
        ),
        "",
        (
            f"## Time, n={args.n:.0e}, d={args.d} (one pass `X.T @ (X @ v)` = "
            f"{t['pass_s'] * 1e3:.1f} ms)"
        ),
        "",
        "| stage | seconds | passes | target |",
        "|---|---:|---:|---:|",
        (
            f"| spectral step (reads the data {t['spectral_reads']} times) | "
            f"{t['spectral_s']:.2f} | "
            f"{t['spectral_passes']:.1f} | <= 5 |"
        ),
        (
            "| spectral step, two collinear columns (double-precision sums) | "
            f"{t['collinear_spectral_s']:.2f} | {t['collinear_spectral_passes']:.1f} | |"
        ),
        f"| gating EM | {t['gating_s']:.2f} | {t['gating_s'] / t['pass_s']:.1f} | |",
        (
            f"| joint-EM refinement | {t['refine_s']:.2f} | "
            f"{t['refine_s'] / t['pass_s']:.1f} | |"
        ),
        (
            f"| **whole fit** ({t['n_iter']:.0f} EM iterations) | {t['fit_s']:.2f} | "
            f"{t['fit_passes']:.1f} | <= 25 |"
        ),
        "",
        (
            f"Parameter error of these fits: {t['error']:.4f}. The input pass summed "
            f"in {'single' if t['single'] else 'double'} precision (its sample's "
            "correlations allow it; `_moments.single_precision_centre`)."
        ),
        "",
        "## Peak memory, n=2e4, d=400 (tracemalloc, fresh process)",
        "",
        "| data | peak during fit (incl. data) | limit 2 x data + 50 MB | within |",
        "|---:|---:|---:|---|",
        (
            f"| {m['data'] / mb:.1f} MB | {m['peak'] / mb:.1f} MB | {limit / mb:.1f} MB | "
            f"{'yes' if m['peak'] < limit else 'NO'} |"
        ),
        "",
    ]
    text = "\n".join(lines)
    emit(text, args.out)


if __name__ == "__main__":
    main()
