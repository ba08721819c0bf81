"""Method 2 kernels: the fourth-order tensor loss ``L4`` from samples (docs/method.md, section 4).

For standard Gaussian ``x`` the fourth Stein score contracted with ``(u, u, v, v)``
is a polynomial in the projections ``p_u = u . x``, ``p_v = v . x`` and the Gram
entries ``n_u = |u|^2``, ``g = u . v``:

``S4(x)(u, u, v, v) = p_u^2 p_v^2 - p_u^2 n_v - p_v^2 n_u - 4 p_u p_v g
+ n_u n_v + 2 g^2``,

so ``T4(u, u, v, v) = E[P4(y) S4(x)(u, u, v, v)]`` is an average over samples and
the loss

``L4(U) = sum_{j != k} T4(u_j, u_j, u_k, u_k) - mu sum_j T4(u_j, u_j, u_j, u_j)``

costs ``O(b d k + b k^2)`` for ``b`` rows and ``k`` columns of ``U``, never a
``d^4`` array. The norm penalty of ``L4`` acts on other coordinates and is added
by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class TensorLossTerms:
    """Sample value of the tensor part of ``L4`` and the pieces of its gradient.

    The gradient with respect to ``U`` (d, k) is
    ``Z^T coef_rows + U coef_columns`` for the rows ``Z`` (b, d) that gave the
    projections ``P = Z U``.
    """

    value: float
    coef_rows: Array  # (b, k)
    coef_columns: Array  # (k, k)


def coupling_matrix(n_columns: int, mu: float) -> Array:
    """``C`` with ``L4 = sum_jk C_jk T4(u_j, u_j, u_k, u_k)``: 1 off the diagonal, ``-mu`` on it."""
    return np.ones((n_columns, n_columns)) - (1.0 + mu) * np.eye(n_columns)


def tensor_loss_terms(
    P: Array, weights: Array, gram: Array, C: Array
) -> TensorLossTerms:
    r"""``sum_i w_i sum_jk C_jk S4(z_i)(u_j, u_j, u_k, u_k)`` and its gradient.

    Parameters
    ----------
    P : (b, k) projections ``z_i . u_j`` of the rows on the columns of ``U``.
    weights : (b,) per-row weights ``w_i`` (``P4(y_i) / n`` for a mean).
    gram : (k, k) ``U^T U``.
    C : (k, k) symmetric coupling, e.g. :func:`coupling_matrix`.

    Notes
    -----
    With ``A = P^T diag(w) P``, ``B = (P^2)^T diag(w) P^2``, ``a = diag(A)``,
    ``n = diag(G)``, ``s = sum_i w_i``:

    ``value = sum C * (B - a n^T - n a^T - 4 A * G + s (n n^T + 2 G * G))``;

    ``d/du_j = 2 sum_k C_jk d_1 S4(u_j, u_k)`` with
    ``d_1 S4(u, v) = z (2 p_u p_v^2 - 2 p_u n_v - 4 p_v g) + u (2 n_v - 2 p_v^2)
    + v (4 g - 4 p_u p_v)``.
    """
    w = weights[:, None]
    sq = P * P
    wP = w * P
    A = P.T @ wP
    B = sq.T @ (w * sq)
    a = np.diag(A)
    n = np.diag(gram)
    s = float(weights.sum())
    value = float(
        np.sum(
            C
            * (
                B
                - np.outer(a, n)
                - np.outer(n, a)
                - 4.0 * A * gram
                + s * (np.outer(n, n) + 2.0 * gram * gram)
            )
        )
    )
    coef_rows = 4.0 * wP * (sq @ C) - 4.0 * wP * (C @ n) - 8.0 * (wP @ (C * gram))
    diagonal = 4.0 * (C @ (s * n - a))
    coef_columns = 8.0 * C * (s * gram - A) + np.diag(diagonal)
    return TensorLossTerms(value, coef_rows, coef_columns)
