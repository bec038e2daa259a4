"""The reference: scikit-learn's MLPClassifier as the same experiment as ours.

Same split, scaling, hidden sizes, activation (sigmoid → logistic), learning rate η, batch
size m, epochs and momentum (plain, not Nesterov's), and the same weight decay: our cost
gains λ/2n Σ w² (n the training-set size), so each step shrinks the weights by η·λ/n · w;
MLPClassifier divides its penalty gradient alpha · w by the batch's rows m instead, so
alpha = λ·m/n gives it the same decay per step (the one smaller last batch of an epoch
aside). Its random_state is a RandomState seeded by `seed` rather than the int itself:
partial_fit re-seeds from an int on every call, which would replay one shuffle every epoch.

It always uses softmax outputs with log loss and its own initialisation, whatever
model.cost and model.init say, and a constant learning rate; it has none of our tweaks
(augmentation, dropout, ...), and a config with one is refused (refuses). One partial_fit
call is one epoch, so the same per-epoch metrics as ours are logged (metrics.py). Like
ours, it trains on one BLAS thread, so train_seconds compare like with like.
"""

from __future__ import annotations

import time
import warnings

import mlflow
import numpy as np
import sklearn
import skops
import skops.io
from omegaconf import OmegaConf
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from pipeline import config, interrupts
from pipeline.data import N_CLASSES
from pipeline.engine import DivergenceError
from pipeline.families import pyfunc_sklearn
from pipeline.families.base import Family, OnEpoch
from pipeline.tracking import describe, models

SKLEARN_ACTIVATION = {"sigmoid": "logistic", "relu": "relu", "tanh": "tanh"}


def equivalent_alpha(l2: float, batch_size: int, n_train: int) -> float:
    """MLPClassifier's alpha for our λ: alpha/m per step equals λ/n, so alpha = λ·m/n."""
    return l2 * batch_size / n_train


def make_classifier(cfg, n_train: int) -> MLPClassifier:
    return MLPClassifier(
        hidden_layer_sizes=tuple(cfg.model.hidden_sizes),
        activation=SKLEARN_ACTIVATION[cfg.model.activation],
        solver="sgd",
        learning_rate_init=cfg.train.learning_rate,
        learning_rate="constant",
        batch_size=cfg.train.batch_size,
        momentum=cfg.train.momentum,
        nesterovs_momentum=False,
        alpha=equivalent_alpha(cfg.train.l2, cfg.train.batch_size, n_train),
        shuffle=True,
        random_state=np.random.RandomState(cfg.seed),
    )


class SklearnMLP(Family):
    name = "sklearn_mlp"
    label = "sklearn"
    objective = "sklearn_loss"  # loss_curve_: the epoch's running mean of log loss + penalty
    # What it is whatever the config says (scikit-learn 1.x, _multilayer_perceptron.py):
    # softmax outputs with log loss, which is our cross_entropy; weights and biases drawn
    # uniform in ±√(k/(n_in + n_out)), k = 2 for logistic units and 6 otherwise (Glorot and
    # Bengio's); a constant η (learning_rate="constant"); it keeps the float32 of our data
    # (validate_data accepts float32 as it is) and the last epoch's weights.
    fixed = {
        "model.cost": "cross_entropy",
        "model.init": "glorot_uniform",
        "train.schedule": "constant",
        "train.dtype": "float32",
        "train.keep": "final",
    }
    # what make_classifier takes from the config
    settings = (
        "model.hidden_sizes",
        "model.activation",
        "train.epochs",
        "train.batch_size",
        "train.learning_rate",
        "train.momentum",
        "train.l2",
        "seed",
    )

    def refuses(self, cfg) -> str | None:
        if cfg.model.activation not in SKLEARN_ACTIVATION:
            return f"MLPClassifier has no {cfg.model.activation} activation"
        tweaks = [key for key in config.TWEAK_KEYS if OmegaConf.select(cfg, key)]
        if tweaks:
            return (
                f"MLPClassifier has none of {', '.join(tweaks)}, so it would not run the "
                "same experiment"
            )
        return None

    def model_params(self, clf: MLPClassifier, cfg) -> dict[str, str]:
        """The estimator's get_params(), prefixed sklearn.; the RandomState shown with its seed."""
        params = {f"sklearn.{k}": str(v) for k, v in clf.get_params().items()}
        params["sklearn.random_state"] = f"RandomState({cfg.seed})"
        return params

    def note(self, cfg, n_train: int) -> str:
        return (
            f"scikit-learn's MLPClassifier {describe.layers(cfg)} ({cfg.model.activation} "
            f"hidden units, softmax + log loss, its own init), trained by SGD with the same "
            f"{describe.sgd(cfg.train, schedule=False)} (L2 as alpha = λ·m/n) on "
            f"{describe.split(cfg.data, n_train)}; seed {cfg.seed}: the baseline for recipe "
            f"{cfg.model.name}."
        )

    def build(self, cfg, x: np.ndarray) -> MLPClassifier:
        return make_classifier(cfg, len(x))

    def fit(self, clf: MLPClassifier, cfg, x, y, on_epoch: OnEpoch) -> None:
        """One partial_fit call per epoch, on one BLAS thread as ours."""
        classes = np.arange(N_CLASSES)
        for epoch in range(1, cfg.train.epochs + 1):
            start = time.perf_counter()
            try:
                with (
                    warnings.catch_warnings(record=True) as caught,
                    threadpool_limits(limits=1, user_api="blas"),
                ):
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
                raise DivergenceError(
                    f"MLPClassifier diverged in epoch {epoch} at learning "
                    f"rate {cfg.train.learning_rate}: {e}"
                ) from e
            seconds = time.perf_counter() - start
            if not np.isfinite(clf.loss_):
                raise DivergenceError(
                    f"MLPClassifier diverged in epoch {epoch} at learning "
                    f"rate {cfg.train.learning_rate}: its loss is {clf.loss_}"
                )
            on_epoch(epoch, cfg.train.learning_rate, seconds)

    def train_view(self, clf: MLPClassifier, cfg, x, y) -> tuple[float, np.ndarray]:
        return clf.loss_curve_[-1], clf.predict_proba(x)

    def probabilities(self, clf: MLPClassifier, x) -> np.ndarray:
        return clf.predict_proba(x)

    def n_params(self, clf: MLPClassifier) -> int:
        return int(sum(w.size for w in (*clf.coefs_, *clf.intercepts_)))

    def log_model(self, clf: MLPClassifier, data) -> None:
        """pyfunc_sklearn.py and the estimator saved with skops (never pickled), checking its
        input as ours does."""
        models.log_model_from_code(
            pyfunc_sklearn.__file__,
            "estimator.skops",
            lambda path: skops.io.dump(clf, path),
            data.x("test")[:5],
            clf.predict,
            [
                f"scikit-learn=={sklearn.__version__}",
                f"skops=={skops.__version__}",
                f"numpy=={np.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
        )


FAMILY = SklearnMLP()
