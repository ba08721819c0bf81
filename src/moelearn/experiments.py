"""The papers' experiments, re-run from fixed seeds: ``moelearn reproduce NAME``.

Each experiment writes a CSV table (one row per fit) and a PNG figure into the
output folder and returns the table's rows. ``quick=True`` uses fewer seeds and
sample sizes (for CI and a first look); the full settings are the ones whose
figures are committed in ``docs/``.

Success is ``parameter_error < 0.1`` (docs/method.md, section 9). Random-start methods get
one start per trial, as in the papers' success-rate experiments.
"""

from __future__ import annotations

import csv
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from moelearn._em import joint_em_from
from moelearn._model import MoEParams, sample_outputs
from moelearn.baselines import EMMoE, GradientMoE
from moelearn.datasets import make_moe
from moelearn.estimators import SpectralMoE
from moelearn.io import atomic_path
from moelearn.metrics import parameter_error
from moelearn.tensor_loss import TensorLossMoE

Array = np.ndarray
SUCCESS = 0.1
#: A fit "found the MLE" when it is this close (parameter_error) to the optimum
#: joint EM reaches from the true parameters; other optima are ~1 away.
MLE_RADIUS = 0.05
N_FEATURES = 10


def _methods(init_gate_norm: float = 1.0) -> dict[str, Callable[[int], object]]:
    return {
        "spectral+EM": lambda seed: SpectralMoE(random_state=seed),
        "TensorLoss": lambda seed: TensorLossMoE(random_state=seed),
        "EM": lambda seed: EMMoE(
            n_init=1, init_gate_norm=init_gate_norm, random_state=seed
        ),
        "GD (nll)": lambda seed: GradientMoE(
            n_init=1, init_gate_norm=init_gate_norm, random_state=seed
        ),
        "GD (l2)": lambda seed: GradientMoE(
            loss="l2", n_init=1, init_gate_norm=init_gate_norm, random_state=seed
        ),
    }


def _fit(make: Callable[[int], Any], seed: int, X: Array, y: Array, truth: dict):
    model = make(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings are part of the result
        start = time.perf_counter()
        model.fit(X, y)
        elapsed = time.perf_counter() - start
    return parameter_error(model, truth), elapsed, model


def _tensor_loss_model(seed: int, subspace: str) -> TensorLossMoE:
    return TensorLossMoE(random_state=seed, subspace=subspace)


def _truth_params(truth: dict) -> MoEParams:
    return MoEParams(
        truth["experts"], truth["gating"], truth["noise_std"], truth["link"]
    )


def correlated_experts(n: int, d: int, cosine: float, seed: int):
    """Nominal draw, then ``a_2`` replaced so that ``a_1 . a_2 = cosine`` (unit norms)."""
    _, _, truth = make_moe(10 * d, d, random_state=seed)
    rng = np.random.default_rng(
        [seed, 1]
    )  # not make_moe's stream: u must differ from a1
    a1 = truth["experts"][0]
    u = rng.standard_normal(d)
    u -= (u @ a1) * a1
    u /= np.linalg.norm(u)
    truth["experts"][1] = cosine * a1 + np.sqrt(1 - cosine**2) * u
    X = rng.standard_normal((n, d))
    y, _ = sample_outputs(X, _truth_params(truth), rng)
    return X, y, truth


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sample_size(out: Path, quick: bool, log=print) -> list[dict]:
    """Error and time against the number of samples, d=10, k=2, nominal model."""
    sizes = [10_000, 30_000, 100_000] if quick else [10_000, 30_000, 100_000, 300_000]
    seeds = range(3) if quick else range(10)
    methods = {k: v for k, v in _methods().items() if k != "GD (l2)"}
    rows = []
    for n in sizes:
        for seed in seeds:
            X, y, truth = make_moe(n, N_FEATURES, random_state=seed)
            for name, make in methods.items():
                err, t, _ = _fit(make, seed, X, y, truth)
                rows.append(
                    {"n": n, "seed": seed, "method": name, "error": err, "seconds": t}
                )
            log(f"sample-size: n={n} seed={seed} done")
    _write_csv(out / "sample_size.csv", rows)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in methods:
        sel = [r for r in rows if r["method"] == name]
        med_err = [np.median([r["error"] for r in sel if r["n"] == n]) for n in sizes]
        med_t = [np.median([r["seconds"] for r in sel if r["n"] == n]) for n in sizes]
        axes[0].loglog(sizes, med_err, "o-", label=name)
        axes[1].loglog(sizes, med_t, "o-", label=name)
    axes[0].loglog(
        sizes,
        [3 * np.sqrt(N_FEATURES / n) for n in sizes],
        "k--",
        lw=0.8,
        label="3 sqrt(d/n)",
    )
    axes[0].set(
        xlabel="samples n",
        ylabel="median parameter error",
        title=f"Error vs n (d={N_FEATURES}, k=2, {len(seeds)} seeds)",
    )
    axes[1].set(xlabel="samples n", ylabel="median fit time (s)", title="Time vs n")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, out / "sample_size.png")
    plt.close(fig)
    return rows


