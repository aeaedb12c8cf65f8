"""Dense (fully connected) networks with backpropagation written out by hand, in numpy.

What it does: affine layers `z = x @ W + b` followed by an activation (ReLU, sigmoid, tanh, GELU or
identity); losses (binary cross-entropy, categorical cross-entropy from logits, MSE, KL divergence)
that return their value *and* their gradient; a forward pass that caches exactly what the backward pass
needs (x, z, a per layer); the backward pass by the chain rule; a plain SGD update. With `trace=print`
every intermediate number is printed, labelled and to 4 decimals, in the order it is computed, and for a
single example each line shows its arithmetic, so that a worked example can be followed by hand.

What it deliberately does not do: no autograd, no graph, no batching tricks or dtype handling beyond
numpy's defaults (the tests use float64); it is the reference for learners, not a training library
(lmforge.models/training do that with torch). Weights are stored (n_in, n_out) so that a batch of row
vectors multiplies from the left; torch's nn.Linear stores the transpose.

References: Rumelhart, Hinton & Williams, "Learning representations by back-propagating errors"
(1986); Goodfellow, Bengio & Courville, *Deep Learning*, ch. 6.5; He et al., "Delving Deep into
Rectifiers" (2015) for the initialisation; Hendrycks & Gimpel, "GELUs" (2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lmforge.errors import ConfigError

Array = np.ndarray
Trace = Callable[[str], None]  # receives one printed line, e.g. `print`

# --- activations: forward a = f(z) and the elementwise derivative da/dz given (z, a) ---------------


def relu(z: Array) -> Array:
    return np.maximum(z, 0.0)


def sigmoid(z: Array) -> Array:
    # Stable for large |z|: exp only ever sees -|z|, so it cannot overflow.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_erf = np.vectorize(math.erf, otypes=[float])


def gelu(z: Array) -> Array:
    """Exact GELU, z·Φ(z) with Φ the standard normal CDF (torch's default, approximate='none')."""
    return 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0)))


def _gelu_derivative(z: Array, a: Array) -> Array:
    # d/dz [z Φ(z)] = Φ(z) + z φ(z)
    cdf = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


@dataclass(frozen=True)
class Activation:
    name: str
    forward: Callable[[Array], Array]
    derivative: Callable[[Array, Array], Array]  # (z, a) -> da/dz, elementwise


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation("identity", lambda z: z, lambda z, a: np.ones_like(z)),
    # ReLU'(0) = 0, as in torch.
    "relu": Activation("relu", relu, lambda z, a: (z > 0).astype(z.dtype)),
    "sigmoid": Activation("sigmoid", sigmoid, lambda z, a: a * (1.0 - a)),
    "tanh": Activation("tanh", np.tanh, lambda z, a: 1.0 - a**2),
    "gelu": Activation("gelu", gelu, _gelu_derivative),
}


