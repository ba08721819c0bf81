"""Numpydoc entries that many docstrings share, written once.

A docstring line that holds only ``{name}`` stands for the entry
``ENTRIES[name]``, indented as the placeholder is, and ``{Section:name}`` for the
section's header (``Parameters`` and its underline) followed by the entry;
:func:`shared_entries` fills them in when the module is imported, so ``help()``, the documentation and the
numpydoc check (``tests/test_docstrings.py``) see the full text. An unknown name
fails at import.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any, TypeVar

_X = "X : array-like of shape (n_samples, n_features)"
_Y = "y : array-like of shape (n_samples,)"
_X_FITTED = f"{_X}\n    Inputs with the columns the model was fitted on."

ENTRIES = {
    # the fitted model's methods
    "X": _X_FITTED,
    "X_y": f"{_X_FITTED}\n{_Y}\n    Targets.",
    # fitting
    "X_y_fit": f"{_X}\n    Inputs.\n{_Y}\n    Targets.",
    # uncertainty: the fitted rows again
    "X_y_fitted": f"{_X}\n    The rows the model was fitted on.\n{_Y}\n"
    "    Their targets.",
    "fitted": "object\n    The fitted estimator (``self``).",
    "bootstrap_options": (
        "sample_weight : array-like of shape (n_samples,), optional\n"
        "    The weights the model was fitted with.\n"
        "n_bootstrap : int, default=200\n"
        "    Resamples, for ``kind='bootstrap'``.\n"
        "random_state : int, Generator or None\n"
        "    For the bootstrap's resamples."
    ),
    # the baselines' and the tensor loss's attributes
    "fitted_like_spectral": (
        "experts_, gating_, noise_std_ : as in :class:`moelearn.SpectralMoE`"
    ),
    "fit_record": "fit_times_ : dict\nn_features_in_ : int",
    # the random starts of the baselines
    "random_starts": (
        "n_init : int, default=5\n"
        "    Random starts; the best by log-likelihood is kept.\n"
        "init_gate_norm : float, default=1.0\n"
        "    Norm of the random starting gate rows (whitened units)."
    ),
    "seeded_starts": (
        "random_state : int, Generator or None, default=None\n"
        "    Seeds the random starts.\n"
        "verbose : int, default=0\n"
        "    ``1`` prints each start's result to stderr."
    ),
    # the simulators
    "simulated_rows": "n_samples, n_features : int\n    Rows and input columns.",
    "simulated_experts": (
        "link : {'linear', 'sigmoid'}, default='linear'\n"
        "    The experts' link ``g``.\n"
        "noise_std : float, default=0.1\n"
        "    Standard deviation of the Gaussian noise on ``y``."
    ),
    "simulated_table": (
        "X : ndarray of shape (n_samples, n_features)\n"
        "    The inputs.\n"
        "y : ndarray of shape (n_samples,)\n"
        "    The targets."
    ),
}

_PLACEHOLDER = re.compile(r"^([ \t]*)\{(?:(\w+):)?(\w+)\}[ \t]*$", re.MULTILINE)

T = TypeVar("T")


def fill(doc: str) -> str:
    """``doc`` with every placeholder line replaced by its entry."""

    def entry(match: re.Match) -> str:
        indent, section, name = match.groups()
        header = f"{section}\n{'-' * len(section)}\n" if section else ""
        return textwrap.indent(header + ENTRIES[name], indent)

    return _PLACEHOLDER.sub(entry, doc)


def shared_entries(obj: T) -> T:
    """Decorator: fill the placeholders of a function's docstring, or of a
    class's and its own methods' (functions, class and static methods,
    properties)."""
    targets: list[Any] = [obj]
    if isinstance(obj, type):
        for value in vars(obj).values():
            if isinstance(value, classmethod | staticmethod):
                targets.append(value.__func__)
            elif isinstance(value, property) or callable(value):
                targets.append(value)  # (a property has its own docstring copy)
    for target in targets:
        doc = getattr(target, "__doc__", None)
        if doc and "{" in doc:
            target.__doc__ = fill(doc)
    return obj
