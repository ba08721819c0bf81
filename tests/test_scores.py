"""Scores of a Gaussian-mixture input density (issue 19): the chunked kernels
against explicit score tensors, Stein's identity, and the estimator option."""

from __future__ import annotations

import itertools
import subprocess
import sys
import warnings
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from moelearn import HierarchicalMoE, SpectralMoE, make_moe, parameter_error
from moelearn._scores import (
    LOG_ROUNDING,
    MixtureDensity,
    ScoreFunction,
    density_from_estimator,
    fit_mixture_density,
    second_score_moment,
    third_score_moment,
)
from moelearn.estimators import NonGaussianInputWarning


def random_mixture(d: int, C: int, rng) -> MixtureDensity:
    means = 2.0 * rng.standard_normal((C, d))
    covariances = []
    for _ in range(C):
        B = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
        covariances.append(B @ B.T)
    return MixtureDensity.from_covariances(
        rng.uniform(0.5, 1.5, C), means, np.array(covariances)
    )


def pdf(density: MixtureDensity, x: np.ndarray) -> np.ndarray:
    """The mixture's density from scipy (an independent oracle)."""
    total = 0.0
    for w, m, R in zip(density.weights, density.means, density.factors, strict=True):
        covariance = np.linalg.inv(R @ R.T)
        total = total + w * multivariate_normal(m, covariance).pdf(x)
    return total


def explicit_scores(density: MixtureDensity, x: np.ndarray, h: float = 2e-4):
    """``S2 = grad^2 p / p`` and ``S3 = -grad^3 p / p`` at the rows ``x`` by central
    finite differences of scipy's density (test-only oracle, small d; relative
    error about 1e-4 at h = 2e-4, from truncation ~h^2 and rounding ~1e-16 / h^3)."""
    n, d = x.shape
    basis = np.eye(d) * h
    p = pdf(density, x)
    S2 = np.empty((n, d, d))
    S3 = np.empty((n, d, d, d))
    for a, b in itertools.product(range(d), repeat=2):
        e, f = basis[a], basis[b]
        second = (
            pdf(density, x + e + f)
            - pdf(density, x + e - f)
            - pdf(density, x - e + f)
            + pdf(density, x - e - f)
        ) / (4 * h * h)
        S2[:, a, b] = second / p
        for c in range(d):
            g = basis[c]
            third = sum(
                s1 * s2 * s3 * pdf(density, x + s1 * e + s2 * f + s3 * g)
                for s1, s2, s3 in itertools.product((1, -1), repeat=3)
            ) / (8 * h**3)
            S3[:, a, b, c] = -third / p
    return S2, S3


def test_score_moments_match_explicit_tensors(small_chunks):
    """The chunked contractions equal the sums of finite-difference score tensors
    (d = 3, 3 components, 600 rows in 256-row chunks), to 1e-3 of the largest
    entry (the oracle's own error is about 1e-4)."""
    rng = np.random.default_rng(0)
    density = random_mixture(3, 3, rng)
    x = rng.standard_normal((600, 3)) * 1.5
    q = rng.standard_normal((600, 2))
    V = rng.standard_normal((3, 2))
    S2, S3 = explicit_scores(density, x)

    moment2, total = second_score_moment(x, q[:, 0], density)
    np.testing.assert_array_equal(density.second_moment(x, q[:, 0], np.eye(3)), moment2)
    expected2 = np.einsum("i,iab->ab", q[:, 0], S2)
    assert total == pytest.approx(q[:, 0].sum())
    np.testing.assert_allclose(moment2, expected2, atol=1e-3 * np.abs(expected2).max())
    # Times a block of one column (less than half of d): per-component sums of
    # ``v_c (B_c^T v_c)^T`` instead of the Gram matrices, the same to rounding.
    block = V[:, :1]
    np.testing.assert_allclose(
        density.second_moment(x, q[:, 0], block),
        moment2 @ block,
        rtol=0,
        atol=1e-6 * np.abs(moment2 @ block).max(),
    )

    moment3 = third_score_moment(x, q, density, V)
    expected3 = np.einsum("iq,iabc,ak,bl,cm->qklm", q, S3, V, V, V)
    np.testing.assert_allclose(moment3, expected3, atol=1e-3 * np.abs(expected3).max())

    # The T2 pass keeps the rows' responsibilities (single precision) for the T3
    # pass, which then skips the Mahalanobis distances: the same sums to rounding.
    kept = density.row_memory(x)
    np.testing.assert_array_equal(
        second_score_moment(x, q[:, 0], density, keep=kept)[0], moment2
    )
    np.testing.assert_allclose(
        kept.T, density.responsibilities(x, density.row_dtype)[0], rtol=0, atol=1e-7
    )
    np.testing.assert_allclose(
        third_score_moment(x, q, density, V, kept),
        moment3,
        rtol=0,
        atol=1e-6 * np.abs(moment3).max(),
    )


