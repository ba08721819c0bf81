import numpy as np
import pytest

import moelearn._em as em_module
from moelearn import make_hme, make_moe, parameter_error
from moelearn._em import ColumnMoments, em
from moelearn._model import MoEParams, log_likelihood_terms


def truth_params(truth):
    return MoEParams(
        truth["experts"], truth["gating"], truth["noise_std"], truth["link"]
    )


@pytest.mark.parametrize("fit_experts", [False, True])
def test_em_never_lowers_the_likelihood(fit_experts, global_random_seed):
    X, y, truth = make_moe(20_000, 5, random_state=global_random_seed)
    rng = np.random.default_rng(global_random_seed)
    start = truth_params(truth)
    start = MoEParams(start.experts + 0.1, np.zeros_like(start.gating), 0.3, "linear")
    result = em(
        X,
        y,
        start,
        fit_experts=fit_experts,
        moments=ColumnMoments(np.eye(5)),
        max_iter=30,
        tol=1e-8,
        rng=rng,
    )
    curve = np.array(result.log_likelihood)
    assert np.all(np.diff(curve) >= -1e-10 * (1 + np.abs(curve[:-1])))
    final = log_likelihood_terms(X, y, result.params)[0].mean()
    assert final >= curve[-1] - 1e-10


def test_gating_em_with_true_experts_recovers_the_gate(global_random_seed):
    """Gate error of the MLE ~ sqrt(d/n) * c; tolerance 5 sqrt(d/n) (c ~ 2 measured)."""
    n, d = 50_000, 5
    X, y, truth = make_moe(n, d, random_state=global_random_seed)
    start = MoEParams(truth["experts"], np.zeros((2, d)), 0.5, "linear")
    result = em(
        X,
        y,
        start,
        fit_experts=False,
        moments=ColumnMoments(np.eye(d)),
        max_iter=200,
        tol=1e-7,
        rng=np.random.default_rng(0),
    )
    assert result.converged
    est = {"experts": result.params.experts, "gating": result.params.gating}
    assert parameter_error(est, truth) < 5 * np.sqrt(d / n)
    assert abs(result.params.noise_std - 0.1) < 5 * 0.1 / np.sqrt(n)


def test_newton_subsample_changes_speed_not_the_fixed_point(
    monkeypatch, global_random_seed
):
    """Curvature from a row subset preconditions the exact full-data gradient, so the
    fixed point equals the one with full-data curvature (to the EM tolerance)."""
    X, y, truth = make_moe(30_000, 4, random_state=global_random_seed)
    start = truth_params(truth)

    def run():
        return em(
            X,
            y,
            start,
            fit_experts=True,
            moments=ColumnMoments(np.eye(4)),
            max_iter=200,
            tol=1e-9,
            rng=np.random.default_rng(1),
        ).params

    full = run()
    monkeypatch.setattr(em_module, "_MIN_CURVATURE_ROWS", 2_000)
    sub = run()
    np.testing.assert_allclose(sub.experts, full.experts, atol=1e-6)
    np.testing.assert_allclose(sub.gating, full.gating, atol=1e-6)


def _near_truth(truth, rng):
    """The true experts and gate, each entry moved by 0.1 N(0, 1); noise 0.2."""
    experts, gating = truth["experts"], truth["gating"]
    return MoEParams(
        experts + 0.1 * rng.standard_normal(experts.shape),
        gating + 0.1 * rng.standard_normal(gating.shape),
        0.2,
        "linear",
    )


def _joint_em(X, y, start, tol):
    """Joint EM from ``start`` in the identity metric (seeded subset)."""
    return em(
        X,
        y,
        start,
        fit_experts=True,
        moments=ColumnMoments(np.eye(X.shape[1])),
        max_iter=200,
        tol=tol,
        rng=np.random.default_rng(1),
    )


