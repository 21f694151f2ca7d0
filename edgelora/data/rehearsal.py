"""Rehearsal: the base model's own answers to general prompts, mixed into a chat fine-tune.

A narrow dataset pulls every adapted weight toward one behaviour, and the model forgets the
rest (instructions, arithmetic, refusals). ``[data] rehearsal`` keeps it practising: edgelora
ships a set of general prompts (``data/rehearsal_prompts.jsonl``: instructions, short
reasoning, refusals and over-refusals, format following, several languages), the base model
answers them itself, greedily and offline, through llama-cpp-python on its own GGUF, and
round(ratio x training conversations) of those conversations join the training data. No
network and no extra data from the user; training on the base's own answers asks the adapter
to leave those answers unchanged.

Prompts are taken as a prefix of one seeded order (ratio 0.1 takes part of what 0.25 takes)
and answered in fixed blocks of ``PARALLEL``, each block cached by content: the key is the base
GGUF's sha256, the block's prompts and the decoding settings, so a second build, a changed
dataset or another ratio does not generate them again. An answer that runs out of tokens is
cut after its last finished sentence; one with none, an empty one or one that leaks a special
token is not used.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from edgelora.errors import ConfigError, DataError
from edgelora.util.files import atomic_write_text, jsonl_records, sha256_bytes, sha256_json
from edgelora.util.hashing import sha256_file

PROMPTS_PATH = Path(__file__).with_name("rehearsal_prompts.jsonl")
DEFAULTS = {"ratio": 0.25, "max_tokens": 64}
SOURCE = "rehearsal"
_SENTENCE_END = re.compile(r"[.!?。！？](?=\s|$)|\n")
SPARE = 1.1
PARALLEL = 8  # fixed: the batching of prompts is part of what makes the answers reproducible


def settings(spec) -> dict:
    """The [data] rehearsal table with defaults filled in."""
    return DEFAULTS | (spec if isinstance(spec, dict) else {})


def rehearsal_problems(spec) -> list[str]:
    w = "edgelora.toml: [data] rehearsal"
    if not isinstance(spec, dict):
        return [f"{w} must be a table like {{ratio = 0.25}} (ratio = 0 turns it off), got {spec!r}"]
    out = []
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        out.append(f"{w} unknown key(s) {unknown} (known: {', '.join(DEFAULTS)})")
    s = settings(spec)
    r = s["ratio"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1:
        out.append(f"{w} ratio must be a number in [0, 1] (0: off), got {r!r}")
    m = s["max_tokens"]
    if isinstance(m, bool) or not isinstance(m, int) or not 8 <= m <= 1024:
        out.append(f"{w} max_tokens must be an integer in [8, 1024], got {m!r}")
    return out


def load_prompts(path: Path = PROMPTS_PATH) -> list[dict]:
    """The shipped prompts: {"id", "category", "messages"} ending with a user message."""
    problems, out = [], []
    for lineno, rec in jsonl_records(path, problems):
        msgs = rec.get("messages") if isinstance(rec, dict) else None
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) and m["content"] for m in msgs) \
                or msgs[-1]["role"] != "user" or not isinstance(rec.get("id"), str):
            problems.append(f"{path}:{lineno}: expected {{id, category, messages ending with a user message}}")
            continue
        out.append({"id": rec["id"], "category": rec.get("category", ""), "messages": msgs})
    if problems:
        raise DataError(problems[0])
    return out


def wanted_count(ratio: float, n_train: int) -> int:
    return round(ratio * n_train)


def _cut_to_sentence(text: str) -> str:
    """An answer that ran out of tokens, cut after its last finished sentence ('' when none)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[:ends[-1]].strip() if ends else ""


def base_answers(base_gguf: str | Path, prompts: list[dict], *, max_tokens: int, cache_dir: Path,
                 log=lambda m: None) -> tuple[list[dict], dict]:
    """The base's greedy answer to each prompt: {"id", "answer" (None: unusable), "why"}.

    Prompts are answered in fixed blocks of ``PARALLEL`` (one llama.cpp batch each), so a
    block's answers depend only on its own prompts; each block is cached under the base GGUF's
    sha256, the block's prompts and the decoding settings. An answer that runs out of tokens is
    kept up to its last finished sentence."""
    import llama_cpp

    decoding = {"greedy": True, "max_tokens": max_tokens, "parallel": PARALLEL, "runtime": "llama-cpp-python",
                "llama_cpp_version": getattr(llama_cpp, "__version__", "?")}
    base_sha = sha256_file(base_gguf)
    blocks = [prompts[i:i + PARALLEL] for i in range(0, len(prompts), PARALLEL)]
    keys = [sha256_json({"base_gguf_sha256": base_sha, "prompts": b, "decoding": decoding}) for b in blocks]
    cache_dir = Path(cache_dir)
    answers: dict[int, list[dict]] = {}
    for i, key in enumerate(keys):
        path = cache_dir / f"{key}.json"
        if path.is_file():
            answers[i] = json.loads(path.read_text(encoding="utf-8"))
    todo = [i for i in range(len(blocks)) if i not in answers]
    if todo:
        from edgelora.evaluation.generate import Request, generate
        from edgelora.evaluation.metrics import leaked_special

        n = sum(len(blocks[i]) for i in todo)
        log(f"  rehearsal: the base answers {n} general prompts (greedy, up to {max_tokens} tokens)")
        requests = [Request(p["messages"], max_tokens, group=i) for i in todo for p in blocks[i]]
        result = generate(base_gguf, requests, parallel=PARALLEL)
        it = iter(zip(result["outputs"], result["output_ids"]))
        cache_dir.mkdir(parents=True, exist_ok=True)
        for i in todo:
            rows = []
            for p in blocks[i]:
                text, ids = next(it)
                answer, why = text.strip(), ""
                if leaked_special(text) or not answer:
                    answer, why = None, "empty or leaked"
                elif len(ids) >= max_tokens:
                    answer, why = _cut_to_sentence(answer) or None, "cut"
                rows.append({"id": p["id"], "answer": answer, "why": why if answer or why != "cut" else "unfinished"})
            atomic_write_text(cache_dir / f"{keys[i]}.json", json.dumps(rows, ensure_ascii=False))
            answers[i] = rows
        log(f"  rehearsal: answered in {result['seconds']:.1f} s ({result['generated_tokens']} tokens)")
    rows = [r for i in range(len(blocks)) for r in answers[i]]
    return rows, {"base_gguf_sha256": base_sha, "decoding": decoding, "cached_blocks": len(blocks) - len(todo)}


