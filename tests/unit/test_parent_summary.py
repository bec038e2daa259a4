"""What a sweep or search parent shows of its children: the table printed at the end
(parents.summary_lines) and the plots of test accuracy against a setting (a grid's means as
lines, a search's trials as points)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from mlflow.tracking import MlflowClient

from pipeline.tracking import parents

RECIPE = {  # the classic recipe, as a run logs it
    "model.hidden_sizes": "[16]",
    "model.activation": "sigmoid",
    "model.cost": "quadratic",
    "model.init": "normal",
    "train.epochs": "2",
    "train.batch_size": "10",
    "train.learning_rate": "3.0",
    "train.momentum": "0.0",
    "train.l2": "0.0",
    "train.schedule": "constant",
    "seed": "0",
}
SKLEARN = {"model.cost": "cross_entropy", "model.init": "glorot_uniform"}


def child(name: str, val: float, test: float | None = None, **settings) -> dict:
    """A child as a row of mlflow.search_runs: ours unless its name says sklearn."""
    family = "sklearn_mlp" if name.startswith("sklearn") else "numpy_mlp"
    params = {**RECIPE, **(SKLEARN if family == "sklearn_mlp" else {}), **settings}
    return {
        "run_id": f"id-{name}",
        "tags.mlflow.runName": name,
        "tags.model_family": family,
        "status": "FINISHED",
        **{f"params.{k}": v for k, v in params.items()},
        "metrics.val_accuracy": val,
        "metrics.test_accuracy": test,
        "metrics.train_seconds": None if test is None else 0.012345,
        "tags.stopped": "pruned" if test is None else None,
    }


def table(*children: dict) -> pd.DataFrame:
    return parents.results_table(pd.DataFrame(children))


def rows_of(lines: list[str]) -> list[tuple[str, dict[str, str]]]:
    """(mark, {column: text}) per printed row, between the header and the winner."""
    header = next(i for i, line in enumerate(lines) if {"val_acc", "test_acc"} <= set(line.split()))
    columns = lines[header].split()
    end = next(i for i, line in enumerate(lines) if line.startswith(("★ winner", "no winner")))
    return [
        (line[0], dict(zip(columns, line[1:].split(), strict=True)))
        for line in lines[header + 1 : end]
    ]


def test_the_summary_is_best_first_by_val_with_4_decimals_and_the_winner_marked():
    children = table(
        child("ours 8 · classic", 0.593333, 0.586667, **{"model.hidden_sizes": "[8]"}),
        child("ours 16 · classic", 0.783333, 0.756667),
        child("sklearn 8 · classic", 0.86, 0.843333, **{"model.hidden_sizes": "[8]"}),
        child("sklearn 16 · classic", 0.923333, 0.913333),
    )
    lines = parents.summary_lines(children, "sweep smoke")
    rows = rows_of(lines)
    assert [r["val_acc"] for _, r in rows] == ["0.9233", "0.8600", "0.7833", "0.5933"]
    assert [r["test_acc"] for _, r in rows] == ["0.9133", "0.8433", "0.7567", "0.5867"]
    assert [r["family"] for _, r in rows] == ["sklearn", "sklearn", "ours", "ours"]
    assert [r["hidden"] for _, r in rows] == ["16", "8", "16", "8"]
    assert {r["train_s"] for _, r in rows} == {"0.01"}
    assert [mark for mark, _ in rows] == ["★", " ", " ", " "]
    winner = parents.best_child(children)
    assert winner is not None and winner.run_id == "id-sklearn 16 · classic"
    assert "★ winner sklearn 16 · classic: val_acc 0.9233, test_acc 0.9133" in lines
    assert "  run id-sklearn 16 · classic" in lines
    # What does not vary is said once, above the table; what varies by family, per family.
    text = "\n".join(lines)
    assert "same in all: activation=sigmoid, epochs=2, batch_size=10, learning_rate=3," in text
    assert "per family: ours cost=quadratic, init=normal; sklearn cost=cross_entropy," in text
    assert all(len(line) <= parents.WIDTH for line in lines)


def test_a_tie_on_val_puts_the_winner_first_and_pruned_trials_show_no_test():
    children = table(
        child("ours trial 0", 0.95, 0.90),
        child("ours trial 1", 0.97, 0.93),
        child("ours pruned trial 2", 0.98),  # cut short: never the winner
        child("ours trial 3", 0.97, 0.96),
    )
    children["trial"] = children.run_name.str.extract(r"trial (\d+)")[0].astype(int)
    winner = parents.best_child(children)
    rows = rows_of(parents.summary_lines(children, "search smoke"))
    assert [r["val_acc"] for _, r in rows] == ["0.9800", "0.9700", "0.9700", "0.9500"]
    assert rows[0][1]["status"] == "pruned" and rows[0][1]["test_acc"] == "—"
    assert rows[0][1]["train_s"] == "—"
    (marked,) = [r for mark, r in rows if mark == "★"]
    assert marked is rows[1][1], "among equal val_acc the winner comes first"
    assert winner is not None and f"id-ours trial {marked['trial']}" == winner.run_id


def test_the_summary_fits_100_columns_however_much_varies():
    many = [
        child(
            f"ours {i} · big",
            0.9 + i / 1000,
            0.9,
            **{
                "model.hidden_sizes": json.dumps([800 + i, 800, 800]),
                "model.activation": ["relu", "sigmoid"][i % 2],
                "model.cost": ["quadratic", "cross_entropy"][i % 2],
                "model.init": ["he", "glorot_uniform"][i % 2],
                "train.epochs": str(10 + i),
                "train.batch_size": str(10 + i),
                "train.learning_rate": str(0.1234567 * (i + 1)),
                "train.momentum": str(i / 10),
                "train.l2": str(i),
                "train.schedule": ["constant", "cosine"][i % 2],
                "seed": str(i),
            },
        )
        for i in range(6)
    ]
    lines = parents.summary_lines(table(*many), "sweep wide")
    assert all(len(line) <= parents.WIDTH for line in lines), "\n".join(lines)
    assert any(line.startswith("not shown (see summary/results.csv): ") for line in lines)
    rows = rows_of(lines)
    assert len(rows) == 6 and rows[0][0] == "★"
    assert [r["val_acc"] for _, r in rows] == sorted((r["val_acc"] for _, r in rows), reverse=True)


def test_runs_the_settings_cannot_tell_apart_are_told_by_their_names():
    """An ablation's rows differ in a tweak the settings columns do not hold."""
    lines = parents.summary_lines(
        table(
            child("ours all tweaks seed=0 · frontier", 0.99, 0.98),
            child("ours no elastic seed=0 · frontier", 0.985, 0.981),
        ),
        "sweep ablation",
    )
    header = next(i for i, line in enumerate(lines) if {"val_acc", "test_acc"} <= set(line.split()))
    assert lines[header].split()[0] == "run"
    assert lines[header + 1].startswith("★  all tweaks seed=0  ")
    assert lines[header + 2].startswith("   no elastic seed=0  ")


