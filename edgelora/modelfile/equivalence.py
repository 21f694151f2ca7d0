"""Prove a Go TEMPLATE renders conversations exactly as the tokenizer's Jinja chat template.

Training saw ``tokenize(jinja_text, add_special_tokens=False)`` (what transformers'
``apply_chat_template`` does); Ollama feeds ``[BOS if the GGUF says add_bos_token] +
tokenize(go_text)``. So a TEMPLATE is equivalent when, on every probe conversation,

1. text: the Jinja text equals the Go text, after removing a leading BOS string from the
   Jinja side when the tokenizer adds BOS itself (templates must not emit BOS), and
2. tokens: both token id sequences above are identical, tokenized by the Hugging Face
   tokenizer and, when a GGUF is at hand, by llama.cpp's own vocabulary.

Stops come from the same renderings: the end-of-turn token is the special token that
follows an assistant message's content; it must be end-of-generation in llama.cpp
(:func:`check_eog`), and every turn marker the template emits is a stop string too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgelora.errors import ModelfileError

_MARK = "EDGELORA_ASSISTANT_CONTENT"


def render_jinja_cases(chat_template_jinja: str, conversations, special_tokens: dict) -> list[str | None]:
    """Jinja renderings; None where the template itself refuses the conversation."""
    from edgelora.runtime.chat_template import ChatTemplateError, render_chat

    out = []
    for conv in conversations:
        try:
            out.append(render_chat(chat_template_jinja, conv, special_tokens=special_tokens))
        except ChatTemplateError as e:
            if "sandbox" in str(e) or "exceeded" in str(e) or "exceeds" in str(e):
                raise
            out.append(None)
    return out


def _strip_bos(text: str, special_tokens: dict, add_bos: bool) -> str:
    bos = special_tokens.get("bos_token")
    if add_bos and bos and text.startswith(bos):
        return text[len(bos):]
    return text


def compare_templates(chat_template_jinja: str, go_text: str, *, special_tokens: dict | None = None,
                      renderer=None, add_bos: bool = False) -> list[dict]:
    """Text mismatches between the Jinja template and a Go TEMPLATE on PROBE_CONVERSATIONS."""
    from edgelora.modelfile import gotmpl
    from edgelora.modelfile.chat_templates import PROBE_CONVERSATIONS

    special_tokens = special_tokens or {}
    renderer = renderer or gotmpl.render
    jinja = render_jinja_cases(chat_template_jinja, PROBE_CONVERSATIONS, special_tokens)
    cases = [(c, _strip_bos(e, special_tokens, add_bos)) for c, e in zip(PROBE_CONVERSATIONS, jinja) if e is not None]
    if len(cases) < 3:
        raise ModelfileError("chat_template: refuses most test conversations; cannot prove a TEMPLATE")
    try:
        got = renderer(go_text, [c for c, _ in cases])
    except gotmpl.GoTemplateError as e:
        return [{"conversation": None, "error": str(e)}]
    return [{"conversation": c, "expected": e, "got": g} for (c, e), g in zip(cases, got) if e != g]


# -- tokenizers ----------------------------------------------------------------------

class _Tokenizers:
    """The HF tokenizer (training side) and, optionally, llama.cpp's vocabulary (serving side)."""

    def __init__(self, tokenizer_dir=None, gguf_path=None, hf_tokenizer=None):
        self.hf = hf_tokenizer
        if self.hf is None and tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            self.hf = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        self.llm = None
        if gguf_path is not None:
            from edgelora.runtime.llama import open_llama

            self.llm = open_llama(gguf_path, vocab_only=True)

    def add_bos(self, fallback: bool) -> bool:
        if self.hf is None:
            return fallback
        ids = self.hf("a", add_special_tokens=True)["input_ids"]
        return bool(self.hf.bos_token_id is not None and ids and ids[0] == self.hf.bos_token_id)

    def training_ids(self, jinja_text: str) -> list[int]:
        return list(self.hf(jinja_text, add_special_tokens=False)["input_ids"])

    def serving_ids(self, go_text: str) -> dict[str, list[int]]:
        out = {"hf": list(self.hf(go_text, add_special_tokens=True)["input_ids"])}
        if self.llm is not None:
            out["llama.cpp"] = list(self.llm.tokenize(go_text.encode("utf-8"), add_bos=True, special=True))
        return out

    def close(self):
        if self.llm is not None:
            self.llm.close()


