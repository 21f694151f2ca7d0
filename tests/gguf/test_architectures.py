"""Every built-in GGUF architecture, proven equal to HF on tiny random models with real tokenizers.

Each test builds a tiny random model with transformers (2 layers, hidden 64-128), converts it
to an F32 GGUF, loads it with real llama-cpp-python and checks: tokenization equal to HF on a
nasty corpus (whitespace runs, digits, emoji, CJK, Cyrillic, special/chat tokens), logits top-1
agreement >= 0.98 and max |delta logit| <= MAX_DELTA. Then each classic conversion bug is
injected into the converter and the same check must fail.

Tokenizers: SmolLM2's real byte-level BPE tokenizer (conftest) and two SentencePiece BPE
tokenizers trained here in a second (Llama-2 style with a space prefix, Gemma style without).
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest

from edgelora.errors import PlanError, UnknownTokenizer, UnsupportedArchitecture
from edgelora.gguf import families
from edgelora.gguf.architectures import LLAMA, check_convertible, find_architecture
from edgelora.gguf.builtin import builtin_architectures
from edgelora.gguf.convert import convert
from edgelora.gguf.reader import read_metadata
from edgelora.gguf.tokenizer import pre_tokenizer_name, sentencepiece_info
from edgelora.gguf.validate import check_tokenization, compare_logits, validate
from edgelora.testing.tiny import local_project, project_toml

MIN_TOP1 = 0.98
# Stated bound for F32 GGUF vs HF fp32 on these tiny models. Largest measured: see bench/RESULTS.md
# (llama.cpp computes GELU through an fp16 table and accumulates in another order; each classic
# bug below moves logits by >= 0.3).
MAX_DELTA = 0.05
N_TOKENS = 32

NASTY = (
    "Hello world! How are you today?",
    "  leading spaces,\ttabs\t\tand\n\n\nnewlines   \n  trailing   ",
    "Digits: 3 33 333 3333 12345678 3.14159 1,000,000 2024-05-17",
    "Emoji \U0001F680\U0001F999 \U0001F636\u200d\U0001F32B\ufe0f and CJK \u6211\u60f3\u5728apple\u5de5\u4f5c "
    "\u3053\u3093\u306b\u3061\u306f",
    "Mixed: I've been 'told he's there; we'Ve ------======= \u043d\u0435\u0449\u043e "
    "\u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438",
    "code:\n    def f(x):\n        return x ** 2  # square\n",
)
PROMPTS = ("The quick brown fox", "Once upon a time 12345 \u6211\u60f3", "def f(x):\n    return x")
MEASURED: dict[str, dict] = {}

# -- SentencePiece tokenizers trained in the test --------------------------------------

_CORPUS_SEED = (
    "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village by the sea, "
    "there lived an old fisherman. def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + "
    "fibonacci(n - 2). Hello world! How are you today? I've been told he's there. 3.14159 2024-05-17 "
    "\u6211\u60f3\u5728apple\u5de5\u4f5c \u3053\u3093\u306b\u3061\u306f \u043d\u0435\u0449\u043e "
    "\u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 edge lora gguf tokens."
)
LLAMA2_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
                   "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == "
                  "'assistant' else m['role']) + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}")


def _train_sentencepiece(dest: Path, *, gemma: bool) -> Path:
    """A real-format SentencePiece BPE model (byte fallback, split digits) and its HF tokenizer."""
    import sentencepiece as spm
    from transformers import GemmaTokenizer, LlamaTokenizer

    words = _CORPUS_SEED.split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4
    lines += ["  indented   text\twith\ttabs  ", "x = [1, 2, 3]  # list", "----====****!!!??"] * 8
    layout = (dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                   bos_piece="<bos>", add_dummy_prefix=False,
                   user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"])
              if gemma else dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True))
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=700, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=1.0,
        hard_vocab_limit=False, num_threads=1, minloglevel=2, **layout)
    src = dest / "sp-src"
    src.mkdir(parents=True)
    (src / "tokenizer.model").write_bytes(buf.getvalue())
    tok = (GemmaTokenizer if gemma else LlamaTokenizer).from_pretrained(str(src))
    tok.chat_template = GEMMA_TEMPLATE if gemma else LLAMA2_TEMPLATE
    out = dest / "tok"
    tok.save_pretrained(str(out))
    shutil.copy(src / "tokenizer.model", out / "tokenizer.model")
    shutil.rmtree(src)
    return out


@pytest.fixture(scope="module")
def sp_llama_tok(tmp_path_factory) -> Path:
    return _train_sentencepiece(tmp_path_factory.mktemp("sp-llama"), gemma=False)


@pytest.fixture(scope="module")
def sp_gemma_tok(tmp_path_factory) -> Path:
    return _train_sentencepiece(tmp_path_factory.mktemp("sp-gemma"), gemma=True)


# -- tiny random models ------------------------------------------------------------------

def _randomize(model, seed: int, *, gemma_norms: bool) -> None:
    """Weights large enough that logits are not near-ties; norms and biases random too, so a
    dropped bias or a missing norm offset changes the output."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
            elif "norm" in name:
                base = 0.0 if gemma_norms else 1.0  # Gemma stores w for (1 + w)
                p.copy_(base + torch.randn(p.shape, generator=g) * 0.2)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def build_model(kind: str, dest: Path, tok_dir: Path, *, seed: int = 0, pad_vocab: int = 0, **overrides) -> Path:
    """Save a tiny random ``kind`` model with the tokenizer in ``tok_dir`` next to it."""
    import torch
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    n_vocab = len(tok) + pad_vocab
    common = dict(vocab_size=n_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    gemma = kind.startswith("gemma")
    n_layers = overrides.get("num_hidden_layers", 2)
    hd = overrides.get("head_dim", 32)
    if kind == "llama":
        cfg, cls = tf.LlamaConfig(**{**common, "rope_theta": 100000.0, **overrides}), tf.LlamaForCausalLM
    elif kind == "mistral":
        cfg, cls = tf.MistralConfig(**{**common, "rope_theta": 1e6, "sliding_window": None, **overrides}), \
            tf.MistralForCausalLM
    elif kind == "qwen2":
        cfg, cls = tf.Qwen2Config(**{**common, "rope_theta": 1e6, "tie_word_embeddings": True, **overrides}), \
            tf.Qwen2ForCausalLM
    elif kind == "qwen3":
        cfg, cls = tf.Qwen3Config(**{**common, "head_dim": 32, "rope_theta": 1e6, "tie_word_embeddings": True,
                                     **overrides}), tf.Qwen3ForCausalLM
    elif kind == "gemma2":
        cfg, cls = tf.Gemma2Config(**{**common, "head_dim": 32, "query_pre_attn_scalar": hd, "sliding_window": 8,
                                      "rope_theta": 10000.0, **overrides}), tf.Gemma2ForCausalLM
    elif kind in ("gemma3", "gemma3-mm"):
        text = dict(common, head_dim=32, query_pre_attn_scalar=hd, sliding_window=8,
                    layer_types=["full_attention" if i % 2 else "sliding_attention" for i in range(n_layers)],
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
        text.update(overrides)
        if kind == "gemma3":
            cfg, cls = tf.Gemma3TextConfig(**text), tf.Gemma3ForCausalLM
        else:
            vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          image_size=28, patch_size=14)
            cfg = tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                  boi_token_index=0, eoi_token_index=0, image_token_index=0)
            cls = tf.Gemma3ForConditionalGeneration
    elif kind == "phi3":
        cfg, cls = tf.Phi3Config(**{**common, "num_key_value_heads": 4, "pad_token_id": None, **overrides}), \
            tf.Phi3ForCausalLM
    else:
        raise ValueError(kind)
    if gemma:
        cfg._attn_implementation = "eager"  # soft-capping and the window as Gemma trains with them
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    _randomize(model, seed, gemma_norms=gemma)
    if pad_vocab:
        with torch.no_grad():  # rows no token maps to (as in real Qwen2.5 / Gemma 3 checkpoints)
            model.get_input_embeddings().weight[len(tok):] = 0
    model.save_pretrained(str(dest), safe_serialization=True)
    tok.save_pretrained(str(dest))
    if (tok_dir / "tokenizer.model").is_file():
        shutil.copy(tok_dir / "tokenizer.model", dest / "tokenizer.model")
    return dest


