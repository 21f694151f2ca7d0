"""Data formats (chat, Alpaca, prompt/completion, text; JSONL, JSON, Parquet, folders), near duplicates."""

import json

import pytest

from edgelora.data.chat import IGNORE_INDEX, dataset_digest, deduplicate, encode_example
from edgelora.data.formats import load_examples, normalize_record
from edgelora.data.quality import remove_near_duplicates, source_shares
from edgelora.errors import DataError

CHAT = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_formats_normalise_to_chat_or_text():
    alpaca, _ = normalize_record({"instruction": "Sum", "input": "2 3", "output": "5", "system": "Be terse."})
    assert alpaca["messages"] == [{"role": "system", "content": "Be terse."},
                                  {"role": "user", "content": "Sum\n\n2 3"}, {"role": "assistant", "content": "5"}]
    no_input, _ = normalize_record({"instruction": "Say hi", "input": "", "output": "hi"})
    assert no_input["messages"][0] == {"role": "user", "content": "Say hi"}
    pc, _ = normalize_record({"prompt": "Q?", "completion": "A."})
    assert pc["messages"] == [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    conv, _ = normalize_record({"prompt": [{"role": "user", "content": "Q?"}],
                                "completion": [{"role": "assistant", "content": "A."}]})
    assert conv == pc
    assert normalize_record({"text": "Plain words."}) == ({"text": "Plain words."}, None)
    assert normalize_record(CHAT)[0] == CHAT


@pytest.mark.parametrize("record, reason", [
    ({"instruction": "x"}, "Alpaca record has no 'output'"),
    ({"instruction": "x", "output": "  "}, "'output' is empty"),
    ({"prompt": "x"}, "prompt/completion record has no 'completion'"),
    ({"prompt": 3, "completion": "y"}, "'prompt' is int, expected a string"),
    ({"text": ""}, "'text' is empty"),
    ({"question": "x"}, "no known format"),
    ({"messages": [{"role": "user", "content": "x"}]}, "conversation ends with 'user'"),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "bot", "content": "a"}]},
     "unknown role 'bot'"),
])
def test_invalid_records_say_why(record, reason):
    example, problem = normalize_record(record)
    assert example is None and reason in problem


def test_json_array_errors_carry_the_line_of_the_record(tmp_path):
    f = tmp_path / "data.json"
    f.write_text('[\n  {"text": "one"},\n  {"instruction": "two"},\n  {"prompt": "p", "completion": "c"}\n]\n')
    with pytest.raises(DataError, match=r"data\.json:3: Alpaca record has no 'output'"):
        load_examples(f)
    f.write_text('[\n  {"text": "one"},\n  {"text": "two" \n  {"text": "three"}]')
    with pytest.raises(DataError, match=r"data\.json:4: invalid JSON \(Expecting ',' delimiter"):
        load_examples(f)
    f.write_text('[\n  {"text": "one"}\n  {"text": "two"}]')
    with pytest.raises(DataError, match=r"data\.json:3: invalid JSON \(expected ',' or ']' after a record\)"):
        load_examples(f)
    f.write_text('{"text": "not an array"}')
    with pytest.raises(DataError, match=r"data\.json:1: expected a JSON array"):
        load_examples(f)


def test_folder_of_mixed_files_and_source_shares(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [CHAT, {"instruction": "I", "output": "O"}])
    (d / "b.json").write_text(json.dumps([{"prompt": "P", "completion": "C"}]))
    pq.write_table(pa.table({"text": ["row one", "row two", "row three"]}), d / "c.parquet")
    (d / "notes.txt").write_text("ignored")
    examples = load_examples(d)
    assert [e["source"] for e in examples] == ["a.jsonl", "a.jsonl", "b.json"] + ["c.parquet"] * 3
    assert examples[3] == {"text": "row one", "source": "c.parquet"}
    shares = source_shares(examples)
    assert shares == {"a.jsonl": {"examples": 2, "share": 0.3333}, "b.json": {"examples": 1, "share": 0.1667},
                      "c.parquet": {"examples": 3, "share": 0.5}}
    digest = dataset_digest(d)
    (d / "c.parquet").write_bytes((d / "c.parquet").read_bytes() + b"\0")
    assert dataset_digest(d) != digest  # every supported file counts in the dataset hash
    pq.write_table(pa.table({"output": ["no instruction"]}), d / "d.parquet")
    (d / "c.parquet").unlink()
    with pytest.raises(DataError, match=r"d\.parquet:row 1: Alpaca record has no 'instruction'"):
        load_examples(d)


