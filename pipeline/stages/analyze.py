"""Stage `analyze`: what the network actually learned, shown the way the classic lesson does.

For one trained run (analyze.run_id, default: the latest finished classic run of ours) it
reproduces each experiment on the same data and logs every figure and number to a new
`analysis` run that links back (tag analyzed_run_id), with a report, analysis.md:

1. first-layer weights as 28×28 images (positive green, negative red, brightness ∝ |w|);
2. the noise test: top output activation on uniform noise, blank and inverted digits vs
   real test digits, and the fraction of each classified with a top output ≥ 0.9;
3. random labels: the same network trained on shuffled training labels next to the true
   labels (train accuracy per epoch), plus a wider network on a subset that memorises them;
4. learning rates (cost curves) and seeds (test accuracy spread over several seeds);
5. gradient magnitudes: mean |∂C/∂w| per layer and a 28×28 map of the first layer's;
6. accuracy against size: the mean test accuracy of every recipe (model.name) of ours in the
   experiment against its parameter count, from the classic 13,002 up to the widest.

The computing is split into independent jobs (one per training: per seed, per learning
rate, per network and labelling), each seeded on its own and run on one BLAS thread, so
its numbers are the same bit for bit whichever process runs it and in whatever order.
The jobs run side by side in `analyze.workers` processes (default one per core; 1: one
after another, in this process), with a line as each part is done (and a bar of the jobs
on a terminal); the figures, metrics and report are then made and logged here, in this
process (the only one that talks to MLflow), in a fixed order.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import joblib
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from omegaconf import OmegaConf
from threadpoolctl import threadpool_limits

from pipeline import progress
from pipeline.data import dataset
from pipeline.engine import DivergenceError, Network, SGDConfig, train
from pipeline.errors import PipelineError
from pipeline.families import OURS
from pipeline.families.numpy_mlp import build_network, sgd_config
from pipeline.logs import redact
from pipeline.tracking import identity, links, runs, store
from pipeline.tracking.report import Report

log = logging.getLogger(__name__)
CONFIDENT = 0.9
# One job: the key of its result within its part, a function and its arguments.
Job = tuple[Hashable, Callable[..., Any], tuple]


def run(cfg, results: dict) -> str:
    experiment_id = store.setup(cfg)
    run_id = cfg.analyze.run_id or latest_run_id(experiment_id, cfg.analyze.model_name)
    try:
        source = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise PipelineError(
            f"analyze: no run {run_id} in {redact(store.tracking_uri(cfg))}"
        ) from None
    if source.data.tags.get("model_family") != OURS:
        raise PipelineError(
            f"analyze: run {run_id} is not a run of this project's network "
            f"(tag model_family={OURS}); name one with analyze.run_id=<id>"
        )
    run_cfg = identity.logged_config(cfg, run_id)
    net = Network.load(
        mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/artifacts/network.npz")
    )
    data = _dataset(run_cfg.data)
    a = cfg.analyze
    name = source.info.run_name or run_id
    recipe = source.data.tags.get("model_name", "")
    test_accuracy = source.data.metrics.get("test_accuracy")
    link = f"#/experiments/{source.info.experiment_id}/runs/{run_id}"
    tags = {
        "kind": "analysis",
        "analyzed_run_id": run_id,
        "git_commit": identity.git_commit(),
        "mlflow.note.content": (
            f"What the network of run [{name}]({link}) learned: first-layer "
            "weights, the noise test, random labels, learning rates, seeds and gradient "
            "magnitudes. Open the report: artifacts → report/analysis.html."
        ),
    }
    parts = plan(cfg, run_cfg, net)
    jobs = sum(len(todo) for todo in parts.values())
    workers = worker_count(a.workers, jobs)
    log.info(
        "analyze: %s (run %s): %d parts, %d jobs, %s",
        name,
        run_id,
        len(parts),
        jobs,
        f"on {workers} worker processes" if workers > 1 else "one after another",
    )
    with (
        runs.run(cfg, run_name=f"analysis of {name}", tags=tags) as active,
        tempfile.TemporaryDirectory() as tmp,
    ):
        mlflow.log_params(
            {
                "analyzed_run_id": run_id,
                "analyzed_run_name": source.info.run_name,
                "analyzed_recipe": recipe,
                "analyzed_test_accuracy": test_accuracy,
                "analyzed_val_accuracy": source.data.metrics.get("val_accuracy"),
            }
        )
        found = compute(parts, workers, cfg.quiet)
        accuracy = "" if test_accuracy is None else f" · test accuracy {test_accuracy:.4f}"
        report = Report(
            Path(tmp), f"Analysis of {name}", f"Run `{run_id}` · recipe `{recipe}`{accuracy}"
        )
        first_layer_weights(net, report)
        noise_test(found["noise test"]["tops"], report)
        random_labels(found["random labels"], data, a, report, active.info.run_id)
        learning_rates(found["learning rates"], a, report)
        seeds(found["seeds"], a, report)
        gradient_magnitudes(found["gradient magnitudes"]["gradients"], report)
        accuracy_by_size(experiment_id, report)
        report.log()
        report_uri = mlflow.get_artifact_uri("report/analysis.html")
        log.info(
            "analyze: %s (run %s), what it learned:\n  %s\nthe report: %s (opens in a browser; "
            "or in the MLflow UI, run %s, artifacts → report/analysis.html: %s)",
            name,
            run_id,
            "\n  ".join(headline(report.values, a)),
            report_uri,
            active.info.run_id,
            links.where(
                store.tracking_uri(cfg),
                links.run_page(source.info.experiment_id, active.info.run_id),
            ),
        )
        return active.info.run_id


def headline(v: dict[str, float], a) -> list[str]:
    """The findings in a sentence each, from the report's metrics."""
    lines = []
    if "noise_confident_fraction" in v:
        lines.append(
            f"noise: {v['noise_confident_fraction']:.0%} of random-noise images get an answer "
            f"with ≥{CONFIDENT:.0%} of the top output (test digits: "
            f"{v['digits_confident_fraction']:.0%}); it has no way to say 'none of these'"
        )
    if "wide_shuffled_train_accuracy" in v:
        lines.append(
            f"random labels: a wide net memorises them to "
            f"{v['wide_shuffled_train_accuracy']:.0%} training accuracy, "
            f"{v['wide_shuffled_test_accuracy']:.0%} on test (chance: 10%)"
        )
    costs = {k: c for k, c in v.items() if k.startswith("final_train_cost_eta_") and np.isfinite(c)}
    if costs:
        best = min(costs, key=lambda k: costs[k])
        lines.append(f"learning rate: the lowest final training cost at η={best.rsplit('_', 1)[1]}")
    if "seed_test_accuracy_mean" in v:
        lines.append(
            f"seeds: test accuracy {v['seed_test_accuracy_mean']:.4f} ± "
            f"{v['seed_test_accuracy_std']:.4f} over {a.seeds} seeds "
            f"({v['seed_test_accuracy_min']:.4f}–{v['seed_test_accuracy_max']:.4f})"
        )
    return lines