def token_mismatches(chat_template_jinja: str, go_text: str, toks: _Tokenizers, special_tokens: dict) -> list[dict]:
    """Conversations whose training token ids differ from what Ollama would feed."""
    from edgelora.modelfile import gotmpl
    from edgelora.modelfile.chat_templates import PROBE_CONVERSATIONS

    jinja = render_jinja_cases(chat_template_jinja, PROBE_CONVERSATIONS, special_tokens)
    cases = [(c, e) for c, e in zip(PROBE_CONVERSATIONS, jinja) if e is not None]
    got = gotmpl.render(go_text, [c for c, _ in cases])
    bad = []
    for (conv, jinja_text), go in zip(cases, got):
        want = toks.training_ids(jinja_text)
        for side, ids in toks.serving_ids(go).items():
            if ids != want:
                bad.append({"conversation": conv, "tokenizer": side, "training": want[:32], "serving": ids[:32]})
    return bad


# -- stops ---------------------------------------------------------------------------

def end_of_turn_tokens(go_text: str, tokens: set[str]) -> list[str]:
    """Special tokens that close an assistant turn (what a model generates to stop)."""
    from edgelora.modelfile import gotmpl

    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _MARK},
            {"role": "user", "content": "r"}]
    text = gotmpl.render(go_text, [conv])[0]
    found = []
    at = text.find(_MARK)
    if at >= 0:
        rest = text[at + len(_MARK):].lstrip(" \n")
        for tok in sorted(tokens, key=len, reverse=True):
            if tok and rest.startswith(tok):
                found.append(tok)
                break
    return found


def _markers(rendered: list[str], tokens: set[str]) -> list[str]:
    def first_at(t):
        return min((r.find(t) for r in rendered if t in r), default=1 << 30)

    return [t for t in sorted(tokens, key=first_at) if any(t in r for r in rendered)]


def stops_for(go_text: str, tokens: set[str], special_tokens: dict) -> list[str]:
    """End-of-turn token(s) first, then every other special token the template emits."""
    from edgelora.modelfile import gotmpl
    from edgelora.modelfile.chat_templates import PROBE_CONVERSATIONS

    eot = end_of_turn_tokens(go_text, tokens)
    rendered = gotmpl.render(go_text, PROBE_CONVERSATIONS)
    stops = eot + [t for t in _markers(rendered, tokens) if t not in eot]
    eos = special_tokens.get("eos_token")
    if not eot and eos and eos not in stops:
        stops.insert(0, eos)
    return stops


def check_eog(gguf_path, tokens: list[str]) -> dict:
    """Each of ``tokens`` must be one token that llama.cpp treats as end of generation."""
    import llama_cpp

    from edgelora.runtime.llama import open_llama

    llm = open_llama(gguf_path, vocab_only=True)
    try:
        out = {}
        for tok in tokens:
            ids = llm.tokenize(tok.encode("utf-8"), add_bos=False, special=True)
            if len(ids) != 1:
                raise ModelfileError(f"{gguf_path}: end-of-turn token {tok!r} is not a single token ({ids})")
            if not llama_cpp.llama_vocab_is_eog(llm._model.vocab, ids[0]):
                raise ModelfileError(f"{gguf_path}: end-of-turn token {tok!r} (id {ids[0]}) is not end-of-generation "
                                     "in llama.cpp's vocabulary: generation would not stop by itself")
            out[tok] = ids[0]
        return out
    finally:
        llm.close()


