"""Expert links ``g`` and the polynomial transforms of ``y`` built for them.

Method 1 multiplies polynomials of ``y`` by Stein score tensors of ``x``. The
polynomials are chosen so that, for a standard Gaussian ``Z``, the Hermite
coefficients of ``phi(u) = E_eps[P(g(u) + sigma * eps)]`` that would couple the
regressors with the gate vanish (SPEC.md, Method 1, step 1):

* ``P3(y) = y**3 + alpha * y**2 + beta * y`` with ``E[phi3 He1] = E[phi3 He2] = 0``;
* ``P2(y) = y**2 + gamma * y`` with ``E[phi2 He1] = 0``.

All expectations are one-dimensional and computed by Gauss–Hermite quadrature, so
the same code serves any link.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import expit

Array = np.ndarray


@dataclass(frozen=True)
class Link:
    """An expert link ``g`` with its derivative ``g'``."""

    name: str
    func: Callable[[Array], Array]
    deriv: Callable[[Array], Array]


def _identity(u: Array) -> Array:
    return u


def _ones(u: Array) -> Array:
    return np.ones_like(u)


def _sigmoid_deriv(u: Array) -> Array:
    s = expit(u)
    return s * (1.0 - s)


def _tanh_deriv(u: Array) -> Array:
    t = np.tanh(u)
    return 1.0 - t * t


LINKS: dict[str, Link] = {
    "linear": Link("linear", _identity, _ones),
    "sigmoid": Link("sigmoid", expit, _sigmoid_deriv),
    "tanh": Link("tanh", np.tanh, _tanh_deriv),
}


def get_link(name: str) -> Link:
    """Return the built-in link called ``name``; ``ValueError`` names the choices."""
    try:
        return LINKS[name]
    except (KeyError, TypeError):
        choices = ", ".join(repr(k) for k in LINKS)
        raise ValueError(f"unknown link {name!r}; choose one of {choices}") from None


@lru_cache(maxsize=1)
def _quadrature(n_nodes: int = 120) -> tuple[Array, Array]:
    """Nodes and weights with ``sum(w * f(z)) = E[f(Z)]``, ``Z ~ N(0, 1)``."""
    nodes, weights = hermegauss(n_nodes)
    return nodes, weights / np.sqrt(2.0 * np.pi)


def gaussian_expectation(f: Callable[[Array], Array]) -> float:
    """``E[f(Z)]`` for ``Z ~ N(0, 1)`` by Gauss–Hermite quadrature."""
    nodes, weights = _quadrature()
    return float(weights @ f(nodes))


def _hermite(order: int, z: Array) -> Array:
    """Probabilists' Hermite polynomial ``He_order(z)`` for orders 0 to 4."""
    polys = {
        0: lambda t: np.ones_like(t),
        1: lambda t: t,
        2: lambda t: t**2 - 1.0,
        3: lambda t: t**3 - 3.0 * t,
        4: lambda t: t**4 - 6.0 * t**2 + 3.0,
    }
    return polys[order](z)


@dataclass(frozen=True)
class Transforms:
    """Coefficients of ``P3(y) = y^3 + alpha y^2 + beta y`` and ``P2(y) = y^2 + gamma y``.

    ``beta = beta0 - 3 sigma^2``: ``alpha``, ``beta0`` and ``gamma`` do not depend on
    the noise, so a moment computed once with ``beta0`` can be corrected for any
    noise level afterwards (:func:`p3_noise_shift`).
    """

    alpha: float
    beta0: float
    gamma: float
    noise_std: float

    @property
    def beta(self) -> float:
        return self.beta0 - 3.0 * self.noise_std**2

    def p2(self, y: Array) -> Array:
        """``P2(y) = y^2 + gamma y``."""
        return y * (y + self.gamma)

    def p3(self, y: Array) -> Array:
        """``P3(y) = y^3 + alpha y^2 + beta y``."""
        return y * (y * (y + self.alpha) + self.beta)


def transform_coefficients(link: Link, noise_std: float = 0.0) -> Transforms:
    """Solve the Hermite conditions for the transforms of ``y``.

    With ``h_m(u) = E[g(u)^m]`` over ``Z ~ N(0,1)`` moments ``M[m, j] = E[g(Z)^m He_j(Z)]``,
    ``E[phi3 He_j] = M[3, j] + 3 sigma^2 M[1, j] + alpha M[2, j] + beta M[1, j]`` for
    ``j = 1, 2`` (a 2x2 linear system in ``alpha, beta``), and
    ``E[phi2 He1] = M[2, 1] + gamma M[1, 1] = 0``.

    Raises
    ------
    ValueError
        If the system is singular for this link (the conditions cannot be met).
    """
    g = link.func
    m = {
        (p, j): gaussian_expectation(lambda z, p=p, j=j: g(z) ** p * _hermite(j, z))
        for p in (1, 2, 3)
        for j in (1, 2)
    }
    system = np.array([[m[2, 1], m[1, 1]], [m[2, 2], m[1, 2]]])
    rhs = -np.array([m[3, 1], m[3, 2]])
    if abs(np.linalg.det(system)) < 1e-10 or abs(m[1, 1]) < 1e-10:
        raise ValueError(
            f"the transform conditions are singular for link {link.name!r}: "
            "the spectral method cannot cancel the gate's cross terms for it"
        )
    alpha, beta0 = np.linalg.solve(system, rhs)
    gamma = -m[2, 1] / m[1, 1]
    # Round away quadrature dust so that linear g gives exactly alpha = gamma = 0.
    alpha, beta0, gamma = (
        0.0 if abs(c) < 1e-12 else float(c) for c in (alpha, beta0, gamma)
    )
    return Transforms(alpha, beta0, gamma, float(noise_std))


def tensor_constants(
    transforms: Transforms, link: Link, norm: float
) -> tuple[float, float]:
    """Constants ``c2, c3`` with ``T2 = sum_i c2 p_i a_i a_i^T`` and ``T3 = sum_i c3 p_i a_i^{x3}``.

    For an expert with ``|a_i| = norm = r``, Stein's lemma gives
    ``c2 = E[phi2''(r Z)] = E[phi2(r Z) He2(Z)] / r^2`` and
    ``c3 = E[phi3'''(r Z)] = E[phi3(r Z) He3(Z)] / r^3``; ``p_i = E[pi_i(x)]``.
    Linear ``g`` gives ``c2 = 2, c3 = 6`` whatever ``r`` and ``sigma``.
    """
    g = link.func
    s2 = transforms.noise_std**2
    r = float(norm)

    def phi2(u: Array) -> Array:
        gu = g(u)
        return gu * gu + transforms.gamma * gu

    def phi3(u: Array) -> Array:
        gu = g(u)
        return gu**3 + 3.0 * s2 * gu + transforms.alpha * gu * gu + transforms.beta * gu

    c2 = gaussian_expectation(lambda z: phi2(r * z) * _hermite(2, z)) / r**2
    c3 = gaussian_expectation(lambda z: phi3(r * z) * _hermite(3, z)) / r**3
    return c2, c3
