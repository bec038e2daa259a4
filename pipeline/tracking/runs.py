"""Runs: opened and closed honestly (FINISHED, FAILED or KILLED with the reason), metrics
refused when not finite, and what every training run logs."""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager

import mlflow
from mlflow.data.numpy_dataset import from_numpy
from omegaconf import OmegaConf
from threadpoolctl import threadpool_limits

from pipeline import interrupts
from pipeline.config import plain
from pipeline.engine import DivergenceError
from pipeline.errors import RunStopped, disk_full
from pipeline.logs import redact
from pipeline.paths import process_alive
from pipeline.tracking import describe, links, plots, store
from pipeline.tracking.environment import environment_tags
from pipeline.tracking.identity import config_hash, git_commit, resume_key

log = logging.getLogger(__name__)

INTERRUPTED_RUNS: list[str] = []  # the runs of this process a stop signal ended KILLED


@contextmanager
def run(cfg, *, run_name: str | None = None, run_id: str | None = None, tags: dict | None = None):
    """An MLflow run that ends FINISHED, or FAILED with the reason as tag `failure_reason`,
    or KILLED: stopped by a signal (interrupts.Interrupted, Ctrl-C) with that reason as
    `failure_reason`. One stopped on purpose (errors.RunStopped: pruned) ends FINISHED,
    tagged `stopped`, `stopped_reason` and `stopped_at_epoch`.

    A new run is tagged with its process (host, pid), so that if the process dies without
    closing it, the next process on the store marks it KILLED (reap_orphans).
    """
    experiment_id = store.setup(cfg)
    parent = None if run_id else cfg.tracking.get("parent_run_id")
    if run_id is None:
        tags = {**(tags or {}), **store.process_tags()}
    with mlflow.start_run(
        run_id=run_id,
        run_name=run_name,
        experiment_id=experiment_id,
        tags=tags,
        parent_run_id=parent,
    ) as active:
        try:
            yield active
        except RunStopped as e:
            _end(
                active,
                "FINISHED",
                {
                    "stopped": e.label,
                    "stopped_reason": str(e)[:5000],
                    "stopped_at_epoch": str(e.epoch),
                    "mlflow.runName": _labelled(active.info.run_name, e.label),
                },
            )
            raise
        except KeyboardInterrupt as e:  # interrupts.Interrupted: a stop signal
            _end(active, "KILLED", {"failure_reason": interrupts.reason(e)})
            INTERRUPTED_RUNS.append(active.info.run_id)
            raise
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}"
            if disk_full(e) is not None:  # SQLAlchemy's statement dump says nothing to a reader
                reason = reason.split("\n[SQL:")[0]
            _end(active, "FAILED", {"failure_reason": redact(reason)[:5000]})
            raise


def _labelled(run_name: str, label: str) -> str:
    """The run's name with label after its family, where the runs table never cuts it:
    'ours pruned trial 7 8 η=3.02 · smoke sigmoid m=10'."""
    family, _, rest = run_name.partition(" ")
    return f"{family} {label} {rest}".rstrip()


def _end(active, status: str, tags: dict[str, str]) -> None:
    """Tag the active run and end it with `status`. A store that refuses (a full disk, a
    server gone) is logged; the run then stays RUNNING in the store until the next process
    on this machine closes it (reap_orphans), but this process has let go of it."""
    try:
        mlflow.set_tags(tags)
    except Exception as e:  # noqa: BLE001 — the original error is what the user must see
        log.warning(
            "could not record why run %s ended: %s", active.info.run_id, redact(str(e))[:300]
        )
    try:
        mlflow.end_run(status)
    except Exception as e:  # noqa: BLE001
        log.warning(
            "could not mark run %s %s: %s", active.info.run_id, status, redact(str(e))[:300]
        )


