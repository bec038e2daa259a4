"""A fully connected feedforward network in NumPy, trained by backpropagation.

Notation follows Nielsen's *Neural Networks and Deep Learning*, for a mini-batch of m rows:

    a⁰ = x                              the input (one image a row)
    zˡ = aˡ⁻¹ Wˡ + bˡ                   the weighted input of layer l
    aˡ = σ(zˡ)                          its activation
    δᴸ = ∂C/∂zᴸ                         the error of the output layer
    δˡ = (δˡ⁺¹ (Wˡ⁺¹)ᵀ) ⊙ σ'(zˡ)       backpropagated to hidden layer l
    ∂C/∂Wˡ = (aˡ⁻¹)ᵀ δˡ,  ∂C/∂bˡ = Σ_rows δˡ

Rows are examples, so Wˡ has shape (n_in, n_out) — the transpose of Nielsen's layout.

Costs, per example, averaged over the mini-batch:
    quadratic      C = ½ Σⱼ (aⱼ − yⱼ)²      with sigmoid output units (the book's ½, so that
                                            η = 3.0 means what it means there)
    cross_entropy  C = −Σⱼ yⱼ ln aⱼ         with softmax output units
plus, when l2 > 0, the weight penalty (l2 / 2n) Σ w² over all weights (not biases), with
n the training-set size (Nielsen's convention).

All weights and biases live in one flat array `params`; `weights[l]` and `biases[l]` are
views into it, each bias row stored right after its weight matrix. A gradient has the
same layout, so an SGD step is one vector operation, and a layer's [W; b] block multiplies
an activation with a column of ones appended in a single matmul.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import expit

from pipeline.errors import PipelineError

ACTIVATIONS = ("sigmoid", "relu", "tanh")
COSTS = ("quadratic", "cross_entropy")
INITS = ("normal", "scaled", "he", "glorot")


class Network:
    """sizes = [784, 16, 16, 10] is the classic network: 13,002 weights and biases."""

    def __init__(self, sizes, activation="sigmoid", cost="quadratic", init="normal",
                 dtype="float32", rng: np.random.Generator | None = None):
        self.sizes = [int(s) for s in sizes]
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise PipelineError(f"layer sizes {sizes} need an input and an output layer, all ≥1")
        for value, allowed, what in ((activation, ACTIVATIONS, "activation"),
                                     (cost, COSTS, "cost"), (init, INITS, "init")):
            if value not in allowed:
                raise PipelineError(f"{what}={value!r} is unknown: choose one of {allowed}")
        self.activation, self.cost, self.init = activation, cost, init
        self.dtype = np.dtype(dtype)
        # Block l holds [Wˡ; bˡ]: (n_in + 1) rows of n_out.
        self._blocks = [((n_in + 1) * n_out, n_in, n_out)
                        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:])]
        self.params = np.zeros(sum(b[0] for b in self._blocks), dtype=self.dtype)
        self.blocks = self.split(self.params)
        self.weights = [blk[:-1] for blk in self.blocks]
        self.biases = [blk[-1] for blk in self.blocks]
        self._initialize(rng or np.random.default_rng(0))

    # ---- parameters -------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return self.params.size

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """Views of a flat parameter-shaped array as the per-layer [W; b] blocks."""
        views, offset = [], 0
        for size, n_in, n_out in self._blocks:
            views.append(flat[offset:offset + size].reshape(n_in + 1, n_out))
            offset += size
        return views

    def weight_mask(self) -> np.ndarray:
        """1 where `params` holds a weight, 0 where it holds a bias (L2 spares biases)."""
        mask = np.ones_like(self.params)
        for blk in self.split(mask):
            blk[-1] = 0
        return mask

    def _initialize(self, rng: np.random.Generator) -> None:
        """normal: w, b ~ N(0, 1) (the classic); scaled: w ~ N(0, 1/n_in), b ~ N(0, 1);
        he: w ~ N(0, 2/n_in), b = 0; glorot: w ~ N(0, 2/(n_in + n_out)), b = 0."""
        for w, b in zip(self.weights, self.biases):
            n_in, n_out = w.shape
            std = {"normal": 1.0, "scaled": np.sqrt(1 / n_in), "he": np.sqrt(2 / n_in),
                   "glorot": np.sqrt(2 / (n_in + n_out))}[self.init]
            w[...] = rng.standard_normal(w.shape) * std
            b[...] = rng.standard_normal(b.shape) if self.init in ("normal", "scaled") else 0

    # ---- forward ----------------------------------------------------------------------
    def feedforward(self, x: np.ndarray) -> np.ndarray:
        """The output activations aᴸ for the rows of x."""
        a = np.asarray(x, dtype=self.dtype)
        last = len(self.weights) - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = a @ w + b
            a = _output(self.cost, z) if l == last else _activate(self.activation, z)
        return a

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The classification: the index of the brightest output neuron."""
        return np.argmax(self.feedforward(x), axis=1)

    def evaluate(self, x: np.ndarray, y: np.ndarray, l2: float = 0.0, n: int | None = None,
                 chunk: int = 10000) -> tuple[float, float]:
        """(mean cost C, accuracy) over labelled rows, in chunks to bound memory."""
        total_cost, correct = 0.0, 0
        for i in range(0, len(y), chunk):
            a = self.feedforward(x[i:i + chunk])
            yb = y[i:i + chunk]
            total_cost += float(example_costs(self.cost, a, yb).sum())
            correct += int((a.argmax(axis=1) == yb).sum())
        cost = total_cost / len(y) + self.l2_penalty(l2, n or len(y))
        return cost, correct / len(y)

    def l2_penalty(self, l2: float, n: int) -> float:
        if not l2:
            return 0.0
        return l2 / (2 * n) * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in self.weights)

    # ---- backward ---------------------------------------------------------------------
    def gradient(self, x: np.ndarray, y: np.ndarray, l2: float = 0.0,
                 n: int | None = None) -> np.ndarray:
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
        np.savez(path, sizes=np.array(self.sizes), params=self.params,
                 activation=self.activation, cost=self.cost, init=self.init)

    @classmethod
    def load(cls, path: str | Path) -> "Network":
        with np.load(path, allow_pickle=False) as f:
            net = cls(f["sizes"].tolist(), str(f["activation"]), str(f["cost"]),
                      str(f["init"]), dtype=f["params"].dtype)
            net.params[...] = f["params"]
        return net


