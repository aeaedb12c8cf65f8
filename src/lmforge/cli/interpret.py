"""`lmforge interpret attention|lens|trace|induction|probe|sae|superposition`: look inside a model.

Parsing and printing only; the analyses live in `lmforge.interpret`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError


def _add_model_options(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", metavar="DIR", help="checkpoint directory (model.safetensors + meta.json)")
    which.add_argument("--model", metavar="NAME", help="a built-in pretrained model (see 'lmforge models')")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "interpret",
        help="look inside a model: attention maps, logit lens, causal tracing, induction heads, probes, SAEs",
        description="Interpretability tools on a checkpoint, all through forward hooks on the model's "
        "named modules (see docs/interpret.md).",
    )
    commands = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    a = commands.add_parser(
        "attention",
        help="attention heatmaps per layer and head, and a per-head summary",
        description="Run the model on TEXT, write one PNG per layer (a heatmap per head, tokens on both "
        "axes) and print each head's mean attention entropy, previous-token and first-token weight.",
    )
    _add_model_options(a)
    a.add_argument("--text", required=True, help="the text to look at (a few dozen tokens at most)")
    a.add_argument("--out", default="interpret/attention", metavar="DIR", help="where the PNGs go")
    a.set_defaults(func=run_attention)

    lens = commands.add_parser(
        "lens",
        help="logit lens: the top tokens after each layer, and a target token's rank by layer",
        description="Read the residual stream after every layer through the final norm and the "
        "unembedding, at the last position of TEXT: top-k tokens per layer, and with --target the rank "
        "of that token at each depth (table and plot).",
    )
    _add_model_options(lens)
    lens.add_argument("--text", required=True, help="the prompt; the lens reads its last position")
    lens.add_argument(
        "--target", default=None, help="a token (one token of the tokenizer) to follow by layer"
    )
    lens.add_argument("--k", type=int, default=5, metavar="K", help="top tokens per layer (default: 5)")
    lens.add_argument("--out", default=None, metavar="PNG", help="with --target: plot the rank by layer here")
    lens.set_defaults(func=run_lens)

    t = commands.add_parser(
        "trace",
        help="causal tracing: which (layer, position) restores the clean answer in a corrupted prompt",
        description="Run CORRUPT once per (layer, position) with that activation restored from CLEAN, and "
        "measure how much of the logit difference logit(ANSWER) - logit(WRONG) at the last position comes "
        "back (0 = none, 1 = all). Both prompts must have the same number of tokens.",
        epilog="example:\n  lmforge interpret trace --ckpt DIR --clean 'The Eiffel Tower is in' \\\n"
        "      --corrupt 'The Colosseum is in' --answer ' Paris' --wrong ' Rome'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_options(t)
    t.add_argument("--clean", required=True, help="the prompt whose answer is ANSWER")
    t.add_argument("--corrupt", required=True, help="the same prompt with a few tokens changed")
    t.add_argument("--answer", required=True, help="the clean prompt's answer (one token)")
    t.add_argument("--wrong", required=True, help="the corrupt prompt's answer (one token)")
    t.add_argument(
        "--kind", choices=("resid_pre", "attn_out", "mlp_out"), default="resid_pre", help="which activation"
    )
    t.add_argument("--out", default="interpret/trace.png", metavar="PNG", help="the heatmap")
    t.set_defaults(func=run_trace)

    i = commands.add_parser(
        "induction",
        help="repeated random tokens: induction score per head and the in-context loss drop",
        description="Feed sequences of N random tokens followed by the same N tokens, and print each "
        "head's induction score (attention from a token to the one after its previous occurrence), its "
        "strongest fixed-distance look-back, and the loss on the first copy against the repeat.",
    )
    _add_model_options(i)
    i.add_argument(
        "--half", type=int, default=24, metavar="N", help="length of the random half (default: 24)"
    )
    i.add_argument("--rows", type=int, default=32, metavar="B", help="number of sequences (default: 32)")
    i.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random tokens (default: 0)")
    i.set_defaults(func=run_induction)

    pr = commands.add_parser(
        "probe",
        help="linear probes per layer for the topic of Wikipedia leads, trained model vs random weights",
        description="Run the model on built-in Wikipedia leads (11 topics), fit a logistic-regression probe "
        "per depth on the residual stream at every 4th position from --skip on, and print held-out accuracy "
        "by depth for the model and for a randomly initialised model of the same shape (the control). The "
        "split is by lead: a quarter of the leads are never seen by the probes.",
    )
    _add_model_options(pr)
    pr.add_argument("--leads", type=int, default=800, metavar="N", help="number of leads (default: 800)")
    pr.add_argument("--length", type=int, default=48, metavar="T", help="tokens per lead (default: 48)")
    pr.add_argument("--skip", type=int, default=16, metavar="P", help="first probed position (default: 16)")
    pr.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the leads, split and control")
    pr.add_argument("--out", default=None, metavar="PNG", help="plot accuracy by depth here")
    pr.set_defaults(func=run_probe)

    sae = commands.add_parser(
        "sae",
        help="sparse autoencoders on a layer's activations: train one, look at its features",
        description="Dictionary learning on one hook point's activations over built-in text.",
    )
    sae_commands = sae.add_subparsers(dest="sae_command", metavar="COMMAND", required=True)
    st = sae_commands.add_parser(
        "train",
        help="train an SAE on POINT over built-in text; print explained variance, L0, dead features and "
        "the model's loss with the reconstruction patched in",
        description="Collect the activations at POINT (e.g. blocks.1.resid_post) on random windows of a "
        "built-in corpus, train a ReLU sparse autoencoder with an L1 penalty and unit-norm decoder rows "
        "(dead features resampled), then report on held-out windows: MSE, explained variance, L0, dead "
        "features, and the model's next-token loss clean / with the SAE's reconstruction / with the "
        "activation mean-ablated. Writes OUT/sae.safetensors and OUT/sae.json.",
    )
    _add_model_options(st)
    _add_text_options(st)
    st.add_argument("--point", required=True, help="hook point, e.g. blocks.1.resid_post")
    st.add_argument("--features", type=int, default=1024, metavar="F", help="dictionary size (default: 1024)")
    st.add_argument("--l1", type=float, default=1e-2, help="L1 penalty weight (default: 0.01)")
    st.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 0.001)")
    st.add_argument("--steps", type=int, default=3000, help="training steps (default: 3000)")
    st.add_argument("--batch-size", type=int, default=256, help="activations per step (default: 256)")
    st.add_argument("--resample-every", type=int, default=1000, help="dead-feature check interval (0 = off)")
    st.add_argument("--out", default="interpret/sae", metavar="DIR", help="where the SAE is written")
    st.set_defaults(func=run_sae_train)
    sf = sae_commands.add_parser(
        "features",
        help="the top-activating contexts of SAE features",
        description="Run the model and a trained SAE (from 'lmforge interpret sae train') over built-in "
        "text and print, for each feature asked for, the tokens where it fires hardest with their context "
        "(the token in [brackets]). Without --feature: the features that fire most often.",
    )
    _add_model_options(sf)
    _add_text_options(sf)
    sf.add_argument("--sae", required=True, metavar="DIR", help="directory written by 'sae train'")
    sf.add_argument(
        "--feature", type=int, action="append", default=[], metavar="I", help="a feature (repeatable)"
    )
    sf.add_argument("--top", type=int, default=5, metavar="K", help="contexts per feature (default: 5)")
    sf.set_defaults(func=run_sae_features)

    sp = commands.add_parser(
        "superposition",
        help="the toy model of superposition: n sparse features through m < n dimensions",
        description="Train one toy model x -> ReLU(W^T W x + b) per sparsity, side by side, and print which "
        "features each represents (||W_i||) and how much they interfere; plot W^T W (and for m = 2 the "
        "columns of W). Elhage et al. 2022.",
    )
    sp.add_argument("--features", type=int, default=5, metavar="N", help="number of features n (default: 5)")
    sp.add_argument("--hidden", type=int, default=2, metavar="M", help="bottleneck width m (default: 2)")
    sp.add_argument(
        "--sparsity",
        type=float,
        action="append",
        default=[],
        metavar="S",
        help="P(feature = 0), repeatable (default: 0, 0.7, 0.9, 0.97, 0.99)",
    )
    sp.add_argument("--importance", type=float, default=0.7, help="importance decay: I_i = this ** i")
    sp.add_argument("--steps", type=int, default=2000, help="training steps (default: 2000)")
    sp.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default: 0.01)")
    sp.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default: 0)")
    sp.add_argument("--out", default="interpret/superposition.png", metavar="PNG", help="the picture")
    sp.set_defaults(func=run_superposition)


def _add_text_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        default="shakespeare",
        choices=("shakespeare", "python-stdlib", "wiki-leads"),
        help="built-in text to run the model on (default: shakespeare)",
    )
    p.add_argument("--windows", type=int, default=400, metavar="N", help="windows of text (default: 400)")
    p.add_argument("--length", type=int, default=64, metavar="T", help="tokens per window (default: 64)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the windows and the SAE")


def _load(args: argparse.Namespace, *, require_tokenizer: bool = True) -> tuple[Any, Any]:
    from lmforge.models.builtin import resolve_checkpoint
    from lmforge.models.checkpoints import load_checkpoint

    ckpt = resolve_checkpoint(args.ckpt, args.model)
    model, tokenizer, _ = load_checkpoint(ckpt, require_tokenizer=require_tokenizer)
    return model.float(), tokenizer


def _encode(tokenizer: Any, model: Any, text: str, what: str) -> Any:
    import torch

    ids = tokenizer.encode_ordinary(text)
    if not ids:
        raise ConfigError(f"{what} is empty")
    if len(ids) > model.config.block_size:
        raise ConfigError(
            f"{what} has {len(ids)} tokens, more than the model's context ({model.config.block_size})"
        )
    return torch.tensor(ids)


def _one_token(tokenizer: Any, text: str, option: str) -> int:
    ids = tokenizer.encode_ordinary(text)
    if len(ids) != 1:
        raise ConfigError(f"{option} {text!r} is {len(ids)} tokens; give a text that is exactly one token")
    return ids[0]


def _labels(tokenizer: Any, ids: Any) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


def run_attention(args: argparse.Namespace) -> int:
    from lmforge.interpret.attention import attention_patterns, head_summary, plot_attention, summary_table

    model, tokenizer = _load(args)
    ids = _encode(tokenizer, model, args.text, "--text")
    patterns = attention_patterns(model, ids)
    paths = plot_attention(patterns, _labels(tokenizer, ids), args.out)
    print(summary_table(head_summary(patterns)))
    print(f"wrote {len(paths)} heatmaps to {Path(args.out)}/ ({paths[0].name} .. {paths[-1].name})")
    return 0


def run_lens(args: argparse.Namespace) -> int:
    from lmforge.interpret.lens import logit_lens, plot_ranks, target_ranks, top_tokens

    if args.k < 1:
        raise ConfigError(f"--k must be a positive integer, got {args.k}")
    model, tokenizer = _load(args)
    ids = _encode(tokenizer, model, args.text, "--text")
    target = None if args.target is None else _one_token(tokenizer, args.target, "--target")
    lens = logit_lens(model, ids[None])[:, 0, -1]  # (n_layer + 1, V) at the last position
    probs, top = top_tokens(lens, k=min(args.k, lens.size(-1)))
    ranks = None if target is None else target_ranks(lens, target)
    print(f"logit lens at the last token {tokenizer.decode([int(ids[-1])])!r}; depth 0 = the embeddings")
    for depth in range(lens.size(0)):
        tokens = "  ".join(
            f"{tokenizer.decode([int(i)])!r} {float(p):.2f}"
            for i, p in zip(top[depth], probs[depth], strict=True)
        )
        rank = "" if ranks is None else f"rank {ranks[depth] + 1:>6}  "
        print(f"{depth:>5}  {rank}{tokens}")
    if ranks is not None and args.out:
        plot_ranks(ranks, args.out, title=f"rank of {args.target!r} after {args.text!r}")
        print(f"wrote {args.out}")
    return 0


def run_trace(args: argparse.Namespace) -> int:
    from lmforge.interpret.tracing import plot_trace, trace

    model, tokenizer = _load(args)
    clean = _encode(tokenizer, model, args.clean, "--clean")
    corrupt = _encode(tokenizer, model, args.corrupt, "--corrupt")
    answer = _one_token(tokenizer, args.answer, "--answer")
    wrong = _one_token(tokenizer, args.wrong, "--wrong")
    result = trace(model, clean, corrupt, answer=answer, wrong=wrong, kind=args.kind)
    print(
        f"logit({args.answer!r}) - logit({args.wrong!r}): "
        f"clean {result.clean_diff:.3f}, corrupt {result.corrupt_diff:.3f}"
    )
    labels = _labels(tokenizer, clean)
    print("fraction restored, one row per position (clean token), one column per layer")
    for position, label in enumerate(labels):
        cells = " ".join(f"{float(v):5.2f}" for v in result.restored[:, position])
        print(f"{label!r:>14} {cells}")
    plot_trace(result, labels, args.out, title=f"{args.kind} restored: {args.clean!r}")
    print(f"wrote {args.out}")
    return 0


def run_induction(args: argparse.Namespace) -> int:
    from lmforge.interpret.induction import induction_report, repeated_random_tokens

    model, _ = _load(args, require_tokenizer=False)  # random token ids: no text in or out
    if not 2 <= args.half <= model.config.block_size // 2:
        raise ConfigError(f"--half must be between 2 and {model.config.block_size // 2} (half the context)")
    if args.rows < 1:
        raise ConfigError(f"--rows must be a positive integer, got {args.rows}")
    ids = repeated_random_tokens(model.config.vocab_size, args.half, batch_size=args.rows, seed=args.seed)
    report = induction_report(model, ids)
    print("induction score per head (rows: layers, columns: heads)")
    for layer, row in enumerate(report.scores):
        print(f"layer {layer:>2}: " + " ".join(f"{float(s):.3f}" for s in row))
    half = args.half
    print("strongest look-back per head beyond the previous token: weight @ key t-N+shift")
    for layer, heads in enumerate(report.by_offset[:, :, 2:]):  # (nh, N - 1): keys t - 2 .. t - N
        cells = [f"{float(h.max()):.3f} @ t-N{half - (int(h.argmax()) + 2):+d}" for h in heads]
        print(f"layer {layer:>2}: " + "  ".join(cells))
    print(
        f"loss on the first copy {report.loss_first:.3f}, on the repeat {report.loss_second:.3f} "
        f"(drop {report.loss_drop:.3f} nats)"
    )
    return 0


def run_probe(args: argparse.Namespace) -> int:
    import torch

    from lmforge.interpret.probes import plot_probes, probe_by_layer, probe_table, topic_probe_data
    from lmforge.models.gpt import GPT

    model, tokenizer = _load(args)
    if not 1 <= args.length <= model.config.block_size:
        raise ConfigError(f"--length must be between 1 and the model's context ({model.config.block_size})")
    if not 0 <= args.skip < args.length:
        raise ConfigError(f"--skip must be a position below --length ({args.length})")
    if args.leads < 8:
        raise ConfigError(f"--leads must be at least 8, got {args.leads}")
    ids, labels, names = topic_probe_data(tokenizer, leads=args.leads, length=args.length, seed=args.seed)
    positions = range(args.skip, args.length, 4)
    torch.manual_seed(args.seed)
    control = GPT(model.config).eval()
    options = {"n_classes": len(names), "positions": positions, "seed": args.seed}
    trained = probe_by_layer(model, ids, labels, **options)
    random_weights = probe_by_layer(control, ids, labels, **options)
    chance = float(torch.bincount(labels, minlength=len(names)).max()) / len(labels)
    print(
        f"{args.leads} leads x {len(positions)} positions, {len(names)} topics, "
        "a quarter of the leads held out"
    )
    print(probe_table(trained, random_weights, chance))
    if args.out:
        plot_probes(trained, random_weights, chance, args.out)
        print(f"wrote {args.out}")
    return 0


def _windows(args: argparse.Namespace, tokenizer: Any, model: Any, seed: int) -> Any:
    from lmforge.data.builtin import builtin_text
    from lmforge.interpret.sae import text_windows

    if not 2 <= args.length <= model.config.block_size:
        raise ConfigError(f"--length must be between 2 and the model's context ({model.config.block_size})")
    if args.windows < 1:
        raise ConfigError(f"--windows must be a positive integer, got {args.windows}")
    return text_windows(
        tokenizer, builtin_text(args.corpus), n_windows=args.windows, length=args.length, seed=seed
    )


def run_sae_train(args: argparse.Namespace) -> int:
    import dataclasses

    from lmforge.interpret.hooks import hook_points
    from lmforge.interpret.sae import (
        SAEConfig,
        patched_losses,
        point_activations,
        sae_metrics,
        save_sae,
        train_sae,
    )

    config = SAEConfig(
        n_features=args.features,
        l1=args.l1,
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch_size,
        resample_every=args.resample_every,
        seed=args.seed,
    )
    model, tokenizer = _load(args)
    if args.point not in hook_points(model):
        raise ConfigError(
            f"unknown hook point {args.point!r}; e.g. blocks.0.resid_post (see docs/interpret.md)"
        )
    train_windows = _windows(args, tokenizer, model, args.seed)
    held_out = _windows(args, tokenizer, model, args.seed + 1)
    activations = point_activations(model, train_windows, args.point)
    print(
        f"{activations.size(0):,} activations of width {activations.size(1)} at {args.point} ({args.corpus})"
    )
    sae, history = train_sae(activations, config, log=print if args.steps >= 500 else None)
    metrics = sae_metrics(sae, point_activations(model, held_out, args.point))
    losses = patched_losses(model, held_out, args.point, sae)
    print(
        f"held out: MSE {metrics['mse']:.5f}, explained variance {metrics['explained_variance']:.3f}, "
        f"L0 {metrics['l0']:.1f} of {metrics['n_features']}, dead {metrics['dead']}, "
        f"resampled during training {history[-1]['resampled']}"
    )
    print(
        f"model loss: clean {losses['clean']:.3f}, with the SAE {losses['sae']:.3f}, mean-ablated "
        f"{losses['mean_ablated']:.3f} (recovered {losses['recovered']:.1%})"
    )
    save_sae(
        sae,
        args.out,
        meta={
            "point": args.point,
            "corpus": args.corpus,
            "config": dataclasses.asdict(config),
            "held_out": metrics,
            "losses": losses,
        },
    )
    print(f"wrote {Path(args.out) / 'sae.safetensors'}")
    return 0


def run_sae_features(args: argparse.Namespace) -> int:
    from lmforge.interpret.sae import load_sae, point_activations, top_activations

    model, tokenizer = _load(args)
    sae, meta = load_sae(args.sae)
    if meta["d_in"] != model.config.n_embd or not isinstance(meta.get("point"), str):
        raise ConfigError(f"the SAE in {args.sae} was trained on another model (width {meta['d_in']})")
    if args.top < 1:
        raise ConfigError(f"--top must be a positive integer, got {args.top}")
    windows = _windows(args, tokenizer, model, args.seed)
    activations = point_activations(model, windows, meta["point"])
    features = args.feature
    if not features:
        frequency = (sae.encode(activations) > 0).float().mean(0)
        features = frequency.topk(5).indices.tolist()
    T = windows.size(1)
    for feature in features:
        values, where = top_activations(sae, activations, feature, k=min(args.top, activations.size(0)))
        rate = float((sae.encode(activations)[:, feature] > 0).float().mean())
        print(f"feature {feature} (active on {rate:.1%} of tokens)")
        for value, index in zip(values.tolist(), where.tolist(), strict=True):
            row, position = divmod(index, T)
            before = tokenizer.decode(windows[row, max(0, position - 8) : position].tolist())
            token = tokenizer.decode([int(windows[row, position])])
            after = tokenizer.decode(windows[row, position + 1 : position + 4].tolist())
            print(f"  {value:7.3f}  {(before + '[' + token + ']' + after)!r}")
    return 0


def run_superposition(args: argparse.Namespace) -> int:
    from lmforge.interpret.superposition import (
        ToyConfig,
        geometry_table,
        plot_superposition,
        train_toy_models,
    )

    config = ToyConfig(
        n_features=args.features,
        n_hidden=args.hidden,
        sparsities=args.sparsity or [0.0, 0.7, 0.9, 0.97, 0.99],
        importance_decay=args.importance,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
    )
    model, losses = train_toy_models(config)
    print(
        f"n = {config.n_features} features, m = {config.n_hidden} dimensions, "
        f"importance {args.importance} ** i"
    )
    print(geometry_table(model, config.sparsities, losses))
    plot_superposition(model, config.sparsities, args.out)
    print(f"wrote {args.out}")
    return 0
