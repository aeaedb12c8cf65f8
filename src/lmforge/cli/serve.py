"""`lmforge serve`: an OpenAI-compatible HTTP server and web playground for a checkpoint.

Parses options, builds the app (`lmforge.serving.server.create_app`) and runs it with uvicorn. Binds
127.0.0.1 unless told otherwise; the API key comes from --api-key or the LMFORGE_API_KEY variable.
"""

from __future__ import annotations

import argparse
import os

from lmforge.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over an OpenAI-compatible HTTP API, with a web playground",
        description="Serve a checkpoint: POST /v1/completions and /v1/chat/completions (streaming as "
        "server-sent events), GET /v1/models and /health, and a chat playground at /. Requests are "
        "batched continuously. Binds 127.0.0.1 by default; put a reverse proxy with TLS in front before "
        "exposing it.",
        epilog="Example: lmforge serve --model smollm2-135m-instruct --port 8000",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", metavar="DIR", help="checkpoint directory (model.safetensors + meta.json)")
    which.add_argument("--model", metavar="NAME", help="a built-in pretrained model (see 'lmforge models')")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--name", metavar="ID", help="model id clients send (default: the --model name or DIR's name)"
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("LMFORGE_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1/* (default: $LMFORGE_API_KEY, else no key)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights' dtype")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    g = p.add_argument_group("limits")
    g.add_argument("--max-batch", type=int, default=8, metavar="N", help="requests decoded together (8)")
    g.add_argument("--max-waiting", type=int, default=32, metavar="N", help="queued requests before 429 (32)")
    g.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N", help="(default: the context)")
    g.add_argument("--max-tokens", type=int, default=512, metavar="N", help="largest max_tokens (512)")
    g.add_argument("--max-body-bytes", type=int, default=1_000_000, metavar="N", help="(default: 1000000)")
    g.add_argument("--request-timeout", type=float, default=300.0, metavar="S", help="seconds (300)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import torch
    import uvicorn

    from lmforge.models.builtin import resolve_checkpoint
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.models.gpt import checkpoint_meta
    from lmforge.serving.server import ServerConfig, create_app

    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port={args.port} is invalid; use 0..65535")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads={args.threads} is invalid; use an integer >= 1")
        torch.set_num_threads(args.threads)
    config = ServerConfig(
        model_name=args.name or args.model or Path(args.ckpt).resolve().name,
        api_key=args.api_key or None,
        max_batch=args.max_batch,
        max_waiting=args.max_waiting,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout,
    )
    ckpt = resolve_checkpoint(args.ckpt, args.model)  # converts a built-in model once, before serving
    checkpoint_meta(ckpt)  # a missing or broken checkpoint is a one-line error now, not a 503 later

    def load():
        model, tokenizer, meta = load_checkpoint(ckpt)
        return model.to(getattr(torch, args.dtype)), tokenizer, meta

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    key = "on" if config.api_key else "off"
    print(f"lmforge serve: http://{args.host}:{args.port}/ (model id '{config.model_name}', API key {key})")
    uvicorn.run(
        create_app(load, config), host=args.host, port=args.port, access_log=False, log_level="warning"
    )
    return 0
