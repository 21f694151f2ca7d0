"""Export a Hugging Face tokenizer to GGUF tokenizer keys.

Two kinds, as llama.cpp names them in ``tokenizer.ggml.model``:

- ``gpt2``: byte-level BPE (tokenizer.json with a ByteLevel pre-tokenizer: Llama 3,
  SmolLM2, Qwen). llama.cpp re-implements each pre-tokenizer by name, so
  ``tokenizer.ggml.pre`` is chosen the way llama.cpp's own converter chooses it: hash
  the token ids of a fixed check string and look the hash up in a table. An unknown
  hash is an error, never a guess: a wrong name loads fine and silently tokenizes
  differently.
- ``llama``: SentencePiece BPE (tokenizer.model: Llama 2, Mistral 7B, Gemma, Phi-3):
  pieces with their scores (llama.cpp merges by score), ``<0xNN>`` byte-fallback
  pieces typed BYTE, and whether a space is prepended to the text. Given only as
  tokenizer.json, scores come from the merge ranks (:mod:`.tokenizer_spm_json`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgelora.errors import UnknownTokenizer
from edgelora.gguf.token_types import BYTE, CONTROL, NORMAL, PAD_SCORE, UNKNOWN, UNUSED, USER_DEFINED  # noqa: F401
from edgelora.gguf.pre_tokenizer_hashes import CHECK_TEXT, KNOWN_PRE_HASHES
from edgelora.gguf.tokenizer_spm_json import is_sentencepiece_json, sentencepiece_json_vocab

SPECIAL_NAMES = ("bos", "eos", "unk", "pad")


@dataclass
class TokenizerExport:
    """Everything written under ``tokenizer.*``, computed before the file is opened."""

    pre: str
    pre_hash: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    n_real_tokens: int = 0
    model: str = "gpt2"
    scores: list[float] | None = None  # SentencePiece only
    add_space_prefix: bool | None = None  # SentencePiece only

    def summary(self) -> dict:
        return {"model": self.model, "pre": self.pre, "pre_hash": self.pre_hash,
                "n_tokens": len(self.tokens), "n_real_tokens": self.n_real_tokens,
                "n_merges": len(self.merges), "special_ids": dict(self.special_ids),
                "add_bos": self.add_bos, "add_eos": self.add_eos,
                "add_space_prefix": self.add_space_prefix,
                "chat_template": self.chat_template is not None}

    def padded_to(self, rows: int, where: Path) -> "TokenizerExport":
        """The token list made exactly ``rows`` long (the embedding rows written): missing ids
        become unused ``[PADi]`` tokens; a real token beyond ``rows`` is an error."""
        if len(self.tokens) > rows:
            last_real = max(i for i, t in enumerate(self.token_types) if t != UNUSED)
            if last_real >= rows:
                raise UnknownTokenizer(f"{where}: token id {last_real} does not fit the {rows} embedding rows")
        n = min(len(self.tokens), rows)
        extra = range(n, rows)
        scores = None if self.scores is None else self.scores[:n] + [PAD_SCORE] * len(extra)
        return dataclasses.replace(
            self, tokens=self.tokens[:n] + [f"[PAD{i}]" for i in extra],
            token_types=self.token_types[:n] + [UNUSED] * len(extra), scores=scores)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _has_byte_level(node) -> bool:
    if isinstance(node, dict):
        if node.get("type") == "ByteLevel":
            return True
        return any(_has_byte_level(v) for v in node.values() if isinstance(v, (dict, list)))
    if isinstance(node, list):
        return any(_has_byte_level(v) for v in node)
    return False


def tokenizer_kind(tokenizer_dir: str | Path) -> str:
    """``gpt2`` (byte-level BPE tokenizer.json) or ``llama`` (SentencePiece BPE tokenizer.model);
    anything this exporter cannot write faithfully is refused by name."""
    tokenizer_dir = Path(tokenizer_dir)
    tj_path = tokenizer_dir / "tokenizer.json"
    sp_path = tokenizer_dir / "tokenizer.model"
    tj = json.loads(tj_path.read_text(encoding="utf-8")) if tj_path.is_file() else None
    model = (tj or {}).get("model") or {}
    if tj is not None and model.get("type") == "BPE" and not model.get("byte_fallback") \
            and _has_byte_level(tj.get("pre_tokenizer")):
        return "gpt2"
    if sp_path.is_file():
        if tj is not None and model.get("type") not in ("BPE", None):
            raise UnknownTokenizer(f"{tj_path}: a {model.get('type')} tokenizer is not supported for GGUF "
                                   "export (SentencePiece BPE or byte-level BPE only)")
        info = sentencepiece_info(sp_path)
        if info["model_type"] != SP_BPE:
            raise UnknownTokenizer(f"{sp_path}: SentencePiece model type {info['model_type']} is not supported "
                                   "(only BPE, which llama.cpp's 'llama' tokenizer implements)")
        return "llama"
    if tj is None:
        raise UnknownTokenizer(f"{tj_path}: missing (a fast tokenizer.json or a SentencePiece tokenizer.model "
                               "is required)")
    if is_sentencepiece_json(tj):
        return "llama"
    raise UnknownTokenizer(
        f"{tj_path}: only byte-level BPE (ByteLevel pre-tokenizer, no byte_fallback) or SentencePiece "
        f"BPE (tokenizer.model, or byte_fallback BPE with a Metaspace / space-to-\u2581 normalizer) is "
        f"supported; got model {model.get('type')!r}, byte_fallback={bool(model.get('byte_fallback'))}")


def check_tokenizer_kind(tokenizer_dir: str | Path) -> dict:
    """tokenizer.json parsed, after refusing what the byte-level BPE exporter cannot write."""
    tokenizer_dir = Path(tokenizer_dir)
    if tokenizer_kind(tokenizer_dir) != "gpt2":
        raise UnknownTokenizer(f"{tokenizer_dir / 'tokenizer.json'}: not a byte-level BPE tokenizer")
    return json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))


SP_BPE = 2  # sentencepiece ModelProto.TrainerSpec.ModelType


def _proto_fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message level (value: int or bytes)."""
    i, n = 0, len(buf)

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            if i >= n:
                raise ValueError("truncated varint")
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < n:
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            yield num, wire, varint()
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise ValueError("truncated field")
            yield num, wire, buf[i:i + size]
            i += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield num, wire, buf[i:i + size]
            i += size
        else:
            raise ValueError(f"unsupported wire type {wire}")


