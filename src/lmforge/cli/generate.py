"""`lmforge generate` and `lmforge chat`: text from a trained checkpoint in the terminal.

`generate` continues one or more prompts (from --prompt, a file, or stdin), optionally streaming the
tokens as they come. `chat` is an interactive loop: it uses the checkpoint's chat template when its
meta.json has one (see `_ChatFormat`), plain continuation of the transcript otherwise, and drops the
oldest turns so that the conversation always fits the model's context window. The work happens in
`lmforge.inference`; this module parses arguments and prints.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, FormatError


def _add_model_and_sampling_options(p: argparse.ArgumentParser, *, max_new_tokens: int | str) -> None:
    p.add_argument(
        "--ckpt", required=True, metavar="DIR", help="checkpoint directory (model.safetensors + meta.json)"
    )
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens if isinstance(max_new_tokens, int) else None,
        metavar="N",
        help=f"stop after N new tokens (default: {max_new_tokens})",
    )
    g.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 = greedy (default: 0.8)")
    g.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the K most likely tokens")
    g.add_argument(
        "--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling, P in (0, 1] (default: 1)"
    )
    g.add_argument(
        "--min-p", type=float, default=0.0, metavar="P", help="drop tokens below P x the top probability"
    )
    g.add_argument(
        "--repetition-penalty", type=float, default=1.0, metavar="R", help="> 1 discourages repeats"
    )
    g.add_argument(
        "--frequency-penalty", type=float, default=0.0, metavar="F", help="subtract F per earlier use"
    )
    g.add_argument(
        "--seed", type=int, default=None, metavar="S", help="same seed, same text (default: random)"
    )
    g.add_argument(
        "--stop", action="append", default=[], metavar="STR", help="stop before this text (repeatable)"
    )
    e = p.add_argument_group("engine")
    e.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="run the weights in this dtype; bfloat16 is about twice as fast on CPUs with AVX512-BF16",
    )
    e.add_argument("--compile", action="store_true", help="torch.compile the decoding step (slow first call)")
    e.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: torch's choice); on a busy machine 1 can be much faster",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="continue prompts with a trained checkpoint",
        description="Continue one or more prompts with a trained checkpoint. The prompt comes from --prompt, "
        "from --prompt-file, or from standard input.",
        epilog="Example: lmforge generate --ckpt runs/shakespeare/ckpt --prompt 'ROMEO:' --stream --seed 0",
    )
    _add_model_and_sampling_options(p, max_new_tokens=200)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", metavar="TEXT", help="the text to continue")
    src.add_argument(
        "--prompt-file", metavar="FILE", help="read the prompt from FILE ('-' for standard input)"
    )
    p.add_argument(
        "--per-line",
        action="store_true",
        help="treat each non-empty line of the prompt input as a separate prompt (generated as one batch)",
    )
    p.add_argument("--num-samples", type=int, default=1, metavar="M", help="samples per prompt (default: 1)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument(
        "--context",
        choices=("error", "sliding"),
        default="error",
        help="when prompt + new tokens exceed the context window: fail (default) or slide the window",
    )
    p.set_defaults(func=run_generate)

    c = subparsers.add_parser(
        "chat",
        help="chat with a trained checkpoint in the terminal",
        description="An interactive loop: type a message, the model answers (streamed). Uses the "
        "checkpoint's chat template if it has one, otherwise the model continues the transcript. Older turns "
        "are dropped to stay within the context window. Commands: /reset clears the conversation, /quit (or "
        "Ctrl-D) exits.",
    )
    _add_model_and_sampling_options(c, max_new_tokens="half the context, at most 256")
    c.add_argument("--system", metavar="TEXT", help="system message (only with a chat template)")
    c.set_defaults(func=run_chat)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        text = args.prompt
    elif args.prompt_file not in (None, "-"):
        path = Path(args.prompt_file)
        if not path.is_file():
            raise FormatError(path, "prompt file not found")
        text = path.read_text(encoding="utf-8")
    elif args.prompt_file == "-" or not sys.stdin.isatty():
        text = sys.stdin.read()
    else:
        raise ConfigError(
            "no prompt: give --prompt TEXT, --prompt-file FILE, or pipe text into standard input"
        )
    prompts = [line for line in text.splitlines() if line.strip()] if args.per_line else [text]
    if not prompts or not all(prompts):
        raise ConfigError("the prompt is empty; give some text to continue")
    return prompts


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """-> (engine, tokenizer, sampling params, checkpoint meta), validating options before loading."""
    import torch

    from lmforge.inference import Engine, SamplingParams, for_cpu_inference
    from lmforge.inference.text import load_checkpoint
    from lmforge.models import checkpoint_meta

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads={args.threads} is invalid; use an integer >= 1")
        torch.set_num_threads(args.threads)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens={args.max_new_tokens} is invalid; use an integer >= 1")
    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
    )
    model, tokenizer = load_checkpoint(args.ckpt)
    model = for_cpu_inference(model.to(getattr(torch, args.dtype)), copy=False)  # loaded only to generate
    engine = Engine(model, compile=args.compile, context=getattr(args, "context", "error"))
    return engine, tokenizer, params, checkpoint_meta(args.ckpt)


def run_generate(args: argparse.Namespace) -> int:
    from lmforge.inference.text import generate_texts, stream_text

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples={args.num_samples} is invalid; use an integer >= 1")
    prompts = _read_prompts(args)
    engine, tokenizer, params, _ = _load(args)
    several = len(prompts) * args.num_samples > 1
    if args.stream:
        for i, prompt in enumerate(prompts):
            for j in range(args.num_samples):
                if several:
                    print(f"--- prompt {i + 1}, sample {j + 1} ---")
                sample_params = params if params.seed is None else _with_seed(params, params.seed + j)
                pieces = stream_text(
                    engine,
                    tokenizer,
                    prompt,
                    sample_params,
                    max_new_tokens=args.max_new_tokens,
                    stop=args.stop,
                )
                print(prompt + next(pieces, ""), end="", flush=True)  # the first piece surfaces any error
                for piece in pieces:
                    print(piece, end="", flush=True)
                print()
        return 0
    texts = generate_texts(
        engine,
        tokenizer,
        prompts,
        params,
        max_new_tokens=args.max_new_tokens,
        num_samples=args.num_samples,
        stop=args.stop,
    )
    for i, prompt in enumerate(prompts):
        for j, continuation in enumerate(texts[i]):
            if several:
                print(f"--- prompt {i + 1}, sample {j + 1} ---")
            print(prompt + continuation)
    return 0


def _with_seed(params: Any, seed: int) -> Any:
    from dataclasses import replace

    return replace(params, seed=seed)


class _ChatFormat:
    """How a conversation becomes token ids.

    With a template (meta.json "chat_template": {"system": "<|system|>{content}<|end|>", "user": ...,
    "assistant": ..., "generation_prompt": "<|assistant|>", "stop": ["<|end|>"]}) every message is its
    role's pattern with the message in place of {content}; the pattern's own text may hold special
    tokens, the message is encoded as plain text so a user cannot type a control token. Without a
    template the conversation is plain text: each user message followed by a newline, each reply as
    the model wrote it, and the model simply continues the transcript.
    """

    def __init__(self, tokenizer: Any, template: dict | None):
        self.tokenizer = tokenizer
        self.template = template
        if template is not None:
            missing = [k for k in ("user", "assistant", "generation_prompt") if k not in template]
            if missing:
                raise FormatError("meta.json", f"chat_template lacks {', '.join(missing)}")

    def message(self, role: str, content: str | list[int]) -> list[int]:
        """Ids of one message; `content` is text, or the ids the model generated for a reply."""
        if isinstance(content, str):
            content = self.tokenizer.encode_ordinary(content + "\n" if self.template is None else content)
        if self.template is None:
            return content
        if role not in self.template:
            raise ConfigError(f"this checkpoint's chat template has no '{role}' role")
        before, _, after = self.template[role].partition("{content}")
        encode = lambda s: self.tokenizer.encode(s, allowed_special="all")  # template text may hold specials
        return encode(before) + content + encode(after)

    def generation_prompt(self) -> list[int]:
        return (
            []
            if self.template is None
            else self.tokenizer.encode(self.template["generation_prompt"], allowed_special="all")
        )

    def stop_ids(self) -> tuple[int, ...]:
        ids = {self.tokenizer.eot_id} - {None}
        for s in (self.template or {}).get("stop", []):
            if s in self.tokenizer.special_tokens:
                ids.add(self.tokenizer.special_tokens[s])
        return tuple(sorted(ids))


def fit_conversation(messages: list[list[int]], budget: int, *, keep_first: bool) -> list[int]:
    """Concatenate message ids, dropping the oldest messages (but the first if `keep_first`, e.g. a system
    message) until at most `budget` tokens remain; if the newest alone is too long, keep its last tokens.

    Example: messages of 3, 4 and 2 tokens with budget 7 -> the last two (6 tokens).
    """
    first = messages[:1] if keep_first else []
    rest = messages[1:] if keep_first else list(messages)
    while rest and sum(map(len, first + rest)) > budget:
        if len(rest) == 1:
            room = budget - sum(map(len, first))
            rest = [rest[0][-room:] if room > 0 else []]
            break
        rest.pop(0)
    return [t for m in first + rest for t in m][-budget:]


def run_chat(args: argparse.Namespace) -> int:
    from lmforge.inference.text import stream_text

    engine, tokenizer, params, meta = _load(args)
    chat = _ChatFormat(tokenizer, meta.get("chat_template"))
    if args.max_new_tokens is None:
        args.max_new_tokens = min(256, engine.block_size // 2)
    budget = engine.block_size - args.max_new_tokens
    if budget < 1:
        raise ConfigError(
            f"--max-new-tokens={args.max_new_tokens} leaves no room for the conversation in the model's "
            f"context of {engine.block_size} tokens; use a smaller value"
        )
    if args.system and chat.template is None:
        raise ConfigError("--system needs a checkpoint with a chat template; this one continues plain text")
    system = [chat.message("system", args.system)] if args.system else []
    messages: list[list[int]] = list(system)
    mode = "chat template" if chat.template else "plain continuation (no chat template in this checkpoint)"
    print(f"lmforge chat: {mode}; context {engine.block_size} tokens. /reset clears, /quit or Ctrl-D exits.")
    for turn in itertools.count():
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if line.strip() == "/quit":
            return 0
        if line.strip() == "/reset":
            messages = list(system)
            continue
        if not line.strip():
            continue
        messages.append(chat.message("user", line))
        prompt = fit_conversation(messages, budget - len(chat.generation_prompt()), keep_first=bool(system))
        reply: list[int] = []
        for piece in stream_text(
            engine,
            tokenizer,
            prompt + chat.generation_prompt(),
            params if params.seed is None else _with_seed(params, params.seed + turn),  # reproducible turns
            max_new_tokens=args.max_new_tokens,
            stop=args.stop,
            stop_ids=chat.stop_ids(),
            generated=reply,
        ):
            print(piece, end="", flush=True)
        print()
        messages.append(chat.message("assistant", reply))
