"""SpectralMoE: recovery at moderate n (tolerances from the expected error), inputs,
errors and the fitted-model API. Large-n acceptance sweeps are in test_statistical.py."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from moelearn import (
    EMMoE,
    HierarchicalMoE,
    NonGaussianInputWarning,
    SpectralMoE,
    SpectralReliabilityWarning,
    make_moe,
    parameter_error,
)
from moelearn._model import MoEParams, sample_outputs
from moelearn.io import load_model, save_model


@pytest.fixture(scope="module")
def fitted():
    X, y, truth = make_moe(100_000, 6, random_state=3)
    return SpectralMoE(random_state=0).fit(X, y), X, y, truth


# Expected (median) errors (docs/method.md, section 3): spectral ~ 3 sqrt(d/n); MLE regressors
# ~ 1.6 sigma sqrt(d/n); MLE gate ~ 2 sqrt(d/n). A single seed is allowed 3x its
# expected error (over 20 seeds at d=10 the worst spectral error was 1.85x).
SLACK = 3.0


def test_recovers_linear_experts(fitted):
    model, X, _, truth = fitted
    n, d = X.shape
    rate = np.sqrt(d / n)
    assert parameter_error(model.spectral_experts_, truth["experts"]) < SLACK * 3 * rate
    assert parameter_error(model, truth, experts_only=True) < SLACK * 1.6 * 0.1 * rate
    assert parameter_error(model, truth) < SLACK * 2 * rate
    assert abs(model.noise_std_ - 0.1) < 0.005
    assert model.converged_


def test_fitted_api_shapes_and_meaning(fitted):
    model, X, y, _ = fitted
    Xs, ys = X[:500], y[:500]
    assert model.predict(Xs).shape == (500,)
    proba = model.predict_proba(Xs)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    post = model.posterior_proba(Xs, ys)
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    assert model.log_likelihood(Xs, ys).shape == (500,)
    assert model.score(X, y) == pytest.approx(model.log_likelihood(X, y).mean())
    assert np.all(model.gating_[-1] == 0)
    # E[y|x] under the fitted model agrees with the average of its samples.
    draws = np.mean([model.sample(Xs, random_state=s)[0] for s in range(400)], axis=0)
    assert np.abs(draws - model.predict(Xs)).max() < 6 * 1.2 / np.sqrt(400)


def test_score_prefers_the_truth_to_a_wrong_model(fitted):
    model, X, y, _ = fitted
    wrong = SpectralMoE(max_iter=0, random_state=0).fit(X, y)
    assert model.score(X, y) > wrong.score(X, y)


def test_correlated_inputs_are_whitened_and_mapped_back(global_random_seed):
    """x = R z with R far from I: the regressors come back in the user's coordinates.
    The truth is drawn in whitened units (unit, random directions) and mapped to x."""
    rng = np.random.default_rng(global_random_seed)
    n, d = 100_000, 5
    R = (rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)) * [
        1.0,
        10.0,
        0.1,
        3.0,
        1.0,
    ]
    X = rng.standard_normal((n, d)) @ R.T
    A_white = rng.standard_normal((2, d))
    A_white /= np.linalg.norm(A_white, axis=1, keepdims=True)
    to_raw = np.linalg.inv(R)  # a . x = (a R) . z, so a = a_white R^{-1}
    A = A_white @ to_raw
    G = np.zeros((2, d))
    G[0] = (1.5 * A_white[0] + 0.5 * A_white[1]) @ to_raw
    y, _ = sample_outputs(X, MoEParams(A, G, 0.1, "linear"), rng)
    model = SpectralMoE(random_state=0).fit(X, y)
    rate = np.sqrt(d / n)
    assert parameter_error(model.spectral_experts_ @ R, A_white) < SLACK * 3 * rate
    assert parameter_error(model.experts_ @ R, A_white) < SLACK * 1.6 * 0.1 * rate


def test_sigmoid_experts(global_random_seed):
    """Sigmoid constants are ~10x smaller; refined error ~ sqrt(d/n) scale still."""
    n, d = 200_000, 4
    X, y, truth = make_moe(n, d, link="sigmoid", random_state=global_random_seed)
    model = SpectralMoE(link="sigmoid", random_state=0).fit(X, y)
    assert parameter_error(model, truth) < 0.15


def test_noise_std_known_is_held_fixed():
    X, y, _ = make_moe(20_000, 4, random_state=1)
    model = SpectralMoE(noise_std=0.1, random_state=0).fit(X, y)
    assert model.noise_std_ == 0.1


def test_same_seed_same_result():
    X, y, _ = make_moe(20_000, 4, random_state=1)
    a = SpectralMoE(random_state=5).fit(X, y)
    b = SpectralMoE(random_state=5).fit(X, y)
    np.testing.assert_array_equal(a.experts_, b.experts_)
    np.testing.assert_array_equal(a.gating_, b.gating_)


def test_max_iter_zero_is_spectral_only():
    X, y, _ = make_moe(20_000, 4, random_state=1)
    model = SpectralMoE(max_iter=0, random_state=0).fit(X, y)
    np.testing.assert_array_equal(model.experts_, model.spectral_experts_)
    assert model.n_iter_ == 0 and np.all(model.gating_ == 0)


def test_convergence_warning_names_the_fix():
    X, y, _ = make_moe(20_000, 4, random_state=1)
    with pytest.warns(ConvergenceWarning, match="Increase max_iter"):
        model = SpectralMoE(max_iter=1, random_state=0).fit(X, y)
    assert not model.converged_


@pytest.mark.parametrize(
    "make_x, reason",
    [
        (lambda rng, n: rng.uniform(-2, 2, (n, 4)), "kurtosis"),
        (lambda rng, n: rng.exponential(size=(n, 4)), "skewness"),
        (lambda rng, n: rng.standard_normal((n, 4)) + 3.0, "mean"),
    ],
)
def test_warns_once_about_non_gaussian_inputs(make_x, reason):
    rng = np.random.default_rng(0)
    X = make_x(rng, 20_000)
    y = X @ np.array([1.0, -1.0, 0.5, 0.0]) + 0.1 * rng.standard_normal(20_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SpectralMoE(random_state=0, max_iter=5).fit(X, y)
    ours = [w for w in caught if issubclass(w.category, NonGaussianInputWarning)]
    assert len(ours) == 1
    assert reason in str(ours[0].message)


# Sigmoid experts need ~10x the samples of linear ones (their moments' constants
# are smaller: docs/method.md, section 3).
@pytest.mark.parametrize("link, n", [("linear", 100_000), ("sigmoid", 400_000)])
def test_gaussian_inputs_do_not_warn(link, n):
    X, y, _ = make_moe(n, 5, link=link, random_state=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SpectralMoE(link=link, random_state=0).fit(X, y)


@pytest.mark.parametrize(
    "d, make_y, match",
    [
        (
            5,
            lambda X, rng: rng.standard_normal(len(X)),
            "sampling noise",
        ),  # no structure
        # y^2 falls as x0^2, x1^2 grow: T2 is negative definite, as no linear mixture's is
        (2, lambda X, rng: 1 / (1 + X[:, 0] ** 2) + 1 / (1 + X[:, 1] ** 2), "sign"),
    ],
)
def test_unreliable_spectral_step_is_reported(d, make_y, match):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20_000, d))
    with pytest.warns(SpectralReliabilityWarning, match=match):
        SpectralMoE(random_state=0, max_iter=3).fit(X, make_y(X, rng))


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.full((100, 3), np.nan), np.zeros(100), "NaN"),
        (np.ones((100, 3)) * [[1, 2, np.inf]], np.zeros(100), "infinite"),
        (np.zeros((100, 3)), np.full(100, np.nan), "y contains"),
        (np.zeros(100), np.zeros(100), "2D array|2-D"),
        (
            np.random.default_rng(0).standard_normal((100, 3)),
            np.zeros(90),
            "inconsistent|different",
        ),
        (
            np.random.default_rng(0).standard_normal((10, 3)),
            np.arange(10.0),
            "too small",
        ),
        (np.random.default_rng(0).standard_normal((500, 3)), np.ones(500), "constant"),
    ],
)
def test_bad_input_is_a_clear_error(X, y, match):
    with pytest.raises(ValueError, match=match):
        SpectralMoE().fit(X, y)


@pytest.mark.parametrize("estimator", ["spectral", "intercept", "hme"])
@pytest.mark.parametrize(
    "n, row, value",
    [(500, 0, np.nan), (2_000, 1_999, -np.inf), (300_000, 123_457, np.inf)],
)
def test_a_non_finite_value_is_named_by_the_first_pass(estimator, n, row, value):
    """SpectralMoE leaves the finite check to the spectral step's first pass
    (which reads every value anyway): one ValueError naming the row and column,
    no warnings first, whether the value is in the row sample or not (at 300 000
    rows the pass sums in single precision)."""
    import warnings

    make = {
        "spectral": lambda: SpectralMoE(2, random_state=0),
        "intercept": lambda: SpectralMoE(2, fit_intercept=True, random_state=0),
        "hme": lambda: HierarchicalMoE(1, random_state=0),
    }[estimator]
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((n, 3)), rng.standard_normal(n)
    X[row, 2] = value
    kind = "NaN" if np.isnan(value) else "infinite value"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=f"first: {kind} at row {row}, column 2"):
            make().fit(X, y)


@pytest.mark.parametrize(
    "params, name",
    [
        ({"link": "softplus"}, "link"),
        ({"n_experts": 1}, "n_experts"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"max_iter": -1}, "max_iter"),
        ({"tol": "small"}, "tol"),
        ({"random_state": "seed"}, "random_state"),
    ],
)
def test_bad_parameters_are_named(params, name):
    X, y, _ = make_moe(2_000, 3, random_state=0)
    with pytest.raises(ValueError, match=name):
        SpectralMoE(**params).fit(X, y)


def test_collinear_columns_are_a_clear_error():
    X, y, _ = make_moe(2_000, 3, random_state=0)
    X = np.column_stack([X, X[:, 0]])
    with pytest.raises(ValueError, match="collinear"):
        SpectralMoE().fit(X, y)


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_dataframe_feature_names_are_kept(library):
    lib = pytest.importorskip(library)
    X, y, _ = make_moe(5_000, 3, random_state=0)
    frame = lib.DataFrame({name: X[:, j] for j, name in enumerate("abc")})
    model = SpectralMoE(random_state=0).fit(frame, lib.Series(y))
    assert list(model.feature_names_in_) == ["a", "b", "c"]
    np.testing.assert_allclose(model.predict(frame), model.predict(X))
    np.testing.assert_allclose(
        model.experts_, SpectralMoE(random_state=0).fit(X, y).experts_
    )
    renamed = lib.DataFrame({name: X[:, j] for j, name in enumerate("abd")})
    with pytest.raises(ValueError, match="feature names"):
        model.predict(renamed)


def test_off_centre_inputs_warn_and_refinement_removes_the_bias():
    """x ~ N(mu, I), no-intercept model in x: centring gives the spectral step gate and
    expert offsets (a bias that grows with |mu|); refinement fits the stated model."""
    n, d = 100_000, 5
    X, _, truth = make_moe(n, d, random_state=1)
    X = X + np.ones(d) / np.sqrt(d)  # |mu| = 1 standard deviation
    y, _ = sample_outputs(
        X,
        MoEParams(truth["experts"], truth["gating"], 0.1, "linear"),
        np.random.default_rng(0),
    )
    with pytest.warns(NonGaussianInputWarning, match="mean"):
        model = SpectralMoE(random_state=0).fit(X, y)
    assert parameter_error(model, truth) < SLACK * 2 * np.sqrt(d / n)


def test_docstring_examples_run():
    import doctest

    import moelearn.estimators

    result = doctest.testmod(moelearn.estimators)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("seed", range(4))
def test_sigmoid_spectral_norms_are_stable(seed):
    """Sigmoid experts: the tensor eigenvalue barely identifies |a| near 1 (it moved
    the norm to ~2.2 on some seeds before); the norm now comes from T2 and the
    weights' sum-to-one constraint. Directions carry the spectral error, ~0.01 here;
    the bound is 3x that plus the norm's own slack."""
    n, d = 1_000_000, 6
    X, y, truth = make_moe(n, d, link="sigmoid", random_state=seed)
    for noise in (0.09, 0.1, 0.11):  # insensitive to the noise level used
        model = SpectralMoE(link="sigmoid", max_iter=0, noise_std=noise, random_state=0)
        model.fit(X, y)
        norms = np.linalg.norm(model.spectral_experts_, axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=0.05)
        assert parameter_error(model.spectral_experts_, truth["experts"]) < 0.06


