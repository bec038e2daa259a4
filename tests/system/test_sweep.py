"""Sweeps as a user runs them (`python -m pipeline sweep=smoke ...`), checked in MLflow."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import (
    RESULTS_BY_CONFIG_COLUMNS,
    run_app,
    running_training_runs,
    tracking_server_down,
    wait_for,
)
from helpers.summary import printed_summary
from mlflow.tracking import MlflowClient

from pipeline.paths import PROJECT_ROOT

EXPERIMENT = "sweep-smoke"


# Jobs one at a time in the sweep's own process (joblib runs n_jobs=1 in-process), for
# the tests where parallel workers are not the point: each worker is a fresh interpreter
# that imports the app (~9 CPU-s), which on a 2-core machine is most of a smoke sweep.
IN_PROCESS = "hydra.launcher.n_jobs=1"


def _sweep(tmp_path, db, *overrides, log=None, parallel=False):
    """`python -m pipeline sweep=smoke` into the SQLite store db, in a sweep folder of its
    own; started with its output in the file log (in its own process group), if given.
    parallel: a worker process per core, as a user's sweep runs; else one job at a time."""
    args = (
        "sweep=smoke",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={tmp_path / 'multirun' / str(time.monotonic_ns())}",
        *([] if parallel else [IN_PROCESS]),
        *overrides,
    )
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PIPELINE_DATA_MIRROR": None}
    if log is None:
        return run_app(*args, env=env, timeout=600)
    return run_app(*args, env=env, popen=True, log=log)


def _runs(db) -> pd.DataFrame:
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return pd.DataFrame(
        [
            {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "kind": r.data.tags.get("kind"),
                "family": r.data.tags.get("model_family"),
                "hash": r.data.tags.get("config_hash"),
                "parent": r.data.tags.get("mlflow.parentRunId"),
                "hidden": r.data.params.get("model.hidden_sizes"),
                "eta": r.data.params.get("train.learning_rate"),
                "reason": r.data.tags.get("failure_reason", ""),
                "tags": r.data.tags,
                "metrics": r.data.metrics,
            }
            for r in runs
        ]
    )


def test_smoke_sweep_on_a_fresh_store_links_children_summarizes_and_a_rerun_skips_them(tmp_path):
    """Two parallel jobs on a store made by the sweep; a rerun of the same sweep trains
    nothing again. (The race of parallel jobs logging one dataset is made certain in
    test_tracking: test_a_dataset_lost_to_a_parallel_job_is_logged_on_retry...)"""
    db = tmp_path / "fresh.db"
    result = _sweep(tmp_path, db, parallel=True)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _runs(db)
    parent = runs[runs.kind == "sweep"]
    assert len(parent) == 1 and parent.status.item() == "FINISHED"
    children = runs[runs.kind == "training"]
    assert len(children) == 4 and set(children.status) == {"FINISHED"}
    assert set(children.parent) == {parent.run_id.item()}
    assert sorted(children.family) == ["numpy_mlp", "numpy_mlp", "sklearn_mlp", "sklearn_mlp"]
    assert children.hash.nunique() == 2  # one hash per config, shared by ours and the baseline

    client = MlflowClient(f"sqlite:///{db}")
    parent_id = parent.run_id.item()
    summary = {a.path for a in client.list_artifacts(parent_id, "summary")}
    assert summary == {
        "summary/results.csv",
        "summary/results_by_config.json",
        "summary/test_accuracy_vs_hidden_sizes.png",
        "summary/val_accuracy_by_epoch.png",
    }
    # The parent's columns are the winner's: the best child by validation, either family.
    tags, metrics = parent.tags.item(), parent.metrics.item()
    winner = children.set_index("run_id").loc[tags["best_child_run_id"]]
    best_val = max(m["val_accuracy"] for m in children.metrics)
    assert winner.metrics["val_accuracy"] == best_val == metrics["val_accuracy"]
    assert metrics["test_accuracy"] == winner.metrics["test_accuracy"]
    assert tags["winner_family"] == winner.family
    assert client.get_run(winner.name).data.tags["best_in_sweep"] == "true"
    for family, label in (("numpy_mlp", "ours"), ("sklearn_mlp", "sklearn")):  # and each family's
        runs_of = children[children.family == family]
        assert metrics[f"best_{label}_val_accuracy"] == max(
            m["val_accuracy"] for m in runs_of.metrics
        )
    by_config = client.download_artifacts(
        parent_id, "summary/results_by_config.json", str(tmp_path)
    )
    table = json.loads(Path(by_config).read_text())
    assert table["columns"] == RESULTS_BY_CONFIG_COLUMNS
    assert len(table["data"]) == 2  # one row per config: ours and scikit-learn side by side
    # Its description names what it logs (no summary/results.md, which it never wrote).
    note = tags["mlflow.note.content"]
    assert "results.md" not in note
    plot = re.compile(r"test_accuracy_vs_\w+\.png")
    assert all(Path(a).name in note or plot.fullmatch(Path(a).name) for a in summary)
    assert "test_accuracy_vs_<setting>.png" in note
    # The terminal's summary: best first by val_acc, 4 decimals, the winner marked ★.
    rows = printed_summary(
        result.stdout, tags["best_child_run_id"], {r: client.get_run(r) for r in children.run_id}
    )
    assert {r["family"] for r in rows} == {"ours", "sklearn"}
    assert {r["hidden"] for r in rows} == {"8", "16"}  # what varies; the rest said once
    assert "cost" not in rows[0] and "per family: ours cost=quadratic" in result.stdout

    assert _sweep(tmp_path, db).returncode == 0  # again: nothing is trained twice
    again = _runs(db)
    training = again[again.kind == "training"]
    assert set(training.run_id) == set(children.run_id)
    parents = again[again.kind == "sweep"]
    # the rerun resumed the same parent: one parent, its four children, one summary
    assert len(parents) == 1 and set(parents.status) == {"FINISHED"}
    assert set(training.parent) == {parent_id}
    table = pd.read_csv(client.download_artifacts(parent_id, "summary/results.csv"))
    assert len(table) == 4


