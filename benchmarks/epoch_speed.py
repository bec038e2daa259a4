"""Seconds per training epoch on the real 60k MNIST training set, ours vs the libraries.

    make bench                      # or: python benchmarks/epoch_speed.py --repeats 5

Each case (a network and a batch size: the classic 784-16-16-10 sigmoid/quadratic at
batches 10 and 100, and 784-800-10 ReLU/cross-entropy at 100; plain mini-batch SGD) is
timed for this project's NumPy code (the epoch's SGD steps, as train() records them; the
run's one-off setup is printed apart), scikit-learn's MLPClassifier (time per epoch = fit
time / n_iter_, its setup included) and, if it is installed, PyTorch eager (16-16 only).
One BLAS thread everywhere; each figure is the minimum of several single-epoch repeats, so
noise can only add time. The floor is the epoch's arithmetic (forward, backward and gradient
products: 3.16 GFLOP for 16-16) at the speed this core multiplies large float32 matrices.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy loads its BLAS

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from pipeline import config as _config  # noqa: E402,F401 — registers the schema
from pipeline.data import download  # noqa: E402
from pipeline.data.idx import read_idx  # noqa: E402
from pipeline.engine import AugmentConfig, Network, SGDConfig, train  # noqa: E402
from pipeline.engine.augment import distort  # noqa: E402
from pipeline.paths import PROJECT_ROOT  # noqa: E402

# (hidden sizes, activation, cost, batch, η): target s/epoch (issue 15)
CASES = {
    ((16, 16), "sigmoid", "quadratic", 10, 3.0): 0.15,
    ((16, 16), "sigmoid", "quadratic", 100, 3.0): 0.07,
    ((800,), "relu", "cross_entropy", 100, 0.05): 3.0,
}
SKLEARN_ACTIVATION = {"sigmoid": "logistic", "relu": "relu"}


def load_mnist_train() -> tuple[np.ndarray, np.ndarray]:
    """All 60,000 training images as float32 rows in [0, 1], fetched by the download stage."""
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config")
    paths = download.fetch_all(cfg.data)
    x = read_idx(paths["train-images-idx3-ubyte.gz"]).reshape(60000, 784) / np.float32(255)
    return x.astype(np.float32), read_idx(paths["train-labels-idx1-ubyte.gz"]).astype(np.int64)


def epoch_flops(sizes: list[int], n: int) -> float:
    """Multiply-adds ×2 of one epoch: zˡ = [a, 1]Wˡ forward, ∂C/∂Wˡ = [a, 1]ᵀδˡ and, above
    the first layer, δˡ⁻¹ = δˡWˡᵀ backward."""
    forward = sum((i + 1) * o for i, o in zip(sizes, sizes[1:]))
    back = sum(i * o for i, o in zip(sizes[1:-1], sizes[2:]))
    return 2.0 * n * (2 * forward + back)


def matmul_flops_per_second(repeats: int) -> float:
    """The speed of a large float32 matrix product on one thread: the core's practical peak."""
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * 1024**3 / min(times)


def time_ours(
    x,
    y,
    batch: int,
    repeats: int,
    hidden=(16, 16),
    activation="sigmoid",
    cost="quadratic",
    eta=3.0,
    augment: AugmentConfig | None = None,
) -> tuple[float, float]:
    """(s/epoch: the epoch's SGD steps, as train() records them; s of the run's one-off
    setup before its first epoch: the [x, 1] copy of the data, one-hot labels, buffers)."""
    init = "he" if activation == "relu" else "normal"
    epochs, setups = [], []
    for r in range(repeats):
        rng = np.random.default_rng(r)
        net = Network([784, *hidden, 10], activation, cost, init, rng=rng)
        config = SGDConfig(
            epochs=1, batch_size=batch, learning_rate=eta, augment=augment or AugmentConfig()
        )
        start = time.perf_counter()
        history = train(net, x, y, config, rng, evaluate=False)
        epochs.append(history[0]["epoch_seconds"])
        setups.append(time.perf_counter() - start - epochs[-1])
    return min(epochs), min(setups)


AUGMENTATIONS = {
    "affine": AugmentConfig(shift=2, rotation=15, scale=0.15, shear=15),
    "elastic": AugmentConfig(elastic_alpha=34.0, elastic_sigma=4.0),
}


