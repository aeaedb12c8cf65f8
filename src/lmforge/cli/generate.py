"""`lmforge generate` and `lmforge chat`: text from a trained checkpoint in the terminal.

`generate` continues one or more prompts (from --prompt, a file, or stdin), optionally streaming the
tokens as they come. `chat` is an interactive loop: it uses the checkpoint's chat template when its
meta.json has one, plain continuation of the transcript otherwise, and drops the oldest turns so that
the conversation always fits the model's context window (`lmforge.inference.chat`). The work happens
in `lmforge.inference`; this module parses arguments and prints.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import ConfigError, FormatError, TokenizerError

if TYPE_CHECKING:
    pass


def _add_model_and_sampling_options(p: argparse.ArgumentParser, *, max_new_tokens: int | str) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", metavar="DIR", help="checkpoint directory (model.safetensors + meta.json)")
    which.add_argument(
        "--model", metavar="NAME", help="a built-in pretrained model (see 'lmforge models'), converted once"
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
    g.add_argument(
        "--allow-special",
        action="store_true",
        help="encode special-token text you type (e.g. <|endoftext|>) as that token; without it such text "
        "is refused",
    )
    e = p.add_argument_group("engine")
    e.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "int4"),
        default="float32",
        help="run the weights in this dtype; bfloat16 is about twice as fast on CPUs with AVX512-BF16; "
        "int4 (CPU, with --model of a GGUF built-in) keeps the file's 4-bit weights 4-bit",
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
        help="continue prompts with a checkpoint or a built-in model (--model)",
        description="Continue one or more prompts with a trained checkpoint. The prompt comes from --prompt, "
        "from --prompt-file, or from standard input.",
        epilog="Examples: lmforge generate --ckpt runs/shakespeare-char/checkpoints/best --prompt 'ROMEO:' "
        "--stream --seed 0 (after 'lmforge train --config configs/shakespeare-char.toml'); "
        "lmforge generate --model smollm2-135m-instruct --prompt 'The sky is'",
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
        help="chat with a checkpoint or a built-in model (--model) in the terminal",
        description="An interactive loop: type a message, the model answers (streamed). Uses the "
        "checkpoint's chat template if it has one, otherwise the model continues the transcript. Older turns "
        "are dropped to stay within the context window. Commands: /reset clears the conversation, /help "
        "lists the commands, /quit (or Ctrl-D) exits.",
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
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(
                path, f"prompt file is not valid UTF-8 ({e.reason} at byte {e.start})"
            ) from None
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
    from lmforge.models.builtin import resolve_checkpoint
    from lmforge.models.checkpoints import load_checkpoint

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads={args.threads} is invalid; use an integer >= 1")
        torch.set_num_threads(args.threads)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens={args.max_new_tokens} is invalid; use an integer >= 1")
    if "" in args.stop:
        raise ConfigError("--stop='' is invalid; an empty stop string would stop before the first token")
    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
    )
    if args.dtype == "int4":  # straight from the GGUF file, its Q4 weights as they are
        from lmforge.models.builtin import builtin_gguf
        from lmforge.models.checkpoints import load_gguf

        if args.model is None:
            raise ConfigError("--dtype int4 keeps a GGUF file's 4-bit weights: use it with --model NAME")
        model, tokenizer, meta = load_gguf(builtin_gguf(args.model), dtype=torch.bfloat16, keep_4bit=True)
    else:
        model, tokenizer, meta = load_checkpoint(resolve_checkpoint(args.ckpt, args.model))
        model = for_cpu_inference(model.to(getattr(torch, args.dtype)), copy=False)  # loaded only to generate
    engine = Engine(model, compile=args.compile, context=getattr(args, "context", "error"))
    return engine, tokenizer, params, meta


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
                    allow_special=args.allow_special,
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
        allow_special=args.allow_special,
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


CHAT_HELP = """commands:
  /reset  forget the conversation (a --system message stays)
  /help   this list
  /quit   leave (so does Ctrl-D)
anything else is your next message"""


def run_chat(args: argparse.Namespace) -> int:
    from lmforge.inference.chat import JinjaChatFormat, chat_format
    from lmforge.inference.text import stream_text

    engine, tokenizer, params, meta = _load(args)
    chat = chat_format(
        tokenizer, meta, source=f"{args.ckpt or args.model}/meta.json", allow_special=args.allow_special
    )
    if args.max_new_tokens is None:
        args.max_new_tokens = min(256, engine.block_size // 2)
    budget = engine.block_size - args.max_new_tokens
    if budget < 1:
        raise ConfigError(
            f"--max-new-tokens={args.max_new_tokens} leaves no room for the conversation in the model's "
            f"context of {engine.block_size} tokens; use a smaller value"
        )
    templated = isinstance(chat, JinjaChatFormat) or chat.template is not None
    if args.system and not templated:
        raise ConfigError("--system needs a checkpoint with a chat template; this one continues plain text")
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages: list[dict[str, Any]] = list(system)
    mode = "chat template" if templated else "plain continuation (no chat template in this checkpoint)"
    print(f"lmforge chat: {mode}; context {engine.block_size} tokens. /help lists the commands.")
    for turn in itertools.count():
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        command = line.strip()
        if command == "/quit":
            return 0
        if command == "/reset":
            messages = list(system)
            continue
        if command == "/help":
            print(CHAT_HELP)
            continue
        if not command:
            continue
        messages.append({"role": "user", "content": line})
        reply: list[int] = []
        try:
            prompt = chat.prompt(messages, budget)
        except TokenizerError as e:  # e.g. a character a char-level model has never seen
            print(f"(not sent: {e}; the conversation so far is kept)")
            messages.pop()
            continue
        for piece in stream_text(
            engine,
            tokenizer,
            prompt,
            params if params.seed is None else _with_seed(params, params.seed + turn),  # reproducible turns
            max_new_tokens=args.max_new_tokens,
            stop=args.stop,
            stop_ids=chat.stop_ids(),
            generated=reply,
        ):
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": tokenizer.decode(reply), "ids": reply})