def latest_run_id(experiment_id: str, model_name: str) -> str:
    """The newest finished top-level training run of ours with recipe `model_name`: never
    a sweep's child (whose recipe may be overridden) unless named by id."""
    runs = mlflow.search_runs(
        [experiment_id],
        f"attributes.status = 'FINISHED' and tags.model_family = '{OURS}' "
        f"and tags.kind = 'training' and tags.model_name = '{model_name}'",
        order_by=["attributes.start_time DESC"],
    )
    if "tags.mlflow.parentRunId" in runs:
        runs = runs[runs["tags.mlflow.parentRunId"].isna()]
    if runs.empty:
        raise PipelineError(
            f"analyze: no finished {model_name!r} run of ours to analyse: "
            "run `make run` first, or name one with analyze.run_id=<id>"
        )
    return runs.run_id.iloc[0]


# --- The computing: jobs, each seeded on its own, run here or in worker processes. ---


def plan(cfg, run_cfg, net: Network) -> dict[str, list[Job]]:
    """Every part's computing as independent jobs, by part. The cheapest parts come first,
    so that parts finish one by one; the last jobs (the seeds) are of equal size, so that
    workers finish close together."""
    a = cfg.analyze
    memorise = (a.memorize_epochs, a.memorize_wide_epochs, a.memorize_subset, a.memorize_hidden)
    return {
        "noise test": [("tops", _noise_tops, (net, run_cfg.data, a.noise_images, cfg.seed))],
        "gradient magnitudes": [("gradients", _gradients, (net, run_cfg.data))],
        "learning rates": [
            (float(eta), _costs, (run_cfg, float(eta), a.lr_epochs)) for eta in a.learning_rates
        ],
        "random labels": [
            ((network, labels), _memorised, (run_cfg, network, labels, *memorise))
            for network in ("same", "wide")
            for labels in ("true", "shuffled")
        ],
        "seeds": [(seed, _seed_accuracy, (run_cfg, seed)) for seed in range(a.seeds)],
    }


