"""A streamed fit of a Parquet file larger than the memory it may use.

1. Writes ``n`` rows of ``d`` Gaussian features and a 2-expert linear ``y`` to a
   Parquet file, batch by batch (never whole in memory).
2. Runs ``moelearn fit FILE --stream yes`` in a child process and reads its peak
   resident set (``wait4``), the time and the parameter error.
3. Subsample check: on the first ``check_rows`` rows, the streamed fit's parameters
   against the in-memory fit's (largest relative difference).

Issue 5's target: n=2e7, d=50 (an 8 GB file) with peak RSS < 2 GB, and the same
parameters (<= 1e-8 relative) as the in-memory fit. Usage:
``python benchmarks/bench_stream.py [--n N] [--d D] [--folder DIR] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _report import emit
from moelearn import make_moe, parameter_error
from moelearn._model import MoEParams, sample_outputs
from moelearn.io import load_model

BATCH = 500_000


def write_parquet(path: Path, n: int, d: int, seed: int = 0) -> dict:
    """Write the data in batches; return the true parameters."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, _, truth = make_moe(10, d, random_state=seed)
    params = MoEParams(truth["experts"], truth["gating"], truth["noise_std"], "linear")
    rng = np.random.default_rng(seed + 1)
    names = [f"x{i}" for i in range(d)]
    schema = pa.schema([(name, pa.float64()) for name in [*names, "y"]])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, BATCH):
            X = rng.standard_normal((min(BATCH, n - start), d))
            y, _ = sample_outputs(X, params, rng)
            columns = {name: X[:, i] for i, name in enumerate(names)}
            writer.write_table(pa.table({**columns, "y": y}, schema=schema))
    return truth


def streamed_fit(data: Path, out: Path, stream: str, scratch: Path) -> dict:
    """``moelearn fit`` in a child process: seconds and peak RSS (MB)."""
    command = [
        sys.executable,
        "-m",
        "moelearn",
        "fit",
        str(data),
        "--target",
        "y",
        "--stream",
        stream,
        "--scratch",
        str(scratch),
        "--quiet",
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed")
    return {"seconds": seconds, "rss_mb": usage.ru_maxrss / 1024}


def largest_relative_difference(a, b) -> float:
    pairs = [(a.experts_, b.experts_), (a.gating_, b.gating_)]
    diffs = [np.abs(x - y).max() / np.abs(y).max() for x, y in pairs]
    return float(max([*diffs, abs(a.noise_std_ - b.noise_std_) / b.noise_std_]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000_000)
    parser.add_argument("--d", type=int, default=50)
    parser.add_argument("--check-rows", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        folder = Path(folder)
        check = folder / "check.parquet"
        truth = write_parquet(check, args.check_rows, args.d)
        streamed_fit(check, folder / "s.json", "yes", folder)
        streamed_fit(check, folder / "m.json", "no", folder)
        diff = largest_relative_difference(
            load_model(folder / "s.json"), load_model(folder / "m.json")
        )

        big = folder / "big.parquet"
        start = time.perf_counter()
        write_parquet(big, args.n, args.d)
        write_s = time.perf_counter() - start
        size_gb = big.stat().st_size / 1e9
        run = streamed_fit(big, folder / "big.json", "yes", folder)
        error = parameter_error(load_model(folder / "big.json"), truth)
    data_gb = args.n * (args.d + 1) * 8 / 1e9
    lines = [
        "# Streamed fit of a Parquet file",
        "",
        (
            f"n = {args.n:.0e}, d = {args.d}, 2 linear experts; float64 data "
            f"{data_gb:.1f} GB, Parquet file {size_gb:.1f} GB (written in "
            f"{write_s:.0f} s). `moelearn fit FILE --stream yes` in a child process; "
            "peak RSS from wait4."
        ),
        "",
        "| case | seconds | peak RSS MB | target | parameter error |",
        "|---|---:|---:|---|---:|",
        (
            f"| streamed fit, n = {args.n:.0e} | {run['seconds']:.0f} | "
            f"{run['rss_mb']:.0f} | < 2048 MB: "
            f"{'met' if run['rss_mb'] < 2048 else 'NOT met'} | {error:.4f} |"
        ),
        "",
        (
            f"Subsample check (first {args.check_rows:.0e} rows): streamed vs "
            f"in-memory fit, largest relative parameter difference {diff:.1e} "
            f"(target <= 1e-8: {'met' if diff <= 1e-8 else 'NOT met'})."
        ),
        "",
    ]
    emit("\n".join(lines), args.out)
    print(json.dumps({"diff": diff, **run}), file=sys.stderr)


if __name__ == "__main__":
    main()
