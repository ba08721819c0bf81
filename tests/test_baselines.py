"""EMMoE: joint EM from random starts (the classic baseline)."""

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from moelearn import EMMoE, GradientMoE, make_moe, parameter_error
from moelearn._gradients import nll_gradient, squared_error_gradient
from moelearn._links import get_link


def test_recovers_the_nominal_model_from_random_starts():
    """Nominal model (|w| in [1, 2], unit experts): EM from the best of 5 random
    starts reaches the MLE, whose error is ~2 sqrt(d/n); allowed 3x that."""
    n, d = 20_000, 4
    X, y, truth = make_moe(n, d, random_state=4)
    model = EMMoE(n_init=5, random_state=0).fit(X, y)
    assert parameter_error(model, truth) < 3 * 2 * np.sqrt(d / n)
    assert model.converged_
    assert model.init_log_likelihoods_.shape == (5,)
    assert model.score(X, y) == pytest.approx(model.init_log_likelihoods_.max())


def test_more_starts_never_do_worse():
    """Same seed: the first start is the same draw, so n_init=5 keeps a fit at least
    as likely as n_init=1 (n <= 20000: EM draws nothing else from the generator)."""
    X, y, _ = make_moe(10_000, 4, random_state=7)
    one = EMMoE(n_init=1, random_state=3).fit(X, y)
    five = EMMoE(n_init=5, random_state=3).fit(X, y)
    assert five.init_log_likelihoods_[0] == pytest.approx(one.init_log_likelihoods_[0])
    assert five.score(X, y) >= one.score(X, y) - 1e-12


def test_convergence_warning():
    X, y, _ = make_moe(5_000, 3, random_state=1)
    with pytest.warns(ConvergenceWarning, match="SpectralMoE"):
        EMMoE(max_iter=1, n_init=1, random_state=0).fit(X, y)


# ------------------------------------------------------------------ GradientMoE
def test_gradient_nll_reaches_the_mle_neighbourhood():
    """Adam on the likelihood from one random start, nominal model: within
    3 * 2 sqrt(d/n) of the truth, like EM."""
    n, d = 50_000, 4
    X, y, truth = make_moe(n, d, random_state=4)
    model = GradientMoE(n_init=1, random_state=0).fit(X, y)
    assert parameter_error(model, truth) < 3 * 2 * np.sqrt(d / n)
    assert model.noise_std_ == pytest.approx(0.1, rel=0.1)


def test_gradient_l2_fits_the_conditional_mean():
    """The squared error identifies E[y|x]; its global minimiser is near the truth
    and sigma comes from the likelihood with the rest fixed. Single starts can
    stall (2 of 6 did here, at error 1.5: the l2 landscape's local minima), so
    the best of 5 starts is checked; the bound is 3x the measured 0.035-0.05."""
    n, d = 50_000, 4
    X, y, truth = make_moe(n, d, random_state=4)
    model = GradientMoE(loss="l2", n_init=5, random_state=0).fit(X, y)
    assert parameter_error(model, truth) < 0.15
    assert model.noise_std_ == pytest.approx(0.1, rel=0.3)


def test_loss_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    Z, y = rng.standard_normal((30, 3)), rng.standard_normal(30)
    experts, gating = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    gating[-1] = 0
    link = get_link("sigmoid")
    for loss in ("nll", "l2"):

        def value(A, G, s=0.7, loss=loss):
            if loss == "nll":
                return nll_gradient(Z, y, A, G, s, link).loss
            return squared_error_gradient(Z, y, A, G, link).loss

        g = (
            nll_gradient(Z, y, experts, gating, 0.7, link)
            if loss == "nll"
            else squared_error_gradient(Z, y, experts, gating, link)
        )
        eps = 1e-6
        for which, base, grad in (("A", experts, g.experts), ("G", gating, g.gating)):
            for idx in np.ndindex(2, 3):  # the last gate row is fixed at zero
                E = np.zeros_like(base)
                E[idx] = eps
                args = (
                    ((experts + E, gating), (experts - E, gating))
                    if which == "A"
                    else ((experts, gating + E), (experts, gating - E))
                )
                numeric = (value(*args[0]) - value(*args[1])) / (2 * eps)
                assert grad[idx] == pytest.approx(numeric, abs=1e-6)
        if loss == "nll":
            numeric = (
                value(experts, gating, 0.7 * np.exp(eps))
                - value(experts, gating, 0.7 * np.exp(-eps))
            ) / (2 * eps)
            assert g.log_noise == pytest.approx(numeric, abs=1e-6)
