"""Hierarchical mixture of experts: the tree gate, its alignment, and the learner."""

import warnings

import numpy as np
import pytest

from moelearn import HierarchicalMoE, make_hme, parameter_error
from moelearn._model import MoEParams, gate_proba, tree_paths
from moelearn.hierarchical import leaf_arrangements
from moelearn.io import load_model, save_model
from moelearn.metrics import _swap_subtrees


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_tree_gate_is_the_product_of_branch_probabilities():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3))
    V = rng.standard_normal((3, 3)) * 3
    s = _sigmoid(X @ V.T)  # nodes 0 (root), 1 (left child), 2 (right child)
    expected = np.column_stack(
        [
            s[:, 0] * s[:, 1],
            s[:, 0] * (1 - s[:, 1]),
            (1 - s[:, 0]) * s[:, 2],
            (1 - s[:, 0]) * (1 - s[:, 2]),
        ]
    )
    params = MoEParams(np.zeros((4, 3)), V, 0.1, "linear", gate="tree")
    np.testing.assert_allclose(gate_proba(X, params), expected, rtol=1e-12)


def test_tree_paths_of_depth_three():
    left, under = tree_paths(8)
    assert under.sum(axis=1).tolist() == [8, 4, 4, 2, 2, 2, 2]
    assert np.flatnonzero(left[2]).tolist() == [4, 5]
    with pytest.raises(ValueError, match="power of 2"):
        tree_paths(6)


def test_leaf_arrangements_count_the_distinct_trees():
    assert leaf_arrangements(2) == [(0, 1)]
    assert leaf_arrangements(4) == [(0, 1, 2, 3), (0, 2, 1, 3), (0, 3, 1, 2)]
    assert len(leaf_arrangements(8)) == 315  # 8! / 2^7


@pytest.mark.parametrize("flips", range(8))
def test_subtree_swaps_leave_the_model_unchanged_and_align_to_zero(flips):
    X, _, truth = make_hme(200, 4, depth=2, random_state=1)
    leaves, nodes, signs = _swap_subtrees(4, flips)
    swapped = {
        "experts": truth["experts"][leaves],
        "gating": signs[:, None] * truth["gating"][nodes],
        "gate": "tree",
    }
    p = MoEParams(swapped["experts"], swapped["gating"], 0.1, "linear", "tree")
    q = MoEParams(truth["experts"], truth["gating"], 0.1, "linear", "tree")
    np.testing.assert_allclose(
        gate_proba(X, p)[:, np.argsort(leaves)], gate_proba(X, q), rtol=1e-12
    )
    assert parameter_error(swapped, truth) == pytest.approx(0.0, abs=1e-12)


def test_tree_and_softmax_gates_are_not_compared():
    _, _, truth = make_hme(100, 4, depth=2, random_state=0)
    other = {"experts": truth["experts"], "gating": np.zeros((4, 4))}
    with pytest.raises(ValueError, match="cannot compare a softmax gate with a tree"):
        parameter_error(other, truth)
    assert parameter_error(other, truth, experts_only=True) == 0.0


def test_hme_recovers_experts_and_gates(global_random_seed):
    """n=5e4, d=6, depth 2. Experts: the MLE's error ~ sigma sqrt(k d / n) = 0.0022
    (measured 0.0027-0.0042 over 6 seeds); tolerance 5x. Gates: measured
    0.037-0.072 = (3.4-6.5) sqrt(d/n); tolerance 15 sqrt(d/n) = 0.16."""
    n, d = 50_000, 6
    X, y, truth = make_hme(n, d, depth=2, random_state=global_random_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the biased-start diagnostic may fire
        model = HierarchicalMoE(depth=2, random_state=0).fit(X, y)
    sigma = truth["noise_std"]
    assert parameter_error(model, truth, experts_only=True) < 5 * sigma * np.sqrt(
        4 * d / n
    )
    assert parameter_error(model, truth) < 15 * np.sqrt(d / n)
    assert model.gating_.shape == (3, d)
    assert len(model.diagnostics_["arrangement_log_likelihoods"]) == 3


def test_hme_fitted_api(tmp_path):
    X, y, truth = make_hme(20_000, 6, depth=2, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HierarchicalMoE(random_state=0).fit(X, y)
    proba = model.predict_proba(X[:100])
    assert proba.shape == (100, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    post = model.posterior_proba(X[:100], y[:100])
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    assert model.predict(X[:7]).shape == (7,)
    y_new, leaf = model.sample(X[:1000], random_state=0)
    assert y_new.shape == (1000,) and set(leaf) <= {0, 1, 2, 3}
    # the fit is a maximum of the likelihood: at least as likely as the truth
    truth_model = HierarchicalMoE()
    truth_model.experts_, truth_model.gating_ = truth["experts"], truth["gating"]
    truth_model.noise_std_, truth_model.n_features_in_ = 0.1, 6
    assert model.score(X, y) > truth_model.score(X, y)
    save_model(model, tmp_path / "hme.json")
    loaded = load_model(tmp_path / "hme.json")
    assert isinstance(loaded, HierarchicalMoE) and loaded.depth == 2
    np.testing.assert_allclose(
        loaded.predict_proba(X[:50]), model.predict_proba(X[:50])
    )


def test_hme_rejects_bad_depth_and_too_few_features():
    X, y, _ = make_hme(5_000, 4, depth=2, random_state=0)
    with pytest.raises(ValueError, match="depth"):
        HierarchicalMoE(depth=4).fit(X, y)
    with pytest.raises(ValueError, match="n_experts=8 exceeds n_features=4"):
        HierarchicalMoE(depth=3).fit(X, y)
