"""Standard errors against R's flexmix ``refit()`` on the same data and model
(issue 18).

Usage: ``python benchmarks/bench_se_flexmix.py [--seeds 3] [--n 5000] [--out FILE]``.
Needs ``Rscript`` with flexmix (Debian: ``apt-get install r-cran-flexmix``).

Each data set: n rows, three standard Gaussian inputs, two linear experts with
intercepts, a gate with a bias, noise 0.1 and 0.2. moelearn:
``SpectralMoE(fit_intercept=True, noise_type='per_expert')`` and
``summary(kind='observed')``; flexmix: ``stepFlexmix`` (best of 3) with the
multinomial-logit concomitant model and ``refit()``, whose covariance is the
inverse Hessian of the same log-likelihood, found numerically by ``optim``.
flexmix's gate has the first component as reference, ours the last: with two
experts the free gate row is the same up to its sign, so its standard errors
compare directly. ``sigma``: both on ``log sigma``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from moelearn import SpectralMoE
from moelearn._model import MoEParams, sample_outputs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import emit  # noqa: E402

R_SCRIPT = HERE / "peers" / "refit_se.R"
TRUTH = MoEParams(
    experts=np.array([[1.0, -0.5, 0.5, 0.3], [-0.5, 1.0, 0.0, -0.3]]),
    gating=np.array([[1.5, 0.5, -1.0, 0.4], [0.0, 0.0, 0.0, 0.0]]),
    noise_std=np.array([0.1, 0.2]),
    link="linear",
)
TERMS = ["x1", "x2", "x3", "intercept"]


def one_data_set(seed: int, n: int, workdir: Path) -> list[dict]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    y, _ = sample_outputs(np.column_stack([X, np.ones(n)]), TRUTH, rng)
    data = workdir / f"se_{seed}.csv"
    frame = pd.DataFrame(X, columns=["x1", "x2", "x3"])
    frame.assign(y=y).to_csv(data, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpectralMoE(
            2, fit_intercept=True, noise_type="per_expert", random_state=seed
        ).fit(frame, y)
    ours = model.summary(frame, y)
    out = workdir / f"se_{seed}_flexmix.csv"
    subprocess.run(
        ["Rscript", str(R_SCRIPT), str(data), str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    theirs = pd.read_csv(out).set_index("name")
    # flexmix's component c is our expert matched by the regressors
    slopes = [
        theirs.loc[
            [f"model.1_Comp.{c}_coef.{t}" for t in ("x1", "x2", "x3")], "estimate"
        ]
        for c in (1, 2)
    ]
    first = int(
        np.argmin([np.linalg.norm(model.experts_[j] - slopes[0]) for j in (0, 1)])
    )
    match = {1: first, 2: 1 - first}
    rows = []

    def add(group: str, term: str, ours_se: float, flexmix_name: str) -> None:
        rows.append(
            dict(
                seed=seed,
                group=group,
                term=term,
                ours=float(ours_se),
                flexmix=float(theirs.loc[flexmix_name, "se"]),
            )
        )

    def name(term: str) -> str:
        return "(Intercept)" if term == "intercept" else term

    for c, j in match.items():
        for term in TERMS:
            row = ours.query(f"group == 'expert' and index == {j} and term == '{term}'")
            add(
                "expert",
                f"expert {j} {term}",
                row["std_error"].iloc[0],
                f"model.1_Comp.{c}_coef.{name(term)}",
            )
        sigma = ours.query(f"group == 'noise' and index == {j}")
        add(
            "noise",
            f"expert {j} log sigma",  # se(log sigma) = se(sigma) / sigma
            sigma["std_error"].iloc[0] / sigma["estimate"].iloc[0],
            f"model.1_Comp.{c}_log(sigma)",
        )
    for term in TERMS:
        gate = ours.query(f"group == 'gate' and term == '{term}'")
        add(
            "gate",
            f"gate {term}",
            gate["std_error"].iloc[0],
            f"concomitant_Comp.2.{name(term)}",
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--out", default=str(HERE / "results" / "se_flexmix.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            rows += one_data_set(seed, args.n, Path(tmp))
    frame = pd.DataFrame(rows)
    frame["ratio"] = frame["ours"] / frame["flexmix"]
    lines = [
        "# Standard errors: moelearn's observed information against flexmix's refit()",
        "",
        (
            f"`python benchmarks/bench_se_flexmix.py` ({args.seeds} data sets of "
            f"n = {args.n}, d = 3, two experts with intercepts, gate with a bias, "
            "sigma 0.1 and 0.2). Ratio of our standard error to flexmix's."
        ),
        "",
        "| data set | parameter | ours | flexmix | ratio |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['term']} | {r['ours']:.5f} | {r['flexmix']:.5f} "
            f"| {r['ours'] / r['flexmix']:.3f} |"
        )
    worst = float(np.max(np.abs(frame["ratio"] - 1.0)))
    lines += ["", f"Largest relative difference: {worst:.3%}."]
    emit("\n".join(lines) + "\n", Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
