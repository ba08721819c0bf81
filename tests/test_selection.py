"""select_n_experts and `moelearn fit --experts auto`."""

import numpy as np
import pytest

from conftest import two_lines
from moelearn import make_moe, select_n_experts
from moelearn.cli import main


@pytest.mark.parametrize("k", [2, 3])
def test_bic_picks_the_true_number_of_experts(k):
    """n=5e4, d=6: the log-likelihood gained by the true k over k-1 is thousands
    of nats, far above BIC's penalty ((d + 1) log n = 76 per extra expert); more
    experts than the truth never lower it (by more than 1e-3 per row: with gate
    biases each fit starts from the one before, split)."""
    n = 50_000
    X, y, _ = make_moe(n, 6, n_experts=k, random_state=k)
    choice = select_n_experts(X, y, max_experts=4, random_state=0, fit_intercept=True)
    assert choice.n_experts == k
    assert sorted(choice.bic) == [1, 2, 3, 4]
    assert choice.log_likelihood[k] > choice.log_likelihood[k - 1] + 1000
    curve = np.array([choice.log_likelihood[j] for j in (1, 2, 3, 4)])
    assert np.all(np.diff(curve) >= -1e-3 * n)


def test_criteria_are_reported_and_selectable():
    """AIC, BIC and ICL for every k; ICL >= BIC (equal at k = 1); each criterion
    chooses the k that minimises it; an unknown one is refused."""
    X, y, _ = make_moe(20_000, 4, n_experts=2, random_state=5)
    choice = select_n_experts(X, y, max_experts=3, random_state=0, criterion="icl")
    assert choice.criterion == "icl"
    assert choice.n_experts == min(choice.icl, key=choice.icl.get) == 2
    assert choice.icl[1] == choice.bic[1]
    assert all(choice.icl[k] > choice.bic[k] for k in (2, 3))
    assert all(choice.aic[k] < choice.bic[k] for k in (1, 2, 3))
    with pytest.raises(ValueError, match="criterion must be"):
        select_n_experts(X, y, max_experts=2, criterion="dic")


def test_one_expert_is_chosen_when_there_is_no_mixture():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20_000, 4))
    y = X @ np.array([1.0, -0.5, 0.2, 0.0]) + 0.1 * rng.standard_normal(20_000)
    choice = select_n_experts(X, y, max_experts=3, random_state=0)
    assert choice.n_experts == 1


def test_max_experts_is_checked():
    X, y, _ = make_moe(5_000, 3, random_state=0)
    with pytest.raises(ValueError, match="max_experts must be an integer >= 1"):
        select_n_experts(X, y, max_experts=0)


def test_more_experts_than_input_columns_are_tried():
    """With one input column, k = 2 and 3 come from EM's other starts: BIC picks
    the true 2 (the lines are 3 apart in level, 10 noise levels: k = 2 gains
    1.1 nats a row over one line, k = 3 at most the fit of noise), the
    log-likelihoods never fall with k (within 1e-3 a row), and T2, one number,
    shows no eigen-gap."""
    X, y = two_lines(2_000, noise=0.3)
    choice = select_n_experts(X, y, max_experts=3, random_state=0, fit_intercept=True)
    assert choice.n_experts == 2
    assert choice.eigengap_n_experts is None
    ll = [choice.log_likelihood[k] / len(y) for k in (1, 2, 3)]
    assert ll[1] > ll[0] + 0.5
    assert ll[2] >= ll[1] - 1e-3


def test_cli_experts_auto_with_one_input_column(tmp_path, capsys):
    """`--experts auto` on a one-column table tries 1..--max-experts (before,
    it tried only k = 1 and said the data showed no mixture)."""
    X, y = two_lines(2_000, noise=0.3)
    data, out = tmp_path / "d.csv", tmp_path / "m.json"
    np.savetxt(data, np.column_stack([X, y]), delimiter=",", header="x,y", comments="")
    args = ["fit", str(data), "--experts", "auto", "--max-experts", "3"]
    assert main([*args, "--fit-intercept", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "chose 2 experts" in captured.out
    assert "eigen-gap: none to read" in captured.err


def test_cli_experts_auto(tmp_path, capsys):
    data, out = tmp_path / "d.csv", tmp_path / "m.json"
    assert (
        main(
            [
                "simulate",
                "-n",
                "30000",
                "-d",
                "5",
                "-k",
                "3",
                "--seed",
                "2",
                "--out",
                str(data),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "fit",
                str(data),
                "--experts",
                "auto",
                "--max-experts",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "<- lowest BIC" in captured.err
    assert "chose 3 experts" in captured.out
    assert (
        main(
            ["fit", str(data), "--experts", "auto", "--method", "em", "--out", str(out)]
        )
        == 2
    )