def rehearsal_examples(train: list[dict], spec, *, base_gguf, cache_dir: Path, seed: int,
                       log=lambda m: None, prompts_path: Path = PROMPTS_PATH) -> tuple[list[dict], dict | None]:
    """(conversations to add, report) for ``train``; ([], None) when rehearsal is off or does not apply."""
    problems = rehearsal_problems(spec)
    if problems:
        raise ConfigError(problems[0])
    s = settings(spec)
    n_chat = sum(1 for ex in train if "messages" in ex)
    want = wanted_count(s["ratio"], n_chat)
    if not want:
        return [], ({"ratio": s["ratio"], "added": 0, "why": "not a chat fine-tune"} if s["ratio"] and not n_chat
                    else None)
    pool = load_prompts(prompts_path)
    # A seeded order of the whole pool, fixed by the seed alone: a smaller ratio takes a prefix
    # of a larger one's prompts, whose (block-cached) answers are the same.
    order = list(range(len(pool)))
    random.Random(f"rehearsal:{seed}").shuffle(order)
    take = min(len(pool), -(-round(want * SPARE) // PARALLEL) * PARALLEL)  # spare for unusable answers
    prompts = [pool[i] for i in order[:take]]
    rows, cache = base_answers(base_gguf, prompts, max_tokens=s["max_tokens"], cache_dir=cache_dir, log=log)
    if cache["cached_blocks"]:  # logged, not reported: the data report must not depend on the cache
        log(f"  rehearsal: {cache['cached_blocks']} block(s) of {PARALLEL} answers read from the cache")
    picked = [(p, r["answer"]) for p, r in zip(prompts, rows) if r["answer"] is not None][:want]
    examples = [{"messages": [dict(m) for m in p["messages"]] + [{"role": "assistant", "content": a}],
                 "source": SOURCE} for p, a in picked]
    text = "".join(json.dumps(ex, ensure_ascii=False, sort_keys=True) + "\n" for ex in examples)
    categories: dict[str, int] = {}
    for p, _ in picked:
        categories[p["category"]] = categories.get(p["category"], 0) + 1
    report = {"ratio": s["ratio"], "max_tokens": s["max_tokens"], "wanted": want, "added": len(examples),
              "prompts_available": len(pool), "prompts_answered": len(prompts),
              "answers_cut_at_sentence": sum(1 for r in rows if r["why"] == "cut"),
              "answers_unusable": sum(1 for r in rows if r["answer"] is None),
              "sha256": sha256_bytes(text.encode("utf-8")), "categories": dict(sorted(categories.items())),
              "prompts_sha256": sha256_json(pool), "base_gguf_sha256": cache["base_gguf_sha256"],
              "decoding": cache["decoding"]}
    if len(examples) < want:
        log(f"  rehearsal: {want} wanted, {len(examples)} usable base answers among the {len(pool)} prompts")
    return examples, report


def forgetting_guard_text(cfg, added: int | None = None) -> str:
    """Two sentences for ``plan`` and the bundle README: what guards the base's other skills and
    what measures them ('' while the [data] rehearsal table has problems)."""
    if rehearsal_problems(cfg.data.rehearsal):
        return ""
    s = settings(cfg.data.rehearsal)
    if s["ratio"]:
        how_many = f"{added} conversations" if added is not None else f"round({s['ratio']:g} x training examples) conversations"
        first = (f"Forgetting guard: {how_many} in which the base model answers edgelora's general prompts itself "
                 "(instructions, reasoning, refusals, format following, other languages; greedy, offline) are mixed "
                 "into training, so the adapter learns the new behaviour while keeping the base's own answers elsewhere.")
    else:
        first = ("Forgetting guard: off ([data] rehearsal ratio = 0), so nothing in training keeps the base's other "
                 "skills (instructions, reasoning, refusals) in practice.")
    gate = next((g for g in cfg.eval.gates if isinstance(g, dict) and g.get("set") == "regression"
                 and "max_drop_vs_base" in g), None)
    if not cfg.eval.regression:
        second = "No regression set is scored ([eval] regression = ''), so a loss would go unmeasured."
    else:
        second = ("The regression set scores base vs fine-tune per category (reports/eval.md)"
                  + (f" and the build stops if the fine-tune drops more than {gate['max_drop_vs_base'] * 100:g} points."
                     if gate else ", without a gate ([eval] gates: max_drop_vs_base)."))
    return f"{first} {second}"
