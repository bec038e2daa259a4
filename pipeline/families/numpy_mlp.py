"""This project's network (pipeline/engine) as a family: Nielsen's MLP trained by mini-batch
SGD in NumPy, logged as a pyfunc model that ships only the engine (pyfunc_numpy.py).

One generator, seeded by `seed`, draws the initial weights and then every epoch's shuffle,
so the seed fixes the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import scipy

from pipeline import config
from pipeline.config import plain
from pipeline.engine import Network, SGDConfig, train
from pipeline.families import pyfunc_numpy
from pipeline.families.base import Family, OnEpoch
from pipeline.tracking import describe, models


def build_network(model_cfg, n_inputs: int, dtype: str, rng: np.random.Generator) -> Network:
    """The network model.* describes, in float type `dtype`, initialised from rng."""
    return Network.from_spec(plain(model_cfg), n_inputs, dtype=dtype, rng=rng)


def sgd_config(train_cfg, **overrides) -> SGDConfig:
    """The engine's SGD settings from train.* (everything but the dtype and keep)."""
    settings = plain(train_cfg)
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
    settings = tuple(config.RUN_KEYS)

    def params(self, cfg) -> dict[str, str]:
        """Every run setting, plus the tweaks that are on (none in the classic recipe) and
        the settings that apply here only (a step schedule's, elastic_sigma)."""
        return {
            **super().params(cfg),
            **describe.config_params(cfg, config.conditional_keys(cfg)),
        }

    def note(self, cfg, n_train: int) -> str:
        kept = "the best validation epoch's" if cfg.train.keep == "best" else "the final epoch's"
        return (
            f"This project's NumPy network {describe.layers(cfg)} ({cfg.model.activation} "
            f"hidden units, {cfg.model.cost} cost, {cfg.model.init} init), trained by "
            f"mini-batch SGD ({describe.sgd(cfg.train, schedule=True)}) on "
            f"{describe.split(cfg.data, n_train)}; seed {cfg.seed}. It keeps {kept} weights. "
            f"Recipe: {cfg.model.name}."
        )

    def build(self, cfg, x: np.ndarray) -> Trainee:
        rng = np.random.default_rng(cfg.seed)
        return Trainee(build_network(cfg.model, x.shape[1], cfg.train.dtype, rng), rng)

    def fit(self, model: Trainee, cfg, x, y, on_epoch: OnEpoch) -> None:
        train(
            model.net,
            x,
            y,
            sgd_config(cfg.train),
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
        models.log_model_from_code(
            pyfunc_numpy.__file__,
            "network.npz",
            model.net.save,
            data.x("test")[:5],
            model.net.predict,
            [
                f"numpy=={np.__version__}",
                f"scipy=={scipy.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
        )


FAMILY = NumpyMLP()