def _check_equal(gguf_path: Path, model_dir: Path, tok_dir: Path, label: str) -> dict:
    report = validate(gguf_path, model_dir, min_top1=MIN_TOP1, prompts=PROMPTS, n_tokens=N_TOKENS,
                      tokenizer_dir=tok_dir)
    logits = report["logits"]
    MEASURED[label] = {"top1": logits["top1_agreement"], "max_abs_delta": logits["max_abs_delta"]}
    print(f"\nFIDELITY {label}: top1={logits['top1_agreement']:.3f} max|d|={logits['max_abs_delta']:.4g}")
    assert logits["max_abs_delta"] <= MAX_DELTA, logits
    return report


def _kv(path: Path) -> dict:
    return read_metadata(path).kv


def _tensor_names(path: Path) -> set:
    return {name for name, *_ in read_metadata(path).tensors}


@pytest.fixture(scope="module")
def bpe_tok(smollm2_dir) -> Path:
    return smollm2_dir


# -- one test per architecture -------------------------------------------------------------

def test_llama2_sentencepiece(sp_llama_tok, tmp_path):
    model = build_model("llama", tmp_path / "m", sp_llama_tok, tie_word_embeddings=False)
    out = tmp_path / "m.gguf"
    report = convert(model, out, outtype="f32", tokenizer_dir=sp_llama_tok)
    assert report["tokenizer"]["model"] == "llama" and report["pre"] == "default"
    kv = _kv(out)
    assert kv["tokenizer.ggml.add_space_prefix"] is True and "tokenizer.ggml.scores" in kv
    types = kv["tokenizer.ggml.token_type"]
    tokens = kv["tokenizer.ggml.tokens"]
    assert types[tokens.index("<0x41>")] == 6  # BYTE
    assert "output.weight" in _tensor_names(out)
    result = _check_equal(out, model, sp_llama_tok, "llama (Llama 2 style, SentencePiece)")
    assert result["tokenization"]["chat_template_checked"]


