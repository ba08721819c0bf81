"""PyTorch tensors as inputs (the ``torch`` extra; run here on the CPU build):
passes read them chunk by chunk, fits equal the NumPy fits, and outputs come back
as tensors of the input's dtype and device."""

import warnings

import numpy as np
import pytest

from moelearn import EMMoE, GradientMoE, SpectralMoE, make_moe, select_n_experts

torch = pytest.importorskip("torch")


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
def test_tensor_fit_equals_the_numpy_fit(make_model):
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


def test_select_n_experts_on_tensors():
    X, y, _ = make_moe(20_000, 4, n_experts=3, random_state=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xt = torch.from_numpy(X).requires_grad_()
        on_tensors = select_n_experts(Xt, y, max_experts=3)
    assert on_tensors.n_experts == 3
