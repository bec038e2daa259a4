"""Wall time of a tracked training run vs the same training untracked.

    python benchmarks/tracking_overhead.py [hydra overrides]     (default: the classic preset)

Both train the same config with the same seed; the tracked one is the train stage's own
tracked loop (families/training.py: params, per-epoch metrics, dataset inputs, config,
pyfunc model), logging to a throwaway SQLite store. Prints both times and the overhead in percent.
"""

import os
import sys
import tempfile
import time

import numpy as np
from hydra import compose, initialize_config_dir

from pipeline import config as _config  # noqa: F401 — registers the schema
from pipeline import families
from pipeline.data import dataset
from pipeline.engine import train as sgd_train
from pipeline.families import training
from pipeline.families.numpy_mlp import build_network, sgd_config
from pipeline.paths import PROJECT_ROOT


def untracked(cfg, data) -> float:
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    net = build_network(cfg.model, data.x("train").shape[1], cfg.train.dtype, rng)
    sgd_train(
        net,
        data.x("train"),
        data.y("train"),
        sgd_config(cfg.train),
        rng,
        validation=(data.x("val"), data.y("val")),
    )
    net.evaluate(data.x("test"), data.y("test"))
    return time.perf_counter() - start


def main() -> None:
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=sys.argv[1:])
    data = dataset.load(cfg.data)
    with tempfile.TemporaryDirectory() as store:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
        ours = families.get(families.OURS)
        training.train(ours, cfg, data)  # warm-up: imports, database creation
        bare = min(untracked(cfg, data) for _ in range(2))
        tracked = []
        for _ in range(2):
            start = time.perf_counter()
            training.train(ours, cfg, data)
            tracked.append(time.perf_counter() - start)
    print(
        f"untracked {bare:.2f} s, tracked {min(tracked):.2f} s, "
        f"overhead {100 * (min(tracked) / bare - 1):.1f}% (min of 2 each)"
    )


if __name__ == "__main__":
    main()
