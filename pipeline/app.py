"""The Hydra app: compose conf/config.yaml, validate it, run each stage in `stages` in order.

Each stage is `run(cfg, results) -> output`; `results` maps the stages run so far in this
invocation to their outputs (e.g. evaluate reads the run ids that train returned).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from pipeline import compare, config, download, evaluate, preprocess, train
from pipeline.errors import PipelineError
from pipeline.paths import PROJECT_ROOT

log = logging.getLogger("pipeline")

STAGES = {
    "download": download.run,
    "preprocess": preprocess.run,
    "train": train.run,
    "evaluate": evaluate.run,
    "compare": compare.run,
}


def run_stages(cfg: DictConfig) -> dict:
    """Validate the config, then run the configured stages in order; return their outputs."""
    config.validate(cfg, STAGES)
    results: dict = {}
    for stage in cfg.stages:
        log.info("stage %s", stage)
        results[stage] = STAGES[stage](cfg, results)
    return results


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run_stages(cfg)
    except PipelineError as e:
        log.error("%s", e)
        sys.exit(2)
