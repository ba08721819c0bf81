"""``moelearn demo``: simulate, fit, print truth against estimates, draw a figure."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from moelearn.datasets import make_moe
from moelearn.estimators import SpectralMoE
from moelearn.io import atomic_path, save_model
from moelearn.metrics import best_permutation, parameter_error
from moelearn.tensor_loss import TensorLossMoE


def _row(label: str, vec: np.ndarray, width: int = 5) -> str:
    shown = " ".join(f"{v:+.3f}" for v in vec[:width])
    return f"  {label:22s} {shown}{' ...' if len(vec) > width else ''}"


def run_demo(n: int, d: int, link: str, seed: int, out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"Simulating n={n}, d={d}, 2 {link} experts, noise 0.1, |w| in [1, 2] (seed {seed})"
    )
    X, y, truth = make_moe(n, d, link=link, random_state=seed)
    X_test, y_test = _resample(truth, n // 4, d, seed + 1)

    _compile_kernels(link)
    fits = _fit_methods(X, y, link, seed)
    final = fits["  + joint-EM refinement"]
    method2 = fits.get("Method 2: L4 + L_log (SGD)")
    perm = best_permutation(final.experts_, truth["experts"])
    _print_parameters(final, method2, truth, perm)
    _print_errors(fits, final, truth, X_test, y_test, n, d)

    save_model(final, out_dir / "model.json", target="y")
    plot_path = out_dir / "demo.png"
    try:
        _plot(plot_path, final, truth, X_test, y_test, perm, method2)
        print(f"\nWrote {out_dir / 'model.json'} and the figure {plot_path}")
    except ImportError:
        print(
            "\nWrote the model; the figure needs matplotlib: pip install 'moelearn[plot]'",
            file=sys.stderr,
        )
    return 0


def _fit_methods(X, y, link: str, seed: int) -> dict:
    """Method 1 without and with refinement, and Method 2 for linear experts;
    each fit's wall time in ``elapsed_``."""
    fits = {}
    for name, refine in (
        ("  + gating EM", False),
        ("  + joint-EM refinement", True),
    ):
        start = time.perf_counter()
        fits[name] = SpectralMoE(link=link, refine=refine, random_state=seed).fit(X, y)
        fits[name].elapsed_ = time.perf_counter() - start
    if link == "linear":  # L4 is derived for linear experts
        start = time.perf_counter()
        method2 = TensorLossMoE(random_state=seed).fit(X, y)
        method2.elapsed_ = time.perf_counter() - start
        fits["Method 2: L4 + L_log (SGD)"] = method2
    return fits


def _print_parameters(final, method2, truth: dict, perm) -> None:
    """The first coordinates of each regressor and of the gate, against the truth."""
    print("\nRegressors (first coordinates):")
    for j in range(2):
        print(f" expert {j + 1}")
        print(_row("truth", truth["experts"][j]))
        print(
            _row(
                "spectral",
                final.spectral_experts_[
                    best_permutation(final.spectral_experts_, truth["experts"])[j]
                ],
            )
        )
        print(_row("refined", final.experts_[perm[j]]))
        if method2 is not None:
            m2perm = best_permutation(method2.experts_, truth["experts"])
            print(_row("Method 2 (L4, SGD)", method2.experts_[m2perm[j]]))
    gate = final.gating_[perm] - final.gating_[perm][-1]
    print(" gate w (logit of expert 1 against expert 2)")
    print(_row("truth", truth["gating"][0] - truth["gating"][1]))
    print(_row("refined", gate[0]))


def _print_errors(fits: dict, final, truth: dict, X_test, y_test, n, d) -> None:
    """Each method's and stage's parameter errors, held-out likelihood and time."""
    print("\nErrors (max over experts of the Euclidean row error, best permutation):")
    print(
        f"  {'method / stage':26s} {'regressors':>10s} {'all params':>10s} {'test loglik':>11s} {'time':>7s}"
    )
    spec_err = parameter_error(final.spectral_experts_, truth["experts"])
    print(
        f"  {'Method 1: spectral step':26s} {spec_err:10.4f} {'-':>10s} {'-':>11s} {final.fit_times_['spectral']:6.2f}s"
    )
    for name, model in fits.items():
        print(
            f"  {name:26s} {parameter_error(model, truth, experts_only=True):10.4f} "
            f"{parameter_error(model, truth):10.4f} {model.score(X_test, y_test):11.4f} "
            f"{model.elapsed_:6.2f}s"
        )
    print(f"  noise std: truth 0.1000, estimated {final.noise_std_:.4f}")
    print(f"  expected spectral error ~ 3*sqrt(d/n) = {3 * np.sqrt(d / n):.4f}")


