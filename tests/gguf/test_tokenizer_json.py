"""tokenizer.json read with `tokenizers` alone exports exactly what transformers' tokenizer does."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from edgelora.gguf import tokenizer as tok_mod
from edgelora.gguf.tokenizer_json import plain_tokenizer_json

NASTY = ["Hello world", "  leading spaces\tand\ttabs\n\n", "3.14159 12345678 0x1F", "emoji 🚀👩‍👩‍👧 ok",
         "中文字符 日本語 한국어", "<|im_start|>user\nhi<|im_end|>", "a<|endoftext|>b", "'s 're 'll I'M"]


def _copy_tokenizer(src, dest, **config_changes):
    dest.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dest / name)
    tcfg = json.loads((dest / "tokenizer_config.json").read_text())
    for key, value in config_changes.items():
        if value is None:
            tcfg.pop(key, None)
        else:
            tcfg[key] = value
    (dest / "tokenizer_config.json").write_text(json.dumps(tcfg))
    return dest


@pytest.mark.parametrize("cls", ["TokenizersBackend", "PreTrainedTokenizerFast", None])
def test_plain_tokenizer_exports_what_transformers_exports(smollm2_dir, tmp_path, monkeypatch, cls):
    from transformers import AutoTokenizer

    d = _copy_tokenizer(smollm2_dir, tmp_path / "tok", tokenizer_class=cls)
    plain = plain_tokenizer_json(d)
    assert plain is not None
    hf = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    assert plain.get_vocab() == hf.get_vocab()
    assert plain.get_added_vocab() == hf.get_added_vocab()
    assert plain.chat_template == hf.chat_template
    for text in NASTY + [tok_mod.CHECK_TEXT]:
        for special in (True, False):
            assert plain.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special)
    fast = tok_mod.build_tokenizer_export(d)
    monkeypatch.setattr(tok_mod, "_load", lambda td, kind, config=None: tok_mod._load_hf(td))
    slow = tok_mod.build_tokenizer_export(d)
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)


def test_chat_template_file_wins_as_in_transformers(smollm2_dir, tmp_path):
    from transformers import AutoTokenizer

    d = _copy_tokenizer(smollm2_dir, tmp_path / "tok")
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert plain_tokenizer_json(d).chat_template == AutoTokenizer.from_pretrained(
        str(d), local_files_only=True).chat_template == "{{ messages[0]['content'] }}"


@pytest.mark.parametrize("change, config", [
    ({"tokenizer_class": "Qwen2Tokenizer"}, {}),  # model-specific class: rebuilt by transformers
    ({"split_special_tokens": True}, {}),
    ({"bos_token": "<|not-an-added-token|>"}, {}),  # transformers would add it
    ({"added_tokens_decoder": {"0": {"content": "<|endoftext|>", "special": False}}}, {}),
    ({}, {"model_type": "mistral"}),  # transformers may patch Mistral's split regex
])
def test_anything_transformers_would_change_takes_the_transformers_path(smollm2_dir, tmp_path, change, config):
    d = _copy_tokenizer(smollm2_dir, tmp_path / "tok", **change)
    assert plain_tokenizer_json(d, config) is None


def test_conversion_does_not_import_transformers(tiny_llama_dir, tmp_path):
    """The point of the plain path: a byte-level BPE conversion never waits for transformers."""
    import subprocess
    import sys

    code = ("import sys; from edgelora.gguf.convert import convert; "
            f"convert({str(tiny_llama_dir)!r}, {str(tmp_path / 'x.gguf')!r}, outtype='f16'); "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
