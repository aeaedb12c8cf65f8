"""Generation speed: lmforge's Engine vs transformers' `generate`, batch 1, greedy, in one process.

GPT-2 124M shape with random weights: a transformers GPT2LMHeadModel is built from GPT2Config(), saved,
and loaded into lmforge with `from_hf_gpt2`, so both run identical weights and must emit identical
greedy tokens (checked). Measured: tokens/s of the decoding phase for a 16-token prompt and 256 new
tokens in fp32 (both) and bf16 weights (lmforge); lmforge runs the model as `lmforge generate` does,
in the CPU inference layout (`for_cpu_inference`), and also in fp32 as given (`Engine(model)` on a
model that is still being trained keeps the default layout); then lmforge with and without its KV cache
("without" recomputes the whole sequence for every token) at 512 and 1024 tokens of context, and the
time of a prefill with oneDNN on and off. Each figure is the best of --repeats runs, alternating peers
so that load from other processes hits both alike.

Run: .venv/bin/python bench/generate_bench.py [--new-tokens 256 --repeats 2 --long-new-tokens 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def best_rate(fn, n_tokens: int, repeats: int) -> tuple[float, list[int]]:
    """Best tokens/s over `repeats` calls of fn() -> generated ids."""
    best, out = 0.0, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = max(best, n_tokens / (time.perf_counter() - start))
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--long-new-tokens", type=int, default=8, help="new tokens in the 512/1024 runs")
    parser.add_argument("--compile", action="store_true", help="also time Engine(compile=True)")
    parser.add_argument("--ppl-steps", type=int, default=300, help="training steps of the bf16 ppl check")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    from lmforge.inference import Engine, SamplingParams, for_cpu_inference
    from lmforge.models.convert import from_hf_gpt2

    torch.manual_seed(0)
    config = transformers.GPT2Config(bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = from_hf_gpt2(tmp).eval()
    greedy = SamplingParams(temperature=0)
    prompt = torch.randint(0, config.vocab_size, (1, 16)).tolist()[0]
    n = args.new_tokens
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"GPT-2 124M shape, random weights; prompt 16 tokens, {n} new tokens, greedy, batch 1")

    @torch.inference_mode()
    def hf_generate(prompt_ids: list[int], new: int) -> list[int]:
        ids = torch.tensor([prompt_ids])
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=0,
        )
        return out[0, ids.size(1) :].tolist()

    def ours_generate(engine: Engine, prompt_ids: list[int], new: int) -> list[int]:
        return engine.generate([prompt_ids], greedy, max_new_tokens=new)[0]

    @torch.inference_mode()
    def ours_uncached(model: torch.nn.Module, prompt_ids: list[int], new: int) -> list[int]:
        ids = list(prompt_ids)
        for _ in range(new):
            logits, _ = model(torch.tensor([ids]), last_only=True)
            ids.append(int(logits[0, -1].argmax()))
        return ids[len(prompt_ids) :]

    as_given = Engine(from_hf_gpt2_copy(ours))  # default layout, as a model being trained keeps it
    ours = for_cpu_inference(ours, copy=False)  # as `lmforge generate` loads a checkpoint
    engine = Engine(ours)
    hf_generate(prompt, 4), ours_generate(engine, prompt, 4), ours_generate(as_given, prompt, 4)  # warm-up
    rates: dict[str, float] = {}
    outputs: dict[str, list[int]] = {}
    for _ in range(args.repeats):  # alternate, best of each
        for name, fn in (
            ("transformers fp32", lambda: hf_generate(prompt, n)),
            ("lmforge fp32", lambda: ours_generate(engine, prompt, n)),
            ("lmforge fp32 as given", lambda: ours_generate(as_given, prompt, n)),
        ):
            rate, outputs[name] = best_rate(fn, n, 1)
            rates[name] = max(rate, rates.get(name, 0.0))
    same = outputs["lmforge fp32"] == outputs["transformers fp32"]

    # .to() keeps the fp32 layout's strides; for_cpu_inference gives bf16 back the layout it prefers
    bf16 = for_cpu_inference(from_hf_gpt2_copy(ours).to(torch.bfloat16), copy=False)
    bf16_engine = Engine(bf16)
    ours_generate(bf16_engine, prompt, 4)
    rates["lmforge bf16"], outputs["lmforge bf16"] = best_rate(
        lambda: ours_generate(bf16_engine, prompt, n), n, args.repeats
    )
    if args.compile:
        compiled = Engine(ours, compile=True)
        ours_generate(compiled, prompt, n)  # compiles
        rates["lmforge fp32 compiled"], outputs["lmforge fp32 compiled"] = best_rate(
            lambda: ours_generate(compiled, prompt, n), n, args.repeats
        )
    base = rates["transformers fp32"]
    for name, rate in rates.items():
        agree = sum(a == b for a, b in zip(outputs[name], outputs["transformers fp32"], strict=True))
        print(
            f"  {name:24s} {rate:7.1f} tok/s  {rate / base:5.2f}x transformers   "
            f"tokens equal to transformers: {agree}/{n}"
        )
    print(f"  fp32 greedy tokens identical to transformers: {same}")

    long_new = args.long_new_tokens
    print(f"KV cache vs recomputation: decoding {long_new} tokens that end at the given context (fp32)")
    for context in (512, 1024):
        p = torch.randint(0, config.vocab_size, (context - long_new,)).tolist()

        def decode_rate(fn) -> tuple[float, list[int]]:
            """Tokens/s of decoding alone: time(prefill + n tokens) - time(prefill + 1 token)."""
            start = time.perf_counter()
            fn(1)
            one = time.perf_counter() - start
            start = time.perf_counter()
            out = fn(long_new)
            return (long_new - 1) / (time.perf_counter() - start - one), out

        cached, out_cached = decode_rate(lambda k, p=p: ours_generate(engine, p, k))
        hf_rate, out_hf = decode_rate(lambda k, p=p: hf_generate(p, k))
        uncached, out_uncached = best_rate(lambda p=p: ours_uncached(ours, p, long_new), long_new, 1)
        print(
            f"  context {context:4d}: lmforge cached {cached:6.1f} tok/s, uncached {uncached:6.2f} tok/s "
            f"({cached / uncached:5.1f}x), transformers cached {hf_rate:6.1f} tok/s; "
            f"same tokens: {out_cached == out_uncached == out_hf}"
        )
    prefill_kernels(ours, bf16, args.repeats)
    if args.ppl_steps:
        bf16_perplexity_cost(args.ppl_steps)


@torch.inference_mode()
def prefill_kernels(fp32: torch.nn.Module, bf16: torch.nn.Module, repeats: int) -> None:
    """Seconds of one prefill (a forward pass over a 256-token prompt, last position's logits) with
    oneDNN on and off: the engine keeps oneDNN for prefill and turns it off for the one-token steps."""
    idx = torch.randint(0, fp32.config.vocab_size, (1, 256))
    print("prefill of 256 tokens (best of repeats), oneDNN on / off:")
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        best = {True: float("inf"), False: float("inf")}
        for _ in range(repeats):
            for enabled in (True, False):
                torch.backends.mkldnn.enabled = enabled
                start = time.perf_counter()
                model(idx, last_only=True)
                best[enabled] = min(best[enabled], time.perf_counter() - start)
                torch.backends.mkldnn.enabled = True
        print(f"  {name}: {best[True]:.3f} s / {best[False]:.3f} s")


def bf16_perplexity_cost(steps: int) -> None:
    """Train a small char-level GPT on Shakespeare for `steps` steps, then compare val perplexity with
    fp32 and bf16 weights (the loss itself is always computed in fp32 by the model)."""
    import copy
    import math

    from lmforge.data.builtin import builtin_text
    from lmforge.models import GPT, GPTConfig
    from lmforge.tokenizers import CharTokenizer

    text = builtin_text("shakespeare")
    start = time.perf_counter()
    tokenizer = CharTokenizer.train([text])
    ids = torch.tensor(tokenizer.encode_ordinary(text))
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split : split + 200_000]  # 200k val characters keep this quick
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("cpu-small", vocab_size=tokenizer.vocab_size, block_size=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    T, B = model.config.block_size, 32
    for _ in range(steps):
        starts = torch.randint(0, len(train) - T - 1, (B,))
        x = torch.stack([train[s : s + T] for s in starts])
        y = torch.stack([train[s + 1 : s + T + 1] for s in starts])
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()

    @torch.inference_mode()
    def val_loss(m: torch.nn.Module) -> float:
        n = (len(val) - 1) // T
        x, y = val[: n * T].view(n, T), val[1 : n * T + 1].view(n, T)
        losses = [m(x[i : i + 64], y[i : i + 64])[1].item() * len(x[i : i + 64]) for i in range(0, n, 64)]
        return sum(losses) / n

    fp32, bf16 = val_loss(model), val_loss(copy.deepcopy(model).to(torch.bfloat16))
    print(
        f"bf16 cost: char-level GPT (cpu-small, {model.num_params() / 1e6:.2f}M params), {steps} steps; "
        f"Shakespeare val ({len(val):,} chars) perplexity fp32 {math.exp(fp32):.4f}, bf16 weights "
        f"{math.exp(bf16):.4f} ({100 * (math.exp(bf16) / math.exp(fp32) - 1):+.2f}%) "
        f"[{time.perf_counter() - start:.0f} s]"
    )


def from_hf_gpt2_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An independent copy of a GPT (so that casting it leaves the fp32 one alone)."""
    import copy

    return copy.deepcopy(model)


if __name__ == "__main__":
    main()
