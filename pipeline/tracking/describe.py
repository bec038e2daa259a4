"""What a person reads about a run in the MLflow UI: its name, its description and its params.

A run's params are the settings that apply to its model family and the data split, and
nothing else (the full composed config stays an artifact, config.yaml): each family says
which settings it uses (families/): scikit-learn's runs carry no cost, init or schedule of
ours, which MLPClassifier ignores, but its own get_params() as sklearn.*.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from pipeline import config
from pipeline.config import plain
from pipeline.data import DATASETS


def experiment_note(data_name: str) -> str:
    """An experiment's description in the MLflow UI, true to its dataset."""
    pixels = DATASETS.get(data_name, {}).get("pixels", 784)
    side = round(pixels**0.5)
    return (
        f"Runs of the classic handwritten-digit network on {data_name} ({side}×{side} = "
        f"{pixels} pixels in, 10 digits out) trained from scratch in NumPy by this project, "
        "each next to scikit-learn's MLPClassifier on the same config and split, made by "
        "`make run`, `make sweep` and `make analyze`. Training runs are named `ours|sklearn "
        "<what its sweep varies> · <recipe> <hidden sizes> <activation> η=<rate> m=<batch>`; "
        "sweeps and searches are parent runs (expand them) whose metrics are the winner's; "
        "compare runs on val_accuracy (selection) and test_accuracy (reported once). Metric "
        "definitions: pipeline/families/metrics.py; the full config of a run: its "
        "config.yaml artifact."
    )


def recipe_columns() -> dict[str, str]:
    """The recipe's settings as columns of mlflow.search_runs' frame, e.g.
    {'hidden_sizes': 'params.model.hidden_sizes', ..., 'seed': 'params.seed'}."""
    return {key.rpartition(".")[2]: f"params.{key}" for key in config.RECIPE_KEYS}


# How a run's name shows a setting, short: the runs table shows ~40 characters of a name.
SHORT: dict[str, Callable[[Any], str]] = {
    "model.hidden_sizes": lambda v: "-".join(map(str, v)),
    "model.activation": str,
    "model.cost": lambda v: {"cross_entropy": "CE", "quadratic": "quad"}.get(v, v),
    "model.init": lambda v: f"init={v}",
    "train.learning_rate": lambda v: f"η={v:.3g}",  # a search's 0.896938: η=0.897
    "train.batch_size": lambda v: f"m={v}",
    "train.l2": lambda v: f"λ={v:g}",
    "train.momentum": lambda v: f"μ={v:g}",
    "train.epochs": lambda v: f"{v}ep",
    "seed": lambda v: f"seed={v}",
}
# What every training run's name shows, after what its sweep varies.
SHOWN = ("model.hidden_sizes", "model.activation", "train.learning_rate", "train.batch_size")


def short(cfg, key: str) -> str:
    """A setting as a run name shows it, e.g. 'η=0.5', '16-16', 'λ=5'; else 'leaf=value'."""
    if key.startswith("ablation="):  # a row of the ablation sweep (conf/ablation/)
        row = key.partition("=")[2]
        return "all tweaks" if row == "none" else f"no {row}"
    value = plain(OmegaConf.select(cfg, key))
    shown = SHORT.get(key)
    return shown(value) if shown else f"{key.rpartition('.')[2]}={value}"


def run_name(cfg, family_label: str) -> str:
    """The family first, then what tells the run from its neighbours: what its sweep varies
    (tracking.varied) or its search trial (tracking.label), then the recipe, e.g.
    'ours classic 16-16 sigmoid η=3 m=10', 'sklearn 32-32 relu m=100 · classic η=0.1',
    'ours trial 3 · smoke 16 sigmoid η=0.897 m=10'. The full description is the run's."""
    varied = sorted(cfg.tracking.varied, key=lambda k: SHOWN.index(k) if k in SHOWN else 9)
    first = [short(cfg, key) for key in varied]
    rest = [short(cfg, key) for key in SHOWN if key not in varied]
    if cfg.seed and "seed" not in varied:
        rest.append(f"seed={cfg.seed}")
    lead = [family_label, *([cfg.tracking.label] if cfg.tracking.label else []), *first]
    recipe = " ".join([cfg.model.name, *rest])
    return " ".join(lead) + (f" · {recipe}" if len(lead) > 1 else f" {recipe}")


def config_params(cfg, keys: list[str]) -> dict[str, str]:
    """{key: its value as text} for the config keys that are set (lists as JSON); an
    unused label_shuffle is left out."""
    params = {}
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is None or (key == "data.label_shuffle" and not value):
            continue
        value = plain(value, resolve=False)
        params[key] = json.dumps(value) if isinstance(value, list) else str(value)
    return params


def layers(cfg) -> str:
    """The network's layer sizes, its input's pixels first, e.g. '784-16-16-10'."""
    pixels = DATASETS.get(cfg.data.name, {}).get("pixels", "in")
    return "-".join(map(str, [pixels, *cfg.model.hidden_sizes, 10]))


def split(data_cfg, n_train: int | None) -> str:
    """e.g. 'mnist: 50000 training images, 10000 for validation'."""
    if not n_train:
        return str(data_cfg.name)
    return f"{data_cfg.name}: {n_train} training images, {data_cfg.validation_size} for validation"


def sgd(t, schedule: bool) -> str:
    """A run's SGD (train.*) in words, with what it adds to plain SGD: momentum, L2, a
    schedule (if the family has one), e.g. 'η=0.05, batch 32, 30 epochs, momentum 0.9'."""
    return ", ".join(
        s
        for s in (
            f"η={t.learning_rate:g}",
            f"batch {t.batch_size}",
            f"{t.epochs} epochs",
            f"momentum {t.momentum:g}" if t.momentum else "",
            f"L2 λ={t.l2:g}" if t.l2 else "",
            f"{t.schedule} schedule" if schedule and t.schedule != "constant" else "",
        )
        if s
    )