def test_callable_link_fits_and_refuses_to_be_saved(tmp_path):
    """softplus, a link moelearn does not name: no symmetry, so ReLU's transforms;
    refinement reaches the truth within 3x the sigmoid test's bound. JSON cannot
    hold code: save_model says so."""
    from moelearn.io import save_model

    def softplus(u):
        return np.logaddexp(0.0, u)

    X, y, truth = make_moe(200_000, 4, link=softplus, random_state=0)
    model = SpectralMoE(link=softplus, random_state=0).fit(X, y)
    assert parameter_error(model, truth) < 0.05
    with pytest.raises(ValueError, match=r"callable link .*softplus.* cannot be saved"):
        save_model(model, tmp_path / "m.json")


def _data_with_offsets(n, d, seed, expert_offsets, gate_offset):
    """Data from a 2-expert model with intercepts b and gate bias c, and the truth
    with the offsets as a last column (slopes on ``[x, 1]``)."""
    X, _, truth = make_moe(n, d, random_state=seed)
    params = MoEParams(
        np.column_stack([truth["experts"], expert_offsets]),
        np.column_stack([truth["gating"], [gate_offset, 0.0]]),
        0.1,
        "linear",
    )
    y, _ = sample_outputs(
        np.column_stack([X, np.ones(n)]), params, np.random.default_rng(seed)
    )
    return X, y, {"experts": params.experts, "gating": params.gating}


