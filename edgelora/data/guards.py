"""Data-side guards against a fine-tune that loses more than it learns.

- ``[data] mix``: general instruction data mixed into training with a ratio. A narrow
  dataset pulls every weight the adapter touches toward one behaviour; a tenth of general
  conversations keeps the rest of the model's skills exercised (the usual advice against
  catastrophic forgetting).
- ``fact_injection_warning``: LoRA shapes behaviour (format, tone, procedure); it is a poor
  and unreliable store of facts. A dataset of many *different* questions, each answered by a
  short *different* fact, is the signature of trying to teach facts: behaviour and format
  datasets either reuse a small answer vocabulary (labels, JSON of a few values) or give long
  free-form answers. So the warning fires when most examples are question-style prompts with
  short answers and those answers are nearly all distinct.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

QUESTION_START = re.compile(
    r"^\s*(who|what|when|where|which|whom|whose|why|how|name|list|define|tell me|give me|in what|"
    r"is|are|was|were|does|do|did|can|could)\b", re.IGNORECASE)
SHORT_ANSWER_WORDS = 12
MIN_EXAMPLES = 20
MIN_QA_SHARE = 0.5
MIN_DISTINCT_SHARE = 0.8


def mix_problems(mix) -> list[str]:
    w = "edgelora.toml: [data] mix"
    if not isinstance(mix, list):
        return [f"{w} must be a list of {{path, ratio}} tables"]
    out = []
    for i, entry in enumerate(mix):
        if not isinstance(entry, dict) or set(entry) - {"path", "ratio"}:
            out.append(f"{w}[{i}] must be a table with exactly path and ratio")
            continue
        if not isinstance(entry.get("path"), str) or not entry.get("path"):
            out.append(f"{w}[{i}] path must name a chat JSONL file or folder")
        r = entry.get("ratio")
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            out.append(f"{w}[{i}] ratio must be a number in (0, 1], got {r!r}")
    return out


def mix_general_data(train: list[dict], mix: list[dict], *, resolve, seed: int, load=None) -> tuple[list[dict], list[dict]]:
    """``train`` plus, for each mix entry, round(ratio * len(train)) examples drawn from its file
    without replacement (seeded), shuffled in with the seed. Returns (examples, report rows).
    ``load`` reads a dataset path (default: chat JSONL with file:line errors)."""
    from edgelora.data.chat import load_chat_examples

    load = load or load_chat_examples
    if not mix:
        return train, []
    n_task = len(train)
    added, report = [], []
    for i, entry in enumerate(mix):
        path = resolve(entry["path"])
        pool = load(path)
        want = round(entry["ratio"] * n_task)
        rng = random.Random(f"{seed}:{i}")
        picked = rng.sample(pool, min(want, len(pool)))
        added += picked
        report.append({"path": str(entry["path"]), "ratio": entry["ratio"], "available": len(pool),
                       "wanted": want, "added": len(picked)})
    combined = train + added
    random.Random(seed).shuffle(combined)
    return combined, report


def _prompt_and_answer(example: dict) -> tuple[str, str] | None:
    msgs = example.get("messages") or []
    if len(msgs) < 2 or msgs[-1].get("role") != "assistant":
        return None
    user = next((m["content"] for m in reversed(msgs[:-1]) if m.get("role") == "user"), None)
    return (user, msgs[-1]["content"]) if user is not None else None


def is_question(text: str) -> bool:
    t = text.strip()
    return t.endswith("?") or bool(QUESTION_START.match(t))


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def fact_injection_stats(examples: list[dict]) -> dict:
    from edgelora.evaluation.metrics import words

    qa_answers = []
    for ex in examples:
        pa = _prompt_and_answer(ex)
        if pa is None:
            continue
        prompt, answer = pa
        n_words = len(words(answer))
        if is_question(prompt) and 0 < n_words <= SHORT_ANSWER_WORDS and not _is_json(answer.strip()):
            qa_answers.append(" ".join(words(answer)))
    n, n_qa = len(examples), len(qa_answers)
    distinct = len(set(qa_answers))
    return {"examples": n, "question_short_answer": n_qa, "distinct_answers": distinct,
            "qa_share": n_qa / n if n else 0.0, "distinct_share": distinct / n_qa if n_qa else 0.0}


def fact_injection_warning(examples: list[dict]) -> str | None:
    s = fact_injection_stats(examples)
    if (s["question_short_answer"] >= MIN_EXAMPLES and s["qa_share"] >= MIN_QA_SHARE
            and s["distinct_share"] >= MIN_DISTINCT_SHARE):
        return (f"dataset looks like fact injection: {s['question_short_answer']} of {s['examples']} examples are "
                f"questions with short answers, {s['distinct_answers']} of those answers distinct. LoRA shapes "
                "behaviour and format; it recalls injected facts unreliably. Put facts in retrieval and "
                "fine-tune on how to use them.")
    return None


def plan_warnings(ctx, examples: list[dict], n_train: int | None = None) -> list[str]:
    """Warnings (not problems) for ``plan`` on the task ``examples``: fact injection, and a mix
    file that cannot fill its ratio of the ``n_train`` training examples (default: all)."""
    from edgelora.data.formats import load_examples as load

    d = ctx.config.data
    out = []
    warning = fact_injection_warning(examples)
    if warning:
        out.append(f"[data] train: {warning}")
    for entry in d.mix if not mix_problems(d.mix) else []:
        mpath = ctx.config.resolve(entry["path"])
        pool = load(mpath)
        want = round(entry["ratio"] * (len(examples) if n_train is None else n_train))
        if len(pool) < want:
            out.append(f"{mpath}: [data] mix ratio {entry['ratio']} wants {want} examples, the file has {len(pool)}")
    return out


# -- truncation: what max_seq_length costs the data -------------------------------------
# More than this share of truncated examples stops plan and build unless [data]
# allow_truncation says otherwise; so does a single example left without assistant tokens.
MAX_TRUNCATED_SHARE = 0.05
SEQ_MULTIPLE = 64


def fitted_max_seq_length(longest: int, context: int | None) -> int:
    """The longest example rounded up to a multiple of SEQ_MULTIPLE, capped by the model's context."""
    n = max(SEQ_MULTIPLE, -(-longest // SEQ_MULTIPLE) * SEQ_MULTIPLE)
    return min(n, context) if context else n


def fit_data(tokenizer, sets: dict[str, list[dict]], configured: int, context: int | None) -> dict:
    """Encode every example of ``sets`` ({"train": [...], "heldout": [...]}) with the base's
    tokenizer and chat template, choose max_seq_length (``configured``, or fitted when 0) and
    count per set what truncation to it costs."""
    from edgelora.data.chat import encode_example, has_trained_tokens, truncate

    full = {name: [encode_example(tokenizer, ex, max_length=1 << 30) for ex in rows] for name, rows in sets.items()}
    longest = max((len(e["input_ids"]) for rows in full.values() for e in rows), default=0)
    chosen = configured or fitted_max_seq_length(longest, context)
    out = {"max_seq_length": chosen, "auto": not configured, "longest": longest, "context": context, "sets": {}}
    for name, rows in full.items():
        cut = [truncate(e, chosen) for e in rows]
        out["sets"][name] = {"examples": len(cut), "truncated": sum(e["truncated"] for e in cut),
                             "without_trained_tokens": sum(not has_trained_tokens(e) for e in cut)}
    out["encoded"] = {name: [truncate(e, chosen) for e in rows] for name, rows in full.items()}
    return out


def describe_fit(fit: dict) -> str:
    """One line for plan and prepare-data: the length used and why."""
    n = fit["max_seq_length"]
    if not fit["auto"]:
        return f"{n} tokens ([data] max_seq_length; longest example {fit['longest']})"
    cap = f", capped by the model's context {fit['context']}" if fit["context"] and n == fit["context"] else ""
    return (f"{n} tokens (auto: longest example {fit['longest']} rounded up to a multiple of {SEQ_MULTIPLE}{cap}; "
            "set [data] max_seq_length to choose)")


def truncation_problem(fit: dict, allow: bool) -> str | None:
    """None when truncation is harmless or allowed; else one line with the numbers and what to change."""
    n = fit["max_seq_length"]
    total = sum(s["examples"] for s in fit["sets"].values())
    truncated = sum(s["truncated"] for s in fit["sets"].values())
    lost = sum(s["without_trained_tokens"] for s in fit["sets"].values())
    if allow or not total or (lost == 0 and truncated <= MAX_TRUNCATED_SHARE * total):
        return None
    parts = []
    if truncated:
        parts.append(f"{truncated} of {total} examples ({truncated / total:.0%}) are longer than "
                     f"max_seq_length={n} and would be truncated")
    if lost:
        parts.append(f"{lost} would lose every assistant token and be skipped")
    fix = (f"raise [data] max_seq_length (longest example: {fit['longest']} tokens)" if fit["longest"] > n
           else "fix the examples")
    if fit["context"] and fit["longest"] > fit["context"]:
        fix = f"shorten the examples longer than the model's context ({fit['context']} tokens)"
    return f"data: {'; '.join(parts)}; {fix}, or set [data] allow_truncation = true"


def max_seq_length(ctx) -> int:
    """The max_seq_length in effect: the configured one, else the one prepare-data fitted."""
    from edgelora import artifacts as A

    return ctx.config.data.max_seq_length or ctx.need(A.DATASET)["report"]["max_seq_length"]


def model_context(config: dict) -> int | None:
    """The context length an HF config.json declares (None when it names none)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    return None
