"""moelearn: mixtures of experts learned by consistent, globally initialised algorithms."""

from moelearn.baselines import EMMoE
from moelearn.datasets import make_moe
from moelearn.estimators import (
    NonGaussianInputWarning,
    SpectralMoE,
    SpectralReliabilityWarning,
)
from moelearn.metrics import parameter_error

__version__ = "0.1.0"

__all__ = [
    "EMMoE",
    "NonGaussianInputWarning",
    "SpectralMoE",
    "SpectralReliabilityWarning",
    "__version__",
    "make_moe",
    "parameter_error",
]
