"""`make reproduce RUN_ID=<id>` as a user runs it, with no `data=`: a run whose artifacts are
gone is one line naming the run, what is missing and the fix (exit 2); a run of the digits
is rerun on the digits, into the digits experiment, unless the command line names another.

Each test trains a run of ours with the real app on the digits (data prepared once, in the
test's process) into the test's SQLite store, then runs `python -m pipeline
stages=[reproduce] reproduce.run_id=<id>` on it, as `make reproduce` does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import TRAIN_ONCE, run_app
from mlflow import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path

pytestmark = pytest.mark.usefixtures("digits_prepared")


def _app(tmp_path: Path, *overrides: str):
    """`python -m pipeline`, its data under tmp_path/data (the store: the test's own)."""
    return run_app(
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'hydra'}", *overrides
    )


def _reproduce(tmp_path: Path, run_id: str, *overrides: str):
    """What `make reproduce RUN_ID=<run_id> ARGS="<overrides>"` runs."""
    return _app(tmp_path, "stages=[reproduce]", f"reproduce.run_id={run_id}", *overrides)


def _client() -> MlflowClient:
    """A client of this test's store (conftest's variable; an earlier test's in-process run
    may have set MLflow's own URI, which a client made without one would use)."""
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


@pytest.fixture
def digits_run(tmp_path):
    """A finished run of ours on the digits (`make run ARGS="data=digits"`, cut short)."""
    made = _app(tmp_path, "data=digits", *TRAIN_ONCE)
    assert made.returncode == 0, (made.stdout + made.stderr)[-3000:]
    client = _client()
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    return run


def _reruns(run_id: str) -> list:
    client = _client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.reproduces = '{run_id}'")


def _config_gone(run) -> Path:
    config = Path(local_file_uri_to_path(run.info.artifact_uri)) / "config.yaml"
    config.unlink()
    return config


def _folder_gone(run) -> Path:
    folder = Path(local_file_uri_to_path(run.info.artifact_uri)).parent  # <experiment>/<run id>
    shutil.rmtree(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_config_gone, _folder_gone])
def test_a_run_whose_artifacts_are_gone_is_one_line_naming_the_run_and_the_fix(
    tmp_path, digits_run, damage
):
    run_id = digits_run.info.run_id
    gone = damage(digits_run)

    result = _reproduce(tmp_path, run_id)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1, output[-3000:]
    assert len(output.strip().splitlines()) <= 3, output  # "stage reproduce", the line
    line = errors[0]
    assert run_id in line and "config.yaml" in line, line
    assert str(gone) in line or str(gone.parent) in line, line  # where it was
    assert "restore" in line.lower(), line  # the fix
    assert not _reruns(run_id), "a rerun was started"


@pytest.mark.slow
def test_a_digits_run_reruns_on_the_digits_into_its_own_experiment(tmp_path, digits_run):
    """No `data=digits` given: the rerun is the logged run's, where the original is."""
    run_id = digits_run.info.run_id

    result = _reproduce(tmp_path, run_id)

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Reproduced: all" in result.stdout, result.stdout[-3000:]
    (rerun,) = _reruns(run_id)
    assert rerun.info.experiment_id == digits_run.info.experiment_id
    assert rerun.data.params["data.name"] == "digits"
    mnist = _client().get_experiment_by_name("mnist")
    assert mnist is None, "an mnist experiment was made for a digits rerun"


@pytest.mark.slow
def test_an_experiment_named_on_the_command_line_takes_the_rerun_other_settings_do_not(
    tmp_path, digits_run
):
    """tracking.experiment=<name> typed: the rerun goes there. A computed setting typed
    (train.epochs) is not applied, and the output says so: a reproduction reruns the run."""
    run_id = digits_run.info.run_id

    result = _reproduce(tmp_path, run_id, "tracking.experiment=reruns", "train.epochs=3")

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (rerun,) = _reruns(run_id)
    assert _client().get_experiment(rerun.info.experiment_id).name == "reruns"
    assert rerun.data.params["train.epochs"] == digits_run.data.params["train.epochs"] == "1"
    output = result.stdout + result.stderr
    assert "train.epochs=3" in output and "not applied" in output, output[-3000:]


@pytest.mark.slow
def test_another_dataset_named_on_the_command_line_reruns_the_config_on_it(
    tmp_path, digits_run, real_mnist_mirror
):
    """data=mnist typed: the digits run's recipe on MNIST, in the mnist experiment."""
    run_id = digits_run.info.run_id

    result = run_app(
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "stages=[reproduce]",
        f"reproduce.run_id={run_id}",
        "data=mnist",
        env={"PIPELINE_DATA_MIRROR": str(real_mnist_mirror)},
    )

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (rerun,) = _reruns(run_id)
    assert _client().get_experiment(rerun.info.experiment_id).name == "mnist"
    assert rerun.data.params["data.name"] == "mnist"
    assert rerun.data.params["train.epochs"] == "1"
