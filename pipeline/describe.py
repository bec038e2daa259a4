"""What a person reads about a run in the MLflow UI: its name, its description and its params.

A run's params are the settings that apply to its model family and the data split, and
nothing else (the full composed config stays an artifact, config.yaml): scikit-learn's runs
carry no cost, init or schedule of ours, which MLPClassifier ignores, but its own
get_params() as sklearn.*.
"""

from __future__ import annotations

import json

from omegaconf import OmegaConf

FAMILY_LABEL = {"numpy_mlp": "ours", "sklearn_mlp": "sklearn"}
EXPERIMENT_NOTE = (
    "Runs of the classic handwritten-digit network (784 pixels in, 10 digits out) trained "
    "from scratch in NumPy by this project, each next to scikit-learn's MLPClassifier on the "
    "same config and split, made by `make run`, `make sweep` and `make analyze`. Training "
    "runs are named `<recipe> <hidden sizes> <activation> η=<rate> m=<batch> · ours|sklearn`; "
    "sweeps are parent runs (expand them) named after their preset; compare runs on "
    "val_accuracy (selection) and test_accuracy (reported once). Metric definitions: "
    "pipeline/metrics.py; the full config of a run: its config.yaml artifact.")

# The settings each family really uses (dotted config keys).
_SHARED = ["seed", "model.hidden_sizes", "model.activation", "train.epochs", "train.batch_size",
           "train.learning_rate", "train.momentum", "train.l2"]
_OURS = ["model.cost", "model.init", "train.schedule", "train.dtype", "train.keep"]
TWEAKS = ["train.warmup_epochs", "train.dropout_input", "train.dropout_hidden", "train.max_norm",
          *(f"train.augment.{k}" for k in ("shift", "rotation", "scale", "shear", "elastic_alpha"))]
_DATA = ["data.name", "data.validation_size", "data.test_size", "data.split_seed",
         "data.label_shuffle"]


def run_name(cfg, family: str) -> str:
    """e.g. 'classic 16-16 sigmoid η=3 m=10 · ours', plus the seed when not 0 and a sweep's
    label (its other overrides), so that runs of one list tell themselves apart."""
    sizes = "-".join(map(str, cfg.model.hidden_sizes))
    name = (f"{cfg.model.name} {sizes} {cfg.model.activation} η={cfg.train.learning_rate:g} "
            f"m={cfg.train.batch_size} · {FAMILY_LABEL[family]}")
    if cfg.seed:
        name += f" seed={cfg.seed}"
    if cfg.tracking.get("label"):
        name += f" [{cfg.tracking.label}]"
    return name


def run_params(cfg, family: str) -> dict[str, str]:
    """The params of a training run of `family` (sklearn.* come from the estimator itself)."""
    keys = _SHARED + (_OURS if family == "numpy_mlp" else []) + _DATA
    if family == "numpy_mlp" and cfg.train.schedule == "step":
        keys += ["train.step_every", "train.gamma"]
    if family == "numpy_mlp":  # the tweaks a run uses (all off in the classic recipe)
        keys += [key for key in TWEAKS if OmegaConf.select(cfg, key)]
        if OmegaConf.select(cfg, "train.augment.elastic_alpha"):
            keys.append("train.augment.elastic_sigma")
    params = {}
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is None or (key == "data.label_shuffle" and not value):
            continue
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        params[key] = json.dumps(value) if isinstance(value, list) else str(value)
    return params


def run_note(cfg, family: str, n_train: int | None = None) -> str:
    """A short description of the run (shown as its Description in the UI)."""
    sizes = "-".join(map(str, ["in", *cfg.model.hidden_sizes, 10]))
    t = cfg.train
    extras = ", ".join(s for s in (
        f"momentum {t.momentum:g}" if t.momentum else "",
        f"L2 λ={t.l2:g}" if t.l2 else "",
        f"{t.schedule} schedule" if family == "numpy_mlp" and t.schedule != "constant" else "")
        if s)
    split = (f"{cfg.data.name}: {n_train} training images, {cfg.data.validation_size} for "
             "validation" if n_train else f"{cfg.data.name}")
    if family == "numpy_mlp":
        kept = "the best validation epoch's" if t.get("keep") == "best" else "the final epoch's"
        return (f"This project's NumPy network {sizes} ({cfg.model.activation} hidden units, "
                f"{cfg.model.cost} cost, {cfg.model.init} init), trained by mini-batch SGD "
                f"(η={t.learning_rate:g}, batch {t.batch_size}, {t.epochs} epochs"
                f"{', ' + extras if extras else ''}) on {split}; seed {cfg.seed}. It keeps "
                f"{kept} weights. Recipe: {cfg.model.name}.")
    return (f"scikit-learn's MLPClassifier {sizes} ({cfg.model.activation} hidden units, "
            f"softmax + log loss, its own init), trained by SGD with the same η={t.learning_rate:g}, "
            f"batch {t.batch_size}, {t.epochs} epochs{', ' + extras if extras else ''} (L2 as "
            f"alpha = λ·m/n) on {split}; seed {cfg.seed}: the baseline for recipe {cfg.model.name}.")
