"""Synthetic data from the mixture-of-experts model."""

from __future__ import annotations

import numpy as np

from moelearn._links import get_link
from moelearn._model import MoEParams, sample_outputs
from moelearn._validation import check_random_state

Array = np.ndarray

__all__ = ["make_moe"]


def make_moe(
    n_samples: int,
    n_features: int,
    n_experts: int = 2,
    link: str = "linear",
    noise_std: float = 0.1,
    gating_norm: tuple[float, float] = (1.0, 2.0),
    random_state=None,
) -> tuple[Array, Array, dict]:
    """Draw ``x ~ N(0, I_d)`` and ``y`` from a mixture of experts with random parameters.

    Regressors ``a_j`` are uniform on the unit sphere; each non-reference gate row
    ``G_j`` (``j < k``) has a uniform direction and a norm uniform in
    ``gating_norm``; the last gate row is zero. Then ``z | x ~ softmax(G x)`` and
    ``y = g(a_z . x) + noise_std * eps``.

    Parameters
    ----------
    n_samples, n_features : int
    n_experts : int, default=2
    link : {'linear', 'sigmoid'}, default='linear'
    noise_std : float, default=0.1
    gating_norm : (low, high), default=(1, 2)
        Range of the gate rows' Euclidean norms.
    random_state : int, Generator or None

    Returns
    -------
    X : ndarray (n_samples, n_features)
    y : ndarray (n_samples,)
    params : dict
        ``experts`` (k, d), ``gating`` (k, d), ``noise_std``, ``link``.
    """
    get_link(link)
    if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 1):
        raise ValueError(f"n_samples must be a positive int; got {n_samples!r}")
    if not (isinstance(n_features, (int, np.integer)) and n_features >= 1):
        raise ValueError(f"n_features must be a positive int; got {n_features!r}")
    if not (isinstance(n_experts, (int, np.integer)) and n_experts >= 2):
        raise ValueError(f"n_experts must be an int >= 2; got {n_experts!r}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0; got {noise_std!r}")
    low, high = gating_norm
    if not 0 <= low <= high:
        raise ValueError(
            f"gating_norm must be (low, high) with 0 <= low <= high; got {gating_norm!r}"
        )
    rng = check_random_state(random_state)
    experts = rng.standard_normal((n_experts, n_features))
    experts /= np.linalg.norm(experts, axis=1, keepdims=True)
    gating = np.zeros((n_experts, n_features))
    directions = rng.standard_normal((n_experts - 1, n_features))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    gating[:-1] = directions * rng.uniform(low, high, size=(n_experts - 1, 1))
    X = rng.standard_normal((n_samples, n_features))
    params = MoEParams(experts, gating, float(noise_std), link)
    y, _ = (
        sample_outputs(X, params, rng) if noise_std > 0 else _noiseless(X, params, rng)
    )
    truth = {
        "experts": experts,
        "gating": gating,
        "noise_std": float(noise_std),
        "link": link,
    }
    return X, y, truth


def _noiseless(X: Array, params: MoEParams, rng) -> tuple[Array, Array]:
    return sample_outputs(
        X, MoEParams(params.experts, params.gating, 0.0, params.link), rng
    )