HARD_CASES = (
    "nominal",
    "sharp gate |w|=10",
    "correlated a1.a2=0.9",
    "large initial gate",
)


def _hard_case_data(case: str, n: int, seed: int):
    if case == "sharp gate |w|=10":
        return make_moe(n, N_FEATURES, gating_norm=(10.0, 10.0), random_state=seed)
    if case == "correlated a1.a2=0.9":
        return correlated_experts(n, N_FEATURES, 0.9, seed)
    return make_moe(n, N_FEATURES, random_state=seed)


def hard_cases(out: Path, quick: bool, log=print) -> list[dict]:
    """Success rate and time of every method from one random start per trial.

    Two measures per fit: ``success`` (error < 0.1 from the truth, docs/method.md) and
    ``found_mle`` (within :data:`MLE_RADIUS` of the optimum EM reaches from the
    true parameters, i.e. the optimiser did not stop at another optimum). They
    differ when the MLE itself is more than 0.1 from the truth (sharp gates:
    a gate of norm 10 is estimated to about 0.07).
    """
    n = 100_000
    trials = range(5) if quick else range(20)
    rows = []
    for case in HARD_CASES:
        methods = _methods(10.0 if case == "large initial gate" else 1.0)
        for seed in trials:
            X, y, truth = _hard_case_data(case, n, 100 + seed)
            start = time.perf_counter()
            mle = joint_em_from(X, y, _truth_params(truth), tol=1e-5, max_iter=300)
            mle_dict = {"experts": mle.experts, "gating": mle.gating}
            rows.append(
                {
                    "case": case,
                    "seed": seed,
                    "method": "reference: EM from the truth",
                    "error": parameter_error(mle_dict, truth),
                    "success": int(parameter_error(mle_dict, truth) < SUCCESS),
                    "found_mle": 1,
                    "seconds": time.perf_counter() - start,
                }
            )
            for name, make in methods.items():
                err, t, model = _fit(make, seed, X, y, truth)
                rows.append(
                    {
                        "case": case,
                        "seed": seed,
                        "method": name,
                        "error": err,
                        "success": int(err < SUCCESS),
                        "found_mle": int(parameter_error(model, mle_dict) < MLE_RADIUS),
                        "seconds": t,
                    }
                )
            log(f"hard-cases: {case} trial {seed} done")
    _write_csv(out / "hard_cases.csv", rows)
    plot_hard_cases(out)
    return rows


def plot_hard_cases(out: Path) -> None:
    """Draw ``hard_cases.png`` from ``hard_cases.csv`` (re-runnable alone)."""
    rows = _read_csv(out / "hard_cases.csv")
    names = list(dict.fromkeys(r["method"] for r in rows))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    n_trials = len({r["seed"] for r in rows})
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    panels = (
        ("success", "success rate (error < 0.1)"),
        ("found_mle", "found the MLE (within 0.05)"),
        ("seconds", "median fit time (s)"),
    )
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        sel = [
            [r for r in rows if r["case"] == c and r["method"] == name] for c in cases
        ]
        x = np.arange(len(cases)) + i * width
        for ax, (key, _) in zip(axes, panels, strict=False):
            stat = np.median if key == "seconds" else np.mean
            values = [stat([float(r[key]) for r in s]) for s in sel]
            ax.bar(x, values, width, label=name)
    for ax, (_, label) in zip(axes, panels, strict=False):
        ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
        ax.set_xticklabels(cases, fontsize=7)
        ax.set_ylabel(label)
    axes[0].set_title(
        f"One random start per trial, {n_trials} trials, n=1e5, d={N_FEATURES}"
    )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(names), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _savefig(fig, out / "hard_cases.png")
    plt.close(fig)


def l4_curves(out: Path, quick: bool, log=print) -> list[dict]:
    """``L4`` training curves from random starts on one data set, with the columns
    searched in the span of ``M2``'s top eigenvectors (the default) and in all of
    ``R^d`` (the landscape of the papers' theorem)."""
    X, y, truth = make_moe(100_000, N_FEATURES, random_state=0)
    starts = range(5) if quick else range(20)
    rows: list = []
    curves: dict[str, list] = {"span": [], "full": []}
    for subspace in curves:
        for seed in starts:
            err, t, model = _fit(
                partial(_tensor_loss_model, subspace=subspace),
                seed,
                X,
                y,
                truth,
            )
            curves[subspace].append(model.loss_curve_)
            rows.append(
                {
                    "subspace": subspace,
                    "start": seed,
                    "error": err,
                    "epochs": len(model.loss_curve_),
                    "final_loss": model.loss_curve_[-1],
                    "seconds": t,
                }
            )
        log(f"l4-curves: {subspace}: {len(starts)} starts done")
    _write_csv(out / "l4_curves.csv", rows)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (subspace, runs) in zip(axes, curves.items(), strict=False):
        errs = [r["error"] for r in rows if r["subspace"] == subspace]
        for curve in runs:
            ax.plot(np.arange(1, len(curve) + 1), curve, alpha=0.7)
        ax.set(
            xlabel="epoch",
            title=f"columns in {'span(M2)' if subspace == 'span' else 'R^d'}: "
            f"error {min(errs):.3f}-{max(errs):.3f}",
        )
    axes[0].set_ylabel("mean minibatch L4")
    fig.suptitle(f"L4 from {len(starts)} random starts (d={N_FEATURES}, n=1e5)")
    fig.tight_layout()
    _savefig(fig, out / "l4_curves.png")
    plt.close(fig)
    return rows