def test_a_sweep_killed_midway_and_rerun_has_one_finished_run_per_config(tmp_path):
    db = tmp_path / "store.db"
    overrides = ["train.epochs=40", "model.hidden_sizes=[8],[12],[16],[20]"]
    log = tmp_path / "killed-sweep.log"
    process = _sweep(tmp_path, db, *overrides, log=log, parallel=True)
    try:  # kill as soon as some run is training
        wait_for("training run", lambda: running_training_runs(db), process, every=0.05, log=log)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    result = _sweep(tmp_path, db, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    training = _runs(db)
    training = training[training.kind == "training"]
    finished = training[training.status == "FINISHED"]
    state = training[["family", "hidden", "status", "reason"]].to_string()
    assert len(finished) == 8, state
    assert finished.groupby(["hash", "family"]).size().eq(1).all(), state
    assert "RUNNING" not in set(training.status), state  # the killed ones are marked KILLED
    parents = _runs(db)
    parents = parents[parents.kind == "sweep"]
    assert len(parents) == 1 and parents.status.item() == "FINISHED"  # reopened, then closed


def test_a_diverging_job_fails_while_the_others_finish_and_the_sweep_says_so(tmp_path):
    db = tmp_path / "store.db"
    result = _sweep(
        tmp_path, db, "model=modern", "model.hidden_sizes=[16]", "train.learning_rate=0.1,1e20"
    )
    assert result.returncode == 1, result.stderr[-3000:]  # any failed job: a script notices
    assert "1 of 2 jobs failed" in result.stderr + result.stdout
    runs = _runs(db)
    training = runs[runs.kind == "training"]
    diverged = training[training.eta == "1e+20"]
    assert set(diverged.status) == {"FAILED"}
    assert any("diverged" in reason for reason in diverged.reason)
    assert set(training[training.eta == "0.1"].status) == {"FINISHED"}
    assert runs[runs.kind == "sweep"].status.item() == "FINISHED"


def test_a_sweep_whose_every_job_fails_exits_nonzero(tmp_path):
    db = tmp_path / "store.db"
    result = _sweep(
        tmp_path,
        db,
        "model=modern",
        "baseline=none",
        "model.hidden_sizes=[8],[16]",
        "train.learning_rate=1e20",
    )
    assert result.returncode != 0
    assert "all 2 jobs failed" in result.stderr + result.stdout
    runs = _runs(db)
    assert runs[runs.kind == "sweep"].status.item() == "FAILED"


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    db = tmp_path / "store.db"
    result = _sweep(tmp_path, db, "hydra/launcher=submitit_local", "baseline=none", parallel=True)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _runs(db)
    training = runs[runs.kind == "training"]
    assert len(training) == 2 and set(training.status) == {"FINISHED"}
    assert set(training.parent) == {runs[runs.kind == "sweep"].run_id.item()}


def test_a_sweep_against_an_unreachable_tracking_server_exits_nonzero(tmp_path):
    result = run_app(
        "sweep=smoke",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        env=tracking_server_down(),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "cannot create the parent run" in output and "Nothing was run" in output
    assert not list((tmp_path / "multirun").glob("*/result.json"))  # no job ran


def test_a_sweep_on_a_read_only_store_exits_nonzero(tmp_path):
    """A store on a file system mounted read-only (root can write through chmod)."""
    db = tmp_path / "ro" / "store.db"
    db.parent.mkdir()
    assert _sweep(tmp_path, db, "baseline=none", "model.hidden_sizes=[8]").returncode == 0
    if os.geteuid() == 0:
        made = subprocess.run(
            ["mount", "--bind", "-o", "ro", str(db.parent), str(db.parent)], capture_output=True
        )
        if made.returncode:
            pytest.skip(f"cannot make a read-only mount here: {made.stderr.decode()[:200]}")
    else:
        os.chmod(db.parent, 0o555)
        os.chmod(db, 0o444)
    try:
        result = _sweep(tmp_path, db, "baseline=none", "model.hidden_sizes=[12]")
        output = result.stdout + result.stderr
        assert result.returncode == 1, output[-3000:]
        assert "cannot create the parent run" in output
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(db.parent)], check=False)
        else:
            os.chmod(db.parent, 0o755)