def test_single_precision_second_moment():
    """The ``T2`` pass runs in single precision when rounding moves the rows'
    log-responsibilities by less than LOG_ROUNDING (measured here: the moment
    equals the double-precision one to 1e-5 of its largest entry, d = 20, 5 000
    rows), and in double precision for a component far narrower than the data."""
    rng = np.random.default_rng(1)
    density = random_mixture(20, 3, rng)
    assert density.row_dtype is np.float32
    x = density.means[rng.integers(3, size=5000)] + rng.standard_normal((5000, 20))
    q = rng.standard_normal(5000)
    single = second_score_moment(x, q, density)[0]
    double = replace(density)
    double.__dict__["row_dtype"] = np.float64
    exact = second_score_moment(x, q, double)[0]
    assert not np.array_equal(single, exact)
    np.testing.assert_allclose(single, exact, rtol=0, atol=1e-5 * np.abs(exact).max())
    logs = density.log_components(x[:500], np.float32)[0]
    assert np.abs(logs - density.log_components(x[:500])[0]).max() < LOG_ROUNDING

    narrow = MixtureDensity.from_covariances(
        [0.5, 0.5], np.zeros((2, 20)), [np.eye(20), 1e-8 * np.eye(20)]
    )
    assert narrow.row_dtype is np.float64


def test_score_function_differences_match_the_mixture(small_chunks):
    """A score callable (here the mixture's own ``grad log p``), differenced for
    the higher scores, gives the analytic mixture's moments to 1e-3 of the
    largest entry (STEP = 1e-4 erred by 2e-6 (T2) and 1.6e-4 (T3) here: the
    responsibilities switch sharply, so the score's third derivative is large)."""
    rng = np.random.default_rng(5)
    density = random_mixture(4, 3, rng)
    x = rng.standard_normal((700, 4))
    q = rng.standard_normal((700, 2))
    V = np.linalg.qr(rng.standard_normal((4, 2)))[0]
    score = ScoreFunction(lambda rows: -density.score_s1(rows))
    D = np.linalg.cholesky(np.cov(x.T))  # any invertible directions
    for block in (D, D[:, :1]):  # T2 whole (times D), and times one column
        expected = density.second_moment(x, q[:, 0], block)
        np.testing.assert_allclose(
            score.second_moment(x, q[:, 0], block),
            expected,
            atol=1e-3 * np.abs(expected).max(),
        )
    expected = density.third_moment(x, q, V)
    np.testing.assert_allclose(
        score.third_moment(x, q, V), expected, atol=1e-3 * np.abs(expected).max()
    )


def test_score_function_output_is_checked():
    x = np.ones((5, 3))
    with pytest.raises(ValueError, match="returned shape"):
        ScoreFunction(lambda rows: rows[:, :2])(x)
    with pytest.raises(ValueError, match="non-finite value"):
        ScoreFunction(lambda rows: np.full(rows.shape, np.nan))(x)


def student_score(x: np.ndarray, dof: float = 5.0) -> np.ndarray:
    """``grad log p`` of independent Student t columns scaled to unit variance."""
    scale = np.sqrt(dof / (dof - 2))
    t = x * scale
    return -(dof + 1) * t / (dof + t * t) * scale


