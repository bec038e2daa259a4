"""Checks of an Optuna search against its MLflow runs (test_search, test_cluster)."""

from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient


def the_study(storage: str | optuna.storages.BaseStorage) -> optuna.Study:
    """The one study in the storage (ValueError while there is none)."""
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def search_runs(tracking_uri: str, experiment: str = "search-smoke"):
    """(parent run, children by run id) of the one search in the experiment."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "search"]
    children = {
        r.info.run_id: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert len(children) == len(runs) - 1, "every run of the experiment is a child of the search"
    return parent, children


def check_one_child_per_trial(study: optuna.Study, parent, children, n_trials: int) -> Counter:
    """Every finished trial is one child run, of the state the trial ended in; nothing
    duplicated, nothing lost. Returns the trial states counted."""
    trials = study.get_trials()
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] + states["PRUNED"] == n_trials
    by_trial = Counter(r.data.tags["optuna_trial"] for r in children.values())
    assert max(by_trial.values()) == 1, f"a trial logged twice: {by_trial}"
    for trial in trials:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if trial.state.name == "COMPLETE":
            run = children[run_id]
            assert run.info.status == "FINISHED"
            assert run.data.metrics["val_accuracy"] == pytest.approx(trial.value)
            assert "test_accuracy" in run.data.metrics
            assert "stopped" not in run.data.tags
        elif trial.state.name == "PRUNED":
            run = children[run_id]
            assert run.info.status == "FINISHED"  # cut short on purpose: not a crash
            assert run.data.tags["stopped"] == "pruned"
            assert run.data.tags["stopped_reason"].startswith("pruned at epoch")
            epoch = int(run.data.tags["stopped_at_epoch"])
            assert run.data.tags["stopped_reason"].startswith(f"pruned at epoch {epoch} of")
            assert run.info.run_name.startswith("ours pruned trial ")
            assert "test_accuracy" not in run.data.metrics  # test is measured on finished runs only
        elif run_id is not None:  # FAIL: a run that exists says why
            run = children[run_id]
            assert run.info.status in ("FAILED", "KILLED")
            assert run.data.tags.get("failure_reason")
    logged = {t.user_attrs.get("mlflow_run_id") for t in trials} - {None}
    assert set(children) == logged, "a child run that no trial owns"
    assert parent.info.status == "FINISHED"
    return states
