"""Errors of learned parameters against the truth."""

from __future__ import annotations

from itertools import permutations
from typing import Any

import numpy as np

Array = np.ndarray

__all__ = ["parameter_error"]


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
    A_est, G_est = _as_params(estimated, "estimated")
    A, G = _as_params(truth, "truth")
    if A_est.shape != A.shape:
        raise ValueError(
            f"estimated experts have shape {A_est.shape}, the truth {A.shape}"
        )
    use_gate = not experts_only and G is not None and G_est is not None
    k = A.shape[0]
    best = np.inf
    for perm in permutations(range(k)):
        p = list(perm)
        err = np.linalg.norm(A_est[p] - A, axis=1).max()
        if use_gate:
            shifted_est = G_est[p] - G_est[p][-1]
            shifted = G - G[-1]
            err = max(err, np.linalg.norm(shifted_est - shifted, axis=1).max())
        best = min(best, float(err))
    return best
