import os

import numpy as np
import pytest

import moelearn._passes as passes


@pytest.fixture
def global_random_seed():
    """Fixed seed; MOELEARN_TEST_SEED overrides it to sweep seeds."""
    return int(os.environ.get("MOELEARN_TEST_SEED", "0"))


@pytest.fixture
def small_chunks():
    """Force many row chunks (100 rows each) so chunked accumulation is exercised."""
    with passes.fixed_chunk_rows(100):
        yield


def correlated_inputs(n, d, rng, mean_scale=0.3):
    """Gaussian rows with a random mean and a random non-identity covariance."""
    B = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
    mean = mean_scale * rng.standard_normal(d)
    return rng.standard_normal((n, d)) @ B.T + mean


def two_lines(n: int, noise: float, seed: int = 3):
    """One input column, two regression lines (mixtools' CO2 shape): 40 % of
    the rows on ``2 + x``, the rest on ``-1 - x / 2``; ``(X, y)``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 1))
    y = np.where(rng.random(n) < 0.4, 2.0 + X[:, 0], -1.0 - 0.5 * X[:, 0])
    return X, y + noise * rng.standard_normal(n)


#: Generated cases per fuzz target (tests/test_fuzz.py), reported after the run.
FUZZ_CASES: dict[str, int] = {}


def pytest_terminal_summary(terminalreporter):
    if FUZZ_CASES:
        terminalreporter.section("fuzzing: generated cases per target")
        for name, count in FUZZ_CASES.items():
            terminalreporter.write_line(f"{name}: {count}")
