"""SentencePiece-style BPE tokenizers given only as tokenizer.json (no tokenizer.model): built here
with the ``tokenizers`` library, converted to GGUF for llama / gemma2 / gemma3, and checked with
real llama-cpp-python against transformers (tokenization, then logits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgelora.errors import UnknownTokenizer
from edgelora.gguf.convert import convert
from edgelora.gguf.reader import read_metadata
from edgelora.gguf.tokenizer import build_tokenizer_export, tokenizer_kind
from edgelora.gguf.validate import check_tokenization, validate

CORPUS = (
    "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village by the sea, "
    "there lived an old fisherman. def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + "
    "fibonacci(n - 2). Hello world! How are you today? I've been told he's there. 3.14159 2024-05-17 "
    "\u6211\u60f3\u5728apple\u5de5\u4f5c \u3053\u3093\u306b\u3061\u306f \u043d\u0435\u0449\u043e "
    "\u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 edge lora gguf tokens."
)
NASTY = (
    "Hello world! How are you today?",
    "Digits: 3 33 333 3333 12345678 3.14159 1,000,000 2024-05-17",
    "Emoji \U0001F680\U0001F999 and CJK \u6211\u60f3\u5728apple\u5de5\u4f5c \u3053\u3093\u306b\u3061\u306f",
    "Mixed: I've been 'told he's there; we'Ve ------======= \u043d\u0435\u0449\u043e",
    "code:\n    def f(x):\n        return x ** 2  # square\n",
    "inner  double   spaces and tabs\there",
)
LLAMA2_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
                   "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == "
                  "'assistant' else m['role']) + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}")
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def _sentencepiece_style(dest: Path, style: str, *, add_eos: bool = False) -> Path:
    """A byte-fallback BPE tokenizer.json laid out as SentencePiece converters write it.

    ``style``: "metaspace" (Llama 2 / Mistral as transformers 5 writes them: Metaspace pre-tokenizer,
    prepend on the first word), "normalizer" (older Llama 2 files: Prepend + Replace normalizer) or
    "gemma" (Replace normalizer, no prefix; chat turn tokens as added tokens). Pieces are learnt with
    tokenizers' BPE trainer; the merge list is then written the way SentencePiece conversions write
    it: every split of every piece, ordered by the piece's rank."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    gemma = style == "gemma"
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] if gemma else ["<unk>", "<s>", "</s>"]
    bos, eos, unk = ("<bos>", "<eos>", "<unk>") if gemma else ("<s>", "</s>", "<unk>")
    learner = Tokenizer(models.BPE(unk_token=unk))
    learner.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=420, show_progress=False, special_tokens=specials)
    words = CORPUS.split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4
    lines += ["  indented   text\twith\ttabs  ", "x = [1, 2, 3]  # list", "----====****!!!??"] * 8
    learner.train_from_iterator(("\u2581" + ln for ln in lines), trainer)
    learnt = sorted(learner.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
    pieces = [t for t, _ in learnt if t not in specials]
    vocab = {t: i for i, t in enumerate(specials + BYTES + pieces)}
    merges = [(a, b) for piece in pieces for k in range(1, len(piece))
              for a, b in [(piece[:k], piece[k:])] if a in vocab and b in vocab]
    merges.sort(key=lambda m: vocab[m[0] + m[1]])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    if style == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    elif style == "normalizer":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    else:
        tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([] if gemma else [decoders.Strip(" ", 1, 0)]))
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    if gemma:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t in ("<start_of_turn>", "<end_of_turn>")])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A" + (f" {eos}" if add_eos else ""), pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    dest.mkdir(parents=True)
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "unk_token": unk,
        **({"pad_token": "<pad>"} if gemma else {}),
        "chat_template": GEMMA_TEMPLATE if gemma else LLAMA2_TEMPLATE}))
    return dest


def _tiny_model(kind: str, dest: Path, tok_dir: Path) -> Path:
    import torch
    import transformers as tf

    hf = tf.AutoTokenizer.from_pretrained(str(tok_dir))
    common = dict(vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                  bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id)
    gemma = dict(common, head_dim=32, query_pre_attn_scalar=32, sliding_window=8)
    if kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=False))
    elif kind == "gemma2":
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**gemma))
    else:
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**gemma, layer_types=["sliding_attention", "full_attention"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if ("norm" in name and kind == "llama") else 0.0
            p.copy_(base + torch.randn(p.shape, generator=g) * (0.08 if p.dim() >= 2 else 0.2))
    model.save_pretrained(str(dest), safe_serialization=True)
    hf.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="module")
def llama_json_tok(tmp_path_factory) -> Path:
    return _sentencepiece_style(tmp_path_factory.mktemp("spm-json") / "tok", "metaspace")


@pytest.fixture(scope="module")
def gemma_json_tok(tmp_path_factory) -> Path:
    return _sentencepiece_style(tmp_path_factory.mktemp("spm-json") / "tok", "gemma")


@pytest.mark.parametrize("kind,tok_fixture", [("llama", "llama_json_tok"), ("gemma2", "gemma_json_tok"),
                                              ("gemma3", "gemma_json_tok")])
