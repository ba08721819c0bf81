import numpy as np
import pytest

from moelearn import parameter_error
from moelearn.metrics import best_permutation


def test_error_is_invariant_to_expert_order_and_gate_shift(global_random_seed):
    rng = np.random.default_rng(global_random_seed)
    A = rng.standard_normal((3, 4))
    G = rng.standard_normal((3, 4))
    G[-1] = 0
    truth = {"experts": A, "gating": G}
    perm = [2, 0, 1]
    shifted = G[perm] + rng.standard_normal(4)  # any common shift of the logits
    assert parameter_error(
        {"experts": A[perm], "gating": shifted}, truth
    ) == pytest.approx(0, abs=1e-12)
    # The order that lines the estimate up with the truth undoes the shuffle.
    order = best_permutation({"experts": A[perm], "gating": shifted}, truth)
    np.testing.assert_array_equal(A[perm][order], A)


def test_error_is_the_max_row_error():
    A = np.eye(2)
    G = np.array([[1.0, 0.0], [0.0, 0.0]])
    est = {
        "experts": A + np.array([[0.3, 0.4], [0, 0]]),
        "gating": G + np.array([[0.0, 0.1], [0, 0]]),
    }
    assert parameter_error(est, {"experts": A, "gating": G}) == pytest.approx(0.5)
    assert parameter_error(est["experts"], A) == pytest.approx(0.5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        parameter_error(np.zeros((2, 3)), np.zeros((2, 4)))