def _compile_kernels(link: str) -> None:
    """Compile the optional numba kernels on tiny fits, so that the timings below
    are the methods' and not the compiler's (cached after the first run; the
    first compile says so on stderr): EM's full-data pass, and the start race's
    compiled runs (on a small table)."""
    from moelearn import _em_fast

    if not _em_fast.AVAILABLE:
        return
    X, y, _ = make_moe(30_000, 3, link=link, random_state=0)  # > curvature_rows
    SpectralMoE(link=link, random_state=0).fit(X, y)
    small = SpectralMoE(extra_starts="always", fit_intercept=True, random_state=0)
    small.fit(X[:200], y[:200])


def _resample(truth: dict, n: int, d: int, seed: int):
    from moelearn._model import MoEParams, sample_outputs

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    params = MoEParams(
        truth["experts"], truth["gating"], truth["noise_std"], truth["link"]
    )
    y, _ = sample_outputs(X, params, rng)
    return X, y


def _plot(path: Path, model, truth: dict, X, y, perm, method2=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    _plot_regressors(axes[0], model, truth, perm, method2)
    _plot_gate(axes[1], model, truth, X, perm)
    _plot_posterior(axes[2], model, truth, X, y, perm)
    fig.suptitle(
        f"moelearn demo: d={X.shape[1]}, parameter error {parameter_error(model, truth):.4f}"
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _plot_regressors(ax, model, truth: dict, perm, method2) -> None:
    """Estimated against true coordinates: spectral, refined, Method 2."""
    A = truth["experts"]
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    lim = 1.1 * max(np.abs(A).max(), np.abs(model.experts_).max())
    sp = model.spectral_experts_[best_permutation(model.spectral_experts_, A)]
    for j in range(A.shape[0]):
        ax.scatter(
            A[j],
            sp[j],
            marker="x",
            color=colours[j],
            alpha=0.6,
            label=f"expert {j + 1}, spectral",
        )
        ax.scatter(
            A[j],
            model.experts_[perm[j]],
            marker="o",
            facecolors="none",
            color=colours[j],
            label=f"expert {j + 1}, refined",
        )
        if method2 is not None:
            m2 = method2.experts_[best_permutation(method2.experts_, A)]
            ax.scatter(
                A[j],
                m2[j],
                marker="^",
                s=14,
                color=colours[j],
                alpha=0.6,
                label=f"expert {j + 1}, Method 2",
            )
    ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
    ax.set(
        xlim=(-lim, lim),
        ylim=(-lim, lim),
        xlabel="true coordinate",
        ylabel="estimated coordinate",
        title="Regressors: estimate vs truth",
    )
    ax.legend(fontsize=8)


def _plot_gate(ax, model, truth: dict, X, perm) -> None:
    """The learned gate against the true one, along the true gate logit."""
    w_true = truth["gating"][0] - truth["gating"][-1]
    t = X @ w_true
    order = np.argsort(t)
    gate_true = 1.0 / (1.0 + np.exp(-t))
    gate_est = model.predict_proba(X)[:, perm[0]]
    ax.scatter(
        t[::10],
        gate_est[::10],
        s=6,
        alpha=0.5,
        color="tab:purple",
        label="learned gate (test points)",
    )
    ax.plot(
        t[order], gate_true[order], color="black", lw=1.2, ls="--", label="true gate"
    )
    ax.set(xlabel="true gate logit  w^T x", ylabel="P(expert 1 | x)", title="Gate")
    ax.legend(fontsize=8)


def _plot_posterior(ax, model, truth: dict, X, y, perm) -> None:
    """The test data coloured by the posterior of expert 1."""
    A = truth["experts"]
    post = model.posterior_proba(X, y)[:, perm[0]]
    idx = np.arange(0, len(y), max(1, len(y) // 4000))
    ax.scatter(X[idx] @ A[0], y[idx], c=post[idx], cmap="coolwarm", s=4, alpha=0.7)
    ax.set(
        xlabel="a_1^T x", ylabel="y", title="Test data coloured by P(expert 1 | x, y)"
    )