def test_fit_intercept_recovers_offsets(global_random_seed):
    """Gate bias c = 1 (mixing 73/27) and intercepts (0.5, -0.3): refinement reaches
    the MLE of the model on [x, 1] (d + 1 parameters per row): gate error ~
    2 sqrt((d+1)/n), allowed 3x (measured 0.022 = 3.0 sqrt((d+1)/n) at d=10)."""
    n, d = 100_000, 5
    X, y, truth = _data_with_offsets(n, d, global_random_seed, [0.5, -0.3], 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectralReliabilityWarning)  # biased start
        model = SpectralMoE(fit_intercept=True, random_state=0).fit(X, y)
    assert model.intercept_.shape == (2,) and model.gating_intercept_[-1] == 0.0
    est = {
        "experts": np.column_stack([model.experts_, model.intercept_]),
        "gating": np.column_stack([model.gating_, model.gating_intercept_]),
    }
    assert parameter_error(est, truth) < SLACK * 2 * np.sqrt((d + 1) / n)
    # predictions use the intercepts
    expected = model.predict_proba(X[:5])[:, 0]
    logits = X[:5] @ (model.gating_[0] - model.gating_[1]) + model.gating_intercept_[0]
    np.testing.assert_allclose(expected, 1 / (1 + np.exp(-logits)), rtol=1e-10)


