"""The Hydra app: compose conf/config.yaml, validate it, run each stage in `stages` in order.

Each stage is `run(cfg, results) -> output`; `results` maps the stages run so far in this
invocation to their outputs (e.g. evaluate reads the run ids that train returned).
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline import (analyze, compare, config, download, evaluate, preprocess, registry,
                      reproduce, search, sweep, tracking, train)
from pipeline.errors import USER_ERRORS, RunFailed
from pipeline.paths import PROJECT_ROOT

log = logging.getLogger("pipeline")

STAGES = {
    "download": download.run,
    "preprocess": preprocess.run,
    "train": train.run,
    "evaluate": evaluate.run,
    "compare": compare.run,
    "analyze": analyze.run,
    "reproduce": reproduce.run,
    "register": registry.run,
    "search": search.run,
}


def run_stages(cfg: DictConfig) -> dict:
    """Validate the config, then run the configured stages in order; return their outputs.

    Runs that fail (results["failures"]) do not stop the later stages, which work on the
    runs that finished; RunFailed names them at the end.
    """
    config.validate(cfg, STAGES)
    results: dict = {}
    for stage in cfg.stages:
        log.info("stage %s", stage)
        results[stage] = STAGES[stage](cfg, results)
    if results.get("failures"):
        raise RunFailed(f"{len(results['failures'])} run(s) FAILED: " + "; ".join(results["failures"]))
    return results


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            run_stages(cfg)
        except USER_ERRORS as e:  # a user mistake: one message, no traceback
            log.error("%s", e)
            sys.exit(2)
        except RunFailed as e:  # recorded in MLflow with the reasons; a script must notice
            log.error("%s", e)
            sys.exit(1)
        return
    # A sweep job: its runs are children of the sweep's parent run, and a failure is
    # recorded (the run ends FAILED) without stopping the other jobs.
    cfg.tracking.parent_run_id = sweep.parent_run_id(hydra_cfg.sweep.dir)
    cfg.tracking.skip_finished = True
    cfg.tracking.label = sweep.run_label(hydra_cfg.overrides.task)
    result = {"config_hash": tracking.config_hash(cfg), "overrides": list(hydra_cfg.overrides.task)}
    try:
        result.update(status="ok", runs=run_stages(cfg).get("train", []))
    except Exception as e:  # noqa: BLE001 — any failure of one job must not end the sweep
        log.error("job failed: %s: %s", type(e).__name__, e)
        result.update(status="failed", error=f"{type(e).__name__}: {e}")
    sweep.write_job_result(hydra_cfg.runtime.output_dir, result)
