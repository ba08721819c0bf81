"""Errors of learned parameters against the truth; scores of predictive
distributions."""

from __future__ import annotations

import warnings
from itertools import permutations
from typing import Any

import numpy as np

Array = np.ndarray

__all__ = ["best_permutation", "crps", "interval_coverage", "parameter_error"]


def crps(model: Any, X, y) -> float:
    """Mean continuous ranked probability score of ``model``'s predictive
    distributions at the observed ``y`` (lower is better; in ``y``'s units).

    ``CRPS(F, y) = integral (F(t) - [t >= y])^2 dt``, in closed form for the
    Gaussian mixture ``y | x`` (see :mod:`moelearn._predictive`). Unlike the
    log-likelihood it rewards a sharp distribution near ``y`` without
    punishing tails without bound."""
    from moelearn._predictive import crps as crps_rows

    y = np.asarray(y, float)
    return float(np.mean(crps_rows(y, *model._mixture(X))))


def interval_coverage(model: Any, X, y, coverage: float = 0.9) -> float:
    """Share of the rows whose ``y`` lies in the central ``coverage``
    predictive interval (a calibrated model gives about ``coverage``)."""
    bounds = model.predict_interval(X, coverage)
    y = np.asarray(y, float)
    return float(np.mean((bounds[:, 0] <= y) & (y <= bounds[:, 1])))


def _as_params(obj: Any, name: str) -> tuple[Array, Array | None, str]:
    """Experts, gate (or None) and the gate's form ('softmax' or 'tree')."""
    if isinstance(obj, dict):
        experts, gating = obj.get("experts"), obj.get("gating")
        gate = obj.get("gate", "softmax")
    elif hasattr(obj, "experts_"):
        experts, gating = obj.experts_, getattr(obj, "gating_", None)
        gate = getattr(obj, "_gate", "softmax")
    else:
        experts, gating, gate = obj, None, "softmax"
    if experts is None:
        raise ValueError(f"{name} has no experts")
    experts = np.atleast_2d(np.asarray(experts, dtype=float))
    if gating is not None:
        gating = np.atleast_2d(np.asarray(gating, dtype=float))
        rows = experts.shape[0] - (gate == "tree")
        if gating.shape != (rows, experts.shape[1]):
            raise ValueError(
                f"{name}: gating has shape {gating.shape} but experts {experts.shape}"
            )
    return experts, gating, gate


def parameter_error(estimated: Any, truth: Any, *, experts_only: bool = False) -> float:
    """Aligned parameter error (docs/method.md, section 9).

    ``min over permutations P of max( max_i |A_est[P i] - A_i|,
    max_i |(G_est - G_est[P last])[P i] - (G - G[last])_i| )`` with Euclidean row
    norms. The gate rows are compared after shifting both by their (permuted) last
    row, since softmax logits are defined up to a common shift.

    For tree gates (hierarchical MoE) the minimum runs over the tree's symmetries
    instead: swapping a node's subtrees (and negating its vector) changes nothing,
    and the node vectors are compared directly; with ``experts_only`` over all
    permutations of the experts.

    Parameters
    ----------
    estimated, truth : dict, fitted estimator or ndarray of shape (k, d)
        A dict with ``experts`` (and ``gating``), a fitted estimator, or the
        regressors alone.
    experts_only : bool, default=False
        Compare only the regressors (also the case when either side has no gate).

    Returns
    -------
    float
        The largest row error under the best alignment.
    """
    return _best_alignment(estimated, truth, experts_only)[1]


def best_permutation(
    estimated: Any, truth: Any, *, experts_only: bool = False
) -> list[int]:
    """The expert order ``P`` attaining :func:`parameter_error`: ``estimated[P]``
    lines up with ``truth`` row by row."""
    return _best_alignment(estimated, truth, experts_only)[0]


