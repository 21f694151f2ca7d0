"""A byte-level BPE tokenizer.json loaded with ``tokenizers`` alone, where that is exactly what
transformers would load.

Importing transformers and building an ``AutoTokenizer`` costs ~3 s on a small host, before the
GGUF header (which holds the tokenizer) can be written, so it is on the critical path of every
conversion. For the generic fast-tokenizer classes transformers wraps tokenizer.json as it is;
:func:`plain_tokenizer_json` returns that wrapped tokenizer without transformers when the
tokenizer's files contain nothing transformers would change on load, and ``None`` otherwise (the
caller then loads it with transformers). What transformers (5.x) changes, and so what sends a
tokenizer to the slow path:

- a model-specific ``tokenizer_class`` (Qwen2Tokenizer, LlamaTokenizer, ... rebuild the pipeline
  from vocab and merges in their own code);
- a special token named in tokenizer_config.json that tokenizer.json does not already hold as an
  added token, or an ``added_tokens_decoder`` entry that differs from tokenizer.json's (it would
  be added or changed);
- ``split_special_tokens``; Mistral-family models (transformers may patch their split regex);
  several chat templates (``additional_chat_templates/``).
"""

from __future__ import annotations

import json
from pathlib import Path

GENERIC_CLASSES = (None, "TokenizersBackend", "PreTrainedTokenizerFast")
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
LIST_KEYS = ("additional_special_tokens", "extra_special_tokens")


def _content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _named_special_tokens(tcfg: dict) -> list[str]:
    names = [_content(tcfg.get(k)) for k in SPECIAL_KEYS]
    for key in LIST_KEYS:
        value = tcfg.get(key) or []
        names += [_content(v) for v in (value.values() if isinstance(value, dict) else value)]
    return [n for n in names if n is not None]


def transformers_would_change(tokenizer_dir: Path, tj: dict, tcfg: dict, config: dict) -> str | None:
    """Why transformers' tokenizer could differ from tokenizer.json read as is (None: it cannot)."""
    if tcfg.get("tokenizer_class") not in GENERIC_CLASSES:
        return f"tokenizer_class {tcfg.get('tokenizer_class')}"
    if tcfg.get("split_special_tokens"):
        return "split_special_tokens"
    model_type = str(config.get("model_type", "")).lower()
    if any(m in model_type for m in ("mistral", "mixtral", "pixtral")) or "fix_mistral_regex" in tcfg:
        return f"model_type {model_type}"
    if (tokenizer_dir / "additional_chat_templates").exists():
        return "additional_chat_templates"
    added = {t["content"]: t for t in tj.get("added_tokens") or []}
    for name in _named_special_tokens(tcfg):
        if name not in added:
            return f"special token {name!r} not an added token of tokenizer.json"
    for tid, entry in (tcfg.get("added_tokens_decoder") or {}).items():
        text = _content(entry)
        ours = added.get(text)
        if ours is None or ours["id"] != int(tid) or \
                (isinstance(entry, dict) and bool(entry.get("special")) != bool(ours.get("special"))):
            return f"added_tokens_decoder entry {tid}"
    return None


class PlainTokenizer:
    """The part of a transformers fast tokenizer's interface the GGUF export uses."""

    def __init__(self, tokenizer_dir: Path, tcfg: dict):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.added_tokens_decoder = self._tok.get_added_tokens_decoder()
        template_file = tokenizer_dir / "chat_template.jinja"  # takes priority, as in transformers
        self.chat_template = (template_file.read_text(encoding="utf-8") if template_file.is_file()
                              else tcfg.get("chat_template"))

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        return {t.content: i for i, t in self.added_tokens_decoder.items()}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids


def plain_tokenizer_json(tokenizer_dir: str | Path, config: dict | None = None) -> PlainTokenizer | None:
    """tokenizer.json through ``tokenizers`` when transformers would load it unchanged, else None."""
    tokenizer_dir = Path(tokenizer_dir)
    tj_path, tcfg_path = tokenizer_dir / "tokenizer.json", tokenizer_dir / "tokenizer_config.json"
    if not tj_path.is_file():
        return None
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    tcfg = json.loads(tcfg_path.read_text(encoding="utf-8")) if tcfg_path.is_file() else {}
    if config is None:
        cfg_path = tokenizer_dir / "config.json"
        config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    if transformers_would_change(tokenizer_dir, tj, tcfg, config) is not None:
        return None
    return PlainTokenizer(tokenizer_dir, tcfg)
