"""Stage `register` (`make register RUN_ID=<id>`): a trained run's model becomes its
dataset's registered model's champion, with its lineage (tracking/registry.py)."""

from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.tracking import registry, store


def run(cfg, results: dict) -> str:
    run_id = cfg.register.run_id
    if not run_id:
        raise PipelineError(
            "register.run_id is not set: make register RUN_ID=<id> (a training "
            "run's id, as the MLflow UI shows it)"
        )
    store.setup(cfg)
    return registry.register(run_id, cfg.register.model_name, cfg.register.alias)
