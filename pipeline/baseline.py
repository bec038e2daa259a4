"""The reference: scikit-learn's MLPClassifier on the same config, split and scaling.

Same hidden sizes, activation (sigmoid → logistic), learning rate, batch size, epochs,
momentum and L2 (alpha: sklearn's penalty is alpha/2n Σ w², the same as ours). It always
uses softmax outputs with log-loss, whatever model.cost says, and a constant learning
rate. One partial_fit call is one epoch, so validation accuracy is logged per epoch.
Like ours, it trains on one BLAS thread, so train_seconds compare like with like.
"""

from __future__ import annotations

import logging
import time
import warnings

import mlflow
import numpy as np
import sklearn
from mlflow.models import infer_signature
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from pipeline import tracking

log = logging.getLogger(__name__)
SKLEARN_ACTIVATION = {"sigmoid": "logistic", "relu": "relu", "tanh": "tanh"}
# skops loads only types it is told to trust; these are the optimizer's.
SKOPS_TRUSTED_TYPES = ["sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
                       "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"]


def make_classifier(cfg) -> MLPClassifier:
    return MLPClassifier(
        hidden_layer_sizes=tuple(cfg.model.hidden_sizes),
        activation=SKLEARN_ACTIVATION[cfg.model.activation], solver="sgd",
        learning_rate_init=cfg.train.learning_rate, learning_rate="constant",
        batch_size=cfg.train.batch_size, momentum=cfg.train.momentum,
        nesterovs_momentum=False, alpha=cfg.train.l2, shuffle=True, random_state=cfg.seed)


def train_sklearn(cfg, data) -> str:
    clf = make_classifier(cfg)
    x, y = data.x("train"), data.y("train")
    classes = np.arange(10)
    with tracking.training_run(cfg, data, "sklearn_mlp") as active:
        mlflow.set_tag("sklearn_version", sklearn.__version__)
        train_seconds = 0.0
        for epoch in range(1, cfg.train.epochs + 1):
            start = time.perf_counter()
            with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
                warnings.simplefilter("ignore", ConvergenceWarning)  # one epoch per call
                clf.partial_fit(x, y, classes=classes)
            seconds = time.perf_counter() - start
            train_seconds += seconds
            if not np.isfinite(clf.loss_):
                raise RuntimeError(f"MLPClassifier diverged in epoch {epoch} at learning "
                                   f"rate {cfg.train.learning_rate}: its loss is {clf.loss_}")
            mlflow.log_metrics({"train_cost": clf.loss_curve_[-1],
                                "train_accuracy": clf.score(x, y),
                                "val_accuracy": clf.score(data.x("val"), data.y("val")),
                                "epoch_seconds": seconds}, step=epoch)
        probabilities = clf.predict_proba(data.x("test"))
        test_cost = float(-np.mean(np.log(np.maximum(
            probabilities[np.arange(len(probabilities)), data.y("test")], 1e-300))))
        test_accuracy = float(np.mean(probabilities.argmax(axis=1) == data.y("test")))
        mlflow.log_metrics({"test_accuracy": test_accuracy, "test_cost": test_cost,
                            "train_seconds": train_seconds})
        log.info("train: sklearn_mlp test accuracy %.4f", test_accuracy)
        if cfg.tracking.log_model:
            sample = data.x("test")[:5]
            mlflow.sklearn.log_model(
                clf, name="model", serialization_format="skops",
                skops_trusted_types=SKOPS_TRUSTED_TYPES,
                signature=infer_signature(sample, clf.predict(sample)),
                pip_requirements=[f"scikit-learn=={sklearn.__version__}", "skops"])
        return active.info.run_id
