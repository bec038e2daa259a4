"""`make compare`: ours vs scikit-learn per config, as a person reads it in a terminal, from
a store it only reads."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers import compose_config, run_app
from mlflow.tracking import MlflowClient

from pipeline.app import run_stages
from pipeline.errors import PipelineError
from pipeline.stages import compare

WIDTH = 100
# Three configs on the 8×8 digits (hidden sizes, preset), each run by ours and sklearn.
CONFIGS = {("classic", "16-16"): [], ("classic", "8"): ["model.hidden_sizes=[8]"]}
CONFIGS[("modern", "16-16")] = ["model=modern"]


@pytest.fixture(scope="module")
def three_configs(tmp_path_factory):
    """A store holding the three CONFIGS, each trained for 3 epochs by both families."""
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        for overrides in CONFIGS.values():
            cfg = compose_config(
                tmp / "data",
                "data=digits",
                "stages=[preprocess,train]",
                "train.epochs=3",
                "tracking.log_model=false",
                *overrides,
            )
            run_stages(cfg)
    return uri, tmp


def _snapshot(client: MlflowClient) -> tuple:
    """Everything compare could write: experiments, their tags, their runs."""
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    return (
        sorted((e.name, sorted(e.tags.items())) for e in experiments),
        sorted(r.info.run_id for r in runs),
    )


def test_compare_prints_ours_vs_sklearn_best_first_in_100_columns_and_logs_nothing(
    three_configs,
):
    uri, tmp = three_configs
    client = MlflowClient(uri)
    before = _snapshot(client)
    assert len(before[1]) == 2 * len(CONFIGS)
    accuracy: dict[tuple[str, str], dict[str, float]] = {}
    experiment = client.get_experiment_by_name("digits")
    assert experiment is not None
    for run in client.search_runs([experiment.experiment_id]):
        hidden = "-".join(re.findall(r"\d+", run.data.params["model.hidden_sizes"]))
        families = accuracy.setdefault((run.data.tags["model_name"], hidden), {})
        families[run.data.tags["model_family"]] = run.data.metrics["test_accuracy"]
    assert set(accuracy) == set(CONFIGS)

    done = run_app(
        "stages=[compare]",
        "data=digits",
        f"hydra.run.dir={tmp / 'out'}",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    printed = done.stdout.splitlines()
    too_long = [line for line in printed if len(line) > WIDTH]
    assert not too_long, "\n".join(printed)
    assert "ours vs sklearn:" in done.stdout and "Δ = ours − sklearn" in done.stdout

    (header,) = [i for i, line in enumerate(printed) if line.startswith("config ")]
    cells = [re.split(r"\s{2,}", line.strip()) for line in printed[header:]]
    assert cells[0] == ["config", "ours", "sklearn", "Δ", "winner", "train s"]
    rows = [row for row in cells[1:] if len(row) == 6]
    assert len(rows) == len(CONFIGS), "\n".join(printed)
    best = []
    for description, ours_text, sklearn_text, diff, winner, seconds in rows:
        # the config as a run name reads it: preset, hidden sizes, activation, η, batch
        (config,) = [c for c in CONFIGS if description.startswith(" ".join(c) + " ")]
        ours, sklearn = accuracy[config]["numpy_mlp"], accuracy[config]["sklearn_mlp"]
        assert (ours_text, sklearn_text) == (f"{ours:.4f}", f"{sklearn:.4f}"), description
        assert diff == f"{100 * (ours - sklearn):+.2f} pt", description
        assert winner == ("ours" if ours > sklearn else "sklearn" if sklearn > ours else "tie"), (
            "\n".join(printed)
        )
        assert re.fullmatch(r"\d+\.\d\d/\d+\.\d\d", seconds), seconds
        best.append(max(ours, sklearn))
    assert best == sorted(best, reverse=True), "best first"
    assert {row[3] for row in rows} != {"+0.00 pt"}, "no difference to check the sign of"

    assert _snapshot(client) == before, "compare wrote to the store"


def _frame(*configs: dict) -> pd.DataFrame:
    """mlflow.search_runs' frame for a run per (config, family), made up."""
    rows = []
    for i, c in enumerate(configs):
        for family, (label, accuracy) in c["families"].items():
            rows.append(
                {
                    "start_time": pd.Timestamp(2026, 1, 1) + pd.Timedelta(minutes=i),
                    "tags.config_hash": c["hash"],
                    "tags.model_family": family,
                    "tags.mlflow.runName": f"{label} {c['model']} …",
                    "tags.model_name": c["model"],
                    "params.model.hidden_sizes": "[16, 16]",
                    "params.model.activation": "sigmoid",
                    "params.train.learning_rate": "3.0",
                    "params.train.batch_size": "10",
                    "params.train.epochs": "30",
                    **{f"params.{k}": v for k, v in c.get("params", {}).items()},
                    "metrics.test_accuracy": accuracy,
                    "metrics.train_seconds": 1.5,
                }
            )
    return pd.DataFrame(rows)


def test_compare_marks_a_tie_a_missing_baseline_and_cuts_a_long_config_not_the_line():
    both = {"numpy_mlp": ("ours", 0.9), "sklearn_mlp": ("sklearn", 0.9)}
    tweaks = {f"train.augment.{k}": "0.5" for k in ("rotation", "scale", "shear", "shift")}
    table = compare.comparison_table(
        _frame(
            {"hash": "tie", "model": "classic", "families": both},
            {"hash": "alone", "model": "classic", "families": {"numpy_mlp": ("ours", 0.95)}},
            {"hash": "long", "model": "classic", "families": both, "params": tweaks},
        )
    )
    assert table.index[0] == "alone"  # best first
    assert dict(table.winner) == {"alone": "", "tie": "tie", "long": "tie"}
    printed = compare.lines(table, "digits")
    assert all(len(line) <= WIDTH for line in printed), "\n".join(printed)
    alone = printed[-3]
    (long,) = [line for line in printed[-2:] if line.startswith("rotation=0.5 scale=0.5")]
    (tie,) = [line for line in printed[-2:] if line != long]
    assert re.split(r"\s{2,}", alone)[1:] == ["0.9500", "—", "—", "1.50/—"]
    assert re.split(r"\s{2,}", tie)[1:] == ["0.9000", "0.9000", "+0.00 pt", "tie", "1.50/1.50"]
    assert long.split("  ")[0].endswith("…")  # what every row shares is what is cut
    assert tie.startswith("classic 16-16 sigmoid η=3 m=10 30ep ")


def test_compare_without_a_store_is_one_line_and_makes_none(make_cfg):
    store = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    with pytest.raises(PipelineError, match="compare: no experiment 'digits' in sqlite:///"):
        run_stages(make_cfg("data=digits", "stages=[compare]"))
    assert not store.exists()
