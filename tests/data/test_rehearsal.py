"""[data] rehearsal: shipped prompts kept apart from the regression set, the base's own answers
through llama-cpp-python (real SmolLM2 GGUF), block cache, and the prepare-data stage."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest

from edgelora.data.rehearsal import (
    PARALLEL, PROMPTS_PATH, base_answers, load_prompts, rehearsal_examples, rehearsal_problems,
)
from edgelora.errors import ConfigError
from edgelora.evaluation.sets import BUILTIN_REGRESSION, load_eval_file
from edgelora.util.files import sha256_bytes

CATEGORIES = {"instruction", "reasoning", "refusal", "over_refusal", "format", "multilingual", "system"}


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _grams(text: str, n: int = 5) -> set[str]:
    t = _norm(text)
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))}


def _user_text(messages) -> str:
    return " ".join(m["content"] for m in messages if m["role"] == "user")


def test_shipped_prompts_cover_the_categories_and_ratio_half_of_the_demo():
    prompts = load_prompts()
    assert len(prompts) >= 300  # ratio 0.5 of the demo's 600 conversations
    assert {p["category"] for p in prompts} == CATEGORIES
    assert len({p["id"] for p in prompts}) == len(prompts)
    assert len({_norm(_user_text(p["messages"])) for p in prompts}) == len(prompts)


def test_rehearsal_prompts_and_the_regression_set_share_no_prompt_or_near_duplicate():
    rehearsal = [_user_text(p["messages"]) for p in load_prompts()]
    regression = [_user_text(i["messages"]) for i in load_eval_file(BUILTIN_REGRESSION)]
    reg_norm = [_norm(t) for t in regression]
    reg_grams = [_grams(t) for t in regression]
    worst = (0.0, "", "")
    for text in rehearsal:
        n, g = _norm(text), _grams(text)
        for other, og, raw in zip(reg_norm, reg_grams, regression):
            assert n != other, f"same prompt in both sets: {text!r}"
            assert not (n in other or other in n), f"one prompt contains the other: {text!r} / {raw!r}"
            j = len(g & og) / len(g | og)
            worst = max(worst, (j, text, raw))
    assert worst[0] < 0.5, f"near duplicate (character 5-gram Jaccard {worst[0]:.2f}): {worst[1]!r} / {worst[2]!r}"
    # The check itself sees a near duplicate: one changed word of a regression prompt.
    assert len(_grams("What is the capital of Italy? Answer in one word.")
               & _grams("What is the capital of Italy? Reply in one word.")) / len(
        _grams("What is the capital of Italy? Answer in one word.")
        | _grams("What is the capital of Italy? Reply in one word.")) >= 0.5


def test_regression_set_is_large_and_auto_scored():
    items = load_eval_file(BUILTIN_REGRESSION)
    assert len(items) >= 150
    cats = {}
    for it in items:
        cats[it["category"]] = cats.get(it["category"], 0) + 1
        assert any(k in it for k in ("contains", "contains_any", "not_contains", "regex", "words", "max_words",
                                     "json_keys", "refuse")), it["id"]
    assert set(cats) == {"instruction", "arithmetic", "refusal", "helpful", "on_topic"}
    assert min(cats.values()) >= 25
    assert len({it["id"] for it in items}) == len(items)


@pytest.mark.parametrize("spec, needle", [
    ({"ratio": 1.5}, "ratio must be a number in [0, 1]"),
    ({"ratio": True}, "ratio must be a number"),
    ({"ratio": 0.1, "tokens": 8}, "unknown key(s) ['tokens']"),
    ({"max_tokens": 4}, "max_tokens must be an integer in [8, 1024]"),
    (0.25, "must be a table like {ratio = 0.25}"),
])
def test_bad_settings_are_one_line_errors_naming_the_field(spec, needle):
    problems = rehearsal_problems(spec)
    assert len(problems) == 1 and problems[0].startswith("edgelora.toml: [data] rehearsal") and needle in problems[0]
    with pytest.raises(ConfigError, match=re.escape(needle)):
        rehearsal_examples([{"messages": []}], spec, base_gguf="unused", cache_dir=None, seed=0)


def _prompts_file(tmp_path, n: int):
    path = tmp_path / "prompts.jsonl"
    rows = [p for p in load_prompts() if p["category"] in ("format", "multilingual")][:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, rows


def test_the_base_answers_itself_greedily_and_the_answers_are_cached_per_block(smollm2_gguf, tmp_path):
    path, rows = _prompts_file(tmp_path, 2 * PARALLEL)
    cache = tmp_path / "cache"
    answers, info = base_answers(smollm2_gguf, rows, max_tokens=32, cache_dir=cache)
    assert info["cached_blocks"] == 0 and len(list(cache.glob("*.json"))) == 2
    assert [a["id"] for a in answers] == [r["id"] for r in rows]
    usable = [a for a in answers if a["answer"]]
    assert len(usable) >= PARALLEL  # SmolLM2 answers short format prompts within 32 tokens
    assert all(a["why"] in ("", "cut") for a in usable) and all("<|" not in a["answer"] for a in usable)
    # The first block alone: read from the cache, same answers (a block depends only on itself).
    again, info = base_answers(smollm2_gguf, rows[:PARALLEL], max_tokens=32, cache_dir=cache)
    assert info["cached_blocks"] == 1 and again == answers[:PARALLEL]
    # Other decoding settings are another cache entry, answered anew.
    _, info = base_answers(smollm2_gguf, rows[:PARALLEL], max_tokens=12, cache_dir=cache)
    assert info["cached_blocks"] == 0 and len(list(cache.glob("*.json"))) == 3


def test_round_ratio_times_train_examples_are_mixed_with_count_and_sha256(smollm2_gguf, tmp_path):
    path, _ = _prompts_file(tmp_path, 3 * PARALLEL)
    train = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
             for i in range(20)]
    kw = dict(base_gguf=smollm2_gguf, cache_dir=tmp_path / "cache", seed=3, prompts_path=path)
    added, report = rehearsal_examples(train, {"ratio": 0.25, "max_tokens": 32}, **kw)
    assert report["wanted"] == 5 and report["added"] == len(added) == 5
    assert report["prompts_answered"] == PARALLEL  # 5 plus a spare, rounded up to one block
    text = "".join(json.dumps(ex, ensure_ascii=False, sort_keys=True) + "\n" for ex in added)
    assert report["sha256"] == sha256_bytes(text.encode())
    for ex in added:
        assert ex["source"] == "rehearsal" and ex["messages"][-1]["role"] == "assistant"
        assert ex["messages"][-1]["content"].strip() and ex["messages"][-2]["role"] == "user"
    # A smaller ratio takes a prefix of the same seeded order, answered identically (from the cache).
    logged = []
    fewer, small = rehearsal_examples(train, {"ratio": 0.1, "max_tokens": 32}, **kw, log=logged.append)
    assert small["wanted"] == 2 and fewer == added[:2]
    assert any("1 block(s) of 8 answers read from the cache" in m for m in logged)
    assert rehearsal_examples(train, {"ratio": 0.25, "max_tokens": 32}, **kw)[1] == report  # cache hit: same report
    # Off, and not a chat fine-tune.
    assert rehearsal_examples(train, {"ratio": 0}, **kw) == ([], None)
    none, why = rehearsal_examples([{"text": "plain"}] * 20, {"ratio": 0.25}, **kw)
    assert none == [] and why["why"] == "not a chat fine-tune"


def test_prepare_data_mixes_rehearsal_and_reports_it(tiny_llama_dir, tmp_path):
    import shutil

    from edgelora import api
    from edgelora.testing.tiny import conversations

    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    shutil.copytree(tiny_llama_dir, proj / "base")
    (proj / "data" / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conversations(40)))
    toml = ('[base]\nsource = "local"\npath = "base"\n[data]\ntrain = "data/train.jsonl"\neval_fraction = 0.25\n'
            'max_seq_length = 64\nrehearsal = {ratio = 0.2, max_tokens = 16}\n')
    (proj / "edgelora.toml").write_text(toml)
    ctx = api.run_stages(proj, ["prepare-data"], log=lambda m: None)
    assert "base_gguf" in ctx.artifacts  # convert-base ran first: the base answers from its own GGUF
    ds = ctx.artifacts["dataset"]
    report = ds["report"]["rehearsal"]
    assert report["wanted"] == 6 and report["prompts_available"] == len(load_prompts(PROMPTS_PATH))
    train = [json.loads(x) for x in open(ds["train"])]
    mixed = [r for r in train if r.get("source") == "rehearsal"]
    assert len(mixed) == report["added"] and len(train) == 30 + report["added"]
    assert json.loads(open(ds["report_path"]).read())["rehearsal"] == report
    # ratio 0: nothing mixed, no rehearsal section.
    (proj / "edgelora.toml").write_text(toml.replace("ratio = 0.2", "ratio = 0"))
    off = api.run_stages(proj, ["prepare-data"], log=lambda m: None).artifacts["dataset"]
    assert "rehearsal" not in off["report"] and len(open(off["train"]).readlines()) == 30


def test_forgetting_guard_is_two_sentences_saying_what_guards_and_what_measures(tmp_path):
    from edgelora.config import from_dict
    from edgelora.data.rehearsal import forgetting_guard_text

    on = forgetting_guard_text(from_dict({"eval": {"gates": [
        {"set": "regression", "metric": "checks", "max_drop_vs_base": 0.03}]}}), added=149)
    assert on.startswith("Forgetting guard: 149 conversations") and "drops more than 3 points" in on
    assert on.count(". ") == 1 and on.endswith(".")
    off = forgetting_guard_text(from_dict({"data": {"rehearsal": {"ratio": 0}}}))
    assert "off ([data] rehearsal ratio = 0)" in off and "without a gate" in off
    assert forgetting_guard_text(from_dict({"data": {"rehearsal": {"ratio": 2}}})) == ""