def test_offsets_the_model_lacks_are_reported_and_intercepts_saved(tmp_path):
    X, y, _ = _data_with_offsets(50_000, 5, 0, [0.5, -0.3], 1.0)
    with pytest.warns(SpectralReliabilityWarning, match="use fit_intercept=True"):
        SpectralMoE(random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectralReliabilityWarning)
        model = SpectralMoE(fit_intercept=True, random_state=0).fit(X, y)
        refit = SpectralMoE(fit_intercept=True, random_state=0).fit(X, y)
        refit.set_params(fit_intercept=False).fit(X, y)
    assert not hasattr(refit, "intercept_")  # no stale intercepts from the first fit
    save_model(model, tmp_path / "m.json")
    loaded = load_model(tmp_path / "m.json")
    np.testing.assert_allclose(loaded.intercept_, model.intercept_)
    np.testing.assert_allclose(loaded.predict(X[:20]), model.predict(X[:20]))


@pytest.mark.parametrize("refine", [False, True])
def test_no_offset_warning_on_data_without_offsets(refine):
    """The demo's data (no offsets): without refinement the spectral regressors'
    own error once showed as expert intercepts (z = 15); only the gate, which is at
    its MLE given them, may be tested then."""
    X, y, _ = make_moe(200_000, 10, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SpectralMoE(refine=refine, random_state=0).fit(X, y)
    assert not [w for w in caught if "fit_intercept" in str(w.message)]


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: SpectralMoE(tol=1e-10, max_iter=500, random_state=0),
        lambda: EMMoE(n_init=2, tol=1e-10, max_iter=500, random_state=0),
    ],
    ids=["spectral", "em"],
)
def test_integer_sample_weights_act_as_copies_of_rows(make_model):
    """Weights 0..3 give the fit of the data with each row repeated that often
    (both fits run to a tight tolerance: only rounding differs)."""
    X, y, _ = make_moe(6_000, 4, random_state=3)
    w = np.random.default_rng(0).integers(0, 4, size=len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weighted = make_model().fit(X, y, sample_weight=w)
        repeated = make_model().fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    # the same fit, up to the order of the experts
    other = {"experts": repeated.experts_, "gating": repeated.gating_}
    assert parameter_error(weighted, other) < 1e-6
    assert weighted.noise_std_ == pytest.approx(repeated.noise_std_, rel=1e-6)
    assert weighted.score(X, y, sample_weight=w) == pytest.approx(
        repeated.score(np.repeat(X, w, axis=0), np.repeat(y, w)), rel=1e-8
    )


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (-np.ones(500), "negative values"),
        (np.zeros(500), "zero for every row"),
        (np.ones(499), "different numbers of rows"),
        (np.full(500, np.nan), "non-finite"),
    ],
)
def test_bad_sample_weight_is_a_clear_error(weights, match):
    X, y, _ = make_moe(500, 3, random_state=0)
    with pytest.raises(ValueError, match=match):
        SpectralMoE().fit(X, y, sample_weight=weights)


