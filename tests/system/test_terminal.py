"""What a person reads in the terminal after a command: the pipeline's own lines, not the
libraries' INFO chatter (verbose=true brings it back), and one line per registration."""

from __future__ import annotations

import os

from helpers import run_app


def _train(tmp_path, *extra, cold=False):
    result = run_app(
        "data=digits",
        "stages=[train]",
        "train.epochs=1",
        f"paths.mlruns_dir={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *extra,
        cold=cold,
        # as a user's shell has it (the in-process preprocess of digits_prepared set it)
        env={"MLFLOW_LOGGING_LEVEL": None},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def test_the_libraries_info_lines_show_only_when_verbose(tmp_path, digits_prepared):
    # one family: the lines come from this process (ours' logged model), not a forked worker;
    # fresh interpreters, as a user's: MLflow sets its loggers' level when it is imported
    quiet = _train(tmp_path, f"paths.data_dir={digits_prepared}", "baseline=none", cold=True)
    assert "INFO mlflow" not in quiet and "mlflow.utils" not in quiet, quiet[-2000:]
    assert "train: numpy_mlp test accuracy" in quiet  # the pipeline's own lines stay
    verbose = _train(
        tmp_path, f"paths.data_dir={digits_prepared}", "baseline=none", "verbose=true", cold=True
    )
    assert "INFO mlflow" in verbose, verbose[-2000:]


def test_a_registration_is_one_line(tmp_path, digits_prepared):
    _train(tmp_path, f"paths.data_dir={digits_prepared}", "baseline=none")
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # the test's store (conftest)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, "tags.kind = 'training'")
    for version in ("1", "2"):  # a new model, then a new version of an existing one
        result = run_app(
            "data=digits",
            "stages=[register]",
            f"register.run_id={run.info.run_id}",
            f"paths.mlruns_dir={tmp_path / 'mlruns'}",
            f"hydra.run.dir={tmp_path / 'register'}",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        printed = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "[pipeline][INFO] - stage" not in line  # the app's stage lines
        ]
        assert printed == [line for line in printed if "register:" in line], printed
        assert len(printed) == 1 and f"version {version} " in printed[0], printed
    assert str(client.get_model_version_by_alias("digits-classifier", "champion").version) == "2"