EXPERIMENTS: dict[str, Callable[..., list[dict]]] = {
    "sample-size": sample_size,
    "hard-cases": hard_cases,
    "l4-curves": l4_curves,
}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _markdown(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
        "",
    ]


def summarize(out: Path) -> Path:
    """Write ``summary.md``: the tables behind the figures in ``out``."""
    lines = ["# Reproduced experiments: summary tables", ""]
    for name, section in (
        ("sample_size.csv", _sample_size_table),
        ("hard_cases.csv", _hard_cases_table),
        ("l4_curves.csv", _l4_table),
    ):
        if (out / name).exists():
            lines += section(_read_csv(out / name))
    path = out / "summary.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path


def _sample_size_table(rows: list[dict]) -> list[str]:
    """Error and time against ``n``, per method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sizes = sorted({int(r["n"]) for r in rows})
    table = []
    for n in sizes:
        for m in methods:
            sel = [r for r in rows if int(r["n"]) == n and r["method"] == m]
            err = np.array([float(r["error"]) for r in sel])
            secs = np.array([float(r["seconds"]) for r in sel])
            table.append(
                [
                    n,
                    m,
                    len(sel),
                    f"{np.median(err):.4f}",
                    f"{err.max():.4f}",
                    f"{np.mean(err < SUCCESS):.0%}",
                    f"{np.median(secs):.2f}",
                ]
            )
    lines = ["## Error and time against n (d=10, k=2)", ""]
    return lines + _markdown(
        ["n", "method", "seeds", "median error", "worst", "success", "median s"],
        table,
    )


def _hard_cases_table(rows: list[dict]) -> list[str]:
    """Success from one random start per trial, per case and method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    table = []
    for case in dict.fromkeys(r["case"] for r in rows):
        for m in methods:
            sel = [r for r in rows if r["case"] == case and r["method"] == m]
            err = np.array([float(r["error"]) for r in sel])
            secs = np.array([float(r["seconds"]) for r in sel])
            found = np.array([float(r.get("found_mle") or "nan") for r in sel])
            table.append(
                [
                    case,
                    m,
                    f"{np.mean(err < SUCCESS):.0%} ({np.sum(err < SUCCESS)}/{len(err)})",
                    "-" if np.isnan(found).all() else f"{np.nanmean(found):.0%}",
                    f"{np.median(err):.4f}",
                    f"{np.median(secs):.2f}",
                ]
            )
    lines = [
        "## One random start per trial, n=1e5, d=10",
        "",
        (
            "success: error < 0.1 from the truth; found the MLE: within 0.05 of the "
            "optimum EM reaches from the true parameters."
        ),
        "",
    ]
    return lines + _markdown(
        ["case", "method", "success", "found the MLE", "median error", "median s"],
        table,
    )


def _l4_table(rows: list[dict]) -> list[str]:
    """``L4`` from random starts, per subspace."""
    table = []
    for sub in dict.fromkeys(r["subspace"] for r in rows):
        sel = [r for r in rows if r["subspace"] == sub]
        err = np.array([float(r["error"]) for r in sel])
        loss = np.array([float(r["final_loss"]) for r in sel])
        table.append(
            [
                sub,
                len(sel),
                f"{err.min():.4f}",
                f"{err.max():.4f}",
                f"{loss.min():.2f} .. {loss.max():.2f}",
            ]
        )
    lines = ["## L4 from random starts (one data set, n=1e5, d=10)", ""]
    return lines + _markdown(
        [
            "columns in",
            "starts",
            "best error",
            "worst error",
            "final mean minibatch L4",
        ],
        table,
    )


def reproduce(name: str, out: Path, quick: bool, log=print) -> None:
    """Run one experiment by name, or ``all``."""
    names = list(EXPERIMENTS) if name == "all" else [name]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(
            f"unknown experiment {unknown[0]!r}; choose from: all, {', '.join(EXPERIMENTS)}"
        )
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        start = time.perf_counter()
        EXPERIMENTS[n](out, quick, log=log)
        log(f"{n}: finished in {time.perf_counter() - start:.0f} s -> {out}")
    log(f"tables: {summarize(out)}")
