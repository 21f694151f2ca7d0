"""SentencePiece-style BPE given only as tokenizer.json, written for llama.cpp's ``llama`` tokenizer.

Llama 2, Mistral 7B and Gemma tokenizers are SentencePiece BPE. Many repositories (and every model
that went through a GGUF -> transformers round trip) ship them only as tokenizer.json: a BPE model
with ``byte_fallback``, spaces turned into "▁" by a Metaspace pre-tokenizer or by a normalizer
(``Replace(" ", "▁")``, with or without ``Prepend("▁")``), and no ByteLevel step.

llama.cpp's SentencePiece tokenizer merges adjacent pieces by *score*: of all neighbouring pairs
whose joined text is a vocabulary token, the highest-scoring merges first. BPE merges by *rank*:
the earliest merge rule first. A token is therefore scored minus the rank of the first merge rule
that makes it; a token no rule makes scores below every merge (it is only ever a single
character, or reached by no merge at all). SentencePiece-converted tokenizer.json files list a
merge for every split of every piece, ordered by piece score, so the two orders agree; the
conversion's tokenization check against transformers catches any tokenizer where they do not.

Token types: ``<0xNN>`` pieces of the model vocabulary are BYTE, the model's unknown token
UNKNOWN, added tokens CONTROL when special (else USER_DEFINED, which llama.cpp matches whole in
text, as transformers does), the rest NORMAL.
"""

from __future__ import annotations

import re

UNKNOWN_SCORE = 0.0
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def _nodes(node):
    """Every dict in a tokenizer.json component (Sequence members included)."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _nodes(v)
    elif isinstance(node, list):
        for v in node:
            yield from _nodes(v)


def is_sentencepiece_json(tj: dict) -> bool:
    """A byte-fallback BPE tokenizer.json whose spaces become "▁" (and no ByteLevel step)."""
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return False
    parts = [tj.get("normalizer"), tj.get("pre_tokenizer")]
    if any(n.get("type") == "ByteLevel" for n in _nodes(parts)):
        return False
    metaspace = any(n.get("type") == "Metaspace" for n in _nodes(tj.get("pre_tokenizer")))
    replaces_space = any(n.get("type") == "Replace" and n.get("content") == "\u2581"
                         and (n.get("pattern") or {}).get("String") == " " for n in _nodes(tj.get("normalizer")))
    return metaspace or replaces_space


def merge_scores(tj: dict) -> dict[str, float]:
    """token text -> minus the rank of the first merge rule producing it."""
    scores: dict[str, float] = {}
    for rank, merge in enumerate(tj["model"].get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        scores.setdefault(left + right, -float(rank))
    return scores


def sentencepiece_json_vocab(tj: dict, tok, n_vocab: int, unk_text: str | None):
    """(tokens, types, scores), ids 0..n_vocab-1, for a tokenizer.json :func:`is_sentencepiece_json`
    accepts; ``tok`` is the transformers tokenizer (added tokens as transformers loaded them)."""
    from edgelora.gguf.token_types import BYTE, CONTROL, NORMAL, PAD_SCORE, UNKNOWN, UNUSED, USER_DEFINED

    model_vocab = tj["model"].get("vocab") or {}
    by_rank = merge_scores(tj)
    lowest = -float(len(by_rank) + 1)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [UNUSED] * n_vocab
    scores = [PAD_SCORE] * n_vocab
    unk_text = unk_text or tj["model"].get("unk_token")
    for text, i in model_vocab.items():
        if i >= n_vocab:
            continue
        tokens[i] = text
        if text == unk_text:
            types[i], scores[i] = UNKNOWN, UNKNOWN_SCORE
        elif _BYTE_PIECE.match(text):
            types[i], scores[i] = BYTE, 0.0
        else:
            types[i], scores[i] = NORMAL, by_rank.get(text, lowest - i)
    decoder = getattr(tok, "added_tokens_decoder", {}) or {}
    for i, added in decoder.items():
        if i >= n_vocab:
            continue
        text = getattr(added, "content", str(added))
        tokens[i] = text
        scores[i] = PAD_SCORE
        if text == unk_text:
            types[i] = UNKNOWN
        else:
            types[i] = CONTROL if getattr(added, "special", False) else USER_DEFINED
    return tokens, types, scores
