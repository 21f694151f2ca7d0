"""Exact scoring of JSON-field extraction, on text or on a GGUF run with llama-cpp-python.

An output counts only if, after trimming surrounding whitespace, it is one JSON object with
no leaked special tokens: a model that needs the stop list to look right will not look right
in every client, and a missing brace is a broken answer, not a near miss.
"""

from __future__ import annotations

import json
import re
import time

_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>")


def parse_output(text: str) -> tuple[dict | None, str]:
    """(object, "") when ``text`` is a clean JSON object, else (None, reason)."""
    if not isinstance(text, str):
        return None, "not text"
    if _SPECIAL.search(text):
        return None, "leaked special token"
    stripped = text.strip()
    if not stripped:
        return None, "empty"
    try:
        obj = json.loads(stripped, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError:
        return None, "invalid JSON"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    return obj, ""


def score_json_fields(outputs: list[str], expected: list[dict], fields) -> dict:
    """Per-field exact-match rate and all-fields exact-match rate (no extra keys allowed)."""
    fields = list(fields)
    if len(outputs) != len(expected):
        raise ValueError(f"outputs: {len(outputs)} items but expected has {len(expected)}")
    n = len(outputs)
    per_field = {f: 0 for f in fields}
    exact = valid = 0
    failures: dict[str, int] = {}
    for out, exp in zip(outputs, expected):
        obj, why = parse_output(out)
        if obj is None:
            failures[why] = failures.get(why, 0) + 1
            continue
        valid += 1
        hits = [f for f in fields if f in obj and obj[f] == exp.get(f)]
        for f in hits:
            per_field[f] += 1
        if len(hits) == len(fields) and set(obj) == set(fields):
            exact += 1
    rate = (lambda k: k / n) if n else (lambda k: 0.0)
    return {
        "n": n,
        "exact_match": rate(exact),
        "valid_json": rate(valid),
        "fields": {f: rate(c) for f, c in per_field.items()},
        "failures": failures,
    }


def _split_example(example: dict) -> tuple[list[dict], dict]:
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("example without messages")
    if "expected" in example:
        prompt = messages[:-1] if messages[-1].get("role") == "assistant" else messages
        return prompt, example["expected"]
    if messages[-1].get("role") != "assistant":
        raise ValueError("example must end with the assistant answer or carry 'expected'")
    return messages[:-1], json.loads(messages[-1]["content"])


def score_gguf(gguf_path, examples: list[dict], fields, *, max_tokens: int = 48, n_threads=None,
               n_examples_shown: int = 3) -> dict:
    """Greedy answers of a GGUF on chat examples (rendered with its embedded template), scored."""
    from .probes import _is_end, greedy, load_llama, render_prompt, tokenize_prompt

    pairs = [_split_example(ex) for ex in examples]
    llm = load_llama(gguf_path, n_threads=n_threads, n_ctx=1024)
    outputs, prompts = [], []
    start = time.perf_counter()
    try:
        for messages, _ in pairs:
            prompt = render_prompt(llm, messages)
            ids = tokenize_prompt(llm, prompt)
            # One model, KV cache reused across prompts: they share the system prompt prefix.
            generated, _ = greedy(llm, ids, max_tokens=max_tokens, reuse_prefix=True)
            if generated and _is_end(llm, generated[-1]):
                generated = generated[:-1]  # the end-of-turn token is where a client stops
            outputs.append(llm.detokenize(generated, special=True).decode("utf-8", "replace"))
            prompts.append(prompt)
    finally:
        llm.close()
    elapsed = time.perf_counter() - start
    report = score_json_fields(outputs, [e for _, e in pairs], fields)
    report["prompts_per_s"] = len(pairs) / elapsed if elapsed > 0 else 0.0
    report["seconds"] = elapsed
    report["examples"] = [{"prompt": p, "output": o, "expected": e} for p, o, (_, e)
                          in list(zip(prompts, outputs, pairs))[:n_examples_shown]]
    return report

