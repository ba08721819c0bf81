"""The warnings and errors moelearn raises (scikit-learn's ``ConvergenceWarning``
is used as it is)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import FrameType

from sklearn.exceptions import ConvergenceWarning

__all__ = [
    "ConvergenceWarning",
    "ExpertsDroppedWarning",
    "FitError",
    "NonGaussianInputWarning",
    "SpectralReliabilityWarning",
]


class NonGaussianInputWarning(UserWarning):
    """The inputs look far from Gaussian, so Method 1's guarantees do not apply."""


class SpectralReliabilityWarning(UserWarning):
    """The moments do not have the structure the model implies: the spectral start
    (and so the fit) may be poor."""


class ExpertsDroppedWarning(UserWarning):
    """EM dropped experts whose share of the posterior weight fell below its floor:
    the data support fewer experts than asked for (``n_experts_`` says how many)."""


class FitError(RuntimeError):
    """A fit ended in a state that cannot be returned (non-finite parameters)."""


def not_converged_message(what: str, max_iter: int, tol: float) -> str:
    """The one wording of "did not converge" the estimators share."""
    return (
        f"{what} did not converge within max_iter={max_iter} iterations "
        f"(tol={tol}). Increase max_iter or tol; check that n_experts and link "
        "suit the data."
    )


_PACKAGE = str(Path(__file__).resolve().parent)


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first caller outside moelearn (the
    user's line that called ``fit``), however deep in the package it is raised:
    a fixed ``stacklevel`` points into the package once a call is wrapped."""
    frame: FrameType | None = sys._getframe(1)  # (stacklevel 2: warn's caller)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
