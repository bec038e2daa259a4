"""Stage `compare`: this project's network vs scikit-learn's, config by config.

Reads the finished training runs of the experiment from MLflow, keeps the latest run per
config and model family, prints one row per config (test accuracy and train seconds of
each family) and logs the table to a `compare` run as CSV and Markdown.
"""

from __future__ import annotations

import logging

import mlflow
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.families import OURS
from pipeline.tracking import describe, runs, store

log = logging.getLogger(__name__)
DESCRIBE = {  # the columns that describe a config
    "model": "tags.model_name",
    **describe.recipe_columns(),
    "data": "params.data.name",
}


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per config hash: its settings, then test accuracy and seconds per family."""
    runs = runs.sort_values("start_time", ascending=False)
    latest = runs.drop_duplicates(["tags.config_hash", "tags.model_family"])
    # A config's settings as configured: our run's (the baseline logs its own cost, init…)
    ours_first = latest.assign(_ours=latest["tags.model_family"] != OURS).sort_values("_ours")
    settings = ours_first.drop_duplicates("tags.config_hash").set_index("tags.config_hash")
    settings = settings[list(DESCRIBE.values())].rename(columns={v: k for k, v in DESCRIBE.items()})
    metrics = latest.pivot(
        index="tags.config_hash",
        columns="tags.model_family",
        values=["metrics.test_accuracy", "metrics.train_seconds"],
    )
    metrics.columns = [
        f"{family} {'test_acc' if m.endswith('accuracy') else 'train_s'}"
        for m, family in metrics.columns
    ]
    table = settings.join(metrics).sort_values(list(metrics.columns[:1]), ascending=False)
    table.index.name = "config_hash"
    return table.round(4)


def run(cfg, results: dict) -> pd.DataFrame:
    experiment_id = store.setup(cfg)
    finished = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string="attributes.status = 'FINISHED' and tags.kind = 'training'",
    )
    if "tags.stopped" in finished:  # pruned trials: finished, but cut short on purpose
        finished = finished[finished["tags.stopped"].isna()]
    if finished.empty:
        raise PipelineError(
            f"compare: experiment {cfg.tracking.experiment!r} has no finished "
            "training runs yet: run `make run` first"
        )
    table = comparison_table(finished)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string())
    with runs.run(cfg, run_name="compare", tags={"kind": "report"}):
        mlflow.log_text(table.to_csv(), "compare.csv")
        mlflow.log_text(table.to_markdown(), "compare.md")
    return table