def test_mistral_sentencepiece(sp_llama_tok, tmp_path):
    """Mistral 7B: llama GGUF arch, SentencePiece tokenizer (byte-level BPE + llama: test_gguf_convert)."""
    model = build_model("mistral", tmp_path / "m", sp_llama_tok, tie_word_embeddings=True)
    out = tmp_path / "m.gguf"
    assert convert(model, out, outtype="f32", tokenizer_dir=sp_llama_tok)["gguf_arch"] == "llama"
    _check_equal(out, model, sp_llama_tok, "llama (Mistral, SentencePiece)")


def test_qwen2_biases_and_vocab_padding(bpe_tok, tmp_path):
    model = build_model("qwen2", tmp_path / "m", bpe_tok, pad_vocab=96)
    out = tmp_path / "m.gguf"
    report = convert(model, out, outtype="f32", tokenizer_dir=bpe_tok)
    assert report["arch"] == "qwen2"
    names = _tensor_names(out)
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.1.attn_v.bias"} <= names
    assert "output.weight" not in names  # tied
    kv = _kv(out)
    n = len(kv["tokenizer.ggml.tokens"])
    assert n == 49152 + 96 and kv["tokenizer.ggml.tokens"][-1] == f"[PAD{n - 1}]"
    assert kv["tokenizer.ggml.token_type"][-1] == 5  # UNUSED
    assert kv["qwen2.rope.freq_base"] == pytest.approx(1e6)
    _check_equal(out, model, bpe_tok, "qwen2 (biases, padded vocab)")


def test_qwen3_qk_norm_and_head_dim(sp_llama_tok, tmp_path):
    model = build_model("qwen3", tmp_path / "m", sp_llama_tok)
    out = tmp_path / "m.gguf"
    convert(model, out, outtype="f32", tokenizer_dir=sp_llama_tok)
    kv = _kv(out)
    assert kv["qwen3.attention.key_length"] == 32 and kv["qwen3.attention.value_length"] == 32
    assert {"blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight"} <= _tensor_names(out)
    _check_equal(out, model, sp_llama_tok, "qwen3 (q/k norms, head_dim 32 != 64/4)")


