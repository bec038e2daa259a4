"""This project's network (pipeline/engine) as a family: Nielsen's MLP trained by mini-batch
SGD in NumPy, logged as a pyfunc model that ships only the engine (pyfunc_numpy.py).

One generator, seeded by `seed`, draws the initial weights and then every epoch's shuffle,
so the seed fixes the run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import scipy
from mlflow.models import infer_signature
from omegaconf import OmegaConf

from pipeline.config import plain
from pipeline.engine import Network, SGDConfig, train
from pipeline.families import pyfunc_numpy
from pipeline.families.base import Family, OnEpoch
from pipeline.tracking import describe, models


def build_network(cfg, n_inputs: int, rng: np.random.Generator) -> Network:
    """The network a config describes (model.* and train.dtype), initialised from rng."""
    return Network.from_spec(plain(cfg.model), n_inputs, dtype=cfg.train.dtype, rng=rng)


def sgd_config(cfg, **overrides) -> SGDConfig:
    """The engine's SGD settings from train.* (everything but the dtype and keep)."""
    settings = plain(cfg.train)
    settings.pop("dtype")
    settings.pop("keep", None)
    return SGDConfig(**{**settings, **overrides})


@dataclass
class Trainee:
    net: Network
    rng: np.random.Generator  # the one generator: init, then every epoch's shuffle


class NumpyMLP(Family):
    name = "numpy_mlp"
    label = "ours"
    objective = "train_cost"  # Nielsen's C over the training split, with λ/2n Σ w²
    keeps_best = True
    own_settings = ("model.cost", "model.init", "train.schedule", "train.dtype", "train.keep")

    def params(self, cfg) -> dict[str, str]:
        keys = [*describe.SHARED, *self.own_settings, *describe.DATA]
        if cfg.train.schedule == "step":
            keys += ["train.step_every", "train.gamma"]
        keys += [key for key in describe.TWEAKS if OmegaConf.select(cfg, key)]  # all off: classic
        if OmegaConf.select(cfg, "train.augment.elastic_alpha"):
            keys.append("train.augment.elastic_sigma")
        return describe.config_params(cfg, keys)

    def note(self, cfg, n_train: int) -> str:
        t = cfg.train
        kept = "the best validation epoch's" if t.get("keep") == "best" else "the final epoch's"
        extras = describe.training_extras(cfg, schedule=True)
        return (
            f"This project's NumPy network {describe.layers(cfg)} ({cfg.model.activation} "
            f"hidden units, {cfg.model.cost} cost, {cfg.model.init} init), trained by "
            f"mini-batch SGD (η={t.learning_rate:g}, batch {t.batch_size}, {t.epochs} epochs"
            f"{', ' + extras if extras else ''}) on {describe.split(cfg, n_train)}; seed "
            f"{cfg.seed}. It keeps {kept} weights. Recipe: {cfg.model.name}."
        )

    def build(self, cfg, x: np.ndarray) -> Trainee:
        rng = np.random.default_rng(cfg.seed)
        return Trainee(build_network(cfg, x.shape[1], rng), rng)

    def fit(self, model: Trainee, cfg, x, y, on_epoch: OnEpoch) -> None:
        train(
            model.net,
            x,
            y,
            sgd_config(cfg),
            model.rng,
            evaluate=False,
            on_epoch=lambda r: on_epoch(r["epoch"], r["learning_rate"], r["epoch_seconds"]),
        )

    def train_view(self, model: Trainee, cfg, x, y) -> tuple[float, np.ndarray]:
        a = model.net.outputs(x)  # one forward pass for the cost and the probabilities
        return model.net.total_cost(a, y, cfg.train.l2, len(y)), model.net.C.probabilities(a)

    def probabilities(self, model: Trainee, x) -> np.ndarray:
        return model.net.predict_proba(x)

    def n_params(self, model: Trainee) -> int:
        return model.net.n_params

    def snapshot(self, model: Trainee) -> np.ndarray:
        return model.net.params.copy()

    def restore(self, model: Trainee, snapshot: np.ndarray) -> None:
        model.net.params[...] = snapshot

    def log_model(self, model: Trainee, data) -> None:
        """pyfunc_numpy.py, network.npz and, as its only code, the engine: it loads with
        numpy, scipy and mlflow."""
        net, sample = model.net, data.x("test")[:5]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "network.npz"
            net.save(path)
            models.log_model_from_code(
                pyfunc_numpy.__file__,
                {"network": str(path)},
                infer_signature(sample, net.predict(sample)),
                [
                    f"numpy=={np.__version__}",
                    f"scipy=={scipy.__version__}",
                    f"mlflow=={mlflow.__version__}",
                ],
            )


FAMILY = NumpyMLP()
