"""Parents of sweeps and searches: their children summarised for a person, the best child
(selected on validation, never test), and the champion gate of the registry.

A summary on the parent run: the results table (CSV + Markdown), the best child of each
family (tags, its metrics copied to the parent), seed means when several seeds ran, and
plots of test accuracy against each swept setting.
"""

from __future__ import annotations

import json
import logging

import matplotlib.pyplot as plt
import mlflow
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.tracking import describe, plots, registry

log = logging.getLogger(__name__)
SETTINGS = describe.recipe_columns()  # the columns of the results table


PLOTTED = ("hidden_sizes", "learning_rate", "batch_size")


def summarize(parent: str, results: list[dict]) -> pd.DataFrame | None:
    """Log the results table, best child and plots to the parent run; return the table."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent).info.experiment_id
    children = mlflow.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    reused = [run_id for r in results for run_id in r.get("runs", [])]
    if reused:  # runs skipped on a rerun belong to an earlier parent but to this sweep too
        ids = ", ".join(f"'{i}'" for i in reused)
        earlier = mlflow.search_runs([experiment_id], f"attributes.run_id IN ({ids})")
        children = pd.concat([children, earlier]).drop_duplicates("run_id")
    if children.empty:
        return None
    table = results_table(children)
    with mlflow.start_run(run_id=parent):
        mlflow.log_text(table.to_csv(index=False), "summary/results.csv")
        mlflow.log_text(table.to_markdown(index=False), "summary/results.md")
        for family, label in (("numpy_mlp", "ours"), ("sklearn_mlp", "sklearn")):
            best = best_child(table, family)
            if best is None:
                continue
            mlflow.set_tags(
                {f"best_{label}_run_id": best.run_id, f"best_{label}_run_name": str(best.run_name)}
            )
            mlflow.log_metrics(
                {
                    f"best_{label}_{m}": float(best[m])
                    for m in ("val_accuracy", "test_accuracy", "train_seconds")
                }
            )
            if family == "numpy_mlp":  # the parent's own columns: our best child
                client.set_tag(best.run_id, "best_in_sweep", "true")
                mlflow.set_tags(
                    {
                        "best_child_run_id": best.run_id,
                        **{f"best.{k}": str(best[k]) for k in SETTINGS},
                    }
                )
                mlflow.log_metrics(
                    {m: float(best[m]) for m in ("val_accuracy", "test_accuracy", "train_seconds")}
                )
        if table.seed.nunique() > 1:  # the same configs from several seeds: their means
            means = seed_means(table)
            mlflow.log_text(means.to_csv(index=False), "summary/seed_means.csv")
            mlflow.log_text(means.to_markdown(index=False, floatfmt=".4f"), "summary/seed_means.md")
        for setting in PLOTTED:
            if table[setting].nunique() > 1:
                fig = accuracy_plot(table, setting)
                mlflow.log_figure(fig, f"summary/test_accuracy_vs_{setting}.png")
                plt.close(fig)
    return table


def best_child(table: pd.DataFrame, family: str | None = None) -> pd.Series | None:
    """The finished child (of `family`, or of either) with the best validation accuracy:
    selection on validation, never on test."""
    done = table[(table.status == "FINISHED") & table.val_accuracy.notna()]
    if family is not None:
        done = done[done.family == family]
    return None if done.empty else done.loc[done.val_accuracy.idxmax()]


def register_best(config, parent: str, table: pd.DataFrame | None) -> str | None:
    """Register the sweep's best finished child of either family (by validation accuracy)
    as the champion of its dataset's model, if it beats the champion on the same
    validation split; tag the parent with what was compared and the outcome."""
    if table is None or not config.tracking.log_model:
        return None
    best = best_child(table)
    if best is None:
        return None
    client = mlflow.MlflowClient()
    run = client.get_run(best.run_id)
    name = config.register.model_name or registry.model_name_for(
        run.data.params.get("data.name", "mnist")
    )
    alias = config.register.alias
    split = registry.validation_split(run)
    verdict = champion_gate(client, name, alias, best, split)
    client.set_tag(parent, "champion_gate", verdict[:5000])
    if not verdict.startswith("registered"):
        log.info("sweep: %s", verdict)
        return None
    try:
        version = registry.register(best.run_id, name, alias)
    except (PipelineError, mlflow.exceptions.MlflowException) as e:  # the sweep still ends
        log.warning("sweep: best run %s not registered: %s", best.run_id, e)
        return None
    client.set_tag(parent, "registered_model", f"{name} v{version} @{alias}")
    log.info("sweep: %s", verdict)
    return version


def champion_gate(client, name: str, alias: str, best, split: str) -> str:
    """Whether the sweep's best child takes `alias` of model `name`, and why: only from a
    champion with a lower validation accuracy on the same validation split (a score on 10
    images and one on 300 are not comparable). Starts with "registered" if it does."""
    try:
        current = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return (
            f"registered: best run {best.run_id} (val {best.val_accuracy:.4f}) as the "
            f"first {name} @{alias}"
        )
    theirs = current.tags.get("val_split")
    if theirs != split:
        return (
            f"not compared: {name} @{alias} (version {current.version}) was scored on "
            f"{theirs or 'a validation split it did not record'}, the best run {best.run_id} "
            f"on {split}; their accuracies are not comparable. To make it the champion: "
            f"make register RUN_ID={best.run_id}"
        )
    compared = (
        f"best run {best.run_id} val {best.val_accuracy:.4f} vs {name} @{alias} "
        f"(version {current.version}) val {current.tags.get('val_accuracy')}, on {split}"
    )
    if float(current.tags.get("val_accuracy", "nan")) >= best.val_accuracy:
        return f"not registered: {compared}: it does not beat the champion"
    return f"registered: {compared}"


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per child run: its settings, family, status and accuracies."""
    columns = {
        "run_id": "run_id",
        "tags.mlflow.runName": "run_name",
        "tags.model_family": "family",
        "status": "status",
        **{v: k for k, v in SETTINGS.items()},
        "metrics.val_accuracy": "val_accuracy",
        "metrics.test_accuracy": "test_accuracy",
        "metrics.train_seconds": "train_seconds",
        "tags.failure_reason": "failure_reason",
    }
    table = runs.reindex(columns=list(columns)).rename(columns=columns)
    for key in ("learning_rate", "momentum", "l2"):
        table[key] = pd.to_numeric(table[key])
    for key in ("batch_size", "epochs", "seed"):
        table[key] = pd.to_numeric(table[key]).astype("Int64")
    return table.sort_values(["family", "val_accuracy"], ascending=[True, False]).reset_index(
        drop=True
    )


