"""Stage `search`: an Optuna study over the config space, one MLflow child run per trial.

    python -m pipeline search=<preset> [search.n_trials=40] [search.workers=2] [overrides]

The space is the preset's `search.space` (conf/search/): config keys, each with a range
(`low`, `high`, optional `log`; int or float as the key's own value) or a list of
`choices`. A trial composes the app's config from the command line's overrides plus its
sampled values, and trains our network through families/training.py, as `make run` does. It
reports validation accuracy each epoch; the pruner stops a trial that trails the earlier
ones at the same epoch (its run ends FINISHED, tagged stopped=pruned with the reason and
the epoch, "pruned" after the family in its name; the trial PRUNED).
The objective is the validation accuracy of the weights the run keeps; test accuracy is
logged, never used.

The study lives in storage: SQLite beside the MLflow store (mlruns/optuna.db) by default,
search.storage or OPTUNA_STORAGE (e.g. postgresql+psycopg://…) to share it between
machines. Its name keys the space, the overrides and the code, so the same command
resumes it. Workers (search.workers processes here, and the same command elsewhere) take
trials until the study holds search.n_trials finished ones (COMPLETE or PRUNED). Each
beats a heartbeat into the storage: the trial of a worker that died goes stale after
search.stale_after seconds, is marked FAIL, and another trial takes its place.

The search is one MLflow parent run, `search <preset>`. When no trial is left running, the
worker that ends it summarises the children as a sweep is summarised (results table, best
child by validation accuracy, plots; the best registered if it beats the champion) and
logs Optuna's trial table beside them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import warnings

import mlflow
import optuna
import sqlalchemy
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from optuna.trial import TrialState

from pipeline import config, families, interrupts, progress
from pipeline.data import dataset
from pipeline.engine import DivergenceError
from pipeline.errors import PipelineError, RunFailed, RunStopped
from pipeline.families import training
from pipeline.logs import redact
from pipeline.paths import from_root
from pipeline.tracking import identity, parents, store, urls

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_SECONDS = 5
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
# Overrides that say how to run the search, not what it searches: a study is the same
# study whatever they are (more trials or workers extend it).
_HOW = (*config.search_keys("how"), "stages", "hydra.")
# What the launcher sets for each worker it starts, in place of the command line's.
_PER_WORKER = (*config.search_keys("per_worker"), "stages", "hydra.run.dir")


class Pruned(RunStopped):
    label = "pruned"


class SurplusTrial(Exception):
    """Asked by two workers at once for the study's last place: the later one steps back."""


def run(cfg, results: dict) -> str:
    """Run (or resume) the study; return the parent run id."""
    study = open_study(cfg)
    try:
        parent = open_parent(cfg, study, owner=cfg.search.summarize)
    except mlflow.exceptions.MlflowException as e:
        raise PipelineError(
            f"search: cannot open the parent run in {redact(store.tracking_uri(cfg))}: "
            f"{str(e)[:300]}. Nothing was run; check MLFLOW_TRACKING_URI (is the "
            "server up? is the store writable?)"
        ) from e
    # The launcher's (or the only worker's) bar: trials done of n_trials, the best so far.
    watch = progress.Watch(
        progress.bar(cfg.search.n_trials, "search", "trial", cfg.quiet or not cfg.search.summarize),
        lambda: search_progress(study),
    )
    try:
        with watch:
            if cfg.search.workers > 1:
                ended = launch_workers(cfg, study)
            else:
                ended = []
                work(cfg, study, parent)
    except KeyboardInterrupt as e:  # a stop signal (interrupts.Interrupted): workers stopped
        if cfg.search.summarize:
            close_parent(parent, "KILLED", interrupts.reason(e))
        raise
    except BaseException as e:
        if cfg.search.summarize:
            close_parent(parent, "FAILED", f"{type(e).__name__}: {e}")
        raise
    if cfg.search.summarize:
        done = len(study.get_trials(deepcopy=False, states=DONE))
        if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log.info("search: trials still run elsewhere; the worker that ends last summarises")
        elif done < cfg.search.n_trials:
            close_parent(
                parent,
                "FAILED",
                f"the study has {done} of {cfg.search.n_trials} trials: "
                + ("; ".join(ended) or "its workers stopped early"),
            )
            raise RunFailed(
                f"search: the study has {done} of {cfg.search.n_trials} trials; "
                "rerun the same command to go on"
            )
        else:
            summarize(cfg, study, parent)
    if ended:
        raise RunFailed(
            "search: " + "; ".join(ended) + " (the study went on without them; "
            "rerun the same command to finish or summarise it)"
        )
    return parent


# ---- the study ------------------------------------------------------------------------------


def storage_url(cfg) -> str:
    return urls.sqlalchemy_url(
        cfg.search.storage
        or os.environ.get("OPTUNA_STORAGE")
        or f"sqlite:///{from_root(cfg.paths.mlruns_dir) / 'optuna.db'}"
    )


