"""`lmforge scratch`: the numpy reference implementations (lmforge.scratch), printing their numbers.

Each subcommand prints its quantities labelled and to 4 decimals, in the order they are computed, so
that a learner can redo the arithmetic by hand.
"""

from __future__ import annotations

import argparse

# The worked example's default network (2 inputs, 2 ReLU hidden units, 1 sigmoid output). Hidden unit 1
# starts inactive (z1[1] < 0) so that the example also shows ReLU blocking a gradient.
_DEFAULT_W1 = (0.2, -0.3, 0.4, 0.1)
_DEFAULT_B1 = (0.1, -0.2)
_DEFAULT_W2 = (0.6, -0.5)
_DEFAULT_B2 = (0.05,)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "scratch",
        help="numpy-from-scratch demos: backprop by hand, XOR, attention, optimizers",
        description="Run the numpy reference implementations of lmforge.scratch and print every number.",
    )
    sub = p.add_subparsers(dest="scratch_command", metavar="SUBCOMMAND", required=True)

    w = sub.add_parser(
        "worked-example",
        help="one gradient-descent step of a 2-2-1 network, every number printed",
        description=(
            "One forward pass, backward pass and SGD update of a 2-input, 2-hidden, 1-output network "
            "(sigmoid output, binary cross-entropy), printing pre-activations, activations, the loss, the "
            "output error δ = ŷ − y, every gradient and every updated weight, with their arithmetic. "
            "W1 is given row by row: W1[i,j] connects input i to hidden unit j."
        ),
    )
    w.add_argument(
        "--x",
        type=float,
        nargs=2,
        default=[1.0, 0.5],
        metavar=("X0", "X1"),
        help="the input (default: 1.0 0.5)",
    )
    w.add_argument("--y", type=float, default=1.0, help="the label, 0 or 1 (default: 1)")
    w.add_argument("--lr", type=float, default=0.5, help="learning rate (default: 0.5)")
    w.add_argument(
        "--w1",
        type=float,
        nargs=4,
        default=list(_DEFAULT_W1),
        metavar=("W00", "W01", "W10", "W11"),
        help="input->hidden weights (default: %(default)s)",
    )
    w.add_argument(
        "--b1",
        type=float,
        nargs=2,
        default=list(_DEFAULT_B1),
        metavar=("B0", "B1"),
        help="hidden biases (default: %(default)s)",
    )
    w.add_argument(
        "--w2",
        type=float,
        nargs=2,
        default=list(_DEFAULT_W2),
        metavar=("W0", "W1"),
        help="hidden->output weights (default: %(default)s)",
    )
    w.add_argument("--b2", type=float, default=_DEFAULT_B2[0], help="output bias (default: %(default)s)")
    w.add_argument(
        "--hidden-activation",
        default="relu",
        choices=["relu", "sigmoid", "tanh", "gelu"],
        help="activation of the hidden layer (default: relu)",
    )
    w.set_defaults(func=run_worked_example)

    x = sub.add_parser(
        "xor",
        help="train a 2-4-1 network on XOR from scratch",
        description="Train a 2-H-1 network (He-initialised ReLU hidden layer, sigmoid output, BCE) on the "
        "four XOR points with full-batch gradient descent; print the loss every N epochs and the "
        "predictions.",
    )
    x.add_argument("--hidden", type=int, default=4, help="hidden units (default: 4)")
    x.add_argument("--epochs", type=int, default=2000, help="epochs (default: 2000)")
    x.add_argument("--lr", type=float, default=0.5, help="learning rate (default: 0.5)")
    x.add_argument("--seed", type=int, default=0, help="initialisation seed (default: 0)")
    x.add_argument("--log-every", type=int, default=200, help="print the loss every N epochs (default: 200)")
    x.set_defaults(func=run_xor)

    a = sub.add_parser(
        "attention",
        help="causal scaled dot-product attention and one transformer block, every matrix printed",
        description="Print (1) causal scaled dot-product attention on small random q, k, v and (2) the "
        "forward pass of one pre-norm transformer block: layer norm, multi-head causal self-attention "
        "head by head, residual, layer norm, GELU MLP, residual.",
    )
    a.add_argument("--tokens", type=int, default=3, help="sequence length T (default: 3)")
    a.add_argument("--n-embd", type=int, default=4, help="channels C (default: 4)")
    a.add_argument("--n-head", type=int, default=2, help="heads in the block (default: 2)")
    a.add_argument("--seed", type=int, default=0, help="seed of the random inputs and weights (default: 0)")
    a.set_defaults(func=run_attention)

    o = sub.add_parser(
        "optimizers",
        help="compare SGD, momentum, RMSProp, Adam, AdamW on f(x) = 2·x1² + 100·x2²",
        description="Run each optimizer on the badly conditioned quadratic f(x) = 2·x1² + 100·x2² from the "
        "same start, print a table of the loss at selected steps and plot the trajectories to a PNG.",
    )
    o.add_argument("--steps", type=int, default=100, help="steps per optimizer (default: 100)")
    o.add_argument(
        "--start",
        type=float,
        nargs=2,
        default=[-1.5, 0.5],
        metavar=("X1", "X2"),
        help="starting point (default: -1.5 0.5)",
    )
    o.add_argument(
        "--plot",
        default="runs/scratch/optimizers.png",
        help="where to write the trajectory plot (default: runs/scratch/optimizers.png)",
    )
    o.set_defaults(func=run_optimizers)


