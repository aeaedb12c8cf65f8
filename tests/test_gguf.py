"""GGUF in and out (`lmforge.models.gguf`, `lmforge.tokenizers.gguf_vocab`, `lmforge convert`).

The GGUF files are built here with `gguf.GGUFWriter` from a random tiny Hugging Face Llama, with the
q/k rows permuted as llama.cpp's converter permutes them, and read three ways: by lmforge, by
transformers' own GGUF loader (`from_pretrained(dir, gguf_file=...)`, which has its own dequantizers),
and compared with the source model itself. The real SmolLM2 file is in test_gguf_smollm2.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from gguf import GGMLQuantizationType as Q  # noqa: E402

from lmforge.errors import ConfigError, FormatError  # noqa: E402
from lmforge.models import GPT, GPTConfig  # noqa: E402
from lmforge.models.checkpoints import load_gguf  # noqa: E402
from lmforge.models.gguf import save_gguf  # noqa: E402
from lmforge.tokenizers import BPETokenizer  # noqa: E402
from lmforge.tokenizers.foreign import bytes_to_unicode  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = (
    "The quick brown fox jumps over the lazy dog. It's 2024; don't panic!\n\n"
    "  Indented line\twith a tab, café and naïve, 東京, emoji 🙂 and numbers 12345 678.\n"
)
TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    """A small byte-level BPE (merges learned here), laid out in the test files as SmolLM2's is: control
    tokens first, then the 256 bytes, then the merges."""
    text = (TEXT + "the then there these those other brother mother ") * 20
    return BPETokenizer.train([text], vocab_size=256 + 60 + 1, pattern="gpt2", progress=False)


def _vocab(bpe: BPETokenizer) -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types) of `bpe` shifted behind the three control tokens."""
    spell = bytes_to_unicode()
    shift = len(SPECIALS)
    ordinary = ["".join(spell[b] for b in data) for data in bpe.token_bytes]
    tokens = SPECIALS + ordinary
    merges = [f"{ordinary[a]} {ordinary[b]}" for a, b in bpe.merges]
    return tokens, merges, [3] * shift + [1] * len(ordinary)