# -- the choice ------------------------------------------------------------------------

def _describe(mismatch: dict) -> str:
    if mismatch.get("error"):
        return mismatch["error"]
    conv = json.dumps(mismatch["conversation"], ensure_ascii=False)[:120]
    if "tokenizer" in mismatch:
        return f"token ids differ ({mismatch['tokenizer']}) on {conv}"
    return f"text differs on {conv}: expected {mismatch['expected'][:80]!r}, got {mismatch['got'][:80]!r}"


def choose_chat_template(chat_template_jinja: str, tokenizer_dir=None, *, user_template: str | None = None,
                         gguf_path=None, hf_tokenizer=None) -> tuple[str, str, list[str]]:
    """(name, Go TEMPLATE text, stop strings) of the template proven equal to ``chat_template_jinja``.

    Candidates are the shipped ``templates/chat/*.tmpl``, or only ``user_template`` when given
    (it must pass the same check). ModelfileError "no chat template matches" otherwise.
    """
    from edgelora.runtime.chat_template import added_tokens, load_tokenizer_template, special_tokens_from_config
    from edgelora.modelfile.chat_templates import PROBE_CONVERSATIONS, available_chat_templates

    special_tokens: dict = {}
    tokens: set[str] = set()
    fallback_bos = False
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        try:
            _, special_tokens = load_tokenizer_template(tokenizer_dir)
        except ModelfileError:
            cfg_path = Path(tokenizer_dir) / "tokenizer_config.json"
            if cfg_path.is_file():
                special_tokens = special_tokens_from_config(json.loads(cfg_path.read_text(encoding="utf-8")))
        tokens = added_tokens(tokenizer_dir)
        cfg_path = Path(tokenizer_dir) / "tokenizer_config.json"
        if cfg_path.is_file():
            fallback_bos = bool(json.loads(cfg_path.read_text(encoding="utf-8")).get("add_bos_token", False))
    if hf_tokenizer is not None:
        tokens |= {t for t in hf_tokenizer.all_special_tokens} | set(hf_tokenizer.get_added_vocab())
        special_tokens = {k: getattr(hf_tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                          if isinstance(getattr(hf_tokenizer, k, None), str)} | special_tokens
    toks = _Tokenizers(tokenizer_dir, gguf_path, hf_tokenizer) if (tokenizer_dir or hf_tokenizer) else None
    try:
        add_bos = toks.add_bos(fallback_bos) if toks else fallback_bos
        candidates = {"user": user_template} if user_template is not None else available_chat_templates()
        reasons = []
        for name, go_text in candidates.items():
            bad = compare_templates(chat_template_jinja, go_text, special_tokens=special_tokens, add_bos=add_bos)
            if not bad and toks is not None and toks.hf is not None:
                bad = token_mismatches(chat_template_jinja, go_text, toks, special_tokens)
            if bad:
                reasons.append(f"{name}: {_describe(bad[0])}")
                continue
            from edgelora.modelfile import gotmpl

            if not tokens:  # no tokenizer files: take the special-looking markers the template emits
                rendered = gotmpl.render(go_text, PROBE_CONVERSATIONS)
                tokens = set(re.findall(r"<\|[^|<>\s]+\|>|<[a-z_]+>|</s>|\[/?INST\]", "".join(rendered)))
            stops = stops_for(go_text, tokens, special_tokens)
            if not stops:
                raise ModelfileError(f"templates/chat/{name}.tmpl: matches but no end-of-turn token found for stops")
            return name, go_text, stops
    finally:
        if toks is not None:
            toks.close()
    if user_template is not None:
        raise ModelfileError(f"[ollama] template: does not render like the tokenizer's chat template: {reasons[0][6:]}")
    raise ModelfileError("chat_template: no chat template matches (add a templates/chat/*.tmpl that renders "
                         "identically, or set [ollama] template)")
