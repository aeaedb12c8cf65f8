"""DPO toward positive movie reviews: a small review LM writes two continuations per prompt, the
fine-tuned sentiment classifier prefers the more positive one, `lmforge finetune dpo` trains on those
pairs, and the share of positive continuations on held-out prompts is measured before and after.

Prompts are the first three words of review snippets: training prompts from the classifier's training
split, held-out prompts from its held-out split (split_seed 0). Sampling: temperature 1, 24 new tokens.

Run: python bench/dpo_sentiment_demo.py LM_CKPT CLASSIFIER_DIR OUT_DIR
         [--prompts N] [--test-prompts M] [--steps S]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from lmforge.data.finetune_data import read_rotten_tomatoes, split_examples
from lmforge.evaluation.classification import class_probabilities
from lmforge.inference import Engine, SamplingParams
from lmforge.models.checkpoints import load_checkpoint
from lmforge.training.config import load_config
from lmforge.training.finetune import FinetuneConfig, load_classifier, pad_id_of, run_dpo

NEW_TOKENS = 24


def continuations(model, tokenizer, prompts: list[str], *, samples: int, seed: int) -> list[str]:
    """`samples` continuations per prompt (row i * samples + j), as text without the end token."""
    end = pad_id_of(tokenizer)
    rows = Engine(model).generate(
        tokenizer.encode_ordinary_batch(prompts),
        SamplingParams(temperature=1.0, seed=seed),
        max_new_tokens=NEW_TOKENS,
        num_samples=samples,
        stop_ids=[end],
    )
    return [tokenizer.decode([t for t in row if t != end]) for row in rows]


def positive_share(classifier, tokenizer, info, prompts: list[str], texts: list[str]) -> float:
    full = [p + t for p, t in zip(prompts, texts, strict=True)]
    p = class_probabilities(
        classifier, tokenizer, full, max_tokens=info["max_tokens"], pad_id=pad_id_of(tokenizer)
    )
    return float((p.argmax(1) == info["classes"].index("fresh")).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("lm")
    parser.add_argument("classifier")
    parser.add_argument("out")
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--test-prompts", type=int, default=60)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = split_examples(read_rotten_tomatoes(), test_fraction=0.1, seed=0)
    train_prompts = [" ".join(e.text.split()[:3]) for e in train[: args.prompts]]
    test_prompts = [" ".join(e.text.split()[:3]) for e in test[: args.test_prompts]]
    model, tokenizer, _ = load_checkpoint(args.lm)
    classifier, _, info = load_classifier(args.classifier)

    drafts = continuations(model, tokenizer, train_prompts, samples=2, seed=1)
    scores = class_probabilities(
        classifier,
        tokenizer,
        [p + d for p, d in zip(np.repeat(train_prompts, 2), drafts, strict=True)],
        max_tokens=info["max_tokens"],
        pad_id=pad_id_of(tokenizer),
    )[:, info["classes"].index("fresh")].reshape(-1, 2)
    pairs = []
    for i, prompt in enumerate(train_prompts):
        a, b = drafts[2 * i], drafts[2 * i + 1]
        if a.strip() and b.strip() and a != b:
            chosen, rejected = (a, b) if scores[i, 0] >= scores[i, 1] else (b, a)
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    (out / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))

    repeated = [p for p in test_prompts for _ in range(4)]
    before = positive_share(
        classifier,
        tokenizer,
        info,
        repeated,
        continuations(model, tokenizer, test_prompts, samples=4, seed=2),
    )
    config = load_config(
        None,
        overrides=[
            f'finetune.data="{out / "pairs.jsonl"}"',
            "finetune.test_fraction=0.1",
            "finetune.beta=0.1",
            "optim.lr=1e-4",
            "optim.min_lr=1e-5",
            "optim.warmup_iters=0",
            "optim.weight_decay=0.0",
            f'train.out_dir="{out / "run"}"',
            f"train.max_iters={args.steps}",
            "train.batch_size=8",
            "train.eval_interval=0",
            "train.log_interval=1",
            "train.progress=false",
            "train.tensorboard=false",
            "train.peak_tflops=1",
            "train.checkpoint=false",
        ],
        sections=FinetuneConfig,
    )
    model.train()
    results = run_dpo(config, model, tokenizer, {"tokenizer": tokenizer.to_dict()}, log=print, overwrite=True)
    tuned, _, _ = load_checkpoint(out / "run" / "model")
    after = positive_share(
        classifier,
        tokenizer,
        info,
        repeated,
        continuations(tuned, tokenizer, test_prompts, samples=4, seed=2),
    )
    print(f"{len(pairs)} preference pairs from {len(train_prompts)} prompts; DPO {args.steps} steps")
    print(f"first DPO loss {results['first_train_loss']:.6f} (ln 2 = 0.693147)")
    print(
        f"positive continuations on {len(test_prompts)} held-out prompts x 4 samples: "
        f"before {before:.1%}, after {after:.1%}"
    )


if __name__ == "__main__":
    main()