def _best_alignment(
    estimated: Any, truth: Any, experts_only: bool
) -> tuple[list[int], float]:
    A_est, G_est, gate_est = _as_params(estimated, "estimated")
    A, G, gate = _as_params(truth, "truth")
    if A_est.shape != A.shape:
        raise ValueError(
            f"estimated experts have shape {A_est.shape}, the truth {A.shape}"
        )
    gates = None if experts_only or G is None or G_est is None else (G_est, G)
    if gates is not None and gate_est != gate:
        raise ValueError(f"cannot compare a {gate_est} gate with a {gate} gate")
    if gates is not None and gate == "tree":
        return _tree_alignment(A_est, gates[0], A, gates[1])
    best, best_perm = np.inf, list(range(A.shape[0]))
    for perm in permutations(range(A.shape[0])):
        p = list(perm)
        err = np.linalg.norm(A_est[p] - A, axis=1).max()
        if gates is not None:
            shifted_est = gates[0][p] - gates[0][p][-1]
            shifted = gates[1] - gates[1][-1]
            err = max(err, np.linalg.norm(shifted_est - shifted, axis=1).max())
        if err < best:
            best, best_perm = float(err), p
    return best_perm, best


def _tree_alignment(
    A_est: Array, G_est: Array, A: Array, G: Array
) -> tuple[list[int], float]:
    """Best of the ``2^(k-1)`` subtree swaps of a tree gate (see parameter_error)."""
    k = A.shape[0]
    best, best_perm = np.inf, list(range(k))
    for flips in range(2 ** (k - 1)):
        leaves, nodes, signs = _swap_subtrees(k, flips)
        err = max(
            np.linalg.norm(A_est[leaves] - A, axis=1).max(),
            np.linalg.norm(signs[:, None] * G_est[nodes] - G, axis=1).max(),
        )
        if err < best:
            best, best_perm = float(err), leaves
    return best_perm, best


def _swap_subtrees(k: int, flips: int) -> tuple[list[int], list[int], Array]:
    """The tree with node ``t``'s subtrees swapped wherever bit ``t`` of ``flips``
    is set: for each new leaf and node, the old one it holds, and the node signs."""
    leaves, nodes, signs = [0] * k, [0] * (k - 1), np.ones(k - 1)

    def walk(new: int, old: int) -> None:
        if new >= k - 1:  # a leaf, heap index k - 1 + leaf
            leaves[new - (k - 1)] = old - (k - 1)
            return
        swapped = bool(flips >> old & 1)
        nodes[new], signs[new] = old, -1.0 if swapped else 1.0
        first, second = 2 * old + 1, 2 * old + 2
        if swapped:
            first, second = second, first
        walk(2 * new + 1, first)
        walk(2 * new + 2, second)

    walk(0, 0)
    return leaves, nodes, signs


def evaluate_model(model, truth: dict | None, X=None, y=None) -> dict:
    """A fitted model's figures: against the ``truth`` (parameter, regressor,
    spectral-regressor and noise errors, :func:`parameter_error`) and on data
    ``X, y`` (mean log-likelihood, RMSE); ``ValueError`` when the model and the
    truth cannot be compared."""
    out: dict = {}
    if truth is not None:
        if np.shape(truth["experts"]) != model.experts_.shape:
            raise ValueError(
                f"truth has {np.shape(truth['experts'])} experts, the model {model.experts_.shape}"
            )
        try:
            out["parameter_error"] = parameter_error(model, truth)
        except ValueError as exc:  # e.g. a tree-gated truth and a softmax model
            raise ValueError(
                f"cannot compare the model with the truth: {exc}"
            ) from None
        out["regressor_error"] = parameter_error(model, truth, experts_only=True)
        # Method 1 models whose spectral step ran (not with more experts than columns)
        if getattr(model, "spectral_experts_", None) is not None:
            out["spectral_regressor_error"] = parameter_error(
                model.spectral_experts_, truth["experts"]
            )
        if truth.get("noise_std") is not None:
            out["noise_std_error"] = float(
                np.max(np.abs(model.noise_std_ - float(truth["noise_std"])))
            )
    if X is not None and y is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="X does not have valid feature names"
            )
            out["mean_log_likelihood"] = model.score(X, y)
            out["rmse"] = float(np.sqrt(np.mean((model.predict(X) - y) ** 2)))
    return out