def base_overrides(with_paths: bool = True) -> list[str]:
    """The command line's overrides that a trial composes with (where its files are, too:
    paths.*, which a study's key leaves out)."""
    skip = _HOW if with_paths else (*_HOW, "paths.")
    return [
        str(o) for o in HydraConfig.get().overrides.task if not str(o).lstrip("+~").startswith(skip)
    ]


def study_name(cfg) -> str:
    """<preset>-<key>: the key covers the space, the overrides and the code + lock (a
    launcher names its study to its workers: search.study)."""
    if cfg.search.study:
        return cfg.search.study
    preset = str(HydraConfig.get().runtime.choices.get("search") or "custom")
    space = config.plain(cfg.search.space)
    key = hashlib.sha256(
        json.dumps(
            [preset, space, sorted(base_overrides(with_paths=False)), identity.code_digest()],
            sort_keys=True,
        ).encode()
    )
    return f"{preset}-{key.hexdigest()[:10]}"


def open_study(cfg) -> optuna.Study:
    url = storage_url(cfg)
    engine = (
        {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    if url.startswith("sqlite:///"):
        from_root(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=cfg.search.stale_after,
            heartbeat_stale_trial_callback=close_stale_run,
        )
        study = optuna.create_study(
            study_name=study_name(cfg), storage=storage, direction="maximize", load_if_exists=True
        )
    except (
        ImportError,
        optuna.exceptions.StorageInternalError,
        ValueError,
        sqlalchemy.exc.SQLAlchemyError,
    ) as e:
        reason = str(e).split("\n(Background")[0].strip()
        if isinstance(e, ImportError) or "Failed to import DB access module" in reason:
            reason += " (PostgreSQL needs the postgres extra: make install-extras)"
        raise PipelineError(
            f"search: cannot open the study storage {redact(url)}: {reason}. "
            "Set search.storage (or OPTUNA_STORAGE) to a reachable database, "
            "e.g. the one `make server` prints"
        ) from e
    # Seeded by the worker and the trials already there: two workers, or a resumed
    # search, do not propose the same points again.
    seed = cfg.search.seed + 1000 * cfg.search.worker_index + len(study.trials)
    study.sampler = (
        optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        if cfg.search.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    study.pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=cfg.search.pruner_startup_trials,
            n_warmup_steps=cfg.search.pruner_warmup_epochs,
        )
        if cfg.search.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    log.info(
        "search: study %s in %s: %d of %d trials done",
        study.study_name,
        redact(url),
        len(study.get_trials(deepcopy=False, states=DONE)),
        cfg.search.n_trials,
    )
    return study


def open_parent(cfg, study: optuna.Study, owner: bool) -> str:
    """The study's MLflow parent run (its id is kept in the study), created on first use.
    The owner (the process that summarises) reopens it and tags it with its process, so
    that the parent of a killed search is closed by the next run (store.reap_orphans)."""
    experiment_id = store.setup(cfg)
    client = mlflow.MlflowClient()
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        try:
            client.get_run(parent)
        except mlflow.exceptions.MlflowException:
            parent = None  # the study outlived its MLflow store: a new parent
    if parent is None:
        preset = study.study_name.rsplit("-", 1)[0]
        space = ", ".join(
            f"{k}: {json.dumps(v)}" for k, v in config.plain(cfg.search.space).items()
        )
        note = (
            f"Optuna search `{preset}` (conf/search/{preset}.yaml), study "
            f"`{study.study_name}` in {redact(storage_url(cfg))}: "
            f"{cfg.search.sampler} sampler, {cfg.search.pruner} pruner, "
            f"{cfg.search.n_trials} trials over {space}. Each child is one trial; pruned "
            "trials end FINISHED, tagged stopped=pruned with why and when (their names say "
            "'pruned' after the family). The objective is val_accuracy."
        )
        run = client.create_run(
            experiment_id,
            run_name=f"search {preset}",
            tags={
                "kind": "search",
                "optuna_study": study.study_name,
                "mlflow.note.content": note,
                "optuna_storage": redact(storage_url(cfg)),
                "git_commit": identity.git_commit(),
            },
        )
        parent = run.info.run_id
        study.set_user_attr("mlflow_parent_run_id", parent)
        time.sleep(1)  # another machine may be creating the study's parent at this moment
        winner = study.user_attrs["mlflow_parent_run_id"]  # read again: the last to set it wins
        if winner != parent:
            client.delete_run(parent)
            parent = winner
            return _own(client, parent, owner)
        client.log_param(parent, "search.space", space[:6000])
        client.log_param(
            parent, "search.overrides", " ".join(base_overrides(with_paths=False))[:6000] or "-"
        )
    return _own(client, parent, owner)


def _own(client, parent: str, owner: bool) -> str:
    if owner:
        client.update_run(parent, status="RUNNING")
        for name, value in store.process_tags().items():
            client.set_tag(parent, name, value)
    return parent


def close_parent(parent: str, status: str, reason: str) -> None:
    client = mlflow.MlflowClient()
    try:
        client.set_tag(parent, "failure_reason", reason[:5000])
        client.set_terminated(parent, status)
    except mlflow.exceptions.MlflowException as e:  # the reason above is what matters
        log.error("search: could not close parent run %s: %s", parent, e)


def close_stale_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna marked the trial FAIL (no heartbeat): its worker is gone, on whatever
    machine; end its MLflow run KILLED too, with the reason."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        return
    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(
                run_id,
                "failure_reason",
                f"interrupted: trial {trial.number}'s "
                f"worker ({trial.user_attrs.get('worker', '?')}) stopped beating",
            )
            client.set_terminated(run_id, "KILLED")
    except mlflow.exceptions.MlflowException as e:
        log.warning("search: could not close run %s of stale trial %d: %s", run_id, trial.number, e)


# ---- workers ----------------------------------------------------------------------------


def search_progress(study: optuna.Study) -> tuple[int, str]:
    """(trials done, the best so far: its val_accuracy and trial number) for the bar."""
    trials = study.get_trials(deepcopy=False, states=DONE)
    scored = [
        (t.value, t.number)
        for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None
    ]
    if not scored:
        return len(trials), ""
    value, number = max(scored)
    return len(trials), f"best val {value:.4f} (trial {number})"


def launch_workers(cfg, study: optuna.Study) -> list[str]:
    """Run search.workers worker processes of this command here; wait for them; return a
    line per worker that did not end well."""
    run_dir = HydraConfig.get().runtime.output_dir
    overrides = [
        str(o) for o in HydraConfig.get().overrides.task if not str(o).startswith(_PER_WORKER)
    ]
    # The storage URL may hold a password: to the workers by environment, not command line.
    env = {
        **os.environ,
        "OPTUNA_STORAGE": storage_url(cfg),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline",
                *overrides,
                "stages=[search]",
                "search.workers=1",
                f"search.worker_index={i}",
                "search.summarize=false",
                "quiet=true",  # the launcher draws the one bar
                f"search.study={study.study_name}",
                f"hydra.run.dir={run_dir}/worker-{i}",
            ],
            env=env,
        )
        for i in range(cfg.search.workers)
    ]
    log.info(
        "search: %d workers started (pids %s)", len(workers), ", ".join(str(w.pid) for w in workers)
    )
    try:
        for worker in workers:
            worker.wait()
    finally:  # stopped ourselves (Ctrl-C, SIGTERM): no worker goes on unsupervised
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            worker.wait()
    return [
        f"worker {i} (pid {w.pid}) ended with "
        + (
            f"killed by signal {-w.returncode}"
            if w.returncode < 0
            else f"exit status {w.returncode}"
        )
        for i, w in enumerate(workers)
        if w.returncode
    ]


