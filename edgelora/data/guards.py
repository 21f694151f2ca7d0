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


def plan_warnings(ctx) -> list[str]:
    """Warnings (not problems) for ``plan``: fact injection, and a mix file that cannot fill its ratio."""
    from edgelora.data.formats import load_examples as load

    d = ctx.config.data
    path = ctx.config.resolve(d.train)
    if not Path(path).exists():
        return []
    examples = load(path)
    out = []
    warning = fact_injection_warning(examples)
    if warning:
        out.append(f"{path}: {warning}")
    for entry in d.mix if not mix_problems(d.mix) else []:
        mpath = ctx.config.resolve(entry["path"])
        pool = load(mpath)
        want = round(entry["ratio"] * len(examples))
        if len(pool) < want:
            out.append(f"{mpath}: [data] mix ratio {entry['ratio']} wants {want} examples, the file has {len(pool)}")
    return out
