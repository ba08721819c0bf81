"""The experiment harness: tables and figures come from the per-fit CSV rows."""

import csv

import pytest

from moelearn import experiments


@pytest.fixture
def hard_case_rows(tmp_path):
    rows = [
        {
            "case": "nominal",
            "seed": s,
            "method": m,
            "error": e,
            "success": int(e < 0.1),
            "found_mle": f,
            "seconds": t,
        }
        for s in (0, 1)
        for m, e, f, t in (
            ("spectral+EM", 0.02, 1, 0.3),
            ("EM", 0.9 if s else 0.02, 1 - s, 0.4),
        )
    ]
    with open(tmp_path / "hard_cases.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def test_summary_counts_successes_and_optima(hard_case_rows):
    text = experiments.summarize(hard_case_rows).read_text()
    assert "| nominal | spectral+EM | 100% (2/2) | 100% | 0.0200 | 0.30 |" in text
    assert "| nominal | EM | 50% (1/2) | 50% | 0.4600 | 0.40 |" in text


def test_hard_case_figure_is_drawn_from_the_csv(hard_case_rows):
    pytest.importorskip("matplotlib")
    experiments.plot_hard_cases(hard_case_rows)
    assert (hard_case_rows / "hard_cases.png").stat().st_size > 10_000


def test_correlated_experts_have_the_asked_cosine():
    import numpy as np

    X, y, truth = experiments.correlated_experts(1_000, 10, 0.9, seed=3)
    A = truth["experts"]
    np.testing.assert_allclose(np.linalg.norm(A, axis=1), 1.0)
    assert A[0] @ A[1] == pytest.approx(0.9)
    assert X.shape == (1_000, 10) and np.isfinite(y).all()
