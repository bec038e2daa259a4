"""What every model family does, so that one loop (training.train) trains and tracks any.

A family builds a model from the config, fits it epoch by epoch (calling back after each
epoch), hands over class probabilities for a split (the shared metrics are computed from
them: metrics.py), says which settings it uses (its logged params) and how a person reads
its runs, and logs its model. It knows nothing of MLflow runs beyond logging its model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline import config
from pipeline.tracking import describe

# on_epoch(epoch (1-based), learning_rate, epoch_seconds: the training steps alone)
OnEpoch = Callable[[int, float, float], None]


class Family(ABC):
    name: str  # its tag model_family and its row in FAMILIES
    label: str  # what begins its runs' names: "ours", "sklearn"
    objective: str  # its own training objective, a metric of its own name (metrics.py)
    keeps_best: bool = False  # can end on its best validation epoch (train.keep=best)
    settings: tuple[str, ...] = ()  # the config keys it takes from the config (dotted)
    # The settings it has whatever the config says (a cost, an init of its own): logged
    # under the same names with its true values, so that a pair of runs lines up in MLflow.
    fixed: dict[str, str] = {}

    def refuses(self, cfg) -> str | None:
        """Why this family cannot run `cfg` as the same experiment (None: it can)."""
        return None

    def params(self, cfg) -> dict[str, str]:
        """The params of its runs: its family, the settings it takes from the config and
        the ones it fixes itself, and the data split. What has no meaning for it is left
        out."""
        params = describe.config_params(cfg, [*self.settings, *config.SPLIT_KEYS])
        return {"family": self.name, **params, **self.fixed}

    def model_params(self, model, cfg) -> dict[str, str]:
        """Params read from the built model itself (e.g. an estimator's get_params())."""
        return {}

    @abstractmethod
    def note(self, cfg, n_train: int) -> str:
        """The description of a run (its Description in the MLflow UI)."""

    @abstractmethod
    def build(self, cfg, x: np.ndarray) -> Any:
        """A new, seeded model for training rows x."""

    @abstractmethod
    def fit(self, model, cfg, x: np.ndarray, y: np.ndarray, on_epoch: OnEpoch) -> None:
        """Train for cfg.train.epochs epochs, calling on_epoch after each; raise
        DivergenceError when the weights or the cost stop being finite."""

    @abstractmethod
    def train_view(self, model, cfg, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """(its objective, class probabilities) on the training rows, after an epoch."""

    @abstractmethod
    def probabilities(self, model, x: np.ndarray) -> np.ndarray:
        """Class probabilities, a row per image."""

    @abstractmethod
    def n_params(self, model) -> int:
        """Its weights and biases."""

    @abstractmethod
    def log_model(self, model, data) -> None:
        """Log the model to the active run as `model`, loadable by mlflow.pyfunc."""

    def snapshot(self, model) -> Any:
        """A copy of the weights (keeps_best families)."""
        raise NotImplementedError

    def restore(self, model, snapshot) -> None:
        raise NotImplementedError
