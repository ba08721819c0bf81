"""Shared by the benchmark scripts."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from moelearn import SpectralMoE


def emit(text: str, out: Path | None) -> None:
    """Print a report and, if ``out`` is given, write it there (folders created)."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def timed_fit(X, y) -> tuple[SpectralMoE, float]:
    """``SpectralMoE(random_state=0, tol=1e-8).fit(X, y)`` (warnings silenced) and
    its time in seconds."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpectralMoE(random_state=0, tol=1e-8).fit(X, y)
    return model, time.perf_counter() - start


def largest_relative_difference(model: SpectralMoE, reference: SpectralMoE) -> float:
    """The largest difference of the experts or gates of two fits, relative to the
    reference's largest entry."""
    return max(
        float(np.abs(a - b).max() / np.abs(b).max())
        for a, b in (
            (model.experts_, reference.experts_),
            (model.gating_, reference.gating_),
        )
    )
