"""The array layer: one kernel for NumPy arrays and PyTorch tensors.

Kernels take their array functions from ``xp = namespace(chunk)`` (NumPy, or the
array API namespace that wraps torch, from ``array_api_compat``) and move their
NumPy parameters next to the chunk with ``like(parameter, chunk)``; their results
come back to the host with :func:`to_host`. Dask arrays and tensors are recognised
without importing either library. What scikit-learn calls ``get_namespace`` and
friends; no pass over the rows here (that is :mod:`moelearn._passes`).
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeGuard

import numpy as np
from threadpoolctl import ThreadpoolController

Array = np.ndarray


def is_torch(X: Any) -> TypeGuard[Any]:
    """Whether ``X`` is a PyTorch tensor (checked without importing torch)."""
    return type(X).__module__.startswith("torch") and hasattr(X, "detach")


def is_dask(X: Any) -> TypeGuard[Any]:
    """Whether ``X`` is a Dask array (checked without importing Dask)."""
    return type(X).__module__.startswith("dask.") and hasattr(X, "to_delayed")


def to_host(v: Any) -> Any:
    """A PyTorch tensor or a Dask array as NumPy (copied to the host or computed);
    anything else unchanged."""
    if is_torch(v):
        return v.detach().cpu().numpy()
    return v.compute() if is_dask(v) else v


def _host(chunk: Any) -> Array:
    """A chunk as a float64 NumPy array (a PyTorch chunk is copied to the host)."""
    return np.asarray(to_host(chunk), dtype=np.float64)


def _host_results(result: Any) -> Any:
    """A kernel's result (tensors, floats, None, tuples of them) with NumPy arrays
    in place of tensors."""
    if isinstance(result, tuple):
        return tuple(_host_results(item) for item in result)
    return to_host(result)


def namespace(x: Any) -> Any:
    """The array functions for ``x``: ``numpy`` for NumPy arrays, and for a PyTorch
    tensor the array API namespace that wraps torch (``array_api_compat``, in the
    ``torch`` extra). Kernels use only what both offer."""
    if not is_torch(x):
        return np
    from array_api_compat import array_namespace

    return array_namespace(x)


def like(a: Any, x: Any) -> Any:
    """A kernel's NumPy parameter ``a`` as an array of ``x``'s kind: unchanged when
    ``x`` is a NumPy array, else a tensor on ``x``'s device (same dtype as ``a``)."""
    if a is None or not is_torch(x):
        return a
    import torch

    return torch.as_tensor(a, device=x.device)


def projections(A: Any, xc: Any) -> Any:
    """``A @ xc.T``: each row of ``A`` (a NumPy ``(m, d)`` array) against every row
    of the chunk, ``(m, rows)`` (with contiguous rows for NumPy).

    Computed as ``(xc @ A.T).T``: for few rows in ``A`` OpenBLAS takes two to three
    times longer over ``A @ xc.T`` (2621 x 50 chunks of n = 1e6 rows: 70 ms against
    24 ms for m = 2, 74 against 37 ms for m = 4).
    """
    product = xc @ like(A.T, xc)
    if namespace(xc) is np:
        return np.ascontiguousarray(product.T)
    return product.T


def empty(x: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """An uninitialised array of ``x``'s kind (and device), of a dtype of
    ``namespace(x)``."""
    if not is_torch(x):
        return np.empty(shape, dtype)
    import torch

    return torch.empty(shape, dtype=dtype, device=x.device)


def concat(arrays: list, axis: int = 0) -> Any:
    """Arrays of one kind joined along ``axis``."""
    xp = namespace(arrays[0])
    if xp is np:
        return np.concatenate(arrays, axis=axis)
    return xp.concat(arrays, axis=axis)


def einsum(subscripts: str, *operands: Any) -> Any:
    """``numpy.einsum`` or, for tensors, ``torch.einsum`` (not in the array API)."""
    if not is_torch(operands[0]):
        return np.einsum(subscripts, *operands)
    import torch

    return torch.einsum(subscripts, *operands)


def _on_device(chunk: Any) -> Any:
    """A tensor chunk in float64 where it lives, detached from autograd."""
    import torch

    return chunk.detach().to(dtype=torch.float64)


def add_results(*parts: Any) -> Any:
    """Sum kernel results of the same structure (arrays, floats, tuples of them)."""
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(add_results(*items) for items in zip(*parts, strict=True))
    if first is None:
        return None
    if is_torch(first):
        total = first.clone()
    else:
        total = np.array(first, dtype=float, copy=True) if np.ndim(first) else first
    for part in parts[1:]:
        total = total + part
    return total


@cache
def _blas_controller() -> ThreadpoolController:
    """The loaded BLAS libraries, found once: finding them walks every loaded
    library (4 ms a call measured with SciPy, scikit-learn and Numba loaded:
    0.13 s of a 1.8 s fit on Boston, which calls EM 33 times)."""
    return ThreadpoolController()


def blas_threads() -> int:
    """The most threads the loaded BLAS libraries may use now (1 without BLAS)."""
    found = _blas_controller().select(user_api="blas").lib_controllers
    return max((lib.num_threads for lib in found), default=1)


def one_blas_thread() -> Any:
    """A context in which BLAS runs on one thread: for products too small to
    share out across cores, and beside code that runs its own threads."""
    return _blas_controller().limit(limits=1, user_api="blas")