def softmax(logits: Array, *, axis: int = -1) -> Array:
    """Softmax stabilised by subtracting the row max (exp never overflows; the result is unchanged)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(logits: Array, *, axis: int = -1) -> Array:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# --- losses: each returns (mean loss over the batch, gradient w.r.t. its first argument) -----------


def binary_cross_entropy(y_hat: Array, y: Array) -> tuple[float, Array]:
    """L = -mean(y ln ŷ + (1-y) ln(1-ŷ)) over all elements; ŷ are probabilities in (0, 1)."""
    n = y_hat.size
    loss = -np.mean(y * np.log(y_hat) + (1.0 - y) * np.log(1.0 - y_hat))
    return float(loss), (y_hat - y) / (y_hat * (1.0 - y_hat)) / n


def cross_entropy(logits: Array, targets: Array) -> tuple[float, Array]:
    """Categorical cross-entropy from logits (B, C) and integer class targets (B,).

    L = -mean_b log softmax(logits_b)[t_b]; dL/dlogits = (softmax - onehot) / B.
    """
    B = logits.shape[0]
    log_probs = log_softmax(logits)
    loss = -log_probs[np.arange(B), targets].mean()
    grad = np.exp(log_probs)
    grad[np.arange(B), targets] -= 1.0
    return float(loss), grad / B


def mse(y_hat: Array, y: Array) -> tuple[float, Array]:
    """L = mean((ŷ - y)²) over all elements; dL/dŷ = 2(ŷ - y)/N."""
    diff = y_hat - y
    return float(np.mean(diff**2)), 2.0 * diff / diff.size


def kl_divergence(logits: Array, p: Array) -> tuple[float, Array]:
    """KL(p ‖ q) with q = softmax(logits), summed over classes, averaged over the batch.

    Equals torch's `F.kl_div(F.log_softmax(logits, -1), p, reduction="batchmean")`. Terms with p = 0
    contribute 0 (the limit of p ln p). Since each row of p sums to 1, dL/dlogits = (q - p) / B.
    """
    B = logits.shape[0]
    log_q = log_softmax(logits)
    p_log_p = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    loss = (p_log_p - p * log_q).sum() / B
    return float(loss), (np.exp(log_q) - p) / B


LOSSES: dict[str, Callable[[Array, Array], tuple[float, Array]]] = {
    "bce": binary_cross_entropy,
    "cross_entropy": cross_entropy,
    "mse": mse,
    "kl": kl_divergence,
}


# --- printing helpers for trace mode ------------------------------------------------------------


def _f(v: float) -> str:
    """4 decimals; negatives in parentheses so that '0.5000*(-0.4134)' reads as arithmetic."""
    s = f"{v:.4f}"
    return f"({s})" if s.startswith("-") else s


def _index(idx: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, idx)) + "]"


def _emit_values(trace: Trace, label: str, values: Array) -> None:
    """One line per element: `label[i,j] = v`."""
    for idx in np.ndindex(values.shape):
        trace(f"{label}{_index(idx)} = {values[idx]:.4f}")


# --- layers and networks --------------------------------------------------------------------------


def he_normal(n_in: int, n_out: int, *, rng: np.random.Generator) -> tuple[Array, Array]:
    """He initialisation for ReLU layers: W ~ N(0, 2/n_in), b = 0, so activations keep their variance."""
    return rng.normal(0.0, math.sqrt(2.0 / n_in), size=(n_in, n_out)), np.zeros(n_out)


@dataclass
class Dense:
    """One layer, a = activation(x @ W + b). forward() caches x, z, a; backward_from_z() fills dW, db.

    The activation's derivative is applied by the caller (MLP), which knows whether the closed-form
    output error applies and prints each factor in trace mode.
    """

    W: Array  # (n_in, n_out)
    b: Array  # (n_out,)
    activation: str = "identity"  # a key of ACTIVATIONS
    cache: dict[str, Array] = field(default_factory=dict, repr=False)  # x, z, a of the last forward
    dW: Array | None = field(default=None, repr=False)  # dL/dW after backward, (n_in, n_out)
    db: Array | None = field(default=None, repr=False)  # dL/db after backward, (n_out,)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r}: choose one of {sorted(ACTIVATIONS)}")
        if self.W.ndim != 2 or self.b.shape != (self.W.shape[1],):
            raise ConfigError(
                f"Dense: W must be (n_in, n_out) and b (n_out,), got {self.W.shape}, {self.b.shape}"
            )

    def forward(self, x: Array) -> Array:
        z = x @ self.W + self.b  # (B, n_out)
        a = ACTIVATIONS[self.activation].forward(z)
        self.cache = {"x": x, "z": z, "a": a}
        return a

    def backward_from_z(self, delta: Array) -> Array:
        """Given δ = dL/dz (B, n_out), return dL/dx (B, n_in) and store dW = xᵀδ, db = Σ_batch δ."""
        self.dW = self.cache["x"].T @ delta  # (n_in, n_out)
        self.db = delta.sum(axis=0)  # (n_out,)
        return delta @ self.W.T  # (B, n_in)


class MLP:
    """A stack of Dense layers and a loss, trained by backprop + SGD; optionally tracing every number.

    Layers are numbered from 1 in the trace (x = a0, W1, z1, a1, ..., the last activation is ŷ). When
    the output is sigmoid + BCE, or logits + cross-entropy/KL, the output error δ = dL/dz is taken in its
    closed form (ŷ − y, softmax − target, divided by the batch size) instead of chaining through the
    activation's derivative: same value, fewer roundoff steps, and the form textbooks write down.
    """

    def __init__(self, layers: list[Dense], *, loss: str, trace: Trace | None = None):
        if loss not in LOSSES:
            raise ConfigError(f"loss {loss!r}: choose one of {sorted(LOSSES)}")
        if loss in ("cross_entropy", "kl") and layers[-1].activation != "identity":
            raise ConfigError(f"loss {loss!r} takes logits: the last layer's activation must be 'identity'")
        self.layers = layers
        self.loss = loss
        self.trace = trace

    def forward(self, x: Array) -> Array:
        a = x
        for number, layer in enumerate(self.layers, start=1):
            a = layer.forward(a)
            if self.trace:
                self._trace_forward(number, layer)
        return a

    def loss_and_backward(self, x: Array, y: Array) -> float:
        """Forward, loss, backward; afterwards every layer holds dW, db. Returns the loss."""
        y_hat = self.forward(x)
        loss, grad_y_hat = LOSSES[self.loss](y_hat, y)
        if self.trace:
            self._trace_loss(y_hat, y, loss)
        delta = self._output_delta(y_hat, y, grad_y_hat)
        for number in range(len(self.layers), 0, -1):
            layer = self.layers[number - 1]
            grad_a = layer.backward_from_z(delta)  # dL/da of the layer below (dL/dx for the first)
            if self.trace:
                self._trace_grads(number, layer, delta, grad_a)
            if number > 1:
                below = self.layers[number - 2]
                derivative = ACTIVATIONS[below.activation].derivative(below.cache["z"], below.cache["a"])
                delta = grad_a * derivative
                if self.trace:
                    self._trace_hidden_delta(number - 1, below, grad_a, derivative, delta)
        return loss

    def _output_delta(self, y_hat: Array, y: Array, grad_y_hat: Array) -> Array:
        """δL = dL/dz of the last layer."""
        L, last = len(self.layers), self.layers[-1]
        if self.loss == "bce" and last.activation == "sigmoid":
            delta = (y_hat - y) / y.size
            if self.trace:
                self.trace(f"-- backward: output error δ{L} = dL/dz{L} = (ŷ - y) / N")
                if y.size == 1:
                    self.trace(f"δ{L}[0] = {_f(y_hat.flat[0])} - {_f(y.flat[0])} = {delta.flat[0]:.4f}")
                else:
                    _emit_values(self.trace, f"δ{L}", delta)
            return delta
        if self.loss in ("cross_entropy", "kl"):
            if self.trace:
                self.trace(f"-- backward: output error δ{L} = dL/dz{L} = (softmax(z{L}) - target) / B")
                _emit_values(self.trace, f"δ{L}", grad_y_hat)
            return grad_y_hat  # the losses on logits already return dL/dz
        delta = grad_y_hat * ACTIVATIONS[last.activation].derivative(last.cache["z"], y_hat)
        if self.trace:
            self.trace(f"-- backward: δ{L} = dL/dŷ * {last.activation}'(z{L})")
            _emit_values(self.trace, "dL/dŷ", grad_y_hat)
            _emit_values(self.trace, f"δ{L}", delta)
        return delta

    def sgd_step(self, *, lr: float) -> None:
        """W ← W − lr·dW, b ← b − lr·db for every layer (call after loss_and_backward)."""
        for number, layer in enumerate(self.layers, start=1):
            if self.trace:
                for name, p, g in (("W", layer.W, layer.dW), ("b", layer.b, layer.db)):
                    for idx in np.ndindex(p.shape):
                        new = p[idx] - lr * g[idx]
                        self.trace(
                            f"{name}{number}{_index(idx)} = {_f(p[idx])} - {lr:g}*{_f(g[idx])} = {new:.4f}"
                        )
            layer.W -= lr * layer.dW
            layer.b -= lr * layer.db

    def train_step(self, x: Array, y: Array, *, lr: float) -> float:
        loss = self.loss_and_backward(x, y)
        if self.trace:
            self.trace(f"-- SGD update, lr = {lr:g}")
        self.sgd_step(lr=lr)
        return loss

    # --- trace printing: a single example gets its arithmetic spelt out; a batch gets values only ---

    def _trace_forward(self, number: int, layer: Dense) -> None:
        x, z, a = layer.cache["x"], layer.cache["z"], layer.cache["a"]
        below = "x" if number == 1 else f"a{number - 1}"
        self.trace(f"-- layer {number}: z{number} = {below} @ W{number} + b{number}")
        if x.shape[0] != 1:
            _emit_values(self.trace, f"z{number}", z)
        else:
            for j in range(z.shape[1]):
                terms = " + ".join(f"{_f(x[0, i])}*{_f(layer.W[i, j])}" for i in range(x.shape[1]))
                self.trace(f"z{number}[{j}] = {terms} + {_f(layer.b[j])} = {z[0, j]:.4f}")
        out = "ŷ" if number == len(self.layers) else f"a{number}"
        self.trace(f"{out} = {layer.activation}(z{number})")
        if x.shape[0] != 1:
            _emit_values(self.trace, out, a)
        else:
            for j in range(z.shape[1]):
                self.trace(f"{out}[{j}] = {layer.activation}({z[0, j]:.4f}) = {a[0, j]:.4f}")

    def _trace_loss(self, y_hat: Array, y: Array, loss: float) -> None:
        if self.loss == "bce" and y.size == 1:
            p, t = float(y_hat.flat[0]), float(y.flat[0])
            self.trace(
                f"loss = -[y ln ŷ + (1-y) ln(1-ŷ)] = -[{_f(t)}*ln({_f(p)}) + {_f(1 - t)}*ln({_f(1 - p)})]"
                f" = {loss:.4f}"
            )
        else:
            self.trace(f"loss ({self.loss}) = {loss:.4f}")

    def _trace_hidden_delta(
        self, number: int, layer: Dense, grad_a: Array, derivative: Array, delta: Array
    ) -> None:
        self.trace(f"-- δ{number} = dL/dz{number} = da{number} * {layer.activation}'(z{number})")
        if delta.shape[0] != 1:
            _emit_values(self.trace, f"δ{number}", delta)
            return
        for j in range(delta.shape[1]):
            self.trace(f"δ{number}[{j}] = {_f(grad_a[0, j])}*{_f(derivative[0, j])} = {delta[0, j]:.4f}")

    def _trace_grads(self, number: int, layer: Dense, delta: Array, grad_x: Array) -> None:
        x = layer.cache["x"]
        below = "x" if number == 1 else f"a{number - 1}"
        self.trace(f"dW{number} = {below}ᵀ @ δ{number}, db{number} = δ{number}")
        if x.shape[0] == 1:
            for i, j in np.ndindex(layer.dW.shape):
                self.trace(f"dW{number}[{i},{j}] = {_f(x[0, i])}*{_f(delta[0, j])} = {layer.dW[i, j]:.4f}")
        else:
            _emit_values(self.trace, f"dW{number}", layer.dW)
        _emit_values(self.trace, f"db{number}", layer.db)
        if number > 1:
            self.trace(f"da{number - 1} = δ{number} @ W{number}ᵀ")
            if x.shape[0] == 1:
                for i in range(grad_x.shape[1]):
                    terms = " + ".join(
                        f"{_f(layer.W[i, j])}*{_f(delta[0, j])}" for j in range(delta.shape[1])
                    )
                    self.trace(f"da{number - 1}[{i}] = {terms} = {grad_x[0, i]:.4f}")
            else:
                _emit_values(self.trace, f"da{number - 1}", grad_x)