def test_text_examples_train_on_every_token(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    enc = encode_example(tok, {"text": "The cat sat on the mat."}, max_length=64)
    assert enc["labels"] == enc["input_ids"] and enc["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(enc["input_ids"], skip_special_tokens=True).strip() == "The cat sat on the mat."
    chat = encode_example(tok, CHAT, max_length=64)
    assert chat["labels"][0] == IGNORE_INDEX and any(t != IGNORE_INDEX for t in chat["labels"])
    cut = encode_example(tok, {"text": "word " * 100}, max_length=16)
    assert cut["truncated"] and len(cut["input_ids"]) == 16


def test_near_duplicates_removed_distinct_kept():
    base = ("The printer on the third floor jams every morning when more than twenty pages are "
            "sent at once, and the paper tray makes a grinding noise before it stops completely.")
    near = base.replace("twenty", "thirty")  # one word changed
    other = "My laptop battery drains from full to empty within an hour even when it is idle."
    rows = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]}
            for t in (base, other, near)] + [{"text": other}]
    # One changed word of ~30 alters 3 of ~30 word 3-grams: Jaccard ~0.82.
    kept, removed = remove_near_duplicates(rows, threshold=0.7)
    # The plain-text copy of a conversation's words is a near duplicate too.
    assert removed == 2 and kept == rows[:2]
    assert remove_near_duplicates(rows[:3], threshold=0.95)[1] == 0  # below the bar: kept
    # Exact duplicates are normalised first: whitespace differs, text is the same.
    assert deduplicate([{"text": "a  b"}, {"text": "a b"}, CHAT])[1] == 1


def test_prepare_data_stage_reads_a_mixed_folder_and_reports(tiny_llama_dir, tmp_path):
    import shutil

    from edgelora import api

    proj = tmp_path / "proj"
    data = proj / "data"
    data.mkdir(parents=True)
    shutil.copytree(tiny_llama_dir, proj / "base")
    long = "the office printer on floor three jams again and nobody in the team can print the report for"
    texts = [f"{long} {w}" for w in ("Monday", "Tuesday", "Friday")] + ["My mouse is gone.", "Wifi drops hourly.",
                                                                         "Screen flickers at night."]
    chats = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "noted"}]}
             for t in texts]
    write_jsonl(data / "chat.jsonl", chats + [chats[0]])  # one exact duplicate
    (data / "alpaca.json").write_text(json.dumps([{"instruction": "Name a colour.", "output": "Blue."},
                                                  {"instruction": "Name a fruit.", "output": "Pear."}]))
    (proj / "edgelora.toml").write_text(
        '[base]\nsource = "local"\npath = "base"\n[data]\ntrain = "data"\neval_fraction = 0.25\n'
        'max_seq_length = 24\nallow_truncation = true\nnear_duplicate_threshold = 0.7\n')
    ctx = api.run_stages(proj, ["prepare-data"], log=lambda m: None)
    ds = ctx.artifacts["dataset"]
    report = json.loads(open(ds["report_path"]).read())
    assert report["exact_duplicates_removed"] == 1
    assert report["near_duplicates_removed"] == 2  # the printer tickets differ in their last word only
    assert report["sources_loaded"]["chat.jsonl"]["examples"] == 7
    assert set(report["sources"]) <= {"chat.jsonl", "alpaca.json"} and report["max_seq_length"] == 24
    assert report["truncated"] >= 1 and report["tokens"]["p90"] >= report["tokens"]["p50"]
    assert len(ds["sha256"]) == 64
    heldout = [json.loads(x) for x in open(ds["heldout"])]
    again = api.run_stages(proj, ["prepare-data"], force=["prepare-data"], log=lambda m: None)
    assert [json.loads(x) for x in open(again.artifacts["dataset"]["heldout"])] == heldout  # split fixed by seed
