"""Stage `train`: train the network (and the scikit-learn baseline) as tracked MLflow runs.

Each run logs the resolved config as params and config.yaml, the environment it ran on
(env.* tags), per-epoch metrics, the final metrics on the untouched test set (names and
definitions: pipeline/metrics.py), the dataset with its digest, and the model (a pyfunc
that predicts digits from pixel rows and ships only the engine). A run that fails ends
FAILED with the reason as a tag.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import scipy
from mlflow.models import infer_signature
from omegaconf import OmegaConf
from tqdm import tqdm

from pipeline import baseline, describe, metrics, preprocess, pyfunc_model, tracking
from pipeline.engine import DivergenceError, Network, SGDConfig, train
from pipeline.errors import RunFailed

log = logging.getLogger(__name__)


def run(cfg, results: dict) -> list[str]:
    """Train this project's network and, if configured, the baseline; return the ids of
    the runs that finished. A run that diverges or collapses ends FAILED with its reason
    and the other family still trains; the failures go to results["failures"]."""
    data = preprocess.load(cfg)
    trainers = {"numpy_mlp": train_numpy}
    tweaks = [key for key in describe.TWEAKS if OmegaConf.select(cfg, key)]
    if cfg.baseline.name == "sklearn_mlp" and tweaks:
        log.warning("train: no baseline: MLPClassifier has none of %s, so it would not run "
                    "the same experiment", ", ".join(tweaks))
    elif cfg.baseline.name == "sklearn_mlp":
        trainers["sklearn_mlp"] = baseline.train_sklearn
    run_ids = []
    for family, trainer in trainers.items():
        done = tracking.finished_run_id(cfg, family) if cfg.tracking.skip_finished else None
        if done:
            log.info("train: %s already has a finished run for this config (%s): skipped",
                     family, done)
            run_ids.append(done)
            continue
        try:
            run_ids.append(trainer(cfg, data))
        except DivergenceError as e:  # CollapseError too: the run is FAILED with the reason
            log.error("train: %s run FAILED: %s", family, e)
            results.setdefault("failures", []).append(f"{family}: {e}")
    if not run_ids:
        raise RunFailed("train: every run failed: " + "; ".join(results["failures"]))
    log.info("train: runs %s logged to %s — browse them with `make ui`",
             ", ".join(run_ids), tracking.tracking_uri(cfg))
    return run_ids


def build_network(cfg, n_inputs: int, rng: np.random.Generator) -> Network:
    """The network a config describes (model.* and train.dtype), initialised from rng."""
    return Network.from_spec(OmegaConf.to_container(cfg.model, resolve=True), n_inputs,
                             dtype=cfg.train.dtype, rng=rng)


def sgd_config(cfg, **overrides) -> SGDConfig:
    """The engine's SGD settings from train.* (everything but the dtype)."""
    settings = OmegaConf.to_container(cfg.train, resolve=True)
    settings.pop("dtype")
    settings.pop("keep", None)
    return SGDConfig(**{**settings, **overrides})


def train_numpy(cfg, data, report=None) -> str:
    """Train ours; log per-epoch and final metrics; return the run id.

    report(epoch, metrics), if given, sees each epoch's logged metrics after they are
    logged; it may stop the run by raising errors.RunStopped (a search's pruner does).

    One generator, seeded by `seed`, draws the initial weights and then every epoch's
    shuffle, so the seed fixes the run. With train.keep=best the network ends with the
    weights of its best validation epoch (selection on validation; test is measured once,
    on the kept weights); with keep=final (the book's way) with the last epoch's.
    """
    rng = np.random.default_rng(cfg.seed)
    net = build_network(cfg, data.x("train").shape[1], rng)
    x, y = data.x("train"), data.y("train")
    best = {"val_accuracy": -1.0, "epoch": 0, "params": None}
    with tracking.training_run(cfg, data, "numpy_mlp") as active:
        with tqdm(total=cfg.train.epochs, desc="train", unit="epoch", disable=None) as bar:
            def on_epoch(record):
                a = net.outputs(x)
                epoch_metrics = {
                    "train_cost": net.total_cost(a, y, cfg.train.l2, len(y)),
                    **metrics.classification_metrics("train", net.C.probabilities(a), y),
                    **metrics.classification_metrics("val", net.predict_proba(data.x("val")),
                                                     data.y("val")),
                    "learning_rate": record["learning_rate"],
                    "epoch_seconds": record["epoch_seconds"]}
                tracking.log_metrics(epoch_metrics, step=record["epoch"])
                if epoch_metrics["val_accuracy"] > best["val_accuracy"]:
                    best.update(val_accuracy=epoch_metrics["val_accuracy"], epoch=record["epoch"],
                                params=net.params.copy() if cfg.train.keep == "best" else None)
                bar.update()
                bar.set_postfix(val_accuracy=f"{epoch_metrics['val_accuracy']:.4f}")
                if report is not None:
                    report(record["epoch"], epoch_metrics)

            history = train(net, x, y, sgd_config(cfg), rng, on_epoch=on_epoch, evaluate=False)
        if cfg.train.keep == "best" and best["epoch"] != len(history):
            net.params[...] = best["params"]
            # The run's val_* (latest value) must describe the weights it keeps: the sweep
            # selects on it, the registry quotes it.
            tracking.log_metrics(metrics.classification_metrics(
                "val", net.predict_proba(data.x("val")), data.y("val")), step=len(history))
        kept = best["epoch"] if cfg.train.keep == "best" else len(history)
        mlflow.set_tag("kept_epoch", f"{cfg.train.keep} (epoch {kept} of {len(history)})")
        tracking.log_metrics({"best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"],
                              "kept_epoch": kept})
        metrics.check_not_collapsed(cfg, net.predict_proba(data.x("val")), data.y("val"))
        final = metrics.classification_metrics("test", net.predict_proba(data.x("test")),
                                               data.y("test"))
        tracking.log_metrics({**final, "train_seconds": sum(r["epoch_seconds"] for r in history)})
        mlflow.set_tag("n_params", str(net.n_params))
        log.info("train: numpy_mlp %s test accuracy %.4f", net.sizes, final["test_accuracy"])
        if cfg.tracking.log_model:
            log_network(net, data)
        return active.info.run_id


def log_network(net: Network, data) -> None:
    """The network as a pyfunc model logged from code: pyfunc_model.py, network.npz and,
    as its only code, the engine (pipeline/engine) — it loads with numpy, scipy and mlflow."""
    sample = data.x("test")[:5]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "network.npz"
        net.save(path)
        tracking.log_model_from_code(
            pyfunc_model.__file__, {"network": str(path)}, infer_signature(sample, net.predict(sample)),
            [f"numpy=={np.__version__}", f"scipy=={scipy.__version__}", f"mlflow=={mlflow.__version__}"])
