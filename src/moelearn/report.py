"""A fitted model on its data, as one self-contained HTML page.

``write_report(model, X, y, path)`` (CLI: ``moelearn report MODEL DATA --out
report.html``) writes the parameter table with standard errors, and figures
embedded as PNG (``matplotlib``, the ``plot`` extra): the gate probabilities
along the gate's leading direction, each expert's fit and residuals, the
posterior assignments, the predictive intervals' coverage, and a note on what
the spectral guarantees assume of the inputs. Nothing is fetched from the
network when the page is opened.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from moelearn.io import atomic_path
from moelearn.metrics import interval_coverage

Array = np.ndarray

_COVERAGES = (0.5, 0.8, 0.9, 0.95, 0.99)
_MAX_POINTS = 5_000  # rows drawn in the scatter plots (a seeded subset)

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 68rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { padding: 0.2rem 0.6rem; text-align: right; border-bottom: 1px solid #ddd; }
th { background: #f3f3f3; } td.text { text-align: left; }
figure { margin: 1rem 0; } img { max-width: 100%; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5rem 1rem; }
"""


def write_report(
    model,
    X,
    y,
    path,
    *,
    title: str | None = None,
    kind: str = "observed",
    random_state: int = 0,
) -> Path:
    """Write the report on ``model`` fitted to ``X, y`` to ``path`` (atomically).

    Parameters
    ----------
    model : fitted moelearn estimator
    X : array-like of shape (n, d)
    y : array-like of shape (n,)
    path : str or Path
        The ``.html`` file.
    title : str, optional
    kind : {'observed', 'sandwich', 'bootstrap'}, default='observed'
        Standard errors of the table (see ``model.parameter_covariance``).
    random_state : int, default=0
        Seeds the rows drawn in the scatter plots (and a bootstrap).

    Returns
    -------
    Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    X = np.asarray(X, float)
    y = np.asarray(y, float)
    rng = np.random.default_rng(random_state)
    shown = np.sort(rng.choice(len(y), size=min(len(y), _MAX_POINTS), replace=False))
    names = [str(c) for c in getattr(model, "feature_names_in_", [])] or [
        f"x{i}" for i in range(X.shape[1])
    ]
    sections = [
        ("Parameters", _parameter_section(model, X, y, kind, random_state)),
        ("Gate", _figure(_gate_figure(model, X, shown, names))),
        ("Experts", _figure(_expert_figure(model, X, y, shown))),
        ("Posterior assignments", _figure(_posterior_figure(model, X, y))),
        ("Predictive intervals", _coverage_section(model, X, y)),
        ("Diagnostics", _diagnostics_section(model, X, names)),
    ]
    title = title or f"{type(model).__name__}: {model.n_experts_} experts"
    body = [f"<h1>{html.escape(title)}</h1>", _overview(model, X, y)]
    for heading, content in sections:
        anchor = heading.lower().replace(" ", "-")
        body.append(f'<section id="{anchor}"><h2>{heading}</h2>{content}</section>')
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path


def _overview(model, X, y) -> str:
    ll = model.score(X, y)
    items = [
        (
            f"{X.shape[0]} rows, {X.shape[1]} inputs, {model.n_experts_} "
            f"{html.escape(str(model.link))} experts"
        ),
        f"mean log-likelihood {ll:.4f}",
        (
            f"AIC {model.aic(X, y):.1f}, BIC {model.bic(X, y):.1f}, "
            f"ICL {model.icl(X, y):.1f} ({model.n_parameters()} parameters)"
        ),
    ]
    if hasattr(model, "converged_"):
        items.append(
            f"EM {'converged' if model.converged_ else 'did not converge'} "
            f"({model.n_iter_} iterations)"
        )
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _parameter_section(model, X, y, kind, random_state) -> str:
    try:
        rows = model.summary(X, y, kind=kind, random_state=random_state)
    except np.linalg.LinAlgError as exc:
        return f'<p class="note">No standard errors: {html.escape(str(exc))}</p>'
    columns = ["group", "index", "term", "estimate", "std_error", "z", "p_value"]
    columns += ["ci_low", "ci_high"]
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in columns)
    lines = []
    for _, row in rows.iterrows():
        cells = []
        for c in columns:
            value = row[c]
            if c in ("group", "term"):
                cells.append(f'<td class="text">{html.escape(str(value))}</td>')
            elif c == "index":
                cells.append(f"<td>{'shared' if value < 0 else int(value)}</td>")
            else:
                cells.append(f"<td>{'' if np.isnan(value) else f'{value:.4g}'}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<p>Standard errors: {kind} (95 % intervals; sigma's from log sigma).</p>"
        f'<table id="parameters"><tr>{head}</tr>{"".join(lines)}</table>'
    )


def _figure(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<figure><img alt="figure" src="data:image/png;base64,{data}"></figure>'


def _gate_figure(model, X, shown, names):
    """Gate probabilities against the gate's leading direction (the first free
    row's logit)."""
    import matplotlib.pyplot as plt

    gates = model.predict_proba(X[shown])
    row = model.gating_[0]
    logit = X[shown] @ row + getattr(model, "gating_intercept_", np.zeros(1))[0]
    top = np.argsort(-np.abs(row))[:3]
    label = " ".join(f"{row[i]:+.2f} {names[i]}" for i in top)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j in range(gates.shape[1]):
        ax.scatter(logit, gates[:, j], s=4, alpha=0.5, label=f"expert {j}")
    ax.set_xlabel(f"gate row 0 . x  ({label} ...)")
    ax.set_ylabel("gate probability")
    ax.legend(markerscale=3, fontsize=8)
    return fig