def test_contracting_steps_stop_within_tol_of_the_fixed_point(
    monkeypatch, global_random_seed
):
    """With Newton matrices from a subset the steps shrink linearly, and EM stops
    once they predict the rest of the way below ``tol``: where the rule stops a
    run (it fires from some of three starts; from others a step falls below
    ``tol`` or the objective stalls first) the run ends within ``tol``
    (whitened units) of the fixed point, and it saves passes over the data."""
    d, tol = 10, 1e-4
    X, y, truth = make_moe(60_000, d, random_state=global_random_seed)
    rng = np.random.default_rng(global_random_seed)
    passes = {True: 0, False: 0}
    original_pass = em_module._Problem.run_pass
    counting = [True]

    def counted_pass(self, *args, **kwargs):
        passes[counting[0]] += 1
        return original_pass(self, *args, **kwargs)

    monkeypatch.setattr(em_module._Problem, "run_pass", counted_pass)

    def run(start, tol):
        return _joint_em(X, y, start, tol)

    for _ in range(3):
        start = _near_truth(truth, rng)
        fixed_point = run(start, 1e-10).params
        before = dict(passes)
        results = {}
        for rule in (True, False):
            counting[0] = rule
            # (with _CONTRACTION 0 the rule never fires)
            monkeypatch.setattr(em_module, "_CONTRACTION", 0.5 if rule else 0.0)
            results[rule] = run(start, tol)
            assert results[rule].converged
        monkeypatch.setattr(em_module, "_CONTRACTION", 0.5)
        if passes[True] - before[True] < passes[False] - before[False]:
            got = results[True].params  # (stopped by the rule)
            rows = np.vstack(
                [got.experts - fixed_point.experts, got.gating - fixed_point.gating]
            )
            assert np.linalg.norm(rows, axis=1).max() < tol
    assert passes[True] < passes[False]


def test_kept_newton_matrices_save_curvature_sums_not_accuracy(
    monkeypatch, global_random_seed
):
    """After small steps EM keeps the subset's Newton matrices: it sums them
    fewer times and still ends at the same fixed point (tol 1e-9, as above)."""
    X, y, truth = make_moe(60_000, 10, random_state=global_random_seed)
    start = _near_truth(truth, np.random.default_rng(global_random_seed))
    sums = [0]
    original = em_module._Problem._subset_rows

    def counted(self, subset):
        sums[0] += 1
        return original(self, subset)

    monkeypatch.setattr(em_module._Problem, "_subset_rows", counted)

    def run():
        sums[0] = 0
        return _joint_em(X, y, start, 1e-9).params, sums[0]

    kept, kept_sums = run()
    monkeypatch.setattr(em_module, "_KEEP_CURVATURE_STEP", 0.0)
    fresh, fresh_sums = run()
    assert kept_sums < fresh_sums
    np.testing.assert_allclose(kept.experts, fresh.experts, atol=1e-6)
    np.testing.assert_allclose(kept.gating, fresh.gating, atol=1e-6)


def _shifted_inputs(X, scale_seed=0):
    """Inputs ``M^T x + 0.5`` with a non-trivial mean and covariance, and ``M``:
    a row ``a`` acting on ``x`` acts on the new inputs as ``M^{-1} a`` (plus an
    offset)."""
    rng = np.random.default_rng(scale_seed)
    d = X.shape[1]
    mix = np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)
    return X @ mix + 0.5, mix


@pytest.mark.parametrize("intercept", [False, True])
def test_structured_newton_matrices_match_the_sample_sums(intercept):
    """For Gaussian inputs and weights that depend on them only through the
    parameter rows (here the truth), ``sum_i w_i x_i x_i^T`` from the structure
    (2k - 1 projections, the column moments) equals the dense sum up to sampling
    error: relative Frobenius error ~ sqrt(d / n) = 0.006 here; tolerance 5x."""
    n, d = 200_000, 8
    X, y, truth = make_moe(n, d, n_experts=3, random_state=0)
    X, mix = _shifted_inputs(X)
    params = MoEParams(
        np.linalg.solve(mix, truth["experts"].T).T,  # the truth, in the new inputs
        np.linalg.solve(mix, truth["gating"].T).T,
        0.1,
        "linear",
    )
    mean, cov = np.full(d, 0.5), mix.T @ mix
    if intercept:
        X = np.column_stack([X, np.ones(n)])
        mean, cov = np.append(mean, 1.0), np.pad(cov, ((0, 1), (0, 1)))
        params = MoEParams(
            np.column_stack([params.experts, [0.5, -0.3, 0.1]]),
            np.column_stack([params.gating, [0.4, -0.2, 0.0]]),
            0.1,
            "linear",
        )
    problem = em_module._Problem(X, y, True, None, (mean, cov))
    structured = problem.run_pass(params, None)
    problem.column_moments = None
    dense = problem.run_pass(params, None)
    np.testing.assert_allclose(structured.grad, dense.grad, rtol=1e-10, atol=1e-8)
    tolerance = 5 * np.sqrt(X.shape[1] / n)
    # The complete-data matrices are the sums the bound is derived for (the
    # observed one, a difference of such sums, is checked by the fixed-point
    # test below).
    approx, exact = structured.complete, dense.complete
    assert np.linalg.norm(approx - exact) / np.linalg.norm(exact) < tolerance


