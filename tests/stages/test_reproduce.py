"""`make reproduce`: a rerun from the logged config matches bit for bit on the same kernel,
and says what differs between the environments when it does not."""

import subprocess
import sys

import pytest
from helpers import run_app
from mlflow.tracking import MlflowClient

from pipeline.app import run_stages
from pipeline.errors import PipelineError
from pipeline.paths import PROJECT_ROOT


@pytest.fixture
def logged_run(make_cfg):
    cfg = make_cfg(
        "data=digits",
        "train.epochs=3",
        "train.l2=1.0",
        "stages=[preprocess,train]",
        "tracking.log_model=false",
    )
    ours, theirs = run_stages(cfg)["train"]
    return cfg, ours, theirs


@pytest.mark.parametrize("family", [0, 1])
def test_a_rerun_on_the_same_machine_is_identical_metric_by_metric(
    logged_run, make_cfg, family, capsys
):
    cfg, *run_ids = logged_run
    run_id = run_ids[family]
    table = run_stages(make_cfg("data=digits", "stages=[reproduce]", f"reproduce.run_id={run_id}"))[
        "reproduce"
    ]
    compared = table[~table.verdict.str.startswith(("timing", "not rerun"))]
    assert {"test_accuracy", "val_accuracy", "train_accuracy", "test_log_loss"} <= set(
        compared.metric
    )
    assert compared.verdict.str.startswith("identical").all(), table.to_string()
    out = capsys.readouterr().out
    assert "Reproduced: all" in out and "The environments match" in out
    client = MlflowClient()
    rerun = client.search_runs(
        [client.get_experiment_by_name("digits").experiment_id], f"tags.reproduces = '{run_id}'"
    )
    assert len(rerun) == 1 and rerun[0].data.tags["kind"] == "reproduction"


def test_a_rerun_under_another_kernel_names_the_difference(logged_run, tmp_path):
    cfg, run_id, _ = logged_run
    info = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pipeline.tracking.environment import "
            "environment_tags as t; print(t()['env.blas_kernel'])",
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    if info.stdout.strip() in ("", "None", "(none found)"):
        pytest.skip("NumPy's BLAS reports no kernel here: it cannot be forced")
    other = "Sandybridge" if info.stdout.strip() != "Sandybridge" else "Nehalem"
    result = run_app(
        "stages=[reproduce]",
        f"reproduce.run_id={run_id}",
        f"paths.data_dir={tmp_path / 'data'}",
        "data=digits",
        env={"OPENBLAS_CORETYPE": other},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "What differs between the two environments" in result.stdout
    assert "| env.blas_kernel " in result.stdout and other in result.stdout


@pytest.mark.parametrize(
    "run_id,message",
    [
        ("abc", "reproduce.run_id='abc': must be a run id"),
        ("0" * 32, "reproduce: no run 00000000000000000000000000000000"),
    ],
)
def test_bad_run_ids_are_named(make_cfg, run_id, message):
    with pytest.raises(PipelineError, match=message):
        run_stages(make_cfg("stages=[reproduce]", f"reproduce.run_id={run_id}"))


def test_a_run_logged_before_a_setting_existed_reruns_with_its_default(logged_run, make_cfg):
    import mlflow

    cfg, run_id, _ = logged_run
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    assert "  keep: final\n" in text
    MlflowClient().log_text(run_id, text.replace("  keep: final\n", ""), "config.yaml")
    table = run_stages(make_cfg("data=digits", "stages=[reproduce]", f"reproduce.run_id={run_id}"))[
        "reproduce"
    ]
    compared = table[~table.verdict.str.startswith(("timing", "not rerun"))]
    assert compared.verdict.str.startswith("identical").all(), table.to_string()


def test_a_run_logged_with_a_setting_since_dropped_is_named_not_a_traceback(logged_run, make_cfg):
    """Rerunning it on this code cannot be faithful: the user is told which setting and
    which commit logged it."""
    import mlflow

    cfg, run_id, _ = logged_run
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    MlflowClient().log_text(
        run_id, text.replace("  keep: final\n", "  keep: final\n  nesterov: true\n"), "config.yaml"
    )
    commit = MlflowClient().get_run(run_id).data.tags.get("git_commit", "")
    with pytest.raises(
        PipelineError, match=r"train\.nesterov.*this code does not know.*" + commit[:12]
    ):
        run_stages(make_cfg("data=digits", "stages=[reproduce]", f"reproduce.run_id={run_id}"))
