"""`lmforge demo`: the whole path on built-in data, in a few minutes on a laptop CPU (what `make demo` runs).

1. train a byte-level BPE tokenizer on Shakespeare (one play held out) and print its statistics;
2. prepare the plays into deduplicated, split, tokenized shards;
3. train a small GPT on them for a few minutes;
4. print samples from the best checkpoint, and where the metrics and plots are;
5. ask the built-in pretrained model (SmolLM2-135M-Instruct, converted once into the cache) one question,
   to show what the same code does with real pretrained weights.

Every step calls the same library function as its own command (`tokenizer train`, `data prepare`, `train`,
`generate`), so the demo doubles as a map of the pipeline. It deliberately has no options beyond sizes.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the built-in Shakespeare corpus (a few minutes on a CPU)",
        description="Train a BPE tokenizer on the built-in Shakespeare corpus, prepare shards, train a small "
        "GPT for a few minutes, and print samples. Outputs go under --out.",
    )
    p.add_argument("--out", default="runs/demo", help="directory for the demo's outputs (default: runs/demo)")
    p.add_argument("--vocab-size", type=int, default=2048, help="tokenizer vocabulary size (default 2048)")
    p.add_argument("--iters", type=int, default=1500, help="training steps (default 1500: ~3 min on 2 cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from lmforge.cli.tokenizer import describe
    from lmforge.data.builtin import builtin_documents
    from lmforge.data.prepare import prepare
    from lmforge.inference.text import generate
    from lmforge.tokenizers import BPETokenizer
    from lmforge.training import config_from_dict, train_from_config

    out = Path(args.out)

    print("== 1. tokenizer ==")
    documents = list(builtin_documents("shakespeare"))
    train_docs, held_out = documents[:-1], documents[-1]
    n_chars = sum(len(d.text) for d in train_docs)
    print(f"training on {len(train_docs)} plays ({n_chars:,} characters), holding out {held_out.name}")
    start = time.perf_counter()
    tokenizer = BPETokenizer.train((d.text for d in train_docs), vocab_size=args.vocab_size, pattern="gpt4")
    seconds = time.perf_counter() - start
    tokenizer.save(out / "tokenizer.json")
    print(
        f"trained {len(tokenizer.merges):,} merges in {seconds:.2f} s "
        f"({len(tokenizer.merges) / seconds:,.0f} merges/s); saved {out / 'tokenizer.json'}"
    )
    print(describe(tokenizer, held_out.text, top=5, color=sys.stdout.isatty()))

    print("\n== 2. data ==")
    prepare(["shakespeare"], tokenizer=tokenizer, out=out / "data", val=0.05, overwrite=True, command="demo")

    print("\n== 3. training ==")
    config = config_from_dict(
        {
            "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "dropout": 0.0},
            "data": {"dir": str(out / "data")},
            "optim": {"lr": 2e-3, "min_lr": 2e-4, "warmup_iters": 50, "decay_iters": args.iters},
            "train": {
                "out_dir": str(out / "train"),
                "max_iters": args.iters,
                "batch_size": 16,
                "eval_interval": max(args.iters // 4, 1),
                "eval_batches": 20,
                "log_interval": 25,
            },
        },
        source="lmforge demo",
    )
    result = train_from_config(config, overwrite=True)
    metrics = result.last_eval or {}
    print(
        f"trained {result.step} steps: val loss {metrics.get('loss', float('nan')):.3f}, "
        f"perplexity {metrics.get('ppl', float('nan')):.5g}, "
        f"bits/byte {metrics.get('bpb', float('nan')):.3f}"
    )

    print("\n== 4. samples ==")
    checkpoint = result.run_dir / "checkpoints" / "best"  # lowest val loss (evaluated after the last step)
    for prompt in ("ROMEO\n", "To be"):
        text = generate(checkpoint, prompt, max_new_tokens=80, temperature=0.8, top_k=50, seed=0)
        print(f"--- prompt {prompt!r}\n{prompt}{text}\n")
    print(f"checkpoint: {checkpoint}")
    print(f"metrics:    {result.run_dir / 'metrics.csv'} (TensorBoard: {result.run_dir / 'events'})")
    print(f"plots:      {result.run_dir / 'plots'}")

    print("\n== 5. a real pretrained model ==")
    _ask_builtin_model("smollm2-135m-instruct", "What is the capital of France?")
    return 0


def _ask_builtin_model(name: str, question: str) -> None:
    """One greedy answer of a built-in model through its own chat template (as `lmforge chat` would)."""
    import torch

    from lmforge.errors import DataError
    from lmforge.inference import Engine, SamplingParams
    from lmforge.inference.chat import chat_format
    from lmforge.inference.text import stream_text
    from lmforge.models.builtin import builtin_checkpoint
    from lmforge.models.checkpoints import load_checkpoint

    try:
        model, tokenizer, meta = load_checkpoint(builtin_checkpoint(name))
    except DataError as e:  # the data package is missing: the demo's own path above still stands
        print(f"skipped: {e}")
        return
    chat = chat_format(tokenizer, meta)
    prompt = chat.prompt([{"role": "user", "content": question}], model.config.block_size - 64)
    engine = Engine(model.to(torch.bfloat16))
    answer = "".join(
        stream_text(engine, tokenizer, prompt, SamplingParams(temperature=0.0), max_new_tokens=48,
                    stop_ids=chat.stop_ids())
    )  # fmt: skip
    print(f"lmforge chat --model {name}\n> {question}\n{answer.strip()}")
