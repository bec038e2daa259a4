"""What a person reads about a run in the MLflow UI: its name, its description and its params.

A run's params are the settings that apply to its model family and the data split, and
nothing else (the full composed config stays an artifact, config.yaml): each family says
which settings it uses (families/): scikit-learn's runs carry no cost, init or schedule of
ours, which MLPClassifier ignores, but its own get_params() as sklearn.*.
"""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from pipeline import config
from pipeline.config import plain

EXPERIMENT_NOTE = (
    "Runs of the classic handwritten-digit network (784 pixels in, 10 digits out) trained "
    "from scratch in NumPy by this project, each next to scikit-learn's MLPClassifier on the "
    "same config and split, made by `make run`, `make sweep` and `make analyze`. Training "
    "runs are named `<recipe> <hidden sizes> <activation> η=<rate> m=<batch> · ours|sklearn`; "
    "sweeps are parent runs (expand them) named after their preset; compare runs on "
    "val_accuracy (selection) and test_accuracy (reported once). Metric definitions: "
    "pipeline/families/metrics.py; the full config of a run: its config.yaml artifact."
)


def recipe_columns() -> dict[str, str]:
    """The recipe's settings as columns of mlflow.search_runs' frame, e.g.
    {'hidden_sizes': 'params.model.hidden_sizes', ..., 'seed': 'params.seed'}."""
    return {key.rpartition(".")[2]: f"params.{key}" for key in config.RECIPE_KEYS}


def run_name(cfg, label: str) -> str:
    """e.g. 'classic 16-16 sigmoid η=3 m=10 · ours', plus the seed when not 0 and a sweep's
    label (its other overrides), so that runs of one list tell themselves apart."""
    sizes = "-".join(map(str, cfg.model.hidden_sizes))
    name = (
        f"{cfg.model.name} {sizes} {cfg.model.activation} η={cfg.train.learning_rate:g} "
        f"m={cfg.train.batch_size} · {label}"
    )
    if cfg.seed:
        name += f" seed={cfg.seed}"
    if cfg.tracking.get("label"):
        name += f" [{cfg.tracking.label}]"
    return name


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


def layers(model_cfg) -> str:
    """e.g. 'in-16-16-10'."""
    return "-".join(map(str, ["in", *model_cfg.hidden_sizes, 10]))


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
