"""Side by side with R's flexmix and mixtools on the same data (issue 4).

Usage: ``python benchmarks/peers/run_peers.py [--quick] [--out FILE]``. Needs
``Rscript`` with the flexmix and mixtools packages (Debian: ``apt-get install
r-base-core r-cran-flexmix r-cran-mixtools``); without them it says so and exits 0.

For each seed the same ``make_moe`` data (d=10, k=2, sigma=0.1, |w| in [1, 2]) go to
every method; times are the fits alone (R's start-up and CSV parsing excluded;
ours include input validation). Success is ``parameter_error < 0.1`` on the
regressors (mixtools' regmixEM has no gate) and on all parameters where the
method has a gate.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from moelearn import SpectralMoE, TensorLossMoE, make_moe, parameter_error

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _report import emit  # noqa: E402

R_SCRIPT = HERE / "fit_peer.R"


def fit_r(method: str, X, y, seed: int, workdir: Path):
    import pandas as pd

    data = workdir / "data.csv"
    out = workdir / f"{method}.csv"
    frame = pd.DataFrame(X, columns=[f"x{i + 1}" for i in range(X.shape[1])])
    frame["y"] = y
    frame.to_csv(data, index=False)
    proc = subprocess.run(
        ["Rscript", str(R_SCRIPT), method, str(data), str(out), str(seed)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"Rscript {method} failed: {proc.stderr.strip()[-300:]}")
    table = pd.read_csv(out)
    d = X.shape[1]
    values = table.iloc[:, :d].to_numpy(dtype=float)
    return (
        values[:2],
        values[2:4],
        float(table["seconds"].iloc[0]),
        str(table["status"].iloc[0]),
    )


def fit_ours(cls, X, y, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model = cls(random_state=seed).fit(X, y)
        return model, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "peers.md"))
    args = parser.parse_args()
    if shutil.which("Rscript") is None:
        print(
            "peers: Rscript not found; install r-base-core r-cran-flexmix "
            "r-cran-mixtools to run this comparison. Skipped."
        )
        return 0
    plan = [
        (10_000, range(3 if args.quick else 10)),
        (100_000, range(2 if args.quick else 10)),
    ]
    # hmeEM loops over samples in R and restarts on every likelihood decrease:
    # a few seeds at the small size show what it does.
    r_methods = {"flexmix": None, "regmixEM": None, "hmeEM": 10_000}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, seeds in plan:
            for seed in seeds:
                X, y, truth = make_moe(n, 10, random_state=seed)
                for name, cls in (
                    ("spectral+EM (ours)", SpectralMoE),
                    ("TensorLoss (ours)", TensorLossMoE),
                ):
                    model, secs = fit_ours(cls, X, y, seed)
                    rows.append(
                        dict(
                            n=n,
                            seed=seed,
                            method=name,
                            status="ok",
                            seconds=secs,
                            reg=parameter_error(model, truth, experts_only=True),
                            full=parameter_error(model, truth),
                        )
                    )
                for method, only_n in r_methods.items():
                    if only_n is not None and (n != only_n or seed >= 3):
                        continue
                    experts, gate, secs, status = fit_r(method, X, y, seed, Path(tmp))
                    ok = status == "ok" and np.all(np.isfinite(experts))
                    reg = parameter_error(experts, truth["experts"]) if ok else np.nan
                    full = (
                        parameter_error({"experts": experts, "gating": gate}, truth)
                        if ok and np.all(np.isfinite(gate)) and method == "flexmix"
                        else np.nan
                    )
                    rows.append(
                        dict(
                            n=n,
                            seed=seed,
                            method=method,
                            status=status,
                            seconds=secs,
                            reg=reg,
                            full=full,
                        )
                    )
                print(f"peers: n={n} seed={seed} done", file=sys.stderr, flush=True)

    table = []
    for n, _ in plan:
        ref = np.median(
            [
                r["seconds"]
                for r in rows
                if r["n"] == n and r["method"] == "spectral+EM (ours)"
            ]
        )
        for method in dict.fromkeys(r["method"] for r in rows if r["n"] == n):
            sel = [r for r in rows if r["n"] == n and r["method"] == method]
            reg = np.array([r["reg"] for r in sel])
            full = np.array([r["full"] for r in sel])
            failures = sorted({r["status"] for r in sel if r["status"] != "ok"})
            secs = float(np.median([r["seconds"] for r in sel]))
            table.append(
                [
                    f"{n:.0e}",
                    method,
                    len(sel),
                    f"{np.mean(reg < 0.1):.0%}",
                    "-" if np.all(np.isnan(reg)) else f"{np.nanmedian(reg):.4f}",
                    "-"
                    if np.all(np.isnan(full))
                    else f"{np.mean(full < 0.1):.0%} / {np.nanmedian(full):.4f}",
                    f"{secs:.2f}",
                    f"{secs / ref:.1f}",
                    "; ".join(failures) or "",
                ]
            )
    header = [
        "n",
        "method",
        "trials",
        "regressors: success",
        "regressors: median error",
        "all params: success / median",
        "median seconds",
        "time / ours",
        "failures",
    ]
    text = "\n".join(
        [
            "# Peers: R flexmix and mixtools against moelearn",
            "",
            __doc__.split("\n\n", 2)[2].strip(),
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in table),
            "",
            "'time / ours' divides by the median time of spectral+EM at the same n.",
            "",
        ]
    )
    emit(text, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