def test_gemma2_softcap_window_no_output(sp_gemma_tok, tmp_path):
    model = build_model("gemma2", tmp_path / "m", sp_gemma_tok)
    out = tmp_path / "m.gguf"
    report = convert(model, out, outtype="f32", tokenizer_dir=sp_gemma_tok)
    assert report["tokenizer"]["add_space_prefix"] is False
    kv = _kv(out)
    assert kv["gemma2.attn_logit_softcapping"] == pytest.approx(50.0)
    assert kv["gemma2.final_logit_softcapping"] == pytest.approx(30.0)
    assert kv["gemma2.attention.sliding_window"] == 8
    assert list(kv["gemma2.attention.sliding_window_pattern"]) == [True, False]
    assert "output.weight" not in _tensor_names(out)
    _check_equal(out, model, sp_gemma_tok, "gemma2 (norm +1, softcaps, window 8 < 32 tokens)")


def test_gemma3_text(sp_gemma_tok, tmp_path):
    model = build_model("gemma3", tmp_path / "m", sp_gemma_tok, pad_vocab=64)
    out = tmp_path / "m.gguf"
    report = convert(model, out, outtype="f32", tokenizer_dir=sp_gemma_tok)
    kv = _kv(out)
    n_real = report["tokenizer"]["n_tokens"]
    assert n_real == len(kv["tokenizer.ggml.tokens"]) and kv["gemma3.vocab_size"] == n_real
    embd = next(shape for name, shape, *_ in read_metadata(out).tensors if name == "token_embd.weight")
    assert int(embd[-1]) == n_real  # truncated from n_real + 64 rows
    assert kv["gemma3.rope.freq_base_swa"] == pytest.approx(10000.0)
    assert kv["gemma3.rope.freq_base"] == pytest.approx(1e6)
    assert kv["gemma3.rope.scaling.factor"] == pytest.approx(2.0)
    assert {"blk.0.attn_q_norm.weight", "blk.0.post_ffw_norm.weight"} <= _tensor_names(out)
    _check_equal(out, model, sp_gemma_tok, "gemma3 (Gemma3ForCausalLM, truncated vocab)")


def test_gemma3_conditional_generation_text_part(sp_gemma_tok, tmp_path):
    model = build_model("gemma3-mm", tmp_path / "m", sp_gemma_tok)
    out = tmp_path / "m.gguf"
    report = convert(model, out, outtype="f32", tokenizer_dir=sp_gemma_tok)
    assert any(s.startswith(("model.vision_tower.", "vision_tower.")) for s in report["skipped"])
    assert not any("vision" in n or "mm_" in n for n in _tensor_names(out))
    _check_equal(out, model, sp_gemma_tok, "gemma3 (Gemma3ForConditionalGeneration, text part)")


def test_phi3_fused_partial_rotary_longrope(sp_llama_tok, tmp_path):
    half = int(16 * 0.75) // 2  # head_dim 16, partial_rotary_factor 0.75 -> 12 rotary dims
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
            "original_max_position_embeddings": 512,
            "short_factor": [1.0 + 0.25 * i for i in range(half)], "long_factor": [2.0 + i for i in range(half)]}
    model = build_model("phi3", tmp_path / "m", sp_llama_tok, max_position_embeddings=2048,
                        rope_parameters=rope, original_max_position_embeddings=512)
    out = tmp_path / "m.gguf"
    convert(model, out, outtype="f32", tokenizer_dir=sp_llama_tok)
    kv = _kv(out)
    assert kv["phi3.rope.dimension_count"] == 12
    assert kv["phi3.rope.scaling.attn_factor"] == pytest.approx((1 + __import__("math").log(4) /
                                                                 __import__("math").log(512)) ** 0.5, rel=1e-6)
    names = _tensor_names(out)
    assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight", "rope_factors_short.weight"} <= names
    assert "blk.0.ffn_gate.weight" not in names
    _check_equal(out, model, sp_llama_tok, "phi3 (fused qkv/gate_up, rotary 12/16, longrope)")


