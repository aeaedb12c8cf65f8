"""XOR learned from scratch: a 2-4-1 network (ReLU hidden, sigmoid output, BCE), full-batch SGD.

What it does: initialises the hidden layer with He initialisation from a seeded numpy Generator,
trains on the four XOR points, reports the loss every `log_every` epochs and returns the final
predictions. XOR is the classic example that no single linear layer can fit; one hidden layer can.

What it deliberately does not do: no minibatches, no momentum, no early stopping — the point is to
watch plain gradient descent (lmforge.scratch.dense) solve a problem that is not linearly separable.

References: Minsky & Papert, *Perceptrons* (1969) on XOR; Rumelhart et al. (1986); He et al. (2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmforge.errors import ConfigError
from lmforge.scratch.dense import MLP, Dense, Trace, he_normal

XOR_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # (4, 2)
XOR_Y = np.array([[0.0], [1.0], [1.0], [0.0]])  # (4, 1)


@dataclass
class XorResult:
    losses: list[float]  # the loss of every epoch, before that epoch's update
    probabilities: np.ndarray  # (4, 1) ŷ on XOR_X after training
    accuracy: float  # fraction of the 4 points with (ŷ > 0.5) == y


def train_xor(
    *,
    hidden: int = 4,
    epochs: int = 2000,
    lr: float = 0.5,
    seed: int = 0,
    log_every: int = 200,
    trace: Trace | None = None,
) -> XorResult:
    """Train the 2-hidden-1 network; with `trace`, print `epoch N: loss = ...` every `log_every` epochs."""
    if hidden < 2 or epochs < 1 or lr <= 0 or log_every < 1:
        raise ConfigError("train_xor: need hidden >= 2, epochs >= 1, lr > 0 and log_every >= 1")
    rng = np.random.default_rng(seed)
    W1, b1 = he_normal(2, hidden, rng=rng)
    W2, b2 = he_normal(hidden, 1, rng=rng)
    net = MLP([Dense(W1, b1, "relu"), Dense(W2, b2, "sigmoid")], loss="bce")
    losses = []
    for epoch in range(epochs):
        loss = net.train_step(XOR_X, XOR_Y, lr=lr)
        losses.append(loss)
        if trace and (epoch % log_every == 0 or epoch == epochs - 1):
            trace(f"epoch {epoch:5d}: loss = {loss:.4f}")
    probabilities = net.forward(XOR_X)
    accuracy = float(np.mean((probabilities > 0.5) == (XOR_Y > 0.5)))
    if trace:
        for x, y, p in zip(XOR_X, XOR_Y, probabilities, strict=True):
            trace(
                f"x = ({x[0]:.0f}, {x[1]:.0f})  y = {y[0]:.0f}  ŷ = {p[0]:.4f}  predicted = {int(p[0] > 0.5)}"
            )
        trace(f"accuracy = {accuracy:.4f}")
    return XorResult(losses=losses, probabilities=probabilities, accuracy=accuracy)
