"""The reference: scikit-learn's MLPClassifier as the same experiment as ours.

Same split, scaling, hidden sizes, activation (sigmoid → logistic), learning rate η, batch
size m, epochs and momentum (plain, not Nesterov's), and the same weight decay: our cost
gains λ/2n Σ w² (n the training-set size), so each step shrinks the weights by η·λ/n · w;
MLPClassifier divides its penalty gradient alpha · w by the batch's rows m instead, so
alpha = λ·m/n gives it the same decay per step (the one smaller last batch of an epoch
aside). Its random_state is a RandomState seeded by `seed` rather than the int itself:
partial_fit re-seeds from an int on every call, which would replay one shuffle every epoch.

It always uses softmax outputs with log loss and its own initialisation, whatever
model.cost and model.init say, and a constant learning rate. One partial_fit call is one
epoch, so the same per-epoch metrics as ours are logged (pipeline/metrics.py). Like ours,
it trains on one BLAS thread, so train_seconds compare like with like.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import skops
import skops.io
import sklearn
from mlflow.models import infer_signature
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from pipeline import interrupts, metrics, pyfunc_sklearn, tracking
from pipeline.engine import DivergenceError

log = logging.getLogger(__name__)
SKLEARN_ACTIVATION = {"sigmoid": "logistic", "relu": "relu", "tanh": "tanh"}


def equivalent_alpha(l2: float, batch_size: int, n_train: int) -> float:
    """MLPClassifier's alpha for our λ: alpha/m per step equals λ/n, so alpha = λ·m/n."""
    return l2 * batch_size / n_train


def make_classifier(cfg, n_train: int) -> MLPClassifier:
    return MLPClassifier(
        hidden_layer_sizes=tuple(cfg.model.hidden_sizes),
        activation=SKLEARN_ACTIVATION[cfg.model.activation], solver="sgd",
        learning_rate_init=cfg.train.learning_rate, learning_rate="constant",
        batch_size=cfg.train.batch_size, momentum=cfg.train.momentum,
        nesterovs_momentum=False,
        alpha=equivalent_alpha(cfg.train.l2, cfg.train.batch_size, n_train),
        shuffle=True, random_state=np.random.RandomState(cfg.seed))


def sklearn_params(clf: MLPClassifier, seed: int) -> dict[str, str]:
    """The estimator's get_params(), prefixed sklearn.; the RandomState shown with its seed."""
    params = {f"sklearn.{k}": str(v) for k, v in clf.get_params().items()}
    params["sklearn.random_state"] = f"RandomState({seed})"
    return params


def train_sklearn(cfg, data) -> str:
    x, y = data.x("train"), data.y("train")
    clf = make_classifier(cfg, len(y))
    classes = np.arange(10)
    with tracking.training_run(cfg, data, "sklearn_mlp") as active:
        mlflow.log_params(sklearn_params(clf, cfg.seed))
        train_seconds = 0.0
        for epoch in range(1, cfg.train.epochs + 1):
            start = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught, \
                        threadpool_limits(limits=1, user_api="blas"):
                    warnings.simplefilter("ignore", ConvergenceWarning)  # one epoch per call
                    warnings.simplefilter("always", UserWarning)
                    clf.partial_fit(x, y, classes=classes)
                # MLPClassifier catches a Ctrl-C mid-epoch, warns and returns as if the
                # epoch were whole; the run must end KILLED, not FINISHED half-trained.
                for w in caught:
                    if "interrupted by user" in str(w.message):
                        raise interrupts.received() or KeyboardInterrupt()
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            except ValueError as e:  # "Solver produced non-finite parameter weights"
                if "non-finite" not in str(e):
                    raise
                raise DivergenceError(f"MLPClassifier diverged in epoch {epoch} at learning "
                                      f"rate {cfg.train.learning_rate}: {e}") from e
            seconds = time.perf_counter() - start
            train_seconds += seconds
            if not np.isfinite(clf.loss_):
                raise DivergenceError(f"MLPClassifier diverged in epoch {epoch} at learning "
                                      f"rate {cfg.train.learning_rate}: its loss is {clf.loss_}")
            tracking.log_metrics({
                "sklearn_loss": clf.loss_curve_[-1],
                **metrics.classification_metrics("train", clf.predict_proba(x), y),
                **metrics.classification_metrics("val", clf.predict_proba(data.x("val")),
                                                 data.y("val")),
                "learning_rate": cfg.train.learning_rate, "epoch_seconds": seconds},
                step=epoch)
        metrics.check_not_collapsed(cfg, clf.predict_proba(data.x("val")), data.y("val"))
        final = metrics.classification_metrics("test", clf.predict_proba(data.x("test")),
                                               data.y("test"))
        tracking.log_metrics({**final, "train_seconds": train_seconds})
        log.info("train: sklearn_mlp test accuracy %.4f", final["test_accuracy"])
        if cfg.tracking.log_model:
            log_classifier(clf, data)
        return active.info.run_id


def log_classifier(clf: MLPClassifier, data) -> None:
    """The estimator as a pyfunc model logged from code (pyfunc_sklearn.py): saved with skops,
    never pickled, and checking its input as ours does."""
    sample = data.x("test")[:5]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "estimator.skops"
        skops.io.dump(clf, path)
        tracking.log_model_from_code(
            pyfunc_sklearn.__file__, {"estimator": str(path)}, infer_signature(sample, clf.predict(sample)),
            [f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}",
             f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"])
