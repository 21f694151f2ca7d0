import json

import pytest

from edgelora.data.chat import (
    IGNORE_INDEX,
    data_report,
    dataset_digest,
    deduplicate,
    encode_chat,
    load_chat_examples,
    split_examples,
)
from edgelora.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)


def chat(*turns):
    roles = ["user", "assistant"]
    return {"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]}


def write_jsonl(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def labelled_spans(enc):
    spans, current = [], []
    for tok, lab in zip(enc["input_ids"], enc["labels"]):
        if lab == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            assert lab == tok
            current.append(lab)
    if current:
        spans.append(current)
    return spans


# --------------------------------------------------------------------------- encoding


def test_labels_cover_exactly_assistant_content_and_end_token(tokenizer):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome, since 1871.\nIt is also the largest city."},
    ]
    enc = encode_chat(tokenizer, messages, max_length=512)
    assert enc["truncated"] is False
    assert len(enc["input_ids"]) == len(enc["labels"])
    decoded = [tokenizer.decode(span) for span in labelled_spans(enc)]
    assert decoded == [
        "Paris.<|im_end|>",
        "Rome, since 1871.\nIt is also the largest city.<|im_end|>",
    ]
    # The whole conversation is what the template renders, untouched.
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(enc["input_ids"]) == rendered


def test_default_system_prompt_is_never_labelled(tokenizer):
    enc = encode_chat(tokenizer, chat("hi", "hello")["messages"], max_length=512)
    assert [tokenizer.decode(s) for s in labelled_spans(enc)] == ["hello<|im_end|>"]
    assert "SmolLM" in tokenizer.decode(enc["input_ids"])  # the template's default system turn


def test_truncation_is_marked_and_cut(tokenizer):
    messages = chat("word " * 50, "answer " * 50)["messages"]
    full = encode_chat(tokenizer, messages, max_length=4096)
    cut = encode_chat(tokenizer, messages, max_length=40)
    assert not full["truncated"] and cut["truncated"]
    assert cut["input_ids"] == full["input_ids"][:40]
    assert cut["labels"] == full["labels"][:40]


def test_template_that_is_not_prefix_stable_is_refused(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    # Renders the last message differently from earlier ones (as some reasoning
    # templates do), so a prefix's rendering is not a prefix of the whole.
    tok.chat_template = (
        "{% for m in messages %}{% if loop.last %}<<{{ m.content }}>>"
        "{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(DataError, match="not prefix-stable at message 1"):
        encode_chat(tok, chat("q", "a")["messages"], max_length=128)


# --------------------------------------------------------------------------- loading


def test_loads_file_and_skips_blank_lines(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [chat("a", "b"), "", {"messages": chat("c", "d")["messages"], "id": 7}])
    examples = load_chat_examples(f)
    assert examples == [chat("a", "b"), chat("c", "d")]  # extra keys dropped


def test_loads_folder_in_name_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [chat("2", "x")])
    write_jsonl(tmp_path / "a.jsonl", [chat("1", "x")])
    (tmp_path / "notes.txt").write_text("not data")
    examples = load_chat_examples(tmp_path)
    assert [e["messages"][0]["content"] for e in examples] == ["1", "2"]


def test_bad_json_names_file_and_exact_line(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [chat("a", "b"), "", '{"messages": [', chat("c", "d")])
    with pytest.raises(DataError) as err:
        load_chat_examples(f)
    assert str(err.value).startswith(f"{f}:3: invalid JSON")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"msgs": []}, "missing 'messages'"),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "user"}]}, "message 0 has no 'content'"),
        ({"messages": [{"content": "x"}]}, "message 0 has no 'role'"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "message 0 has unknown role 'bot'"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  \n"}]},
         "message 1 (assistant) has empty content"),
        ({"messages": [{"role": "user", "content": ["q"]}]}, "message 0 (user) content is list"),
        ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
         "conversation ends with 'user', expected 'assistant'"),
        ([1, 2], "line is a JSON list"),
    ],
)
def test_invalid_example_reasons(tmp_path, record, reason):
    f = write_jsonl(tmp_path / "d.jsonl", [chat("a", "b"), record])
    with pytest.raises(DataError) as err:
        load_chat_examples(f)
    assert str(err.value).startswith(f"{f}:2: {reason}")


