"""Synthetic data from the mixture-of-experts model."""

from __future__ import annotations

import numpy as np

from moelearn._docstrings import shared_entries
from moelearn._links import get_link
from moelearn._model import MoEParams, sample_outputs
from moelearn._validation import check_random_state

Array = np.ndarray

__all__ = ["make_hme", "make_moe"]


@shared_entries
def make_moe(
    n_samples: int,
    n_features: int,
    n_experts: int = 2,
    link: str = "linear",
    noise_std: float = 0.1,
    gating_norm: tuple[float, float] = (1.0, 2.0),
    random_state=None,
    inputs: str = "gaussian",
) -> tuple[Array, Array, dict]:
    """Draw ``x`` (``N(0, I_d)`` by default) and ``y`` from a mixture of experts
    with random parameters.

    Regressors ``a_j`` are uniform on the unit sphere; each non-reference gate row
    ``G_j`` (``j < k``) has a uniform direction and a norm uniform in
    ``gating_norm``; the last gate row is zero. Then ``z | x ~ softmax(G x)`` and
    ``y = g(a_z . x) + noise_std * eps``.

    {Parameters:simulated_rows}
    n_experts : int, default=2
        Experts ``k``, with a softmax gate.
    {simulated_experts}
    gating_norm : (low, high), default=(1, 2)
        Range of the gate rows' Euclidean norms.
    random_state : int, Generator or None
        Seeds the parameters and the rows.
    inputs : {'gaussian', 'mixture', 'laplace', 'gamma', 'student'}, default='gaussian'
        The inputs' distribution, for testing the spectral step off its
        Gaussian assumption: ``'mixture'`` draws from 3 Gaussians (weights 0.5,
        0.3, 0.2) whose means lie 3 from the origin in random directions (centred so that
        the mixture's mean is 0) and whose covariances have random axes and
        scales in [0.3, 1.5]; the others have independent columns: Laplace,
        gamma with shape 2 (skewness 1.4), Student t with 5 degrees of freedom.
        Every distribution has mean 0 and average variance 1 per column.

    Returns
    -------
    {simulated_table}
    params : dict
        ``experts`` (k, d), ``gating`` (k, d), ``noise_std``, ``link``, and, for
        ``inputs='mixture'``, ``input_mixture``: the inputs' ``weights``,
        ``means`` and ``covariances``.
    """
    _check_sizes(n_samples, n_features, link, noise_std, gating_norm)
    if not (isinstance(n_experts, (int, np.integer)) and n_experts >= 2):
        raise ValueError(f"n_experts must be an int >= 2; got {n_experts!r}")
    if inputs not in _INPUTS:
        raise ValueError(f"inputs must be one of {sorted(_INPUTS)}; got {inputs!r}")
    rng = check_random_state(random_state)
    experts = _unit_rows(rng, n_experts, n_features)
    gating = np.zeros((n_experts, n_features))
    gating[:-1] = _gate_rows(rng, n_experts - 1, n_features, gating_norm)
    params = MoEParams(experts, gating, float(noise_std), link)
    if inputs == "gaussian":
        return _draw(rng, n_samples, params)
    X, described = _INPUTS[inputs](rng, n_samples, n_features)
    y, _ = sample_outputs(X, params, rng)
    return X, y, {**_truth(params), **described}


@shared_entries
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

    {Parameters:simulated_rows}
    depth : int, default=2
        Levels of gates, from 1 to 6.
    {simulated_experts}
    gating_norm : (low, high), default=(1, 2)
        Range of the node vectors' Euclidean norms.
    random_state : int, Generator or None
        Seeds the parameters and the rows.

    Returns
    -------
    {simulated_table}
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


def _gate_rows(
    rng: np.random.Generator, rows: int, d: int, norm_range: tuple[float, float]
) -> Array:
    low, high = norm_range
    return _unit_rows(rng, rows, d) * rng.uniform(low, high, size=(rows, 1))


def _draw(
    rng: np.random.Generator, n_samples: int, params: MoEParams
) -> tuple[Array, Array, dict]:
    X = rng.standard_normal((n_samples, params.experts.shape[1]))
    y, _ = sample_outputs(X, params, rng)
    return X, y, _truth(params)


def _truth(params: MoEParams) -> dict:
    return {
        "experts": params.experts,
        "gating": params.gating,
        "noise_std": params.noise_std,
        "link": params.link,
    }


#: The mixtures' weights by number of components (``make_moe(inputs='mixture')``
#: uses 3).
MIXTURE_WEIGHTS = {2: (0.6, 0.4), 3: (0.5, 0.3, 0.2), 4: (0.4, 0.3, 0.2, 0.1)}


def mixture_inputs(
    rng: np.random.Generator, n: int, d: int, components: int = 3
) -> tuple[Array, dict]:
    """Rows from ``components`` Gaussians (weights :data:`MIXTURE_WEIGHTS`) whose
    means lie 3 from the origin in random directions and whose covariances have random axes
    and scales in [0.3, 1.5]; centred and scaled to mean 0 and average variance 1.
    Returns the rows and ``{'input_mixture': {'weights', 'means',
    'covariances'}}``."""
    weights = np.array(MIXTURE_WEIGHTS[components])
    means = 3.0 * _unit_rows(rng, components, d)
    means -= weights @ means
    stacked = []
    for _ in range(components):
        axes = np.linalg.qr(rng.standard_normal((d, d)))[0]
        stacked.append((axes * rng.uniform(0.3, 1.5, d)) @ axes.T)
    covariances = np.array(stacked)
    scale = np.sqrt(
        (np.einsum("c,cii->", weights, covariances) + weights @ (means**2).sum(1)) / d
    )
    means, covariances = means / scale, covariances / scale**2
    labels = rng.choice(components, size=n, p=weights)
    roots = np.linalg.cholesky(covariances)
    X = means[labels] + np.einsum(
        "nij,nj->ni", roots[labels], rng.standard_normal((n, d))
    )
    mixture = {"weights": weights, "means": means, "covariances": covariances}
    return X, {"input_mixture": mixture}


def _independent_inputs(draw):
    """Independent columns from ``draw(rng, shape)``, standardised by the
    distribution's own mean and standard deviation."""

    def inputs(rng: np.random.Generator, n: int, d: int) -> tuple[Array, dict]:
        values, mean, std = draw(rng, (n, d))
        return (values - mean) / std, {}

    return inputs


_INPUTS = {
    "gaussian": None,
    "mixture": mixture_inputs,
    "laplace": _independent_inputs(
        lambda rng, shape: (rng.laplace(size=shape), 0.0, np.sqrt(2.0))
    ),
    "gamma": _independent_inputs(
        lambda rng, shape: (rng.gamma(2.0, size=shape), 2.0, np.sqrt(2.0))
    ),
    "student": _independent_inputs(
        lambda rng, shape: (rng.standard_t(5, size=shape), 0.0, np.sqrt(5.0 / 3.0))
    ),
}
