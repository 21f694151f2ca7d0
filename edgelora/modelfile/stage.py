"""The modelfile stage: Modelfile.j2 with a Go TEMPLATE proven equal to the tokenizer's Jinja
chat template (text and token ids) and stops that are end-of-generation in llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

from edgelora import artifacts as A
from edgelora.errors import EdgeloraError
from edgelora.gguf.stage import gguf_stem


def modelfile(ctx) -> dict:
    """One Modelfile per shipped quantization (the first, ``Modelfile``, is the default), with
    the decoding the evaluation measured (greedy: ``temperature 0``) and a ``num_ctx`` within
    the model's trained context."""
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
    quantized = ctx.need(A.QUANTIZED)
    first = next(iter(quantized))  # first type that passed the gate
    gguf_path = quantized[first]
    user_template = ctx.config.resolve(o.template).read_text(encoding="utf-8") if o.template else None
    # text, then token ids (HF and the shipped GGUF's own vocabulary), then llama.cpp's EOG set
    name, go_text, stops = choose_chat_template(chat_template, base, user_template=user_template, gguf_path=gguf_path)
    eog = check_eog(gguf_path, end_of_turn_tokens(go_text, added_tokens(base)))
    num_ctx = _num_ctx(o.num_ctx, max_seq_length(ctx), gguf_path)
    params, decoding = _decoding(o.temperature, ctx.log)
    texts = {q: render_modelfile(gguf_name=f"{gguf_stem(ctx)}.{q}.gguf", template_text=go_text, stops=stops,
                                 num_ctx=num_ctx, system=o.system or None, parameters=params)
             for q in quantized}
    ctx.log(f"  chat template: {name} (proven equal to the tokenizer's Jinja template, text and token ids); "
            f"stops {stops}; end of turn {list(eog)} is end-of-generation in llama.cpp; num_ctx {num_ctx}; "
            f"{len(texts)} Modelfile(s)")
    return {A.MODELFILE: {"text": texts[first], "texts": texts, "default": first, "template": name, "stops": stops,
                          "end_of_turn": eog, "num_ctx": num_ctx, "decoding": decoding}}


def _num_ctx(configured: int, max_seq_length: int, gguf_path) -> int:
    """The configured context, else the training length (at least 2048), never above the
    context the model was trained for (Ollama would run it past what it can attend to)."""
    from edgelora.errors import ModelfileError
    from edgelora.gguf.reader import read_metadata

    kv = read_metadata(gguf_path, arrays=False).kv
    trained = kv.get(f"{kv.get('general.architecture')}.context_length")
    wanted = configured or max(2048, max_seq_length)
    if isinstance(trained, int) and trained > 0:
        if configured and configured > trained:
            raise ModelfileError(f"[ollama] num_ctx: {configured} exceeds the model's trained context {trained}")
        wanted = min(wanted, trained)
    return wanted


def _decoding(temperature: float, log) -> tuple[dict, dict]:
    """Modelfile PARAMETERs matching the evaluation: its scores are greedy, so by default the
    Modelfile says ``temperature 0``; a configured sampling temperature is kept, and the
    manifest says the scores were not measured with it."""
    if temperature <= 0:
        return {"temperature": 0.0}, {"evaluated": "greedy", "modelfile": "greedy (temperature 0)"}
    log(f"  warning: [ollama] temperature {temperature}: Ollama will sample, the scores were measured greedy")
    return {"temperature": temperature}, {"evaluated": "greedy", "modelfile": f"sampling, temperature {temperature}",
                                          "note": "scores were measured with greedy decoding, not this sampling"}
