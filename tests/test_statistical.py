"""Acceptance-scale statistical checks (marked slow; `make test-slow`).

Fixed seeds; thresholds are the issue's acceptance figures, each above the
expected (median) error (docs/method.md, section 3): full error after gating EM 0.035 at d=10, n=1e5 (limit 0.06);
0.019 at d=50, n=1e6 (limit 0.03). The spectral step alone is held to 3x its
expected error 3 sqrt(d/n) here; the full 20-seed sweep against the issue's 0.05 is
`make accuracy`.
"""

import warnings

import numpy as np
import pytest

from moelearn import GradientMoE, SpectralMoE, TensorLossMoE, make_moe, parameter_error
from moelearn._em import joint_em_from
from moelearn._model import MoEParams

pytestmark = pytest.mark.slow


def em_from_truth(X, y, truth) -> dict:
    start = MoEParams(
        truth["experts"], truth["gating"], truth["noise_std"], truth["link"]
    )
    params = joint_em_from(X, y, start)
    return {"experts": params.experts, "gating": params.gating}


@pytest.mark.parametrize("seed", range(5))
def test_d10_n1e5_linear(seed):
    n, d = 100_000, 10
    X, y, truth = make_moe(n, d, random_state=seed)
    gated = SpectralMoE(refine=False, random_state=seed).fit(X, y)
    refined = SpectralMoE(random_state=seed).fit(X, y)
    assert parameter_error(gated.spectral_experts_, truth["experts"]) < 3 * 3 * np.sqrt(
        d / n
    )
    assert parameter_error(gated, truth) <= 0.06
    mle = em_from_truth(X, y, truth)
    assert abs(parameter_error(refined, truth) - parameter_error(mle, truth)) <= 0.005
    assert parameter_error(refined, mle) <= 0.005  # the same optimum


@pytest.mark.parametrize("seed", range(2))
def test_d50_n1e6_linear(seed):
    X, y, truth = make_moe(1_000_000, 50, random_state=seed)
    model = SpectralMoE(random_state=seed).fit(X, y)
    assert parameter_error(model, truth) <= 0.03


