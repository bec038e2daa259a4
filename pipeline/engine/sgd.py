"""Mini-batch stochastic gradient descent: w ← w − η ∇C, one step per mini-batch.

Each epoch shuffles the training set by a permutation of indices (the data is never
reordered in place), walks it in mini-batches of m rows and steps once per batch. Options:
momentum μ (v ← μv − η∇C, w ← w + v), L2 weight decay λ (the cost gains λ/2n Σ w²), and a
learning-rate schedule over epochs (constant, step, cosine).

The tweaks, all off by default (the classic recipe draws no extra random number with them
off, so its results do not change): a linear learning-rate warm-up; dropout of input pixels
and of hidden units while training (inverted: kept units are scaled by 1/(1 − p), so the
network is used as it is at evaluation); max-norm, which keeps each unit's incoming weight
vector at ‖w‖ ≤ c after every step; and data augmentation (augment.py), each training
image distorted afresh every epoch. One generator draws every random number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:  # optional: the engine needs only numpy and scipy (a logged model has no more)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

from .augment import TWEAK, AugmentConfig, distort, image_side
from .errors import DivergenceError, EngineError
from .network import Network, Workspace, with_ones_column

SCHEDULES = ("constant", "step", "cosine")
# Rows gathered per shuffle chunk: amortises the per-batch fancy-indexing call.
_CHUNK_ROWS = 256


# Field metadata: a setting that applies only when another one has a value (a schedule's
# parameters); it means nothing otherwise.
STEP_SCHEDULE = {"applies_when": ("schedule", "step")}


@dataclass
class SGDConfig:
    """Mini-batch SGD; the defaults are the classic recipe (the book's η = 3.0, m = 10)."""

    epochs: int = 30
    batch_size: int = 10  # m
    learning_rate: float = 3.0  # η
    momentum: float = 0.0  # μ: v ← μv − η∇C, w ← w + v
    l2: float = 0.0  # λ: C gains λ/2n Σ w², n the training-set size
    schedule: str = "constant"  # constant | step (η·gamma every step_every epochs) | cosine
    # schedule=step: epochs between decays, and η's multiplier at each
    step_every: int = field(default=10, metadata=STEP_SCHEDULE)
    gamma: float = field(default=0.5, metadata=STEP_SCHEDULE)
    # The tweaks (metadata "tweak"), all off in the classic recipe:
    # η rises linearly over these first epochs: η·(e + 1)/(k + 1)
    warmup_epochs: int = field(default=0, metadata=TWEAK)
    # p: each input pixel, or each hidden unit, dropped with probability p while training
    dropout_input: float = field(default=0.0, metadata=TWEAK)
    dropout_hidden: float = field(default=0.0, metadata=TWEAK)
    # c > 0: every unit's incoming weights kept at ‖w‖ ≤ c
    max_norm: float = field(default=0.0, metadata=TWEAK)
    # every training image distorted afresh each epoch (augment.py)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if isinstance(self.augment, dict):  # from plain config data
            self.augment = AugmentConfig(**self.augment)

    def eta(self, epoch: int) -> float:
        """The learning rate η for epoch (0-based)."""
        if self.schedule == "step":
            eta = self.learning_rate * self.gamma ** (epoch // self.step_every)
        elif self.schedule == "cosine":
            eta = self.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        else:
            eta = self.learning_rate
        if epoch < self.warmup_epochs:
            eta *= (epoch + 1) / (self.warmup_epochs + 1)
        return eta


def train(
    net: Network,
    x: np.ndarray,
    y: np.ndarray,
    config: SGDConfig,
    rng: np.random.Generator,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    evaluate: bool = True,
) -> list[dict]:
    """Train `net` in place; return the per-epoch history (also passed to on_epoch).

    Each record: epoch (1-based), learning_rate, epoch_seconds (the SGD steps alone) and,
    with evaluate=True, train_cost, train_accuracy, and val_accuracy if validation is given.
    Raises DivergenceError as soon as a weight or the cost is NaN or infinite.
    """
    if config.schedule not in SCHEDULES:
        raise EngineError(f"schedule={config.schedule!r} is unknown: choose one of {SCHEDULES}")
    x = np.asarray(x, dtype=net.dtype)
    n, m = len(y), config.batch_size
    onehot = np.eye(net.sizes[-1], dtype=net.dtype)[y]
    grad = np.empty_like(net.params)
    velocity = np.zeros_like(net.params) if config.momentum else None
    decay = net.weight_mask() if config.l2 else None
    augment = config.augment if config.augment.active else None
    if augment is not None:
        image_side(x.shape[1])  # fails early for rows that are not square images
    dropout: dict[str, Any] = {
        "dropout_input": config.dropout_input,
        "dropout_hidden": config.dropout_hidden,
        "rng": rng,
    }
    chunk = max(m, _CHUNK_ROWS // m * m)
    # The rows [x, 1] once, so each chunk is gathered whole: into a contiguous buffer a
    # gather runs about 1.5x faster than into the 784 columns of a [x, 1] buffer.
    x1 = with_ones_column(x)
    x_chunk = np.empty((chunk, x1.shape[1]), dtype=net.dtype)
    y_chunk = np.empty((chunk, onehot.shape[1]), dtype=net.dtype)
    workspaces = {}  # by batch size: m, and the last, smaller batch of an epoch

    def batches(rows: int) -> list[tuple[np.ndarray, np.ndarray, Workspace]]:
        """The first `rows` of the chunk buffers as mini-batches of ≤ m rows (views), each
        with the Workspace of its size."""
        views = []
        for b0 in range(0, rows, m):
            b1 = min(b0 + m, rows)
            if b1 - b0 not in workspaces:
                workspaces[b1 - b0] = Workspace(net, b1 - b0, grad, **dropout)
            views.append((x_chunk[b0:b1], y_chunk[b0:b1], workspaces[b1 - b0]))
        return views

    full_chunk, last_chunk = batches(chunk), batches(n % chunk)  # the last has n mod chunk rows
    history = []
    # Small matrices gain nothing from BLAS threads and lose a lot to oversubscription.
    # Overflow is not warned about: a non-finite weight is caught below and reported.
    one_thread = (
        threadpool_limits(limits=1, user_api="blas") if threadpool_limits else nullcontext()
    )
    with one_thread, np.errstate(over="ignore", invalid="ignore"):
        for epoch in range(config.epochs):
            eta = config.eta(epoch)
            # the step's scale η/m, as 0-d arrays: a Python float is converted on every use
            scales = {size: np.asarray(eta / size, dtype=net.dtype) for size in workspaces}
            start = time.perf_counter()
            order = rng.permutation(n)
            for c0 in range(0, n, chunk):
                idx = order[c0 : c0 + chunk]
                # mode="clip" writes straight into `out`; "raise" would buffer a copy.
                np.take(x1, idx, axis=0, out=x_chunk[: len(idx)], mode="clip")
                np.take(onehot, idx, axis=0, out=y_chunk[: len(idx)], mode="clip")
                if augment is not None:  # the gathered copies, never the data set itself
                    pixels = x_chunk[: len(idx), :-1]
                    distort(pixels, augment, rng, out=pixels)
                for xb, yb, workspace in full_chunk if len(idx) == chunk else last_chunk:
                    workspace.backprop(xb, yb, scale=scales[len(xb)])  # grad = η ∇C
                    if decay is not None:  # ∇(λ/2n Σw²) = (λ/n) w, weights only
                        grad += (eta * config.l2 / n) * decay * net.params
                    if velocity is None:
                        net.params -= grad
                    else:
                        velocity *= config.momentum
                        velocity -= grad
                        net.params += velocity
                    if config.max_norm:
                        net.limit_norms(config.max_norm)
                if not np.isfinite(net.params).all():  # checked per chunk: cheap, and stops at once
                    raise DivergenceError(_diverged(epoch + 1, eta, "a weight"))
            record = {
                "epoch": epoch + 1,
                "learning_rate": eta,
                "epoch_seconds": time.perf_counter() - start,
            }
            if evaluate:
                record["train_cost"], record["train_accuracy"] = net.evaluate(x, y, config.l2, n)
                if not math.isfinite(record["train_cost"]):
                    raise DivergenceError(_diverged(epoch + 1, eta, "the training cost"))
                if validation is not None:
                    record["val_accuracy"] = net.evaluate(*validation)[1]
            history.append(record)
            if on_epoch:
                on_epoch(record)
    return history


def _diverged(epoch: int, eta: float, what: str) -> str:
    return (
        f"training diverged: {what} became NaN or infinite in epoch {epoch} at learning "
        f"rate η={eta:g}. Lower train.learning_rate (or use a smaller init scale)."
    )
