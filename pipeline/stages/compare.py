"""Stage `compare` (`make compare`): this project's network vs scikit-learn's, config by config.

Reads the finished training runs of the experiment from MLflow, keeps the latest run per
config and model family, and prints one row per config, best first (by the better of the
two test accuracies): the config, each family's test accuracy, the difference ours −
baseline in percentage points, the winner and each family's train seconds, in at most
100 columns. It only reads: nothing is logged, no experiment is created or tagged.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import mlflow
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.families import OURS
from pipeline.logs import redact
from pipeline.tracking import describe, store

log = logging.getLogger(__name__)
WIDTH = 100  # the longest line printed
# What every config's description shows besides its preset: what a run name shows, and
# its epochs.
ALWAYS = (*describe.SHOWN, "train.epochs")


def labels(runs: pd.DataFrame) -> dict[str, str]:
    """{family: how a person reads it}, e.g. {'numpy_mlp': 'ours', 'sklearn_mlp': 'sklearn'}:
    its label (families/), the first word of its runs' names (read there, not by importing
    the family: scikit-learn's takes seconds to import)."""
    names = runs.groupby("tags.model_family")["tags.mlflow.runName"].first()
    return {family: str(name).split()[0] if name else family for family, name in names.items()}


def _value(text):
    """A param's logged text as its value ('[16, 16]' -> [16, 16], '3.0' -> 3.0)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _short(key: str, text) -> str:
    """A logged param as a run name shows it ('η=3', '16-16', '30ep'); else 'leaf=value'."""
    shown = describe.SHORT.get(key)
    return shown(_value(text)) if shown else f"{key.rpartition('.')[2]}={text}"


def descriptions(settings: pd.DataFrame) -> pd.Series:
    """Each config in a few words, as a run name reads: what differs between the configs
    first, then what they share, e.g. '16 · classic sigmoid η=3 m=10 2ep'. Its preset
    ('model': classic, modern…), hidden sizes, activation, η, batch and epochs always; any
    other setting (cost, L2, a tweak…) only where it differs between configs of one preset
    (the preset's name says the rest). settings: the params of one run per config, columns
    named by key; what a config does not set (a tweak that is off) is left out."""
    preset = settings["model"].fillna("")
    extras = sorted(k for k in settings if k not in (*ALWAYS, "model"))
    keys = [
        *(k for k in ("model", *ALWAYS) if k in settings),
        *(k for k in extras if settings[k].fillna("").groupby(preset).nunique().gt(1).any()),
    ]
    differs = [k for k in keys if settings[k].fillna("").nunique() > 1]
    shared = [k for k in keys if k not in differs]

    def words(row, chosen) -> str:
        return " ".join(
            row[k] if k == "model" else _short(k, row[k])
            for k in chosen
            if isinstance(row[k], str) and row[k] != ""
        )

    def describe_one(row) -> str:
        return " · ".join(part for part in (words(row, differs), words(row, shared)) if part)

    return settings.apply(describe_one, axis=1)


def winner(accuracy: pd.Series, name: dict[str, str]) -> str:
    """The label of the family with the best test accuracy of a config ({family: accuracy},
    NaN where it has no run); 'tie' when several share it, '' with fewer than two runs."""
    if accuracy.count() < 2:
        return ""
    best = accuracy[accuracy == accuracy.max()]
    return "tie" if len(best) > 1 else name[best.index[0]]


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per config hash, best first: its description ('config'), each family's test
    accuracy ('<label> test_acc', ours first), 'diff_pt' = ours − the best other family in
    percentage points, 'winner' (a family's label, or 'tie'; empty with one family) and each
    family's train seconds ('<label> train_s')."""
    runs = runs.sort_values("start_time", ascending=False)
    latest = runs.drop_duplicates(["tags.config_hash", "tags.model_family"])
    # A config's settings as configured: our run's (the baseline logs its own cost, init…)
    ours_first = latest.assign(_ours=latest["tags.model_family"] != OURS).sort_values("_ours")
    one = ours_first.drop_duplicates("tags.config_hash").set_index("tags.config_hash")
    params = [c for c in one if c.startswith("params.") and not c.startswith("params.sklearn.")]
    settings = one[params].rename(columns=lambda c: c.removeprefix("params."))
    settings = settings.drop(columns="family", errors="ignore")
    settings["model"] = one.get("tags.model_name", pd.Series("", index=one.index))
    found = set(latest["tags.model_family"])
    order = [OURS, *sorted(found - {OURS})] if OURS in found else sorted(found)
    metrics = latest.pivot(
        index="tags.config_hash",
        columns="tags.model_family",
        values=["metrics.test_accuracy", "metrics.train_seconds"],
    )
    accuracy = metrics["metrics.test_accuracy"][order]
    name = labels(latest)
    table = pd.DataFrame({"config": descriptions(settings)}, index=accuracy.index)
    for family in order:
        table[f"{name[family]} test_acc"] = accuracy[family]
    others = accuracy.drop(columns=OURS, errors="ignore")
    if OURS in accuracy and not others.empty:
        table["diff_pt"] = 100 * (accuracy[OURS] - others.max(axis=1))
    best = accuracy.max(axis=1)
    table["winner"] = accuracy.apply(lambda row: winner(row, name), axis=1)
    for family in order:
        table[f"{name[family]} train_s"] = metrics["metrics.train_seconds"][family]
    table["_best"] = best
    table = table.sort_values(["_best", *table.columns[1:2]], ascending=False)
    table.index.name = "config_hash"
    return table.drop(columns="_best")


def _seconds(s: float) -> str:
    return "—" if math.isnan(s) else f"{s:.2f}" if s < 10 else f"{s:.0f}"


def lines(table: pd.DataFrame, experiment: str) -> list[str]:
    """The table as text of at most WIDTH columns: a heading, a legend, the rows. A config's
    description gets the room the numbers leave it, cut with '…'; the train seconds are the
    first column to go when the families are too many."""
    labels = [c.removesuffix(" test_acc") for c in table if c.endswith(" test_acc")]
    ours, others = labels[0], labels[1:]
    columns: dict[str, list[str]] = {
        lab: ["—" if math.isnan(a) else f"{a:.4f}" for a in table[f"{lab} test_acc"]]
        for lab in labels
    }
    legend = []
    if "diff_pt" in table:
        columns["Δ"] = ["—" if math.isnan(d) else f"{d:+.2f} pt" for d in table["diff_pt"]]
        versus = others[0] if len(others) == 1 else f"the best of {', '.join(others)}"
        legend.append(f"Δ = {ours} − {versus}, percentage points")
    if len(labels) > 1:
        columns["winner"] = list(table["winner"])
    seconds = [
        "/".join(_seconds(s) for s in row)
        for row in table[[f"{lab} train_s" for lab in labels]].itertuples(index=False)
    ]
    columns["train s"] = seconds
    legend.append(f"train s: {'/'.join(labels)}")
    widths = {k: max(len(k), *map(len, v)) for k, v in columns.items()}
    room = WIDTH - sum(w + 2 for w in widths.values())
    if room < 30:  # too many families: the seconds go before the configs become unreadable
        room += widths.pop("train s") + 2
        columns.pop("train s")
        legend.pop()
    descriptions = [d if len(d) <= room else d[: room - 1] + "…" for d in table["config"]]
    wide = min(room, max(len("config"), *map(len, descriptions)))

    def row(first: str, cells: list[str]) -> str:
        return "  ".join(
            [first.ljust(wide)]
            + [
                c.ljust(widths[k]) if k == "winner" else c.rjust(widths[k])
                for k, c in zip(columns, cells)
            ]
        )

    heading = (
        f"{' vs '.join(labels)}: test accuracy of the latest finished runs in {experiment!r}, "
        f"{len(table)} config{'s' if len(table) != 1 else ''}"
    )
    text = [heading, "best first" + (" (by the winner's accuracy)" if len(labels) > 1 else "")]
    for part in legend:  # as many to a line as fit
        joined = f"{text[-1]}; {part}"
        text[-1:] = [joined] if len(joined) <= WIDTH else [text[-1], part]
    text += ["", row("config", list(columns))]
    text += [row(d, cells) for d, *cells in zip(descriptions, *columns.values())]
    return [line if len(line) <= WIDTH else line[: WIDTH - 1] + "…" for line in text]


def _experiment_id(cfg) -> str:
    """The experiment's id, its store opened as it is: no experiment created or tagged."""
    uri = store.tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        experiment = None
    else:
        if uri.startswith("sqlite:///"):
            store.initialise_sqlite(uri)  # one at another schema is named, with the fix
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        raise PipelineError(
            f"compare: no experiment {cfg.tracking.experiment!r} in {redact(uri)}: "
            "run `make run` first"
        )
    return experiment.experiment_id


def run(cfg, results: dict) -> pd.DataFrame:
    finished = mlflow.search_runs(
        experiment_ids=[_experiment_id(cfg)],
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
    print("\n".join(lines(table, cfg.tracking.experiment)), flush=True)
    return table
