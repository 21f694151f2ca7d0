"""Modelfile rendering, the grammar refusals, and choosing a TEMPLATE proven equal to Jinja."""

from __future__ import annotations

import pytest

from edgelora.modelfile import gotmpl
from edgelora.runtime.chat_template import ChatTemplateError, render_chat
from edgelora.errors import ModelfileError
from edgelora.modelfile.chat_templates import PROBE_CONVERSATIONS, available_chat_templates
from edgelora.modelfile.equivalence import choose_chat_template
from edgelora.modelfile.render import render_modelfile

SMOLLM2_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML_JINJA = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                "{% endif %}")
needs_go = pytest.mark.skipif(not gotmpl.go_available(), reason="go not installed")


def parse_like_ollama(text: str) -> list[tuple[str, str]]:
    """A re-statement of Ollama's Modelfile parser (parser/parser.go) for round-trip tests:
    a value ends at the first newline where the trimmed buffer is complete; no escapes;
    non-printable runes other than tab/newline/CR are dropped."""
    commands, i, n = [], 0, len(text)
    while i < n:
        if text[i] in " \t\r\n":
            i += 1
            continue
        if text[i] == "#":
            i = text.find("\n", i) + 1 or n
            continue
        j = i
        while j < n and text[j].isalpha():
            j += 1
        name = text[i:j].lower()
        i = j + 1
        if name == "parameter":
            j = text.index(" ", i)
            name, i = text[i:j], j + 1
        buf = ""
        while i < n:
            ch = text[i]
            i += 1
            if ch == "\n":
                s = buf.strip()
                if (s.startswith('"""') and len(s) >= 6 and s.endswith('"""')) or \
                        (s.startswith('"') and not s.startswith('"""') and len(s) >= 2 and s.endswith('"')) or \
                        not s.startswith('"'):
                    break
            if ch in "\t\n\r" or ch.isprintable():
                buf += ch
        s = buf.strip()
        if s.startswith('"""'):
            s = s[3:-3]
        elif s.startswith('"'):
            s = s[1:-1]
        commands.append((name, s))
    return commands


def _render(**kw):
    args = dict(gguf_name="demo.Q8_0.gguf", template_text=available_chat_templates()["chatml"],
                stops=["<|im_start|>", "<|im_end|>"], num_ctx=4096, system=None, parameters=None)
    args.update(kw)
    return render_modelfile(**args)


def test_render_round_trips_through_ollama_grammar():
    system = 'Reply with JSON.\n\tIndented "quoted" line\nünï 🚀 ""'
    text = _render(system=system, parameters={"temperature": 0, "top_k": 1.0, "seed": 42})
    assert "\r" not in text and text.endswith("\n") and not text.endswith("\n\n")
    cmds = parse_like_ollama(text)
    assert cmds[0] == ("from", "./demo.Q8_0.gguf")
    assert ("template", available_chat_templates()["chatml"]) in cmds
    assert ("system", system) in cmds
    assert [v for k, v in cmds if k == "stop"] == ["<|im_start|>", "<|im_end|>"]
    params = dict((k, v) for k, v in cmds if k in ("num_ctx", "seed", "top_k", "temperature"))
    assert params == {"num_ctx": "4096", "seed": "42", "top_k": "1", "temperature": "0.0"}
    assert "PARAMETER top_k 1\n" in text  # integer literal, not 1.0


