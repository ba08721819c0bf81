"""Synthetic data from the mixture-of-experts model."""

from __future__ import annotations

import numpy as np

from moelearn._links import get_link
from moelearn._model import MoEParams, sample_outputs
from moelearn._validation import check_random_state

Array = np.ndarray

__all__ = ["make_hme", "make_moe"]


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
    _check_sizes(n_samples, n_features, link, noise_std, gating_norm)
    if not (isinstance(n_experts, (int, np.integer)) and n_experts >= 2):
        raise ValueError(f"n_experts must be an int >= 2; got {n_experts!r}")
    rng = check_random_state(random_state)
    experts = _unit_rows(rng, n_experts, n_features)
    gating = np.zeros((n_experts, n_features))
    gating[:-1] = _gate_rows(rng, n_experts - 1, n_features, gating_norm)
    return _draw(rng, n_samples, MoEParams(experts, gating, float(noise_std), link))


def make_hme(
    n_samples: int,
    n_features: int,
    depth: int = 2,
    link: str = "linear",
    noise_std: float = 0.1,
    gating_norm: tuple[float, float] = (1.0, 2.0),
    random_state=None,
) -> tuple[Array, Array, dict]:
    """Draw ``x ~ N(0, I_d)`` and ``y`` from a hierarchical mixture of experts.

    A complete binary tree of ``depth`` levels of sigmoid gates with ``2^depth``
    experts at its leaves: node ``t`` (heap order) sends ``x`` left with probability
    ``sigmoid(v_t . x)``. Regressors are uniform on the unit sphere; each ``v_t`` has
    a uniform direction and a norm uniform in ``gating_norm``.

    Returns
    -------
    X : ndarray (n_samples, n_features)
    y : ndarray (n_samples,)
    params : dict
        ``experts`` (2^depth, d), ``gating`` (2^depth - 1, d) node vectors,
        ``gate='tree'``, ``depth``, ``noise_std``, ``link``.
    """
    _check_sizes(n_samples, n_features, link, noise_std, gating_norm)
    if not (isinstance(depth, (int, np.integer)) and 1 <= depth <= 6):
        raise ValueError(f"depth must be an int in [1, 6]; got {depth!r}")
    rng = check_random_state(random_state)
    k = 2**depth
    experts = _unit_rows(rng, k, n_features)
    gating = _gate_rows(rng, k - 1, n_features, gating_norm)
    params = MoEParams(experts, gating, float(noise_std), link, gate="tree")
    X, y, truth = _draw(rng, n_samples, params)
    return X, y, {**truth, "gate": "tree", "depth": int(depth)}


def _check_sizes(n_samples, n_features, link, noise_std, gating_norm) -> None:
    get_link(link)
    if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 1):
        raise ValueError(f"n_samples must be a positive int; got {n_samples!r}")
    if not (isinstance(n_features, (int, np.integer)) and n_features >= 1):
        raise ValueError(f"n_features must be a positive int; got {n_features!r}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0; got {noise_std!r}")
    low, high = gating_norm
    if not 0 <= low <= high:
        raise ValueError(
            f"gating_norm must be (low, high) with 0 <= low <= high; got {gating_norm!r}"
        )


def _unit_rows(rng: np.random.Generator, rows: int, d: int) -> Array:
    out = rng.standard_normal((rows, d))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _gate_rows(rng: np.random.Generator, rows: int, d: int, norm_range) -> Array:
    return _unit_rows(rng, rows, d) * rng.uniform(*norm_range, size=(rows, 1))


def _draw(
    rng: np.random.Generator, n_samples: int, params: MoEParams
) -> tuple[Array, Array, dict]:
    X = rng.standard_normal((n_samples, params.experts.shape[1]))
    y, _ = sample_outputs(X, params, rng)
    truth = {
        "experts": params.experts,
        "gating": params.gating,
        "noise_std": params.noise_std,
        "link": params.link,
    }
    return X, y, truth
