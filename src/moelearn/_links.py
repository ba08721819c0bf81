"""Expert links ``g`` and the polynomial transforms of ``y`` built for them.

Method 1 multiplies polynomials of ``y`` by Stein score tensors of ``x``. The
polynomials are chosen so that, for a standard Gaussian ``Z``, the Hermite
coefficients of ``phi(u) = E_eps[P(g(u) + sigma * eps)]`` that would couple the
regressors with the gate vanish (docs/method.md, section 3):

* ``P3(y) = y**3 + alpha * y**2 + beta * y`` with ``E[phi3 He_j] = 0`` for the
  link's two ``p3_orders`` (default ``j = 1, 2``);
* ``P2(y) = delta * y**3 + y**2 + gamma * y`` with ``E[phi2 He_j] = 0`` for its
  ``p2_orders`` (default ``j = 1`` and ``delta = 0``).

For a symmetric gate (no bias) the cross terms of ``T3`` come from the even
Hermite components of ``phi3`` and those of ``T2`` from the odd ones of ``phi2``.
Odd links (linear, tanh) have no even ``phi3`` components beyond what ``beta``
removes; the sigmoid's are cancelled by ``alpha`` (the talk's system). ReLU has no
parity: it cancels ``He2`` and ``He4`` in ``P3`` and ``He1`` and ``He3`` in a cubic
``P2`` (docs/method.md, section 3); the ``He6`` and higher remainders stay, a bias that refinement
removes.

All expectations are one-dimensional and computed by Gauss–Hermite quadrature, so
the same code serves any link.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial, wraps

import numpy as np
from numpy.polynomial.hermite_e import hermegauss, hermeval
from scipy.special import expit

from moelearn._arrays import like, namespace, to_host

Array = np.ndarray


@dataclass(frozen=True)
class Link:
    """An expert link ``g`` with its derivative ``g'``, and the Hermite orders the
    transforms of ``y`` cancel for it (see the module docstring)."""

    name: str
    func: Callable[[Array], Array]
    deriv: Callable[[Array], Array]
    p3_orders: tuple[int, int] | None = (1, 2)  # None: chosen by choose_orders
    p2_orders: tuple[int, ...] | None = (1,)


# The built-in links take NumPy arrays or, in the passes over a tensor, tensors
# (their functions come from namespace(u)).


def _identity(u: Array) -> Array:
    return u


def _ones(u: Array) -> Array:
    return namespace(u).ones_like(u)


def sigmoid(u: Array) -> Array:
    """``1 / (1 + exp(-u))`` for arrays or tensors."""
    xp = namespace(u)
    return expit(u) if xp is np else 0.5 + 0.5 * xp.tanh(0.5 * u)


def _sigmoid_deriv(u: Array) -> Array:
    s = sigmoid(u)
    return s * (1.0 - s)


def _relu(u: Array) -> Array:
    return namespace(u).maximum(u, 0.0)


def _step(u: Array) -> Array:
    return (u > 0) * namespace(u).ones_like(u)


def _tanh(u: Array) -> Array:
    return namespace(u).tanh(u)


def _tanh_deriv(u: Array) -> Array:
    t = _tanh(u)
    return 1.0 - t * t


LINKS: dict[str, Link] = {
    "linear": Link("linear", _identity, _ones),
    "sigmoid": Link("sigmoid", sigmoid, _sigmoid_deriv),
    "tanh": Link("tanh", _tanh, _tanh_deriv),
    "relu": Link("relu", _relu, _step, p3_orders=(2, 4), p2_orders=(1, 3)),
}


def get_link(name) -> Link:
    """The built-in link called ``name``, or a :class:`Link` for a callable ``g``.

    A callable must map arrays to arrays elementwise; its derivative is taken by
    central differences and the Hermite orders its transforms cancel are chosen by
    :func:`choose_orders`. ``ValueError`` names the choices otherwise.
    """
    if isinstance(name, Link):
        return name
    if callable(name):
        func = _on_host(name)
        return Link(
            getattr(name, "__name__", "custom"),
            func,
            _central_difference(func),
            p3_orders=None,
            p2_orders=None,
        )
    try:
        return LINKS[name]
    except (KeyError, TypeError):
        choices = ", ".join(repr(k) for k in LINKS)
        raise ValueError(
            f"unknown link {name!r}; choose one of {choices} or pass a callable"
        ) from None


def _on_host(g: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """A user's NumPy function ``g`` that also takes tensors (copied to the host
    and back)."""

    @wraps(g)
    def applied(u: Array) -> Array:
        if namespace(u) is np:
            return g(u)
        return like(np.asarray(g(to_host(u)), dtype=np.float64), u)

    return applied


def _central_difference(g: Callable[[Array], Array]) -> Callable[[Array], Array]:
    def deriv(u: Array) -> Array:
        h = 1e-5 * (1.0 + np.abs(u))
        return (g(u + h) - g(u - h)) / (2.0 * h)

    return deriv


def choose_orders(link: Link) -> Link:
    """The link with the Hermite orders its transforms cancel, by its symmetry.

    A link symmetric about a point, ``g(u) + g(-u) = 2 g(0)`` (linear, tanh,
    sigmoid: odd up to a constant), gets ``P3`` orders (1, 2) and ``P2`` order 1;
    a link without that symmetry (ReLU, softplus, ...) gets (2, 4) and a cubic
    ``P2`` with (1, 3), the ReLU choice of docs/method.md, section 3. (Measured on ReLU, k=2, d=10,
    n=1e6, 5 seeds: spectral error 0.04-0.08 with the cubic ``P2`` against
    0.05-0.18 with order 1 alone.) The symmetry is checked on the quadrature nodes.
    """
    if link.p3_orders is not None and link.p2_orders is not None:
        return link
    nodes, _ = _quadrature()
    g = link.func
    total = g(nodes) + g(-nodes)
    centre = 2.0 * g(np.zeros(1))[0]
    scale = max(float(np.max(np.abs(g(nodes)))), 1e-300)
    symmetric = bool(np.max(np.abs(total - centre)) <= 1e-8 * scale)
    if symmetric:
        return Link(link.name, link.func, link.deriv, (1, 2), (1,))
    return Link(link.name, link.func, link.deriv, (2, 4), (1, 3))


@lru_cache(maxsize=1)
def _quadrature(n_nodes: int = 120) -> tuple[Array, Array]:
    """Nodes and weights with ``sum(w * f(z)) = E[f(Z)]``, ``Z ~ N(0, 1)``."""
    nodes, weights = hermegauss(n_nodes)
    return nodes, weights / np.sqrt(2.0 * np.pi)


def gaussian_expectation(f: Callable[[Array], Array]) -> float:
    """``E[f(Z)]`` for ``Z ~ N(0, 1)`` by Gauss–Hermite quadrature."""
    nodes, weights = _quadrature()
    return float(weights @ f(nodes))


def _power_times_hermite(g: Callable, p: int, j: int, z: Array) -> Array:
    """``g(z)^p He_j(z)``."""
    return g(z) ** p * _hermite(j, z)


def _hermite(order: int, z: Array) -> Array:
    """Probabilists' Hermite polynomial ``He_order(z)``."""
    coef = np.zeros(order + 1)
    coef[order] = 1.0
    return hermeval(z, coef)


