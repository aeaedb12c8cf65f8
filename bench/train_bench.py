"""Training benchmarks: throughput vs `transformers.GPT2LMHeadModel`, and Shakespeare char-level quality.

python bench/train_bench.py throughput [--steps 10 --rounds 3]
    Training tokens/s (forward + backward + clip + AdamW step) of lmforge's Trainer and of
    transformers' GPT2LMHeadModel (SDPA attention) on the same config and batch, in this process,
    in fp32 and with bf16 autocast, interleaved round by round (the CPU is shared, so the best of the
    rounds is reported). MFU = tokens/s x model FLOPs per token / measured matmul peak.
python bench/train_bench.py prepare-char [--out data/shakespeare-char]
    Build the char-level Shakespeare dataset that configs/shakespeare-char.toml reads (a CharTokenizer
    over the built-in corpus, then the data pipeline's `prepare` with a 10% validation split).
python bench/train_bench.py quality [--out runs/bench-shakespeare-char] [--set KEY=VALUE ...] [--peer]
    Train configs/shakespeare-char.toml (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 steps,
    no dropout, lr 1e-3 cosine to 1e-4) and report the final val loss on the whole split and the wall time.
    --peer also trains the transformers model of the same block with the usual hand-written loop
    (nanoGPT's recipe) and the same settings and data, and scores it on the same tokens (LlamaForCausalLM
    for the Llama-style block of the shipped config, GPT2LMHeadModel for GPT-2's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=4096)
BATCH = 8


class RandomTokens:
    """A batch source of fixed random tokens (the data has no effect on the speed of a dense model)."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor]):
        self.batch = batch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def lmforge_runner(precision: str, batch: tuple[torch.Tensor, torch.Tensor], out_dir: Path):
    """The real Trainer, default settings but no checkpoints/eval/bar; returns run(steps) -> seconds."""
    from lmforge.models import GPT, GPTConfig
    from lmforge.training.config import load_config
    from lmforge.training.optim import build_optimizer
    from lmforge.training.trainer import Trainer

    config = load_config(
        None,
        overrides=[
            "data.dir=unused",
            f"train.out_dir={out_dir}",
            f"train.precision={precision}",
            "train.checkpoint=false",
            "train.progress=false",
            "train.tensorboard=false",
            "train.eval_interval=0",
            "train.peak_tflops=1",
            "train.log_interval=1000000",
        ],
    )
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE, dropout=0.0))
    trainer = Trainer(
        model,
        build_optimizer(model, config.optim),
        RandomTokens(batch),
        optim=config.optim,
        train=config.train,
    )

    def run(steps: int) -> float:
        trainer.config.max_iters = trainer.step + steps
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
        # A fit() call also sets up its logger and writes the PNG plots at the end, once per run in real
        # training but once per few-step round here; a 0-step fit() measures that and is subtracted.
        start = time.perf_counter()
        trainer.fit()
        return seconds - (time.perf_counter() - start)

    return run, trainer.precision, model