def run_worked_example(args: argparse.Namespace) -> int:
    import numpy as np

    from lmforge.errors import ConfigError
    from lmforge.scratch.dense import MLP, Dense

    if not 0.0 <= args.y <= 1.0:
        raise ConfigError(f"--y {args.y}: a binary cross-entropy label must be in [0, 1]")
    if args.lr <= 0:
        raise ConfigError(f"--lr {args.lr}: the learning rate must be > 0")
    W1 = np.array(args.w1, dtype=np.float64).reshape(2, 2)
    W2 = np.array(args.w2, dtype=np.float64).reshape(2, 1)
    net = MLP(
        [
            Dense(W1, np.array(args.b1, dtype=np.float64), args.hidden_activation),
            Dense(W2, np.array([args.b2], dtype=np.float64), "sigmoid"),
        ],
        loss="bce",
        trace=print,
    )
    print(
        f"network: 2 inputs -> 2 hidden ({args.hidden_activation}) -> 1 output (sigmoid), "
        "loss: binary cross-entropy"
    )
    print(f"x = [{args.x[0]:.4f}, {args.x[1]:.4f}], y = {args.y:.4f}, lr = {args.lr:g}")
    net.train_step(np.array([args.x], dtype=np.float64), np.array([[args.y]]), lr=args.lr)
    return 0


def run_xor(args: argparse.Namespace) -> int:
    from lmforge.scratch.xor import train_xor

    print(f"XOR with a 2-{args.hidden}-1 network, He init (seed {args.seed}), lr = {args.lr:g}")
    train_xor(
        hidden=args.hidden,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        log_every=args.log_every,
        trace=print,
    )
    return 0


def run_attention(args: argparse.Namespace) -> int:
    import numpy as np

    from lmforge.errors import ConfigError
    from lmforge.scratch.attention import (
        emit_matrix,
        init_block,
        scaled_dot_product_attention,
        transformer_block,
    )

    T, C = args.tokens, args.n_embd
    if T < 1 or C < 1 or args.n_head < 1 or C % args.n_head:
        raise ConfigError(f"need tokens >= 1 and n_head dividing n_embd, got {T}, {args.n_head}, {C}")
    rng = np.random.default_rng(args.seed)
    # Inputs rounded to one decimal so that the first products can be checked by hand.
    q, k, v = (np.round(rng.normal(size=(T, C)), 1) for _ in range(3))
    print(f"== 1. causal scaled dot-product attention, T = {T}, d = {C}")
    for name, m in (("q", q), ("k", k), ("v", v)):
        emit_matrix(print, name, m)
    scaled_dot_product_attention(q, k, v, causal=True, trace=print)

    print(f"\n== 2. one transformer block, T = {T}, n_embd = {C}, n_head = {args.n_head}")
    # std 0.5 rather than GPT-2's 0.02, so that the attention weights are visibly non-uniform.
    params = init_block(C, rng=rng, std=0.5)
    x = np.round(rng.normal(size=(1, T, C)), 1)
    emit_matrix(print, "x", x)
    transformer_block(x, params, n_head=args.n_head, trace=print)
    return 0


def run_optimizers(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lmforge.errors import ConfigError
    from lmforge.fileio import save_figure
    from lmforge.scratch.optim import SGD, Adam, AdamW, RMSProp, run_on_quadratic

    if args.steps < 1:
        raise ConfigError(f"--steps {args.steps}: need at least 1 step")
    # SGD must keep lr < 2/200 (the largest curvature); the others use common settings.
    optimizers = {
        "SGD lr=0.009": lambda p: SGD(p, lr=0.009),
        "momentum lr=0.005 μ=0.9": lambda p: SGD(p, lr=0.005, momentum=0.9),
        "RMSProp lr=0.01 α=0.99": lambda p: RMSProp(p, lr=0.01),
        "Adam lr=0.1": lambda p: Adam(p, lr=0.1),
        "AdamW lr=0.1 wd=0.1": lambda p: AdamW(p, lr=0.1, weight_decay=0.1),
    }
    columns = sorted({0, 10, 25, 50, args.steps} & set(range(args.steps + 1)))
    print(f"f(x) = 2*x1^2 + 100*x2^2 from x = ({args.start[0]:.4f}, {args.start[1]:.4f}), {args.steps} steps")
    header = (
        f"{'optimizer':<26}" + "".join(f"{'loss@' + str(c):>12}" for c in columns) + f"{'x1':>10}{'x2':>10}"
    )
    print(header)
    print("-" * len(header))
    trajectories = {}
    for name, make in optimizers.items():
        trajectory, losses = run_on_quadratic(make, start=tuple(args.start), steps=args.steps)
        trajectories[name] = trajectory
        cells = "".join(f"{losses[c]:>12.4f}" for c in columns)
        print(f"{name:<26}{cells}{trajectory[-1, 0]:>10.4f}{trajectory[-1, 1]:>10.4f}")

    fig, ax = plt.subplots(figsize=(8, 5))
    extent = max(abs(args.start[0]), abs(args.start[1]), 0.1) * 1.2
    g1, g2 = np.meshgrid(np.linspace(-extent, extent, 200), np.linspace(-extent / 2, extent / 2, 200))
    f_max = 2 * extent**2 + 100 * (extent / 2) ** 2
    # Log-spaced levels: the valley floor near the minimum gets as many contours as the steep walls.
    ax.contour(
        g1, g2, 2 * g1**2 + 100 * g2**2, levels=np.geomspace(1e-3, f_max, 20), colors="0.8", linewidths=0.7
    )
    for name, trajectory in trajectories.items():
        ax.plot(trajectory[:, 0], trajectory[:, 1], marker=".", markersize=3, linewidth=1, label=name)
    ax.plot(0, 0, "k*", markersize=10)
    ax.set(xlabel="x1", ylabel="x2", title=f"f(x) = 2·x1² + 100·x2², {args.steps} steps")
    ax.legend(fontsize=8)
    save_figure(fig, args.plot, dpi=120, bbox_inches="tight")
    print(f"plot: {args.plot}")
    return 0