def seed_means(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of val and test accuracy over the seeds of each
    config (a child's run name without its seed), finished children only, best first."""
    done = table[table.status == "FINISHED"]
    config = done.run_name.str.replace(r" seed=\d+", "", regex=True)
    means = (
        done.assign(config=config)
        .groupby(["family", "config"])
        .agg(
            seeds=("seed", "count"),
            val_accuracy_mean=("val_accuracy", "mean"),
            test_accuracy_mean=("test_accuracy", "mean"),
            test_accuracy_std=("test_accuracy", "std"),
        )
        .reset_index()
    )
    return means.sort_values(["family", "test_accuracy_mean"], ascending=[True, False])


def accuracy_plot(table: pd.DataFrame, setting: str):
    """Mean test accuracy against one setting: a line per activation, the baseline dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = table[table.status == "FINISHED"]
    order = sorted(done[setting].unique(), key=_sort_key)
    for i, activation in enumerate(sorted(done.activation.unique())):
        for family, style in (("numpy_mlp", "-o"), ("sklearn_mlp", "--s")):
            rows = done[(done.activation == activation) & (done.family == family)]
            if rows.empty:
                continue
            means = rows.groupby(setting).test_accuracy.mean().reindex(order).dropna()
            x = means.index if setting != "hidden_sizes" else [order.index(v) for v in means.index]
            label = f"{activation} ({'ours' if family == 'numpy_mlp' else 'scikit-learn'})"
            ax.plot(x, means.values, style, color=f"C{i}", label=label)
    if setting == "hidden_sizes":
        ax.set_xticks(range(len(order)), [plots.layer_label(v) for v in order])
    if setting == "learning_rate":
        ax.set_xscale("log")
    ax.set_xlabel(setting.replace("_", " ") + (" (η)" if setting == "learning_rate" else ""))
    ax.set_ylabel("test accuracy (mean over the other settings)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _sort_key(value):
    try:
        return (0, sum(json.loads(value)), value) if isinstance(value, str) else (0, value, "")
    except (TypeError, ValueError):
        return (1, 0, str(value))
