"""Hidden-layer activation functions σ and their derivatives σ', in one table.

Each derivative is computed from the activation a = σ(z) itself (σ' = a(1 − a) for the
sigmoid, 1 − a² for tanh), so backprop needs no second copy of z. Both functions write in
place (`out=`), because training calls them thousands of times on small arrays. Adding an
activation is one class and one line in ACTIVATIONS.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from scipy.special import expit


class Activation(Protocol):
    """What an activation class provides (as static methods: the class itself is σ)."""

    def fn(self, z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...
    def multiply_derivative(self, a: np.ndarray, d: np.ndarray, scratch: np.ndarray) -> None: ...


# The constant 1 as a 0-d array per float type: NumPy converts a Python scalar operand on
# every call, which costs as much as the whole operation on a batch-10 array (~0.3 µs).
ONE = {np.dtype(t): np.ones((), dtype=t) for t in (np.float32, np.float64)}


class Sigmoid:
    """σ(z) = 1 / (1 + e⁻ᶻ), σ'(z) = σ(z)(1 − σ(z))."""

    @staticmethod
    def fn(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return expit(z, out=out) if out is not None else expit(z)

    @staticmethod
    def multiply_derivative(a: np.ndarray, d: np.ndarray, scratch: np.ndarray) -> None:
        """d ⊙= σ'(z), from a = σ(z)."""
        np.subtract(ONE.get(a.dtype, 1), a, out=scratch)
        scratch *= a
        d *= scratch


class Tanh:
    """σ(z) = tanh z, σ'(z) = 1 − tanh² z."""

    @staticmethod
    def fn(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.tanh(z, out=out) if out is not None else np.tanh(z)

    @staticmethod
    def multiply_derivative(a: np.ndarray, d: np.ndarray, scratch: np.ndarray) -> None:
        np.multiply(a, a, out=scratch)
        np.subtract(ONE.get(a.dtype, 1), scratch, out=scratch)
        d *= scratch


class ReLU:
    """σ(z) = max(z, 0), σ'(z) = 1 where z > 0, else 0."""

    @staticmethod
    def fn(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.maximum(z, 0, out=out) if out is not None else np.maximum(z, 0)

    @staticmethod
    def multiply_derivative(a: np.ndarray, d: np.ndarray, scratch: np.ndarray) -> None:
        np.copyto(d, 0, where=a <= 0)


ACTIVATIONS: dict[str, Activation] = {"sigmoid": Sigmoid, "relu": ReLU, "tanh": Tanh}
