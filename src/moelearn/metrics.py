"""Errors of learned parameters against the truth."""

from __future__ import annotations

from itertools import permutations
from typing import Any

import numpy as np

Array = np.ndarray

__all__ = ["best_permutation", "parameter_error"]


def _as_params(obj: Any, name: str) -> tuple[Array, Array | None]:
    if isinstance(obj, dict):
        experts, gating = obj.get("experts"), obj.get("gating")
    elif hasattr(obj, "experts_"):
        experts, gating = obj.experts_, getattr(obj, "gating_", None)
    else:
        experts, gating = obj, None
    if experts is None:
        raise ValueError(f"{name} has no experts")
    experts = np.atleast_2d(np.asarray(experts, dtype=float))
    if gating is not None:
        gating = np.atleast_2d(np.asarray(gating, dtype=float))
        if gating.shape != experts.shape:
            raise ValueError(
                f"{name}: gating has shape {gating.shape} but experts {experts.shape}"
            )
    return experts, gating


def parameter_error(estimated: Any, truth: Any, *, experts_only: bool = False) -> float:
    """Aligned parameter error (SPEC.md, Metrics).

    ``min over permutations P of max( max_i |A_est[P i] - A_i|,
    max_i |(G_est - G_est[P last])[P i] - (G - G[last])_i| )`` with Euclidean row
    norms. The gate rows are compared after shifting both by their (permuted) last
    row, since softmax logits are defined up to a common shift.

    Parameters
    ----------
    estimated, truth : dict with ``experts`` (and ``gating``), a fitted estimator,
        or an ``(k, d)`` array of regressors.
    experts_only : bool, default=False
        Compare only the regressors (also the case when either side has no gate).
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
    A_est, G_est = _as_params(estimated, "estimated")
    A, G = _as_params(truth, "truth")
    if A_est.shape != A.shape:
        raise ValueError(
            f"estimated experts have shape {A_est.shape}, the truth {A.shape}"
        )
    use_gate = not experts_only and G is not None and G_est is not None
    best, best_perm = np.inf, list(range(A.shape[0]))
    for perm in permutations(range(A.shape[0])):
        p = list(perm)
        err = np.linalg.norm(A_est[p] - A, axis=1).max()
        if use_gate:
            shifted_est = G_est[p] - G_est[p][-1]
            shifted = G - G[-1]
            err = max(err, np.linalg.norm(shifted_est - shifted, axis=1).max())
        if err < best:
            best, best_perm = float(err), p
    return best_perm, best