def test_known_marginals_as_a_score_callable():
    """Independent Student t(5) columns (d = 5, n = 1e5): their exact score as a
    callable brings the spectral error to the sampling level (below 0.1; the
    Gaussian scores err by 0.3 or more on this seed), also with a column rescaled
    by 1e6 (the callable is in the user's units)."""
    X, y, truth = make_moe(100_000, 5, inputs="student", random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gaussian = SpectralMoE(random_state=0, max_iter=0).fit(X, y)
        own = SpectralMoE(random_state=0, max_iter=0, input_density=student_score).fit(
            X, y
        )
        scale = np.array([1e6, 1, 1, 1, 1.0])
        wide = SpectralMoE(
            random_state=0,
            max_iter=0,
            input_density=lambda rows: student_score(rows / scale) / scale,
        ).fit(X * scale, y)
    assert parameter_error(gaussian.spectral_experts_, truth["experts"]) > 0.3
    assert parameter_error(own.spectral_experts_, truth["experts"]) < 0.1
    assert own.diagnostics_["input_density"]["name"] == "score function"
    np.testing.assert_allclose(
        wide.spectral_experts_ * scale, own.spectral_experts_, atol=1e-6
    )


def test_first_score_is_minus_gradient_of_log_density():
    rng = np.random.default_rng(1)
    density = random_mixture(4, 2, rng)
    x = rng.standard_normal((50, 4))
    h = 1e-5
    numeric = np.column_stack(
        [
            (np.log(pdf(density, x + h * e)) - np.log(pdf(density, x - h * e)))
            / (2 * h)
            for e in np.eye(4)
        ]
    )
    np.testing.assert_allclose(density.score_s1(x), -numeric, rtol=1e-6, atol=1e-8)


def test_affine_map_changes_the_density_by_the_jacobian():
    """``p'(shift + A x) = p(x) / |det A|``."""
    rng = np.random.default_rng(2)
    density = random_mixture(3, 2, rng)
    A = rng.standard_normal((3, 3)) + 2 * np.eye(3)
    shift = rng.standard_normal(3)
    moved = density.affine(shift, A)
    x = rng.standard_normal((20, 3))
    expected = pdf(density, x) / abs(np.linalg.det(A))
    np.testing.assert_allclose(pdf(moved, shift + x @ A.T), expected, rtol=1e-10)


def test_stein_identity_for_a_cubic():
    """``E[(a.x)^3 S3(x)] = 6 a (x) a (x) a`` for x drawn from the mixture
    (n = 4e5; the tolerance is 5 standard errors of the sample mean)."""
    rng = np.random.default_rng(3)
    density = random_mixture(3, 2, rng)
    n = 400_000
    labels = rng.choice(2, size=n, p=density.weights)
    covariances = np.linalg.inv(
        np.einsum("cij,ckj->cik", density.factors, density.factors)
    )
    roots = np.linalg.cholesky(covariances)
    x = density.means[labels] + np.einsum(
        "nij,nj->ni", roots[labels], rng.standard_normal((n, 3))
    )
    a = np.array([0.6, -0.3, 0.5])
    q = (x @ a) ** 3
    V = np.eye(3)
    per_row = np.array(
        [third_score_moment(x[i::20], q[i::20, None], density, V)[0] for i in range(20)]
    ) / (n / 20)
    estimate = per_row.mean(axis=0)
    standard_error = per_row.std(axis=0, ddof=1) / np.sqrt(20)
    truth = 6 * np.einsum("a,b,c->abc", a, a, a)
    assert np.all(np.abs(estimate - truth) <= 5 * standard_error + 1e-3)


def test_fitted_mixture_recovers_a_clustered_density():
    """On 3 well-separated clusters the BIC picks 3 components and the fitted
    means are within 0.05 of the truth (20 000 rows)."""
    rng = np.random.default_rng(4)
    X, _, truth = make_moe(20_000, 4, inputs="mixture", random_state=4)
    density, bics = fit_mixture_density(X, None, rng)
    assert density.n_components == 3
    assert int(np.argmin(bics)) == 2
    true_means = truth["input_mixture"]["means"]
    for m in true_means:
        assert np.min(np.linalg.norm(density.means - m, axis=1)) < 0.05


@pytest.fixture(scope="module")
def clustered():
    return make_moe(100_000, 6, inputs="mixture", random_state=7)


def test_mixture_scores_reduce_the_spectral_error(clustered):
    """3-cluster inputs (d = 6, n = 1e5): with the mixture's scores the spectral
    error is below 0.15 (bench_scores: median 0.06 at d = 10, n = 3e5, against
    0.2-0.5 with Gaussian scores), and below half the Gaussian scores' error on
    this seed; both fits refine to the same MLE."""
    X, y, truth = clustered
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gaussian = SpectralMoE(random_state=0, extra_starts="never").fit(X, y)
        mixture = SpectralMoE(
            random_state=0, extra_starts="never", input_density="mixture"
        ).fit(X, y)
    g = parameter_error(gaussian.spectral_experts_, truth["experts"])
    m = parameter_error(mixture.spectral_experts_, truth["experts"])
    assert m < 0.15
    assert m < 0.5 * g
    assert mixture.diagnostics_["input_density"]["n_components"] == 3
    assert gaussian.diagnostics_["input_density"] == {
        "name": "gaussian",
        "n_components": 1,
    }
    assert parameter_error(mixture, gaussian) < 0.01


def test_given_mixture_in_user_units_survives_rescaling(clustered):
    """A GaussianMixture fitted to the user's columns works at any column scale:
    columns times 1e6 (rescaled inside fit) give the same spectral regressors,
    scaled back."""
    X, y, _ = clustered
    fitted = GaussianMixture(3, random_state=0).fit(X[::5])
    scale = np.array([1e6, 1.0, 1.0, 1e-6, 1.0, 1.0])
    # the same mixture in the scaled units (scikit-learn's own fit there would
    # floor the tiny column's variance at its reg_covar)
    wide = SimpleNamespace(
        weights_=fitted.weights_,
        means_=fitted.means_ * scale,
        covariances_=fitted.covariances_ * np.outer(scale, scale),
        covariance_type="full",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = SpectralMoE(random_state=0, max_iter=0, input_density=fitted).fit(X, y)
        scaled = SpectralMoE(random_state=0, max_iter=0, input_density=wide).fit(
            X * scale, y
        )
    assert plain.diagnostics_["input_density"]["name"] == "given"
    np.testing.assert_allclose(
        scaled.spectral_experts_ * scale, plain.spectral_experts_, atol=0.02
    )


def test_gaussian_inputs_keep_the_gaussian_scores():
    """On Gaussian inputs the BIC picks one component, and the fit is today's."""
    X, y, _ = make_moe(50_000, 5, random_state=1)
    plain = SpectralMoE(random_state=0, max_iter=0).fit(X, y)
    mixed = SpectralMoE(random_state=0, max_iter=0, input_density="mixture").fit(X, y)
    assert mixed.diagnostics_["input_density"]["n_components"] == 1
    # (equal but for rounding: the mixture fit draws a seed from the generator)
    np.testing.assert_allclose(
        mixed.spectral_experts_, plain.spectral_experts_, rtol=1e-9
    )


def test_hierarchical_takes_the_option(clustered):
    X, y, _ = clustered
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HierarchicalMoE(depth=1, random_state=0, input_density=3).fit(X, y)
    assert model.diagnostics_["input_density"]["n_components"] == 3
    assert np.all(np.isfinite(model.experts_))


def test_non_gaussian_warning_suggests_the_mixture():
    X, y, _ = make_moe(20_000, 4, inputs="gamma", random_state=2)
    with pytest.warns(NonGaussianInputWarning, match="input_density='mixture'"):
        SpectralMoE(random_state=0, max_iter=0).fit(X, y)


@pytest.mark.parametrize(
    ("density", "message"),
    [
        ("student", "input_density must be"),
        (0, "input_density must be"),
        (GaussianMixture(2), "GaussianMixture that is not fitted"),
        (
            MixtureDensity.from_covariances([1.0], np.zeros((1, 3)), [np.eye(3)]),
            "got a MixtureDensity$",
        ),
    ],
)
def test_bad_density_is_refused(density, message):
    """Refused with a one-line message (an object's long repr is named by its type)."""
    X, y, _ = make_moe(2_000, 3, random_state=0)
    with pytest.raises(ValueError, match=message) as refused:
        SpectralMoE(input_density=density).fit(X, y)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 400


def test_a_given_mixture_survives_cloning_when_frozen():
    """scikit-learn's clone() (cross-validation, grid search) copies a fitted
    mixture unfitted: the error says so and names the remedy, which works."""
    from sklearn.base import clone
    from sklearn.frozen import FrozenEstimator

    X, y, _ = make_moe(5_000, 3, inputs="mixture", random_state=0)
    fitted = GaussianMixture(3, random_state=0).fit(X)
    with pytest.raises(ValueError, match="FrozenEstimator"):
        clone(SpectralMoE(input_density=fitted, max_iter=0)).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = clone(SpectralMoE(input_density=FrozenEstimator(fitted), max_iter=0))
        model.fit(X, y)
    assert model.diagnostics_["input_density"]["n_components"] == 3


def test_density_of_other_columns_is_refused():
    X, y, _ = make_moe(2_000, 3, random_state=0)
    other = GaussianMixture(2, random_state=0).fit(X[:, :2])
    with pytest.raises(ValueError, match="X has 3 columns"):
        SpectralMoE(input_density=other).fit(X, y)
    diag = GaussianMixture(2, covariance_type="diag", random_state=0).fit(X)
    assert density_from_estimator(diag, 3).n_components == 2


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "moelearn", *args], capture_output=True, text=True
    )


