"""SpectralMoE on a PyTorch tensor vs a NumPy array, on the same data.

On a tensor the pass kernels run where the tensor lives, through the array API;
this machine has no GPU, so the tensor here is on the CPU and the figure shows the
cost of running the kernels through torch instead of NumPy, not a GPU's speed-up.
Reported: fit times side by side (median of interleaved repeats) and the largest
relative difference of the two fits' parameters. Usage:
``python benchmarks/bench_torch.py [--n N] [--d D] [--repeats R] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _report import emit, largest_relative_difference, timed_fit
from moelearn import make_moe


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    X, y, _ = make_moe(args.n, args.d, random_state=0)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    timed_fit(X[:20_000], y[:20_000])  # compile the numba pass before timing
    times = {"numpy": [], "torch": []}
    for _ in range(args.repeats):
        on_array, seconds = timed_fit(X, y)
        times["numpy"].append(seconds)
        on_tensor, seconds = timed_fit(Xt, yt)
        times["torch"].append(seconds)
    difference = largest_relative_difference(on_tensor, on_array)
    numpy_s, torch_s = (statistics.median(times[k]) for k in ("numpy", "torch"))
    emit(
        "\n".join(
            [
                "# SpectralMoE on a PyTorch tensor vs a NumPy array",
                "",
                (
                    f"n={args.n:.0e}, d={args.d}, torch {torch.__version__} on the "
                    f"CPU (no GPU on this machine); median of {args.repeats} "
                    "interleaved repeats."
                ),
                "",
                "| input | fit seconds | ratio |",
                "|---|---:|---:|",
                f"| NumPy array | {numpy_s:.2f} | 1.00 |",
                (
                    f"| torch tensor (kernels in torch) | {torch_s:.2f} | "
                    f"{torch_s / numpy_s:.2f} |"
                ),
                "",
                f"Largest relative parameter difference: {difference:.1e}.",
                "",
            ]
        ),
        args.out,
    )


if __name__ == "__main__":
    main()
