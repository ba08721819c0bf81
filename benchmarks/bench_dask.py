"""SpectralMoE on a Dask LocalCluster vs a single process, on the same data.

The inputs are generated on the cluster's workers (``dask.array.random``, kept
there with ``persist``); the single-process fit gets the same rows as one NumPy
array. Reported: fit times side by side and the largest relative difference of
the two fits' parameters. Usage:
``python benchmarks/bench_dask.py [--n N] [--d D] [--workers W] [--out FILE]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _report import emit, largest_relative_difference, timed_fit
from moelearn import make_moe, parameter_error


def main() -> None:
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--d", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=250_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    _, _, truth = make_moe(10, args.d, random_state=0)
    A, G = truth["experts"], truth["gating"]
    with (
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        rs = da.random.RandomState(1)
        X = rs.standard_normal((args.n, args.d), chunks=(args.chunk, args.d))
        u = rs.random_sample(args.n, chunks=args.chunk)
        eps = rs.standard_normal(args.n, chunks=args.chunk)
        first = 1.0 / (1.0 + da.exp(-(X @ (G[0] - G[1]))))
        y = da.where(u < first, X @ A[0], X @ A[1]) + truth["noise_std"] * eps
        X, y = X.persist(), y.compute()
        on_cluster, cluster_s = timed_fit(X, y)
        X_local = X.compute()
    in_memory, local_s = timed_fit(X_local, y)
    diff = largest_relative_difference(on_cluster, in_memory)
    lines = [
        "# Dask LocalCluster vs a single process",
        "",
        (
            f"n = {args.n:.0e}, d = {args.d}, 2 linear experts; {args.workers} worker "
            f"processes x 1 thread, blocks of {args.chunk} rows; the single process "
            "uses the machine's BLAS threads and the compiled EM pass."
        ),
        "",
        "| fit | seconds | parameter error |",
        "|---|---:|---:|",
        (
            f"| single process (NumPy) | {local_s:.1f} | "
            f"{parameter_error(in_memory, truth):.4f} |"
        ),
        (
            f"| Dask LocalCluster | {cluster_s:.1f} | "
            f"{parameter_error(on_cluster, truth):.4f} |"
        ),
        "",
        (
            f"Cluster / single process: {cluster_s / local_s:.2f}x the time. Largest "
            f"relative parameter difference between the two fits: {diff:.1e}."
        ),
        "",
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
