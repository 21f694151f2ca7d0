"""GGUF architecture entries: how one HF model family becomes llama.cpp tensors and keys.

An :class:`Architecture` is data plus small pure functions, so a plugin can add one
without subclassing anything. The converter asks it, per tensor, for the GGUF name
(``None`` = skipped on purpose, ``KeyError`` = unknown, which stops the conversion)
and for the transformed array.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UnsupportedArchitecture


def _no_extra(config: dict) -> list:
    return []


@dataclass(frozen=True)
class Architecture:
    name: str
    hf_architectures: tuple[str, ...]
    gguf_arch: str
    write_hparams: Callable[[dict, Any], None]
    """(config.json dict, gguf.GGUFWriter) -> None: writes the ``{arch}.*`` keys."""
    map_name: Callable[[str, dict], "str | None"]
    """(HF tensor name, config) -> GGUF name, ``None`` to skip knowingly; ``KeyError`` if unknown."""
    transform: Callable[[str, Any, dict], Any]
    """(GGUF name, float32 numpy array, config) -> array as llama.cpp expects it."""
    expected_tensors: Callable[[dict], set]
    """config -> the GGUF tensor names llama.cpp will look for (all must be written)."""
    extra_tensors: Callable[[dict], list] = field(default=_no_extra)
    """config -> [(GGUF name, float32 numpy array)] computed rather than read (e.g. rope_freqs)."""
    tokenizer_kinds: tuple[str, ...] = ("gpt2",)


def find_architecture(config: dict, registry: "dict[str, Architecture] | None" = None) -> Architecture:
    """The registered entry whose ``hf_architectures`` names one of config.json's ``architectures``."""
    if registry is None:
        registry = {"llama": LLAMA}
    wanted = config.get("architectures") or []
    for arch in registry.values():
        if any(a in arch.hf_architectures for a in wanted):
            return arch
    known = sorted(a for arch in registry.values() for a in arch.hf_architectures)
    raise UnsupportedArchitecture(
        f"config.json: architectures {wanted} not supported for GGUF export (known: {', '.join(known)})")


# -- shared helpers ---------------------------------------------------------------

def head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def rope_settings(config: dict) -> dict:
    """Rope theta and scaling from either config layout.

    transformers < 5 writes ``rope_theta`` + ``rope_scaling``; 5.x writes one
    ``rope_parameters`` dict. A silent default of 10000 would degrade Llama 3 and
    SmolLM2, so both are read.
    """
    params: dict = {}
    if isinstance(config.get("rope_scaling"), dict):
        params.update(config["rope_scaling"])
    if isinstance(config.get("rope_parameters"), dict):
        params.update(config["rope_parameters"])
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    return {**params, "rope_theta": float(theta), "rope_type": rope_type}


def llama3_rope_factors(config: dict):
    """Per-frequency divisors for Llama 3.1-style rope scaling (llama.cpp's ``rope_freqs``)."""
    import numpy as np

    rope = rope_settings(config)
    dim = head_dim(config)
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, dim, 2):
        freq = 1.0 / (rope["rope_theta"] ** (i / dim))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def permute_rotary(arr, n_head: int):
    """HF's half-split rotary rows -> llama.cpp's adjacent pairs, per head (weights and biases)."""
    rows = arr.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot permute {rows} rows into {n_head} heads")
    return (arr.reshape(n_head, 2, rows // n_head // 2, *arr.shape[1:])
            .swapaxes(1, 2).reshape(arr.shape))


# -- llama ------------------------------------------------------------------------

_LLAMA_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LLAMA_LAYER_PARTS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LLAMA_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}


def _tied(config: dict) -> bool:
    # LlamaConfig's default is untied; an absent key means untied.
    return bool(config.get("tie_word_embeddings", False))


def llama_map_name(hf_name: str, config: dict) -> "str | None":
    if hf_name in _LLAMA_TOP:
        return _LLAMA_TOP[hf_name]
    if hf_name == "lm_head.weight":
        # Tied models use token_embd for the output; HF ignores a stray lm_head then too.
        return None if _tied(config) else "output.weight"
    m = _LLAMA_LAYER.match(hf_name)
    if m:
        layer, rest = m.groups()
        if rest.endswith("rotary_emb.inv_freq"):
            return None  # recomputed by llama.cpp from rope keys
        module, _, kind = rest.rpartition(".")
        if module in _LLAMA_LAYER_PARTS and kind in ("weight", "bias"):
            return f"blk.{layer}.{_LLAMA_LAYER_PARTS[module]}.{kind}"
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    raise KeyError(hf_name)


def llama_transform(gguf_name: str, arr, config: dict):
    if ".attn_q." in gguf_name:
        return permute_rotary(arr, int(config["num_attention_heads"]))
    if ".attn_k." in gguf_name:
        n_kv = int(config.get("num_key_value_heads") or config["num_attention_heads"])
        return permute_rotary(arr, n_kv)
    return arr


def llama_expected_tensors(config: dict) -> set:
    names = {"token_embd.weight", "output_norm.weight"}
    if not _tied(config):
        names.add("output.weight")
    parts = ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
             "ffn_gate", "ffn_up", "ffn_down")
    for i in range(int(config["num_hidden_layers"])):
        names.update(f"blk.{i}.{p}.weight" for p in parts)
        if config.get("attention_bias"):
            names.update(f"blk.{i}.{p}.bias" for p in ("attn_q", "attn_k", "attn_v", "attn_output"))
        if config.get("mlp_bias"):
            names.update(f"blk.{i}.{p}.bias" for p in ("ffn_gate", "ffn_up", "ffn_down"))
    if rope_settings(config)["rope_type"] == "llama3":
        names.add("rope_freqs.weight")
    return names


def llama_extra_tensors(config: dict) -> list:
    if rope_settings(config)["rope_type"] == "llama3":
        return [("rope_freqs.weight", llama3_rope_factors(config))]
    return []


def llama_write_hparams(config: dict, writer) -> None:
    import gguf

    act = config.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedArchitecture(f"config.json: hidden_act {act!r} not supported by the llama GGUF arch")
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hd = head_dim(config)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(hd)
    if hd != int(config["hidden_size"]) // n_head:
        writer.add_key_length(hd)
        writer.add_value_length(hd)
    rope = rope_settings(config)
    writer.add_rope_freq_base(rope["rope_theta"])
    rtype = rope["rope_type"]
    if rtype in ("default", "llama3"):
        pass  # llama3 travels as the rope_freqs tensor
    elif rtype == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rtype == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if "original_max_position_embeddings" in rope:
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    else:
        raise UnsupportedArchitecture(f"config.json: rope_type {rtype!r} not supported by the llama GGUF arch")


LLAMA = Architecture(
    name="llama",
    hf_architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    gguf_arch="llama",
    write_hparams=llama_write_hparams,
    map_name=llama_map_name,
    transform=llama_transform,
    expected_tensors=llama_expected_tensors,
    extra_tensors=llama_extra_tensors,
    tokenizer_kinds=("gpt2",),
)