def test_cli_input_density(tmp_path):
    X, y, _ = make_moe(3_000, 3, inputs="mixture", random_state=0)
    data = tmp_path / "d.npz"
    np.savez(data, X=X, y=y)
    done = run_cli(
        "fit",
        str(data),
        "--input-density",
        "mixture",
        "--out",
        str(tmp_path / "m.json"),
        "-q",
    )
    assert done.returncode == 0, done.stderr
    bad = run_cli("fit", str(data), "--input-density", "studnet", "--out", "m.json")
    assert bad.returncode == 2
    assert "expected gaussian, mixture or a number" in bad.stderr
    wrong = run_cli(
        "fit", str(data), "--method", "em", "--input-density", "3", "--out", "m.json"
    )
    assert wrong.returncode == 2
    assert "--input-density applies to --method spectral and hme only" in wrong.stderr
    assert wrong.stderr.count("\n") == 1


def test_mixture_on_discrete_columns_warns():
    """A dummy column (2 values): a fitted mixture's scores there are unreliable,
    and the warning names the column; the default fit's warning then does not
    suggest the mixture."""
    X, y, _ = make_moe(20_000, 4, inputs="gamma", random_state=5)
    X[:, 2] = (X[:, 2] > 0).astype(float)
    with pytest.warns(NonGaussianInputWarning, match=r"few distinct values \(2\)"):
        SpectralMoE(random_state=0, max_iter=0, input_density="mixture").fit(X, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SpectralMoE(random_state=0, max_iter=0).fit(X, y)
    messages = [str(w.message) for w in caught if w.category is NonGaussianInputWarning]
    assert messages and "input_density='mixture'" not in messages[0]


def test_select_n_experts_fits_the_input_mixture_once(clustered, monkeypatch):
    """``select_n_experts(..., input_density='mixture')`` fits the mixture once
    for all k (it used to refit it for each) and still picks the true k = 2."""
    import moelearn._scores as scores
    import moelearn.selection as selection
    from moelearn import select_n_experts

    calls = []
    original = scores.fit_mixture_density

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(selection, "fit_mixture_density", counted)
    monkeypatch.setattr("moelearn._spectral.fit_mixture_density", counted)
    X, y, _ = clustered
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        choice = select_n_experts(
            X[:40_000],
            y[:40_000],
            max_experts=3,
            input_density="mixture",
            random_state=0,
        )
    assert len(calls) == 1
    assert choice.n_experts == 2
    assert choice.models[2].diagnostics_["input_density"]["name"] == "given"


def test_wide_inputs_take_t2_through_a_start_block(monkeypatch):
    """For d > 2 (k + 6) the T2 pass takes only T2 times a start block from the
    row sample's T2 (its Gram matrices would cost O(C d^2) a row): still 3 passes
    over the data (the sample's T2 is not one), and the leading eigenvectors of
    the whitened T2 differ from those of T2 taken whole by less than half their
    own sampling error, ``t2_noise / (|lambda_2| - |lambda_3|)`` (d = 24, n = 4e4:
    angle 0.030 against 0.096)."""
    from moelearn import _spectral
    from moelearn._links import get_link
    from moelearn._passes import report_passes

    X, y, _ = make_moe(40_000, 24, inputs="mixture", random_state=2)
    density = fit_mixture_density(X[::4], 3, np.random.default_rng(0))[0]

    def moments():
        return _spectral.spectral_moments(
            X, y, get_link("linear"), 2, np.random.default_rng(0), input_density=density
        )

    passes: set[int] = set()
    with report_passes(lambda number, done, total: passes.add(number)):
        blocked = moments()
    assert len(passes) == 3
    monkeypatch.setattr(_spectral, "OVERSAMPLING", 100)  # d <= 2 (k + 100): whole
    whole = moments()
    cosines = np.linalg.svd(blocked.t2_vectors.T @ whole.t2_vectors, compute_uv=False)
    values = np.abs(whole.t2_values)
    sampling = whole.t2_noise / (values[1] - values[2])
    assert np.sqrt(1 - cosines.min() ** 2) < 0.5 * sampling
