"""The one loop: any family (base.Family) trained as a tracked MLflow run.

Each run logs the resolved config as params and config.yaml, the environment it ran on
(env.* tags), per-epoch metrics, the final metrics on the untouched test set (names and
definitions: metrics.py), the dataset with its digest, and the model. With train.keep=best
a family that can (keeps_best) ends with the weights of its best validation epoch
(selection on validation; test is measured once, on the kept weights); otherwise with the
last epoch's (the book's way). A run that fails ends FAILED with the reason as a tag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import mlflow

from pipeline import progress
from pipeline.families import metrics
from pipeline.families.base import Family
from pipeline.tracking import runs

log = logging.getLogger(__name__)

# report(epoch, metrics) sees each epoch's logged metrics; it may stop the run by raising
# errors.RunStopped (a search's pruner does).
Report = Callable[[int, dict], None]


def train(family: Family, cfg, data, report: Report | None = None) -> str:
    """Train `family` on `data` as one tracked run; return its id."""
    x, y = data.x("train"), data.y("train")
    x_val, y_val = data.x("val"), data.y("val")
    keep_best = cfg.train.keep == "best" and family.keeps_best
    best: dict[str, Any] = {"val_accuracy": -1.0, "epoch": 0, "snapshot": None}
    seconds = []
    with runs.training_run(cfg, data, family) as active:
        model = family.build(cfg, x)
        if extra := family.model_params(model, cfg):
            mlflow.log_params(extra)
        with progress.bar(
            cfg.train.epochs,
            f"train {family.label}",
            "epoch",
            cfg.quiet,
            leave=cfg.tracking.parent_run_id is None,  # a trial's bar goes when it ends
        ) as bar:

            def on_epoch(epoch: int, learning_rate: float, epoch_seconds: float) -> None:
                objective, p_train = family.train_view(model, cfg, x, y)
                epoch_metrics = {
                    family.objective: objective,
                    **metrics.classification_metrics("train", p_train, y),
                    **metrics.classification_metrics(
                        "val", family.probabilities(model, x_val), y_val
                    ),
                    "learning_rate": learning_rate,
                    "epoch_seconds": epoch_seconds,
                }
                runs.log_metrics(epoch_metrics, step=epoch)
                seconds.append(epoch_seconds)
                if epoch_metrics["val_accuracy"] > best["val_accuracy"]:
                    best.update(
                        val_accuracy=epoch_metrics["val_accuracy"],
                        epoch=epoch,
                        snapshot=family.snapshot(model) if keep_best else None,
                    )
                bar.update()
                bar.set_postfix(val_accuracy=f"{epoch_metrics['val_accuracy']:.4f}")
                if report is not None:
                    report(epoch, epoch_metrics)

            family.fit(model, cfg, x, y, on_epoch)
        epochs = len(seconds)
        if keep_best and best["epoch"] != epochs:
            family.restore(model, best["snapshot"])
            # The run's val_* (latest value) must describe the weights it keeps: the sweep
            # selects on it, the registry quotes it.
            runs.log_metrics(
                metrics.classification_metrics("val", family.probabilities(model, x_val), y_val),
                step=epochs,
            )
        kept = best["epoch"] if keep_best else epochs
        mlflow.set_tag(
            "kept_epoch", f"{'best' if keep_best else 'final'} (epoch {kept} of {epochs})"
        )
        runs.log_metrics(
            {
                "best_epoch": best["epoch"],
                "best_val_accuracy": best["val_accuracy"],
                "kept_epoch": kept,
            }
        )
        if not cfg.data.label_shuffle:  # on shuffled labels, chance is the expected answer
            metrics.check_not_collapsed(cfg.train, family.probabilities(model, x_val), y_val)
        final = metrics.classification_metrics(
            "test", family.probabilities(model, data.x("test")), data.y("test")
        )
        runs.log_metrics({**final, "train_seconds": sum(seconds)})
        mlflow.set_tag("n_params", str(family.n_params(model)))
        log.info("train: %s test accuracy %.4f", family.name, final["test_accuracy"])
        if cfg.tracking.log_model:
            family.log_model(model, data)
        return active.info.run_id
