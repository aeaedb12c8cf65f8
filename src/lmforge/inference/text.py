"""The text layer over the engine: strings in, strings out, streamed without breaking characters.

The engine speaks token ids; this module adds what needs a tokenizer:
- `IncrementalDetokenizer`: token ids -> text, holding back the bytes of an unfinished UTF-8
  character (a byte-level BPE token can end in the middle of one) so a stream never shows U+FFFD
  for a character that the next token completes.
- `StopStrings`: cuts the text at the first stop string, holding back text that could be the start
  of one so that a streamed stop string is never half-printed.
- `stream_text` / `generate_texts`: run an `Engine` on string prompts; `generate`: the one-call
  convenience `lmforge.generate(ckpt_dir_or_model, "prompt", ...) -> str`.

Deliberately not here: sampling (sampling.py), batching and the KV cache (engine.py), chat formats and
conversation management (chat.py), reading checkpoints (`lmforge.models.checkpoints`).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import ConfigError
from lmforge.inference.cpu import for_cpu_inference
from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams

if TYPE_CHECKING:
    import torch

    from lmforge.tokenizers import Tokenizer


class IncrementalDetokenizer:
    """Decode a growing sequence of token ids into text, one complete UTF-8 character at a time.

    Example with a byte-level tokenizer where "é" is the two tokens [0xC3, 0xA9]: push([0xC3]) -> ""
    (half a character is held back), push([0xA9]) -> "é". Bytes that can never become valid UTF-8
    come out as U+FFFD, exactly as `bytes.decode("utf-8", errors="replace")` of the whole sequence.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._decode_bytes = tokenizer.decode_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Sequence[int]) -> str:
        """Text completed by these ids (possibly empty)."""
        return self._utf8.decode(self._decode_bytes(list(ids)))

    def flush(self) -> str:
        """At the end of a sequence: whatever is held back, unfinished characters as U+FFFD."""
        return self._utf8.decode(b"", final=True)


