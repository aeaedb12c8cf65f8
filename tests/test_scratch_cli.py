"""`lmforge scratch ...`: each command runs, prints labelled numbers in order, and rejects bad input."""

from __future__ import annotations

from lmforge.cli import main


def test_worked_example_prints_the_hand_computed_numbers(capsys):
    assert main(["scratch", "worked-example"]) == 0
    out = capsys.readouterr().out
    # ŷ = σ(0.35) = 0.586618, δ2 = -0.413382, updated W2[0,0] = 0.6 + 0.5·0.5·0.413382 = 0.703346
    for line in (
        "ŷ[0] = sigmoid(0.3500) = 0.5866",
        "δ2[0] = 0.5866 - 1.0000 = -0.4134",
        "W2[0,0] = 0.6000 - 0.5*(-0.2067) = 0.7033",
    ):
        assert line in out


def test_worked_example_options(capsys):
    """x = (0, 0), b1 = (0, 0): the hidden layer is all zero, z2 = b2 = 0, ŷ = 0.5, and with y = 0 the
    output error is δ2 = 0.5 - 0 = 0.5, so b2 ← 0 − 0.1·0.5 = −0.05."""
    argv = [
        "scratch",
        "worked-example",
        "--x",
        "0",
        "0",
        "--y",
        "0",
        "--lr",
        "0.1",
        "--b1",
        "0",
        "0",
        "--b2",
        "0",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "δ2[0] = 0.5000 - 0.0000 = 0.5000" in out
    assert "b2[0] = 0.0000 - 0.1*0.5000 = -0.0500" in out


def test_worked_example_rejects_a_bad_label(capsys):
    assert main(["scratch", "worked-example", "--y", "2"]) == 2
    assert "--y" in capsys.readouterr().err


def test_xor_command(capsys):
    assert main(["scratch", "xor", "--log-every", "500"]) == 0
    out = capsys.readouterr().out
    assert "epoch   500: loss = " in out and out.rstrip().endswith("accuracy = 1.0000")


def test_attention_command(capsys):
    assert main(["scratch", "attention"]) == 0
    out = capsys.readouterr().out
    order = [
        "scores = q @ kᵀ / √4",
        "masked scores",
        "weights = softmax",
        "-- ln1",
        "-- head 1",
        "-- ln2",
        "block output",
    ]
    positions = [out.index(s) for s in order]
    assert positions == sorted(positions)
    assert main(["scratch", "attention", "--n-head", "3"]) == 2


def test_optimizers_command_prints_a_table_and_writes_a_png(tmp_path, capsys):
    plot = tmp_path / "plots" / "opt.png"
    assert main(["scratch", "optimizers", "--steps", "30", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for name in ("SGD", "momentum", "RMSProp", "Adam ", "AdamW"):
        assert name in out
    assert "loss@30" in out and "29.5000" in out  # f(-1.5, 0.5) = 2·2.25 + 100·0.25
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
