"""A fully connected feedforward network in NumPy, trained by backpropagation.

Notation follows Nielsen's *Neural Networks and Deep Learning*, for a mini-batch of m rows:

    a⁰ = x                              the input (one image a row)
    zˡ = aˡ⁻¹ Wˡ + bˡ                   the weighted input of layer l
    aˡ = σ(zˡ)                          its activation
    δᴸ = ∂C/∂zᴸ                         the error of the output layer
    δˡ = (δˡ⁺¹ (Wˡ⁺¹)ᵀ) ⊙ σ'(zˡ)       backpropagated to hidden layer l
    ∂C/∂Wˡ = (aˡ⁻¹)ᵀ δˡ,  ∂C/∂bˡ = Σ_rows δˡ

Rows are examples, so Wˡ has shape (n_in, n_out) — the transpose of Nielsen's layout.

The cost C, per example and averaged over the mini-batch, is one of costs.COSTS (each with
its output units); σ is one of activations.ACTIVATIONS. When l2 > 0 the cost gains the
weight penalty (l2 / 2n) Σ w² over all weights (not biases), with n the training-set size
(Nielsen's convention).

All weights and biases live in one flat array `params`; `weights[l]` and `biases[l]` are
views into it, each bias row stored right after its weight matrix. A gradient has the
same layout, so an SGD step is one vector operation, and a layer's [W; b] block multiplies
an activation with a column of ones appended in a single matmul.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .activations import ACTIVATIONS
from .costs import COSTS, Scale
from .errors import EngineError

# Initial weights w ~ N(0, std²) with std from (n_in, n_out); biases ~ N(0, 1) or 0.
INITS = {
    "normal": (lambda n_in, n_out: 1.0, "normal"),  # the classic
    "scaled": (lambda n_in, n_out: np.sqrt(1 / n_in), "normal"),  # Nielsen ch. 3
    "he": (lambda n_in, n_out: np.sqrt(2 / n_in), "zero"),
    "glorot": (lambda n_in, n_out: np.sqrt(2 / (n_in + n_out)), "zero"),
}


class Network:
    """sizes = [784, 16, 16, 10] is the classic network: 13,002 weights and biases."""

    def __init__(
        self,
        sizes,
        activation="sigmoid",
        cost="quadratic",
        init="normal",
        dtype="float32",
        rng: np.random.Generator | None = None,
    ):
        self.sizes = [int(s) for s in sizes]
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise EngineError(f"layer sizes {sizes} need an input and an output layer, all ≥1")
        for value, table, what in (
            (activation, ACTIVATIONS, "activation"),
            (cost, COSTS, "cost"),
            (init, INITS, "init"),
        ):
            if value not in table:
                raise EngineError(f"{what}={value!r} is unknown: choose one of {tuple(table)}")
        self.activation, self.cost, self.init = activation, cost, init
        self.sigma, self.C = ACTIVATIONS[activation], COSTS[cost]
        self.dtype = np.dtype(dtype)
        # Block l holds [Wˡ; bˡ]: (n_in + 1) rows of n_out.
        self._blocks = [
            ((n_in + 1) * n_out, n_in, n_out)
            for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:])
        ]
        self.params = np.zeros(sum(b[0] for b in self._blocks), dtype=self.dtype)
        self.blocks = self.split(self.params)
        self.weights = [blk[:-1] for blk in self.blocks]
        self.biases = [blk[-1] for blk in self.blocks]
        self._initialize(rng or np.random.default_rng(0))

    @classmethod
    def from_spec(
        cls,
        spec: Mapping,
        n_inputs: int,
        n_outputs: int = 10,
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> Network:
        """The one factory from plain config data: spec holds hidden_sizes, activation, cost
        and init (other keys, such as a preset's name, are ignored)."""
        return cls(
            [n_inputs, *spec["hidden_sizes"], n_outputs],
            spec["activation"],
            spec["cost"],
            spec["init"],
            dtype,
            rng=rng,
        )

    @property
    def spec(self) -> dict:
        """What from_spec needs to build this network again (plain data)."""
        return {
            "hidden_sizes": self.sizes[1:-1],
            "activation": self.activation,
            "cost": self.cost,
            "init": self.init,
        }

    # ---- parameters -------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return self.params.size

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """Views of a flat parameter-shaped array as the per-layer [W; b] blocks."""
        views, offset = [], 0
        for size, n_in, n_out in self._blocks:
            views.append(flat[offset : offset + size].reshape(n_in + 1, n_out))
            offset += size
        return views

    def weight_mask(self) -> np.ndarray:
        """1 where `params` holds a weight, 0 where it holds a bias (L2 spares biases)."""
        mask = np.ones_like(self.params)
        for blk in self.split(mask):
            blk[-1] = 0
        return mask

    def limit_norms(self, c: float) -> None:
        """Max-norm: scale each unit's incoming weight vector (a column of Wˡ) down to
        ‖w‖ = c where it is longer; biases are left alone."""
        for w in self.weights:
            norms = np.sqrt(np.einsum("ij,ij->j", w, w))
            w *= np.minimum(1, c / np.maximum(norms, np.finfo(w.dtype).tiny)).astype(w.dtype)

    def _initialize(self, rng: np.random.Generator) -> None:
        """Weights from INITS[init]; biases N(0, 1) for normal and scaled, else 0."""
        std_of, bias = INITS[self.init]
        for w, b in zip(self.weights, self.biases):
            w[...] = rng.standard_normal(w.shape) * std_of(*w.shape)
            b[...] = rng.standard_normal(b.shape) if bias == "normal" else 0

    # ---- forward ----------------------------------------------------------------------
    def feedforward(self, x: np.ndarray) -> np.ndarray:
        """The output activations aᴸ for the rows of x."""
        return self.activations(x)[-1]

    def activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Every layer's activations [a⁰ = x, a¹, …, aᴸ] for the rows of x: aˡ = σ(zˡ)
        in the hidden layers, the cost's output units in the last."""
        a = np.asarray(x, dtype=self.dtype)
        layers = [a]
        last = len(self.weights) - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = a @ w + b
            a = self.C.output(z) if l == last else self.sigma.fn(z)
            layers.append(a)
        return layers

    def outputs(self, x: np.ndarray, chunk: int = 10000) -> np.ndarray:
        """feedforward over many rows, in chunks to bound memory."""
        return np.concatenate([self.feedforward(x[i : i + chunk]) for i in range(0, len(x), chunk)])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The classification: the index of the brightest output neuron."""
        return np.argmax(self.feedforward(x), axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (float64 rows summing to 1), the cost's reading of aᴸ."""
        return self.C.probabilities(self.outputs(x))

    def total_cost(
        self, a: np.ndarray, y: np.ndarray, l2: float = 0.0, n: int | None = None
    ) -> float:
        """C = mean of C_x over the rows, plus the L2 penalty (λ/2n) Σ w² when l2 > 0."""
        return float(self.C.fn(a, y).sum()) / len(y) + self.l2_penalty(l2, n or len(y))

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, l2: float = 0.0, n: int | None = None
    ) -> tuple[float, float]:
        """(cost C, accuracy) over labelled rows."""
        a = self.outputs(x)
        return self.total_cost(a, y, l2, n), float(np.mean(a.argmax(axis=1) == y))

    def l2_penalty(self, l2: float, n: int) -> float:
        if not l2:
            return 0.0
        return l2 / (2 * n) * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in self.weights)

    # ---- backward ---------------------------------------------------------------------
    def gradient(
        self, x: np.ndarray, y: np.ndarray, l2: float = 0.0, n: int | None = None
    ) -> np.ndarray:
        """∂C/∂params for the mean cost over the rows (x, y), as a flat array.

        Runs the same backprop as training (a Workspace), with learning rate 1.
        """
        x1 = with_ones_column(np.asarray(x, dtype=self.dtype))
        onehot = np.eye(self.sizes[-1], dtype=self.dtype)[y]
        grad = np.empty_like(self.params)
        Workspace(self, len(x1), grad).backprop(x1, onehot, scale=1.0 / len(x1))
        if l2:
            grad += (l2 / (n or len(x))) * self.weight_mask() * self.params
        return grad

    # ---- save / load (npz, never pickle) ----------------------------------------------
    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            sizes=np.array(self.sizes),
            params=self.params,
            activation=self.activation,
            cost=self.cost,
            init=self.init,
        )

    @classmethod
    def load(cls, path: str | Path) -> Network:
        with np.load(path, allow_pickle=False) as f:
            net = cls(
                f["sizes"].tolist(),
                str(f["activation"]),
                str(f["cost"]),
                str(f["init"]),
                dtype=f["params"].dtype,
            )
            net.params[...] = f["params"]
        return net


