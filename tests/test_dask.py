"""Fits on Dask arrays, run by a ``dask.distributed`` LocalCluster of 2 worker
processes: every pass is a Dask computation, and the results equal the in-memory
fit's (both run to a tight tolerance, so only rounding differs)."""

import warnings

import numpy as np
import pytest

from moelearn import (
    EMMoE,
    GradientMoE,
    HierarchicalMoE,
    SpectralMoE,
    make_hme,
    make_moe,
)

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")

TIGHT = {"tol": 1e-10, "max_iter": 500, "random_state": 0}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # (Dask's scratch space in pytest's folder: by default the cluster leaves a
    # dask-scratch-space folder in the system's temporary folder, issue 16)
    scratch = str(tmp_path_factory.mktemp("dask"))
    with (
        dask.config.set({"temporary-directory": scratch}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _fit(model, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X, y)


def assert_same_fit(a, b, rtol=1e-7):
    np.testing.assert_allclose(a.experts_, b.experts_, rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(a.gating_, b.gating_, rtol=rtol, atol=1e-9)
    assert a.noise_std_ == pytest.approx(b.noise_std_, rel=rtol)


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: SpectralMoE(**TIGHT),
        lambda: SpectralMoE(fit_intercept=True, **TIGHT),
        lambda: EMMoE(n_init=2, **TIGHT),
    ],
    ids=["spectral", "spectral-intercept", "em"],
)
def test_dask_fit_equals_the_in_memory_fit(client, make_model):
    X, y, _ = make_moe(20_000, 5, random_state=7)
    X = X + 0.5  # a mean to whiten away
    X_dask = da.from_array(X, chunks=(3_000, 5))
    with distributed.get_task_stream(client) as stream:
        on_cluster = _fit(make_model(), X_dask, da.from_array(y, chunks=3_000))
    in_memory = _fit(make_model(), X, y)
    assert_same_fit(on_cluster, in_memory)
    # the passes ran as tasks on both workers
    passes = [t for t in stream.data if "_local_reduce" in str(t["key"])]
    assert len(passes) >= 7 * 10  # 7 blocks, at least 10 passes
    assert len({t["worker"] for t in passes}) == 2
    # predictions on Dask inputs, computed by the cluster
    np.testing.assert_allclose(
        on_cluster.predict(X_dask), in_memory.predict(X), rtol=1e-6, atol=1e-9
    )
    assert on_cluster.score(X_dask, y) == pytest.approx(in_memory.score(X, y), rel=1e-8)


def test_dask_weighted_fit_equals_the_in_memory_fit(client):
    X, y, _ = make_moe(20_000, 5, random_state=8)
    w = np.random.default_rng(0).random(len(y)) * 2
    X_dask = da.from_array(X, chunks=(3_000, 5))
    on_cluster = SpectralMoE(**TIGHT).fit(X_dask, y, sample_weight=w)
    in_memory = SpectralMoE(**TIGHT).fit(X, y, sample_weight=w)
    assert_same_fit(on_cluster, in_memory)


def test_dask_hierarchical_fit_equals_the_in_memory_fit(client):
    X, y, _ = make_hme(20_000, 5, depth=2, random_state=2)
    X_dask = da.from_array(X, chunks=(4_000, 5))
    on_cluster = _fit(HierarchicalMoE(**TIGHT), X_dask, y)
    in_memory = _fit(HierarchicalMoE(**TIGHT), X, y)
    assert_same_fit(on_cluster, in_memory, rtol=1e-6)


def test_dask_dataframe_keeps_the_feature_names(client):
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    X, y, _ = make_moe(10_000, 4, random_state=1)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    model = _fit(SpectralMoE(random_state=0), dd.from_pandas(frame, npartitions=3), y)
    assert list(model.feature_names_in_) == ["a", "b", "c", "d"]
    assert model.n_features_in_ == 4


def test_dask_errors_are_clear(client):
    X, y, _ = make_moe(5_000, 4, random_state=1)
    X[123, 2] = np.nan
    with pytest.raises(ValueError, match=r"X contains 1 non-finite value"):
        SpectralMoE().fit(da.from_array(X, chunks=1_000), y)
    with pytest.raises(TypeError, match="GradientMoE draws random minibatches"):
        GradientMoE().fit(da.from_array(np.nan_to_num(X), chunks=1_000), y)


def test_dask_select_n_experts_equals_the_in_memory_one(client):
    from moelearn import select_n_experts

    X, y, _ = make_moe(20_000, 4, n_experts=3, random_state=5)
    X_dask = da.from_array(X, chunks=(5_000, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_cluster = select_n_experts(X_dask, y, max_experts=3, random_state=0)
        in_memory = select_n_experts(X, y, max_experts=3, random_state=0)
    assert on_cluster.n_experts == in_memory.n_experts == 3
    for k in (1, 2, 3):
        assert on_cluster.bic[k] == pytest.approx(in_memory.bic[k], rel=1e-8)


def test_dask_select_n_experts_keeps_a_dataframe_on_the_cluster(client, monkeypatch):
    from sklearn.utils import validation

    from moelearn import select_n_experts

    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    X, y, _ = make_moe(20_000, 4, random_state=5)
    frame = dd.from_pandas(pd.DataFrame(X, columns=list("abcd")), npartitions=4)

    def refuse(*args, **kwargs):
        raise AssertionError("the dataframe was brought into memory")

    monkeypatch.setattr(validation, "check_array", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_cluster = select_n_experts(frame, y, max_experts=2, random_state=0)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_memory = select_n_experts(X, y, max_experts=2, random_state=0)
    assert on_cluster.n_experts == in_memory.n_experts == 2
    assert on_cluster.bic[2] == pytest.approx(in_memory.bic[2], rel=1e-8)