def work(cfg, study: optuna.Study, parent: str) -> None:
    """Take trials until the study holds search.n_trials finished ones. A worker waits
    while the last places are taken by running trials, which end or go stale."""
    space = config.search_space(cfg)
    fixed = base_overrides()
    datasets: dict[str, object] = {}
    waiting = False
    while True:
        optuna.storages.fail_stale_trials(study)
        done = len(study.get_trials(deepcopy=False, states=DONE))
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        failed = len(
            [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if not t.user_attrs.get("surplus")
            ]
        )
        if done >= cfg.search.n_trials:
            return
        if failed > cfg.search.n_trials:
            raise RunFailed(
                f"search: {failed} trials failed (see the FAILED children of "
                f"parent run {parent}, tag failure_reason); stopping"
            )
        if done + running >= cfg.search.n_trials:
            if not waiting:
                log.info("search: %d trial(s) still running elsewhere; waiting for them", running)
                waiting = True
            time.sleep(HEARTBEAT_SECONDS)
            continue
        waiting = False
        study.optimize(
            lambda trial: objective(cfg, trial, space, fixed, parent, datasets),
            n_trials=1,
            catch=(DivergenceError, SurplusTrial),
            gc_after_trial=False,
        )


def objective(
    cfg, trial: optuna.Trial, space: dict, fixed: list[str], parent: str, datasets: dict
) -> float:
    """Train one sampled config as a child run of the parent; its kept val_accuracy."""
    taken = [
        t
        for t in trial.study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING))
        if t.number < trial.number
    ]
    if len(taken) >= cfg.search.n_trials:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(
            f"trial {trial.number}: the study's {cfg.search.n_trials} places were taken meanwhile"
        )
    sampled = {key: suggest(trial, key, spec) for key, spec in space.items()}
    trial_cfg = compose(
        config_name="config",
        overrides=[*fixed, *(f"{key}={value}" for key, value in sampled.items()), "stages=[train]"],
    )
    trial_cfg.tracking.parent_run_id = parent
    trial_cfg.tracking.skip_finished = False
    trial_cfg.tracking.label = f"trial {trial.number}"
    trial_cfg.tracking.varied = list(space)  # its name shows what the trial sampled
    trial_cfg.tracking.tags = {
        "optuna_study": trial.study.study_name,
        "optuna_trial": str(trial.number),
    }
    config.validate(trial_cfg, {"train": None})  # a bad space is the user's to fix: exit 2
    key = OmegaConf.to_yaml(trial_cfg.data)
    if key not in datasets:
        datasets[key] = dataset.load(trial_cfg.data)
    trial.set_user_attr("worker", f"{store.process_tags()['host']}:{os.getpid()}")

    def report(epoch: int, metrics: dict) -> None:
        if epoch == 1 and (active := mlflow.active_run()) is not None:
            trial.set_user_attr("mlflow_run_id", active.info.run_id)
        trial.report(metrics["val_accuracy"], epoch)
        if trial.should_prune():
            raise Pruned(
                f"pruned at epoch {epoch} of {trial_cfg.train.epochs}: val_accuracy "
                f"{metrics['val_accuracy']:.4f} trails the median of earlier trials",
                epoch,
            )

    try:
        run_id = training.train(
            families.get(families.OURS), trial_cfg, datasets[key], report=report
        )
    except Pruned as e:
        raise optuna.TrialPruned(str(e)) from e
    except Exception:
        if "mlflow_run_id" not in trial.user_attrs:  # failed before its first epoch ended
            link_run(trial)
        raise
    trial.set_user_attr("mlflow_run_id", run_id)
    return mlflow.MlflowClient().get_run(run_id).data.metrics["val_accuracy"]


