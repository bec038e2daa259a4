"""Sweeps: a Hydra multirun as one MLflow parent run with a child run per job.

`SweepCallback` (named in conf/sweep/*.yaml) runs in the launching process:
- before any job starts, it creates the SQLite database, the experiment and the parent run
  (parallel jobs on a fresh database would otherwise race on table creation), and writes
  the parent's id into the sweep folder, where each job reads it;
- when every job has ended, it summarises the children on the parent: a results table
  (CSV + Markdown), the best child by validation accuracy (tagged, its metrics copied to
  the parent), and plots of test accuracy against each swept setting. The multirun exits
  non-zero if any job failed (or the parent could not be made), after its summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline import interrupts, logs, plots, registry, tracking
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)
PARENT_FILE = "parent_run_id"
RESULT_FILE = "result.json"
SETTINGS = {"hidden_sizes": "params.model.hidden_sizes", "activation": "params.model.activation",
            "cost": "params.model.cost", "init": "params.model.init",
            "learning_rate": "params.train.learning_rate", "batch_size": "params.train.batch_size",
            "epochs": "params.train.epochs", "momentum": "params.train.momentum",
            "l2": "params.train.l2", "schedule": "params.train.schedule", "seed": "params.seed"}
PLOTTED = ("hidden_sizes", "learning_rate", "batch_size")


# Settings every training run's name already shows (describe.run_name).
_NAMED = {"model.hidden_sizes", "model.activation", "train.learning_rate", "train.batch_size"}


def run_label(overrides) -> str | None:
    """A sweep job's model and training overrides that its run name does not show yet,
    e.g. 'cost=cross_entropy l2=5.0' or 'ablation=elastic', so that the children of a sweep
    differ by name."""
    shown = []
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key.startswith(("model.", "train.")) and key not in _NAMED:
            shown.append(f"{key.split('.', 1)[1]}={value}")
        elif key == "ablation":  # a config group that switches tweaks off (conf/ablation/)
            shown.append(f"{key}={value}")
    return " ".join(shown) or None


def parent_run_id(sweep_dir: str | Path) -> str | None:
    path = Path(sweep_dir) / PARENT_FILE
    return path.read_text().strip() if path.exists() else None


def write_job_result(output_dir: str | Path, result: dict) -> None:
    Path(output_dir, RESULT_FILE).write_text(json.dumps(result, indent=2))


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # Workers start after this: one BLAS thread each, or 2 jobs × N threads fight for cores.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        # Ctrl-C or SIGTERM to the launcher stops its workers first (each closes its run
        # KILLED); then the app closes the parent (app.stopped).
        interrupts.install(before_raising=lambda signum: interrupts.stop_descendants(
            signum, first=tracking.running_pids(parent_run_id(config.hydra.sweep.dir))))
        if "ray" in str(OmegaConf.select(config, "hydra.launcher._target_") or ""):
            keep_sigterm_from_ray()
        logs.redact_all_handlers()
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            parent = open_parent(config, sweep_dir)
        except Exception as e:  # noqa: BLE001 — Hydra would only warn and run every job
            log.error("sweep: cannot create the parent run in %s: %s: %s. Nothing was run; "
                      "check MLFLOW_TRACKING_URI (is the server up? is the store writable?)",
                      tracking.tracking_uri(config), type(e).__name__, str(e)[:500])
            sys.exit(1)
        (sweep_dir / PARENT_FILE).write_text(parent)
        log.info("sweep: parent run %s", parent)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        parent = parent_run_id(sweep_dir)
        results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{RESULT_FILE}"))]
        failed = [r for r in results if r["status"] != "ok"]
        if parent is None:  # Hydra turns an exception here into a warning: exit instead
            log.error("sweep: no parent run (see the error above); %d jobs, %d failed",
                      len(results), len(failed))
            sys.exit(1)
        status = "FINISHED" if len(failed) < len(results) else "FAILED"
        try:
            tracking.setup(config)
            table = summarize(parent, results)
            register_best(config, parent, table)
        except Exception as e:  # noqa: BLE001
            status = "FAILED"
            log.error("sweep: could not summarise on parent run %s: %s: %s", parent,
                      type(e).__name__, str(e)[:500])
            failed.append({"overrides": ["(summary)"], "error": str(e)})
            table = None
        finally:  # never leave the parent RUNNING
            try:
                mlflow.MlflowClient().set_terminated(parent, status)
            except Exception as e:  # noqa: BLE001
                log.error("sweep: could not close parent run %s: %s", parent, e)
        log.info("sweep: %d jobs, %d failed; summary on parent run %s", len(results),
                 len(failed), parent)
        if table is not None:
            shown = table.drop(columns=["run_id", "run_name", "failure_reason"]).dropna(axis=1, how="all")
            print(shown.to_string(index=False))
        if failed:  # a script must notice: exit non-zero, after the summary
            word = "all" if len(failed) == len(results) else f"{len(failed)} of"
            log.error("sweep: %s %d jobs failed; see the FAILED child runs of parent run %s "
                      "(tag failure_reason):\n  %s", word, len(results), parent,
                      "\n  ".join(f"{' '.join(r['overrides'])}: {r.get('error', '')[:300]}"
                                  for r in failed))
            sys.exit(1)


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
    grid = {str(k): str(v) for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()}
    for override in OmegaConf.select(config, "hydra.overrides.task") or []:
        key, _, value = str(override).partition("=")
        if "," in value and not key.startswith("hydra"):
            grid[key] = value
    return grid


# What a comparison in a sweep holds fixed unless the sweep varies it.
_COMPARED = ("model.hidden_sizes", "model.activation", "model.cost", "model.init", "train.epochs",
             "train.batch_size", "train.learning_rate", "train.momentum", "train.l2",
             "train.schedule", "seed")


def held_fixed(config, grid: dict) -> str:
    """The settings the sweep does not vary, e.g. 'model.cost=quadratic, train.epochs=30,
    …; model.init per activation: sigmoid scaled, relu he'. A setting a preset takes from
    sweep.init / sweep.eta is named as per activation (and per step), not as fixed."""
    fixed, per_activation = [], []
    for key in _COMPARED:
        if key in grid:
            continue
        parent_key, _, leaf = key.rpartition(".")
        raw = OmegaConf.to_container(OmegaConf.select(config, parent_key), resolve=False)[leaf] \
            if parent_key else None
        if isinstance(raw, str) and raw.startswith("${sweep."):
            table = OmegaConf.to_container(config.sweep.init if leaf == "init" else config.sweep.eta)
            per_activation.append(f"{key} per activation: " + ", ".join(
                f"{a} {v if leaf == 'init' else '/'.join(f'{x:g}' for x in v.values())}"
                for a, v in table.items()))
        else:
            value = OmegaConf.select(config, key)
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            fixed.append(f"{key}={value}")
    return "; ".join([", ".join(fixed), *per_activation])


def task_overrides(config) -> list[str]:
    """The sweep's command-line overrides of the pipeline's settings (not Hydra's or paths)."""
    return sorted(str(o) for o in OmegaConf.select(config, "hydra.overrides.task") or []
                  if not str(o).startswith(("hydra", "paths.")))


def sweep_key(config) -> str:
    """What makes two sweeps the same: preset, grid, overrides, the values held fixed as
    they resolve (an edited preset file changes them) and the code and lock. A rerun with
    the same key resumes the parent; any difference starts a new one."""
    grid = swept(config)
    same = [preset_name(config), grid, task_overrides(config), held_fixed(config, grid),
            tracking.code_digest()]
    return hashlib.sha256(json.dumps(same).encode()).hexdigest()[:16]


def open_parent(config, sweep_dir: Path) -> str:
    """The sweep's parent run: the one of an earlier run of the same sweep (sweep_key, in
    the same experiment), reopened, so that a resumed sweep keeps one parent with all its
    children; else a new one, named after the preset."""
    experiment_id = tracking.setup(config)
    client = mlflow.MlflowClient()
    preset, grid = preset_name(config), swept(config)
    key = sweep_key(config)
    tags = {"kind": "sweep", "sweep_key": key, "sweep_preset": preset,
            "sweep_dir": str(sweep_dir.resolve()), "git_commit": tracking.git_commit(),
            **tracking.process_tags()}
    earlier = client.search_runs([experiment_id], f"tags.kind = 'sweep' and tags.sweep_key = '{key}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
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
        "Each child is one config (ours and, if on, scikit-learn's MLPClassifier); the summary "
        "(summary/results.md, plots) and the best child of each family are logged here when "
        "the sweep ends.")
    run = client.create_run(experiment_id, run_name=f"sweep {preset}", tags=tags)
    client.log_param(run.info.run_id, "sweep.held_fixed", fixed[:6000])
    for name, value in grid.items():
        client.log_param(run.info.run_id, f"sweep.{name}", value[:6000])
    if overrides := task_overrides(config):
        client.log_param(run.info.run_id, "sweep.overrides", " ".join(overrides)[:6000])
    return run.info.run_id


def summarize(parent: str, results: list[dict]) -> pd.DataFrame | None:
    """Log the results table, best child and plots to the parent run; return the table."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent).info.experiment_id
    children = mlflow.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    reused = [run_id for r in results for run_id in r.get("runs", [])]
    if reused:  # runs skipped on a rerun belong to an earlier parent but to this sweep too
        ids = ", ".join(f"'{i}'" for i in reused)
        earlier = mlflow.search_runs([experiment_id], f"attributes.run_id IN ({ids})")
        children = pd.concat([children, earlier]).drop_duplicates("run_id")
    if children.empty:
        return None
    table = results_table(children)
    with mlflow.start_run(run_id=parent):
        mlflow.log_text(table.to_csv(index=False), "summary/results.csv")
        mlflow.log_text(table.to_markdown(index=False), "summary/results.md")
        for family, label in (("numpy_mlp", "ours"), ("sklearn_mlp", "sklearn")):
            best = best_child(table, family)
            if best is None:
                continue
            mlflow.set_tags({f"best_{label}_run_id": best.run_id,
                             f"best_{label}_run_name": str(best.run_name)})
            mlflow.log_metrics({f"best_{label}_{m}": float(best[m]) for m in
                                ("val_accuracy", "test_accuracy", "train_seconds")})
            if family == "numpy_mlp":  # the parent's own columns: our best child
                client.set_tag(best.run_id, "best_in_sweep", "true")
                mlflow.set_tags({"best_child_run_id": best.run_id,
                                 **{f"best.{k}": str(best[k]) for k in SETTINGS}})
                mlflow.log_metrics({m: float(best[m]) for m in
                                    ("val_accuracy", "test_accuracy", "train_seconds")})
        if table.seed.nunique() > 1:  # the same configs from several seeds: their means
            means = seed_means(table)
            mlflow.log_text(means.to_csv(index=False), "summary/seed_means.csv")
            mlflow.log_text(means.to_markdown(index=False, floatfmt=".4f"), "summary/seed_means.md")
        for setting in PLOTTED:
            if table[setting].nunique() > 1:
                fig = accuracy_plot(table, setting)
                mlflow.log_figure(fig, f"summary/test_accuracy_vs_{setting}.png")
                plt.close(fig)
    return table


def best_child(table: pd.DataFrame, family: str | None = None) -> pd.Series | None:
    """The finished child (of `family`, or of either) with the best validation accuracy:
    selection on validation, never on test."""
    done = table[(table.status == "FINISHED") & table.val_accuracy.notna()]
    if family is not None:
        done = done[done.family == family]
    return None if done.empty else done.loc[done.val_accuracy.idxmax()]


def register_best(config, parent: str, table: pd.DataFrame | None) -> str | None:
    """Register the sweep's best finished child of either family (by validation accuracy)
    as the champion of its dataset's model, if it beats the champion on the same
    validation split; tag the parent with what was compared and the outcome."""
    if table is None or not config.tracking.log_model:
        return None
    best = best_child(table)
    if best is None:
        return None
    client = mlflow.MlflowClient()
    run = client.get_run(best.run_id)
    name = config.register.model_name or registry.model_name_for(run.data.params.get("data.name", "mnist"))
    alias = config.register.alias
    split = registry.validation_split(run)
    verdict = champion_gate(client, name, alias, best, split)
    client.set_tag(parent, "champion_gate", verdict[:5000])
    if not verdict.startswith("registered"):
        log.info("sweep: %s", verdict)
        return None
    try:
        version = registry.register(best.run_id, name, alias)
    except (PipelineError, mlflow.exceptions.MlflowException) as e:  # the sweep still ends
        log.warning("sweep: best run %s not registered: %s", best.run_id, e)
        return None
    client.set_tag(parent, "registered_model", f"{name} v{version} @{alias}")
    log.info("sweep: %s", verdict)
    return version


def champion_gate(client, name: str, alias: str, best, split: str) -> str:
    """Whether the sweep's best child takes `alias` of model `name`, and why: only from a
    champion with a lower validation accuracy on the same validation split (a score on 10
    images and one on 300 are not comparable). Starts with "registered" if it does."""
    try:
        current = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return f"registered: best run {best.run_id} (val {best.val_accuracy:.4f}) as the first {name} @{alias}"
    theirs = current.tags.get("val_split")
    if theirs != split:
        return (f"not compared: {name} @{alias} (version {current.version}) was scored on "
                f"{theirs or 'a validation split it did not record'}, the best run {best.run_id} "
                f"on {split}; their accuracies are not comparable. To make it the champion: "
                f"make register RUN_ID={best.run_id}")
    compared = (f"best run {best.run_id} val {best.val_accuracy:.4f} vs {name} @{alias} "
                f"(version {current.version}) val {current.tags.get('val_accuracy')}, on {split}")
    if float(current.tags.get("val_accuracy", "nan")) >= best.val_accuracy:
        return f"not registered: {compared}: it does not beat the champion"
    return f"registered: {compared}"


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per child run: its settings, family, status and accuracies."""
    columns = {"run_id": "run_id", "tags.mlflow.runName": "run_name",
               "tags.model_family": "family", "status": "status",
               **{v: k for k, v in SETTINGS.items()},
               "metrics.val_accuracy": "val_accuracy", "metrics.test_accuracy": "test_accuracy",
               "metrics.train_seconds": "train_seconds", "tags.failure_reason": "failure_reason"}
    table = runs.reindex(columns=list(columns)).rename(columns=columns)
    for key in ("learning_rate", "momentum", "l2"):
        table[key] = pd.to_numeric(table[key])
    for key in ("batch_size", "epochs", "seed"):
        table[key] = pd.to_numeric(table[key]).astype("Int64")
    return table.sort_values(["family", "val_accuracy"], ascending=[True, False]).reset_index(drop=True)


def seed_means(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of val and test accuracy over the seeds of each
    config (a child's run name without its seed), finished children only, best first."""
    done = table[table.status == "FINISHED"]
    config = done.run_name.str.replace(r" seed=\d+", "", regex=True)
    means = (done.assign(config=config).groupby(["family", "config"])
             .agg(seeds=("seed", "count"), val_accuracy_mean=("val_accuracy", "mean"),
                  test_accuracy_mean=("test_accuracy", "mean"),
                  test_accuracy_std=("test_accuracy", "std"))
             .reset_index())
    return means.sort_values(["family", "test_accuracy_mean"], ascending=[True, False])


def accuracy_plot(table: pd.DataFrame, setting: str):
    """Mean test accuracy against one setting: a line per activation, the baseline dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = table[table.status == "FINISHED"]
    order = sorted(done[setting].unique(), key=_sort_key)
    for i, activation in enumerate(sorted(done.activation.unique())):
        for family, style in (("numpy_mlp", "-o"), ("sklearn_mlp", "--s")):
            rows = done[(done.activation == activation) & (done.family == family)]
            if rows.empty:
                continue
            means = rows.groupby(setting).test_accuracy.mean().reindex(order).dropna()
            x = means.index if setting != "hidden_sizes" else [order.index(v) for v in means.index]
            label = f"{activation} ({'ours' if family == 'numpy_mlp' else 'scikit-learn'})"
            ax.plot(x, means.values, style, color=f"C{i}", label=label)
    if setting == "hidden_sizes":
        ax.set_xticks(range(len(order)), [plots.layer_label(v) for v in order])
    if setting == "learning_rate":
        ax.set_xscale("log")
    ax.set_xlabel(setting.replace("_", " ") + (" (η)" if setting == "learning_rate" else ""))
    ax.set_ylabel("test accuracy (mean over the other settings)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _sort_key(value):
    try:
        return (0, sum(json.loads(value)), value) if isinstance(value, str) else (0, value, "")
    except (TypeError, ValueError):
        return (1, 0, str(value))
