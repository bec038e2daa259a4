"""The Hydra app: compose conf/config.yaml, then run each stage in `stages` in order."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from pipeline import download, preprocess
from pipeline.errors import PipelineError
from pipeline.paths import PROJECT_ROOT

log = logging.getLogger("pipeline")

STAGES = {
    "download": download.run,
    "preprocess": preprocess.run,
}


def run_stages(cfg: DictConfig) -> None:
    """Run the configured stages in order; raise PipelineError on bad input."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise PipelineError(
            f"stages: unknown stage(s) {unknown}; choose from {list(STAGES)}"
        )
    for stage in cfg.stages:
        log.info("stage %s", stage)
        STAGES[stage](cfg)


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run_stages(cfg)
    except PipelineError as e:
        log.error("%s", e)
        sys.exit(2)