# -- classic bugs must fail the check ------------------------------------------------------

def _drop_biases(arch):
    def map_name(name, cfg):
        return None if name.endswith(".bias") else arch.map_name(name, cfg)

    return dataclasses.replace(arch, map_name=map_name,
                               expected_tensors=lambda cfg: {n for n in arch.expected_tensors(cfg)
                                                             if not n.endswith(".bias")})


def _rope_base(arch, theta: float):
    def write(cfg, writer):
        arch.write_hparams(cfg, writer)
        writer.add_rope_freq_base(theta)  # the later value wins when the file is read

    return dataclasses.replace(arch, write_hparams=write)


def _no_norm_offset_on(arch, which: str):
    def transform(name, arr, cfg):
        out = arch.transform(name, arr, cfg)
        return arr if which in name else out

    return dataclasses.replace(arch, transform=transform)


BUGS = {
    "llama: q/k rows not permuted": ("llama", "sp_llama_tok",
                                     lambda: dataclasses.replace(LLAMA, transform=lambda n, a, c: a)),
    "gemma2: norm weights without +1": ("gemma2", "sp_gemma_tok", lambda: dataclasses.replace(
        families.GEMMA2, transform=lambda n, a, c: a)),
    "gemma3: q/k norms without +1": ("gemma3", "sp_gemma_tok",
                                     lambda: _no_norm_offset_on(families.GEMMA3, "_k_norm")),
    # the bug is in the weights, not the tokenizer: the small SentencePiece vocab keeps these fast
    "qwen2: q/k/v biases dropped": ("qwen2", "sp_llama_tok", lambda: _drop_biases(families.QWEN2)),
    "qwen3: rope base left at 10000": ("qwen3", "sp_llama_tok", lambda: _rope_base(families.QWEN3, 10000.0)),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_injected_bug_fails_the_equality_check(bug, request, tmp_path):
    kind, tok_fixture, make_broken = BUGS[bug]
    model = build_model(kind, tmp_path / "m", request.getfixturevalue(tok_fixture), seed=7)
    broken = make_broken()
    out = tmp_path / "broken.gguf"
    tok_dir = request.getfixturevalue(tok_fixture)
    convert(model, out, outtype="f32", architectures={broken.name: broken}, tokenizer_dir=tok_dir)
    res = compare_logits(out, model, prompts=PROMPTS, n_tokens=N_TOKENS, tokenizer_dir=tok_dir)
    MEASURED[f"bug: {bug}"] = {"top1": res["top1_agreement"], "max_abs_delta": res["max_abs_delta"]}
    print(f"\nBUG {bug}: top1={res['top1_agreement']:.3f} max|d|={res['max_abs_delta']:.4g}")
    # the same criterion _check_equal applies (validate's top-1 gate plus the stated bound)
    assert res["top1_agreement"] < MIN_TOP1 or res["max_abs_delta"] > MAX_DELTA, res


# -- tokenizers -----------------------------------------------------------------------------

@pytest.mark.parametrize("tok_fixture", ["sp_llama_tok", "sp_gemma_tok", "bpe_tok"])
def test_tokenization_equals_hf_on_nasty_corpus(tok_fixture, request, tmp_path):
    tok_dir = request.getfixturevalue(tok_fixture)
    kind = "gemma3" if tok_fixture == "sp_gemma_tok" else "llama"
    model = build_model(kind, tmp_path / "m", tok_dir, hidden_size=32, intermediate_size=32, head_dim=8,
                        num_hidden_layers=1)
    out = tmp_path / "m.gguf"
    convert(model, out, outtype="f32", tokenizer_dir=tok_dir)
    special = {"sp_llama_tok": "[INST] hi [/INST] ok</s><s>", "sp_gemma_tok": "<start_of_turn>user\nhi<end_of_turn>\n",
               "bpe_tok": "<|im_start|>user\nhi<|im_end|>\n"}[tok_fixture]
    res = check_tokenization(out, tok_dir, texts=NASTY + (special, "   ", "\n\n", "a  b   c    d"))
    assert res["ok"], res["mismatches"][:2]
    assert res["chat_template_checked"] or tok_fixture == "bpe_tok"


def test_sentencepiece_model_read_without_protobuf(sp_llama_tok, sp_gemma_tok):
    llama_info = sentencepiece_info(sp_llama_tok / "tokenizer.model")
    gemma_info = sentencepiece_info(sp_gemma_tok / "tokenizer.model")
    assert llama_info["model_type"] == gemma_info["model_type"] == 2  # BPE
    assert llama_info["add_dummy_prefix"] is True and gemma_info["add_dummy_prefix"] is False
    assert pre_tokenizer_name(sp_llama_tok) == "default"


def test_unigram_sentencepiece_refused(tmp_path):
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([_CORPUS_SEED] * 20), model_writer=buf, vocab_size=120,
                                   model_type="unigram", minloglevel=2, hard_vocab_limit=False, num_threads=1)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    with pytest.raises(UnknownTokenizer, match="model type 1"):
        pre_tokenizer_name(tmp_path)


