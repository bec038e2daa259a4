"""The train stage trains ours and the baseline side by side, each in a process of its own
(baseline.side_by_side), and their runs are the runs one at a time gives, bit for bit."""

from __future__ import annotations

import os
import signal

import mlflow
import numpy as np
import pytest
import skops.io
from helpers import compose_config
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipeline import families
from pipeline.app import run_stages
from pipeline.errors import RunFailed
from pipeline.stages import train

TIMINGS = {"epoch_seconds", "train_seconds"}  # wall time: the one thing that may differ


@pytest.fixture(scope="module")
def both_ways(tmp_path_factory):
    """The digits trained side by side and one at a time, each into a store of its own:
    {side_by_side: (store, {family: run})}."""
    tmp = tmp_path_factory.mktemp("both-ways")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    trained = {}
    try:
        for side_by_side in (True, False):
            store = f"sqlite:///{tmp / f'side-by-side-{side_by_side}.db'}"
            os.environ["MLFLOW_TRACKING_URI"] = store
            cfg = compose_config(
                tmp / "data",
                "data=digits",
                "stages=[preprocess,train]",
                "train.epochs=3",
                f"baseline.side_by_side={str(side_by_side).lower()}",
            )
            run_ids = run_stages(cfg)["train"]
            client = MlflowClient(store)
            found = [client.get_run(run_id) for run_id in run_ids]
            trained[side_by_side] = (store, {r.data.tags["model_family"]: r for r in found})
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return trained


def test_side_by_side_the_families_train_at_once_each_in_a_process_of_its_own(both_ways):
    _, runs = both_ways[True]
    assert set(runs) == {"numpy_mlp", "sklearn_mlp"}
    ours, theirs = runs["numpy_mlp"].info, runs["sklearn_mlp"].info
    pids = {r.data.tags["pid"] for r in runs.values()}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    # each started before the other ended: they trained at the same time
    assert ours.start_time < theirs.end_time and theirs.start_time < ours.end_time
    # one at a time: both here, the baseline after ours
    _, runs = both_ways[False]
    assert {r.data.tags["pid"] for r in runs.values()} == {str(os.getpid())}
    assert runs["numpy_mlp"].info.end_time <= runs["sklearn_mlp"].info.start_time


def _weights(store: str, run) -> dict[str, np.ndarray]:
    """The logged model's weights: our network's arrays; the estimator's coefs_ and
    intercepts_ (a skops file names its arrays by object id: never the same bytes)."""
    mlflow.set_tracking_uri(store)  # where runs:/ finds the run's logged model
    path = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model")
    if run.data.tags["model_family"] == "numpy_mlp":
        with np.load(f"{path}/artifacts/network.npz") as saved:
            return {name: saved[name] for name in saved.files}
    file = f"{path}/artifacts/estimator.skops"
    estimator = skops.io.load(file, trusted=skops.io.get_untrusted_types(file=file))
    return {
        **{f"coefs_{i}": w for i, w in enumerate(estimator.coefs_)},
        **{f"intercepts_{i}": b for i, b in enumerate(estimator.intercepts_)},
    }


def _history(store: str, run, key: str) -> list[tuple[int, float]]:
    return sorted(
        (m.step, m.value) for m in MlflowClient(store).get_metric_history(run.info.run_id, key)
    )


@pytest.mark.parametrize("family", ["numpy_mlp", "sklearn_mlp"])
def test_side_by_side_gives_the_runs_one_at_a_time_gives_bit_for_bit(both_ways, family):
    (store, side), (one_store, alone) = both_ways[True], both_ways[False]
    a, b = side[family], alone[family]
    metrics = set(a.data.metrics) - TIMINGS
    assert metrics == set(b.data.metrics) - TIMINGS
    assert {"val_accuracy", "test_accuracy", "test_log_loss", "val_log_loss"} <= metrics
    for key in sorted(metrics):  # every epoch's value, exactly
        assert _history(store, a, key) == _history(one_store, b, key), key
    assert a.data.params == b.data.params
    for tag in ("config_hash", "resume_key", "n_params", "kept_epoch"):
        assert a.data.tags[tag] == b.data.tags[tag], tag
    weights, alone_weights = _weights(store, a), _weights(one_store, b)
    assert weights.keys() == alone_weights.keys() and weights
    for name, w in weights.items():
        assert w.dtype == alone_weights[name].dtype and np.array_equal(w, alone_weights[name]), name


def test_a_killed_worker_is_a_failed_family_the_other_finishes_and_its_run_is_closed(
    make_cfg, monkeypatch
):
    """The OOM killer's choice, say: ours' process ends by SIGKILL after its first epoch."""
    ours = type(families.get(families.OURS))

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(ours, "train_view", killed)
    cfg = make_cfg(
        "data=digits",
        "stages=[preprocess,train]",
        "train.epochs=2",
        "tracking.log_model=false",
        "baseline.side_by_side=true",
    )
    with pytest.raises(RunFailed, match="numpy_mlp: its training process ended without a result"):
        run_stages(cfg)
    client = MlflowClient()
    runs = {
        r.data.tags["model_family"]: r
        for r in client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    }
    assert runs["sklearn_mlp"].info.status == "FINISHED"
    assert runs["numpy_mlp"].info.status == "KILLED"
    assert "ended without closing the run" in runs["numpy_mlp"].data.tags["failure_reason"]


@pytest.mark.parametrize(
    "setting,cores,parent,expected",
    [
        (None, {0, 1}, None, True),  # the default: two cores, make run
        (None, {0}, None, False),  # one core
        (None, {0, 1}, "0" * 32, False),  # a sweep's job: its launcher fills the cores
        (False, {0, 1}, None, False),
        (True, {0}, None, True),
    ],
)
def test_side_by_side_when_asked_or_when_there_is_a_core_for_each(
    make_cfg, monkeypatch, setting, cores, parent, expected
):
    cfg = make_cfg("data=digits")
    cfg.baseline.side_by_side = setting
    cfg.tracking.parent_run_id = parent
    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: cores)
    assert train.side_by_side(cfg, 2) is expected
    assert train.side_by_side(cfg, 1) is False  # one family: nothing to put beside it
    assert OmegaConf.select(make_cfg(), "baseline.side_by_side") is None
