"""GGUF architecture entries beyond llama: qwen2, qwen3, gemma2, gemma3, phi3.

Each entry is plain data plus small functions (see :class:`Architecture`); the default
plugin registers them through ``edgelora_register_architectures`` exactly as a third
party would. Every rule below exists because breaking it gives a file that loads and
computes something else; the comments say which.
"""

from __future__ import annotations

import math

from edgelora.errors import UnsupportedArchitecture
from edgelora.gguf.architectures import (LLAMA_PARTS, Architecture, NameMap, check_activation, head_dim, layer_tensor_names,
                            rope_settings, top_tensor_names, write_common_hparams,
                            write_rope_scaling)

# llama's attention and MLP names; the families differ in their norms
_ATTN_MLP = {k: v for k, v in LLAMA_PARTS.items() if k != "post_attention_layernorm"}


def _unchanged(gguf_name: str, arr, config: dict):
    # qwen/gemma/phi3 GGUF archs use NeoX (half-split) rotary, as HF does: no permutation.
    return arr


def _refuse_sliding(config: dict, arch_name: str) -> None:
    # llama.cpp's qwen2/qwen3 graphs have no sliding window; HF would apply one.
    if config.get("use_sliding_window"):
        raise UnsupportedArchitecture(f"config.json: use_sliding_window=true is not supported by the "
                                      f"{arch_name} GGUF arch (llama.cpp attends to the full context)")


# -- qwen2 (Qwen2 / Qwen2.5) ----------------------------------------------------------

_QWEN2_PARTS = {**_ATTN_MLP, "post_attention_layernorm": "ffn_norm"}


def qwen2_expected_tensors(config: dict) -> set:
    # q/k/v biases are optional to llama.cpp's loader: a file without them loads and is wrong
    return top_tensor_names(config) | layer_tensor_names(config, tuple(_QWEN2_PARTS.values()),
                                                         ("attn_q", "attn_k", "attn_v"))


def _qwen_hparams(gguf_arch: str):
    """qwen2 and qwen3 write the same keys (qwen3's key/value_length: head_dim 128 != hidden/heads)."""
    def write_hparams(config: dict, writer) -> None:
        check_activation(config, ("silu", "swish"), gguf_arch)
        _refuse_sliding(config, gguf_arch)
        write_common_hparams(config, writer)
        write_rope_scaling(writer, rope_settings(config), gguf_arch)

    write_hparams.__name__ = f"{gguf_arch}_write_hparams"
    return write_hparams


qwen2_write_hparams = _qwen_hparams("qwen2")


QWEN2 = Architecture(
    name="qwen2", hf_architectures=("Qwen2ForCausalLM",), gguf_arch="qwen2",
    write_hparams=qwen2_write_hparams, map_name=NameMap(_QWEN2_PARTS), transform=_unchanged,
    expected_tensors=qwen2_expected_tensors, tokenizer_kinds=("gpt2",),
    description="Qwen2 / Qwen2.5 (q/k/v biases; token list padded to the embedding rows)")


# -- qwen3 ----------------------------------------------------------------------------

_QWEN3_PARTS = {**_QWEN2_PARTS, "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def qwen3_expected_tensors(config: dict) -> set:
    biases = ("attn_q", "attn_k", "attn_v", "attn_output") if config.get("attention_bias") else ()
    return top_tensor_names(config) | layer_tensor_names(config, tuple(_QWEN3_PARTS.values()), biases)


qwen3_write_hparams = _qwen_hparams("qwen3")


QWEN3 = Architecture(
    name="qwen3", hf_architectures=("Qwen3ForCausalLM",), gguf_arch="qwen3",
    write_hparams=qwen3_write_hparams, map_name=NameMap(_QWEN3_PARTS), transform=_unchanged,
    expected_tensors=qwen3_expected_tensors, tokenizer_kinds=("gpt2",),
    description="Qwen3 dense (q/k RMSNorm, head_dim independent of hidden/heads)")


# -- gemma2 / gemma3 ------------------------------------------------------------------

_GEMMA_PARTS = {
    **_ATTN_MLP,
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}
_GEMMA3_PARTS = {**_GEMMA_PARTS, "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def gemma_transform(gguf_name: str, arr, config: dict):
    # Gemma's RMSNorm multiplies by (1 + w); llama.cpp multiplies by w.
    if gguf_name.endswith("_norm.weight"):
        return arr + 1.0
    return arr


def _layer_types(config: dict, default_pattern: int) -> list[str]:
    n = int(config["num_hidden_layers"])
    types = config.get("layer_types")
    if types:
        return list(types)
    pattern = int(config.get("sliding_window_pattern") or default_pattern)
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]


def _check_attention_scale(config: dict, arch_name: str, big_layers: int) -> None:
    # llama.cpp hard-codes the query scale: 1/sqrt(hidden/heads) for the 27B shape, else
    # 1/sqrt(head_dim). HF uses query_pre_attn_scalar; a mismatch would load and be wrong.
    hd = head_dim(config)
    n_head = int(config["num_attention_heads"])
    cpp = (int(config["hidden_size"]) // n_head) if int(config["num_hidden_layers"]) == big_layers else hd
    hf = float(config.get("query_pre_attn_scalar") or hd)
    if not math.isclose(hf, cpp, rel_tol=1e-6):
        raise UnsupportedArchitecture(
            f"config.json: query_pre_attn_scalar {hf:g} differs from the {cpp} llama.cpp's {arch_name} "
            "graph uses for this shape")


def _write_swa(config: dict, writer, arch_name: str, default_pattern: int) -> None:
    types = _layer_types(config, default_pattern)
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if unknown:
        raise UnsupportedArchitecture(f"config.json: layer_types {unknown} not supported by the {arch_name} GGUF arch")
    window = config.get("sliding_window")
    if window and "sliding_attention" in types:
        writer.add_sliding_window(int(window))
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])
    elif arch_name == "gemma2":
        # llama.cpp's gemma2 graph always windows (default 4096): make the window the whole context
        writer.add_sliding_window(int(config.get("max_position_embeddings", 8192)))


