"""A corpus of bad inputs (files and flags), each with the exact one-line error the CLI must print.

Every case runs the real command line: `lmforge.cli.main(argv)`, the function `python -m lmforge.cli`
calls, in this process (argument parsing, the handler, the library, the error-to-one-line translation),
and checks the exit code, that stderr is exactly one line, that it is the expected text, and that no
traceback appears. Then every case runs again as a true `python -m lmforge.cli` subprocess (two at a time,
since start-up dominates), which also checks the interpreter's own exit path: what a user's shell sees.

Static bad files live in `tests/bad_inputs/`; damaged checkpoints and datasets are made once per session
from the tiny fixtures of conftest.py (a 2-layer, 32-wide GPT after 2 steps, a 12-document dataset).
Placeholders in the table: {bad} the static files, {data}/{tok}/{docs} the tiny dataset, its tokenizer
and source, {run}/{ckpt} the tiny run and its best checkpoint, {w} the session's workspace of damaged
copies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lmforge
from conftest import TINY_TRAIN
from lmforge.cli import main
from lmforge.fileio import load_safetensors, save_safetensors

BAD = Path(__file__).parent / "bad_inputs"
SRC = str(Path(lmforge.__file__).parents[1])  # the lmforge under test, also in subprocesses


def _train(*sets: str, out: str = "{w}/fresh-run") -> list[str]:
    """`lmforge train` of the tiny model on the tiny dataset, with extra --set overrides."""
    settings = [*TINY_TRAIN, "data.dir={data}", f"train.out_dir={out}", "train.max_iters=1", *sets]
    return ["train", *[x for s in settings for x in ("--set", s)]]


def _prepare(*extra: str, source: str = "{docs}", out: str = "{w}/new-data") -> list[str]:
    return ["data", "prepare", "--source", source, "--tokenizer", "{tok}", "--out", out, "--quiet", *extra]


def _replace_tensor(ckpt: Path, change) -> None:
    tensors = load_safetensors(ckpt / "model.safetensors")
    change(tensors)
    (ckpt / "model.safetensors").unlink()  # hard-linked with step_00000002: write a new file
    save_safetensors(ckpt / "model.safetensors", tensors)


def _replace_file(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


@pytest.fixture(scope="session")
def places(tmp_path_factory, tiny_dataset: Path, tiny_run: Path) -> dict[str, str]:
    """Build the damaged copies once; return the placeholders of the table."""
    w = tmp_path_factory.mktemp("bad-inputs")
    ckpt = tiny_run / "checkpoints/best"
    first = "transformer.wte.weight"
    for name, change in {
        "ckpt-int32": lambda t: t.update({k: v.to(torch.int32) for k, v in t.items()}),
        "ckpt-bool": lambda t: t.update({k: v.to(torch.bool) for k, v in t.items()}),
        "ckpt-float8": lambda t: t.update({k: v.to(torch.float8_e4m3fn) for k, v in t.items()}),
        "ckpt-one-int64": lambda t: t.update({first: t[first].to(torch.int64)}),
    }.items():
        shutil.copytree(ckpt, w / name)
        _replace_tensor(w / name, change)
    shutil.copytree(ckpt, w / "ckpt-meta-broken")
    _replace_file(w / "ckpt-meta-broken/meta.json", b'{"format_version": 1, "model": "gpt", ')

    for name in ("data-bad-ids", "data-truncated", "data-meta-broken"):
        shutil.copytree(tiny_dataset, w / name)
    ids = np.fromfile(w / "data-bad-ids/train.bin", dtype="<u2")
    ids[5] = 60_000
    ids.tofile(w / "data-bad-ids/train.bin")
    train_bin = w / "data-truncated/train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:-2])
    (w / "data-meta-broken/meta.json").write_text("{not json")

    for name in ("run-bad-state", "run-bad-rng", "run-bad-optim", "run-reshaped"):
        shutil.copytree(tiny_run, w / name)
    state_path = w / "run-bad-state/checkpoints/step_00000002/trainer_state.json"
    state = json.loads(state_path.read_text())
    _replace_file(state_path, json.dumps(state | {"step": "two"}).encode())
    rng_path = w / "run-bad-rng/checkpoints/step_00000002/trainer_state.json"
    _replace_file(rng_path, json.dumps(state | {"rng": {"python": "x"}}).encode())
    optim_path = w / "run-bad-optim/checkpoints/step_00000002/optimizer.safetensors"
    optim = load_safetensors(optim_path)
    optim["state.0.exp_avg"] = torch.zeros(7, 3)
    optim_path.unlink()
    save_safetensors(optim_path, optim)

    (w / "a-file").write_text("x")
    (w / "not-empty").mkdir()
    (w / "not-empty/keep.txt").write_text("mine")
    return {
        "bad": str(BAD),
        "data": str(tiny_dataset),
        "tok": str(tiny_dataset.parent / "tokenizer.json"),
        "docs": str(tiny_dataset.parent / "docs.jsonl"),
        "run": str(tiny_run),
        "ckpt": str(ckpt),
        "w": str(w),
    }


# (id, argv, exit code, the one stderr line)
CASES: list[tuple[str, list[str], int, str]] = [
    # ---- train: config files and flags
    (
        "config-missing",
        ["train", "--config", "{w}/nope.toml"],
        2,
        "lmforge train: error: {w}/nope.toml: config file not found",
    ),
    (
        "config-not-toml",
        ["train", "--config", "{bad}/config_not_toml.toml"],
        2,
        "lmforge train: error: {bad}/config_not_toml.toml: config file is not valid TOML "
        "(Expected ']' at the end of a table declaration (at line 1, column 7))",
    ),
    (
        "config-wrong-type",
        ["train", "--config", "{bad}/config_wrong_type.toml"],
        2,
        "lmforge train: error: {bad}/config_wrong_type.toml: train.max_iters='three' is invalid; "
        "use an integer >= 1",
    ),
    (
        "config-unknown-section",
        ["train", "--config", "{bad}/config_unknown_section.toml"],
        2,
        "lmforge train: error: {bad}/config_unknown_section.toml: unknown section(s) ['trian']; "
        "known: ['data', 'model', 'optim', 'train']",
    ),
    (
        "set-without-equals",
        ["train", "--set", "optim.lr"],
        2,
        "lmforge train: error: --set 'optim.lr': use section.key=value, e.g. --set optim.lr=3e-4",
    ),
    (
        "lr-negative",
        _train("optim.lr=-1"),
        2,
        "lmforge train: error: config with --set overrides: optim.lr=-1.0 is invalid; use a positive number",
    ),
    (
        "device-cuda",
        _train("train.device='cuda'"),
        2,
        "lmforge train: error: train.device='cuda' is invalid; this machine has no CUDA device, "
        "use auto or cpu",
    ),
    (
        "seed-negative",
        _train("train.seed=-1"),
        2,
        "lmforge train: error: config with --set overrides: train.seed=-1 is invalid; use an "
        "integer in [0, 2**64)",
    ),
    (
        "seed-2-64",
        _train("train.seed=18446744073709551616"),
        2,
        "lmforge train: error: config with --set overrides: train.seed=18446744073709551616 is "
        "invalid; use an integer in [0, 2**64)",
    ),
    (
        "max-iters-zero",
        _train("train.max_iters=0"),
        2,
        "lmforge train: error: config with --set overrides: train.max_iters=0 is invalid; use an "
        "integer >= 1",
    ),
    (
        "data-dir-missing",
        _train("data.dir='{w}/no-data'"),
        2,
        "lmforge train: error: {w}/no-data/meta.json: dataset meta.json not found",
    ),
    (
        "data-ids-out-of-range",
        _train("data.dir='{w}/data-bad-ids'"),
        2,
        "lmforge train: error: {w}/data-bad-ids/train.bin: holds token id 60,000 but the "
        "vocabulary has 60 ids (0..59); the file was not written with this dataset's tokenizer: "
        "prepare the dataset again",
    ),
    (
        "data-truncated",
        _train("data.dir='{w}/data-truncated'"),
        2,
        "lmforge train: error: {w}/data-truncated/train.bin: has 36,016 bytes but meta.json says "
        "18,009 uint16 tokens (36,018 bytes); the file is truncated or from another run",
    ),
    # ---- train: run directories and resume
    (
        "run-exists",
        _train(out="{run}"),
        2,
        "lmforge train: error: {run} already holds a run (config.toml, metrics.csv, checkpoints, "
        "plots); continue it with --resume, choose another train.out_dir, or pass --overwrite to "
        "delete that run's files",
    ),
    (
        "out-dir-is-a-file",
        _train(out="{w}/a-file"),
        2,
        "lmforge train: error: train.out_dir='{w}/a-file' is a file; the run directory must be a directory",
    ),
    (
        "out-dir-under-a-file",
        _train(out="{w}/a-file/run"),
        1,
        "lmforge train: error: {w}/a-file/run: Not a directory",
    ),
    (
        "resume-nothing",
        [*_train(out="{w}/empty-run"), "--resume"],
        2,
        "lmforge train: error: --resume: no checkpoint in {w}/empty-run/checkpoints",
    ),
    (
        "resume-state-wrong-type",
        [*_train("train.max_iters=3", out="{w}/run-bad-state"), "--resume"],
        2,
        "lmforge train: error: {w}/run-bad-state/checkpoints/step_00000002/trainer_state.json: "
        "'step' is 'two'; it must be an integer >= 0",
    ),
    (
        "resume-rng-broken",
        [*_train("train.max_iters=3", out="{w}/run-bad-rng"), "--resume"],
        2,
        "lmforge train: error: {w}/run-bad-rng/checkpoints/step_00000002/trainer_state.json: 'rng' is not "
        "an RNG state saved by lmforge (not enough values to unpack (expected 3, got 1))",
    ),
    (
        "resume-optimizer-other-model",
        [*_train("train.max_iters=3", out="{w}/run-bad-optim"), "--resume"],
        2,
        "lmforge train: error: {w}/run-bad-optim/checkpoints/step_00000002/optimizer.safetensors: "
        "optimizer state 'state.0.exp_avg' has shape (7, 3) but parameter 0 has (96, 32): the "
        "file is from another model",
    ),
    (
        "resume-model-reshaped",
        [*_train("train.max_iters=3", "model.n_embd=48", out="{w}/run-reshaped"), "--resume"],
        2,
        "lmforge train: error: {w}/run-reshaped/checkpoints/step_00000002/meta.json: the "
        "checkpoint's model differs from this run's (n_embd 32 -> 48); resume with the model "
        "settings it was trained with, or start a new run",
    ),
    # ---- data prepare, data info, tokenizer
    (
        "prepare-source-missing",
        _prepare(source="{w}/nope.txt"),
        2,
        "lmforge data: error: source '{w}/nope.txt': no such file or directory (built-in corpora: "
        "shakespeare, python-stdlib, wiki-leads)",
    ),
    (
        "prepare-tokenizer-missing",
        [*_prepare()[:5], "{w}/nope.json", *_prepare()[6:]],
        2,
        "lmforge data: error: {w}/nope.json: tokenizer file not found",
    ),
    (
        "prepare-tokenizer-truncated",
        [*_prepare()[:5], "{bad}/tokenizer_truncated.json", *_prepare()[6:]],
        2,
        "lmforge data: error: {bad}/tokenizer_truncated.json: corrupt or truncated tokenizer file "
        "(invalid JSON at line 1, column 37)",
    ),
    (
        "prepare-tokenizer-empty-pattern",
        [*_prepare()[:5], "{bad}/tokenizer_empty_pattern.json", *_prepare()[6:]],
        2,
        "lmforge data: error: {bad}/tokenizer_empty_pattern.json: inconsistent tokenizer: split "
        "pattern regex '\\\\w*' matches the empty string, so it would cut text into empty chunks; "
        "make every alternative consume at least one character",
    ),
    (
        "prepare-tokenizer-without-eot",
        [*_prepare()[:5], "{bad}/tokenizer_without_eot.json", *_prepare()[6:]],
        2,
        "lmforge data: error: the tokenizer has no '<|endoftext|>' special token, which shards "
        "use to separate documents; train or load one with that special token",
    ),
    (
        "prepare-jsonl-broken",
        _prepare("--on-bad-record", "fail", source="{bad}/docs_broken.jsonl"),
        2,
        "lmforge data: error: {bad}/docs_broken.jsonl:2: malformed JSON (Expecting value; column "
        "1) (use --on-bad-record skip to skip such records)",
    ),
    (
        "prepare-jsonl-no-text",
        _prepare(source="{bad}/docs_no_text_field.jsonl"),
        2,
        "lmforge data: error: source '{bad}/docs_no_text_field.jsonl' is empty: 0 documents with "
        "no text; all 1 records were bad, e.g. {bad}/docs_no_text_field.jsonl:1: no field 'text' "
        "(fields: body); choose with --text-field",
    ),
    (
        "prepare-val-too-big",
        _prepare("--val", "1.5"),
        2,
        "lmforge data: error: --val and --test must be in [0, 1) with a sum < 1, got val=1.5, test=0.0",
    ),
    (
        "prepare-workers-zero",
        _prepare("--workers", "0"),
        2,
        "lmforge data: error: workers must be >= 1, got 0",
    ),
    (
        "prepare-out-exists",
        _prepare(out="{w}/not-empty"),
        2,
        "lmforge data: error: {w}/not-empty already exists; choose another --out or pass --overwrite",
    ),
    (
        "prepare-out-is-a-file",
        _prepare(out="{w}/a-file"),
        2,
        "lmforge data: error: --out {w}/a-file is an existing file; give a directory path",
    ),
    (
        "prepare-overwrite-not-ours",
        _prepare("--overwrite", out="{w}/not-empty"),
        2,
        "lmforge data: error: --overwrite: {w}/not-empty is not a dataset written by 'lmforge "
        "data prepare' (no valid meta.json), so it is left alone; choose another --out or empty "
        "it yourself",
    ),
    (
        "prepare-overwrite-deletes-input",
        _prepare("--overwrite", out="{data}/..", source="{docs}"),
        2,
        "lmforge data: error: --out {data}/.. holds the input {docs}; replacing the directory "
        "would delete it, so choose another --out",
    ),
    (
        "info-not-a-dataset",
        ["data", "info", "{w}/not-empty"],
        2,
        "lmforge data: error: {w}/not-empty/meta.json: not found: this is not a prepared dataset "
        "(run 'lmforge data prepare')",
    ),
    (
        "info-meta-broken",
        ["data", "info", "{w}/data-meta-broken"],
        2,
        "lmforge data: error: {w}/data-meta-broken/meta.json: corrupt or truncated dataset meta.json "
        "(invalid JSON at line 1, column 2)",
    ),
    (
        "info-truncated",
        ["data", "info", "{w}/data-truncated"],
        2,
        "lmforge data: error: {w}/data-truncated/train.bin: has 36,016 bytes but meta.json says "
        "18,009 uint16 tokens (36,018 bytes); the file is truncated or from another run",
    ),
    (
        "info-ids-out-of-range",
        ["data", "info", "{w}/data-bad-ids"],
        2,
        "lmforge data: error: {w}/data-bad-ids/train.bin: holds token id 60,000 but the "
        "vocabulary has 60 ids (0..59); the file was not written with this dataset's tokenizer: "
        "prepare the dataset again",
    ),
    (
        "tokenizer-out-is-a-directory",
        ["tokenizer", "train", "--kind", "char", "--input", "{docs}", "--out", "{w}/not-empty"],
        1,
        "lmforge tokenizer: error: {w}/not-empty: Is a directory",
    ),
    (
        "wordpiece-vocab-without-unk",
        ["tokenizer", "encode", "--tokenizer", "{bad}/vocab_without_unk.txt", "--text", "the"],
        2,
        "lmforge tokenizer: error: {bad}/vocab_without_unk.txt: the vocabulary has no [UNK] line, which "
        "WordPiece needs for unknown words",
    ),
    (
        "wordpiece-vocab-repeated-token",
        ["tokenizer", "inspect", "--tokenizer", "{bad}/vocab_repeated_token.txt"],
        2,
        "lmforge tokenizer: error: {bad}/vocab_repeated_token.txt: line 5 repeats 'the' from line 3",
    ),
    (
        "wordpiece-hf-json-id-gap",
        ["tokenizer", "encode", "--tokenizer", "{bad}/tokenizer_wordpiece_id_gap.json", "--text", "the"],
        2,
        "lmforge tokenizer: error: {bad}/tokenizer_wordpiece_id_gap.json: model.vocab ids must run 0..n-1 "
        "without gaps or repeats",
    ),
    # ---- encoders: a GPT where a BERT is needed, empty text
    (
        "fill-mask-on-a-gpt",
        ["fill-mask", "a [MASK].", "--ckpt", "{ckpt}"],
        2,
        "lmforge fill-mask: error: {ckpt}/meta.json: is a GPT (decoder-only language model: generate, chat, "
        "eval, finetune), but this needs a BERT",
    ),
    (
        "embed-empty-text",
        ["embed", "text", "fine", " ", "--ckpt", "{ckpt}"],
        2,
        "lmforge embed: error: text 1 is empty (or only whitespace); an encoder has nothing to embed there",
    ),
    # ---- eval: checkpoints and flags
    (
        "eval-max-batches-negative",
        ["eval", "--ckpt", "{ckpt}", "--max-batches", "-1"],
        2,
        "lmforge eval: error: --max-batches=-1 is invalid; use an integer >= 0 (0 = all)",
    ),
    (
        "eval-batch-size-zero",
        ["eval", "--ckpt", "{ckpt}", "--batch-size", "0"],
        2,
        "lmforge eval: error: --batch-size=0 is invalid; use an integer >= 1",
    ),
    (
        "eval-ckpt-missing",
        ["eval", "--ckpt", "{w}/nope"],
        2,
        "lmforge eval: error: {w}/nope: checkpoint directory not found",
    ),
    (
        "eval-weights-int32",
        ["eval", "--ckpt", "{w}/ckpt-int32"],
        2,
        "lmforge eval: error: {w}/ckpt-int32/model.safetensors: transformer.h.0.attn.c_attn.bias "
        "is stored as int32 (and 27 more); model weights must be float32, float16 or bfloat16",
    ),
    (
        "eval-weights-bool",
        ["eval", "--ckpt", "{w}/ckpt-bool"],
        2,
        "lmforge eval: error: {w}/ckpt-bool/model.safetensors: transformer.h.0.attn.c_attn.bias "
        "is stored as bool (and 27 more); model weights must be float32, float16 or bfloat16",
    ),
    (
        "eval-weights-float8",
        ["eval", "--ckpt", "{w}/ckpt-float8"],
        2,
        "lmforge eval: error: {w}/ckpt-float8/model.safetensors: transformer.h.0.attn.c_attn.bias "
        "is stored as float8_e4m3fn (and 27 more); model weights must be float32, float16 or "
        "bfloat16",
    ),
    (
        "eval-one-int64-tensor",
        ["eval", "--ckpt", "{w}/ckpt-one-int64"],
        2,
        "lmforge eval: error: {w}/ckpt-one-int64/model.safetensors: transformer.wte.weight is "
        "stored as int64; model weights must be float32, float16 or bfloat16",
    ),
    (
        "eval-meta-truncated",
        ["eval", "--ckpt", "{w}/ckpt-meta-broken"],
        2,
        "lmforge eval: error: {w}/ckpt-meta-broken/meta.json: corrupt or truncated checkpoint meta "
        "(invalid JSON at line 1, column 39)",
    ),
    # ---- generate, sample
    (
        "generate-temperature-1e-40",
        ["generate", "--ckpt", "{ckpt}", "--prompt", "a", "--temperature", "1e-40"],
        2,
        "lmforge generate: error: sampling.temperature=1e-40 is invalid; use 0 (greedy) or a "
        "number >= 0.0001 (logits / a smaller one overflow float32)",
    ),
    (
        "generate-seed-2-70",
        ["generate", "--ckpt", "{ckpt}", "--prompt", "a", "--seed", str(2**70)],
        2,
        "lmforge generate: error: sampling.seed=1180591620717411303424 is invalid; use an integer "
        "in [0, 2**64)",
    ),
    (
        "generate-prompt-not-utf8",
        ["generate", "--ckpt", "{ckpt}", "--prompt-file", "{bad}/prompt_not_utf8.txt"],
        2,
        "lmforge generate: error: {bad}/prompt_not_utf8.txt: prompt file is not valid UTF-8 "
        "(invalid start byte at byte 6)",
    ),
    (
        "generate-prompt-file-missing",
        ["generate", "--ckpt", "{ckpt}", "--prompt-file", "{w}/nope.txt"],
        2,
        "lmforge generate: error: {w}/nope.txt: prompt file not found",
    ),
    (
        "generate-stop-empty",
        ["generate", "--ckpt", "{ckpt}", "--prompt", "a", "--stop", ""],
        2,
        "lmforge generate: error: --stop='' is invalid; an empty stop string would stop before "
        "the first token",
    ),
    (
        "sample-temperature-1e-40",
        ["sample", "--ckpt", "{ckpt}", "--temperature", "1e-40"],
        2,
        "lmforge sample: error: sampling.temperature=1e-40 is invalid; use 0 (greedy) or a number "
        ">= 0.0001 (logits / a smaller one overflow float32)",
    ),
    # ---- convert
    (
        "convert-same-format",
        ["convert", "--from", "hf", "--to", "hf", "{ckpt}", "{w}/x"],
        2,
        "lmforge convert: error: --from and --to are both 'hf'; nothing to convert",
    ),
    (
        "convert-dst-not-empty",
        ["convert", "--from", "lmforge", "--to", "hf", "{ckpt}", "{w}/not-empty"],
        2,
        "lmforge convert: error: DST {w}/not-empty exists and is not empty; choose another "
        "directory or pass --overwrite",
    ),
    (
        "convert-dst-is-a-checkpoint",
        ["convert", "--from", "lmforge", "--to", "hf", "{ckpt}", "{ckpt}", "--overwrite"],
        2,
        "lmforge convert: error: DST {ckpt} is a training checkpoint (it has trainer_state.json); "
        "converting into it would mix two models' files, so choose another directory",
    ),
    (
        "convert-dst-under-a-file",
        ["convert", "--from", "lmforge", "--to", "hf", "{ckpt}", "{w}/a-file/hf"],
        1,
        "lmforge convert: error: {w}/a-file/hf: Not a directory",
    ),
]


def _fill(items: list[str], places: dict[str, str]) -> list[str]:
    return [item.format(**places) for item in items]


def test_the_corpus_is_large_and_unique() -> None:
    names = [case[0] for case in CASES]
    assert len(names) >= 40 and len(set(names)) == len(names)


@pytest.mark.parametrize(("name", "argv", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_exact_line(name, argv, code, message, places, capsys) -> None:
    assert main(_fill(argv, places)) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err == message.format(**places) + "\n"


def test_every_bad_input_through_the_real_cli_in_a_subprocess(places) -> None:
    """The whole corpus again as `python -m lmforge.cli` subprocesses (two at a time: start-up dominates),
    so what a user's shell sees, exit code and stderr, is checked for every case."""
    from concurrent.futures import ThreadPoolExecutor

    env = os.environ | {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}

    def run(case: tuple[str, list[str], int, str]) -> str | None:
        name, argv, code, message = case
        done = subprocess.run(
            [sys.executable, "-m", "lmforge.cli", *_fill(argv, places)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        expected = (code, message.format(**places) + "\n")
        return (
            None
            if (done.returncode, done.stderr) == expected
            else f"{name}: {done.returncode} {done.stderr!r}"
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f for f in pool.map(run, CASES) if f is not None]
    assert not failures, "\n".join(failures)
