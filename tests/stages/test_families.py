"""Adding a model family is one module and one row of the families table: a family the
pipeline has never seen trains through the real stages, tracked like the others."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from pipeline import families
from pipeline.app import run_stages
from pipeline.errors import PipelineError


@pytest.fixture
def with_centroids(monkeypatch):
    monkeypatch.setitem(families.FAMILIES, "nearest_centroid", "helpers.centroid_family")


def test_a_new_family_trains_through_the_real_stages_as_the_baseline(make_cfg, with_centroids):
    cfg = make_cfg(
        "data=digits",
        "stages=[preprocess,train,compare]",
        "baseline.name=nearest_centroid",
        "train.epochs=3",
        "tracking.log_model=false",
    )
    results = run_stages(cfg)
    ours, theirs = results["train"]
    client = MlflowClient()
    run = client.get_run(theirs)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model_family"] == "nearest_centroid"
    assert run.info.run_name.startswith("centroid ")
    assert set(run.data.params) >= {"train.epochs", "seed", "data.name"}
    assert "model.cost" not in run.data.params  # a setting it does not use is not its param
    history = client.get_metric_history(theirs, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert len(client.get_metric_history(theirs, "centroid_spread")) == 3
    assert run.data.metrics["test_accuracy"] > 0.8  # nearest centroid does well on the digits
    assert int(run.data.tags["n_params"]) == 10 * 64
    table = results["compare"]
    assert "centroid test_acc" in table.columns and "ours test_acc" in table.columns
    assert client.get_run(ours).data.tags["model_family"] == "numpy_mlp"


def test_a_family_that_is_not_in_the_table_is_one_line(make_cfg):
    cfg = make_cfg("data=digits", "stages=[train]", "baseline.name=nearest_centroid")
    with pytest.raises(PipelineError, match="baseline.name='nearest_centroid': must be none or"):
        run_stages(cfg)


def test_a_config_the_baseline_cannot_run_skips_it_with_the_reason(make_cfg, caplog):
    cfg = make_cfg(
        "data=digits", "stages=[preprocess,train]", "train.epochs=1", "train.dropout_hidden=0.2"
    )
    (only_ours,) = run_stages(cfg)["train"]
    assert MlflowClient().get_run(only_ours).data.tags["model_family"] == "numpy_mlp"
    assert "no baseline: MLPClassifier has none of train.dropout_hidden" in caplog.text
