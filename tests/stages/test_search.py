"""`make search` as a user runs it (python -m pipeline search=smoke), checked in Optuna's
storage and in MLflow: one child per trial, pruned ones shown as such, resumable."""

import pytest
from helpers import free_port, run_app, tracking_server_down
from helpers.search import check_one_child_per_trial, search_runs, the_study
from helpers.summary import printed_summary
from mlflow.tracking import MlflowClient

from pipeline import config
from pipeline.errors import PipelineError


def search(tmp_path, *overrides, env_extra=None):
    """`python -m pipeline search=smoke`, its data, store and study under tmp_path."""
    return run_app(
        "search=smoke",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.mlruns_dir={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / 'out'}",
        *overrides,
        env={
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
            **(env_extra or {}),
        },
        timeout=600,
    )


def test_a_search_is_one_parent_with_a_child_per_trial_and_resumes(tmp_path):
    done = search(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    study = the_study(storage)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    parent, children = search_runs(uri)
    states = check_one_child_per_trial(study, parent, children, 8)
    assert states["PRUNED"] >= 1, "the median pruner stopped no trial of the smoke space"
    # the best child is the best COMPLETE trial, by validation accuracy
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert parent.data.tags["best_child_run_id"] == best.user_attrs["mlflow_run_id"]
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.data.metrics["trials_pruned"] == states["PRUNED"]
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/trials.csv", "summary/results_by_config.json"} <= artifacts
    # The terminal's summary: trials best first by val_acc, the winner marked ★.
    rows = printed_summary(done.stdout, parent.data.tags["best_child_run_id"], children)
    trial_of = {str(t.number): t.user_attrs.get("mlflow_run_id") for t in study.trials}
    (marked,) = [r for r in rows if r["mark"] == "★"]
    assert trial_of[marked["trial"]] == parent.data.tags["best_child_run_id"]
    assert sum(r["status"] == "pruned" for r in rows) == states["PRUNED"]

    # The same command again: the study is complete, nothing is trained twice.
    again = search(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "8 of 8 trials done" in again.stdout + again.stderr
    assert len(the_study(storage).trials) == len(study.trials)
    parent_again, children_again = search_runs(uri)
    assert parent_again.info.run_id == parent.info.run_id and set(children_again) == set(children)

    # More trials asked of the same study: it grows to them, under the same parent.
    more = search(tmp_path, "search.n_trials=10")
    assert more.returncode == 0, more.stderr[-3000:]
    parent_more, children_more = search_runs(uri)
    assert parent_more.info.run_id == parent.info.run_id
    check_one_child_per_trial(the_study(storage), parent_more, children_more, 10)


def test_two_workers_share_one_study(tmp_path):
    # Trials of ~1 s: the other worker has started long before 10 of them are done.
    done = search(
        tmp_path, "search.workers=2", "search.n_trials=10", "train.epochs=20", "search.pruner=none"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study = the_study(f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    parent, children = search_runs(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    check_one_child_per_trial(study, parent, children, 10)
    workers = {t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}
    assert len(workers) == 2, f"trials ran in {workers}"


def test_a_bad_search_space_is_named_and_exits_2(tmp_path):
    done = search(tmp_path, "search.space={train.learning_rate:{low:1,high:0.1}}")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "search.space.train.learning_rate: low < high" in output and "Traceback" not in output
    assert not (tmp_path / "mlruns" / "optuna.db").exists(), "a study was started anyway"


@pytest.mark.parametrize(
    "space, message",
    [
        ({"train.learning_rat": {"low": 0.1, "high": 1}}, "not a setting a trial can vary"),
        ({"paths.data_dir": {"choices": ["a"]}}, "search.space.paths.data_dir: not a setting"),
        ({"train.batch_size": {"low": 1.5, "high": 10}}, "ints (the setting is int)"),
        ({"train.learning_rate": {"low": 0, "high": 1, "log": True}}, "a log range needs low > 0"),
        ({"train.learning_rate": {"low": "fast", "high": 1}}, "low < high"),
        ({"model.activation": {"choices": []}}, "choices must be a non-empty list"),
        ({"model.activation": "relu"}, "must be {low, high[, log]} or {choices: [...]}"),
        ({}, "search.space: empty"),
    ],
)
def test_each_bad_space_entry_is_named(make_cfg, space, message):
    cfg = make_cfg("search=smoke")
    cfg.search.space = space
    with pytest.raises(PipelineError) as error:
        config.validate(cfg, {"preprocess": None, "search": None})
    assert message in str(error.value)


def test_the_space_takes_each_settings_type(make_cfg):
    cfg = make_cfg("search=smoke")
    cfg.search.space = {
        "train.learning_rate": {"low": 0.1, "high": 1, "log": True},
        "train.epochs": {"low": 2, "high": 9},
        "train.momentum": {"low": 0, "high": 1},
        "model.hidden_sizes": {"choices": [[8], [16, 16]]},
    }
    space = config.search_space(cfg)
    assert space["train.learning_rate"]["type"] == "float"
    assert space["train.epochs"]["type"] == "int"
    assert space["train.momentum"]["type"] == "float"  # 0 and 1 written as ints, still a float
    assert space["model.hidden_sizes"] == {"choices": [[8], [16, 16]]}


def test_an_unreachable_storage_or_tracking_server_exits_2_before_any_trial(tmp_path):
    down = free_port()  # nothing listens there
    done = search(tmp_path, f"search.storage=postgresql://user:s3cret@127.0.0.1:{down}/optuna")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert (
        f"cannot open the study storage postgresql+psycopg://user:***@127.0.0.1:{down}/optuna"
        in output
    )
    try:
        import psycopg  # noqa: F401 — the postgres extra
    except ImportError:  # make test-fast without the extras: the line names the fix
        assert "PostgreSQL needs the postgres extra: make install-extras" in output
    else:
        assert "Connection refused" in output
    assert "s3cret" not in output and "Traceback" not in output

    done = search(tmp_path, env_extra=tracking_server_down(down))
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    # named before the search opens anything (the app's tracking-URI check)
    assert "cannot reach the tracking server" in output and "Traceback" not in output
    storage = tmp_path / "mlruns" / "optuna.db"
    assert not storage.exists() or not the_study(f"sqlite:///{storage}").trials, (
        "a trial ran without a parent"
    )
