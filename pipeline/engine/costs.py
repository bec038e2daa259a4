"""Costs C, each with the output layer it pairs with, as in Nielsen's network2.py.

A cost class says four things:
    output(z)      the output activations aᴸ from the weighted input zᴸ
    fn(a, y)       C_x for each example (row), in float64
    delta(a, y)    δᴸ = ∂C_x/∂zᴸ, written in place and multiplied by `scale` (a float or,
                   cheaper on small batches, a 0-d array of a's type)
    probabilities  the class probabilities the output stands for (for log loss and serving)
Adding a cost is one class and one line in COSTS.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from scipy.special import expit


class Cost(Protocol):
    """What a cost class provides (as static methods: the class itself is the cost)."""

    def output(self, z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
    def fn(self, a: np.ndarray, y: np.ndarray) -> np.ndarray: ...
    def delta(
        self, a: np.ndarray, onehot: np.ndarray, scale: Scale, out: np.ndarray, scratch: np.ndarray
    ) -> None: ...
    def probabilities(self, a: np.ndarray) -> np.ndarray: ...


Scale = float | np.ndarray  # a float or a 0-d array of the network's float type


class Quadratic:
    """C = ½ Σⱼ (aⱼ − yⱼ)² with sigmoid output units (the book's ½: η = 3.0 means the same)."""

    @staticmethod
    def output(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return expit(z, out=out) if out is not None else expit(z)

    @staticmethod
    def fn(a: np.ndarray, y: np.ndarray) -> np.ndarray:
        onehot = np.eye(a.shape[1], dtype=a.dtype)[y]
        return np.asarray(0.5 * np.sum((a - onehot) ** 2, axis=1, dtype=np.float64))

    @staticmethod
    def delta(
        a: np.ndarray, onehot: np.ndarray, scale: Scale, out: np.ndarray, scratch: np.ndarray
    ) -> None:
        """δᴸ = (a − y) ⊙ σ'(zᴸ), σ' = a(1 − a)."""
        np.subtract(a, onehot, out=out)
        t = np.multiply(a, scale, out=scratch)
        np.subtract(scale, t, out=t)  # scale · (1 − a)
        t *= a
        out *= t

    @staticmethod
    def probabilities(a: np.ndarray) -> np.ndarray:
        """Sigmoid outputs are ten independent scores; normalised, they sum to 1 (a row
        whose outputs all underflowed to 0 says nothing: uniform)."""
        a = a.astype(np.float64)
        total = a.sum(axis=1, keepdims=True)
        uniform = np.full_like(a, 1 / a.shape[1])
        return np.divide(a, total, out=uniform, where=total > 0)


class CrossEntropy:
    """C = −Σⱼ yⱼ ln aⱼ with softmax output units (log loss)."""

    @staticmethod
    def output(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = np.subtract(z, z.max(axis=1, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= out.sum(axis=1, keepdims=True)
        return out

    @staticmethod
    def fn(a: np.ndarray, y: np.ndarray) -> np.ndarray:
        p = a[np.arange(len(y)), y].astype(np.float64)
        return -np.log(np.maximum(p, np.finfo(a.dtype).tiny))

    @staticmethod
    def delta(
        a: np.ndarray, onehot: np.ndarray, scale: Scale, out: np.ndarray, scratch: np.ndarray
    ) -> None:
        """δᴸ = a − y: softmax and log loss cancel σ'."""
        np.subtract(a, onehot, out=out)
        out *= scale

    @staticmethod
    def probabilities(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        return a / a.sum(axis=1, keepdims=True)  # softmax already sums to 1, up to float32


COSTS: dict[str, Cost] = {"quadratic": Quadratic, "cross_entropy": CrossEntropy}