def worker_count(setting: int | None, jobs: int) -> int:
    """Worker processes for `jobs` jobs: analyze.workers (None: one per core), at most one
    per job."""
    workers = joblib.cpu_count() if setting is None else setting
    if workers < 1:
        raise PipelineError(
            f"analyze.workers={workers}: give at least 1 (1: one job after another, in this "
            "process), or null for one per core"
        )
    return max(1, min(workers, jobs))


def compute(parts: dict[str, list[Job]], workers: int, quiet: bool = False) -> dict[str, dict]:
    """Run every job of `parts` on `workers` processes (1: one after another, here) and log
    a line as each part is done, above a bar of the jobs done (on a terminal, unless
    quiet). Returns each part's results by key.

    Each worker loads the data once; only the results come back, and MLflow is only
    called here, in this process."""
    todo = [
        (part, key, function, args) for part, jobs in parts.items() for key, function, args in jobs
    ]
    found: dict[str, dict] = {part: {} for part in parts}
    seconds = dict.fromkeys(parts, 0.0)
    started = time.perf_counter()
    done = 0
    # batch_size=1: a job per dispatch, never two seeds queued behind one worker
    outputs = joblib.Parallel(n_jobs=workers, batch_size=1, return_as="generator_unordered")(
        joblib.delayed(_job)(part, key, function, args, os.getpid())
        for part, key, function, args in todo
    )
    with progress.bar(len(todo), "analyze", "job", quiet, leave=False) as bar:
        for part, key, result, took in outputs:
            bar.update()
            found[part][key] = result
            seconds[part] += took
            if len(found[part]) < len(parts[part]):
                continue
            done += 1
            jobs = len(parts[part])
            log.info(
                "analyze: %d/%d %s done: %s in %.1f s%s (%.0f s since the start)",
                done,
                len(parts),
                part,
                f"{jobs} jobs" if jobs > 1 else "1 job",
                seconds[part],
                " of computing" if workers > 1 and jobs > 1 else "",
                time.perf_counter() - started,
            )
    return found


def _job(part: str, key: Hashable, function: Callable, args: tuple, parent: int) -> tuple:
    """function(*args) on one BLAS thread, with the seconds it took: one thread gives the
    same sums in every process (OpenBLAS splits a product by thread count, which changes
    the last bits), and no worker takes the cores of another.

    A worker process (not `parent`) ignores Ctrl-C: the parent's stop signal handler ends
    it (SIGTERM) and then stops the analysis (interrupts.stop_descendants). Interrupted
    itself, a worker would send the KeyboardInterrupt back as the job's result and wait for
    the next job."""
    if os.getpid() != parent:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        result = function(*args)
    return part, key, result, time.perf_counter() - started


_loaded: dict[str, dataset.Dataset] = {}  # the data this process loaded, by its config


def _dataset(data_cfg) -> dataset.Dataset:
    """The verified dataset of `data_cfg`, loaded once per process (a worker's first job
    loads it; in this process, run() did)."""
    key = OmegaConf.to_yaml(data_cfg)
    if key not in _loaded:
        _loaded.clear()  # one dataset at a time
        _loaded[key] = dataset.load(data_cfg)
    return _loaded[key]


def _train_curve(run_cfg, x, y, *, seed=None, validation=None, **overrides):
    """Train a network of the run's config on (x, y); return (net, history)."""
    rng = np.random.default_rng(run_cfg.seed if seed is None else seed)
    net = build_network(run_cfg.model, x.shape[1], run_cfg.train.dtype, rng)
    return net, train(net, x, y, sgd_config(run_cfg.train, **overrides), rng, validation=validation)


def _noise_tops(net: Network, data_cfg, n: int, seed: int) -> dict[str, np.ndarray]:
    """The top output activation on n test digits, n images of uniform noise (from `seed`),
    a blank image and n inverted test digits."""
    x_test = _dataset(data_cfg).x("test")
    rng = np.random.default_rng(seed)
    inputs = {
        "test digits": x_test[:n],
        "uniform noise": rng.random((n, x_test.shape[1]), dtype=np.float32),
        "blank": np.zeros((1, x_test.shape[1]), dtype=np.float32),
        "inverted digits": 1 - x_test[:n],
    }
    return {name: net.feedforward(x).max(axis=1) for name, x in inputs.items()}