@pytest.mark.parametrize("model", ["softmax", "tree"])
def test_structured_newton_changes_speed_not_the_fixed_point(monkeypatch, model):
    """Structured Newton matrices precondition the same exact gradient: joint EM
    reaches the dense path's fixed point (to the EM tolerance) in about as many
    iterations."""
    n, d = 40_000, 6
    if model == "tree":
        X, y, truth = make_hme(n, d, depth=2, random_state=3)
    else:
        X, y, truth = make_moe(n, d, n_experts=3, random_state=3)
    X, mix = _shifted_inputs(X)
    start = MoEParams(
        np.linalg.solve(mix, truth["experts"].T).T + 0.05,
        np.zeros_like(truth["gating"]),
        0.3,
        truth["link"],
        "tree" if model == "tree" else "softmax",
    )
    cov = mix.T @ mix

    def run():
        return em(
            X,
            y,
            start,
            fit_experts=True,
            moments=ColumnMoments(cov, np.full(d, 0.5), cov),
            max_iter=300,
            step="em",  # the claim is about EM's rate; Newton's is in the note
            tol=1e-9,
            rng=np.random.default_rng(1),
        )

    dense = run()
    monkeypatch.setattr(em_module, "STRUCTURED_CURVATURE_FEATURES", 0)
    structured = run()
    assert dense.converged and structured.converged
    np.testing.assert_allclose(
        structured.params.experts, dense.params.experts, atol=1e-6
    )
    np.testing.assert_allclose(structured.params.gating, dense.params.gating, atol=1e-6)
    assert structured.n_iter <= 1.5 * dense.n_iter + 2


def naive_em_step(X, y, A, G, sigma):
    """One textbook EM iteration for linear experts (Jordan & Jacobs), plain numpy."""
    from scipy.special import softmax
    from scipy.stats import norm

    gates = softmax(X @ G.T, axis=1)
    dens = gates * norm.pdf(y[:, None], loc=X @ A.T, scale=sigma)
    r = dens / dens.sum(axis=1, keepdims=True)
    A_new = np.array(
        [np.linalg.solve(X.T @ (r[:, [j]] * X), X.T @ (r[:, j] * y)) for j in range(2)]
    )
    p = gates[:, 0]
    H = X.T @ ((p * (1 - p))[:, None] * X)
    G_new = G.copy()
    G_new[0] += np.linalg.solve(H, X.T @ (r[:, 0] - p))
    sigma_new = np.sqrt((r * (y[:, None] - X @ A.T) ** 2).sum() / len(y))
    loglik = np.log(dens.sum(axis=1)).mean()
    return A_new, G_new, sigma_new, loglik


def test_one_em_iteration_matches_the_textbook_step(small_chunks, global_random_seed):
    X, y, truth = make_moe(3_000, 3, random_state=global_random_seed)
    rng = np.random.default_rng(global_random_seed)
    A = truth["experts"] + 0.1 * rng.standard_normal((2, 3))
    G = truth["gating"] * 0.5
    start = MoEParams(A, G, 0.2, "linear")
    result = em(
        X,
        y,
        start,
        fit_experts=True,
        moments=ColumnMoments(np.eye(3)),
        max_iter=1,
        step="em",
        gate_penalty=0.0,  # the textbook step has no ridge on the gate
        tol=0.0,
        rng=rng,
    )
    A_new, G_new, sigma_new, loglik = naive_em_step(X, y, A, G, 0.2)
    np.testing.assert_allclose(result.params.experts, A_new, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.params.gating, G_new, rtol=1e-9, atol=1e-12)
    assert result.params.noise_std == pytest.approx(sigma_new, rel=1e-12)
    assert result.log_likelihood[0] == pytest.approx(loglik, rel=1e-12)
    ll, _ = log_likelihood_terms(X, y, start)
    assert ll.mean() == pytest.approx(loglik, rel=1e-12)