@dataclass(frozen=True)
class Transforms:
    """Coefficients of ``P3(y) = y^3 + alpha y^2 + beta y`` and
    ``P2(y) = delta y^3 + y^2 + gamma y``.

    ``beta = beta0 - 3 sigma^2`` and ``gamma = gamma0 - 3 delta sigma^2``: ``alpha``,
    ``beta0``, ``gamma0`` and ``delta`` do not depend on the noise, so a moment
    computed once at zero noise can be corrected for any noise level afterwards.
    """

    alpha: float
    beta0: float
    gamma0: float
    noise_std: float
    delta: float = 0.0

    @property
    def beta(self) -> float:
        return self.beta0 - 3.0 * self.noise_std**2

    @property
    def gamma(self) -> float:
        return self.gamma0 - 3.0 * self.delta * self.noise_std**2

    def at_noise(self, noise_std: float) -> Transforms:
        """The same transforms for another noise level."""
        return Transforms(
            self.alpha, self.beta0, self.gamma0, float(noise_std), self.delta
        )

    def p2(self, y: Array) -> Array:
        """``P2(y) = delta y^3 + y^2 + gamma y``."""
        return y * (y * (self.delta * y + 1.0) + self.gamma)

    def p3(self, y: Array) -> Array:
        """``P3(y) = y^3 + alpha y^2 + beta y``."""
        return y * (y * (y + self.alpha) + self.beta)