def _expert_figure(model, X, y, shown):
    """Per expert: y against its prediction (rows coloured by the posterior of
    that expert) and its residuals, weighted by the posterior."""
    import matplotlib.pyplot as plt

    from moelearn._model import expert_means

    means = np.asarray(expert_means(model._inputs(X), model._params()))
    resp = model.posterior_proba(X, y)
    k = means.shape[1]
    fig, axes = plt.subplots(2, k, figsize=(3.4 * k, 6), squeeze=False)
    for j in range(k):
        ax = axes[0, j]
        ax.scatter(means[shown, j], y[shown], c=resp[shown, j], s=4, cmap="viridis")
        lo, hi = np.percentile(y, [0.5, 99.5])
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
        ax.set_title(f"expert {j}: share {resp[:, j].mean():.2f}", fontsize=9)
        ax.set_xlabel("expert's prediction")
        ax.set_ylabel("y")
        residuals = y - means[:, j]
        axes[1, j].hist(residuals, bins=60, weights=resp[:, j], color="tab:blue")
        axes[1, j].set_xlabel("residual (weighted by the posterior)")
    fig.tight_layout()
    return fig


def _posterior_figure(model, X, y):
    import matplotlib.pyplot as plt

    resp = model.posterior_proba(X, y)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(resp.max(axis=1), bins=40, color="tab:green")
    ax.set_xlabel("largest posterior probability of a row's expert")
    ax.set_ylabel("rows")
    return fig


def _coverage_section(model, X, y) -> str:
    rows = []
    for coverage in _COVERAGES:
        seen = interval_coverage(model, X, y, coverage)
        rows.append(
            f"<tr><td>{coverage:.0%}</td><td>{seen:.1%}</td>"
            f"<td>{seen - coverage:+.1%}</td></tr>"
        )
    return (
        "<p>Share of the rows inside the central predictive interval (these rows "
        "were fitted on: held-out rows are the fairer test).</p>"
        '<table id="coverage"><tr><th>nominal</th><th>observed</th>'
        f"<th>difference</th></tr>{''.join(rows)}</table>"
    )


def _diagnostics_section(model, X, names) -> str:
    centred = X - X.mean(axis=0)
    sd = np.maximum(centred.std(axis=0), 1e-300)
    skew = np.mean((centred / sd) ** 3, axis=0)
    kurt = np.mean((centred / sd) ** 4, axis=0) - 3.0
    far = [i for i in range(X.shape[1]) if abs(skew[i]) > 0.5 or abs(kurt[i]) > 1.0]
    if far:
        listed = ", ".join(
            f"{html.escape(names[i])} (skewness {skew[i]:.2f}, excess kurtosis "
            f"{kurt[i]:.2f})"
            for i in far[:10]
        )
        text = (
            f'<p class="note">{len(far)} of {X.shape[1]} inputs are far from '
            f"Gaussian: {listed}. The spectral step's guarantees assume Gaussian "
            "inputs; the fit relies on EM from several starts instead.</p>"
        )
    else:
        text = (
            "<p>Every input's skewness and excess kurtosis are near 0 (Gaussian).</p>"
        )
    diagnostics = getattr(model, "diagnostics_", {}) or {}
    starts = diagnostics.get("starts") or []
    if starts:
        text += "<p>Starts tried (mean log-likelihood where each ended):</p><ul>"
        for start in starts:
            text += (
                f"<li>{html.escape(str(start['start']))}: "
                f"{float(start['log_likelihood']):.4f}</li>"
            )
        text += "</ul>"
    return text
