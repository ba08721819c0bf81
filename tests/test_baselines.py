"""EMMoE: joint EM from random starts (the classic baseline)."""

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from moelearn import EMMoE, make_moe, parameter_error
from moelearn.io import load_model, save_model
from test_common import EXPECTED_FAILED_CHECKS


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


def test_saved_and_loaded(tmp_path):
    X, y, _ = make_moe(5_000, 3, random_state=1)
    model = EMMoE(n_init=2, random_state=0).fit(X, y)
    save_model(model, tmp_path / "em.json")
    loaded = load_model(tmp_path / "em.json")
    assert isinstance(loaded, EMMoE)
    np.testing.assert_allclose(loaded.predict(X[:50]), model.predict(X[:50]))


@parametrize_with_checks(
    [EMMoE(n_init=2, random_state=0)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