def _memorised(
    run_cfg, network: str, labels: str, epochs, wide_epochs, subset, hidden
) -> tuple[list[float], float]:
    """Train accuracy per epoch and the final test accuracy of a network trained on the true
    or the shuffled training labels: the run's own network ("same") on all of them, or a
    wide one on the first `subset`, trained the modern way, which memorises fastest."""
    data = _dataset(run_cfg.data)
    x, y = data.x("train"), data.y("train")
    if labels == "shuffled":
        y = dataset.shuffle_labels(y, 1.0, np.random.default_rng(int(run_cfg.data.split_seed)))
    if network == "same":
        net, history = _train_curve(run_cfg, x, y, epochs=epochs)
    else:
        n = min(subset, len(y))
        spec = {
            "hidden_sizes": list(hidden),
            "activation": "relu",
            "cost": "cross_entropy",
            "init": "he",
        }
        rng = np.random.default_rng(run_cfg.seed)
        net = Network.from_spec(spec, x.shape[1], rng=rng)
        sgd = SGDConfig(epochs=wide_epochs, batch_size=32, learning_rate=0.05, momentum=0.9)
        history = train(net, x[:n], y[:n], sgd, rng)
    curve = [r["train_accuracy"] for r in history]
    return curve, net.evaluate(data.x("test"), data.y("test"))[1]


def _costs(run_cfg, eta: float, epochs: int) -> list[float] | None:
    """Training cost per epoch at learning rate eta; None if the training diverged."""
    data = _dataset(run_cfg.data)
    try:
        _, history = _train_curve(
            run_cfg, data.x("train"), data.y("train"), learning_rate=eta, epochs=epochs
        )
    except DivergenceError:
        return None
    return [r["train_cost"] for r in history]


def _seed_accuracy(run_cfg, seed: int) -> float:
    """Test accuracy of the run's config trained from `seed`."""
    data = _dataset(run_cfg.data)
    net, _ = _train_curve(run_cfg, data.x("train"), data.y("train"), seed=seed)
    return net.evaluate(data.x("test"), data.y("test"))[1]


def _gradients(net: Network, data_cfg, n: int = 1000) -> tuple[list[float], np.ndarray]:
    """Mean |∂C/∂w| per layer over n test images, and the first layer's per input pixel."""
    data = _dataset(data_cfg)
    x, y = data.x("test")[:n], data.y("test")[:n]
    blocks = net.split(np.abs(net.gradient(x, y)))
    per_layer = [float(block[:-1].mean()) for block in blocks]
    side = int(round(np.sqrt(x.shape[1])))
    return per_layer, blocks[0][:-1].mean(axis=1).reshape(side, side)


# --- The report: each part's figure and numbers, made and logged here, in this order. ---


def first_layer_weights(net: Network, report: Report) -> np.ndarray:
    """Each hidden neuron's incoming weights as an RGB image: green > 0, red < 0."""
    w = net.weights[0]
    side = int(round(np.sqrt(w.shape[0])))
    images = weight_images(w.T.reshape(-1, side, side))
    columns = min(8, len(images))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"neuron {i}", fontsize=7)
    fig.suptitle("First-layer weights (green +, red −, brightness ∝ |w|)", fontsize=9)
    fig.tight_layout()
    report.section(
        "First-layer weights",
        "Each hidden neuron's incoming weights drawn as an "
        "image. The classic finding: they look closer to noise than to clean "
        "strokes or edges, yet together they classify well.",
    )
    report.figure(fig, "first_layer_weights.png", "first-layer weights")
    return images


def weight_images(weights: np.ndarray) -> np.ndarray:
    """(n, h, w) weights → (n, h, w, 3) RGB in [0, 1], each image scaled by its own max |w|."""
    scale = np.abs(weights).max(axis=(1, 2), keepdims=True)
    scaled = weights / np.where(scale > 0, scale, 1)
    rgb = np.zeros((*weights.shape, 3))
    rgb[..., 1] = np.clip(scaled, 0, 1)
    rgb[..., 0] = np.clip(-scaled, 0, 1)
    return rgb


