"""Stage `train`: this project's network and, as the reference, the baseline family on the
same config and split, each a tracked MLflow run (families/training.py)."""

from __future__ import annotations

import logging

from pipeline import families
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
    run_ids = []
    for family in chosen:
        done = runs.finished_run_id(cfg, family.name) if cfg.tracking.skip_finished else None
        if done:
            log.info(
                "train: %s already has a finished run for this config (%s): skipped",
                family.name,
                done,
            )
            run_ids.append(done)
            continue
        try:
            run_ids.append(training.train(family, cfg, data))
        except DivergenceError as e:  # CollapseError too: the run is FAILED with the reason
            log.error("train: %s run FAILED: %s", family.name, e)
            results.setdefault("failures", []).append(f"{family.name}: {e}")
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