def _sliding_rope(config: dict) -> dict:
    """Rope for sliding-window layers (Gemma 3: its own base, no scaling)."""
    rp = config.get("rope_parameters")
    if isinstance(rp, dict) and isinstance(rp.get("sliding_attention"), dict):
        return rope_settings(config, "sliding_attention")
    base = config.get("rope_local_base_freq")
    return {"rope_theta": float(base if base is not None else 10000.0), "rope_type": "default"}


def gemma2_write_hparams(config: dict, writer) -> None:
    check_activation(config, ("gelu_pytorch_tanh", "gelu"), "gemma2",
                     keys=("hidden_activation", "hidden_act"), default="gelu_pytorch_tanh")
    _check_attention_scale(config, "gemma2", big_layers=46)
    if config.get("tie_word_embeddings", True) is False:
        # e.g. an adapter that trained lm_head on its own: llama.cpp's gemma2 has no output tensor
        raise UnsupportedArchitecture("config.json: gemma2 with an untied lm_head is not supported "
                                      "(llama.cpp's gemma2 graph always projects through token_embd)")
    write_common_hparams(config, writer, always_head_dims=True)  # as llama.cpp's converter: explicit
    attn_cap, final_cap = config.get("attn_logit_softcapping"), config.get("final_logit_softcapping")
    if not attn_cap or not final_cap:
        # llama.cpp's gemma2 graph always soft-caps (defaults 50 / 30)
        raise UnsupportedArchitecture("config.json: gemma2 without attn_logit_softcapping and "
                                      "final_logit_softcapping is not supported by llama.cpp's gemma2 graph")
    writer.add_attn_logit_softcapping(float(attn_cap))
    writer.add_final_logit_softcapping(float(final_cap))
    _write_swa(config, writer, "gemma2", 2)
    write_rope_scaling(writer, rope_settings(config), "gemma2")


def gemma2_expected_tensors(config: dict) -> set:
    # no output.weight: llama.cpp's gemma2 always projects through token_embd
    return top_tensor_names(config, output=False) | layer_tensor_names(config, tuple(_GEMMA_PARTS.values()))


GEMMA2 = Architecture(
    name="gemma2", hf_architectures=("Gemma2ForCausalLM",), gguf_arch="gemma2",
    write_hparams=gemma2_write_hparams, map_name=NameMap(_GEMMA_PARTS, lm_head="never"),
    transform=gemma_transform, expected_tensors=gemma2_expected_tensors, tokenizer_kinds=("llama",),
    description="Gemma 2 (norms +1, attention/final soft-capping, alternating sliding window)")


def gemma3_text_config(config: dict) -> dict:
    """The text model's config with transformers' defaults filled in.

    Gemma3ForConditionalGeneration nests it under ``text_config`` and real checkpoints
    omit most keys (they rely on Gemma3TextConfig's defaults), so the class fills them.
    """
    from transformers import Gemma3TextConfig

    text = dict(config.get("text_config") or {}) if "text_config" in config else dict(config)
    for key in ("architectures", "model_type", "transformers_version", "auto_map", "dtype", "torch_dtype"):
        text.pop(key, None)
    full = Gemma3TextConfig(**text).to_dict()
    full["tie_word_embeddings"] = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))
    full["architectures"] = config.get("architectures")
    return full


def gemma3_write_hparams(config: dict, writer) -> None:
    check_activation(config, ("gelu_pytorch_tanh", "gelu"), "gemma3",
                     keys=("hidden_activation", "hidden_act"), default="gelu_pytorch_tanh")
    if config.get("attn_logit_softcapping"):
        raise UnsupportedArchitecture("config.json: attn_logit_softcapping is not supported by "
                                      "llama.cpp's gemma3 graph")
    _check_attention_scale(config, "gemma3", big_layers=62)
    write_common_hparams(config, writer, always_head_dims=True)  # as llama.cpp's converter: explicit
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    _write_swa(config, writer, "gemma3", 6)
    local = _sliding_rope(config)
    if local["rope_type"] != "default":
        raise UnsupportedArchitecture(f"config.json: rope_type {local['rope_type']!r} on sliding layers is "
                                      "not supported by llama.cpp's gemma3 graph")
    writer.add_rope_freq_base_swa(local["rope_theta"])
    write_rope_scaling(writer, rope_settings(config, "full_attention"), "gemma3")


