"""lmforge.scratch.dense, gradcheck and xor: hand-worked backprop, gradients against torch autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.scratch.dense import MLP, Dense, softmax
from lmforge.scratch.gradcheck import numerical_gradient, relative_error
from lmforge.scratch.xor import train_xor


def _worked_example_net(trace=None) -> MLP:
    return MLP(
        [
            Dense(np.array([[0.2, -0.3], [0.4, 0.1]]), np.array([0.1, -0.2]), "relu"),
            Dense(np.array([[0.6], [-0.5]]), np.array([0.05]), "sigmoid"),
        ],
        loss="bce",
        trace=trace,
    )


def test_worked_example_2_2_1_by_hand():
    """x = [1, 0.5], y = 1, lr = 0.5; W1[i,j] = input i -> hidden j = [[0.2, -0.3], [0.4, 0.1]],
    b1 = [0.1, -0.2], W2 = [[0.6], [-0.5]], b2 = 0.05.

    forward:  z1[0] = 1·0.2 + 0.5·0.4 + 0.1 = 0.5        z1[1] = 1·(-0.3) + 0.5·0.1 - 0.2 = -0.45
              a1 = relu(z1) = [0.5, 0]
              z2 = 0.5·0.6 + 0·(-0.5) + 0.05 = 0.35     ŷ = 1/(1 + e^-0.35) = 0.586618
              loss = -ln ŷ = 0.533382
    backward: δ2 = ŷ - y = -0.413382
              dW2 = a1ᵀ δ2 = [0.5·δ2, 0·δ2] = [-0.206691, 0]      db2 = δ2
              da1 = δ2 W2ᵀ = [0.6·δ2, -0.5·δ2] = [-0.248029, 0.206691]
              δ1 = da1 · relu'(z1) = [-0.248029, 0]   (unit 1 is off: its gradient is blocked)
              dW1 = xᵀ δ1 = [[1·δ1[0], 0], [0.5·δ1[0], 0]]         db1 = δ1
    update:   W1[0,0] = 0.2 - 0.5·(-0.248029) = 0.324015,  W1[1,0] = 0.4 - 0.5·(-0.124015) = 0.462007
              b1[0] = 0.1 + 0.124015 = 0.224015,  W2[0,0] = 0.6 + 0.103346 = 0.703346,
              b2 = 0.05 + 0.206691 = 0.256691; the weights into/out of the dead unit are unchanged.
    """
    net = _worked_example_net()
    loss = net.train_step(np.array([[1.0, 0.5]]), np.array([[1.0]]), lr=0.5)
    y_hat = 1.0 / (1.0 + math.exp(-0.35))
    delta2 = y_hat - 1.0
    delta1 = 0.6 * delta2
    hidden, out = net.layers
    assert loss == pytest.approx(-math.log(y_hat), abs=1e-12)
    assert loss == pytest.approx(0.533382, abs=1e-6) and delta2 == pytest.approx(-0.413382, abs=1e-6)
    np.testing.assert_allclose(hidden.cache["z"], [[0.5, -0.45]], atol=1e-12)
    np.testing.assert_allclose(out.cache["z"], [[0.35]], atol=1e-12)
    np.testing.assert_allclose(out.dW, [[0.5 * delta2], [0.0]], atol=1e-12)
    np.testing.assert_allclose(out.db, [delta2], atol=1e-12)
    np.testing.assert_allclose(hidden.dW, [[delta1, 0.0], [0.5 * delta1, 0.0]], atol=1e-12)
    np.testing.assert_allclose(hidden.db, [delta1, 0.0], atol=1e-12)
    np.testing.assert_allclose(hidden.W, [[0.2 - 0.5 * delta1, -0.3], [0.4 - 0.25 * delta1, 0.1]], atol=1e-12)
    np.testing.assert_allclose(hidden.W, [[0.324015, -0.3], [0.462007, 0.1]], atol=1e-6)
    np.testing.assert_allclose(hidden.b, [0.224015, -0.2], atol=1e-6)
    np.testing.assert_allclose(out.W, [[0.703346], [-0.5]], atol=1e-6)
    np.testing.assert_allclose(out.b, [0.256691], atol=1e-6)


def test_relu_derivative_at_zero_is_zero_as_in_torch():
    """Hidden unit 1 gets z = 1·(-0.5) + 0.5·1.0 + 0 = 0 exactly: relu'(0) = 0 (torch's convention),
    so no gradient reaches its weights or bias, while unit 0 (z = 0.5) passes δ1[0] = 0.6·δ2."""
    net = MLP(
        [
            Dense(np.array([[0.2, -0.5], [0.4, 1.0]]), np.array([0.1, 0.0]), "relu"),
            Dense(np.array([[0.6], [-0.5]]), np.array([0.05]), "sigmoid"),
        ],
        loss="bce",
    )
    net.loss_and_backward(np.array([[1.0, 0.5]]), np.array([[1.0]]))
    hidden = net.layers[0]
    assert hidden.cache["z"][0, 1] == 0.0
    delta1 = 0.6 * (1.0 / (1.0 + math.exp(-0.35)) - 1.0)
    np.testing.assert_allclose(hidden.db, [delta1, 0.0], atol=1e-12)
    np.testing.assert_allclose(hidden.dW, [[delta1, 0.0], [0.5 * delta1, 0.0]], atol=1e-12)
    z = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    torch.relu(z).sum().backward()
    assert z.grad.tolist() == [0.0, 0.0, 1.0]


def test_trace_prints_every_quantity_in_computation_order():
    lines: list[str] = []
    _worked_example_net(trace=lines.append).train_step(np.array([[1.0, 0.5]]), np.array([[1.0]]), lr=0.5)
    text = "\n".join(lines)
    expected_in_order = [
        "z1[0] = 1.0000*0.2000 + 0.5000*0.4000 + 0.1000 = 0.5000",
        "a1[1] = relu(-0.4500) = 0.0000",
        "z2[0] = 0.5000*0.6000 + 0.0000*(-0.5000) + 0.0500 = 0.3500",
        "ŷ[0] = sigmoid(0.3500) = 0.5866",
        "= 0.5334",  # the loss
        "δ2[0] = 0.5866 - 1.0000 = -0.4134",
        "dW2[0,0] = 0.5000*(-0.4134) = -0.2067",
        "da1[0] = 0.6000*(-0.4134) = -0.2480",
        "δ1[1] = 0.2067*0.0000 = 0.0000",
        "dW1[1,0] = 0.5000*(-0.2480) = -0.1240",
        "W1[0,0] = 0.2000 - 0.5*(-0.2480) = 0.3240",
        "b2[0] = 0.0500 - 0.5*(-0.4134) = 0.2567",
    ]
    positions = [text.index(s) for s in expected_in_order]
    assert positions == sorted(positions)


def _torch_forward(layers, x, activation_names):
    a = x
    for (W, b), name in zip(layers, activation_names, strict=True):
        z = a @ W + b
        a = {
            "identity": lambda t: t,
            "relu": torch.relu,
            "sigmoid": torch.sigmoid,
            "tanh": torch.tanh,
            "gelu": F.gelu,
        }[name](z)
    return a


@pytest.mark.parametrize(
    "activations, loss",
    [
        (("relu", "tanh", "sigmoid"), "bce"),
        (("gelu", "sigmoid", "identity"), "cross_entropy"),
        (("tanh", "relu", "identity"), "mse"),
        (("sigmoid", "gelu", "identity"), "kl"),
        (("relu", "gelu", "tanh"), "mse"),  # output activation chained through its derivative
        (("tanh", "sigmoid", "sigmoid"), "mse"),
    ],
)
def test_gradients_match_torch_autograd(activations, loss):
    rng = np.random.default_rng(0)
    sizes = [5, 7, 6, 3]
    B = 4
    params = [(rng.normal(size=(m, n)), rng.normal(size=n)) for m, n in zip(sizes, sizes[1:], strict=False)]
    x = rng.normal(size=(B, sizes[0]))
    if loss == "bce":
        y = rng.integers(0, 2, size=(B, 3)).astype(np.float64)
    elif loss == "cross_entropy":
        y = rng.integers(0, 3, size=B)
    elif loss == "kl":
        y = softmax(rng.normal(size=(B, 3)))
        y[0] = [0.0, 0.3, 0.7]  # a zero target probability: the p·ln p = 0 convention
    else:
        y = rng.normal(size=(B, 3))
    net = MLP(
        [Dense(W.copy(), b.copy(), a) for (W, b), a in zip(params, activations, strict=True)], loss=loss
    )
    our_loss = net.loss_and_backward(x, y)

    torch_params = [
        (torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)) for W, b in params
    ]
    out = _torch_forward(torch_params, torch.tensor(x), activations)
    target = torch.tensor(y)
    torch_loss = {
        "bce": lambda: F.binary_cross_entropy(out, target),
        "cross_entropy": lambda: F.cross_entropy(out, target),
        "mse": lambda: F.mse_loss(out, target),
        "kl": lambda: F.kl_div(F.log_softmax(out, dim=-1), target, reduction="batchmean"),
    }[loss]()
    torch_loss.backward()
    assert our_loss == pytest.approx(torch_loss.item(), rel=1e-12, abs=1e-12)
    for layer, (W, b) in zip(net.layers, torch_params, strict=True):
        np.testing.assert_allclose(layer.dW, W.grad.numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(layer.db, b.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    net = MLP(
        [
            Dense(rng.normal(size=(3, 4)), rng.normal(size=4), "tanh"),
            Dense(rng.normal(size=(4, 2)), rng.normal(size=2), "identity"),
        ],
        loss="cross_entropy",
    )
    x, y = rng.normal(size=(5, 3)), rng.integers(0, 2, size=5)
    net.loss_and_backward(x, y)
    # Copy every analytic gradient first: each finite-difference evaluation overwrites dW, db.
    checks = [(p, g.copy()) for layer in net.layers for p, g in ((layer.W, layer.dW), (layer.b, layer.db))]
    for param, analytic in checks:
        numeric = numerical_gradient(lambda: net.loss_and_backward(x, y), param)
        assert relative_error(analytic, numeric) < 1e-6


def test_gradcheck_helpers_catch_a_wrong_gradient():
    """f = x0² + 3·x1 at (3, 2): ∇f = (6, 3); central differences are exact for a quadratic."""
    x = np.array([3.0, 2.0])
    numeric = numerical_gradient(lambda: x[0] ** 2 + 3 * x[1], x)
    np.testing.assert_allclose(numeric, [6.0, 3.0], atol=1e-6)
    np.testing.assert_array_equal(x, [3.0, 2.0])  # restored
    assert relative_error(np.array([6.0, 3.0]), numeric) < 1e-8
    assert relative_error(np.array([6.0, 3.3]), numeric) > 0.05


def test_softmax_is_stable_for_huge_logits():
    p = softmax(np.array([[1000.0, 1000.0 + math.log(3.0)]]))
    np.testing.assert_allclose(p, [[0.25, 0.75]], atol=1e-12)


def test_bad_configuration_is_a_config_error():
    with pytest.raises(ConfigError, match="activation"):
        Dense(np.zeros((2, 2)), np.zeros(2), "swish")
    with pytest.raises(ConfigError, match="logits"):
        MLP([Dense(np.zeros((2, 2)), np.zeros(2), "sigmoid")], loss="cross_entropy")


def test_xor_reaches_full_accuracy_from_a_fixed_seed():
    result = train_xor(seed=0)
    assert result.accuracy == 1.0
    assert result.losses[-1] < 0.01 < result.losses[0]
    # A learned XOR: both (0,1) and (1,0) confidently 1, both (0,0) and (1,1) confidently 0.
    np.testing.assert_array_equal(result.probabilities[:, 0] > 0.9, [False, True, True, False])
    np.testing.assert_array_equal(result.probabilities[:, 0] < 0.1, [True, False, False, True])