def test_the_default_grid_gives_each_activation_its_own_init_and_rates(make_cfg):
    """A fair grid: He init and ReLU's η range for ReLU, 1/√n and sigmoid's for sigmoid;
    pinning a value on the command line holds it for every child."""
    from pipeline.stages import sweep

    chosen = {}
    for activation in ("sigmoid", "relu"):
        for step in ("low", "mid", "high"):
            cfg = make_cfg("sweep=grid", f"model.activation={activation}", f"sweep.step={step}")
            chosen[activation, step] = (cfg.model.init, cfg.train.learning_rate)
    assert {chosen["relu", s][0] for s in ("low", "mid", "high")} == {"he"}
    assert {chosen["sigmoid", s][0] for s in ("low", "mid", "high")} == {"scaled"}
    assert [chosen["relu", s][1] for s in ("low", "mid", "high")] == [0.03, 0.1, 0.3]
    assert [chosen["sigmoid", s][1] for s in ("low", "mid", "high")] == [0.3, 1.0, 3.0]
    pinned = make_cfg(
        "sweep=grid", "model.activation=relu", "train.learning_rate=3.0", "model.init=normal"
    )
    assert (pinned.model.init, pinned.train.learning_rate) == ("normal", 3.0)

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        full = compose("config", overrides=["sweep=grid"], return_hydra_config=True)
    fixed = sweep.held_fixed(full, sweep.swept(full))
    assert "model.cost=quadratic" in fixed and "train.epochs=30" in fixed
    assert "model.init per activation: sigmoid scaled, tanh scaled, relu he" in fixed
    assert "train.learning_rate per activation: sigmoid 0.3/1/3" in fixed
    assert "model.activation" not in fixed.split(";")[0]  # swept, so not held fixed


