"""Stage `sweep`: a Hydra multirun as one MLflow parent run with a child run per job.

`SweepCallback` (named in conf/sweep/*.yaml) runs in the launching process:
- before any job starts, it creates the SQLite database, the experiment and the parent run
  (parallel jobs on a fresh database would otherwise race on table creation), and writes
  the parent's id into the sweep folder, where each job reads it;
- when every job has ended, it summarises the children on the parent (tracking/parents.py)
  and registers the best if it beats the champion. The multirun exits non-zero if any job
  failed (or the parent could not be made), after its summary.
Each job is the app's own run (app.py) with the parent's id, its label and resume on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow
from filelock import FileLock, Timeout
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline import config as schema
from pipeline import interrupts, logs, progress
from pipeline.config import plain
from pipeline.tracking import identity, parents, runs, store

log = logging.getLogger(__name__)
PARENT_FILE = "parent_run_id"


RESULT_FILE = "result.json"
SWEPT_FILE = "swept_keys.json"  # what the sweep varies, for its jobs' run names
_WATCHES: list[progress.Watch] = []  # the bar of the sweep this process launches
_CLAIMS: list[FileLock] = []  # the config the job running in this process holds (claim_config)


def swept_keys(hydra_cfg) -> set[str]:
    """The keys the running sweep varies (its preset's grid and the command line's comma
    lists), as its launcher wrote them for its jobs."""
    path = Path(hydra_cfg.sweep.dir) / SWEPT_FILE
    if path.exists():
        return set(json.loads(path.read_text()))
    return {str(k) for k in (OmegaConf.select(hydra_cfg, "sweeper.params") or {})}


def varied(overrides, swept_keys) -> list[str]:
    """What a sweep job varies, for its run names (describe.run_name): the swept model and
    training settings and seed, in the order of its overrides; sweep.step (the grid's η
    step) as the learning rate it picks; an ablation row as `ablation=<row>`."""
    keys = []
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key not in swept_keys:
            continue
        if key.startswith(("model.", "train.")) or key == "seed":
            keys.append(key)
        elif key.startswith("sweep."):  # conf/sweep/grid.yaml: the step picks η per activation
            keys.append("train.learning_rate")
        elif key == "ablation":  # a config group that switches tweaks off (conf/ablation/)
            keys.append(f"ablation={value}")
    return list(dict.fromkeys(keys))


def parent_run_id(sweep_dir: str | Path) -> str | None:
    path = Path(sweep_dir) / PARENT_FILE
    return path.read_text().strip() if path.exists() else None


def write_job_result(output_dir: str | Path, result: dict) -> None:
    Path(output_dir, RESULT_FILE).write_text(json.dumps(result, indent=2))


def best_run(run_ids: list[str]) -> dict | None:
    """The job's run with the best validation accuracy: its name, val and test accuracy
    (the launcher's progress shows the best so far)."""
    client = mlflow.MlflowClient()
    found = [client.get_run(run_id) for run_id in run_ids]
    scored = [r for r in found if "val_accuracy" in r.data.metrics]
    if not scored:
        return None
    best = max(scored, key=lambda r: r.data.metrics["val_accuracy"])
    return {
        "run_name": best.info.run_name,
        "val_accuracy": best.data.metrics["val_accuracy"],
        "test_accuracy": best.data.metrics.get("test_accuracy"),
    }


def job_results(sweep_dir: Path) -> list[dict]:
    """The results the sweep's jobs have written so far (a job being written is skipped)."""
    results = []
    for path in sorted(sweep_dir.glob(f"*/{RESULT_FILE}")):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return results


def job_count(config) -> int | None:
    """How many jobs Hydra's basic sweeper makes of the preset's grid and the command
    line's comma lists (None for another sweeper)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if "BasicSweeper" not in str(OmegaConf.select(config, "hydra.sweeper._target_") or ""):
        return None
    grid = [f"{k}={v}" for k, v in swept(config).items()]
    try:
        parsed = OverridesParser.create().parse_overrides(grid)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # noqa: BLE001 — only a progress bar's total
        return None


def sweep_progress(sweep_dir: Path) -> tuple[int, str]:
    """(jobs ended, 'best val … · <run>' so far, with the failures) for the sweep's bar."""
    results = job_results(sweep_dir)
    failed = sum(r["status"] != "ok" for r in results)
    bests = [r["best"] for r in results if r.get("best")]
    note = f"{failed} failed · " if failed else ""
    if bests:
        best = max(bests, key=lambda b: b["val_accuracy"])
        note += f"best val {best['val_accuracy']:.4f}: {best['run_name']}"
    return len(results), note


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # Workers start after this: one BLAS thread each, or 2 jobs × N threads fight for cores.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        # Ctrl-C or SIGTERM to the launcher stops its workers first (each closes its run
        # KILLED); then the app closes the parent (app.stopped).
        interrupts.install(
            before_raising=lambda signum: interrupts.stop_descendants(
                signum, first=store.running_pids(parent_run_id(config.hydra.sweep.dir))
            )
        )
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
        if "ray" in launcher:
            keep_sigterm_from_ray()
        if launcher.endswith((".JoblibLauncher", ".LocalLauncher")):  # joblib, submitit_local
            interrupts.name_as_launcher()  # its jobs stop if it is killed (on_job_start)
        logs.redact_all_handlers()
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            parent = open_parent(config, sweep_dir)
        except Exception as e:  # noqa: BLE001 — Hydra would only warn and run every job
            log.error(
                "sweep: cannot create the parent run in %s: %s: %s. Nothing was run; "
                "check MLFLOW_TRACKING_URI (is the server up? is the store writable?)",
                logs.redact(store.tracking_uri(config)),
                type(e).__name__,
                str(e)[:500],
            )
            sys.exit(1)
        (sweep_dir / PARENT_FILE).write_text(parent)
        (sweep_dir / SWEPT_FILE).write_text(json.dumps(sorted(swept(config))))
        log.info("sweep: parent run %s", parent)
        # Not an attribute of the callback: the launcher pickles it for the jobs.
        _WATCHES.append(
            progress.Watch(
                progress.bar(job_count(config), "sweep", "job", bool(config.get("quiet"))),
                lambda: sweep_progress(sweep_dir),
            ).__enter__()
        )

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        # In the job's process (a loky worker, a submitit job): not outliving a launcher
        # killed by SIGKILL; not training a config that another run of this sweep trains.
        interrupts.stop_with_launcher(busy=lambda: bool(_CLAIMS))
        _CLAIMS.append(claim_config(config))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        while _CLAIMS:
            _CLAIMS.pop().release()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        while _WATCHES:
            _WATCHES.pop().__exit__(None, None, None)
        self.summarize(config)

    def summarize(self, config: DictConfig) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        parent = parent_run_id(sweep_dir)
        results = job_results(sweep_dir)
        failed = [r for r in results if r["status"] != "ok"]
        if parent is None:  # Hydra turns an exception here into a warning: exit instead
            log.error(
                "sweep: no parent run (see the error above); %d jobs, %d failed",
                len(results),
                len(failed),
            )
            sys.exit(1)
        status = "FINISHED" if len(failed) < len(results) else "FAILED"
        try:
            store.setup(config)
            table = parents.summarize(parent, results)
            parents.register_best(config, parent, table)
        except Exception as e:  # noqa: BLE001
            status = "FAILED"
            log.error(
                "sweep: could not summarise on parent run %s: %s: %s",
                parent,
                type(e).__name__,
                str(e)[:500],
            )
            failed.append({"overrides": ["(summary)"], "error": str(e)})
            table = None
        finally:  # never leave the parent RUNNING
            try:
                mlflow.MlflowClient().set_terminated(parent, status)
            except Exception as e:  # noqa: BLE001
                log.error("sweep: could not close parent run %s: %s", parent, e)
        log.info(
            "sweep: %d jobs, %d failed; summary on parent run %s", len(results), len(failed), parent
        )
        if table is not None:
            print("\n".join(parents.summary_lines(table, f"sweep {preset_name(config)}")))
        if failed:  # a script must notice: exit non-zero, after the summary
            word = "all" if len(failed) == len(results) else f"{len(failed)} of"
            log.error(
                "sweep: %s %d jobs failed; see the FAILED child runs of parent run %s "
                "(tag failure_reason):\n  %s",
                word,
                len(results),
                parent,
                "\n  ".join(
                    f"{' '.join(r['overrides'])}: {r.get('error', '')[:300]}" for r in failed
                ),
            )
            sys.exit(1)


def claim_config(config) -> FileLock:
    """Hold this job's config, on this machine, for as long as the job runs: a lock that the
    kernel drops with its process (SIGKILL too). A job of a second run of the same sweep
    that finds the config held, or one of its runs training in another live process, waits
    for it to end rather than training the config twice (it says which run it waits for);
    it then finds that run FINISHED and reuses it, or, if it was killed, trains it itself."""
    key = identity.resume_key(config)
    where = store.store_uri(config.paths.mlruns_dir)  # the store, unchecked: the job checks it
    store_key = hashlib.sha256(f"{where}|{key}".encode()).hexdigest()
    folder = Path(tempfile.gettempdir()) / f"pipeline-{getattr(os, 'getuid', lambda: 0)()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    claim = FileLock(folder / f"config-{store_key[:24]}.lock")
    try:
        claim.acquire(timeout=0)
        told = False
    except Timeout:
        _say_who_trains(config)
        claim.acquire()
        told = True
    # A run of the config outside any sweep (`python -m pipeline` with the same settings)
    # holds no claim: waited for by its process.
    while (other := _training_elsewhere(config)) is not None:
        if not told:
            _say_who_trains(config, other)
            told = True
        time.sleep(2)
    return claim


def _training_elsewhere(config):
    """runs.training_elsewhere, or None where the store cannot say: the job then goes on,
    and its own first use of the store reports the problem as the app does."""
    try:
        return runs.training_elsewhere(config)
    except Exception as e:  # noqa: BLE001
        log.warning("sweep: could not look for a run of this config: %s", logs.redact(str(e))[:300])
        return None


def _say_who_trains(config, other=None) -> None:
    """One line: which run (and process) trains this job's config, which this job waits for."""
    other = other or _training_elsewhere(config)
    if other is None:
        who = "another job on this machine"
    else:
        tags = other.data.tags
        who = f"run {other.info.run_id} ({other.info.run_name}, pid {tags.get('pid')})"
    log.info(
        "sweep: this job's config is being trained by %s: waiting for it to end rather than "
        "training it twice",
        who,
    )


def keep_sigterm_from_ray() -> None:
    """ray.init (in hydra-ray-launcher) replaces the launcher's SIGTERM handler with Ray's,
    which kills the local cluster and exits 1 with the runs left RUNNING, and installs a
    C-level one in its workers that dies with a stack dump. Keep ours in both: the workers
    are told by environment, the launcher by making Ray's setter a no-op (Ray has no
    option for it; this process only)."""
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray._private.utils as ray_utils
    except ImportError:  # the ray extra is not installed: Hydra will say so
        return
    ray_utils.set_sigterm_handler = lambda handler: None


def preset_name(config) -> str:
    """The sweep preset (conf/sweep/<name>.yaml) this multirun was started with."""
    return str(OmegaConf.select(config, "hydra.runtime.choices.sweep") or "custom")


def swept(config) -> dict[str, str]:
    """What the sweep varies: the preset's grid and the command line's comma lists."""
    grid = {
        str(k): str(v) for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()
    }
    for override in OmegaConf.select(config, "hydra.overrides.task") or []:
        key, _, value = str(override).partition("=")
        if "," in value and not key.startswith("hydra"):
            grid[key] = value
    return grid


def held_fixed(config, grid: dict) -> str:
    """The settings the sweep does not vary, e.g. 'model.cost=quadratic, train.epochs=30,
    …; model.init per activation: sigmoid scaled, relu he'. A setting a preset takes from
    sweep.init / sweep.eta is named as per activation (and per step), not as fixed."""
    fixed, per_activation = [], []
    for key in schema.RECIPE_KEYS:
        if key in grid:
            continue
        parent_key, _, leaf = key.rpartition(".")
        raw = (
            plain(OmegaConf.select(config, parent_key), resolve=False)[leaf] if parent_key else None
        )
        if isinstance(raw, str) and raw.startswith("${sweep."):
            table = plain(config.sweep.init if leaf == "init" else config.sweep.eta)
            per_activation.append(
                f"{key} per activation: "
                + ", ".join(
                    f"{a} {v if leaf == 'init' else '/'.join(f'{x:g}' for x in v.values())}"
                    for a, v in table.items()
                )
            )
        else:
            fixed.append(f"{key}={plain(OmegaConf.select(config, key), resolve=False)}")
    return "; ".join([", ".join(fixed), *per_activation])


def task_overrides(config) -> list[str]:
    """The sweep's command-line overrides of the pipeline's settings (not Hydra's or paths)."""
    return sorted(
        str(o)
        for o in OmegaConf.select(config, "hydra.overrides.task") or []
        if not str(o).startswith(("hydra", "paths."))
    )


def sweep_key(config) -> str:
    """What makes two sweeps the same: preset, grid, overrides, the values held fixed as
    they resolve (an edited preset file changes them) and the code and lock. A rerun with
    the same key resumes the parent; any difference starts a new one."""
    grid = swept(config)
    same = [
        preset_name(config),
        grid,
        task_overrides(config),
        held_fixed(config, grid),
        identity.code_digest(),
    ]
    return hashlib.sha256(json.dumps(same).encode()).hexdigest()[:16]


def open_parent(config, sweep_dir: Path) -> str:
    """The sweep's parent run: the one of an earlier run of the same sweep (sweep_key, in
    the same experiment), reopened, so that a resumed sweep keeps one parent with all its
    children; else a new one, named after the preset."""
    experiment_id = store.setup(config)
    client = mlflow.MlflowClient()
    preset, grid = preset_name(config), swept(config)
    key = sweep_key(config)
    tags = {
        "kind": "sweep",
        "sweep_key": key,
        "sweep_preset": preset,
        "sweep_dir": str(sweep_dir.resolve()),
        "git_commit": identity.git_commit(),
        **store.process_tags(),
    }
    earlier = client.search_runs(
        [experiment_id],
        f"tags.kind = 'sweep' and tags.sweep_key = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if earlier:
        parent = earlier[0].info.run_id
        client.update_run(parent, status="RUNNING")
        for name, value in tags.items():
            client.set_tag(parent, name, value)
        log.info("sweep: resuming parent run %s (%s)", parent, earlier[0].info.run_name)
        return parent
    grid_text = ", ".join(f"{k}={v}" for k, v in grid.items()) or "no grid"
    fixed = held_fixed(config, grid)
    tags["mlflow.note.content"] = (
        f"Sweep `{preset}` (conf/sweep/{preset}.yaml): {grid_text}. Held fixed: {fixed}. "
        "Each child is one config (ours and, if on, scikit-learn's MLPClassifier). When the "
        "sweep ends, its summary is logged here: the winner's metrics (the best child by "
        "val_accuracy, either family) and each family's best (best_<family>_*); under "
        "summary/ the results by config, ours and scikit-learn side by side "
        "(results_by_config.json, a table in Artifacts), every child (results.csv), seed "
        "means if several seeds ran (seed_means.csv), the best runs' val_accuracy by epoch "
        "(val_accuracy_by_epoch.png) and test accuracy against the hidden sizes, learning "
        "rate or batch size if swept (test_accuracy_vs_<setting>.png)."
    )
    run = client.create_run(experiment_id, run_name=f"sweep {preset}", tags=tags)
    client.log_param(run.info.run_id, "sweep.held_fixed", fixed[:6000])
    for name, value in grid.items():
        client.log_param(run.info.run_id, f"sweep.{name}", value[:6000])
    if overrides := task_overrides(config):
        client.log_param(run.info.run_id, "sweep.overrides", " ".join(overrides)[:6000])
    return run.info.run_id