@pytest.mark.parametrize("sampled", [False, True])
def test_a_search_plots_its_trials_as_points_a_grid_its_means_as_a_line(sampled):
    children = table(
        *(
            child(f"ours trial {i}", 0.9, 0.8 + i / 100, **{"train.learning_rate": str(lr)})
            for i, lr in enumerate([3.0, 0.1, 1.0, 0.3])
        )
    )
    fig = parents.accuracy_plot(children, "learning_rate", sampled=sampled)
    (ax,) = fig.axes
    drawn = [line for line in ax.get_lines() if line.get_label() == "sigmoid (ours)"]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    if sampled:  # a marker per trial, nothing joining them
        assert not [line for line in ax.get_lines() if line.get_linestyle() not in ("None", "")]
        (scatter,) = points
        assert np.asarray(scatter.get_offsets()).shape == (4, 2)
    else:  # the grid's means, joined in the order of the setting
        (line,) = drawn
        assert line.get_linestyle() == "-" and list(line.get_xdata()) == [0.1, 0.3, 1.0, 3.0]
        assert not points


def test_a_search_parent_logs_its_plots_as_points(monkeypatch):
    """parents.summarize draws points for a parent tagged kind=search, lines for a sweep."""
    client = MlflowClient()
    experiment = client.create_experiment("plots")
    mlflow.set_experiment(experiment_id=experiment)  # another test's may be the active one
    drawn: dict[str, list] = {}

    def log_figure(fig, path):  # what the plot holds, not its pixels
        (ax,) = fig.axes[:1]
        drawn.setdefault(path, []).append(
            (
                [line.get_linestyle() for line in ax.get_lines()],
                [c for c in ax.collections if isinstance(c, PathCollection)],
            )
        )

    monkeypatch.setattr(mlflow, "log_figure", log_figure)
    for kind in ("search", "sweep"):
        parent = client.create_run(experiment, run_name=kind, tags={"kind": kind}).info.run_id
        for i, lr in enumerate([3.0, 0.1, 1.0]):
            run = client.create_run(
                experiment,
                run_name=f"ours trial {i} · {kind}",
                tags={"mlflow.parentRunId": parent, "model_family": "numpy_mlp"},
            ).info.run_id
            for key, value in {**RECIPE, "train.learning_rate": str(lr)}.items():
                client.log_param(run, key, value)
            for name, score in {"val_accuracy": 0.9 - i / 10, "test_accuracy": 0.8}.items():
                client.log_metric(run, name, score, step=1)
            client.log_metric(run, "train_seconds", 1.0)
            client.set_terminated(run, "FINISHED")
        parents.summarize(parent, [])
        (styles, points), *_ = drawn.pop("summary/test_accuracy_vs_learning_rate.png")
        if kind == "search":
            assert points and all(style in ("None", "") for style in styles)
        else:
            assert not points and "-" in styles