def test_convert_from_tokenizer_json_alone(kind, tok_fixture, request, tmp_path):
    tok_dir = request.getfixturevalue(tok_fixture)
    assert not (tok_dir / "tokenizer.model").exists()
    assert tokenizer_kind(tok_dir) == "llama"
    model = _tiny_model(kind, tmp_path / "m", tok_dir)
    out = tmp_path / "m.gguf"
    report = convert(model, out, outtype="f32", tokenizer_dir=tok_dir)
    assert report["tokenizer"]["model"] == "llama" and report["pre"] == "default"
    kv = read_metadata(out).kv
    tokens, types, scores = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"], kv["tokenizer.ggml.scores"]
    assert types[tokens.index("<0x41>")] == 6 and types[tokens.index("<unk>")] == 2  # BYTE, UNKNOWN
    bos = "<bos>" if kind.startswith("gemma") else "<s>"
    assert types[tokens.index(bos)] == 3 and kv["tokenizer.ggml.bos_token_id"] == tokens.index(bos)  # CONTROL
    assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.ggml.add_eos_token"] is False
    assert kv["tokenizer.ggml.add_space_prefix"] is (kind == "llama")
    if kind.startswith("gemma"):
        assert types[tokens.index("<start_of_turn>")] == 3
    # merge ranks -> scores: an earlier merge scores higher
    tj = json.loads((tok_dir / "tokenizer.json").read_text())
    first, later = ("".join(m) for m in (tj["model"]["merges"][0], tj["model"]["merges"][40]))
    assert scores[tokens.index(first)] > scores[tokens.index(later)]

    report = validate(out, model, tokenizer_dir=tok_dir, n_tokens=32)
    assert report["tokenization"]["ok"] and report["tokenization"]["chat_template_checked"]
    assert report["logits"]["top1_agreement"] >= 0.98 and report["logits"]["max_abs_delta"] < 0.05
    nasty = check_tokenization(out, tok_dir, texts=NASTY)
    assert nasty["ok"], nasty["mismatches"]
    assert not nasty["known_divergences"] or kind == "llama"


@pytest.mark.parametrize("style", ["normalizer", "metaspace"])
def test_llama2_layouts_and_eos_from_post_processor(style, tmp_path):
    tok_dir = _sentencepiece_style(tmp_path / "tok", style, add_eos=True)
    export = build_tokenizer_export(tok_dir)
    assert export.model == "llama" and export.add_bos and export.add_eos and export.add_space_prefix
    model = _tiny_model("llama", tmp_path / "m", tok_dir)
    out = tmp_path / "m.gguf"
    convert(model, out, outtype="f32", tokenizer_dir=tok_dir)
    assert read_metadata(out).kv["tokenizer.ggml.add_eos_token"] is True
    nasty = check_tokenization(out, tok_dir, texts=NASTY)
    assert nasty["ok"], nasty["mismatches"]


def test_scores_matter_wrong_order_is_caught(llama_json_tok, tmp_path, monkeypatch):
    """Reversed merge priority loads fine in llama.cpp and tokenizes differently: the check fails."""
    from edgelora.gguf import tokenizer_spm_json

    model = _tiny_model("llama", tmp_path / "m", llama_json_tok)
    real = tokenizer_spm_json.merge_scores
    monkeypatch.setattr(tokenizer_spm_json, "merge_scores", lambda tj: {t: -s for t, s in real(tj).items()})
    out = tmp_path / "m.gguf"
    convert(model, out, outtype="f32", tokenizer_dir=llama_json_tok)
    assert not check_tokenization(out, llama_json_tok, texts=NASTY)["ok"]


def test_byte_fallback_bpe_without_metaspace_refused(tmp_path):
    from tokenizers import Tokenizer, models

    tmp_path.mkdir(exist_ok=True)
    Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")], byte_fallback=True)).save(
        str(tmp_path / "tokenizer.json"))
    with pytest.raises(UnknownTokenizer, match="byte_fallback=True"):
        tokenizer_kind(tmp_path)


@pytest.mark.parametrize("gemma", [False, True])
def test_transformers_written_tokenizer_json_matches_tokenizer_model(gemma, tmp_path):
    """A real SentencePiece model saved by transformers' LlamaTokenizer / GemmaTokenizer, then shipped
    without tokenizer.model: same tokens and types as converting from tokenizer.model."""
    import io

    import sentencepiece as spm
    from transformers import GemmaTokenizer, LlamaTokenizer

    words = CORPUS.split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4
    layout = (dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                   add_dummy_prefix=False, user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
              if gemma else dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True))
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=500, model_type="bpe", byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
        minloglevel=2, **layout)
    with_model, json_only = tmp_path / "with-model", tmp_path / "json-only"
    with_model.mkdir()
    (with_model / "tokenizer.model").write_bytes(buf.getvalue())
    tok = (GemmaTokenizer if gemma else LlamaTokenizer).from_pretrained(str(with_model))
    tok.chat_template = GEMMA_TEMPLATE if gemma else LLAMA2_TEMPLATE
    tok.save_pretrained(str(with_model))
    tok.save_pretrained(str(json_only))
    assert not (json_only / "tokenizer.model").exists()
    model = _tiny_model("gemma3" if gemma else "llama", tmp_path / "m", json_only)
    convert(model, tmp_path / "json.gguf", outtype="f32", tokenizer_dir=json_only)
    convert(model, tmp_path / "sp.gguf", outtype="f32", tokenizer_dir=with_model)
    a, b = read_metadata(tmp_path / "json.gguf").kv, read_metadata(tmp_path / "sp.gguf").kv
    for key in ("tokens", "token_type", "add_bos_token", "add_eos_token", "add_space_prefix", "bos_token_id",
                "eos_token_id"):
        assert a[f"tokenizer.ggml.{key}"] == b[f"tokenizer.ggml.{key}"], key
    nasty = check_tokenization(tmp_path / "json.gguf", json_only, texts=NASTY)
    assert nasty["ok"], nasty["mismatches"]
