"""Stage `train`: train the network (and the scikit-learn baseline) as tracked MLflow runs.

Each run logs the resolved config as params and config.yaml, per-epoch train_cost,
train_accuracy, val_accuracy and epoch_seconds, the final test_accuracy and test_cost on
the untouched test set, the dataset with its digest, and the model (a pyfunc that
predicts digits from pixel rows). A run that fails ends FAILED with the reason as a tag.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import scipy
from mlflow.models import infer_signature
from omegaconf import OmegaConf
from tqdm import tqdm

from pipeline import baseline, preprocess, pyfunc_model, tracking
from pipeline.network import Network
from pipeline.paths import PROJECT_ROOT
from pipeline.sgd import SGDConfig, train

log = logging.getLogger(__name__)
EPOCH_METRICS = ("train_cost", "train_accuracy", "val_accuracy", "epoch_seconds")


def run(cfg, results: dict) -> list[str]:
    """Train this project's network and, if configured, the baseline; return the run ids."""
    data = preprocess.load(cfg)
    trainers = {"numpy_mlp": train_numpy}
    if cfg.baseline.name == "sklearn_mlp":
        trainers["sklearn_mlp"] = baseline.train_sklearn
    run_ids = []
    for family, trainer in trainers.items():
        done = tracking.finished_run_id(cfg, family) if cfg.tracking.skip_finished else None
        if done:
            log.info("train: %s already has a finished run for this config (%s): skipped",
                     family, done)
        run_ids.append(done or trainer(cfg, data))
    log.info("train: runs %s logged to %s — browse them with `make ui`",
             ", ".join(run_ids), tracking.tracking_uri(cfg))
    return run_ids


def train_numpy(cfg, data) -> str:
    rng = np.random.default_rng(cfg.seed)
    sizes = [data.x("train").shape[1], *cfg.model.hidden_sizes, 10]
    sgd_settings = OmegaConf.to_container(cfg.train, resolve=True)
    dtype = sgd_settings.pop("dtype")
    net = Network(sizes, cfg.model.activation, cfg.model.cost, cfg.model.init, dtype, rng=rng)
    with tracking.training_run(cfg, data, "numpy_mlp") as active:
        with tqdm(total=cfg.train.epochs, desc="train", unit="epoch", disable=None) as bar:
            def on_epoch(record):
                mlflow.log_metrics({k: record[k] for k in EPOCH_METRICS},
                                   step=record["epoch"])
                bar.update()
                bar.set_postfix(val_accuracy=f"{record['val_accuracy']:.4f}")

            history = train(net, data.x("train"), data.y("train"), SGDConfig(**sgd_settings), rng,
                            validation=(data.x("val"), data.y("val")), on_epoch=on_epoch)
        test_cost, test_accuracy = net.evaluate(data.x("test"), data.y("test"))
        mlflow.log_metrics({"test_accuracy": test_accuracy, "test_cost": test_cost,
                            "train_seconds": sum(r["epoch_seconds"] for r in history)})
        mlflow.set_tag("n_params", str(net.n_params))
        log.info("train: numpy_mlp %s test accuracy %.4f", sizes, test_accuracy)
        if cfg.tracking.log_model:
            log_network(net, data)
        return active.info.run_id


def log_network(net: Network, data) -> None:
    """The network as a pyfunc model logged from code (pyfunc_model.py + network.npz)."""
    sample = data.x("test")[:5]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # An input example would make MLflow load and run the model again at logging
        # time; the explicit signature already describes the input.
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        path = Path(tmp) / "network.npz"
        net.save(path)
        mlflow.pyfunc.log_model(
            name="model", python_model=pyfunc_model.__file__, artifacts={"network": str(path)},
            signature=infer_signature(sample, net.predict(sample)),
            code_paths=[str(PROJECT_ROOT / "pipeline")],
            pip_requirements=[f"numpy=={np.__version__}", f"scipy=={scipy.__version__}",
                              f"mlflow=={mlflow.__version__}"])