def log_metrics(values: dict[str, float], step: int | None = None) -> None:
    """mlflow.log_metrics, refusing NaN and ±inf: a non-finite metric fails the run instead
    of being stored as ±1.8e308."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        where = f" in epoch {step}" if step is not None else ""
        raise DivergenceError(
            f"non-finite metric(s){where}: " + ", ".join(f"{k}={v}" for k, v in bad.items())
        )
    mlflow.log_metrics(values, step=step)


@contextmanager
def training_run(cfg, data, family):
    """A training run of `family` (a families.base.Family) with what every training run
    logs: a readable name and description, the params of its family, tags, the full
    config.yaml, dataset inputs."""
    tags = {
        "model_family": family.name,
        "kind": "training",
        "git_commit": git_commit(),
        "config_hash": config_hash(cfg),
        "resume_key": resume_key(cfg),
        "model_name": cfg.model.name,
        **environment_tags(),
        "mlflow.note.content": family.note(cfg, len(data.y("train"))),
    }
    if cfg.tracking.get("tags"):
        tags.update(plain(cfg.tracking.tags))
    # One BLAS thread for the training and every evaluation in the run: OpenBLAS splits a
    # matmul by thread count, which changes the last bits (a test_log_loss rerun on 2
    # threads differed by 4e-9 from the original's on 1).
    with (
        run(cfg, run_name=describe.run_name(cfg, family.label), tags=tags) as active,
        threadpool_limits(limits=1, user_api="blas"),
    ):
        mlflow.log_params(family.params(cfg))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        log_datasets(data)
        yield active


def log_datasets(data) -> None:
    """The splits as MLflow dataset inputs, identified by our SHA-256 digest of the arrays."""
    for split, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
        with warnings.catch_warnings():  # MLflow registers the local-file source twice
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
            dataset = from_numpy(
                data.x(split),
                targets=data.y(split),
                source=str(data.path),
                name=f"{data.name}-{split}",
                digest=data.digests[f"x_{split}"][:12] + data.digests[f"y_{split}"][:12],
            )
        for attempt in range(5):
            try:
                mlflow.log_input(dataset, context=context)
                break
            except mlflow.exceptions.MlflowException as e:
                # Two parallel jobs inserting the same dataset: MLflow's get-or-create is not
                # atomic, and the loser hits the unique constraint. Again, it finds the row.
                # (SQLite: "UNIQUE constraint failed"; PostgreSQL: "violates unique constraint")
                if "unique constraint" not in str(e).lower() or attempt == 4:
                    raise


def finished_run_id(cfg, family: str) -> str | None:
    """A FINISHED training run of this model family with the same resume key — the same
    config, code and locked packages — if there is one (a resumed sweep reuses it)."""
    experiment_id = store.setup(cfg)  # first: it points MLflow at the store the client will use
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        f"tags.resume_key = '{resume_key(cfg)}' and tags.model_family = '{family}' "
        "and attributes.status = 'FINISHED'",
    )
    whole = [r for r in runs if "stopped" not in r.data.tags]  # a pruned run is not done
    return whole[0].info.run_id if whole else None


def training_elsewhere(cfg) -> mlflow.entities.Run | None:
    """A RUNNING training run of this config (the same resume key, either family) whose
    process, on this host, is alive and not this one: another job is training the config
    (a second run of the same sweep). None if there is none. Runs of other hosts are not
    counted: their processes cannot be checked from here."""
    experiment_id = store.setup(cfg)
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        f"tags.resume_key = '{resume_key(cfg)}' and tags.kind = 'training' "
        "and attributes.status = 'RUNNING'",
    )
    here = store.process_tags()
    for found in runs:
        tags = found.data.tags
        if tags.get("host") != here["host"] or not tags.get("pid", "").isdigit():
            continue
        pid, started = tags["pid"], tags.get("pid_started", "")
        if pid != here["pid"] and process_alive(int(pid), started):
            return found
    return None


def summary(cfg, run_ids: list[str]) -> str:
    """A few lines for the end of a command: each run's family, validation and test
    accuracy and id, and where to open them."""
    client = mlflow.MlflowClient()
    found = [client.get_run(run_id) for run_id in run_ids]
    if not found:
        return ""
    width = max(len(r.info.run_name) for r in found)
    lines = [f"{'':2}{'run':<{width}} {'val':>7} {'test':>7}  id"]
    for r in found:
        m = r.data.metrics
        val, test = m.get("val_accuracy"), m.get("test_accuracy")
        lines.append(
            f"  {r.info.run_name:<{width}} {val if val is None else f'{val:.4f}':>7} "
            f"{test if test is None else f'{test:.4f}':>7}  {r.info.run_id}"
        )
    page = links.experiment_page(found[0].info.experiment_id)
    lines.append(f"open them: {links.where(store.tracking_uri(cfg), page)}")
    return "\n".join(lines)


def curves(run_id: str, metrics=("train_accuracy", "val_accuracy")) -> dict[str, list]:
    """A run's per-epoch history of `metrics`: {metric: [(epoch, value), ...]}."""
    client = mlflow.MlflowClient()
    return {
        m: sorted((h.step, h.value) for h in client.get_metric_history(run_id, m)) for m in metrics
    }


def note_pair(run_ids: list[str]) -> str:
    """Put a config's runs side by side at the top of each one's description (the first
    thing its page shows): their test accuracy, ours minus the baseline in points, and a
    link to their compare view, e.g. 'ours 0.9243 · sklearn 0.8930 · +3.13 pt'; returns
    that line."""
    client = mlflow.MlflowClient()
    found = [client.get_run(run_id) for run_id in run_ids]
    accuracy = {
        r.info.run_name.split(" ", 1)[0]: r.data.metrics.get("test_accuracy") for r in found
    }
    shown = [f"{label} {a:.4f}" for label, a in accuracy.items() if a is not None]
    values = [a for a in accuracy.values() if a is not None]
    if len(values) == 2:
        shown.append(f"{100 * (values[0] - values[1]):+.2f} pt")
    # A link within the UI (its fragment only), so that it holds on any host and port.
    compare = links.compare_page(found[0].info.experiment_id, run_ids).removeprefix("/")
    line = f"**{' · '.join(shown)}** {PAIR} · [compare them]({compare})"
    for r in found:
        note = r.data.tags.get("mlflow.note.content", "")
        if PAIR in note.partition("\n")[0]:  # noted before (a resumed sweep): replaced
            note = note.partition("\n\n")[2]
        client.set_tag(r.info.run_id, "mlflow.note.content", f"{line}\n\n{note}")
    return line


PAIR = "(test accuracy, same config and split)"


def log_learning_curves(run_ids: list[str]) -> None:
    """One chart of a config's runs (ours and the baseline): train and val accuracy by
    epoch, logged to each of them as learning_curves.png."""
    client = mlflow.MlflowClient()
    found = [client.get_run(run_id) for run_id in run_ids]
    by_label = {r.info.run_name.split(" ", 1)[0]: curves(r.info.run_id) for r in found}
    title = found[0].info.run_name.split(" ", 1)[1] if found else ""
    fig = plots.learning_curves(by_label, title[:80])
    for run in found:
        client.log_figure(run.info.run_id, fig, "learning_curves.png")
    plots.plt.close(fig)
