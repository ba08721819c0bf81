"""PyTorch tensors as inputs (the ``torch`` extra; run here on the CPU build):
the pass kernels run on the tensor's chunks where it lives, fits equal the NumPy
fits, and outputs come back as tensors of the input's dtype and device."""

import warnings

import numpy as np
import pytest

from moelearn import (
    EMMoE,
    GradientMoE,
    HierarchicalMoE,
    SpectralMoE,
    _em,
    _passes,
    make_hme,
    make_moe,
    select_n_experts,
)
from moelearn._scores import fit_mixture_density

torch = pytest.importorskip("torch")


@pytest.fixture
def kernels_on_tensors(monkeypatch):
    """Fails the test if a pass over a tensor hands its kernel anything but tensors
    (the kernels must run on the chunks where the tensor lives). Returns the kinds
    of ``X`` the passes saw. (Row subsets taken with ``take_rows`` -- a Newton
    subset, the rows the marginal shape is measured on -- do come to the host.)"""
    seen = set()
    run = _passes._kernel_args

    def checked(X, rows, per_row):
        args = run(X, rows, per_row)
        if _passes.is_torch(X):
            assert all(_passes.is_torch(a) for a in args), "a chunk left the device"
        seen.add(type(X).__module__.split(".")[0])
        return args

    monkeypatch.setattr(_passes, "_kernel_args", checked)
    return seen


def _fit(model, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X, y, **kw)


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: SpectralMoE(random_state=0),
        lambda: SpectralMoE(fit_intercept=True, random_state=0),
        lambda: EMMoE(n_init=2, random_state=0),
    ],
    ids=["spectral", "spectral-intercept", "em"],
)
def test_tensor_fit_equals_the_numpy_fit(make_model, kernels_on_tensors):
    X, y, _ = make_moe(20_000, 5, random_state=4)
    w = np.random.default_rng(0).random(len(y))
    # requires_grad: NumPy cannot take the whole tensor, so only chunks are read
    Xt = torch.from_numpy(X).requires_grad_()
    on_tensors = _fit(make_model(), Xt, torch.from_numpy(y), sample_weight=w)
    with pytest.raises(RuntimeError, match="requires grad"):
        np.asarray(Xt)
    on_arrays = _fit(make_model(), X, y, sample_weight=w)
    np.testing.assert_allclose(on_tensors.experts_, on_arrays.experts_, rtol=1e-10)
    np.testing.assert_allclose(on_tensors.gating_, on_arrays.gating_, rtol=1e-10)
    assert "torch" in kernels_on_tensors


@pytest.mark.parametrize("density", ["mixture", "score"])
def test_input_density_scores_on_tensors(density):
    """The mixture's and a score callable's passes take tensor chunks (their
    kernels compute on the host): the fit equals the NumPy fit. (On arrays the
    mixture's T3 pass reuses single-precision responsibilities, so to 1e-6.)"""
    X, y, _ = make_moe(20_000, 4, inputs="mixture", random_state=1)
    option: object = "mixture"
    if density == "score":  # grad log p = -S1 of a mixture fitted to X
        mixture = fit_mixture_density(X, 3, np.random.default_rng(0))[0]
        option = lambda x: -mixture.score_s1(x)  # noqa: E731

    def make():
        return SpectralMoE(input_density=option, random_state=0)

    on_tensors = _fit(make(), torch.from_numpy(X), torch.from_numpy(y))
    on_arrays = _fit(make(), X, y)
    assert on_arrays.diagnostics_["input_density"]["name"] != "gaussian"
    np.testing.assert_allclose(on_tensors.experts_, on_arrays.experts_, rtol=1e-6)
    np.testing.assert_allclose(on_tensors.gating_, on_arrays.gating_, rtol=1e-6)


