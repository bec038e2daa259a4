"""Parents of sweeps and searches: their children summarised for a person, the best child
(selected on validation, never test), and the champion gate of the registry.

A summary on the parent run: its metrics and tags are the winner's (the best child by
validation, either family), plus each family's best as best_<label>_*; the results by
config, ours and scikit-learn side by side, as a table the UI renders (the full table as
CSV); seed means when several seeds ran; validation accuracy by epoch of the best few;
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
        pairs = pair_table(table)
        if not pairs.empty:  # rendered as a table by the UI (the run's Artifacts)
            mlflow.log_table(pairs, "summary/results_by_config.json")
        for label in sorted(table.label.dropna().unique()):
            best = best_child(table, label)
            if best is None:
                continue
            mlflow.set_tags(
                {f"best_{label}_run_id": best.run_id, f"best_{label}_run_name": str(best.run_name)}
            )
            mlflow.log_metrics({f"best_{label}_{m}": float(best[m]) for m in SCORES})
        winner = best_child(table)
        if winner is not None:  # the parent's own columns: the winner's, either family
            client.set_tag(winner.run_id, "best_in_sweep", "true")
            mlflow.set_tags(
                {
                    "best_child_run_id": winner.run_id,
                    "winner_family": str(winner.family),
                    "winner": f"{winner.run_name}"[:250],
                    **{f"best.{k}": str(winner[k]) for k in SETTINGS},
                }
            )
            mlflow.log_metrics({m: float(winner[m]) for m in SCORES})
            fig = best_configs_figure(table)
            mlflow.log_figure(fig, "summary/val_accuracy_by_epoch.png")
            plt.close(fig)
        if table.seed.nunique() > 1:  # the same configs from several seeds: their means
            means = seed_means(table)
            mlflow.log_text(means.to_csv(index=False), "summary/seed_means.csv")
            mlflow.log_table(means.round(4), "summary/seed_means.json")
        for setting in PLOTTED:
            if table[setting].nunique() > 1:
                fig = accuracy_plot(table, setting)
                mlflow.log_figure(fig, f"summary/test_accuracy_vs_{setting}.png")
                plt.close(fig)
    return table


SCORES = ("val_accuracy", "test_accuracy", "train_seconds")


def best_child(table: pd.DataFrame, label: str | None = None) -> pd.Series | None:
    """The finished child (of the family labelled `label`: ours, sklearn; or of any) with
    the best validation accuracy: selection on validation, never on test. A pruned child
    (finished, but cut short) is never the best."""
    done = finished(table)
    done = done[done.val_accuracy.notna()]
    if label is not None:
        done = done[done.label == label]
    return None if done.empty else done.loc[done.val_accuracy.idxmax()]


def finished(table: pd.DataFrame) -> pd.DataFrame:
    """The children that trained all their epochs: FINISHED and not pruned."""
    return table[(table.status == "FINISHED") & table.stopped.isna()]


def pair_table(table: pd.DataFrame) -> pd.DataFrame:
    """A row per config, its families side by side: val and test accuracy of each (means
    over its seeds), ours − scikit-learn on test, and the seeds; best validation first.
    The config is a child's name without its family and seed."""
    done = finished(table)
    if done.empty:
        return pd.DataFrame()
    config = (
        done.run_name.str.split(" ", n=1)
        .str[1]
        .str.replace(r"\s*\bseed=\d+", "", regex=True)
        .str.replace(r"^· ", "", regex=True)
        .str.strip()
    )
    grouped = done.assign(config=config).groupby(["config", "label"])
    means = grouped[["val_accuracy", "test_accuracy"]].mean().unstack("label")
    pairs = pd.DataFrame(index=means.index)
    labels = [label for label in ("ours", "sklearn") if label in means["val_accuracy"]]
    labels += [label for label in means["val_accuracy"].columns if label not in labels]
    for label in labels:
        pairs[f"{label} val"] = means["val_accuracy"][label]
        pairs[f"{label} test"] = means["test_accuracy"][label]
    if {"ours", "sklearn"} <= set(labels):
        pairs["ours − sklearn (test)"] = pairs["ours test"] - pairs["sklearn test"]
    pairs["seeds"] = grouped.seed.nunique().groupby("config").max()
    best_val = pairs[[f"{label} val" for label in labels]].max(axis=1)
    pairs = pairs.assign(_best=best_val).sort_values("_best", ascending=False)
    return pairs.drop(columns="_best").reset_index().round(4)


def best_configs_figure(table: pd.DataFrame, n: int = 3):
    """Validation accuracy by epoch of the best few finished children (by val), of any
    family, on one chart."""
    from pipeline.tracking import runs

    done = finished(table)
    best = done.sort_values("val_accuracy", ascending=False).head(n)
    curves = {
        str(row.run_name)[:60]: runs.curves(str(row.run_id), ("val_accuracy",))
        for row in best.itertuples()
    }
    return plots.learning_curves(curves, f"the best {len(curves)} runs: validation accuracy")


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
        "tags.stopped": "stopped",  # pruned: finished, but cut short on purpose
    }
    table = runs.reindex(columns=list(columns)).rename(columns=columns)
    # ours, sklearn, …: a training run's name leads with its family's label
    table["label"] = table.run_name.str.split(" ", n=1).str[0]
    for key in ("learning_rate", "momentum", "l2"):
        table[key] = pd.to_numeric(table[key])
    for key in ("batch_size", "epochs", "seed"):
        table[key] = pd.to_numeric(table[key]).astype("Int64")
    return table.sort_values(["family", "val_accuracy"], ascending=[True, False]).reset_index(
        drop=True
    )


def seed_means(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of val and test accuracy over the seeds of each
    config (a child's run name without its seed), finished (not pruned) children only,
    best first."""
    done = finished(table)
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
    done = finished(table)
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
