"""`lmforge finetune classify|sft|dpo|distill` and `lmforge classify` on a tiny checkpoint and tiny JSONL."""

import json
import math

import numpy as np
import pytest
import torch

from lmforge.cli import main
from lmforge.evaluation.classification import classification_report, confusion_matrix
from lmforge.models import GPT, GPTConfig
from lmforge.models.checkpoints import load_checkpoint
from lmforge.tokenizers import CharTokenizer

CHARS = "abcdefghijklmnopqrstuvwxyz ?!.,'\n"
TEMPLATE = {
    "user": "<|user|>{content}<|end|>",
    "assistant": "<|assistant|>{content}<|end|>",
    "generation_prompt": "<|assistant|>",
    "stop": ["<|end|>"],
}
QUICK = [
    "--set", "train.max_iters=4", "--set", "train.eval_interval=2", "--set", "train.batch_size=4",
    "--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.peak_tflops=1",
    "--set", "train.precision=fp32", "--set", "optim.warmup_iters=1", "--set", "finetune.test_fraction=0.25",
]  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = CharTokenizer(CHARS, special_tokens=("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"))
    config = GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1)
    directory = tmp_path_factory.mktemp("ckpt")
    GPT(config).save_checkpoint(directory, meta={"tokenizer": tokenizer.to_dict(), "chat_template": TEMPLATE})
    return directory


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_classify_run_and_command(ckpt, tmp_path, capsys):
    words = ["great fun", "a joy", "lovely", "dull", "a bore", "awful mess"]
    data = _jsonl(
        tmp_path / "l.jsonl",
        [{"text": w, "label": "pos" if i < 3 else "neg"} for i, w in enumerate(words * 4)],
    )
    run = tmp_path / "run"
    code, out, err = _run(
        capsys, "finetune", "classify", "--ckpt", ckpt, "--out", run, *QUICK,
        "--set", f'finetune.data="{data}"', "--set", 'finetune.classes=["neg","pos"]', "--lora", 2,
    )  # fmt: skip
    assert code == 0, err
    assert "training 2" in out and "(lora)" in out and "accuracy" in out
    results = json.loads((run / "results.json").read_text())
    assert sum(map(sum, results["confusion"])) == 6 and set(results["classes"]) == {"neg", "pos"}
    assert (run / "plots" / "confusion.png").stat().st_size > 0 and (run / "metrics.csv").exists()
    code, out, err = _run(capsys, "classify", "--ckpt", run / "model", "--text", "a joy", "--text", "dull")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in ("neg", "pos") and "pos 0." in lines[0]
    code, _, err = _run(capsys, "classify", "--ckpt", ckpt, "--text", "x")
    assert code == 2 and "not a classifier" in err and "Traceback" not in err


def test_sft_result_chats(ckpt, tmp_path, capsys, monkeypatch):
    pairs = [{"instruction": f"say {w}", "output": w} for w in ("hi", "yes", "no", "ok")] * 2
    data = _jsonl(tmp_path / "sft.jsonl", pairs + [{"instruction": "long " * 20, "output": "x"}])
    run = tmp_path / "run"
    code, out, err = _run(
        capsys, "finetune", "sft", "--ckpt", ckpt, "--out", run, *QUICK, "--set", f'finetune.data="{data}"'
    )
    assert code == 0, err
    assert "skipped as longer than the context" in out
    model, tokenizer, meta = load_checkpoint(run / "model")
    assert meta["chat_template"] == TEMPLATE
    assert (run / "checkpoints").is_dir()  # full fine-tuning keeps the trainer's checkpoints
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("say hi\n"))
    code, out, err = _run(
        capsys, "chat", "--ckpt", run / "model", "--temperature", "0", "--max-new-tokens", "3"
    )
    assert code == 0, err


