"""Eval on real GGUFs through llama-cpp-python: determinism, batching, early stop, `edgelora eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgelora.cli import cli
from edgelora.evaluation.generate import Generator, Request, generate
from edgelora.evaluation.runner import evaluate_models
from edgelora.evaluation.sets import BUILTIN_REGRESSION, EvalSet, load_eval_file, parse_item
from edgelora.testing.tiny import local_project, project_toml

DEMO = Path(__file__).resolve().parents[2] / "demo" / "data"
FIELDS = ("product", "severity", "sentiment")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir, tmp_path_factory) -> Path:
    from edgelora.gguf.convert import convert

    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny.F16.gguf"
    convert(tiny_llama_dir, out, outtype="f16")
    return out


def _rows(name: str, n: int) -> list[dict]:
    return [parse_item(json.loads(line)) for line in (DEMO / f"{name}.jsonl").read_text().splitlines()[:n]]


def _sets() -> list[EvalSet]:
    return [EvalSet("heldout", tuple(_rows("heldout", 10)), ("json_fields",), 12, FIELDS),
            EvalSet("regression", tuple(load_eval_file(BUILTIN_REGRESSION)[:12]), ("checks",), 12)]


def test_same_gguf_scored_twice_gives_the_same_numbers(tiny_gguf):
    first = evaluate_models({"m": str(tiny_gguf)}, _sets(), parallel=4)
    second = evaluate_models({"m": str(tiny_gguf)}, _sets(), parallel=4)
    for name in ("heldout", "regression"):
        a, b = first["sets"][name]["models"]["m"], second["sets"][name]["models"]["m"]
        assert a["outputs"] == b["outputs"] and a["metrics"] == b["metrics"]
        assert any(a["outputs"]), "the model must have generated something"
    # A set's answers do not depend on which other sets run in the same pass.
    alone = evaluate_models({"m": str(tiny_gguf)}, _sets()[1:], parallel=4)
    assert alone["sets"]["regression"]["models"]["m"]["outputs"] == first["sets"]["regression"]["models"]["m"]["outputs"]


def test_one_sequence_decodes_exactly_like_llama_cpp_python(tiny_gguf):
    from edgelora.bundle.probes import greedy, load_llama
    from edgelora.runtime.llama import is_end_of_generation, render_prompt, tokenize_prompt

    rows = _rows("heldout", 3)
    llm = load_llama(tiny_gguf)
    try:
        expected = []
        for r in rows:
            ids, _ = greedy(llm, tokenize_prompt(llm, render_prompt(llm, r["messages"])), max_tokens=10)
            expected.append(ids[:-1] if ids and is_end_of_generation(llm, ids[-1]) else ids)  # clients cut the end token
    finally:
        llm.close()
    with Generator(tiny_gguf, parallel=1) as gen:
        ids = [gen.encode(r["messages"])[1] for r in rows]
        got, cut = gen.generate_ids(ids, [10] * len(rows))
    assert not any(cut)
    assert got == expected


def test_early_stop_keeps_every_score(tiny_gguf):
    sets = _sets()[:1]
    full = evaluate_models({"m": str(tiny_gguf)}, sets, parallel=4, early_stop=False)
    fast = evaluate_models({"m": str(tiny_gguf)}, sets, parallel=4, early_stop=True)
    f, q = full["sets"]["heldout"]["models"]["m"], fast["sets"]["heldout"]["models"]["m"]
    assert f["metrics"] == q["metrics"] and f["item_scores"] == q["item_scores"]
    assert fast["models"]["m"]["generated_tokens"] <= full["models"]["m"]["generated_tokens"]
    for long, short in zip(f["outputs"], q["outputs"]):
        assert long.startswith(short)


def test_generate_respects_budgets_and_order(tiny_gguf):
    rows = _rows("heldout", 5)
    reqs = [Request(r["messages"], budget) for r, budget in zip(rows, (1, 3, 5, 2, 4))]
    out = generate(tiny_gguf, reqs, parallel=2)
    assert [len(ids) <= r.max_tokens for ids, r in zip(out["output_ids"], reqs)] == [True] * 5
    assert out["prompts"][0].endswith("<|im_start|>assistant\n") and rows[0]["messages"][-1]["content"] in out["prompts"][0]


def _config(base: Path, **data) -> str:
    return project_toml({
        **local_project(base, **data),
        "eval": {"fields": ["product", "severity", "sentiment"], "max_tokens": 8, "limit": 6,
                 "gates": [{"set": "regression", "metric": "checks", "max_drop_vs_base": 0.5}]},
    })


def test_edgelora_eval_end_to_end_on_a_tiny_gguf(tiny_llama_dir, tiny_gguf, tmp_path):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    lines = (DEMO / "train.jsonl").read_text().splitlines()
    (proj / "data" / "train.jsonl").write_text("\n".join(lines[:8]) + "\n")
    (proj / "data" / "heldout.jsonl").write_text("\n".join(lines[8:14]) + "\n")
    (proj / "edgelora.toml").write_text(_config(tiny_llama_dir))
    result = CliRunner().invoke(cli, ["eval", str(proj), "--model", "base", "--model", str(tiny_gguf),
                                      "--set", "heldout", "--set", "regression"])
    assert result.exit_code == 0, result.output
    assert "heldout" in result.output and "regression" in result.output
    assert "gate regression/checks on tiny.F16.gguf" in result.output
    out = proj / ".edgelora" / "work" / "eval-cli"
    report = json.loads((out / "eval.json").read_text())
    assert report["base_model"] == "base.Q8_0"
    assert set(report["sets"]["regression"]["models"]) == {"base.Q8_0", "tiny.F16.gguf"}
    assert report["sets"]["heldout"]["n"] == 6
    md = (out / "eval.md").read_text()
    assert "| set | metric | base (base.Q8_0) | tiny.F16.gguf (Δ) |" in md
    bad = CliRunner().invoke(cli, ["eval", str(proj), "--model", "gguf:Q2_K"])
    assert bad.exit_code == 1 and "--model gguf:Q2_K: not shipped" in bad.output
    bad_set = CliRunner().invoke(cli, ["eval", str(proj), "--model", str(tiny_gguf), "--set", "nope"])
    assert bad_set.exit_code == 1 and "no eval set named 'nope'" in bad_set.output


def test_plan_warns_about_fact_injection_and_checks_eval_files(tiny_llama_dir, tmp_path):
    proj = tmp_path / "facts"
    (proj / "data").mkdir(parents=True)
    facts = [{"messages": [{"role": "user", "content": f"Who founded the town of Example{i}?"},
                           {"role": "assistant", "content": f"Founder Number{i}"}]} for i in range(30)]
    (proj / "data" / "train.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
    (proj / "edgelora.toml").write_text(_config(tiny_llama_dir, heldout=None))
    result = CliRunner().invoke(cli, ["plan", str(proj)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "fact injection: 30 of 30 examples" in result.output
    (proj / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 3}\n')
    with open(proj / "edgelora.toml", "a") as f:
        f.write('sets = [{name = "ood", path = "bad.jsonl"}]\n')
    bad = CliRunner().invoke(cli, ["plan", str(proj)])
    assert bad.exit_code == 1 and "bad.jsonl:2: 'messages' must be a non-empty list" in bad.output