def sentencepiece_info(sp_path: Path) -> dict:
    """model_type and normalizer flags from a tokenizer.model (protobuf), without protobuf.

    Only these two messages are read: ModelProto.trainer_spec (2).model_type (3) and
    ModelProto.normalizer_spec (3).add_dummy_prefix (3) / remove_extra_whitespaces (4).
    """
    info = {"model_type": 1, "add_dummy_prefix": True, "remove_extra_whitespaces": True}  # proto defaults
    try:
        for num, wire, value in _proto_fields(sp_path.read_bytes()):
            if num == 2 and wire == 2:
                for f, w, v in _proto_fields(value):
                    if f == 3 and w == 0:
                        info["model_type"] = v
            elif num == 3 and wire == 2:
                for f, w, v in _proto_fields(value):
                    if f == 3 and w == 0:
                        info["add_dummy_prefix"] = bool(v)
                    elif f == 4 and w == 0:
                        info["remove_extra_whitespaces"] = bool(v)
    except ValueError as e:
        raise UnknownTokenizer(f"{sp_path}: not a SentencePiece model ({e})") from None
    return info


def _load_hf(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def _load(tokenizer_dir: Path, kind: str, config: dict | None = None):
    """The tokenizer training used: tokenizer.json through ``tokenizers`` alone where transformers
    would load it unchanged (no ~3 s transformers import on the conversion's critical path),
    else transformers' AutoTokenizer."""
    if kind == "gpt2":
        from edgelora.gguf.tokenizer_json import plain_tokenizer_json

        tok = plain_tokenizer_json(tokenizer_dir, config)
        if tok is not None:
            return tok
    return _load_hf(tokenizer_dir)


def pre_tokenizer_hash(tok) -> str:
    # Default add_special_tokens=True, exactly as llama.cpp hashes it (Llama 3's BOS is part of it).
    return hashlib.sha256(str(tok.encode(CHECK_TEXT)).encode()).hexdigest()


def _pre_from_hash(chkhsh: str, where: Path) -> str:
    try:
        return KNOWN_PRE_HASHES[chkhsh]
    except KeyError:
        raise UnknownTokenizer(
            f"{where / 'tokenizer.json'}: pre-tokenizer hash {chkhsh} is not one llama.cpp knows; "
            "refusing to guess tokenizer.ggml.pre") from None


def pre_tokenizer_name(tokenizer_dir: str | Path) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` name for this tokenizer (no weights loaded)."""
    tokenizer_dir = Path(tokenizer_dir)
    if tokenizer_kind(tokenizer_dir) == "llama":
        _load_hf(tokenizer_dir)  # the HF tokenizer must load: it is what the checks compare with
        return "default"  # SentencePiece has no pre-tokenizer for llama.cpp to choose
    return _pre_from_hash(pre_tokenizer_hash(_load(tokenizer_dir, "gpt2")), tokenizer_dir)


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _special_ids(tokenizer_dir: Path, vocab: dict[str, int], config: dict) -> dict[str, int]:
    """bos/eos/unk/pad from tokenizer_config.json, then config.json (as gguf-py's SpecialVocab)."""
    tcfg = _read_json(tokenizer_dir / "tokenizer_config.json")
    out: dict[str, int] = {}
    for name in SPECIAL_NAMES:
        text = _token_text(tcfg.get(f"{name}_token"))
        if text is not None and text in vocab:
            out[name] = vocab[text]
            continue
        cid = config.get(f"{name}_token_id")
        if isinstance(cid, list):
            cid = cid[0] if cid else None
        if isinstance(cid, int):
            out[name] = cid
    return out


def _looks_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<s>", "</s>", "<pad>", "<unk>", "<mask>")


def _bpe_vocab(tokenizer_dir: Path, tok, n_vocab: int):
    """(tokens, types, merges) of a byte-level BPE tokenizer, ids 0..n_vocab-1."""
    tj = check_tokenizer_kind(tokenizer_dir)
    vocab = tok.get_vocab()
    added = tok.get_added_vocab()
    decoder = getattr(tok, "added_tokens_decoder", {}) or {}
    by_id = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif text in added:
            special = bool(getattr(decoder.get(i), "special", False))
            # CONTROL tokens are what llama.cpp matches as one token in special-aware parsing
            types.append(CONTROL if special or _looks_special(text) else USER_DEFINED)
            tokens.append(text)
        else:
            types.append(NORMAL)
            tokens.append(text)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges") or []]
    if not merges:
        raise UnknownTokenizer(f"{tokenizer_dir / 'tokenizer.json'}: BPE tokenizer has no merges")
    return tokens, types, merges


def _sentencepiece_vocab(tokenizer_dir: Path, tok, n_vocab: int):
    """(tokens, types, scores) from tokenizer.model, with the HF tokenizer's added tokens on top
    (typed CONTROL when special, else USER_DEFINED, so llama.cpp matches them whole)."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [UNUSED] * n_vocab
    scores = [PAD_SCORE] * n_vocab
    for i in range(min(sp.get_piece_size(), n_vocab)):
        tokens[i] = sp.id_to_piece(i)
        scores[i] = float(sp.get_score(i))
        types[i] = (UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else
                    UNUSED if sp.is_unused(i) else BYTE if sp.is_byte(i) else NORMAL)
    decoder = getattr(tok, "added_tokens_decoder", {}) or {}
    for i, added in decoder.items():
        if i >= n_vocab:
            continue
        text = getattr(added, "content", str(added))
        if i < sp.get_piece_size() and text == tokens[i] and types[i] in (CONTROL, UNKNOWN):
            continue  # <s>, </s>, <unk>: SentencePiece already types them
        tokens[i] = text
        scores[i] = PAD_SCORE
        types[i] = CONTROL if getattr(added, "special", False) else USER_DEFINED
    return tokens, types, scores


def _adds_space_prefix(tok) -> bool:
    """Whether the HF tokenizer (the one training used) puts "▁" before the first word."""
    pieces = tok.convert_ids_to_tokens(tok.encode("a", add_special_tokens=False))
    return bool(pieces) and pieces[0].startswith("\u2581")


def build_tokenizer_export(tokenizer_dir: str | Path, *, n_vocab: int | None = None,
                           config: dict | None = None) -> TokenizerExport:
    """Tokens, types, merges or scores, pre name, special ids, template.

    With ``n_vocab`` the token list is padded to that many embedding rows (see
    :meth:`TokenizerExport.padded_to`); without, it ends at the highest real id.
    """
    tokenizer_dir = Path(tokenizer_dir)
    kind = tokenizer_kind(tokenizer_dir)
    tok = _load(tokenizer_dir, kind, config or None)
    config = config or {}
    vocab = tok.get_vocab()
    n_ids = max(vocab.values()) + 1 if vocab else 0
    sp_model = tokenizer_dir / "tokenizer.model"
    if kind == "llama" and sp_model.is_file():
        from sentencepiece import SentencePieceProcessor

        n_sp = SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
        n_ids = max(n_ids, n_sp)
    size = max(n_ids, n_vocab or 0)
    merges: list[str] = []
    scores = None
    add_space_prefix = None
    if kind == "gpt2":
        chkhsh = pre_tokenizer_hash(tok)
        pre = _pre_from_hash(chkhsh, tokenizer_dir)
        tokens, types, merges = _bpe_vocab(tokenizer_dir, tok, size)
    else:
        chkhsh, pre = "", "default"
        if sp_model.is_file():
            tokens, types, scores = _sentencepiece_vocab(tokenizer_dir, tok, size)
        else:
            tokens, types, scores = sentencepiece_json_vocab(
                _read_json(tokenizer_dir / "tokenizer.json"), tok, size, getattr(tok, "unk_token", None))
        add_space_prefix = _adds_space_prefix(tok)

    special = _special_ids(tokenizer_dir, vocab, config)
    probe = "Hello world"
    with_special, plain = tok.encode(probe), tok.encode(probe, add_special_tokens=False)
    bos, eos = special.get("bos"), special.get("eos")
    add_bos = bos is not None and with_special[:1] == [bos] and plain[:1] != [bos]
    add_eos = eos is not None and with_special[-1:] == [eos] and plain[-1:] != [eos]

    template = getattr(tok, "chat_template", None)
    if template is None:
        template = _read_json(tokenizer_dir / "tokenizer_config.json").get("chat_template")
    if template is None and (tokenizer_dir / "chat_template.jinja").is_file():
        template = (tokenizer_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]

    export = TokenizerExport(pre=pre, pre_hash=chkhsh, tokens=tokens, token_types=types, merges=merges,
                             special_ids=special, add_bos=add_bos, add_eos=add_eos,
                             chat_template=template, n_real_tokens=len(vocab), model=kind, scores=scores,
                             add_space_prefix=add_space_prefix)
    if n_vocab is not None:
        export = export.padded_to(n_vocab, tokenizer_dir / "tokenizer.json")
    return export


def write_tokenizer(writer, export: TokenizerExport) -> None:
    """Add the ``tokenizer.*`` keys to a gguf.GGUFWriter."""
    writer.add_tokenizer_model(export.model)
    writer.add_tokenizer_pre(export.pre)
    writer.add_token_list(export.tokens)
    if export.scores is not None:
        writer.add_token_scores([float(x) for x in export.scores])
    writer.add_token_types([int(t) for t in export.token_types])
    if export.merges:
        writer.add_token_merges(export.merges)
    if export.add_space_prefix is not None:
        writer.add_add_space_prefix(bool(export.add_space_prefix))
    for name, tid in export.special_ids.items():
        getattr(writer, f"add_{name}_token_id")(int(tid))
    writer.add_add_bos_token(bool(export.add_bos))
    writer.add_add_eos_token(bool(export.add_eos))
    if export.chat_template:
        writer.add_chat_template(export.chat_template)