def transform_coefficients(link: Link, noise_std: float = 0.0) -> Transforms:
    """Solve the Hermite conditions for the transforms of ``y``.

    With moments ``M[m, j] = E[g(Z)^m He_j(Z)]`` over ``Z ~ N(0,1)``,
    ``E[phi3 He_j] = M[3, j] + 3 sigma^2 M[1, j] + alpha M[2, j] + beta M[1, j]``
    for the link's two ``p3_orders`` (a 2x2 linear system in ``alpha, beta0``), and
    ``E[phi2 He_j] = delta (M[3, j] + 3 sigma^2 M[1, j]) + M[2, j] + gamma M[1, j]``
    for its ``p2_orders`` (one order: ``delta = 0``; two: a 2x2 system in
    ``delta, gamma0``).

    Raises
    ------
    ValueError
        If a system is singular for this link (the conditions cannot be met).
    """
    link = choose_orders(link)
    assert link.p3_orders is not None and link.p2_orders is not None
    p3_orders, p2_orders = link.p3_orders, link.p2_orders
    orders = sorted({*p3_orders, *p2_orders})
    m = {
        (p, j): gaussian_expectation(partial(_power_times_hermite, link.func, p, j))
        for p in (1, 2, 3)
        for j in orders
    }
    singular = ValueError(
        f"the transform conditions are singular for link {link.name!r}: "
        "the spectral method cannot cancel the gate's cross terms for it"
    )
    j1, j2 = p3_orders
    system = np.array([[m[2, j1], m[1, j1]], [m[2, j2], m[1, j2]]])
    if abs(np.linalg.det(system)) < 1e-10:
        raise singular
    alpha, beta0 = np.linalg.solve(system, -np.array([m[3, j1], m[3, j2]]))
    if len(p2_orders) == 1:
        (j,) = p2_orders
        if abs(m[1, j]) < 1e-10:
            raise singular
        delta, gamma0 = 0.0, -m[2, j] / m[1, j]
    else:
        j1, j2 = p2_orders
        system = np.array([[m[3, j1], m[1, j1]], [m[3, j2], m[1, j2]]])
        if abs(np.linalg.det(system)) < 1e-10:
            raise singular
        delta, gamma0 = np.linalg.solve(system, -np.array([m[2, j1], m[2, j2]]))
    # Round away quadrature dust so that linear g gives exactly alpha = gamma = 0.
    alpha, beta0, gamma0, delta = (
        0.0 if abs(c) < 1e-12 else float(c) for c in (alpha, beta0, gamma0, delta)
    )
    return Transforms(alpha, beta0, gamma0, float(noise_std), delta)


@lru_cache(maxsize=1024)  # (a fit asks for the same few several times)
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
        return (
            transforms.delta * (gu**3 + 3.0 * s2 * gu) + gu * gu + transforms.gamma * gu
        )

    def phi3(u: Array) -> Array:
        gu = g(u)
        return gu**3 + 3.0 * s2 * gu + transforms.alpha * gu * gu + transforms.beta * gu

    c2 = gaussian_expectation(lambda z: phi2(r * z) * _hermite(2, z)) / r**2
    c3 = gaussian_expectation(lambda z: phi3(r * z) * _hermite(3, z)) / r**3
    return c2, c3
