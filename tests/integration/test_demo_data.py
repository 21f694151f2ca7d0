"""The committed demo dataset is what scripts/make_demo_data.py writes, and well formed."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

FIELDS = ["product", "severity", "sentiment"]
ROOT = Path(__file__).resolve().parents[2]


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
