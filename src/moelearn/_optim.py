"""Minibatch stochastic optimisation shared by the gradient-based learners.

One loop serves Method 2's losses and the gradient-descent baselines: each epoch
visits the rows in a fresh random order in minibatches, takes an Adam or SGD step
per batch with the rate ``learning_rate / sqrt(1 + epoch)``, and reports the
*tail average*: the mean iterate over the later half of the epochs so far
(Polyak–Ruppert averaging), which removes most of the minibatch noise. The loop
stops when two consecutive tail averages differ by less than ``tol`` in every
coordinate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray

#: A minibatch objective: ``(params, row indices) -> (loss, gradient)``.
BatchObjective = Callable[[Array, Array], tuple[float, Array]]

ADAM_BETAS = (0.9, 0.999)
#: SGD caps each step's norm at this multiple of the learning rate: the quartic
#: losses have gradients that grow like |params|^3, and an uncapped step from a
#: noisy batch can throw the iterate where the next gradient overflows.
SGD_MAX_STEP = 10.0


@dataclass
class OptimResult:
    params: Array
    converged: bool
    n_epochs: int
    loss_curve: list[float] = field(default_factory=list)


def minimize_minibatch(
    objective: BatchObjective,
    params: Array,
    n_samples: int,
    *,
    batch_size: int,
    learning_rate: float,
    optimizer: str,
    max_epochs: int,
    tol: float,
    rng: np.random.Generator,
    callback: Callable[[int, float, float], None] | None = None,
) -> OptimResult:
    """Minimise an average over rows by minibatch Adam or SGD with epoch averaging.

    Parameters
    ----------
    objective : ``(params, rows) -> (loss, grad)``, both means over ``rows``.
    params : starting point (flat array; not modified).
    n_samples : number of rows.
    batch_size, learning_rate, optimizer ('adam' or 'sgd'), max_epochs, tol : as
        in the estimators.
    rng : source of the row orders.
    callback : called as ``callback(epoch, mean_loss, change)`` after each epoch.

    Returns
    -------
    OptimResult with the last tail average, whether ``tol`` was reached, the
    number of epochs and the mean minibatch loss of each epoch.
    """
    x = np.array(params, dtype=float)
    first, second = np.zeros_like(x), np.zeros_like(x)
    beta1, beta2 = ADAM_BETAS
    batch_size = min(batch_size, n_samples)
    previous, result = x.copy(), OptimResult(x.copy(), False, 0)
    epoch_means: list[Array] = []
    t = 0
    for epoch in range(max_epochs):
        rate = learning_rate / np.sqrt(1.0 + epoch)
        order = rng.permutation(n_samples)
        total, average, n_steps = 0.0, np.zeros_like(x), 0
        for start in range(0, n_samples, batch_size):
            rows = np.sort(order[start : start + batch_size])  # sorted: faster gather
            loss, grad = objective(x, rows)
            if not (np.isfinite(loss) and np.all(np.isfinite(grad))):
                raise FloatingPointError(
                    f"the loss became non-finite in epoch {epoch + 1}; lower "
                    "learning_rate or standardise y"
                )
            t += 1
            if optimizer == "adam":
                first = beta1 * first + (1.0 - beta1) * grad
                second = beta2 * second + (1.0 - beta2) * grad * grad
                m_hat = first / (1.0 - beta1**t)
                v_hat = second / (1.0 - beta2**t)
                x = x - rate * m_hat / (np.sqrt(v_hat) + 1e-8)
            else:
                step = rate * grad
                norm = float(np.linalg.norm(step))
                if norm > SGD_MAX_STEP * rate:
                    step *= SGD_MAX_STEP * rate / norm
                x = x - step
            total += loss * len(rows)
            average += x
            n_steps += 1
        epoch_means.append(average / n_steps)
        average = np.mean(epoch_means[len(epoch_means) // 2 :], axis=0)
        change = float(np.max(np.abs(average - previous)))
        result.loss_curve.append(total / n_samples)
        result.params, result.n_epochs = average, epoch + 1
        if callback is not None:
            callback(epoch + 1, result.loss_curve[-1], change)
        if epoch > 0 and change < tol:
            result.converged = True
            break
        previous = average
    return result


class MinibatchMixin:
    """For estimators with ``batch_size``, ``learning_rate``, ``optimizer``,
    ``max_iter`` (epochs), ``tol`` and ``verbose``: run :func:`minimize_minibatch`
    with those settings, logging each epoch at ``verbose >= 2``."""

    # (set by the estimator's __init__; _log comes from moelearn._base.MoEBase)
    batch_size: int
    learning_rate: float
    optimizer: str
    max_iter: int
    tol: float
    verbose: int
    _log: Callable[[int, str], None]

    def _minimise(
        self, objective: BatchObjective, start: Array, n_samples: int, rng, stage: str
    ) -> OptimResult:
        def log(epoch: int, loss: float, change: float) -> None:
            self._log(
                2, f"{stage} epoch {epoch:3d}: loss {loss:.6f}, change {change:.2e}"
            )

        return minimize_minibatch(
            objective,
            start,
            n_samples,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
            max_epochs=self.max_iter,
            tol=self.tol,
            rng=rng,
            callback=log if self.verbose >= 2 else None,
        )
