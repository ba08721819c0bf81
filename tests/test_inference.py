"""Standard errors, intervals and the summary table (issue 18)."""

import warnings

import numpy as np
import pandas as pd
import pytest

from moelearn import EMMoE, SpectralMoE
from moelearn._inference import free_values
from moelearn._model import MoEParams, log_likelihood_terms, sample_outputs

TRUTH = MoEParams(
    experts=np.array([[1.0, -0.5, 0.5, 0.3], [-0.5, 1.0, 0.0, -0.3]]),
    gating=np.array([[1.5, 0.5, -1.0, 0.4], [0.0, 0.0, 0.0, 0.0]]),
    noise_std=np.array([0.1, 0.2]),
    link="linear",
)


def draw(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    y, _ = sample_outputs(np.column_stack([X, np.ones(n)]), TRUTH, rng)
    return X, y


def fit(X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SpectralMoE(
            2, fit_intercept=True, noise_type="per_expert", random_state=0
        ).fit(X, y)


def test_observed_information_is_the_negative_hessian():
    """The information from Louis' formula equals minus the finite-difference
    Hessian of the log-likelihood in the free parameters (experts, the free gate
    row, log sigma), to 1e-4 relative to its largest entry."""
    X, y = draw(3_000, 0)
    model = fit(X, y)
    params = model._params()
    Z = np.column_stack([X, np.ones(len(y))])
    from moelearn._em import information

    observed, _ = information(Z, y, params)
    base = free_values(params)
    k, D = params.experts.shape

    def loglik(v):
        experts = v[: k * D].reshape(k, D)
        gating = np.vstack([v[k * D : (2 * k - 1) * D], np.zeros(D)])
        noise = np.exp(v[(2 * k - 1) * D :])
        p = MoEParams(experts, gating, noise, "linear")
        return log_likelihood_terms(Z, y, p)[0].sum()

    h, p = 1e-4, len(base)
    hessian = np.zeros((p, p))
    for i in range(p):
        for j in range(i, p):
            e_i, e_j = np.eye(p)[i] * h, np.eye(p)[j] * h
            hessian[i, j] = hessian[j, i] = (
                loglik(base + e_i + e_j)
                - loglik(base + e_i - e_j)
                - loglik(base - e_i + e_j)
                + loglik(base - e_i - e_j)
            ) / (4 * h * h)
    scale = np.abs(observed).max()
    np.testing.assert_allclose(observed, -hessian, atol=1e-4 * scale)


def test_standard_errors_agree_across_kinds_and_with_theory():
    """n = 20 000: sigma_j's standard error is sigma_j / sqrt(2 n_j) to 10 %; the
    sandwich agrees with the observed information to 10 % (the model is right)
    and 40 bootstrap refits to 35 % (a standard error from 40 replicates is
    itself uncertain by about 1 / sqrt(80) = 11 %: 3 of those)."""
    X, y = draw(20_000, 1)
    model = fit(X, y)
    table = {
        kind: model.summary(X, y, kind=kind, n_bootstrap=40, random_state=0)
        for kind in ("observed", "sandwich", "bootstrap")
    }
    observed = table["observed"]
    counts = model.posterior_proba(X, y).sum(axis=0)
    noise = observed[observed["group"] == "noise"]
    theory = model.noise_std_ / np.sqrt(2 * counts)
    np.testing.assert_allclose(noise["std_error"], theory, rtol=0.10)
    ratio_sandwich = table["sandwich"]["std_error"] / observed["std_error"]
    ratio_bootstrap = table["bootstrap"]["std_error"] / observed["std_error"]
    assert np.all(np.abs(ratio_sandwich - 1) < 0.10)
    assert np.all(np.abs(ratio_bootstrap - 1) < 0.35)


def test_summary_names_rows_by_feature_and_intervals_hold_the_estimate():
    X, y = draw(5_000, 2)
    frame = pd.DataFrame(X, columns=["age", "income", "size"])
    model = fit(frame, y)
    table = model.summary(frame, y, coverage=0.9)
    k, d = 2, 3
    assert len(table) == k * (d + 1) + (d + 1) + k  # experts, one gate row, sigmas
    assert table["term"].tolist()[:4] == ["age", "income", "size", "intercept"]
    assert set(table["group"]) == {"expert", "gate", "noise"}
    assert np.all(table["ci_low"] < table["estimate"])
    assert np.all(table["estimate"] < table["ci_high"])
    np.testing.assert_allclose(
        table[table["group"] == "noise"]["estimate"], model.noise_std_
    )
    np.testing.assert_allclose(
        table[table["group"] == "expert"]["estimate"],
        np.column_stack([model.experts_, model.intercept_]).ravel(),
    )


@pytest.mark.parametrize(
    "x_scale, y_scale", [(1.0, 1e6), (1e-4, 1.0), (1e2, 1e6), (1e3, 1.0)]
)
def test_standard_errors_follow_the_units(x_scale, y_scale):
    """The same data in other units (inputs times ``x_scale``, target times
    ``y_scale``, as a raw wage in dollars is to a wage in thousands): the same
    fit, so an expert coefficient's standard error scales by ``y_scale /
    x_scale`` and a noise level's by ``y_scale``, to 1e-3. The definiteness check
    once compared the information's eigenvalues in mixed units and refused such
    fits as singular."""
    X, y = draw(5_000, 6)
    base = fit(X, y).summary(X, y)
    scaled = fit(X * x_scale, y * y_scale).summary(X * x_scale, y * y_scale)
    slopes = (base["group"] == "expert") & (base["term"] != "intercept")
    np.testing.assert_allclose(
        scaled["std_error"][slopes],
        base["std_error"][slopes] * y_scale / x_scale,
        rtol=1e-3,
    )
    noise = base["group"] == "noise"
    np.testing.assert_allclose(
        scaled["std_error"][noise], base["std_error"][noise] * y_scale, rtol=1e-3
    )


def test_bootstrap_keeps_the_experts_labels():
    """Replicates start from the fit, so none swaps the experts: the bootstrap
    standard errors of the regressors stay at the observed ones' size (a swap
    would add the distance between the experts, about 1.5, to the spread)."""
    X, y = draw(4_000, 3)
    model = fit(X, y)
    boot = model.summary(X, y, kind="bootstrap", n_bootstrap=30, random_state=1)
    assert boot["std_error"].max() < 0.2


def test_flat_likelihood_is_a_clear_error():
    """Two identical experts: the gate is not identified (the likelihood is
    flat along it), the information singular, and the error says why."""
    X, y = draw(2_000, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = EMMoE(2, random_state=0, n_init=1, fit_intercept=True).fit(X, y)
    model.experts_[1] = model.experts_[0]
    model.intercept_[1] = model.intercept_[0]
    with pytest.raises(np.linalg.LinAlgError, match="singular or not positive"):
        model.summary(X, y)


def test_bad_kind_and_coverage_are_refused():
    X, y = draw(2_000, 4)
    model = fit(X, y)
    with pytest.raises(ValueError, match="kind must be one of"):
        model.summary(X, y, kind="hessian")
    with pytest.raises(ValueError, match="coverage must be between 0 and 1"):
        model.summary(X, y, coverage=95)


def test_predictive_intervals_cover_held_out_rows():
    """Fitted on 20 000 rows, the central 90 % intervals hold 88-92 % of 20 000
    held-out rows (binomial s.e. 0.2 %), the 50 % ones 48-52 %; the quantiles
    invert the predictive CDF to 1e-9; CRPS matches a Monte-Carlo estimate."""
    from moelearn._predictive import cdf, crps
    from moelearn.metrics import crps as mean_crps
    from moelearn.metrics import interval_coverage

    X, y = draw(40_000, 6)
    model = fit(X[:20_000], y[:20_000])
    Xt, yt = X[20_000:], y[20_000:]
    assert 0.88 <= interval_coverage(model, Xt, yt, 0.9) <= 0.92
    assert 0.48 <= interval_coverage(model, Xt, yt, 0.5) <= 0.52
    levels = np.array([0.05, 0.3, 0.5, 0.95])
    q = model.predict_quantiles(Xt[:50], levels)
    parts = model._mixture(Xt[:50])
    np.testing.assert_allclose(cdf(q, *parts), np.tile(levels, (50, 1)), atol=1e-9)
    draws, _ = model.sample(np.repeat(Xt[:1], 200_000, axis=0), random_state=1)
    monte_carlo = np.mean(np.abs(draws - yt[0])) - 0.5 * np.mean(
        np.abs(draws[:100_000] - draws[100_000:])
    )
    closed = crps(yt[:1], *model._mixture(Xt[:1]))[0]
    assert abs(closed - monte_carlo) < 0.01 * closed + 0.003
    assert 0 < mean_crps(model, Xt, yt) < np.std(yt)
    np.testing.assert_allclose(
        model.predict_density(Xt[:5], yt[:5]),
        np.exp(model.log_likelihood(Xt[:5], yt[:5])),
    )


def test_information_criteria():
    """p counts the free parameters; BIC - AIC = p (log n - 2); ICL >= BIC,
    with equality only for hard assignments."""
    X, y = draw(5_000, 7)
    model = fit(X, y)
    p = model.n_parameters()
    assert p == 2 * 4 + 4 + 2
    np.testing.assert_allclose(
        model.bic(X, y) - model.aic(X, y), p * (np.log(5_000) - 2)
    )
    assert model.icl(X, y) > model.bic(X, y)
    with pytest.raises(ValueError, match="quantile levels must lie in"):
        model.predict_quantiles(X, 1.5)
    with pytest.raises(ValueError, match="coverage must be between 0 and 1"):
        model.predict_interval(X, 90)


def test_report_shows_every_section_in_a_browser(tmp_path):
    """`moelearn report`: the page, opened in headless Chromium, shows every
    section's heading, the parameter table with one row per parameter, and
    every figure decoded (natural width > 0)."""
    import re
    import shutil
    import subprocess

    pytest.importorskip("matplotlib")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    from moelearn.cli import main

    X, y = draw(3_000, 8)
    data = tmp_path / "d.csv"
    np.savetxt(
        data, np.column_stack([X, y]), delimiter=",", header="a,b,c,y", comments=""
    )
    assert (
        main(
            [
                "fit",
                str(data),
                "--fit-intercept",
                "--out",
                str(tmp_path / "m.json"),
                "-q",
            ]
        )
        == 0
    )
    page = tmp_path / "report.html"
    assert (
        main(["report", str(tmp_path / "m.json"), str(data), "--out", str(page)]) == 0
    )
    probe = tmp_path / "probe.html"  # the report, plus a script that records
    probe.write_text(  # what the browser decoded
        page.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load', () => document.body.setAttribute("
            "'data-widths', [...document.images].map(i => i.naturalWidth).join(',')));"
            "</script></body>",
        )
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
    ]
    dom = subprocess.run(
        [browser, *flags, probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    for heading in (
        "Parameters",
        "Gate",
        "Experts",
        "Posterior assignments",
        "Predictive intervals",
        "Diagnostics",
    ):
        assert f"<h2>{heading}</h2>" in dom
    widths = re.search(r'data-widths="([0-9,]*)"', dom).group(1).split(",")
    assert len(widths) == 3 and all(int(w) > 100 for w in widths)
    table = dom[dom.index('id="parameters"') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + 2 * 4 + 4 + 1  # header, experts, gate, sigma


def test_information_too_large_for_memory_is_refused_with_advice():
    """Standard errors hold about six p x p matrices: with p = 5000 (1.1 GiB)
    and 1 GiB free, the request is refused before any pass, saying how much
    it needs and what to do; p = 1201 (d = 400, 66 MiB) passes."""
    from moelearn._inference import check_information_size

    with pytest.raises(MemoryError, match=r"about 1\.1 GiB.*fit fewer columns"):
        check_information_size(5_000, free_bytes=2**30)
    check_information_size(1_201, free_bytes=2**30)