def _hf_llama(vocab_size: int, *, hidden: int = 64, tie: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=5000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms, and sharp attention so that a wrong q/k row order shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            if "q_proj" in name or "k_proj" in name:
                p.mul_(10)
    return model


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`, written out again here."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _random_k_blocks(rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks (gguf.quants cannot quantize these) with small, finite f16 scales."""
    block_bytes = {Q.Q4_K: 144, Q.Q5_K: 176, Q.Q6_K: 210}[qtype]
    blocks = rng.integers(0, 256, (rows, cols // 256, block_bytes), dtype=np.uint8)
    if qtype == Q.Q6_K:  # ql, qh, int8 scales, then d
        blocks[..., 208:210] = np.frombuffer(np.float16(2e-4).tobytes(), np.uint8)
    else:  # d, dmin first
        blocks[..., 0:2] = np.frombuffer(np.float16(3e-3).tobytes(), np.uint8)
        blocks[..., 2:4] = np.frombuffer(np.float16(1e-3).tobytes(), np.uint8)
    return blocks.reshape(rows, -1)


def write_llama_gguf(path, hf, tokens, merges, types, *, qtype: Q = Q.F32, permute: bool = True, arch="llama",
                     drop_key: str | None = None) -> None:  # fmt: skip
    """A GGUF file of the HF Llama `hf` as llama.cpp's converter lays it out; matrices stored as `qtype`."""
    c = hf.config
    writer = gguf.GGUFWriter(path, arch)
    keys = {
        "block_count": c.num_hidden_layers,
        "context_length": c.max_position_embeddings,
        "embedding_length": c.hidden_size,
        "feed_forward_length": c.intermediate_size,
        "attention.head_count": c.num_attention_heads,
        "attention.head_count_kv": c.num_key_value_heads,
        "rope.dimension_count": c.hidden_size // c.num_attention_heads,
    }
    for key, value in keys.items():
        if key != drop_key:
            writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.rope.freq_base", c.rope_parameters["rope_theta"])
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(TEMPLATE)
    rng = np.random.default_rng(0)
    gguf_names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    layer_names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                   "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                   "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down"}  # fmt: skip
    for name, tensor in hf.state_dict().items():
        stem = name.removesuffix(".weight")
        if stem == "lm_head" and c.tie_word_embeddings:
            continue
        if stem.startswith("model.layers."):
            i, rest = stem.removeprefix("model.layers.").split(".", 1)
            target = f"blk.{i}.{layer_names[rest]}.weight"
        else:
            target = gguf_names[stem] + ".weight"
        w = tensor.float().numpy()
        if permute and target.endswith("attn_q.weight"):
            w = _llama_cpp_permute(w, c.num_attention_heads)
        if permute and target.endswith("attn_k.weight"):
            w = _llama_cpp_permute(w, c.num_key_value_heads)
        if w.ndim == 1 or qtype == Q.F32:
            writer.add_tensor(target, w)
        elif qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
            writer.add_tensor(target, _random_k_blocks(*w.shape, qtype, rng), raw_dtype=qtype)
        elif qtype == Q.F16:
            writer.add_tensor(target, w.astype(np.float16))
        else:
            writer.add_tensor(target, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def hf_from_gguf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out[0] if isinstance(out, tuple) else out.logits


def greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    for _ in range(n):
        ids = torch.cat([ids, logits(model, ids)[:, -1:].argmax(-1)], dim=1)
    return ids[0].tolist()


@pytest.fixture(scope="module")
def vocab(bpe):
    return _vocab(bpe)


@pytest.fixture(scope="module")
def ids(vocab) -> torch.Tensor:
    return torch.randint(0, len(vocab[0]), (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("tie", [True, False])
def test_llama_f32_matches_source_and_transformers_gguf_loader(tmp_path, vocab, ids, tie):
    hf = _hf_llama(len(vocab[0]), tie=tie)
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, hf, *vocab)
    model, tokenizer, meta = load_gguf(path)
    c = model.config
    assert (c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.n_inner, c.block_size) == (2, 4, 2, 64, 128, 64)
    assert (c.rope_theta, c.pos_encoding, c.norm, c.mlp, c.bias) == (
        5000.0,
        "rope",
        "rmsnorm",
        "swiglu",
        False,
    )
    assert c.tie_embeddings is tie and c.norm_eps == pytest.approx(1e-5)
    theirs = hf_from_gguf(path)
    torch.testing.assert_close(logits(model, ids), logits(theirs, ids), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits(model, ids), logits(hf, ids), rtol=1e-4, atol=1e-5)
    assert greedy(model, ids[:1], 6) == greedy(theirs, ids[:1], 6)
    assert meta["chat_template_jinja"] == TEMPLATE
    assert (meta["bos_token"], meta["eos_token"]) == ("<|im_start|>", "<|im_end|>")


def test_gpt_from_gguf_is_the_model_alone(tmp_path, vocab, ids):
    """`GPT.from_gguf` (the Python entry point) gives the transformers-checked model, in bfloat16 too."""
    hf = _hf_llama(len(vocab[0]))
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, hf, *vocab)
    model = GPT.from_gguf(path)
    assert not model.training
    torch.testing.assert_close(logits(model, ids), logits(hf_from_gguf(path), ids), rtol=1e-4, atol=1e-5)
    half = GPT.from_gguf(path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert (logits(half, ids).float() - logits(model, ids)).abs().max() < 0.1


def test_from_tensors_names_the_source_of_a_foreign_tensor():
    config = GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=4)
    with pytest.raises(FormatError, match=r"x\.gguf.*blk\.9: no such parameter"):
        GPT.from_tensors(config, [("blk.9", torch.zeros(1))], source="x.gguf")
    with pytest.raises(FormatError, match=r"x\.gguf.*transformer\.wte\.weight: shape \(2, 4\)"):
        GPT.from_tensors(config, [("transformer.wte.weight", torch.zeros(2, 4))], source="x.gguf")


def test_query_key_row_order_matters(tmp_path, vocab, ids, monkeypatch):
    """The parity above fails when the rows are not put back into lmforge's rotate-half order."""
    hf = _hf_llama(len(vocab[0]))
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, hf, *vocab)
    monkeypatch.setattr("lmforge.models.gguf._unpermute", lambda w, n_head: w)
    model, _, _ = load_gguf(path)
    assert (logits(model, ids) - logits(hf, ids)).abs().max() > 0.05


@pytest.mark.parametrize(
    "qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name
)
def test_quantized_types_match_transformers_gguf_loader(tmp_path, vocab, ids, qtype):
    """Every matrix stored as qtype (K-quants need rows of 256: width 256); transformers dequantizes with
    its own code, so equal logits mean equal dequantized weights."""
    hf = _hf_llama(len(vocab[0]), hidden=256 if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K) else 64)
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, hf, *vocab, qtype=qtype)
    model, _, _ = load_gguf(path)
    theirs = hf_from_gguf(path)
    torch.testing.assert_close(logits(model, ids), logits(theirs, ids), rtol=1e-4, atol=1e-4)
    if qtype in (Q.F16, Q.BF16, Q.Q8_0):  # close to the float source, not equal to it
        assert 0 < (logits(model, ids) - logits(hf, ids)).abs().max() < 0.05


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_q4_blocks_unpack_as_ggml_dequantizes(qtype):
    """Codes, scales and zeros read from the raw blocks give back ggml's own dequantized values."""
    from lmforge.models.quantized import q4_blocks

    w = np.random.default_rng(0).normal(size=(6, 96)).astype(np.float32)
    raw = gguf.quants.quantize(w, qtype)
    weight = q4_blocks(raw, qtype.name, w.shape)
    assert weight.codes.min() >= 0 and weight.codes.max() <= 15 and weight.scales.shape == (6, 3)
    expected = torch.from_numpy(gguf.quants.dequantize(raw, qtype).reshape(w.shape))
    torch.testing.assert_close(weight.dequantize(), expected, rtol=1e-6, atol=1e-7)


def test_int4_linear_is_its_dequantized_weight():
    """forward = x W^T + b for the weight `dequantize` reports; `quantize` is Q4_1's recipe: every weight
    within half a step of the original (plus the bfloat16 rounding of scale and zero)."""
    from lmforge.models.quantized import Int4Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    q4 = Int4Linear.quantize(linear)
    w = q4.dequantize()
    groups = linear.weight.detach().reshape(32, 2, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    error = (w - linear.weight.detach()).abs().reshape(32, 2, 32).amax(-1)
    assert (error <= step / 2 + 0.01 * linear.weight.abs().max()).all() and error.max() > 0
    x = torch.randn(3, 5, 64)
    expected = x @ w.T + linear.bias.detach()
    torch.testing.assert_close(q4(x), expected, rtol=0.02, atol=0.02)
    assert q4(x).dtype == torch.float32 and q4(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_keep_4bit_runs_the_files_weights(tmp_path, vocab, ids, qtype):
    """`keep_4bit`: every block matrix an Int4Linear (q/k rows un-permuted in codes and scales alike),
    a head the kernel cannot take dequantized, logits as close to transformers' dequantized float32 model
    as a bfloat16 model's; not saved."""
    from lmforge.models.quantized import Int4Linear

    hf = _hf_llama(len(vocab[0]), tie=False)
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, hf, *vocab, qtype=qtype)
    model = GPT.from_gguf(path, dtype=torch.bfloat16, keep_4bit=True)
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 4 * model.config.n_layer
    assert isinstance(model.lm_head, torch.nn.Linear)  # 319 outputs: not in 16s, so dequantized
    theirs = logits(hf_from_gguf(path), ids)
    bf16_error = (logits(GPT.from_gguf(path, dtype=torch.bfloat16), ids).float() - theirs).abs().max()
    q4_error = (logits(model, ids).float() - theirs).abs().max()
    assert q4_error < max(2 * bf16_error, 0.02), (q4_error, bf16_error)
    with pytest.raises(ConfigError, match="4-bit"):
        model.save_checkpoint(tmp_path / "ckpt")


def test_keep_4bit_leaves_an_untied_q4_head_a_float_linear(tmp_path, vocab, ids):
    """A head whose shape the kernel takes (320 outputs) is still dequantized: the engine and the loss
    read `lm_head.weight`, which an Int4Linear does not have."""
    from lmforge.inference import Engine, SamplingParams

    tokens, merges, types = vocab
    hf = _hf_llama(len(tokens) + 1, tie=False)  # 320 rows: a multiple of 16
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, hf, [*tokens, "<|pad|>"], merges, [*types, 3], qtype=Q.Q4_1)
    model = GPT.from_gguf(path, dtype=torch.bfloat16, keep_4bit=True)
    assert model.config.vocab_size == 320 and isinstance(model.lm_head, torch.nn.Linear)
    out = Engine(model).generate([ids[0].tolist()], SamplingParams(temperature=0), max_new_tokens=3)[0]
    assert len(out) == 3


def test_tokenizer_matches_transformers_gguf_tokenizer(tmp_path, bpe, vocab):
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, _hf_llama(len(vocab[0])), *vocab)
    _, tokenizer, meta = load_gguf(path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert tokenizer.special_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    text = TEXT + "<|im_start|>user\nhello<|im_end|>\n" + TEXT.upper()
    ours = tokenizer.encode(text, allowed_special="all")
    assert ours == theirs(text, add_special_tokens=False)["input_ids"]
    assert ours.count(1) == 1 and len(ours) < len(text.encode())  # the specials and some merges were used
    assert tokenizer.decode(ours) == text
    # the same merges as the tokenizer the file was written from, each id shifted by 3
    assert [i - 3 for i in tokenizer.encode_ordinary(TEXT)] == bpe.encode_ordinary(TEXT)
    assert meta["tokenizer_fingerprint"] == tokenizer.fingerprint()
    # the shifted layout survives meta.json (JSON, byte_ids may hold null) and exports to HF's format
    import json

    from tokenizers import Tokenizer

    from lmforge.tokenizers import tokenizer_from_dict
    from lmforge.tokenizers.foreign import export_hf

    again = tokenizer_from_dict(json.loads(json.dumps(meta["tokenizer"])))
    assert again.encode(text, allowed_special="all") == ours
    export_hf(tokenizer, tmp_path / "tokenizer.json")
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids == ours


def test_absent_byte_is_a_clear_error():
    """SmolLM2's vocabulary has no token for some bytes (e.g. 0x04): encoding them is a TokenizerError."""
    from lmforge.errors import TokenizerError

    byte_ids = [None if b == 4 else b + 1 - (b > 4) for b in range(256)]  # 255 bytes at ids 1..255
    tokenizer = BPETokenizer(merges=[(72, 105)], pattern="gpt2", byte_ids=byte_ids, special_tokens={"<s>": 0})
    assert tokenizer.encode("Hi") == [256] and tokenizer.decode([0, 256]) == "<s>Hi"
    with pytest.raises(TokenizerError, match="0x04"):
        tokenizer.encode("a\x04b")


# --- writing ------------------------------------------------------------------------------------


def _lmforge_model(style: str) -> GPT:
    torch.manual_seed(3)
    if style == "llama":
        config = GPTConfig(vocab_size=320, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                           pos_encoding="rope", rope_theta=500.0, norm="rmsnorm", mlp="swiglu", bias=False,
                           tie_embeddings=False)  # fmt: skip
    else:
        # block_size 1024: transformers' GGUF loader reads gpt2.context_length as n_ctx, leaving n_positions
        # at GPT-2's 1024 (llama.cpp sizes position_embd by context_length, as we write it)
        config = GPTConfig(vocab_size=320, block_size=1024, n_layer=2, n_head=4, n_embd=64)
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.1, 0.1)
    return model


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_round_trip_and_transformers_reads_our_files(tmp_path, bpe, style):
    model = _lmforge_model(style)
    ids = torch.randint(0, 320, (2, 10), generator=torch.Generator().manual_seed(2))
    expected = logits(model, ids)
    for dtype, tolerance in (("f32", 0.0), ("f16", 2e-3), ("q8_0", 3e-2)):
        path = tmp_path / f"{style}-{dtype}.gguf"
        arch = save_gguf(model, path, dtype=dtype, tokenizer=bpe, chat_template=TEMPLATE)
        assert arch == style
        back, tokenizer, meta = load_gguf(path)
        assert back.config.to_dict() | {"n_inner": None} == model.config.to_dict()  # n_inner: explicit now
        assert back.config.mlp_hidden == model.config.mlp_hidden
        error = (logits(back, ids) - expected).abs().max().item()
        assert error <= tolerance and (dtype == "f32" or error > 0)
        assert tokenizer.fingerprint() == bpe.fingerprint() and meta["chat_template_jinja"] == TEMPLATE
        assert meta["eos_token"] == "<|endoftext|>"
        if dtype == "f32":  # llama.cpp's layout, as transformers' GGUF loader reads it
            torch.testing.assert_close(logits(hf_from_gguf(path), ids), expected, rtol=1e-4, atol=1e-5)


def test_export_refuses_a_block_llama_cpp_lacks(tmp_path):
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32, mlp="relu2"))
    with pytest.raises(ConfigError, match="neither"):
        save_gguf(model, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# --- bad files ----------------------------------------------------------------------------------


@pytest.fixture
def good_file(tmp_path, vocab):
    path = tmp_path / "good.gguf"
    write_llama_gguf(path, _hf_llama(len(vocab[0])), *vocab)
    return path


def test_truncated_file(good_file):
    data = good_file.read_bytes()
    for size in (len(data) // 2, 200, 6):
        good_file.write_bytes(data[:size])
        with pytest.raises(FormatError, match="corrupt or truncated GGUF") as e:
            load_gguf(good_file)
        assert e.value.path == good_file


def test_wrong_magic(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(FormatError, match="not a GGUF file"):
        load_gguf(path)
    with pytest.raises(FormatError, match="not found"):
        load_gguf(tmp_path / "missing.gguf")


def test_unsupported_tensor_type(tmp_path, vocab):
    """Q8_1 is a ggml type (llama.cpp's activations) that gguf.quants cannot dequantize."""
    path = tmp_path / "q81.gguf"
    write_llama_gguf(path, _hf_llama(len(vocab[0])), *vocab)
    data = bytearray(path.read_bytes())
    name = b"blk.0.attn_v.weight"
    at = data.index(name) + len(name) + 4 + 8 * 2  # tensor info: name, n_dims (u32), 2 dims (u64), type (u32)
    assert int.from_bytes(data[at : at + 4], "little") == Q.F32
    data[at : at + 4] = int(Q.Q8_1).to_bytes(4, "little")  # fewer bytes than F32: still inside the file
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="'blk.0.attn_v.weight' has type Q8_1, which gguf.quants cannot"):
        load_gguf(path)


def test_unknown_architecture_and_missing_key(tmp_path, vocab):
    hf = _hf_llama(len(vocab[0]))
    write_llama_gguf(tmp_path / "falcon.gguf", hf, *vocab, arch="falcon")
    with pytest.raises(FormatError, match="architecture 'falcon' is not supported"):
        load_gguf(tmp_path / "falcon.gguf")
    write_llama_gguf(tmp_path / "nokey.gguf", hf, *vocab, drop_key="block_count")
    with pytest.raises(FormatError, match="no 'llama.block_count'") as e:
        load_gguf(tmp_path / "nokey.gguf")
    assert e.value.path == tmp_path / "nokey.gguf"


# --- command line -------------------------------------------------------------------------------


def test_cli_gguf_to_lmforge_to_gguf(tmp_path, vocab, ids, capsys):
    from lmforge.cli import main
    from lmforge.models import checkpoint_meta

    hf = _hf_llama(len(vocab[0]))
    write_llama_gguf(tmp_path / "in.gguf", hf, *vocab, qtype=Q.Q8_0)
    assert (
        main(
            ["convert", "--from", "gguf", "--to", "lmforge", str(tmp_path / "in.gguf"), str(tmp_path / "ck")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "wrote lmforge Llama" in out and "'<|im_end|>' ends a turn; a chat template" in out
    meta = checkpoint_meta(tmp_path / "ck")
    assert meta["chat_template_jinja"] == TEMPLATE and meta["converted_from"] == "gguf-llama"
    direct, _, _ = load_gguf(tmp_path / "in.gguf")
    torch.testing.assert_close(logits(GPT.from_checkpoint(tmp_path / "ck"), ids), logits(direct, ids))
    argv = ["convert", "--from", "lmforge", "--to", "gguf", str(tmp_path / "ck"), str(tmp_path / "out.gguf")]
    assert main([*argv, "--dtype", "f32"]) == 0
    again, _, meta2 = load_gguf(tmp_path / "out.gguf")
    torch.testing.assert_close(logits(again, ids), logits(direct, ids), rtol=0, atol=0)
    assert meta2["eos_token"] == "<|im_end|>" and meta2["bos_token"] == "<|im_start|>"
    capsys.readouterr()
    assert main([*argv, "--dtype", "bf16"]) == 2
    assert "--dtype bf16 is for --from gguf" in capsys.readouterr().err