def noise_test(tops: dict[str, np.ndarray], report: Report) -> dict:
    """Top output activation on inputs that are not digits vs on real test digits, and the
    fraction of each with a top output ≥ CONFIDENT."""
    fractions = {name: float(np.mean(top >= CONFIDENT)) for name, top in tops.items()}
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = list(np.linspace(0, 1, 41))
    for name, top in tops.items():
        if len(top) > 1:
            ax.hist(
                top, bins=bins, alpha=0.5, label=f"{name} ({fractions[name]:.0%} ≥ {CONFIDENT})"
            )
        else:
            ax.axvline(top[0], color="k", linestyle=":", label=f"{name}: {top[0]:.2f}")
    ax.set_xlabel("top output activation")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    report.section(
        "Noise test",
        "The brightest output neuron on images that are not digits. "
        "A network that only ever saw digits has no way to say 'none of these'.",
    )
    report.figure(fig, "noise_confidence.png", "top output activation")
    report.metrics(
        {
            "noise_confident_fraction": fractions["uniform noise"],
            "inverted_confident_fraction": fractions["inverted digits"],
            "blank_top_output": float(tops["blank"][0]),
            "digits_confident_fraction": fractions["test digits"],
        }
    )
    return fractions


def random_labels(found: dict, data, a, report: Report, run_id: str) -> dict:
    """Train accuracy per epoch on true vs shuffled labels: the run's network on all the
    training data, and a wider network on a subset, which memorises the random labels.
    The curves are logged to run `run_id` as <network>_<labels>_labels_train_accuracy."""
    n = min(a.memorize_subset, len(data.y("train")))
    sizes = [data.x("train").shape[1], *a.memorize_hidden, 10]
    titles = {"same": "same network", "wide": f"wide {'-'.join(map(str, sizes))}, {n} images"}
    out = {
        "true_label_train_accuracy": found["same", "true"][0][-1],
        "shuffled_train_accuracy": found["same", "shuffled"][0][-1],
        "shuffled_test_accuracy": found["same", "shuffled"][1],
        "wide_shuffled_train_accuracy": found["wide", "shuffled"][0][-1],
        "wide_shuffled_test_accuracy": found["wide", "shuffled"][1],
    }
    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(  # the curves, in one call rather than one per epoch
        run_id,
        metrics=[
            Metric(f"{network}_{labels}_labels_train_accuracy", value, now, epoch)
            for (network, labels), (curve, _) in found.items()
            for epoch, value in enumerate(curve, 1)
        ],
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, network in zip(axes, ("same", "wide")):
        for labels in ("true", "shuffled"):
            curve = found[network, labels][0]
            ax.plot(range(1, len(curve) + 1), curve, label=f"{labels} labels")
        ax.axhline(0.1, color="gray", linestyle=":", label="chance")
        ax.set(title=titles[network], xlabel="epoch", ylabel="training accuracy", ylim=(0, 1.02))
        ax.legend(fontsize=8)
    fig.tight_layout()
    report.section(
        "Random labels",
        "The same training on labels shuffled at random. True "
        "labels are learned fast; random ones are learned slowly and only by "
        "memorising, which a network with enough parameters can do. Test accuracy "
        "on random labels stays at chance.",
    )
    report.figure(fig, "random_labels.png", "training accuracy, true vs shuffled labels")
    report.metrics(out)
    return out


def learning_rates(found: dict, a, report: Report) -> dict:
    """Training cost per epoch for several learning rates (NaN: diverged)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    finals = {}
    for eta in a.learning_rates:
        costs = found[float(eta)]
        if costs is None:
            finals[eta] = float("nan")
            ax.plot([], [], label=f"η = {eta:g}: diverged")
            continue
        finals[eta] = costs[-1]
        ax.plot(range(1, len(costs) + 1), costs, marker=".", label=f"η = {eta:g}")
    ax.set(
        xlabel="epoch",
        ylabel="training cost",
        yscale="log",
        title="Too small: slow. Too large: overshoot and plateaus.",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    report.section("Learning rate", "The training cost per epoch at several learning rates η.")
    report.figure(fig, "learning_rates.png", "training cost per learning rate")
    report.metrics({f"final_train_cost_eta_{eta:g}": c for eta, c in finals.items()})
    return finals


def seeds(found: dict, a, report: Report) -> np.ndarray:
    """Test accuracy of the run's config trained from several seeds."""
    accuracies = np.array([found[seed] for seed in range(a.seeds)])
    spread = float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(accuracies)), accuracies, "o")
    ax.axhline(
        accuracies.mean(),
        color="gray",
        linestyle="--",
        label=f"mean {accuracies.mean():.4f} ± {spread:.4f}",
    )
    ax.set(xlabel="seed", ylabel="test accuracy", title="Same config, different seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    report.section(
        "Seeds",
        "Different random starts end in different minima of similar "
        "quality: the spread of test accuracy over seeds is small.",
    )
    report.figure(fig, "seeds.png", "test accuracy per seed")
    report.metrics(
        {
            "seed_test_accuracy_mean": float(accuracies.mean()),
            "seed_test_accuracy_std": spread,
            "seed_test_accuracy_min": float(accuracies.min()),
            "seed_test_accuracy_max": float(accuracies.max()),
        }
    )
    return accuracies


