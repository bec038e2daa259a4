"""Parents of sweeps and searches: their children summarised for a person, the best child
(selected on validation, never test), and the champion gate of the registry.

A summary on the parent run: its metrics and tags are the winner's (the best child by
validation, either family), plus each family's best as best_<label>_*; the results by
config, ours and scikit-learn side by side, as a table the UI renders (the full table as
CSV); seed means when several seeds ran; validation accuracy by epoch of the best few;
plots of test accuracy against each swept setting (a search's trials as points). In the
terminal, the same children as a table best first, the winner marked (summary_lines).
"""

from __future__ import annotations

import json
import logging
import textwrap

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
    parent_run = client.get_run(parent)
    experiment_id = parent_run.info.experiment_id
    # A search's trials are random points, not a grid: no line through their means.
    sampled = parent_run.data.tags.get("kind") == "search"
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
                fig = accuracy_plot(table, setting, sampled=sampled)
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


def accuracy_plot(table: pd.DataFrame, setting: str, sampled: bool = False):
    """Test accuracy against one setting, a colour per activation, ours and scikit-learn's
    by marker. A grid (a sweep): a line through the mean of each value, the baseline
    dashed. Sampled (a search's trials): a point per trial and no line, since the other
    settings differ at random from point to point."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = finished(table)
    order = sorted(done[setting].unique(), key=_sort_key)
    for i, activation in enumerate(sorted(done.activation.unique())):
        for family, style in (("numpy_mlp", "-o"), ("sklearn_mlp", "--s")):
            rows = done[(done.activation == activation) & (done.family == family)]
            if rows.empty:
                continue
            label = f"{activation} ({'ours' if family == 'numpy_mlp' else 'scikit-learn'})"
            if sampled:
                x = _positions(rows[setting], order, setting)
                ax.scatter(x, rows.test_accuracy, marker=style[-1], color=f"C{i}", label=label)
                continue
            means = rows.groupby(setting).test_accuracy.mean().reindex(order).dropna()
            x = _positions(means.index, order, setting)
            ax.plot(x, means.values, style, color=f"C{i}", label=label)
    if setting == "hidden_sizes":
        ax.set_xticks(range(len(order)), [plots.layer_label(v) for v in order])
    if setting == "learning_rate":
        ax.set_xscale("log")
    ax.set_xlabel(setting.replace("_", " ") + (" (η)" if setting == "learning_rate" else ""))
    ax.set_ylabel(
        "test accuracy (a point per finished trial)"
        if sampled
        else "test accuracy (mean over the other settings)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _positions(values, order: list, setting: str) -> list:
    """Where values of `setting` go on the x axis: hidden sizes (text such as '[16, 16]')
    at their place in `order`, numbers at themselves."""
    return [order.index(v) for v in values] if setting == "hidden_sizes" else list(values)


def _sort_key(value):
    try:
        return (0, sum(json.loads(value)), value) if isinstance(value, str) else (0, value, "")
    except (TypeError, ValueError):
        return (1, 0, str(value))


# ---- the summary in the terminal -------------------------------------------------------

WIDTH = 100  # the longest line printed
WINNER = "★"
# The printed table's headers where results.csv's names are long; right-aligned columns.
HEADERS = {"label": "family", "hidden_sizes": "hidden", "learning_rate": "lr"}
HEADERS |= {"batch_size": "batch", "val_accuracy": "val_acc", "test_accuracy": "test_acc"}
HEADERS |= {"train_seconds": "train_s"}
NAMED = [key.rpartition(".")[2] for key in describe.SHOWN]  # hidden sizes, activation, η, batch
NUMBERS = {"trial", "epochs", "batch_size", "learning_rate", "momentum", "l2", "seed", *SCORES}


def summary_lines(table: pd.DataFrame, title: str) -> list[str]:
    """The children for a terminal, in at most WIDTH columns: best first by validation
    accuracy (the selection; test is shown, never used), accuracies to 4 decimals, train
    seconds to 2 (1 from 10 s); the winner (best_child, the parent's best_child_run_id)
    marked ★ and named under the table. The columns are what differs between the children:
    a setting the same in all of them, or in all of each family's, is said once above the
    table. A `trial` column in `table` (a search's trial numbers) comes first."""
    winner = best_child(table)
    rows = table.assign(_winner=table.run_id == (winner.run_id if winner is not None else None))
    rows = rows.sort_values(  # the winner first among equals: best_child took the first
        ["val_accuracy", "_winner", "test_accuracy"], ascending=False, na_position="last"
    ).reset_index(drop=True)
    cells = {c: [_cell(c, v) for v in rows[c]] for c in ["label", *SETTINGS]}
    shared, per_family, differ = _what_differs(cells, rows.label.fillna("—"))

    columns = {"trial": [_cell("trial", v) for v in rows.trial]} if "trial" in rows else {}
    columns |= {c: cells[c] for c in differ}
    keys = [c for c in ("trial", *differ) if c in rows]
    if rows.duplicated(keys).any() if keys else len(rows) > 1:
        # Runs the columns cannot tell apart (rows of an ablation): what their names vary.
        columns["run"] = list(rows.run_name.str.split(" ", n=1).str[1].str.split(" · ").str[0])
    columns |= {m: [_cell(m, v) for v in rows[m]] for m in SCORES}
    status = rows.stopped.where(rows.stopped.notna(), rows.status.str.lower())
    if (status != "finished").any():  # pruned trials, failed or killed runs
        columns["status"] = list(status.fillna("—"))
    # Too wide: settings go, the last first, those a run's name shows (η…) last of all.
    droppable = sorted(differ, key=lambda c: (c not in NAMED, differ.index(c)), reverse=True)
    while _width(columns) > WIDTH and droppable:
        del columns[droppable.pop(0)]

    lines = [f"{title}: {len(rows)} runs, best first by val_acc (selection is on validation)"]
    lines += _wrapped("same in all: ", ", ".join(shared))
    lines += _wrapped(
        "per family: ", "; ".join(f"{label} {', '.join(s)}" for label, s in per_family.items())
    )
    dropped = [c for c in differ if c not in columns]
    lines += _wrapped("not shown (see summary/results.csv): ", ", ".join(dropped))
    lines += _table(columns, [WINNER if w else " " for w in rows._winner])
    if winner is None:
        lines.append("no winner: no run finished all its epochs")
    else:
        scores = (
            f": val_acc {_cell('val_accuracy', winner.val_accuracy)}, "
            f"test_acc {_cell('test_accuracy', winner.test_accuracy)}"
        )
        name = _cut(str(winner.run_name), WIDTH - len(f"{WINNER} winner ") - len(scores))
        lines += [f"{WINNER} winner {name}{scores}", f"  run {winner.run_id}"]
    return [_cut(text, WIDTH) for text in lines]


def _what_differs(
    cells: dict[str, list[str]], labels: pd.Series
) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Of the printed values of each column (the family's label and the settings): the
    columns with one value in all rows ('key=value'), those with one value in each family
    ({label: ['key=value', …]}: scikit-learn's cost and init are not ours), and the
    columns whose values differ otherwise, which the table shows."""
    shared: list[str] = []
    per_family: dict[str, list[str]] = {}
    differ: list[str] = []
    for column, values in cells.items():
        by_family = pd.Series(values).groupby(labels.values)
        if len(set(values)) == 1:
            name = "family" if column == "label" else column
            shared += [] if values[0] == "—" else [f"{name}={values[0]}"]
        elif column != "label" and by_family.nunique().max() == 1:
            for label, value in by_family.first().items():
                if value != "—":  # a setting that family does not have
                    per_family.setdefault(str(label), []).append(f"{column}={value}")
        else:
            differ.append(column)
    return shared, per_family, differ


def _table(columns: dict[str, list[str]], marks: list[str]) -> list[str]:
    """A header and a row per mark: numbers right-aligned, text left-aligned."""
    widths = {c: max(len(HEADERS.get(c, c)), *map(len, v)) for c, v in columns.items()}

    def line(mark: str, texts) -> str:
        aligned = [
            t.rjust(widths[c]) if c in NUMBERS else t.ljust(widths[c])
            for c, t in zip(columns, texts)
        ]
        return "  ".join([mark, *aligned]).rstrip()

    header = line(" ", [HEADERS.get(c, c) for c in columns])
    return [header, *(line(mark, texts) for mark, texts in zip(marks, zip(*columns.values())))]


def _cell(column: str, value) -> str:
    """A value of the results table as the printed summary shows it: accuracies to 4
    decimals, seconds to 2 (1 from 10 s), hidden sizes as 16-16, other numbers to 3
    significant digits; '—' where there is none."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "—"
    if column in ("val_accuracy", "test_accuracy"):
        return f"{value:.4f}"
    if column == "train_seconds":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if column == "hidden_sizes":
        return plots.layer_label(value)
    if isinstance(value, float):  # numpy's float64 is one: η 0.0793, momentum 0.9, l2 5
        return f"{value:.3g}"
    return str(value)


def _width(columns: dict[str, list[str]]) -> int:
    """The printed table's width: the mark, then each column and two spaces before it."""
    return 1 + sum(2 + max(len(HEADERS.get(c, c)), *map(len, v)) for c, v in columns.items())


def _wrapped(lead: str, text: str) -> list[str]:
    """'lead text' in lines of at most WIDTH, continued indented; nothing for no text."""
    return textwrap.wrap(lead + text, WIDTH, subsequent_indent="  ") if text else []


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
