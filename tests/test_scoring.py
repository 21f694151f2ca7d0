"""Exact JSON-field scoring, the GGUF scorer, and the committed demo dataset."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from edgelora.scoring import parse_output, score_gguf, score_json_fields

FIELDS = ["product", "severity", "sentiment"]
ROOT = Path(__file__).resolve().parents[1]
EXP = {"product": "printer", "severity": "critical", "sentiment": "negative"}
GOOD = '{"product":"printer","severity":"critical","sentiment":"negative"}'


@pytest.mark.parametrize("output,ok,why", [
    (GOOD, True, ""),
    ("\n  " + GOOD + "  \n", True, ""),
    (GOOD[1:-1], False, "invalid JSON"),
    (GOOD[:-1], False, "invalid JSON"),
    ("", False, "empty"),
    ("   ", False, "empty"),
    (GOOD + "<|im_end|>", False, "leaked special token"),
    ("<|im_start|>assistant\n" + GOOD, False, "leaked special token"),
    ('["printer"]', False, "not a JSON object"),
    ('{"product": NaN}', False, "invalid JSON"),
    ("Sure! " + GOOD, False, "invalid JSON"),
])
def test_parse_output(output, ok, why):
    obj, reason = parse_output(output)
    assert (obj is not None) == ok and reason == why


def test_score_json_fields_counts_fields_and_exact():
    outputs = [
        GOOD,                                                                     # all right
        '{"product":"printer","severity":"high","sentiment":"negative"}',         # severity wrong
        '{"product":"printer","severity":"critical","sentiment":"negative","x":1}',  # extra key: not exact
        GOOD + "<|im_end|>",                                                      # leaked token
        "",                                                                       # empty
        '{"product":"printer"',                                                   # missing brace
    ]
    report = score_json_fields(outputs, [EXP] * len(outputs), FIELDS)
    assert report["n"] == 6
    assert report["exact_match"] == pytest.approx(1 / 6)
    assert report["valid_json"] == pytest.approx(3 / 6)
    assert report["fields"] == pytest.approx({"product": 3 / 6, "severity": 2 / 6, "sentiment": 3 / 6})
    assert report["failures"] == {"leaked special token": 1, "empty": 1, "invalid JSON": 1}
    with pytest.raises(ValueError):
        score_json_fields([GOOD], [], FIELDS)
    assert score_json_fields([], [], FIELDS)["exact_match"] == 0.0


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _read(split):
    return [json.loads(line) for line in (ROOT / "demo" / "data" / f"{split}.jsonl").read_text().splitlines()]


def test_demo_data_is_committed_deterministic_and_well_formed():
    gen = _load_generator()
    built = gen.build(1234)
    assert built == gen.build(1234) and built != gen.build(99)
    splits = {s: _read(s) for s in ("train", "heldout", "probes")}
    assert splits == built, "demo/data is stale: run scripts/make_demo_data.py"
    assert [len(splits[s]) for s in ("train", "heldout", "probes")] == [600, 60, 50]
    messages = [ex["messages"][1]["content"] for rows in splits.values() for ex in rows]
    assert len(messages) == len(set(messages))
    for rows in splits.values():
        for ex in rows:
            roles = [m["role"] for m in ex["messages"]]
            assert roles == ["system", "user", "assistant"]
            answer = ex["messages"][2]["content"]
            obj = json.loads(answer)
            assert list(obj) == FIELDS and answer == json.dumps(obj, separators=(",", ":"))
            assert obj["product"] in gen.PRODUCTS and obj["severity"] in gen.SEVERITIES
            assert obj["sentiment"] in gen.SENTIMENTS and obj["product"] in ex["messages"][1]["content"].lower()
    combos = lambda rows: {tuple(json.loads(ex["messages"][2]["content"]).values()) for ex in rows}  # noqa: E731
    assert not combos(splits["heldout"]) & combos(splits["train"])
    counts = Counter(json.loads(ex["messages"][2]["content"])["severity"] for ex in splits["train"])
    assert min(counts.values()) > 100  # balanced enough that no label is rare


def test_score_gguf_on_real_model(smollm2_gguf):
    rows = _read("heldout")[:3]
    report = score_gguf(smollm2_gguf, rows, FIELDS, max_tokens=16)
    assert report["n"] == 3 and report["prompts_per_s"] > 0
    assert len(report["examples"]) == 3
    assert report["examples"][0]["prompt"].startswith("<|im_start|>system\nExtract the support ticket")
    assert report["examples"][0]["prompt"].endswith("<|im_start|>assistant\n")
    # The report is exactly what the scorer says about the outputs it shows.
    again = score_json_fields([e["output"] for e in report["examples"]],
                              [e["expected"] for e in report["examples"]], FIELDS)
    assert again["exact_match"] == report["exact_match"] and again["fields"] == report["fields"]
    assert all("<|im_end|>" not in e["output"] for e in report["examples"])