@pytest.mark.parametrize("link", ["sigmoid", "relu", "tanh", np.sinh])
def test_links_run_on_tensors(link, kernels_on_tensors):
    """Every built-in link's kernels, and a user's NumPy link (copied to the host
    for the link alone), on tensors; a Newton subset (n > 20000) so that EM's
    full-data gradient pass runs on the tensor, not in the compiled NumPy pass.
    Unweighted, the input pass sums in single precision, which NumPy's and torch's
    BLAS round differently: the fits differ by up to 5e-8 (relative, measured)."""
    name = link if isinstance(link, str) else "linear"
    X, y, _ = make_moe(30_000, 4, link=name, random_state=2)
    make = lambda: SpectralMoE(link=link, random_state=0)  # noqa: E731
    on_tensors = _fit(make(), torch.from_numpy(X), torch.from_numpy(y))
    on_arrays = _fit(make(), X, y)
    np.testing.assert_allclose(on_tensors.experts_, on_arrays.experts_, rtol=1e-6)
    np.testing.assert_allclose(on_tensors.gating_, on_arrays.gating_, rtol=1e-6)
    assert "torch" in kernels_on_tensors


def test_tree_gates_and_structured_curvature_on_tensors(
    monkeypatch, kernels_on_tensors
):
    """The tree gate's kernels (HME) and the structured Newton matrices (forced
    here at d = 4; normally above 600 features) on tensors. Compared as models
    (predictions, likelihood): a tree and its mirror image (leaves reversed, node
    gates negated) are the same model with the same likelihood, and rounding
    decides which of the two the arrangement screen keeps. At the default ``tol``
    EM stops after 2 iterations, far enough from its fixed point that rounding
    moves the result by 1e-5, so it runs to ``tol=1e-8`` here."""
    X, y, _ = make_hme(20_000, 4, depth=2, random_state=3)
    make = lambda: HierarchicalMoE(depth=2, tol=1e-8, random_state=0)  # noqa: E731
    for structured in (False, True):
        if structured:
            monkeypatch.setattr(_em, "STRUCTURED_CURVATURE_FEATURES", 3)
        on_tensors = _fit(make(), torch.from_numpy(X), torch.from_numpy(y))
        on_arrays = _fit(make(), X, y)
        assert on_tensors.score(X, y) == pytest.approx(on_arrays.score(X, y), rel=1e-9)
        np.testing.assert_allclose(
            on_tensors.predict(X), on_arrays.predict(X), rtol=1e-6, atol=1e-6
        )
    assert "torch" in kernels_on_tensors


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_outputs_keep_the_tensor_dtype_and_shape(dtype):
    X, y, _ = make_moe(10_000, 4, random_state=1)
    model = _fit(SpectralMoE(random_state=0), X, y)
    Xt = torch.from_numpy(X).to(getattr(torch, dtype)).requires_grad_()
    pred, proba = model.predict(Xt), model.predict_proba(Xt)
    assert isinstance(pred, torch.Tensor) and pred.dtype == Xt.dtype
    assert tuple(pred.shape) == (10_000,) and tuple(proba.shape) == (10_000, 2)
    assert proba.dtype == Xt.dtype and pred.device == Xt.device
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(
        pred.detach().numpy(), model.predict(X), rtol=tol, atol=tol
    )
    drawn, expert = model.sample(Xt, random_state=0)
    assert drawn.dtype == Xt.dtype and tuple(expert.shape) == (10_000,)
    assert model.score(Xt, torch.from_numpy(y)) == pytest.approx(
        model.score(X, y), rel=1e-5
    )


def test_tensor_errors_are_clear():
    X, y, _ = make_moe(5_000, 4, random_state=1)
    bad = torch.from_numpy(X.copy())
    bad[17, 3] = float("nan")
    with pytest.raises(ValueError, match="X contains 1 non-finite value"):
        SpectralMoE().fit(bad, y)
    with pytest.raises(TypeError, match="GradientMoE draws random minibatches"):
        GradientMoE().fit(torch.from_numpy(X), y)


def test_select_n_experts_on_tensors(kernels_on_tensors):
    X, y, _ = make_moe(20_000, 4, n_experts=3, random_state=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xt = torch.from_numpy(X).requires_grad_()
        on_tensors = select_n_experts(Xt, y, max_experts=3)
    assert on_tensors.n_experts == 3