def test_an_edited_preset_starts_a_new_parent_instead_of_resuming_the_old_one():
    """Resuming reopens the parent of the same sweep; a preset file edited since (here: the
    ReLU η range) resolves to other children, so it must not mix them under that parent."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from pipeline.stages import sweep

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        config = compose("config", overrides=["sweep=grid"], return_hydra_config=True)
        again = compose("config", overrides=["sweep=grid"], return_hydra_config=True)
    assert sweep.sweep_key(config) == sweep.sweep_key(again)
    with open_dict(again):
        again.sweep.eta.relu.high = 1.0
    assert sweep.sweep_key(config) != sweep.sweep_key(again)


def test_seed_means_average_each_config_over_its_seeds_and_skip_failed_and_pruned_children():
    from pipeline.tracking import parents

    rows = [
        ("ours all tweaks seed=0 · frontier 800 relu η=0.05 m=100", 0, "FINISHED", 0.99),
        ("ours all tweaks seed=1 · frontier 800 relu η=0.05 m=100", 1, "FINISHED", 0.98),
        ("ours all tweaks seed=2 · frontier 800 relu η=0.05 m=100", 2, "FAILED", None),
        ("ours no elastic seed=0 · frontier 800 relu η=0.05 m=100", 0, "FINISHED", 0.97),
        ("ours no elastic seed=1 · frontier 800 relu η=0.05 m=100", 1, "FINISHED", 0.95),
        # finished, but cut short by a pruner: not a seed of the mean
        ("ours pruned no elastic seed=3 · frontier 800 relu η=0.05 m=100", 3, "FINISHED", 0.1),
    ]
    table = pd.DataFrame(
        [
            {
                "run_name": n,
                "seed": s,
                "status": st,
                "family": "numpy_mlp",
                "val_accuracy": a,
                "test_accuracy": a,
                "stopped": "pruned" if s == 3 else None,
            }
            for n, s, st, a in rows
        ]
    )
    means = parents.seed_means(table).set_index("config")
    assert list(means.index) == [
        "ours all tweaks · frontier 800 relu η=0.05 m=100",
        "ours no elastic · frontier 800 relu η=0.05 m=100",
    ]
    assert means.seeds.tolist() == [2, 2]
    assert means.test_accuracy_mean.tolist() == pytest.approx([0.985, 0.96])
    assert means.test_accuracy_std.tolist() == pytest.approx([0.00707107, 0.01414214])


def test_a_config_group_choice_names_the_sweep_child():
    from pipeline.stages import sweep

    swept = {"ablation", "seed", "model.cost", "sweep.step"}
    overrides = ["ablation=elastic", "seed=1", "model.cost=quadratic", "sweep.step=2"]
    overrides += ["train.epochs=3"]  # set for every job, so not what tells them apart
    assert sweep.varied(overrides, swept) == [
        "ablation=elastic",
        "seed",
        "model.cost",
        "train.learning_rate",
    ]


def test_the_ablation_sweep_switches_one_tweak_off_per_row_and_averages_the_seeds(tmp_path):
    """The frontier ablation on the 8×8 digits (small and short, but the real presets):
    one parent; per ablation row and seed a finished child whose params show the tweak
    off; summary/seed_means.csv holds each row's mean over its seeds."""
    db = tmp_path / "ablation.db"
    done = run_app(
        "sweep=ablation",
        "data=digits",
        "stages=[preprocess,train,evaluate]",
        "model.hidden_sizes=[16]",
        "train.epochs=2",
        "seed=0,1",
        IN_PROCESS,
        f"tracking.experiment={EXPERIMENT}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PIPELINE_DATA_MIRROR": None},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _runs(db)
    (parent,) = runs[runs.kind == "sweep"].run_id
    children = runs[runs.kind == "training"]
    assert len(children) == 8 and set(children.status) == {"FINISHED"}
    assert set(children.family) == {"numpy_mlp"}  # the baseline is off
    params = {}
    for run in MlflowClient(f"sqlite:///{db}").search_runs(
        [MlflowClient(f"sqlite:///{db}").get_experiment_by_name(EXPERIMENT).experiment_id],
        "tags.kind = 'training'",
    ):
        # 'ours no elastic seed=1 · frontier 16 relu η=0.05 m=100', 'ours all tweaks seed=0 · …'
        lead = run.info.run_name.split(" · ")[0]
        row = "none" if "all tweaks" in lead else re.search(r"\bno (\w+)", lead)[1]
        params.setdefault(row, []).append(run.data.params)
    assert sorted(params) == ["cosine", "elastic", "momentum", "none"]
    for p in params["none"]:
        assert (p["train.momentum"], p["train.schedule"], p["train.augment.elastic_alpha"]) == (
            "0.9",
            "cosine",
            "34.0",
        )
    assert all("train.augment.elastic_alpha" not in p for p in params["elastic"])
    assert all(p["train.schedule"] == "constant" for p in params["cosine"])
    assert all(
        (p["train.momentum"], p["train.learning_rate"]) == ("0.0", "0.5")
        for p in params["momentum"]
    )

    path = MlflowClient(f"sqlite:///{db}").download_artifacts(
        parent, "summary/seed_means.csv", str(tmp_path)
    )
    means = pd.read_csv(path)
    assert len(means) == 4 and set(means.seeds) == {2}
    tests = children.assign(row=[n for n in children.tags.map(lambda t: t["mlflow.runName"])])
    for row in means.itertuples():
        mine = [
            m["test_accuracy"]
            for m, name in zip(children.metrics, tests.row)
            if re.sub(r" seed=\d+", "", name) == row.config
        ]
        assert len(mine) == 2 and row.test_accuracy_mean == pytest.approx(sum(mine) / 2)