def gemma3_expected_tensors(config: dict) -> set:
    return top_tensor_names(config) | layer_tensor_names(config, tuple(_GEMMA3_PARTS.values()))


def gemma3_vocab_rows(config: dict, n_tokens: int, rows: int) -> int:
    # Gemma 3's embedding has more rows than the tokenizer has tokens; llama.cpp wants them equal
    return min(n_tokens, rows)


GEMMA3 = Architecture(
    name="gemma3", hf_architectures=("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
    gguf_arch="gemma3", write_hparams=gemma3_write_hparams,
    map_name=NameMap(_GEMMA3_PARTS, prefixes=("model.language_model.", "language_model.model.", "model."),
                     skip_prefixes=("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.",
                                    "multi_modal_projector.")),
    transform=gemma_transform, expected_tensors=gemma3_expected_tensors, tokenizer_kinds=("llama", "gpt2"),
    text_config=gemma3_text_config, vocab_rows=gemma3_vocab_rows,
    description="Gemma 3 text (norms +1 incl. q/k norms, sliding window with its own rope base; "
                "the vision tower of Gemma3ForConditionalGeneration is skipped)")


# -- phi3 -----------------------------------------------------------------------------

_PHI3_PARTS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.qkv_proj": "attn_qkv",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_up_proj": "ffn_up",  # gate first, then up: llama.cpp's fused SwiGLU reads it as is
    "mlp.down_proj": "ffn_down",
}


def _phi3_rope(config: dict) -> dict:
    rope = rope_settings(config)
    if rope["rope_type"] == "su":
        rope["rope_type"] = "longrope"
    return rope


def _phi3_rope_dims(config: dict) -> int:
    factor = config.get("partial_rotary_factor") or _phi3_rope(config).get("partial_rotary_factor") or 1.0
    return int(head_dim(config) * float(factor))


def phi3_write_hparams(config: dict, writer) -> None:
    check_activation(config, ("silu", "swish"), "phi3")
    n_head = int(config["num_attention_heads"])
    if head_dim(config) * n_head != int(config["hidden_size"]):
        raise UnsupportedArchitecture("config.json: phi3 with head_dim * heads != hidden_size is not "
                                      "supported by llama.cpp's phi3 graph")
    write_common_hparams(config, writer, rope_dims=_phi3_rope_dims(config))
    # llama.cpp ignores phi3's window (it warns and attends to everything), as its converter writes it
    writer.add_sliding_window(int(config.get("sliding_window") or 0))
    rope = _phi3_rope(config)
    if rope["rope_type"] == "longrope":
        orig = int(rope.get("original_max_position_embeddings")
                   or config.get("original_max_position_embeddings") or config["max_position_embeddings"])
        scale = int(config["max_position_embeddings"]) / orig
        attn = rope.get("attention_factor")
        if attn is None:
            attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
        writer.add_rope_scaling_orig_ctx_len(orig)
        writer.add_rope_scaling_attn_factors(float(attn))
    else:
        write_rope_scaling(writer, rope, "phi3")


def phi3_extra_tensors(config: dict) -> list:
    import numpy as np

    rope = _phi3_rope(config)
    if rope["rope_type"] != "longrope":
        return []
    half = _phi3_rope_dims(config) // 2
    out = []
    for kind in ("long", "short"):
        factors = rope.get(f"{kind}_factor")
        if not factors or len(factors) != half:
            raise UnsupportedArchitecture(f"config.json: longrope {kind}_factor must list {half} values "
                                          f"(rotary dims / 2), got {len(factors or [])}")
        out.append((f"rope_factors_{kind}.weight", np.asarray(factors, dtype=np.float32)))
    return out


def phi3_expected_tensors(config: dict) -> set:
    names = top_tensor_names(config) | layer_tensor_names(config, tuple(_PHI3_PARTS.values()))
    if _phi3_rope(config)["rope_type"] == "longrope":
        names |= {"rope_factors_long.weight", "rope_factors_short.weight"}
    return names


PHI3 = Architecture(
    name="phi3", hf_architectures=("Phi3ForCausalLM",), gguf_arch="phi3",
    write_hparams=phi3_write_hparams, map_name=NameMap(_PHI3_PARTS), transform=_unchanged,
    expected_tensors=phi3_expected_tensors, extra_tensors=phi3_extra_tensors,
    tokenizer_kinds=("llama", "gpt2"),
    description="Phi-3 / Phi-3.5 / Phi-4-mini (fused qkv and gate_up, partial rotary, longrope factors)")

