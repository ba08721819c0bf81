"""moelearn: mixtures of experts learned by consistent, globally initialised algorithms.

The public names are imported on first use (PEP 562), so that the command line
starts without loading scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {
    "EMMoE": "moelearn.baselines",
    "GradientMoE": "moelearn.baselines",
    "make_hme": "moelearn.datasets",
    "make_moe": "moelearn.datasets",
    "SpectralMoE": "moelearn.estimators",
    "ExpertsDroppedWarning": "moelearn.exceptions",
    "FitError": "moelearn.exceptions",
    "NonGaussianInputWarning": "moelearn.exceptions",
    "SpectralReliabilityWarning": "moelearn.exceptions",
    "HierarchicalMoE": "moelearn.hierarchical",
    "parameter_error": "moelearn.metrics",
    "ExpertSelection": "moelearn.selection",
    "select_n_experts": "moelearn.selection",
    "TensorLossMoE": "moelearn.tensor_loss",
}

__all__ = [
    "EMMoE",
    "ExpertSelection",
    "ExpertsDroppedWarning",
    "FitError",
    "GradientMoE",
    "HierarchicalMoE",
    "NonGaussianInputWarning",
    "SpectralMoE",
    "SpectralReliabilityWarning",
    "TensorLossMoE",
    "__version__",
    "make_hme",
    "make_moe",
    "parameter_error",
    "select_n_experts",
]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'moelearn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and editors
    from moelearn.baselines import EMMoE, GradientMoE
    from moelearn.datasets import make_hme, make_moe
    from moelearn.estimators import SpectralMoE
    from moelearn.exceptions import (
        ExpertsDroppedWarning,
        FitError,
        NonGaussianInputWarning,
        SpectralReliabilityWarning,
    )
    from moelearn.hierarchical import HierarchicalMoE
    from moelearn.metrics import parameter_error
    from moelearn.selection import ExpertSelection, select_n_experts
    from moelearn.tensor_loss import TensorLossMoE