@pytest.mark.parametrize(
    "x_scale, y_scale",
    [(1e-150, 1.0), (1e-20, 1e20), (1e20, 1e-20), (1e150, 1e150), (1.0, 1e-120)],
)
@pytest.mark.parametrize("estimator", ["spectral", "em"])
def test_any_finite_scale_gives_the_same_fit(estimator, x_scale, y_scale):
    """Inputs and target multiplied by any scale from 1e-150 to 1e150: the same
    predictions (relative 1e-8) and log-likelihood (shifted by log y_scale),
    and no RuntimeWarning (issue 16: these used to fail with 'Eigenvalues did
    not converge', 'cost matrix is infeasible', or fit differently from 1e7)."""
    import warnings

    X, y, _ = make_moe(4_000, 3, random_state=0)
    make = {
        "spectral": lambda: SpectralMoE(2, random_state=0, fit_intercept=True),
        "em": lambda: EMMoE(2, random_state=0, n_init=2),
    }[estimator]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make().fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        scaled = make().fit(X * x_scale, y * y_scale)
        predicted = scaled.predict(X * x_scale) / y_scale
        score = scaled.score(X * x_scale, y * y_scale) + np.log(y_scale)
    np.testing.assert_allclose(predicted, base.predict(X), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(score, base.score(X, y), rtol=1e-9)


def test_scales_beyond_double_precision_are_refused_by_name():
    import pandas as pd

    X, y, _ = make_moe(2_000, 3, random_state=0)
    frame = pd.DataFrame(X, columns=["age", "income", "size"])
    frame["income"] *= 1e200
    with pytest.raises(ValueError, match="X column 'income' has values of size"):
        SpectralMoE(2).fit(frame, y)
    with pytest.raises(ValueError, match=r"y has values of size 1\.0e-200"):
        SpectralMoE(2).fit(X, y * 1e-200)


def test_warnings_point_at_the_line_that_called_fit():
    """A fit's warnings are attributed to the caller's line, not to a line in
    moelearn (however deep they are raised, and through fit's decorators)."""
    from moelearn import EMMoE
    from moelearn.exceptions import ConvergenceWarning, SpectralReliabilityWarning

    X, y, _ = make_moe(2000, 3, random_state=0)
    with pytest.warns(SpectralReliabilityWarning) as spectral:
        SpectralMoE(max_iter=1, random_state=0).fit(X, y)
    with pytest.warns(ConvergenceWarning) as em:
        EMMoE(max_iter=1, n_init=1, random_state=0).fit(X, y)
    ours = [
        w
        for w in [*spectral, *em]
        if issubclass(w.category, (ConvergenceWarning, SpectralReliabilityWarning))
    ]
    assert len(ours) >= 2
    assert {w.filename for w in ours} == {__file__}