def gradient_magnitudes(found: tuple[list[float], np.ndarray], report: Report) -> None:
    """Mean |∂C/∂w| per layer, and the first layer's as a map over the input pixels."""
    per_layer, pixel_map = found
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].bar([f"layer {l + 1}" for l in range(len(per_layer))], per_layer)
    axes[0].set(yscale="log", ylabel="mean |∂C/∂w|", title="Gradient size per layer")
    image = axes[1].imshow(pixel_map, cmap="magma")
    axes[1].set_title("First layer: mean |∂C/∂w| per input pixel")
    axes[1].axis("off")
    fig.colorbar(image, ax=axes[1])
    fig.tight_layout()
    report.section(
        "Gradient magnitudes",
        "How strongly the cost reacts to each layer's "
        "weights, and which pixels' weights matter (the border pixels are always "
        "blank, so their weights get no gradient at all).",
    )
    report.figure(fig, "gradient_magnitudes.png", "gradient magnitudes")
    report.metrics({f"grad_mean_abs_layer{l + 1}": v for l, v in enumerate(per_layer)})


def accuracy_by_size(experiment_id: str, report: Report) -> pd.DataFrame:
    """Mean test accuracy of each recipe of ours (finished top-level training runs, grouped
    by model name and parameter count) against its number of weights and biases; the
    spread (standard deviation) of a recipe with one run is left empty."""
    runs = mlflow.search_runs(
        [experiment_id],
        f"attributes.status = 'FINISHED' and tags.model_family = '{OURS}' "
        "and tags.kind = 'training'",
    )
    # Columns absent from the search (no such runs, or runs from before n_params) are NaN.
    runs = runs.reindex(
        columns=[
            "tags.mlflow.parentRunId",
            "tags.model_name",
            "tags.n_params",
            "metrics.test_accuracy",
        ]
    )
    runs = runs[runs["tags.mlflow.parentRunId"].isna()]
    runs = runs.dropna(subset=["metrics.test_accuracy", "tags.n_params"])
    table = (
        runs.assign(n_params=runs["tags.n_params"].astype(int))
        .groupby(["tags.model_name", "n_params"])["metrics.test_accuracy"]
        .agg(["mean", "std", "count"])
        .reset_index()
        .rename(
            columns={
                "tags.model_name": "recipe",
                "mean": "test_accuracy_mean",
                "std": "test_accuracy_std",
                "count": "runs",
            }
        )
        .sort_values("n_params")
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(
        table.n_params,
        table.test_accuracy_mean,
        yerr=table.test_accuracy_std.fillna(0),
        fmt="o",
        capsize=3,
    )
    for row in table.itertuples():
        ax.annotate(
            f"{row.recipe} ({row.runs})",
            (row.n_params, row.test_accuracy_mean),
            textcoords="offset points",
            xytext=(5, -10),
            fontsize=8,
        )
    ax.set(
        xscale="log",
        xlabel="weights and biases",
        ylabel="mean test accuracy",
        title="Accuracy against size, per recipe (runs in brackets)",
    )
    sizes = sorted(table.n_params.unique())  # ticks at the recipes' sizes, not 10ⁿ
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.margins(x=0.15, y=0.1)
    fig.tight_layout()
    report.section(
        "Accuracy against size",
        "Every recipe of ours trained in this experiment "
        "(finished top-level runs, grouped by model name): mean test accuracy "
        "over its runs (bars: one standard deviation; — for a recipe of one run) against "
        "its parameter count.",
    )
    report.figure(fig, "accuracy_by_size.png", "test accuracy against parameter count")
    report.table(table, "accuracy_by_size.csv")
    return table