class Workspace:
    """Preallocated buffers for backprop on mini-batches of m rows, writing into `grad`.

    Training runs thousands of tiny steps; allocating nothing per step and writing every
    intermediate in place (out=...) keeps NumPy's per-call overhead the main cost. Every
    layer's input carries a trailing column of ones, so zˡ = [aˡ⁻¹, 1] [Wˡ; bˡ] is one
    matmul and ∂C/∂[Wˡ; bˡ] = [aˡ⁻¹, 1]ᵀ δˡ is another.
    """

    def __init__(self, net: Network, m: int, grad: np.ndarray):
        self.net, self.grad_blocks = net, net.split(grad)
        dt, hidden = net.dtype, net.sizes[1:-1]
        self.hidden = [np.ones((m, n + 1), dtype=dt) for n in hidden]  # [aˡ, 1]
        self.z = [np.empty((m, n), dtype=dt) for n in hidden]
        self.out = np.empty((m, net.sizes[-1]), dtype=dt)
        self.deltas = [np.empty((m, n), dtype=dt) for n in net.sizes[1:]]
        self.scratch = np.empty_like(self.out)

    def backprop(self, x1: np.ndarray, onehot: np.ndarray, scale: float) -> None:
        """Write scale · Σ_rows ∂C_x/∂params into the gradient buffer.

        x1 holds the inputs with a trailing column of ones. With scale = η/m the gradient
        buffer is the SGD step itself: params −= grad.
        """
        net, blocks, act = self.net, self.net.blocks, self.net.activation
        inputs = [x1, *self.hidden]  # [aˡ⁻¹, 1] for each layer l
        for l, z in enumerate(self.z):  # forward through the hidden layers
            np.dot(inputs[l], blocks[l], out=z)
            _activate(act, z, out=inputs[l + 1][:, :-1])
        a_out = _output(net.cost, np.dot(inputs[-1], blocks[-1], out=self.out), out=self.out)

        d = self.deltas[-1]  # δᴸ, multiplied by `scale`
        np.subtract(a_out, onehot, out=d)
        if net.cost == "quadratic":  # ∂C/∂zᴸ = (a − y) ⊙ σ'(zᴸ), σ' = a(1 − a)
            t = np.multiply(a_out, -scale, out=self.scratch)
            t += scale
            t *= a_out
            d *= t
        else:  # softmax + cross-entropy: ∂C/∂zᴸ = a − y
            d *= scale

        for l in range(len(blocks) - 1, -1, -1):  # backward
            np.dot(inputs[l].T, self.deltas[l], out=self.grad_blocks[l])
            if l:  # δˡ⁻¹ = δˡ Wˡᵀ ⊙ σ'(zˡ⁻¹)
                prev = self.deltas[l - 1]
                np.dot(self.deltas[l], blocks[l][:-1].T, out=prev)
                _multiply_by_derivative(act, inputs[l][:, :-1], prev, self.z[l - 1])


def with_ones_column(x: np.ndarray) -> np.ndarray:
    """[x, 1]: the rows of x with a 1 appended, the input a Workspace expects."""
    return np.hstack([x, np.ones((len(x), 1), dtype=x.dtype)])


# ---- activation functions and their derivatives ---------------------------------------

def _activate(name: str, z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """σ(z) for a hidden layer."""
    if name == "sigmoid":
        return expit(z, out=out) if out is not None else expit(z)
    if name == "tanh":
        return np.tanh(z, out=out) if out is not None else np.tanh(z)
    return np.maximum(z, 0, out=out) if out is not None else np.maximum(z, 0)


def _multiply_by_derivative(name: str, a: np.ndarray, d: np.ndarray, t: np.ndarray) -> None:
    """d ⊙= σ'(z), computed from the activation a = σ(z); t is scratch space."""
    if name == "sigmoid":  # σ' = a(1 − a)
        np.subtract(1, a, out=t)
        t *= a
        d *= t
    elif name == "tanh":  # σ' = 1 − a²
        np.multiply(a, a, out=t)
        np.subtract(1, t, out=t)
        d *= t
    else:  # relu: σ' = 1 where a > 0, else 0
        np.copyto(d, 0, where=a <= 0)


def _output(cost: str, z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Output activations: sigmoid units for the quadratic cost, softmax for cross-entropy."""
    if cost == "quadratic":
        return expit(z, out=out) if out is not None else expit(z)
    out = np.subtract(z, z.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def example_costs(cost: str, a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """C_x for each row: output activations a against integer labels y."""
    if cost == "quadratic":
        onehot = np.eye(a.shape[1], dtype=a.dtype)[y]
        return 0.5 * np.sum((a - onehot) ** 2, axis=1, dtype=np.float64)
    p = a[np.arange(len(y)), y].astype(np.float64)
    return -np.log(np.maximum(p, np.finfo(a.dtype).tiny))
