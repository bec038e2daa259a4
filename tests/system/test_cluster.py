"""Past one machine, for real: `make server` (a PostgreSQL cluster of the project's own plus
`mlflow server` with proxied artifacts), a sweep on a local Ray cluster of 2 workers logging
to it, and a 2-worker Optuna search on the same database, one worker killed with SIGKILL.

Needs Debian's postgresql and the ray/postgres extras (`make test` installs both; .ci/run
installs PostgreSQL). Skipped where they are missing, except under CI=true: a failure there.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from helpers import free_port, require, run_app, wait_for, wait_http
from helpers.search import check_one_child_per_trial, search_runs, the_study
from mlflow.tracking import MlflowClient

from pipeline.serve import postgres

pytestmark = pytest.mark.slow


def _server_folder() -> Path:
    """A folder the postgres user can reach (pytest's own temp folders are private to root);
    skipped (a failure under CI=true) without PostgreSQL or the postgres extra."""
    require("PostgreSQL", postgres.bindir)
    require("the postgres extra (psycopg)", lambda: __import__("psycopg"))
    folder = Path(tempfile.mkdtemp(prefix="pipeline-server-"))
    folder.chmod(0o755)
    return folder


def _start_server(folder: Path) -> tuple[subprocess.Popen, int, int, Path]:
    """`python -m pipeline.serve.server` (what `make server` runs) started on free ports, its
    store in folder/mlruns, its output in folder/server.log: (process, port, pg_port, log)."""
    port, pg_port = free_port(), free_port()
    log = folder / "server.log"
    process = run_app(
        "--port",
        port,
        "--pg-port",
        pg_port,
        "--mlruns",
        folder / "mlruns",
        module="pipeline.serve.server",
        popen=True,
        log=log,
    )
    return process, port, pg_port, log


@pytest.fixture(scope="module")
def server():
    """The tracking server of `make server`, shared by the tests of this module."""
    folder = _server_folder()
    process, port, pg_port, log = _start_server(folder)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", process, log=log)
        cluster = postgres.Cluster(folder / "mlruns" / "postgres")
        yield SimpleNamespace(
            uri=url, optuna=cluster.url(pg_port, "optuna"), folder=folder, cluster=cluster, log=log
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    try:
        assert process.returncode == 0, log.read_text()[-3000:]
        assert cluster.port() is None, "the server left its PostgreSQL cluster running"
        assert (
            "127.0.0.1" in (folder / "mlruns" / "postgres" / "data" / "postmaster.opts").read_text()
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _env(server) -> dict:
    """Log to the server; no data mirror or Ray cluster from outside."""
    return {"MLFLOW_TRACKING_URI": server.uri, "PIPELINE_DATA_MIRROR": None, "RAY_ADDRESS": None}


def test_a_ray_sweep_logs_each_job_once_to_the_postgres_server(server, tmp_path):
    require("the ray extra", lambda: __import__("hydra_plugins.hydra_ray_launcher.ray_launcher"))
    done = run_app(
        "sweep=smoke",
        "hydra/launcher=ray_cluster",
        "++hydra.launcher.ray.init.num_cpus=2",
        "tracking.experiment=ray-smoke",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        env=_env(server),
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    ray_workers = set(re.findall(r"\(_run_job pid=(\d+)", output))
    assert len(ray_workers) == 2, f"jobs ran in Ray workers {ray_workers}"

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("ray-smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(runs) == 1 + len(children)
    jobs = sorted(
        (r.data.params["model.hidden_sizes"], r.data.tags["model_family"]) for r in children
    )
    assert jobs == sorted((h, f) for h in ("[8]", "[16]") for f in ("numpy_mlp", "sklearn_mlp"))
    assert {r.info.status for r in children} == {"FINISHED"}
    # Artifacts went through the server (no shared disk needed), into its own store.
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in children)
    assert list((server.folder / "mlruns" / "server-artifacts").rglob("MLmodel"))
    # The evaluate stage loaded each model back through the server and scored it.
    for run in client.search_runs([experiment.experiment_id], "tags.evaluated = 'true'"):
        assert run.data.metrics["eval_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])
    assert len(client.search_runs([experiment.experiment_id], "tags.evaluated = 'true'")) == 4
    assert parent.data.tags.get("registered_model", "").startswith("digits-classifier v")


def _started_workers(log: Path, launcher: subprocess.Popen) -> list[int]:
    found = wait_for(
        "workers started by the search",
        lambda: re.search(r"workers started \(pids (\d+), (\d+)\)", log.read_text()),
        launcher,
        log=log,
    )
    return [int(found[1]), int(found[2])]


def test_a_two_worker_search_on_postgres_outlives_a_killed_worker(server, tmp_path):
    n_trials = 6
    # No pruner here (test_search covers it): every trial runs its 60 epochs, seconds, so
    # the worker is surely killed inside one. A lost worker is noticed after 10 s.
    command = [
        "search=smoke",
        f"search.n_trials={n_trials}",
        "search.pruner=none",
        "train.epochs=60",
        "search.stale_after=10",
        "tracking.experiment=search-pg",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.mlruns_dir={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    env = {**_env(server), "OPTUNA_STORAGE": server.optuna}
    log = tmp_path / "search.log"
    launcher = run_app(*command, "search.workers=2", env=env, popen=True, log=log)
    # One storage (one connection pool) for all the polling below: a URL would open a new
    # engine per call, and their idle connections exhaust the server's max_connections.
    storage = optuna.storages.RDBStorage(server.optuna)
    running = (optuna.trial.TrialState.RUNNING,)
    try:
        victim = _started_workers(log, launcher)[1]

        def victims(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
            return [
                t
                for t in study.get_trials(states=running)
                if t.user_attrs.get("worker", "").endswith(f":{victim}")
            ]

        def a_victims_trial_past_epoch_3() -> optuna.Study | None:
            try:
                study = the_study(storage)
            except ValueError:
                return None  # no study yet
            return study if any((t.last_step or 0) >= 3 for t in victims(study)) else None

        study = wait_for(
            "trial of the second worker past epoch 3",
            a_victims_trial_past_epoch_3,
            launcher,
            seconds=600,
            log=log,
        )
        os.kill(victim, signal.SIGKILL)
        time.sleep(1)  # the trial it died in: RUNNING until its heartbeat goes stale
        (killed,) = [t.number for t in victims(study)]
        launcher.wait(timeout=900)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its workers
    output = log.read_text()
    # The study went on without the killed worker, and the launcher says what happened.
    assert launcher.returncode == 1, output[-3000:]
    assert f"pid {victim}) ended with killed by signal 9" in output
    study = the_study(storage)
    assert study.trials[killed].state == optuna.trial.TrialState.FAIL  # stale heartbeat
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == n_trials

    # The same command again resumes: nothing left to train; it summarises and closes.
    again = run_app(*command, env=env, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert f"{n_trials} of {n_trials} trials done" in again.stdout + again.stderr
    study = the_study(storage)
    parent, children = search_runs(server.uri, "search-pg")
    check_one_child_per_trial(study, parent, children, n_trials)
    killed_run = children[study.trials[killed].user_attrs["mlflow_run_id"]]
    assert killed_run.info.status == "KILLED"
    assert killed_run.data.tags["failure_reason"].startswith("interrupted")
    assert server.optuna.split("@")[0].split(":")[-1] not in output + again.stdout + again.stderr, (
        "the database password was shown"
    )
    assert all(r.info.status != "RUNNING" for r in children.values())
    assert not (tmp_path / "mlruns" / "optuna.db").exists(), "the study went to SQLite"


def test_stopping_make_server_after_its_postgresql_died_is_one_line(tmp_path):
    """PostgreSQL can die under the server (OOM killer, a crash): stopping `make server`
    then says so in a line and exits 0, instead of a pg_ctl traceback."""
    folder = _server_folder()
    process, port, _, log = _start_server(folder)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process, log=log)
        cluster = postgres.Cluster(folder / "mlruns" / "postgres")
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        # Up to a minute for it to be seen stopped; not asserted (the server's own words are).
        deadline = time.monotonic() + 60
        while cluster.port() is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        output = log.read_text()
        assert process.returncode == 0, output[-3000:]
        assert "Traceback" not in output and "had stopped already" in output, output[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