class StopStrings:
    """Cut streamed text at the first occurrence of any stop string.

    `push(text)` returns (text safe to show, stopped). Text that could be the beginning of a stop
    string is held back until it is clear. Example with stop "\\n\\n": push("a\\n") -> ("a", False),
    push("b") -> ("\\nb", False); push("\\n\\nc") -> ("", True). The stop string itself is not shown.
    """

    def __init__(self, stop: Sequence[str]):
        if any(s == "" for s in stop):
            raise ConfigError("stop strings must not be empty")
        self.stop = tuple(stop)
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        pending = self._pending + text
        hit = self._first_match(pending)
        hold = self._longest_partial_match(pending)
        partial_start = len(pending) - hold
        # A partial match that starts before the hit may still grow into a stop string that starts
        # earlier (stops "a" and "\naa", text "\na" so far): wait for more text before deciding.
        if hit is not None and (hold == 0 or hit <= partial_start):
            self.stopped, self._pending = True, ""
            return pending[:hit], True
        self._pending = pending[partial_start:]
        return pending[:partial_start], False

    def flush(self) -> str:
        """At the end of generation: the held-back text, cut at a stop string if it holds one."""
        text, self._pending = self._pending, ""
        hit = self._first_match(text)
        if hit is not None:
            self.stopped = True
            return text[:hit]
        return text

    def _first_match(self, text: str) -> int | None:
        """Where the earliest-starting stop string begins in `text`, or None."""
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _longest_partial_match(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


def encode_prompt(tokenizer: Tokenizer, prompt: str, *, allow_special: bool = False) -> list[int]:
    """Encode a user's prompt; special-token text such as "<|endoftext|>" is refused unless
    `allow_special` (`tokenizers.base.encode_user_text`: one policy for every command)."""
    from lmforge.tokenizers.base import encode_user_text

    if not prompt:
        raise ConfigError("the prompt is empty; give some text to continue")
    return encode_user_text(tokenizer, prompt, allow_special=allow_special)


def default_stop_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """Generation ends at the end-of-text token when the tokenizer has one."""
    return () if tokenizer.eot_id is None else (tokenizer.eot_id,)


def stream_text(
    engine: Engine,
    tokenizer: Tokenizer,
    prompt: str | Sequence[int],
    params: SamplingParams,
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    stop_ids: Sequence[int] | None = None,
    generated: list[int] | None = None,
    allow_special: bool = False,
) -> Iterator[str]:
    """Yield the continuation of one prompt as pieces of text, each made of complete characters.

    If `generated` is given, the new token ids are appended to it (without a final stop id), e.g. for
    a chat loop that keeps the conversation as ids rather than re-encoding the text.
    """
    ids = (
        encode_prompt(tokenizer, prompt, allow_special=allow_special)
        if isinstance(prompt, str)
        else list(prompt)
    )
    stop_ids = default_stop_ids(tokenizer) if stop_ids is None else tuple(stop_ids)
    detok, stops = IncrementalDetokenizer(tokenizer), StopStrings(stop)
    tokens = engine.stream([ids], params, max_new_tokens=max_new_tokens, stop_ids=stop_ids)
    try:
        for _, token in tokens:
            if token in stop_ids:
                break
            if generated is not None:
                generated.append(token)
            text, stopped = stops.push(detok.push([token]))
            if text:
                yield text
            if stopped:
                return
        text, stopped = stops.push(detok.flush())
        text += "" if stopped else stops.flush()
        if text:
            yield text
    finally:
        tokens.close()  # free the engine if the caller stops early


def generate_texts(
    engine: Engine,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    params: SamplingParams,
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    stop: Sequence[str] = (),
    stop_ids: Sequence[int] | None = None,
    allow_special: bool = False,
) -> list[list[str]]:
    """Continue several prompts in one batch: result[i][j] is sample j of prompt i."""
    stop_ids = default_stop_ids(tokenizer) if stop_ids is None else tuple(stop_ids)
    prompt_ids = [encode_prompt(tokenizer, p, allow_special=allow_special) for p in prompts]
    rows = engine.generate(
        prompt_ids, params, max_new_tokens=max_new_tokens, num_samples=num_samples, stop_ids=stop_ids
    )
    texts = []
    for row in rows:
        if row and row[-1] in stop_ids:
            row = row[:-1]
        text = tokenizer.decode(row)
        cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
        texts.append(text[: min(cuts)] if cuts else text)
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def generate(
    ckpt_dir_or_model: str | Path | torch.nn.Module,
    prompt: str,
    *,
    tokenizer: Tokenizer | None = None,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    allow_special: bool = False,
) -> str:
    """Continue `prompt` with a model from a checkpoint directory (or a GPT plus its `tokenizer`).

    Example: `lmforge.generate("runs/shakespeare/ckpt", "ROMEO:", max_new_tokens=50, seed=0)`.
    Generation ends after `max_new_tokens`, at the end-of-text token, or before the first stop string.
    A checkpoint is loaded in the CPU inference layout (`cpu.for_cpu_inference`); a model given is used
    as it is and left unchanged.
    """
    if isinstance(ckpt_dir_or_model, (str, Path)):
        from lmforge.models.checkpoints import load_checkpoint

        model, tokenizer, _ = load_checkpoint(ckpt_dir_or_model)
        model = for_cpu_inference(model, copy=False)  # loaded only for this call
    elif tokenizer is None:
        raise ConfigError("generate(model, ...) needs tokenizer=...; a checkpoint directory carries its own")
    else:
        model = ckpt_dir_or_model
    params = SamplingParams(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        frequency_penalty=frequency_penalty,
        seed=seed,
    )
    return "".join(
        stream_text(
            Engine(model),
            tokenizer,
            prompt,
            params,
            max_new_tokens=max_new_tokens,
            stop=stop,
            allow_special=allow_special,
        )
    )