@pytest.mark.parametrize("link", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("seed", range(2))
def test_d10_n1e6_other_links(link, seed):
    """Measured on seeds 0-2: refined 0.005-0.013 for every link; spectral step
    0.006-0.017 for sigmoid and tanh (exact transforms) but 0.04-0.35 for ReLU (the
    He6+ cross terms its transforms leave, docs/method.md section 3). Bounds: issue 2's 0.03 after
    refinement, 0.05 for the exact spectral steps."""
    X, y, truth = make_moe(1_000_000, 10, link=link, random_state=seed)
    model = SpectralMoE(link=link, random_state=seed).fit(X, y)
    assert parameter_error(model, truth) <= 0.03
    if link != "relu":
        assert parameter_error(model.spectral_experts_, truth["experts"]) <= 0.05


@pytest.mark.parametrize("seed", range(2))
def test_sigmoid_unequal_norms_refinement_recovers(seed):
    """Norms 0.7 and 1.4: the spectral start assumes a common norm (biased, ~0.4);
    refinement must still reach the MLE (expected error ~0.01 at n = 1e6, d = 10)."""
    from moelearn._model import sample_outputs

    X, _, truth = make_moe(1_000_000, 10, link="sigmoid", random_state=seed)
    A = truth["experts"] * np.array([[0.7], [1.4]])
    params = MoEParams(A, truth["gating"], 0.1, "sigmoid")
    y, _ = sample_outputs(X, params, np.random.default_rng(seed + 100))
    model = SpectralMoE(link="sigmoid", random_state=seed).fit(X, y)
    assert parameter_error(model, {"experts": A, "gating": truth["gating"]}) <= 0.03


def _hard_case(seed, kind):
    from moelearn._model import sample_outputs

    rng = np.random.default_rng(seed + 1000)  # a stream apart from make_moe's
    X, _, truth = make_moe(100_000, 10, random_state=seed)
    A, G = truth["experts"].copy(), truth["gating"].copy()
    if kind == "sharp gate |w| = 10":
        G[0] *= 10.0 / np.linalg.norm(G[0])
    else:  # correlated experts, a1 . a2 = 0.9
        b = rng.standard_normal(10)
        b -= (b @ A[0]) * A[0]
        A[1] = 0.9 * A[0] + np.sqrt(1 - 0.81) * b / np.linalg.norm(b)
    params = MoEParams(A, G, 0.1, "linear")
    y, _ = sample_outputs(X, params, rng)
    return X, y, params


@pytest.mark.parametrize("kind", ["sharp gate |w| = 10", "correlated experts"])
@pytest.mark.parametrize("seed", range(3))
def test_hard_cases_reach_the_mle(kind, seed):
    """The hard cases for EM/GD from random starts (docs/results.md, section 2): from the spectral start we
    reach the optimum EM finds from the truth (same parameters to 1e-3)."""
    X, y, params = _hard_case(seed, kind)
    model = SpectralMoE(random_state=seed).fit(X, y)
    mle = joint_em_from(X, y, params)
    assert parameter_error(model, {"experts": mle.experts, "gating": mle.gating}) < 1e-3


@pytest.mark.parametrize("seed", [100, 101, 102, 103, 104])
def test_method2_d10_n1e5_from_random_start(seed):
    """Issue 4's case on seeds outside the 50-trial sweep (0-49), whose median was
    0.028 and worst 0.086: regressors within the success threshold 0.1, all
    parameters within 0.15."""
    X, y, truth = make_moe(100_000, 10, random_state=seed)
    model = TensorLossMoE(random_state=seed).fit(X, y)
    assert parameter_error(model, truth, experts_only=True) <= 0.1
    assert parameter_error(model, truth) <= 0.15


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_nll_matches_em_on_the_nominal_model(seed):
    """Adam on the likelihood from the best of 3 starts reaches the same optimum as
    EM started at the truth (within a tenth of the statistical error)."""
    X, y, truth = make_moe(100_000, 10, random_state=seed)
    model = GradientMoE(n_init=3, random_state=seed).fit(X, y)
    start = MoEParams(truth["experts"], truth["gating"], truth["noise_std"], "linear")
    mle = joint_em_from(X, y, start)
    assert parameter_error(model, {"experts": mle.experts, "gating": mle.gating}) < 0.01


def test_biased_spectral_start_is_reported():
    """ReLU, seed 2 (d=10, n=1e6): the He6+ cross terms put the spectral regressors
    0.35 from the MLE, 37x the spectral sampling error. The fit still reaches the
    truth, says so in a SpectralReliabilityWarning and records the shift; the
    linear model on the same seed stays below 3x."""
    from moelearn import SpectralReliabilityWarning

    X, y, truth = make_moe(1_000_000, 10, link="relu", random_state=2)
    with pytest.warns(SpectralReliabilityWarning, match="spectral step was biased"):
        model = SpectralMoE(link="relu", random_state=2).fit(X, y)
    assert model.diagnostics_["spectral_shift_ratio"] > 10
    assert parameter_error(model, truth) <= 0.03
    X, y, _ = make_moe(1_000_000, 10, random_state=2)
    linear = SpectralMoE(random_state=2).fit(X, y)
    assert linear.diagnostics_["spectral_shift_ratio"] < 3


@pytest.mark.parametrize("seed", range(2))
def test_hme_depth2_d10_n1e6(seed):
    """Issue 3's HME case: the four regressors within 0.05 after refinement
    (measured over 10 seeds: median 0.0008, worst 0.0010; the spectral start
    median 0.14, worst 0.21)."""
    from moelearn import HierarchicalMoE, make_hme

    X, y, truth = make_hme(1_000_000, 10, depth=2, random_state=seed)
    model = HierarchicalMoE(depth=2, random_state=seed).fit(X, y)
    assert parameter_error(model, truth, experts_only=True) <= 0.05


def test_hme_depth3_reaches_the_mle():
    """A depth-3 tree (8 experts, 315 leaf arrangements screened): the fit reaches
    the maximum-likelihood estimate that EM started at the truth finds (measured
    4e-5 apart, equal log-likelihoods), and its regressors are within
    3 sqrt(d/n) = 0.038 of the truth (measured 0.005-0.006 over 3 seeds). About
    two minutes."""
    from moelearn import HierarchicalMoE, make_hme

    X, y, truth = make_hme(50_000, 8, depth=3, random_state=0)
    start = MoEParams(truth["experts"], truth["gating"], 0.1, "linear", "tree")
    mle = joint_em_from(X, y, start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HierarchicalMoE(depth=3, random_state=0).fit(X, y)
    at_mle = {**truth, "experts": mle.experts, "gating": mle.gating}
    assert parameter_error(model, at_mle) < 1e-3
    assert parameter_error(model, truth, experts_only=True) < 3 * np.sqrt(8 / 50_000)