def transformers_runner(precision: str, batch: tuple[torch.Tensor, torch.Tensor]):
    """GPT2LMHeadModel, AdamW (torch defaults: foreach), clip 1.0: the usual hand-written loop."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=SHAPE["n_layer"],
        n_head=SHAPE["n_head"],
        n_embd=SHAPE["n_embd"],
        n_positions=SHAPE["block_size"],
        vocab_size=SHAPE["vocab_size"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    config._attn_implementation = "sdpa"  # torch SDPA, as lmforge uses
    model = GPT2LMHeadModel(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x, _ = batch

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return run


def throughput(args: argparse.Namespace) -> None:
    import tempfile

    from lmforge.training.logging import measure_matmul_peak

    torch.manual_seed(0)
    x = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["block_size"]))
    batch = (x, torch.roll(x, -1, dims=1))
    tokens_per_step = BATCH * SHAPE["block_size"]
    peak = {
        "fp32": measure_matmul_peak(dtype=torch.float32, seconds=2),
        "bf16": measure_matmul_peak(dtype=torch.bfloat16, seconds=2),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; config {SHAPE}, batch {BATCH}")
    print(f"matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        default_run, default_precision, model = lmforge_runner("auto", batch, Path(tmp) / "auto")
        runners = {
            "transformers fp32": (transformers_runner("fp32", batch), "fp32"),
            "transformers bf16": (transformers_runner("bf16", batch), "bf16"),
            "lmforge fp32": (lmforge_runner("fp32", batch, Path(tmp) / "fp32")[0], "fp32"),
            "lmforge bf16": (lmforge_runner("bf16", batch, Path(tmp) / "bf16")[0], "bf16"),
            f"lmforge default ({default_precision})": (default_run, default_precision),
        }
        flops_per_token = model.flops_per_token()
        for run, _ in runners.values():
            run(2)  # warm-up: allocator, thread pool, autocast caches
        rates: dict[str, list[float]] = {name: [] for name in runners}
        for r in range(args.rounds):
            for name, (run, _) in runners.items():
                rates[name].append(tokens_per_step * args.steps / run(args.steps))
            print(
                f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in rates.items()), file=sys.stderr
            )
    best = {name: max(v) for name, v in rates.items()}
    print(f"\n{'':28s} {'tok/s best':>11s} {'median':>9s} {'MFU':>7s}")
    for name, (_, precision) in runners.items():
        mfu = best[name] * flops_per_token / peak[precision]
        print(f"{name:28s} {best[name]:11,.0f} {statistics.median(rates[name]):9,.0f} {100 * mfu:6.1f}%")
    default = f"lmforge default ({default_precision})"
    print(
        f"\nlmforge default / transformers fp32 (its default): "
        f"{best[default] / best['transformers fp32']:.2f}x"
    )
    print(
        f"equal precision fp32: {best['lmforge fp32'] / best['transformers fp32']:.2f}x, "
        f"bf16: {best['lmforge bf16'] / best['transformers bf16']:.2f}x"
    )


def prepare_char(out: Path) -> Path:
    """Char-level Shakespeare shards at `out` (skipped if `out/meta.json` exists)."""
    from lmforge.data.builtin import builtin_documents
    from lmforge.data.prepare import prepare
    from lmforge.tokenizers import CharTokenizer

    if (out / "meta.json").is_file():
        return out
    tokenizer = CharTokenizer.train(doc.text for doc in builtin_documents("shakespeare"))
    prepare(
        ["shakespeare"], tokenizer=tokenizer, out=out, val=0.1, command="bench/train_bench.py prepare-char"
    )
    return out


def whole_split_loss(
    model: torch.nn.Module, data: Path, split: str, *, block_size: int, precision: str
) -> dict[str, float]:
    """Loss/bpb of `model` on every token of a split, in non-overlapping windows of its block size."""
    from lmforge.data.datasets import sequential_windows
    from lmforge.data.shards import load_meta, open_split
    from lmforge.evaluation.metrics import evaluate_lm

    counts = load_meta(data)["splits"][split]
    windows = sequential_windows(open_split(data, split), block_size=block_size, batch_size=64)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731
    return evaluate_lm(model, windows, autocast=autocast, bytes_per_token=counts["bytes"] / counts["tokens"])


GPT2_BLOCK = dict(pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True)
LLAMA_BLOCK = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False)


class PeerLM(torch.nn.Module):
    """The transformers model with the same block as an lmforge GPTConfig, behind `model(x, y) -> (logits,
    loss)`: GPT2LMHeadModel for GPT-2's block, LlamaForCausalLM for the Llama-style one."""

    def __init__(self, m, *, vocab_size: int):  # m: lmforge GPTConfig
        import transformers

        super().__init__()
        block = {key: getattr(m, key) for key in GPT2_BLOCK}
        shape = dict(num_hidden_layers=m.n_layer, num_attention_heads=m.n_head, hidden_size=m.n_embd)
        if block == GPT2_BLOCK:
            config = transformers.GPT2Config(
                **shape, n_positions=m.block_size, n_inner=m.n_inner, vocab_size=vocab_size,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=m.norm_eps,
                tie_word_embeddings=m.tie_embeddings, bos_token_id=0, eos_token_id=0,
            )  # fmt: skip
            self.name, cls = "GPT2LMHeadModel", transformers.GPT2LMHeadModel
        elif block == LLAMA_BLOCK:
            config = transformers.LlamaConfig(
                **shape, num_key_value_heads=m.n_kv_head, intermediate_size=m.mlp_hidden,
                max_position_embeddings=m.block_size, vocab_size=vocab_size, rms_norm_eps=m.norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
                tie_word_embeddings=m.tie_embeddings, bos_token_id=0, eos_token_id=0,
            )  # fmt: skip
            self.name, cls = "LlamaForCausalLM", transformers.LlamaForCausalLM
        else:
            raise SystemExit(
                f"--peer: no transformers model has this block {block}; use {GPT2_BLOCK} or {LLAMA_BLOCK}"
            )
        config._attn_implementation = "sdpa"  # torch SDPA, as lmforge uses
        self.hf = cls(config)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.hf(input_ids=x).logits
        return logits, torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def train_peer(config, data: Path, *, precision: str) -> tuple[PeerLM, float]:
    """The usual hand-written loop (nanoGPT's recipe) around `PeerLM`, with `config`'s settings.

    Same shape, batch size, steps, AdamW hyperparameters, warmup + cosine schedule, clipping and precision
    as the lmforge run, and the same training split; its own random windows and initialization. Weight
    decay on every matrix (embeddings included), as nanoGPT does.
    """
    import math

    import numpy as np

    from lmforge.data.shards import load_meta, open_split

    m, o, t = config.model.build(), config.optim, config.train
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    model = PeerLM(m, vocab_size=load_meta(data)["vocab_size"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
    )

    def lr_at(step: int) -> float:
        if step < o.warmup_iters:
            return o.lr * (step + 1) / o.warmup_iters
        progress = min(1.0, (step - o.warmup_iters) / (o.decay_iters - o.warmup_iters))
        return o.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (o.lr - o.min_lr)

    tokens = np.asarray(open_split(data, "train"), dtype=np.int64)
    T = m.block_size
    start = time.perf_counter()
    model.train()
    for step in range(t.max_iters):
        offsets = rng.integers(0, len(tokens) - T, size=t.batch_size)
        window = torch.from_numpy(np.stack([tokens[i : i + T + 1] for i in offsets]))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            _, loss = model(window[:, :-1], window[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, time.perf_counter() - start


def quality(args: argparse.Namespace) -> None:
    from lmforge.models import GPT
    from lmforge.training.config import load_config
    from lmforge.training.trainer import resolve_precision, train_from_config

    data = prepare_char(Path(args.data))
    config = load_config(
        ROOT / "configs/shakespeare-char.toml",
        overrides=[f"data.dir={data}", f"train.out_dir={args.out}", *args.set],
    )
    precision = resolve_precision(config.train.precision, torch.device("cpu"))
    start = time.perf_counter()
    result = train_from_config(config)
    wall = time.perf_counter() - start
    model = GPT.from_checkpoint(Path(args.out) / "checkpoints" / f"step_{result.step:08d}")
    m = model.config
    ours = whole_split_loss(model, data, "val", block_size=m.block_size, precision=precision)
    print(
        f"\nlmforge: {result.step} steps in {wall:.0f} s ({precision}); {model.num_params():,} parameters "
        f"(pos {m.pos_encoding}, {m.norm}, mlp {m.mlp}); seed {config.train.seed}"
    )
    print(f"  val loss during training ({config.train.eval_batches} batches): {result.last_eval['loss']:.4f}")
    print(
        f"  val loss on the whole val split ({int(ours['tokens']):,} tokens): {ours['loss']:.4f}, "
        f"bpb {ours['bpb']:.4f}; target <= 1.88"
    )
    if args.peer:
        peer, peer_wall = train_peer(config, data, precision=precision)
        theirs = whole_split_loss(peer, data, "val", block_size=m.block_size, precision=precision)
        n_params = sum(p.numel() for p in peer.parameters())
        print(
            f"transformers {peer.name}, hand-written loop: {config.train.max_iters} steps in "
            f"{peer_wall:.0f} s ({precision}); {n_params:,} parameters"
        )
        print(f"  val loss on the whole val split: {theirs['loss']:.4f}, bpb {theirs['bpb']:.4f}")
        print(f"lmforge - transformers: {ours['loss'] - theirs['loss']:+.4f} nats/token")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--steps", type=int, default=10, help="timed steps per round and runner")
    t.add_argument("--rounds", type=int, default=3)
    p = sub.add_parser("prepare-char")
    p.add_argument("--out", default="data/shakespeare-char")
    q = sub.add_parser("quality")
    q.add_argument("--data", default="data/shakespeare-char")
    q.add_argument("--out", default="runs/bench-shakespeare-char")
    q.add_argument("--set", action="append", default=[], help="config override, as for lmforge train")
    q.add_argument(
        "--peer",
        action="store_true",
        help="also train the transformers model of the same block with the same settings and data",
    )
    args = parser.parse_args()
    if args.what == "throughput":
        throughput(args)
    elif args.what == "prepare-char":
        print(prepare_char(Path(args.out)))
    else:
        quality(args)


if __name__ == "__main__":
    main()