@pytest.mark.parametrize("link", ["linear", "sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("fit_experts", [False, True])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_compiled_pass_matches_numpy(monkeypatch, link, fit_experts, k, weighted):
    """The optional numba pass computes the same sums as the NumPy path."""
    from moelearn import _em_fast

    if not _em_fast.AVAILABLE:
        pytest.skip("numba (the 'fast' extra) is not installed")
    monkeypatch.setattr(em_module, "_MIN_CURVATURE_ROWS", 500)
    X, y, truth = make_moe(5_000, 4, n_experts=k, link=link, random_state=0)
    params = MoEParams(truth["experts"] * 0.9, truth["gating"] * 0.5, 0.2, link)
    residuals = None if fit_experts else em_module.expert_residuals(X, y, params)
    weights = np.random.default_rng(1).random(5_000) * 2 if weighted else None
    problem = em_module._Problem(X, y, fit_experts, residuals, None, weights)
    subset = np.arange(0, 5_000, 5)
    compiled = problem.run_pass(params, subset)
    monkeypatch.setattr(em_module, "USE_COMPILED", False)
    plain = problem.run_pass(params, subset)
    assert compiled.ll_sum == pytest.approx(plain.ll_sum, rel=1e-10)
    assert compiled.rss == pytest.approx(plain.rss, rel=1e-10)
    np.testing.assert_allclose(compiled.grad, plain.grad, rtol=1e-9, atol=1e-9)


def test_compiled_exp_and_log_are_within_an_ulp_or_two():
    """The compiled pass's vectorised exp (x <= 0) and log (x > 0) agree with
    NumPy's to 2 ulp over the ranges the E-step gives them; exp is exactly 1 at
    0, 0 at -inf and below -708 (where NumPy's is subnormal); NaN stays NaN, and
    log gives NaN outside the positive normal numbers."""
    from moelearn import _em_fast

    if not _em_fast.AVAILABLE:
        pytest.skip("numba (the 'fast' extra) is not installed")
    rng = np.random.default_rng(0)
    x = -np.concatenate([rng.exponential(1.0, 4000), rng.uniform(0, 708, 4000)])
    x[:6] = [0.0, -0.0, -1e-300, -np.log(2) / 2, -708.0, -1e-17]
    out, scratch = x.copy(), np.empty((2, len(x)), np.int64)
    _em_fast._exp_nonpositive(out, len(x), scratch[0])
    np.testing.assert_allclose(out, np.exp(x), rtol=4.5e-16, atol=0)
    assert out[0] == out[1] == 1.0
    edge = np.array([-np.inf, -708.5, -745.0, -1e4, np.nan])
    _em_fast._exp_nonpositive(edge, 5, scratch[0])
    assert np.all(edge[:4] == 0.0) and np.isnan(edge[4])
    # log of the ratios the E-step takes it of (in [1/k, k]) and far beyond
    x = np.exp(rng.uniform(-700, 700, 8000))
    x[:5] = [1.0, np.sqrt(2), np.nextafter(np.sqrt(2), 3), 0.5, 2.0**-1022]
    out = x.copy()
    _em_fast._log_positive(out, len(x), scratch)
    np.testing.assert_allclose(out, np.log(x), rtol=4.5e-16, atol=1e-300)
    assert out[0] == 0.0
    edge = np.array([np.nan, 0.0, -1.0, np.inf, 1e-310])  # (a NaN must reach ll)
    _em_fast._log_positive(edge, 5, scratch)
    assert np.all(np.isnan(edge))


def test_a_slow_first_kernel_call_says_why_once(monkeypatch, capsys):
    """A compiled kernel's first call that takes longer than NOTICE_AFTER (numba
    compiling it) prints one notice on stderr; a fast first call, later calls
    and other kernels' first calls print nothing."""
    import threading
    import time

    from moelearn import _em_fast

    monkeypatch.setattr(_em_fast, "NOTICE_AFTER", 0.05)
    monkeypatch.setattr(_em_fast, "_READY", set())
    monkeypatch.setattr(_em_fast, "_NOTICED", threading.Event())
    with _em_fast._first_call("quick"):
        pass
    time.sleep(0.1)
    assert capsys.readouterr().err == ""
    for kernel in ("slow", "slow", "other slow"):
        with _em_fast._first_call(kernel):
            time.sleep(0.3)
    assert capsys.readouterr().err == _em_fast._NOTICE + "\n"


def _gate_problem(gate, seed):
    """Data, parameters off the truth and the gating-stage pass for a gate form."""
    if gate == "softmax":
        X, y, truth = make_moe(4_000, 3, n_experts=3, random_state=seed)
        G = truth["gating"] * 0.7
    else:
        X, y, truth = make_hme(4_000, 4, depth=2, random_state=seed)
        G = truth["gating"] * 0.7
    params = MoEParams(truth["experts"], G, 0.15, "linear", gate)
    residuals = em_module.expert_residuals(X, y, params)
    problem = em_module._Problem(X, y, False, residuals)
    return X, y, params, problem.run_pass(params, None)


@pytest.mark.parametrize("gate", ["softmax", "tree"])
def test_gate_score_and_observed_information_match_the_loglik(gate, global_random_seed):
    """The pass's gradient = d loglik / dG and complete-data Hessian minus the
    posterior variance = -d^2 loglik / dG^2 (experts fixed), by central finite
    differences over the free gate rows (softmax: all but the last; tree: all)."""
    X, y, params, stats = _gate_problem(gate, global_random_seed)
    k, d = params.n_experts, X.shape[1]
    free = (k - 1) * d
    observed = stats.observed[:free, :free]  # the gate's block (then log sigma)

    def loglik(theta):
        G = params.gating.copy()
        G[: k - 1] = theta.reshape(k - 1, d)
        p = MoEParams(params.experts, G, params.noise_std, "linear", gate)
        return log_likelihood_terms(X, y, p)[0].sum()

    theta0, h = params.gating[: k - 1].reshape(-1), 1e-4
    eye = np.eye(free) * h
    gradient = np.array(
        [(loglik(theta0 + e) - loglik(theta0 - e)) / (2 * h) for e in eye]
    )
    np.testing.assert_allclose(stats.grad.T.reshape(-1), gradient, rtol=1e-6, atol=1e-4)
    numeric = np.empty((free, free))
    for a in range(free):
        for b in range(free):
            ea, eb = eye[a], eye[b]
            numeric[a, b] = -(
                loglik(theta0 + ea + eb)
                - loglik(theta0 + ea - eb)
                - loglik(theta0 - ea + eb)
                + loglik(theta0 - ea - eb)
            ) / (4 * h * h)
    np.testing.assert_allclose(observed, numeric, rtol=1e-4, atol=1e-3)


def test_the_secant_update_holds_the_information_along_the_last_step():
    """BFGS's secant equation: the corrected information maps the last Newton
    step to the change of the (unpenalised) gradient it made, stays symmetric
    positive definite, and is left alone when a curvature is not positive."""
    rng = np.random.default_rng(3)
    k, D = 2, 3
    p = (2 * k - 1) * D + k
    params = MoEParams(
        experts=rng.standard_normal((k, D)),
        gating=np.vstack([rng.standard_normal(D), np.zeros(D)]),
        noise_std=np.array([0.5, 0.8]),
        link="linear",
        gate="softmax",
    )
    metric = np.eye(D) + 0.2
    objective = em_module._Objective(metric, 0.01, True, True)
    root = rng.standard_normal((p, p))
    H = root @ root.T + np.eye(p)
    stats = em_module._Stats(0.0, np.ones(k), np.ones(k), np.zeros((D, 2 * k - 1)))
    stats.observed, stats.complete = H, 2 * H
    step, before = rng.standard_normal(p), rng.standard_normal(p)
    ridge = objective.penalised(np.zeros((p, p)), params) @ step
    true_curvature = root.T @ root + 0.5 * np.eye(p)
    after = before - true_curvature @ step - ridge
    objective._last_step = (step, before)
    objective.gradient = lambda stats, params: after
    corrected = objective.secant(stats, params)
    np.testing.assert_allclose(corrected @ step, true_curvature @ step, rtol=1e-10)
    np.testing.assert_allclose(corrected, corrected.T, atol=1e-12)
    assert np.linalg.eigvalsh(corrected)[0] > 0
    objective.gradient = lambda stats, params: before + step  # negative curvature
    assert objective.secant(stats, params) is H
