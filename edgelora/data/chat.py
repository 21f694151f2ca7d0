"""Chat datasets: load and validate JSONL, split, deduplicate, and encode for training.

One example is ``{"messages": [{"role": ..., "content": ...}, ...]}``, one per line.
Encoding renders the conversation with the tokenizer's own chat template, so the
model is trained on exactly the text it will see at inference, and the loss is
taken on assistant tokens only (their content and the end-of-turn token).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import unicodedata
from pathlib import Path
from typing import Iterable

from edgelora.errors import DataError
from edgelora.util.files import jsonl_records

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100
# How many problems the one-line error spells out before "and N more".
SHOWN_PROBLEMS = 5


# --------------------------------------------------------------------------- loading


def _dataset_files(path: str | os.PathLike) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.glob("*.jsonl") if f.is_file())
        if not files:
            raise DataError(f"{p}: folder holds no .jsonl files")
        return files
    raise DataError(f"{p}: no such file or folder")


def _message_problem(index: int, msg) -> str | None:
    where = f"message {index}"
    if not isinstance(msg, dict):
        return f"{where} is {type(msg).__name__}, expected an object with role and content"
    if "role" not in msg:
        return f"{where} has no 'role'"
    if "content" not in msg:
        return f"{where} has no 'content'"
    role, content = msg["role"], msg["content"]
    if role not in ROLES:
        return f"{where} has unknown role {role!r} (expected one of {', '.join(ROLES)})"
    if not isinstance(content, str):
        return f"{where} ({role}) content is {type(content).__name__}, expected a string"
    if not content.strip():
        return f"{where} ({role}) has empty content"
    return None


def example_problem(record) -> str | None:
    if not isinstance(record, dict):
        return f"line is a JSON {type(record).__name__}, expected an object with 'messages'"
    if "messages" not in record:
        return "missing 'messages'"
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, msg in enumerate(messages):
        problem = _message_problem(i, msg)
        if problem:
            return problem
    if messages[-1]["role"] != "assistant":
        return f"conversation ends with {messages[-1]['role']!r}, expected 'assistant'"
    return None


def raise_problems(problems: list[str]) -> None:
    """One DataError carrying every problem (the CLI prints one per line)."""
    if len(problems) == 1:
        raise DataError(problems[0], problems=problems)
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    tail = f"; and {more} more" if more > 0 else ""
    raise DataError(f"{len(problems)} problems in dataset: {shown}{tail}", problems=problems)


def load_chat_examples(path: str | os.PathLike) -> list[dict]:
    """Read chat JSONL from a file or a folder of ``*.jsonl`` files (sorted by name).

    Every line is checked; all problems are gathered and raised as one DataError
    whose message starts each problem with ``file:line:``. Blank lines are skipped.
    Returned examples keep only ``role`` and ``content`` of each message.
    """
    problems: list[str] = []
    examples: list[dict] = []
    for file in _dataset_files(path):
        found = 0
        for lineno, record in jsonl_records(file, problems):
            problem = example_problem(record)
            if problem:
                problems.append(f"{file}:{lineno}: {problem}")
                continue
            found += 1
            examples.append(
                {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}
            )
        if found == 0 and not any(p.startswith(f"{file}:") for p in problems):
            problems.append(f"{file}: holds no examples")
    if problems:
        raise_problems(problems)
    return examples


# --------------------------------------------------------------------------- split, dedup, digest


def split_examples(examples: list[dict], *, eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split into (train, eval), the same way for the same seed and input order.

    Eval gets ``round(n * eval_fraction)`` examples, at least one when the fraction
    is positive, and train always keeps at least one. Both keep the input order.
    Deduplicate first, or a duplicate can land on both sides.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise DataError(f"eval_fraction: must be in [0, 1), got {eval_fraction}")
    n = len(examples)
    n_eval = 0
    if eval_fraction > 0 and n >= 2:
        n_eval = min(n - 1, max(1, round(n * eval_fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    eval_idx = set(order[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in eval_idx]
    held = [ex for i, ex in enumerate(examples) if i in eval_idx]
    return train, held


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def example_key(example: dict) -> str:
    """Hash of an example's roles and whitespace/Unicode-normalized contents."""
    if "text" in example:  # plain text: its own kind, never equal to a conversation
        canon = [["text", _normalized(example["text"])]]
    else:
        canon = [[m["role"], _normalized(m["content"])] for m in example["messages"]]
    return hashlib.sha256(json.dumps(canon, ensure_ascii=False).encode("utf-8")).hexdigest()


def deduplicate(examples: list[dict]) -> tuple[list[dict], int]:
    """Drop exact duplicates (after normalization), keeping each first occurrence.

    Returns ``(unique_examples, number_removed)``.
    """
    seen: set[str] = set()
    unique = []
    for ex in examples:
        key = example_key(ex)
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    return unique, len(examples) - len(unique)


