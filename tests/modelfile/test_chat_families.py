"""Chat template equivalence across families: published Jinja templates vs templates/chat/*.tmpl,
rendered by Go's own text/template, then tokenized by tokenizers built here (and llama.cpp)."""

from __future__ import annotations

import json

import pytest

from edgelora.modelfile import gotmpl
from edgelora.errors import ModelfileError
from edgelora.modelfile.chat_templates import PROBE_CONVERSATIONS, available_chat_templates
from edgelora.modelfile.equivalence import check_eog, choose_chat_template, end_of_turn_tokens

pytestmark = pytest.mark.skipif(not gotmpl.go_available(),
                                reason="go not installed (scripts/test.sh installs Debian's golang-go)")

# The families' published chat templates (tokenizer_config.json "chat_template" of the named models).
LLAMA3_JINJA = (  # meta-llama/Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

GEMMA3_JINJA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""  # google/gemma-3-*-it

GEMMA2_JINJA = (  # google/gemma-2-9b-it: no system role at all
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

MISTRAL_JINJA = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {{- tool | tojson }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
            {%- endfor %}
            {{- "][/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {{- tool_call | tojson }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- endif %}
        {%- endfor %}
        {{- "]" + eos_token }}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {{- '[TOOL_RESULTS] {"content": ' + message.content|string + "}[/TOOL_RESULTS]" }}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""  # mistralai/Mistral-7B-Instruct-v0.3

PHI3_JINJA = (  # microsoft/Phi-3-mini-4k-instruct
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

PHI35_JINJA = PHI3_JINJA.replace("message['role'] == 'system' %}", "message['role'] == 'system' and message['content'] %}")

CHATML_JINJA = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                "{% endif %}")

CORPUS = [json.dumps(c, ensure_ascii=False) for c in PROBE_CONVERSATIONS] + [
    "What is 2+2? And 3+3? The quick brown fox jumps over the lazy dog. Réponds en émoji 🙂 日本語 «quotes»",
    "First Second Third No system prompt here. You are terse. Hello there. Answer in French. Quatre.",
]


def make_tokenizer(specials: list[str], *, bos: str | None, eos: str, add_bos: bool):
    """A small byte-level BPE trained here, with the family's special tokens and BOS rule."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)


FAMILIES = {
    # name: (jinja, expected template, specials, bos, eos, add_bos, end of turn, stops that must be present)
    "chatml": (CHATML_JINJA, "chatml", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", False,
               "<|im_end|>", {"<|im_start|>", "<|im_end|>"}),
    "llama3": (LLAMA3_JINJA, "llama3", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                        "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", "<|eot_id|>", True,
               "<|eot_id|>", {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}),
    "gemma3": (GEMMA3_JINJA, "gemma", ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>",
               "<eos>", True, "<end_of_turn>", {"<end_of_turn>"}),
    "gemma2": (GEMMA2_JINJA, "gemma", ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>",
               "<eos>", True, "<end_of_turn>", {"<end_of_turn>"}),
    "mistral": (MISTRAL_JINJA, "mistral", ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", True,
                "</s>", {"[INST]", "[/INST]", "</s>"}),
    "phi3": (PHI3_JINJA, "phi3", ["<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
                                  "<|end|>"], "<s>", "<|endoftext|>", False, "<|end|>",
             {"<|end|>", "<|user|>", "<|assistant|>"}),
    "phi3.5": (PHI35_JINJA, "phi35", ["<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
                                      "<|end|>"], "<s>", "<|endoftext|>", False, "<|end|>", {"<|end|>"}),
}


@pytest.fixture(autouse=True)
def real_go(monkeypatch):
    monkeypatch.setattr(gotmpl, "render", gotmpl.render_go)  # never the Python fallback here


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_template_proven_by_text_and_token_ids(family):
    jinja, expected, specials, bos, eos, add_bos, eot, must_stop = FAMILIES[family]
    tok = make_tokenizer(specials, bos=bos, eos=eos, add_bos=add_bos)
    name, go_text, stops = choose_chat_template(jinja, hf_tokenizer=tok)
    assert name == expected
    assert end_of_turn_tokens(go_text, set(specials)) == [eot]
    assert stops[0] == eot and must_stop <= set(stops)
    assert bos not in stops
    # the proof, restated: the text Ollama tokenizes (plus BOS) gives training's token ids
    from edgelora.runtime.chat_template import render_chat

    conv = PROBE_CONVERSATIONS[3]
    training = tok(render_chat(jinja, conv, special_tokens={"bos_token": bos or "", "eos_token": eos}),
                   add_special_tokens=False)["input_ids"]
    serving = tok(gotmpl.render_go(go_text, [conv])[0], add_special_tokens=True)["input_ids"]
    assert training == serving


def test_bos_emitted_by_template_but_not_added_by_tokenizer_matches_nothing():
    # Llama 3's template writes <|begin_of_text|>; with a tokenizer that does not add BOS the
    # Go template (which must not emit BOS) cannot reproduce training's first token.
    jinja, _, specials, bos, eos, _, _, _ = FAMILIES["llama3"]
    tok = make_tokenizer(specials, bos=bos, eos=eos, add_bos=False)
    with pytest.raises(ModelfileError, match="no chat template matches"):
        choose_chat_template(jinja, hf_tokenizer=tok)


def test_template_without_bos_but_tokenizer_adds_one_fails_on_token_ids():
    # Text matches (ChatML), but Ollama would prepend a BOS training never saw.
    tok = make_tokenizer(["<s>", "<|im_start|>", "<|im_end|>"], bos="<s>", eos="<|im_end|>", add_bos=True)
    with pytest.raises(ModelfileError, match="no chat template matches"):
        choose_chat_template(CHATML_JINJA, hf_tokenizer=tok)
    with pytest.raises(ModelfileError, match="token ids differ"):
        choose_chat_template(CHATML_JINJA, hf_tokenizer=tok, user_template=available_chat_templates()["chatml"])


def test_family_quirks_separate_templates():
    # Phi-3.5 drops an empty system message, Phi-3 does not; Gemma folds the system prompt.
    jinja, *_ = FAMILIES["phi3.5"]
    assert choose_chat_template(jinja)[0] == "phi35"
    assert choose_chat_template(PHI3_JINJA)[0] == "phi3"
    folded_once = GEMMA3_JINJA.replace("['content'] + '\n\n' -%}", "['content'] + '\n' -%}", 1)
    assert folded_once != GEMMA3_JINJA
    with pytest.raises(ModelfileError, match="no chat template matches"):
        choose_chat_template(folded_once)


def test_user_template_must_pass_the_same_check():
    tok = make_tokenizer(["<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>", add_bos=False)
    go = available_chat_templates()["chatml"]
    assert choose_chat_template(CHATML_JINJA, hf_tokenizer=tok, user_template=go)[0] == "user"
    with pytest.raises(ModelfileError, match=r"\[ollama\] template: .*text differs"):
        choose_chat_template(CHATML_JINJA, hf_tokenizer=tok, user_template=go.replace("<|im_end|>\n", "<|im_end|>"))


def test_smollm2_real_tokenizer_and_gguf_vocabulary(smollm2_dir, smollm2_gguf):
    jinja = json.loads((smollm2_dir / "tokenizer_config.json").read_text())["chat_template"]
    name, go_text, stops = choose_chat_template(jinja, smollm2_dir, gguf_path=smollm2_gguf)
    assert name == "smollm2" and stops == ["<|im_end|>", "<|im_start|>"]
    from edgelora.runtime.chat_template import added_tokens

    eot = end_of_turn_tokens(go_text, added_tokens(smollm2_dir))
    assert eot == ["<|im_end|>"]
    assert set(check_eog(smollm2_gguf, eot)) == {"<|im_end|>"}
    with pytest.raises(ModelfileError, match="not end-of-generation"):
        check_eog(smollm2_gguf, ["<|im_start|>"])  # a turn marker, not where generation stops


def test_python_fallback_follows_go_on_declarations_slice_and_parenthesised_fields():
    tmpl = ('{{- range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
            '{{ if or (ne $m.Role "system") $m.Content }}{{ $i }}{{ (index $.Messages 0).Role }}{{ $last }}|{{ end }}'
            '{{ end }}{{ len (slice .Messages 1 2) }}')
    convs = [PROBE_CONVERSATIONS[1], PROBE_CONVERSATIONS[6]]
    assert gotmpl.render_python(tmpl, convs) == gotmpl.render_go(tmpl, convs)
    with pytest.raises(gotmpl.GoTemplateError):
        gotmpl.render_python("{{ $x := 1 }}{{ $x = 2 }}", [[]])  # assignment: only with Go


def test_plan_says_no_template_matches_and_accepts_a_proven_user_template(tiny_llama_dir, tmp_path):
    import shutil
    from pathlib import Path

    from edgelora import api
    from edgelora.errors import PlanError

    base = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, base)
    cfg_path = base / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}### assistant:"
    cfg_path.write_text(json.dumps(cfg))
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    demo = Path(__file__).resolve().parents[2] / "demo" / "data" / "train.jsonl"
    (proj / "data" / "train.jsonl").write_text("\n".join(demo.read_text().splitlines()[:12]) + "\n")
    toml = f'[project]\nname = "t"\n[base]\nsource = "local"\npath = "{base}"\n'
    (proj / "edgelora.toml").write_text(toml)
    with pytest.raises(PlanError, match="no chat template matches"):
        api.plan(proj, log=lambda *_: None)
    go = ('{{- range .Messages }}### {{ .Role }}: {{ .Content }}\n{{ end }}### assistant:')
    (proj / "mine.tmpl").write_text(go)
    (proj / "edgelora.toml").write_text(toml + '[ollama]\ntemplate = "mine.tmpl"\n')
    assert api.plan(proj, log=lambda *_: None)["chat_template"].startswith("user (stops ")