class Workspace:
    """Preallocated buffers for backprop on mini-batches of m rows, writing into `grad`.

    Training runs thousands of tiny steps; allocating nothing per step and writing every
    intermediate in place (out=...) keeps NumPy's per-call overhead the main cost. Every
    layer's input carries a trailing column of ones, so zˡ = [aˡ⁻¹, 1] [Wˡ; bˡ] is one
    matmul and ∂C/∂[Wˡ; bˡ] = [aˡ⁻¹, 1]ᵀ δˡ is another. At batch 10 a step takes ~20 µs,
    so layout matters: each hidden activation is also kept in a contiguous buffer of its
    own (elementwise NumPy calls on the strided columns of [aˡ, 1] cost about twice as
    much), and the views a step uses ([aˡ, 1]ᵀ, Wˡᵀ) are made once, here.
    """

    def __init__(
        self,
        net: Network,
        m: int,
        grad: np.ndarray,
        dropout_input: float = 0.0,
        dropout_hidden: float = 0.0,
        rng: np.random.Generator | None = None,
    ):
        self.net, self.grad_blocks = net, net.split(grad)
        dt, hidden = net.dtype, net.sizes[1:-1]
        self.a = [np.empty((m, n), dtype=dt) for n in hidden]  # aˡ = σ(zˡ)
        self.hidden = [np.ones((m, n + 1), dtype=dt) for n in hidden]  # [aˡ, 1], aˡ dropped
        self.hidden_a = [h[:, :-1] for h in self.hidden]  # views: the aˡ part
        self.hidden_T = [h.T for h in self.hidden]  # views: [aˡ, 1]ᵀ
        self.weights_T = [w.T for w in net.weights]  # views: Wˡᵀ
        self.z = [np.empty((m, n), dtype=dt) for n in hidden]
        self.out = np.empty((m, net.sizes[-1]), dtype=dt)
        self.deltas = [np.empty((m, n), dtype=dt) for n in net.sizes[1:]]
        self.scratch = np.empty_like(self.out)
        # Dropout: a mask per layer, 1/(1 − p) for a kept unit and 0 for a dropped one.
        self.keep_input, self.keep_hidden, self.rng = 1 - dropout_input, 1 - dropout_hidden, rng
        if (dropout_input or dropout_hidden) and rng is None:
            raise EngineError("dropout needs a random generator")
        self.input_mask = np.empty((m, net.sizes[0]), dtype=dt) if dropout_input else None
        self.masks = [np.empty((m, n), dtype=dt) for n in hidden] if dropout_hidden else None

    def _drop(self, a: np.ndarray, mask: np.ndarray, keep: float) -> None:
        """a ⊙= mask, with mask = 1/keep where uniform < keep, else 0 (a fresh draw)."""
        assert self.rng is not None  # checked when the workspace was made
        self.rng.random(out=mask, dtype=mask.dtype)
        np.less(mask, keep, out=mask, casting="unsafe")
        mask *= 1 / keep
        a *= mask

    def backprop(self, x1: np.ndarray, onehot: np.ndarray, scale: Scale) -> None:
        """Write scale · Σ_rows ∂C_x/∂params into the gradient buffer.

        x1 holds the inputs with a trailing column of ones. With scale = η/m the gradient
        buffer is the SGD step itself: params −= grad.
        """
        net, blocks, sigma = self.net, self.net.blocks, self.net.sigma
        if self.input_mask is not None:  # dropped in place: x1 is the caller's batch copy
            self._drop(x1[:, :-1], self.input_mask, self.keep_input)
        inputs = [x1, *self.hidden]  # [aˡ⁻¹, 1] for each layer l
        for l, z in enumerate(self.z):  # forward through the hidden layers
            np.dot(inputs[l], blocks[l], out=z)
            a = self.hidden_a[l]
            np.copyto(a, sigma.fn(z, out=self.a[l]))  # σ(z) stays undropped, for σ' below
            if self.masks is not None:
                self._drop(a, self.masks[l], self.keep_hidden)
        a_out = net.C.output(np.dot(inputs[-1], blocks[-1], out=self.out), out=self.out)
        net.C.delta(a_out, onehot, scale, out=self.deltas[-1], scratch=self.scratch)  # δᴸ

        inputs_T = [x1.T, *self.hidden_T]
        for l in range(len(blocks) - 1, -1, -1):  # backward
            np.dot(inputs_T[l], self.deltas[l], out=self.grad_blocks[l])
            if l:  # δˡ⁻¹ = δˡ Wˡᵀ ⊙ σ'(zˡ⁻¹); z's buffer is free by now, used as scratch
                prev = np.dot(self.deltas[l], self.weights_T[l], out=self.deltas[l - 1])
                if self.masks is not None:  # a dropped unit passes no error back
                    prev *= self.masks[l - 1]
                sigma.multiply_derivative(self.a[l - 1], prev, self.z[l - 1])


def with_ones_column(x: np.ndarray) -> np.ndarray:
    """[x, 1]: the rows of x with a 1 appended, the input a Workspace expects."""
    return np.hstack([x, np.ones((len(x), 1), dtype=x.dtype)])