def test_all_problems_collected_into_one_line(tmp_path):
    lines = [chat("ok", "ok")] + ["{bad"] * 7 + [{"msgs": 1}]
    f = write_jsonl(tmp_path / "d.jsonl", lines)
    with pytest.raises(DataError) as err:
        load_chat_examples(f)
    msg = str(err.value)
    assert msg.startswith("8 problems in dataset: ")
    assert f"{f}:2: invalid JSON" in msg and f"{f}:6: invalid JSON" in msg
    assert f"{f}:7:" not in msg  # only the first five are spelled out
    assert msg.endswith("; and 3 more")
    assert "\n" not in msg


def test_missing_path_and_empty_inputs(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_chat_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="holds no .jsonl files"):
        load_chat_examples(tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: holds no examples"):
        load_chat_examples(tmp_path)


def test_non_utf8_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(json.dumps(chat("a", "b")).encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: not UTF-8"):
        load_chat_examples(f)


# --------------------------------------------------------------------------- split, dedup, digest


def test_split_is_deterministic_disjoint_and_complete():
    examples = [chat(f"q{i}", f"a{i}") for i in range(50)]
    train, held = split_examples(examples, eval_fraction=0.2, seed=3)
    assert (train, held) == split_examples(examples, eval_fraction=0.2, seed=3)
    assert len(held) == 10 and len(train) == 40
    assert sorted(map(str, train + held)) == sorted(map(str, examples))
    assert split_examples(examples, eval_fraction=0.2, seed=4)[1] != held
    assert split_examples(examples, eval_fraction=0.0, seed=3) == (examples, [])
    assert len(split_examples(examples[:2], eval_fraction=0.01, seed=0)[1]) == 1
    with pytest.raises(DataError, match="eval_fraction"):
        split_examples(examples, eval_fraction=1.0, seed=0)


def test_deduplicate_normalizes_whitespace_not_case():
    a = chat("Hello  world", "Hi!")
    a_spaced = chat(" Hello world\n", "Hi! ")
    a_upper = chat("HELLO WORLD", "Hi!")
    b = chat("Hello world", "Bye")
    assert deduplicate([a, a_spaced, b, a_upper, a]) == ([a, b, a_upper], 2)
    assert deduplicate([]) == ([], 0)


def test_digest_depends_on_names_and_bytes_not_location(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        write_jsonl(d / "a.jsonl", [chat("q", "a")])
        write_jsonl(d / "b.jsonl", [chat("r", "b")])
    assert dataset_digest(one) == dataset_digest(two)
    assert dataset_digest([one / "b.jsonl", one / "a.jsonl"]) == dataset_digest(one)
    before = dataset_digest(one)
    (two / "b.jsonl").rename(two / "c.jsonl")
    assert dataset_digest(two) != before
    (one / "a.jsonl").write_bytes((one / "a.jsonl").read_bytes().replace(b'"q"', b'"Q"'))
    assert dataset_digest(one) != before


def test_data_report(tokenizer):
    examples = [chat("q", "a"), chat("q ", "a"), chat("a longer question here", "and a longer answer")]
    unique, removed = deduplicate(examples)
    assert removed == 1
    encoded = [encode_chat(tokenizer, e["messages"], max_length=32) for e in unique]
    report = data_report(examples, encoded)
    assert report["examples"] == 3 and report["duplicates_removed"] == 1
    assert report["messages_by_role"] == {"system": 0, "user": 3, "assistant": 3}
    lengths = sorted(len(e["input_ids"]) for e in encoded)
    assert report["tokens"]["max"] == lengths[-1] and report["tokens"]["p50"] == lengths[0]
    assert report["tokens"]["total"] == sum(lengths)
    assert report["truncated"] == sum(e["truncated"] for e in encoded)
    assert report["tokens"]["trained"] == sum(1 for e in encoded for t in e["labels"] if t != IGNORE_INDEX)
    json.dumps(report)
