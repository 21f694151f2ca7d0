"""The modelfile stage: Modelfile.j2 with a Go TEMPLATE proven equal to the tokenizer's Jinja
chat template (text and token ids) and stops that are end-of-generation in llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

from edgelora import artifacts as A
from edgelora.errors import EdgeloraError
from edgelora.gguf.stage import gguf_stem


def modelfile(ctx) -> dict:
    from edgelora.data.guards import max_seq_length
    from edgelora.runtime.chat_template import added_tokens
    from edgelora.modelfile.equivalence import check_eog, choose_chat_template, end_of_turn_tokens
    from edgelora.modelfile.render import render_modelfile

    base = Path(ctx.need(A.BASE)["path"])
    tok_cfg = json.loads((base / "tokenizer_config.json").read_text())
    chat_template = tok_cfg.get("chat_template")
    if not chat_template:
        raise EdgeloraError(f"{base / 'tokenizer_config.json'}: no chat_template")
    o = ctx.config.ollama
    first = next(iter(ctx.need(A.QUANTIZED)))  # first type that passed the gate
    gguf_path = ctx.need(A.QUANTIZED)[first]
    user_template = ctx.config.resolve(o.template).read_text(encoding="utf-8") if o.template else None
    # text, then token ids (HF and the shipped GGUF's own vocabulary), then llama.cpp's EOG set
    name, go_text, stops = choose_chat_template(chat_template, base, user_template=user_template, gguf_path=gguf_path)
    eog = check_eog(gguf_path, end_of_turn_tokens(go_text, added_tokens(base)))
    num_ctx = o.num_ctx or max(2048, max_seq_length(ctx))
    params = {}
    if o.temperature >= 0:
        params["temperature"] = o.temperature
    text = render_modelfile(gguf_name=f"{gguf_stem(ctx)}.{first}.gguf", template_text=go_text,
                            stops=stops, num_ctx=num_ctx, system=o.system or None, parameters=params)
    ctx.log(f"  chat template: {name} (proven equal to the tokenizer's Jinja template, text and token ids); "
            f"stops {stops}; end of turn {list(eog)} is end-of-generation in llama.cpp")
    return {A.MODELFILE: {"text": text, "template": name, "stops": stops, "end_of_turn": eog}}