def time_augmented(x, y, batch: int, repeats: int, augment: AugmentConfig) -> tuple[float, float]:
    """(s/epoch of ours with augmentation, s for the distortions of one epoch alone)."""
    alone = []
    for r in range(repeats):
        rng = np.random.default_rng(r)
        start = time.perf_counter()
        for i in range(0, len(x), 256):  # the engine distorts chunks of 256 gathered rows
            distort(x[i : i + 256], augment, rng)
        alone.append(time.perf_counter() - start)
    return time_ours(x, y, batch, repeats, augment=augment)[0], min(alone)


def time_sklearn(
    x, y, batch: int, repeats: int, hidden=(16, 16), activation="sigmoid", eta=0.5
) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    times = []
    for r in range(repeats):
        clf = MLPClassifier(
            hidden_layer_sizes=hidden,
            activation=SKLEARN_ACTIVATION[activation],
            solver="sgd",
            batch_size=batch,
            learning_rate_init=min(eta, 0.5),
            momentum=0.0,
            alpha=0.0,
            max_iter=1,
            tol=0.0,
            shuffle=True,
            random_state=r,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            clf.fit(x, y)
            times.append((time.perf_counter() - start) / clf.n_iter_)
    return min(times)


def time_torch(x, y, batch: int, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    xt, yt = torch.from_numpy(x), torch.nn.functional.one_hot(torch.from_numpy(y), 10).float()
    times = []
    for r in range(repeats):
        torch.manual_seed(r)
        model = torch.nn.Sequential(
            torch.nn.Linear(784, 16),
            torch.nn.Sigmoid(),
            torch.nn.Linear(16, 16),
            torch.nn.Sigmoid(),
            torch.nn.Linear(16, 10),
            torch.nn.Sigmoid(),
        )
        opt = torch.optim.SGD(model.parameters(), lr=3.0)
        start = time.perf_counter()
        for idx in torch.randperm(len(xt)).split(batch):
            opt.zero_grad()
            loss = 0.5 * ((model(xt[idx]) - yt[idx]) ** 2).sum(dim=1).mean()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # rows as measured
    print(f"{len(CASES)} cases, ours and scikit-learn, {args.repeats} repeats each; a row each")
    x, y = load_mnist_train()
    with threadpool_limits(limits=1):
        peak = matmul_flops_per_second(args.repeats)
        print(
            f"plain SGD, {len(y)} images, 1 BLAS thread, min of {args.repeats} repeats; "
            f"floor = the epoch's FLOPs at {peak / 1e9:.1f} GFLOP/s (a 1024² float32 matmul here)"
        )
        print(
            f"{'network':>30} {'batch':>5} {'ours s/ep':>10} {'sklearn':>8} {'÷sklearn':>9} "
            f"{'floor':>6} {'÷floor':>7} {'torch':>6}  target"
        )
        setups = []
        for (hidden, activation, cost, batch, eta), target in CASES.items():
            ours, setup = time_ours(x, y, batch, args.repeats, hidden, activation, cost, eta)
            setups.append(setup)
            sk = time_sklearn(x, y, batch, args.repeats, hidden, activation, eta)
            floor = epoch_flops([784, *hidden, 10], len(y)) / peak
            torch_s = time_torch(x, y, batch, args.repeats) if hidden == (16, 16) else None
            torch_txt = f"{torch_s:6.3f}" if torch_s is not None else f"{'—':>6}"
            name = f"784-{'-'.join(map(str, hidden))}-10 {activation}/{cost}"
            verdict = f"≤{target} s: {'met' if ours <= target else 'MISSED'}"
            print(
                f"{name:>30} {batch:>5} {ours:10.3f} {sk:8.3f} {ours / sk:9.3f} {floor:6.3f} "
                f"{ours / floor:7.1f} {torch_txt}  {verdict}",
                flush=True,
            )
        print(
            f"ours, once per training run before its first epoch (not in s/epoch): "
            f"{min(setups):.3f}-{max(setups):.3f} s"
        )
        plain = time_ours(x, y, 100, args.repeats)[0]
        for name, augment in AUGMENTATIONS.items():
            epoch, alone = time_augmented(x, y, 100, args.repeats, augment)
            print(
                f"augmentation {name:7}, 16-16 batch 100: {epoch:.3f} s/epoch = plain {plain:.3f} "
                f"+ {epoch - plain:.3f}; the distortions alone {alone:.3f} s",
                flush=True,
            )
    if time_torch(x[:10], y[:10], 10, 1) is None:
        print("(PyTorch not installed: its column is skipped; it is not a dependency)")


if __name__ == "__main__":
    main()
