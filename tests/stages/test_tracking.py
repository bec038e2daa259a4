"""The train, evaluate and compare stages, checked by querying the MLflow store they wrote."""

import os

import mlflow
import numpy as np
import pytest
from helpers import run_app
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient

from pipeline.app import run_stages
from pipeline.data import dataset
from pipeline.errors import PipelineError, RunFailed
from pipeline.paths import PROJECT_ROOT
from pipeline.stages import compare


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def digits_cfg(make_cfg, store, tmp_path):
    def make(*overrides):
        return make_cfg(
            "data=digits", "train.epochs=4", f"paths.mlruns_dir={tmp_path / 'mlruns'}", *overrides
        )

    return make


def _runs(store, **filters):
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("digits")
    runs = client.search_runs([experiment.experiment_id])
    return client, {r.data.tags.get("model_family", r.info.run_name): r for r in runs}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of the full pipeline on the 8×8 digits (ours + baseline), shared by the tests."""
    tmp = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config", overrides=["data=digits", "train.epochs=4", f"paths.data_dir={tmp / 'data'}"]
        )
    results = run_stages(cfg)
    yield cfg, uri, results
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI")
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def test_both_runs_are_logged_with_params_metrics_and_tags(trained):
    cfg, uri, results = trained
    client, runs = _runs(uri)
    assert set(runs) == {"numpy_mlp", "sklearn_mlp"}
    assert sorted(results["train"]) == sorted(r.info.run_id for r in runs.values())
    for family, run in runs.items():
        assert run.info.status == "FINISHED"
        params, tags = run.data.params, run.data.tags
        assert params["model.hidden_sizes"] == "[16, 16]"
        assert params["train.learning_rate"] == "3.0" and params["data.name"] == "digits"
        assert params["model.activation"] == "sigmoid" and params["seed"] == "0"
        assert len(tags["git_commit"]) >= 7 and tags["config_hash"]
        own_loss = {"numpy_mlp": "train_cost", "sklearn_mlp": "sklearn_loss"}[family]
        for metric in (
            own_loss,
            "train_accuracy",
            "train_log_loss",
            "val_accuracy",
            "val_log_loss",
            "epoch_seconds",
        ):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == [1, 2, 3, 4], (family, metric)
        assert 0.5 < run.data.metrics["test_accuracy"] <= 1.0
        assert run.data.metrics["test_log_loss"] > 0
        # what it ran on, filterable: versions, BLAS and its kernel, CPU, lock
        assert tags["env.numpy"] == np.__version__ and tags["env.blas_kernel"]
        assert tags["env.cpu"] and tags["env.python"] and len(tags["env.lock_sha256"]) == 16
    # one name, one quantity: each family's own objective has its own name
    assert "sklearn_loss" not in runs["numpy_mlp"].data.metrics
    assert "train_cost" not in runs["sklearn_mlp"].data.metrics
    # ours and the baseline share the config hash: compare pairs them on it
    assert (
        runs["numpy_mlp"].data.tags["config_hash"] == runs["sklearn_mlp"].data.tags["config_hash"]
    )


def test_artifacts_and_dataset_inputs_are_logged(trained):
    cfg, uri, _ = trained
    client, runs = _runs(uri)
    data = dataset.load(cfg.data)
    for run in runs.values():
        paths = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "config.yaml" in paths
        evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        assert {
            "evaluation/confusion_matrix.png",
            "evaluation/misclassified.png",
            "evaluation/classification_report.json",
        } <= evaluation
        config_text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
        assert "hidden_sizes:\n  - 16\n  - 16" in config_text
        report = mlflow.artifacts.load_dict(
            f"runs:/{run.info.run_id}/evaluation/classification_report.json"
        )
        assert set(report) >= {str(k) for k in range(10)} | {"accuracy", "macro avg"}
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"digits-train", "digits-val", "digits-test"}
        assert (
            inputs["digits-train"].dataset.digest
            == data.digests["x_train"][:12] + data.digests["y_train"][:12]
        )
        assert {t.value for d in inputs.values() for t in d.tags} >= {
            "training",
            "validation",
            "testing",
        }


@pytest.mark.parametrize("family", ["numpy_mlp", "sklearn_mlp"])
def test_logged_model_reproduces_the_logged_test_accuracy_exactly(trained, family):
    cfg, uri, _ = trained
    _, runs = _runs(uri)
    run = runs[family]
    data = dataset.load(cfg.data)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    predicted = np.asarray(model.predict(data.x("test")))
    assert np.mean(predicted == data.y("test")) == run.data.metrics["test_accuracy"]
    assert model.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 64)


def test_compare_pairs_ours_with_the_baseline_and_logs_nothing(trained, monkeypatch):
    cfg, uri, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    _, before = _runs(uri)
    table = compare.run(cfg, {})
    assert len(table) == 1
    assert {
        "config",
        "ours test_acc",
        "sklearn test_acc",
        "diff_pt",
        "winner",
        "ours train_s",
        "sklearn train_s",
    } <= set(table.columns)
    ours, sklearn = (before[f].data.metrics["test_accuracy"] for f in ("numpy_mlp", "sklearn_mlp"))
    assert table["diff_pt"].iloc[0] == pytest.approx(100 * (ours - sklearn))
    _, after = _runs(uri)
    assert set(after) == set(before) == {"numpy_mlp", "sklearn_mlp"}  # no compare run


def test_a_diverging_run_ends_failed_with_the_reason(digits_cfg, store):
    cfg = digits_cfg(
        "model=modern", "train.learning_rate=1e20", "baseline=none", "stages=[preprocess,train]"
    )
    with pytest.raises(RunFailed, match="every run failed: numpy_mlp: training diverged"):
        run_stages(cfg)
    _, runs = _runs(store)
    run = runs["numpy_mlp"]
    assert run.info.status == "FAILED"
    assert "training diverged" in run.data.tags["failure_reason"]
    assert mlflow.active_run() is None


def test_a_dataset_lost_to_a_parallel_job_is_logged_on_retry_and_other_errors_fail(
    digits_cfg, store, monkeypatch
):
    """Parallel jobs insert the same dataset at once; MLflow's get-or-create is not atomic,
    so the loser's insert hits the unique constraint, and a retry finds the row. Here every
    first insert loses (the race made certain); any other error still fails the run."""
    real = MlflowClient.log_inputs
    lost = []

    def losing_the_race(self, run_id, datasets=None, models=None):
        name = datasets[0].dataset.name
        if name not in lost:
            lost.append(name)
            raise mlflow.exceptions.MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                "datasets.name, datasets.digest"
            )
        return real(self, run_id, datasets=datasets, models=models)

    monkeypatch.setattr(MlflowClient, "log_inputs", losing_the_race)
    once = ("stages=[preprocess,train]", "baseline=none", "train.epochs=1")
    run_stages(digits_cfg(*once, "tracking.log_model=false"))
    _, runs = _runs(store)
    assert runs["numpy_mlp"].info.status == "FINISHED"
    logged = {d.dataset.name for d in runs["numpy_mlp"].inputs.dataset_inputs}
    assert logged == set(lost) == {"digits-train", "digits-val", "digits-test"}

    def broken(self, run_id, datasets=None, models=None):
        raise mlflow.exceptions.MlflowException("disk I/O error")

    monkeypatch.setattr(MlflowClient, "log_inputs", broken)
    with pytest.raises(mlflow.exceptions.MlflowException, match="disk I/O error"):
        run_stages(digits_cfg(*once, "tracking.log_model=false", "seed=1"))
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("digits").experiment_id
    statuses = [r.info.status for r in client.search_runs([experiment], order_by=["start_time"])]
    assert statuses == ["FINISHED", "FAILED"]


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "model.activation=softplus",
            "model.activation='softplus': must be one of ['sigmoid', 'relu', 'tanh']",
        ),
        ("train.learning_rate=-0.5", "train.learning_rate=-0.5: must be a number > 0"),
        ("train.learning_rate=0", "train.learning_rate=0.0: must be a number > 0"),
        ("model.hidden_sizes=[]", "model.hidden_sizes=[]: must be a non-empty list"),
        (
            "train.batch_size=5000",
            "train.batch_size=5000: must be at most the training set size (1197 images)",
        ),
        ("train.epochs=0", "train.epochs=0: must be a number ≥ 1"),
        ("seed=-1", "seed=-1: must be a number in [0, 4294967296)"),
        ("stages=[]", "stages=[]: must be a non-empty list of stages"),
        (
            "data.validation_size=1700",
            "data.validation_size=1700 with data.test_size=300: must leave "
            "at least 10 of the 1797 images for training",
        ),
        ("train.learning_rate=inf", "train.learning_rate=inf: must be a finite number"),
        ("train.momentum=nan", "train.momentum=nan: must be a finite number"),
        (
            "tracking.log_model=false",
            "tracking.log_model=false: the evaluate stage loads the logged models",
        ),
        ("analyze.run_id=abc", "analyze.run_id='abc': must be a run id"),
        (
            "analyze.model_name=\"x' or '1'='1\"",
            "analyze.model_name=\"x' or '1'='1\": must be a name",
        ),
        ("evaluate.run_ids=[nope]", "evaluate.run_ids: 'nope' must be a run id"),
    ],
)
def test_invalid_configs_are_rejected_before_any_work(digits_cfg, override, message, tmp_path):
    cfg = digits_cfg(override)
    with pytest.raises(PipelineError) as e:
        run_stages(cfg)
    assert message in str(e.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.learnin_rate=1", "train.learnin_rate"),
        ("train.epochs=many", "train.epochs"),
    ],
)
def test_unknown_keys_and_wrong_types_are_rejected_by_the_schema(make_cfg, override, message):
    with pytest.raises(ConfigCompositionException) as e:
        make_cfg(override)
    assert message in str(e.value) + str(e.value.__cause__)


def test_app_reports_an_invalid_config_without_a_traceback(tmp_path):
    result = run_app("model.activation=softplus", f"paths.data_dir={tmp_path}")
    assert result.returncode == 2
    assert "model.activation='softplus': must be one of" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_new_store_is_built_once_then_copied_from_the_cached_empty_one(tmp_path, monkeypatch):
    """MLflow's migrations make the first empty store; the next ones are copies of it,
    each a store MLflow opens and writes to."""
    from pipeline.tracking import store as tracking_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = tracking_store.empty_store()
    assert template is not None and not template.exists()
    made = []
    for name in ("first", "second"):
        uri = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
        tracking_store.initialise_sqlite(uri)
        made.append(tmp_path / name / "mlflow.db")
        assert template.exists(), "the first build keeps the empty store"
        client = MlflowClient(uri)
        experiment = client.create_experiment(f"e-{name}")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "val_accuracy", 0.5)
        assert client.get_run(run.info.run_id).data.metrics == {"val_accuracy": 0.5}
    assert tracking_store._schema_problem(made[1]) is None
    assert template.read_bytes() != made[1].read_bytes()  # a copy, written to since