def test_dpo_first_loss_is_ln2(tmp_path, capsys):
    """Policy == reference at step 0, so every log-ratio is 0 and the loss is -log sigmoid(0) = ln 2. The
    model has dropout 0.3: the run must switch it off, or the train-mode policy would differ."""
    tokenizer = CharTokenizer(CHARS)
    config = GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, dropout=0.3)
    ckpt = tmp_path / "ckpt"
    GPT(config).save_checkpoint(ckpt, meta={"tokenizer": tokenizer.to_dict()})
    pairs = [
        {"prompt": "film was ", "chosen": c, "rejected": r} for c, r in [("good", "bad"), ("fun", "dull")] * 4
    ]
    data = _jsonl(tmp_path / "p.jsonl", pairs)
    run = tmp_path / "run"
    code, out, err = _run(
        capsys, "finetune", "dpo", "--ckpt", ckpt, "--out", run, *QUICK, "--set", f'finetune.data="{data}"',
        "--set", "train.log_interval=1",
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((run / "results.json").read_text())
    assert results["first_train_loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_distill_with_and_without_teacher(ckpt, tmp_path, capsys):
    data = _jsonl(
        tmp_path / "t.jsonl", [{"text": t, "label": "a"} for t in ("good film", "dull plot", "fun") * 4]
    )
    common = [*QUICK, "--set", f'finetune.data="{data}"', "--set", 'finetune.classes=["a","b"]']
    code, _, err = _run(capsys, "finetune", "distill", "--ckpt", ckpt, "--out", tmp_path / "a", *common,
                        "--set", f'finetune.teacher="{ckpt}"')  # fmt: skip
    assert code == 0, err
    code, _, err = _run(capsys, "finetune", "distill", "--ckpt", ckpt, "--out", tmp_path / "b", *common,
                        "--set", "finetune.teacher_weight=0")  # fmt: skip
    assert code == 0, err
    code, _, err = _run(capsys, "finetune", "distill", "--ckpt", ckpt, "--out", tmp_path / "c", *common)
    assert code == 2 and "finetune.teacher" in err


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("finetune.trainable=everything", "finetune.trainable"),
        ("finetune.test_fraction=1.5", "finetune.test_fraction"),
        ("finetune.nope=1", "unknown key finetune.nope"),
    ],
)
def test_bad_config_is_one_line(ckpt, tmp_path, capsys, setting, message):
    code, _, err = _run(
        capsys, "finetune", "classify", "--ckpt", ckpt, "--out", tmp_path / "r", "--set", setting
    )
    assert code == 2 and message in err and "Traceback" not in err


def test_bad_data_file_is_one_line(ckpt, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "x", "output": ""}\n')
    code, _, err = _run(
        capsys, "finetune", "sft", "--ckpt", ckpt, "--out", tmp_path / "r", "--set", f'finetune.data="{data}"'
    )
    assert code == 2 and "bad.jsonl: line 1: field 'output' is empty" in err


def test_report_matches_sklearn():
    from sklearn.metrics import confusion_matrix as sk_confusion
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(3, size=200), rng.integers(3, size=200)
    predictions[:5] = 2  # class 0 is never predicted on some rows; every class still appears
    report = classification_report(labels.tolist(), predictions.tolist(), ["a", "b", "c"])
    precision, recall, f1, support = precision_recall_fscore_support(labels, predictions, zero_division=0)
    for k, name in enumerate("abc"):
        row = report["classes"][name]
        assert row["precision"] == pytest.approx(precision[k]) and row["recall"] == pytest.approx(recall[k])
        assert row["f1"] == pytest.approx(f1[k]) and row["support"] == support[k]
    assert np.array_equal(confusion_matrix(labels, predictions, 3), sk_confusion(labels, predictions))
    # a class never predicted: precision 0 by definition, not NaN
    assert classification_report([0, 1], [1, 1], ["x", "y"])["classes"]["x"]["precision"] == 0.0


@pytest.mark.parametrize("task", ["classify", "sft", "dpo", "distill"])
def test_shipped_configs_load(task):
    from pathlib import Path

    from lmforge.training.config import load_config
    from lmforge.training.finetune import FinetuneConfig

    path = Path(__file__).resolve().parents[1] / "configs" / f"finetune-{task}.toml"
    config = load_config(path, sections=FinetuneConfig)
    assert config.train.out_dir == f"runs/finetune-{task}"


def test_plain_gpt_folds_lora_into_a_plain_model():
    """The merged plain GPT computes what the adapted model computes, and has no LoRA tensors."""
    from lmforge.models.lora import apply_lora, lora_modules
    from lmforge.training.finetune import plain_gpt

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=40, block_size=16, n_layer=1))
    apply_lora(model, rank=2, alpha=4, targets=["attn", "mlp"])
    for m in lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B, std=0.1)
    idx = torch.randint(0, 40, (2, 8))
    adapted = model(idx)[0]
    plain = plain_gpt(model)
    assert not lora_modules(plain) and not any("lora" in k for k in plain.state_dict())
    torch.testing.assert_close(plain(idx)[0], adapted, atol=1e-5, rtol=1e-5)
    # a bf16 model stays bf16 (a classifier's bf16 head is applied to its output)
    model = apply_lora(GPT(GPTConfig.preset("tiny", vocab_size=40, block_size=16, n_layer=1)), rank=2)
    assert plain_gpt(model.to(torch.bfloat16)).transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16


def test_a_model_is_required(tmp_path, capsys):
    code, _, err = _run(capsys, "finetune", "sft", "--out", tmp_path / "r")
    assert code == 2 and "give either --ckpt DIR" in err and "Traceback" not in err