def dataset_digest(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> str:
    """sha256 over the dataset files' names and bytes, in name order.

    Folders expand to their ``.jsonl``, ``.json`` and ``.parquet`` files. Names are relative to the path given
    (a file's own name), so the digest does not depend on where the data lives.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    named: list[tuple[str, Path]] = []
    for p in paths:
        p = Path(p)
        base = p if p.is_dir() else p.parent
        files = [p] if p.is_file() else sorted(
            f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (".jsonl", ".json", ".parquet"))
        if not files:
            files = _dataset_files(p)  # raises the usual one-line error
        named.extend((f.relative_to(base).as_posix(), f) for f in files)
    h = hashlib.sha256()
    for name, f in sorted(named):
        data = f.read_bytes()
        # Length-prefixing keeps (name, bytes) pairs unambiguous inside one stream.
        h.update(f"{len(name)}:{name}:{len(data)}:".encode("utf-8"))
        h.update(data)
    return h.hexdigest()


# --------------------------------------------------------------------------- encoding


def _render_ids(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> list[int]:
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # jinja errors, missing template: one line for the user
        raise DataError(f"chat template: cannot render conversation ({type(e).__name__}: {e})") from e
    # The template already writes BOS/special tokens; do not add them twice.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _end_before_trailing_whitespace(tokenizer, ids: list[int], start: int, end: int) -> int:
    """End of ids[start:end] once trailing whitespace-only (non-special) tokens are cut.

    Templates often write a newline after the end-of-turn token; generation stops at
    the end-of-turn token, so that newline is never produced and is not trained on.
    """
    special = set(tokenizer.all_special_ids)
    while end > start and ids[end - 1] not in special and not tokenizer.decode(ids[end - 1 : end]).strip():
        end -= 1
    return end


def encode_chat(tokenizer, messages: list[dict], *, max_length: int) -> dict:
    """Token ids of the rendered conversation and labels for assistant tokens only.

    Each assistant span is found by rendering ``messages[:i]`` with the generation
    prompt and ``messages[:i+1]``; the first must be a token prefix of the second and
    every rendering a prefix of the whole, else the template is refused. Labels are
    -100 outside assistant spans. Sequences longer than ``max_length`` are cut at the
    end and marked ``truncated``.
    """
    if max_length < 2:
        raise DataError(f"max_length: must be at least 2, got {max_length}")
    full = _render_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = _render_ids(tokenizer, messages[:i], add_generation_prompt=True)
        last = i == len(messages) - 1
        upto = full if last else _render_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if upto[: len(prompt)] != prompt or full[: len(upto)] != upto:
            raise DataError(
                f"chat template: not prefix-stable at message {i} (rendering a conversation prefix "
                "changes earlier tokens), so assistant tokens cannot be located"
            )
        end = _end_before_trailing_whitespace(tokenizer, upto, len(prompt), len(upto))
        labels[len(prompt) : end] = upto[len(prompt) : end]
    truncated = len(full) > max_length
    return {"input_ids": full[:max_length], "labels": labels[:max_length], "truncated": truncated}


def encode_text(tokenizer, text: str, *, max_length: int) -> dict:
    """Plain text: BOS (if the tokenizer has one) + text + EOS, every token trained on."""
    if max_length < 2:
        raise DataError(f"max_length: must be at least 2, got {max_length}")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return {"input_ids": ids[:max_length], "labels": ids[:max_length], "truncated": len(ids) > max_length}


def has_trained_tokens(encoded: dict) -> bool:
    """Whether any label after the first is trained on (the first predicts nothing: labels
    are shifted by one). Training skips an example without; the data report counts them."""
    return any(t != IGNORE_INDEX for t in encoded["labels"][1:])


def truncate(encoded: dict, max_length: int) -> dict:
    """An encoding cut to ``max_length`` tokens, marked ``truncated`` when it was longer."""
    n = len(encoded["input_ids"])
    return {"input_ids": encoded["input_ids"][:max_length], "labels": encoded["labels"][:max_length],
            "truncated": encoded.get("truncated", False) or n > max_length}


def encode_example(tokenizer, example: dict, *, max_length: int) -> dict:
    """Encode a normalised example: chat (assistant-only labels) or plain text (all tokens)."""
    if "text" in example:
        return encode_text(tokenizer, example["text"], max_length=max_length)
    return encode_chat(tokenizer, example["messages"], max_length=max_length)


# --------------------------------------------------------------------------- report


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    # Nearest-rank: the smallest value with at least q% of values at or below it.
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def data_report(examples: list[dict], encoded: list[dict], *, duplicates_removed: int | None = None) -> dict:
    """Counts and token statistics of a dataset, JSON-serialisable.

    ``examples`` are the examples as loaded; ``duplicates_removed`` is how many were
    dropped by :func:`deduplicate` (computed from ``examples`` when not given).
    ``encoded`` are :func:`encode_chat` results of the examples trained on.
    """
    if duplicates_removed is None:
        duplicates_removed = deduplicate(examples)[1]
    roles = {r: 0 for r in ROLES}
    for ex in examples:
        for m in ex.get("messages", ()):
            roles[m["role"]] += 1
    lengths = sorted(len(e["input_ids"]) for e in encoded)
    label_tokens = [sum(1 for t in e["labels"] if t != IGNORE_INDEX) for e in encoded]
    return {
        "examples": len(examples),
        "duplicates_removed": duplicates_removed,
        "messages": sum(roles.values()),
        "messages_by_role": roles,
        "encoded": len(encoded),
        "tokens": {
            "total": sum(lengths),
            "trained": sum(label_tokens),
            "p50": _percentile(lengths, 50),
            "p90": _percentile(lengths, 90),
            "p99": _percentile(lengths, 99),
            "max": lengths[-1] if lengths else 0,
        },
        "truncated": sum(1 for e in encoded if e["truncated"]),
        "without_trained_tokens": sum(1 for e in encoded if not has_trained_tokens(e)),
    }
