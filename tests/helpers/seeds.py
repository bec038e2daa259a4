"""Train one configuration once per seed, one seed after another, in this process: the
runner of the accuracy floors (tests/system/test_accuracy.py).

A process of its own, so that the BLAS kernel and thread count set in its environment
apply (OpenBLAS reads them when it loads); one process for all the seeds, so that its
imports are paid once. The data must be prepared in data_dir; each seed's run goes to the
store at MLFLOW_TRACKING_URI.

    PYTHONPATH=tests python -m helpers.seeds <data_dir> <seed,seed,...> [override ...]
"""

from __future__ import annotations

import sys

from helpers import compose_config
from pipeline.app import run_stages

ONE_TRAINING_RUN = ["stages=[train]", "baseline=none", "tracking.log_model=false"]


def main(data_dir: str, seeds: str, *overrides: str) -> None:
    for seed in seeds.split(","):
        run_stages(compose_config(data_dir, *ONE_TRAINING_RUN, f"seed={seed}", *overrides))


if __name__ == "__main__":
    main(*sys.argv[1:])
