"""moelearn: mixtures of experts learned by consistent, globally initialised algorithms."""

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

__version__ = "0.1.0"

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