@pytest.mark.parametrize("field,kw", [
    ("TEMPLATE", {"template_text": 'a\nb"""\nc'}),
    ("TEMPLATE", {"template_text": 'ends here"""   \n'}),
    ("SYSTEM", {"system": 'x\n"""'}),
    ("SYSTEM", {"system": "windows\r\nline"}),
    ("SYSTEM", {"system": "bell\x07"}),
    ("SYSTEM", {"system": "zero\u200bwidth"}),
    ("TEMPLATE", {"template_text": "nbsp\u00a0"}),
    ("PARAMETER stop", {"stops": ['say "hi"']}),
    ("PARAMETER stop", {"stops": []}),
    ("PARAMETER stop", {"stops": ["<|im_end|>", "<|im_end|>"]}),
    ("FROM", {"gguf_name": "../escape.gguf"}),
    ("FROM", {"gguf_name": "/abs/model.gguf"}),
    ("FROM", {"gguf_name": "my model.gguf"}),
    ("PARAMETER num_ctx", {"num_ctx": 4096.0}),
    ("PARAMETER num_ctx", {"num_ctx": True}),
    ("PARAMETER top_k", {"parameters": {"top_k": 1.5}}),
    ("PARAMETER temperature", {"parameters": {"temperature": float("nan")}}),
    ("PARAMETER mirostat", {"parameters": {"mirostat": 1}}),
    ("PARAMETER stop", {"parameters": {"stop": "x"}}),
])
def test_grammar_refusals_name_the_field(field, kw):
    with pytest.raises(ModelfileError) as err:
        _render(**kw)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_smollm2_tokenizer_chooses_chatml_family_with_default_system_quirk(smollm2_dir):
    import json

    jinja = json.loads((smollm2_dir / "tokenizer_config.json").read_text())["chat_template"]
    name, go_text, stops = choose_chat_template(jinja, smollm2_dir)
    # Plain ChatML does not match SmolLM2: its template injects a default system prompt.
    assert name == "smollm2"
    assert go_text == available_chat_templates()["smollm2"]
    assert stops == ["<|im_end|>", "<|im_start|>"]  # end of turn first, then the turn marker
    no_system = gotmpl.render(go_text, [[{"role": "user", "content": "hi"}]])[0]
    assert no_system.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert no_system == render_chat(jinja, [{"role": "user", "content": "hi"}])


def test_plain_chatml_template_chooses_chatml():
    name, _, stops = choose_chat_template(CHATML_JINJA, None)
    assert name == "chatml" and stops == ["<|im_end|>", "<|im_start|>"]


def test_choice_without_go_uses_python_renderer(monkeypatch):
    monkeypatch.setattr(gotmpl, "go_available", lambda: False)
    monkeypatch.setattr(gotmpl, "render_go", None)  # any call to Go would now fail loudly
    assert choose_chat_template(SMOLLM2_JINJA, None)[0] == "smollm2"
    assert choose_chat_template(CHATML_JINJA, None)[0] == "chatml"


def test_made_up_template_matches_nothing():
    made_up = "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}### assistant:"
    with pytest.raises(ModelfileError, match="no chat template matches"):
        choose_chat_template(made_up, None)
    nearly = CHATML_JINJA.replace("'<|im_end|>' + '\n'", "'<|im_end|>'")  # drops one newline
    with pytest.raises(ModelfileError, match="no chat template matches"):
        choose_chat_template(nearly, None)


@needs_go
@pytest.mark.parametrize("name", sorted(available_chat_templates()))
def test_python_fallback_renderer_agrees_with_go(name):
    go_text = available_chat_templates()[name]
    convs = PROBE_CONVERSATIONS + [[], [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]]
    assert gotmpl.render_python(go_text, convs) == gotmpl.render_go(go_text, convs)


@needs_go
def test_python_fallback_follows_go_on_other_constructs():
    tmpl = ('{{- if .System }}S={{ .System }}{{ else if .Messages }}M{{ else }}none{{ end }}|{{ .Prompt }}|'
            '{{ range $i, $m := .Messages }}{{ if or (eq $m.Role "user" "tool") (not $m.Content) }}{{ $i }}'
            '{{- else }}x{{ end }} {{ end -}}\n  |{{ len .Messages }}{{ (index .Messages 0).Role }}')
    convs = [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
             [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]]
    assert gotmpl.render_python(tmpl, convs) == gotmpl.render_go(tmpl, convs)


def test_python_fallback_refuses_what_it_cannot_render():
    with pytest.raises(gotmpl.GoTemplateError):
        gotmpl.render_python("{{ with .System }}{{ . }}{{ end }}", [[]])
    with pytest.raises(gotmpl.GoTemplateError):
        gotmpl.render_python("{{ .Messages | json }}", [[]])


def test_jinja_sandbox_refuses_escape_and_endless_loops():
    with pytest.raises(ChatTemplateError, match="sandbox|rendering failed"):
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", [])
    with pytest.raises(ChatTemplateError, match="exceeded|exceeds"):
        render_chat("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", [],
                    max_seconds=0.5)
    with pytest.raises(ChatTemplateError, match="exceeds"):
        render_chat("{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxx{% endfor %}", [], max_chars=10_000)