def link_run(trial: optuna.Trial) -> None:
    """Record the trial's MLflow run, found by its tags (the study name is a checked name)."""
    experiment_ids = [e.experiment_id for e in mlflow.search_experiments()]
    runs = mlflow.MlflowClient().search_runs(
        experiment_ids,
        f"tags.optuna_study = '{trial.study.study_name}' and tags.optuna_trial = '{trial.number}'",
        max_results=1,
    )
    if runs:
        trial.set_user_attr("mlflow_run_id", runs[0].info.run_id)


def suggest(trial: optuna.Trial, key: str, spec: dict):
    """A value for `key` from its range or choices, as override text (lists as [a,b])."""
    if "choices" in spec:
        return trial.suggest_categorical(
            key,
            [
                json.dumps(c, separators=(",", ":")) if isinstance(c, list) else c
                for c in spec["choices"]
            ],
        )
    if spec["type"] == "int":
        return trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False))
    return trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))


# ---- the summary ------------------------------------------------------------------------


def summarize(cfg, study: optuna.Study, parent: str) -> None:
    """The sweep summary of the children, Optuna's trial table and counts; close the parent."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in DONE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    epochs = [t.last_step or 0 for t in pruned]
    client = mlflow.MlflowClient()
    try:
        table = parents.summarize(parent, [])
        frame = study.trials_dataframe(
            attrs=("number", "state", "value", "params", "duration", "user_attrs")
        )
        with mlflow.start_run(run_id=parent):
            mlflow.log_text(frame.to_csv(index=False), "summary/trials.csv")
            mlflow.log_metrics(
                {
                    "trials_complete": len(done) - len(pruned),
                    "trials_pruned": len(pruned),
                    "trials_failed": sum(
                        t.state == TrialState.FAIL and not t.user_attrs.get("surplus")
                        for t in trials
                    ),
                    "pruned_at_epoch_mean": sum(epochs) / len(epochs) if epochs else 0,
                }
            )
            best = study.best_trial if any(t.state == TrialState.COMPLETE for t in trials) else None
            if best is not None:
                mlflow.set_tags(
                    {
                        "best_trial": str(best.number),
                        "best_trial_params": json.dumps(best.params)[:5000],
                    }
                )
        parents.register_best(cfg, parent, table)
        client.set_terminated(parent, "FINISHED")
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    if table is not None:
        trial_of = {t.user_attrs.get("mlflow_run_id"): t.number for t in trials}
        numbered = table.assign(trial=table.run_id.map(trial_of).astype("Int64"))
        preset = study.study_name.rsplit("-", 1)[0]
        print("\n".join(parents.summary_lines(numbered, f"search {preset}")))
    log.info(
        "search: %d trials done (%d pruned, at epoch %.1f on average); summary on parent run %s",
        len(done),
        len(pruned),
        sum(epochs) / len(epochs) if epochs else 0,
        parent,
    )