# -- registry and plan ---------------------------------------------------------------------

def test_every_architecture_is_one_plugin_entry():
    from edgelora import plugins

    reg = plugins.load().registry
    assert set(builtin_architectures()) <= set(reg.architectures)
    for name in ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"):
        assert reg.providers[("architectures", name)].endswith("architectures")
    for hf in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
               "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration", "Phi3ForCausalLM"):
        assert find_architecture({"architectures": [hf]}, reg.architectures).hf_architectures


def test_check_convertible_refuses_what_llama_cpp_cannot_compute():
    base = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10}
    assert "rope_freq_base" in check_convertible(base, families.QWEN2)
    with pytest.raises(UnsupportedArchitecture, match="use_sliding_window"):
        check_convertible(dict(base, use_sliding_window=True), families.QWEN2)
    with pytest.raises(UnsupportedArchitecture, match="rope_type 'dynamic'"):
        check_convertible(dict(base, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), families.QWEN2)
    gemma = dict(base, architectures=["Gemma2ForCausalLM"], head_dim=16, query_pre_attn_scalar=64,
                 attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    with pytest.raises(UnsupportedArchitecture, match="query_pre_attn_scalar"):
        check_convertible(gemma, families.GEMMA2)


_REAL_SHAPES = {  # the fields that matter, as the public config.json files spell them
    "Llama-3.1-8B": {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "vocab_size": 128256, "rope_theta": 500000.0, "hidden_act": "silu",
                     "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
    "Mistral-7B-v0.1": {"architectures": ["MistralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                        "vocab_size": 32000, "rope_theta": 10000.0, "sliding_window": 4096},
    "Qwen2.5-0.5B": {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
                     "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                     "vocab_size": 151936, "rope_theta": 1000000.0, "use_sliding_window": False,
                     "sliding_window": 32768, "tie_word_embeddings": True},
    "Qwen3-0.6B": {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024, "intermediate_size": 3072,
                   "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                   "vocab_size": 151936, "rope_theta": 1000000.0, "tie_word_embeddings": True},
    "gemma-2-2b": {"architectures": ["Gemma2ForCausalLM"], "hidden_size": 2304, "intermediate_size": 9216,
                   "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                   "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                   "sliding_window": 4096, "vocab_size": 256000, "hidden_activation": "gelu_pytorch_tanh"},
    "gemma-2-27b": {"architectures": ["Gemma2ForCausalLM"], "hidden_size": 4608, "intermediate_size": 36864,
                    "num_hidden_layers": 46, "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128,
                    "query_pre_attn_scalar": 144, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                    "sliding_window": 4096, "vocab_size": 256000},
    "Phi-3-mini-128k": {"architectures": ["Phi3ForCausalLM"], "hidden_size": 3072, "intermediate_size": 8192,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                        "vocab_size": 32064, "max_position_embeddings": 131072,
                        "original_max_position_embeddings": 4096, "sliding_window": 262144,
                        "rope_scaling": {"type": "longrope", "long_factor": [1.5] * 48, "short_factor": [1.0] * 48}},
    "Phi-4-mini": {"architectures": ["Phi3ForCausalLM"], "hidden_size": 3072, "intermediate_size": 8192,
                   "num_hidden_layers": 32, "num_attention_heads": 24, "num_key_value_heads": 8,
                   "partial_rotary_factor": 0.75, "vocab_size": 200064, "tie_word_embeddings": True,
                   "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                   "rope_scaling": {"type": "longrope", "long_factor": [1.5] * 48, "short_factor": [1.0] * 48}},
}


@pytest.mark.parametrize("shape", list(_REAL_SHAPES))
def test_real_config_layouts_pass_plan_checks(shape):
    cfg = _REAL_SHAPES[shape]
    arch = find_architecture(cfg, builtin_architectures())
    keys = check_convertible(cfg, arch)
    assert "rope_freq_base" in keys and "head_count_kv" in keys
    names = arch.expected_tensors(arch.text_config(cfg))
    assert f"blk.{cfg['num_hidden_layers'] - 1}.ffn_down.weight" in names and "token_embd.weight" in names


def test_real_gemma3_config_layout_normalizes():
    """google/gemma-3-4b-it's config.json nests a sparse text_config; defaults come from transformers."""
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
           "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                           "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                           "sliding_window": 1024},
           "vision_config": {"hidden_size": 1152}}
    keys = check_convertible(cfg, families.GEMMA3)
    assert {"sliding_window_pattern", "rope_freq_base_swa", "rope_scaling_factor", "key_length"} <= set(keys)
    text = families.GEMMA3.text_config(cfg)
    assert text["head_dim"] == 256 and text["vocab_size"] == 262208 and text["tie_word_embeddings"]
    assert text["layer_types"][:6] == ["sliding_attention"] * 5 + ["full_attention"]
    untied = {"architectures": ["Gemma2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16, "query_pre_attn_scalar": 16,
              "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "vocab_size": 10,
              "tie_word_embeddings": False}
    with pytest.raises(UnsupportedArchitecture, match="untied lm_head"):
        check_convertible(untied, families.GEMMA2)


def test_plan_fails_before_training(bpe_tok, tmp_path):
    """Unsupported architecture and unknown pre-tokenizer hash are both reported by plan."""
    from edgelora import api
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base = build_model("llama", tmp_path / "base", bpe_tok, hidden_size=32, intermediate_size=32, head_dim=8,
                       num_hidden_layers=1)
    cfg = json.loads((base / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (base / "config.json").write_text(json.dumps(cfg))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([_CORPUS_SEED] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (base / name).unlink(missing_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(base))
    proj = _plan_project(tmp_path, base)
    with pytest.raises(PlanError) as err:
        api.plan(proj, log=lambda *a: None)
    text = " | ".join(err.value.problems)
    assert "GPT2LMHeadModel" in text and "not supported" in text
    assert "pre-tokenizer hash" in text
    assert len(err.value.problems) == 2, "nothing else is wrong with this project"


def test_plan_accepts_every_supported_family(sp_gemma_tok, tmp_path):
    from edgelora import api

    base = build_model("gemma3-mm", tmp_path / "base", sp_gemma_tok, hidden_size=32, intermediate_size=32,
                       head_dim=8, query_pre_attn_scalar=8, num_hidden_layers=1, layer_types=["full_attention"])
    proj = _plan_project(tmp_path, base)
    summary = api.plan(proj, log=lambda *a: None)
    assert summary["architecture"] == "gemma3" and summary["tokenizer_pre"] == "default"


def _plan_project(tmp_path: Path, base: Path) -> Path:
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    demo = Path(__file__).resolve().parents[2] / "demo" / "data" / "train.jsonl"
    (proj / "data" / "train.jsonl").write_text("\n".join(demo.read_text().splitlines()[:4]) + "\n")
    (proj / "edgelora.toml").write_text(project_toml(local_project(base, name="p", heldout=None,
                                                                   max_seq_length=None)))
    return proj
