import numpy as np
import pytest

from moelearn._links import (
    gaussian_expectation,
    get_link,
    tensor_constants,
    transform_coefficients,
)


def test_quadrature_gaussian_moments():
    for power, moment in [(2, 1.0), (4, 3.0), (6, 15.0), (8, 105.0)]:
        assert gaussian_expectation(lambda z, p=power: z**p) == pytest.approx(
            moment, rel=1e-12
        )


@pytest.mark.parametrize("sigma", [0.0, 0.1, 0.5])
def test_linear_transforms_are_hermite_like(sigma):
    t = transform_coefficients(get_link("linear"), sigma)
    assert t.alpha == 0.0 and t.gamma == 0.0
    assert t.beta == pytest.approx(-3 * (1 + sigma**2), rel=1e-12)
    assert tensor_constants(t, get_link("linear"), 1.0) == pytest.approx(
        (2.0, 6.0), rel=1e-10
    )
    # Linear experts: the constants do not depend on |a|.
    assert tensor_constants(t, get_link("linear"), 1.7) == pytest.approx(
        (2.0, 6.0), rel=1e-10
    )


def test_sigmoid_system_reproduces_the_talk():
    """The talk's 2x2 system for sigmoid experts: [[0.2067, 0.2066], [0.0624, -0.0001]]
    [alpha, beta] = [-0.1755 - 0.6199 sigma^2, -0.0936]."""
    sigma = 0.3
    t = transform_coefficients(get_link("sigmoid"), sigma)
    lhs = np.array([[0.2067, 0.2066], [0.0624, -0.0001]]) @ [t.alpha, t.beta]
    np.testing.assert_allclose(lhs, [-0.1755 - 0.6199 * sigma**2, -0.0936], atol=2e-4)
    assert t.alpha == pytest.approx(-1.5, abs=1e-6)
    assert t.gamma == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["linear", "sigmoid", "tanh", "relu"])
def test_hermite_conditions_hold(name):
    """E[phi3 He_j] = 0 for the link's p3_orders and E[phi2 He_j] = 0 for its
    p2_orders, with the noise included in phi."""
    from moelearn._links import _hermite

    link, sigma = get_link(name), 0.2
    t = transform_coefficients(link, sigma)
    g = link.func

    def phi3(z):
        gz = g(z)
        return gz**3 + 3 * sigma**2 * gz + t.alpha * (gz**2 + sigma**2) + t.beta * gz

    def phi2(z):
        gz = g(z)
        return t.delta * (gz**3 + 3 * sigma**2 * gz) + gz**2 + sigma**2 + t.gamma * gz

    for j in link.p3_orders:
        assert (
            abs(gaussian_expectation(lambda z, j=j: phi3(z) * _hermite(j, z))) < 1e-10
        )
    for j in link.p2_orders:
        assert (
            abs(gaussian_expectation(lambda z, j=j: phi2(z) * _hermite(j, z))) < 1e-10
        )
    if name == "relu":  # no parity: both transforms need their extra freedom
        assert link.p3_orders == (2, 4) and t.delta != 0


@pytest.mark.parametrize("link", ["sigmoid", "tanh"])
@pytest.mark.parametrize("r_true", [0.6, 1.0, 1.6])
def test_common_norm_recovers_the_norm_even_with_two_roots(link, r_true):
    """|c2(r)| r^2 rises and falls for saturating links (tanh peaks near r = 1),
    so the whitening equation has two roots; the tensor eigenvalues pick the right
    one. Exact population inputs: nu_i^2 = |c2| p_i r^2, lambda_i = c3 s_i / |c2|."""
    from moelearn._spectral import _common_norm

    g = get_link(link)
    t = transform_coefficients(g, 0.1)
    c2, c3 = tensor_constants(t, g, r_true)
    p = np.array([0.4, 0.6])
    nu = np.sqrt(abs(c2) * p) * r_true
    eigenvalues = c3 * (r_true / nu) / abs(c2)
    assert _common_norm(t, g, nu, eigenvalues) == pytest.approx(r_true, rel=1e-6)


def test_callable_links_get_the_builtin_transforms():
    """A callable is classified by its symmetry: tanh as a function gets tanh's
    transforms; a ReLU written by hand gets ReLU's (cubic P2)."""
    t_callable = transform_coefficients(get_link(np.tanh), 0.1)
    assert t_callable == transform_coefficients(get_link("tanh"), 0.1)
    relu = transform_coefficients(get_link(lambda u: np.where(u > 0, u, 0.0)), 0.1)
    assert relu == pytest.approx(transform_coefficients(get_link("relu"), 0.1))
    assert get_link(np.tanh).deriv(np.array([0.3])) == pytest.approx(
        1 - np.tanh(0.3) ** 2, rel=1e-8
    )


def test_unknown_link_names_the_choices():
    with pytest.raises(ValueError, match=r"choose one of 'linear'.*or pass a callable"):
        get_link("softplus")
