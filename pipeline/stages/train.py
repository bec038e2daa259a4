"""Stage `train`: this project's network and, as the reference, the baseline family on the
same config and split, each a tracked MLflow run (families/training.py); side by side, each
in a process of its own, when the machine has a core for each (baseline.side_by_side)."""

from __future__ import annotations

import logging
import multiprocessing
import os

from pipeline import config, families
from pipeline.data import dataset
from pipeline.engine import DivergenceError
from pipeline.errors import RunFailed
from pipeline.families import training
from pipeline.logs import redact
from pipeline.tracking import runs, store

log = logging.getLogger(__name__)


def run(cfg, results: dict) -> list[str]:
    """Train ours and, if configured and able to run this config, the baseline; return the
    ids of the runs that finished. A run that diverges or collapses ends FAILED with its
    reason and the other family still trains; the failures go to results["failures"]."""
    data = dataset.load(cfg.data)
    chosen = [families.get(families.OURS)]
    if cfg.baseline.name != "none":
        baseline = families.get(cfg.baseline.name)
        if reason := baseline.refuses(cfg):
            log.warning("train: no baseline: %s", reason)
        else:
            chosen.append(baseline)
    finished: dict[str, str] = {}
    todo = []
    for family in chosen:
        done = runs.finished_run_id(cfg, family.name) if cfg.tracking.skip_finished else None
        if done:
            log.info(
                "train: %s already has a finished run for this config (%s): skipped",
                family.name,
                done,
            )
            finished[family.name] = done
        else:
            todo.append(family)
    if side_by_side(cfg, len(todo)):
        log.info("train: %s side by side", " and ".join(f.name for f in todo))
        outcomes = training.train_side_by_side(todo, cfg, data)
    else:
        outcomes = [_train(family, cfg, data) for family in todo]
    for family, outcome in zip(todo, outcomes):
        if isinstance(outcome, Exception):  # its run ended FAILED (or KILLED) with the reason
            log.error("train: %s run FAILED: %s", family.name, outcome)
            results.setdefault("failures", []).append(f"{family.name}: {outcome}")
        else:
            finished[family.name] = outcome
    run_ids = [finished[f.name] for f in chosen if f.name in finished]  # ours first
    if not run_ids:
        raise RunFailed("train: every run failed: " + "; ".join(results["failures"]))
    if len(run_ids) > 1:  # ours and the baseline side by side and on one chart, on each
        try:
            runs.note_pair(run_ids)
            runs.log_learning_curves(run_ids)
        except Exception as e:  # a chart lost is not a run lost: both have finished
            log.warning("train: the pair's note or chart not logged: %s", redact(str(e))[:300])
    log.info(
        "train: runs %s logged to %s — browse them with `make ui`",
        ", ".join(run_ids),
        redact(store.tracking_uri(cfg)),
    )
    return run_ids


def _train(family, cfg, data) -> training.Outcome:
    """One family trained here: its run id, or the DivergenceError (CollapseError too) its
    run ended FAILED with."""
    try:
        return training.train(family, cfg, data)
    except DivergenceError as e:
        return e


def side_by_side(cfg, n_families: int) -> bool:
    """Whether to train the families at once, each in a process of its own (the same runs,
    bit for bit): as baseline.side_by_side says, else when this process may use 2 cores,
    both fit in the available memory, and it is not a sweep's job (the launcher already
    runs one job per core)."""
    if n_families < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return False
    if cfg.baseline.side_by_side is not None:
        return bool(cfg.baseline.side_by_side)
    if cfg.tracking.parent_run_id is not None:
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    available = config.available_memory()
    # training_bytes is the larger family's need: twice that is enough for both
    return (cores or 1) >= 2 and (
        available is None or 2 * config.training_bytes(cfg) <= 0.8 * available
    )
