"""A third model family for the tests: the nearest class centroid, fitted a slice of the
training rows per epoch. It shows what adding a family takes: this module (a `FAMILY`)
and one row in pipeline.families.FAMILIES; the epoch loop, metrics and tracking are the
pipeline's own."""

from __future__ import annotations

import numpy as np

from pipeline.data import N_CLASSES
from pipeline.families.base import Family, OnEpoch


class Centroids:
    def __init__(self, n_inputs: int):
        self.means = np.zeros((N_CLASSES, n_inputs))


class NearestCentroid(Family):
    name = "nearest_centroid"
    label = "centroid"
    objective = "centroid_spread"  # mean squared distance of the rows to their class mean
    settings = ("train.epochs", "seed")

    def note(self, cfg, n_train: int) -> str:
        return f"The nearest class centroid on {n_train} images, for the tests."

    def build(self, cfg, x: np.ndarray) -> Centroids:
        return Centroids(x.shape[1])

    def fit(self, model: Centroids, cfg, x, y, on_epoch: OnEpoch) -> None:
        for epoch in range(1, cfg.train.epochs + 1):
            seen = len(x) * epoch // cfg.train.epochs  # more of the data each epoch
            for k in range(N_CLASSES):
                rows = x[:seen][y[:seen] == k]
                model.means[k] = rows.mean(axis=0) if len(rows) else 0.0
            on_epoch(epoch, 0.0, 0.0)

    def train_view(self, model: Centroids, cfg, x, y) -> tuple[float, np.ndarray]:
        spread = float(np.mean(np.sum((x - model.means[y]) ** 2, axis=1)))
        return spread, self.probabilities(model, x)

    def probabilities(self, model: Centroids, x) -> np.ndarray:
        d = ((x[:, None, :] - model.means[None]) ** 2).sum(axis=2)
        e = np.exp(-(d - d.min(axis=1, keepdims=True)))
        return e / e.sum(axis=1, keepdims=True)

    def n_params(self, model: Centroids) -> int:
        return model.means.size

    def log_model(self, model, data) -> None:
        raise NotImplementedError("the test family logs no model (tracking.log_model=false)")


FAMILY = NearestCentroid()
