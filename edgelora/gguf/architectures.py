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

from edgelora.errors import UnsupportedArchitecture


def _no_extra(config: dict) -> list:
    return []


def _same_config(config: dict) -> dict:
    return config


def _pad_to_embedding(config: dict, n_tokens: int, rows: int) -> int:
    return rows


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
    """``tokenizer.ggml.model`` values this architecture is known to run with."""
    text_config: Callable[[dict], dict] = field(default=_same_config)
    """config.json -> the flat text-model config the other functions read (multimodal wrappers
    nest it under ``text_config`` and omit defaults)."""
    vocab_rows: Callable[[dict, int, int], int] = field(default=_pad_to_embedding)
    """(config, tokenizer size, embedding rows) -> rows written: the token list is padded
    with unused tokens up to it, and embedding/output rows beyond it are dropped."""
    description: str = ""


def find_architecture(config: dict, registry: "dict[str, Architecture]") -> Architecture:
    """The registered entry whose ``hf_architectures`` names one of config.json's ``architectures``
    (``registry``: the plugin registry's architectures, or :func:`edgelora.gguf.builtin.builtin_architectures`)."""
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


def rope_settings(config: dict, layer_type: str | None = None) -> dict:
    """Rope theta and scaling from either config layout.

    transformers < 5 writes ``rope_theta`` + ``rope_scaling``; 5.x writes one
    ``rope_parameters`` dict, or one per attention kind (``{"full_attention": {...},
    "sliding_attention": {...}}``, Gemma 3). A silent default of 10000 would degrade
    Llama 3 and SmolLM2, so every layout is read.
    """
    params: dict = {}
    if isinstance(config.get("rope_scaling"), dict):
        params.update(config["rope_scaling"])
    rp = config.get("rope_parameters")
    if isinstance(rp, dict):
        nested = {k: v for k, v in rp.items() if isinstance(v, dict)}
        if nested:
            params.update(nested.get(layer_type or "full_attention") or {})
        else:
            params.update(rp)
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    return {**params, "rope_theta": float(theta), "rope_type": rope_type}


def write_rope_scaling(writer, rope: dict, arch_name: str, handled: tuple[str, ...] = ()) -> None:
    """The ``rope.scaling.*`` keys for the scaling types llama.cpp reads from keys alone."""
    import gguf

    rtype = rope["rope_type"]
    if rtype == "default" or rtype in handled:
        return
    if rtype == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rtype == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if "original_max_position_embeddings" in rope:
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    else:
        raise UnsupportedArchitecture(
            f"config.json: rope_type {rtype!r} is not supported by the {arch_name} GGUF arch")


def check_activation(config: dict, allowed: tuple[str, ...], arch_name: str,
                     keys: tuple[str, ...] = ("hidden_act",), default: str = "silu") -> None:
    act = next((config[k] for k in keys if config.get(k)), default)
    if act not in allowed:
        raise UnsupportedArchitecture(
            f"config.json: {keys[0]} {act!r} is not supported by the {arch_name} GGUF arch "
            f"(llama.cpp computes {allowed[0]})")


def write_common_hparams(config: dict, writer, *, rope_dims: int | None = None,
                         always_head_dims: bool = False) -> None:
    """Keys every decoder writes the same way; exact values from config.json, never defaults
    where llama.cpp's own default differs from the model's."""
    n_head = int(config["num_attention_heads"])
    hd = head_dim(config)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(int(rope_dims if rope_dims is not None else hd))
    if always_head_dims or hd != int(config["hidden_size"]) // n_head:
        writer.add_key_length(hd)
        writer.add_value_length(hd)
    writer.add_rope_freq_base(rope_settings(config)["rope_theta"])


def tied(config: dict) -> bool:
    # Most configs default to untied; an absent key means untied (Qwen2/Gemma set it explicitly).
    return bool(config.get("tie_word_embeddings", False))


class NameMap:
    """HF tensor name -> GGUF name from two tables (per-layer modules, top-level tensors).

    ``prefixes`` are the HF module paths the text model lives under (tried in order);
    names under ``skip_prefixes`` (vision towers, projectors) are skipped knowingly.
    ``lm_head``: "untied" writes ``output.weight`` unless embeddings are tied; "never"
    always skips it (gemma2: llama.cpp reuses token_embd and rejects an extra tensor).
    """

    def __init__(self, layer_parts: dict[str, str], *, prefixes: tuple[str, ...] = ("model.",),
                 skip_prefixes: tuple[str, ...] = (), lm_head: str = "untied"):
        self.layer_parts = layer_parts
        self.prefixes = prefixes
        self.skip_prefixes = skip_prefixes
        self.lm_head = lm_head

    def __call__(self, hf_name: str, config: dict) -> "str | None":
        if hf_name.endswith("rotary_emb.inv_freq") or hf_name.startswith(self.skip_prefixes):
            return None  # recomputed by llama.cpp from rope keys / not part of the text model
        if hf_name == "lm_head.weight":
            return None if self.lm_head == "never" or tied(config) else "output.weight"
        for prefix in self.prefixes:
            if not hf_name.startswith(prefix):
                continue
            rest = hf_name[len(prefix):]
            if rest == "embed_tokens.weight":
                return "token_embd.weight"
            if rest == "norm.weight":
                return "output_norm.weight"
            m = _LAYER.match(rest)
            if m:
                layer, module, kind = m.groups()
                if module in self.layer_parts and kind in ("weight", "bias"):
                    return f"blk.{layer}.{self.layer_parts[module]}.{kind}"
        raise KeyError(hf_name)


_LAYER = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")


def layer_tensor_names(config: dict, weights: tuple[str, ...], biases: tuple[str, ...] = ()) -> set:
    names = set()
    for i in range(int(config["num_hidden_layers"])):
        names.update(f"blk.{i}.{p}.weight" for p in weights)
        names.update(f"blk.{i}.{p}.bias" for p in biases)
    return names


def top_tensor_names(config: dict, *, output: bool | None = None) -> set:
    names = {"token_embd.weight", "output_norm.weight"}
    if output if output is not None else not tied(config):
        names.add("output.weight")
    return names


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

LLAMA_PARTS = {
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
llama_map_name = NameMap(LLAMA_PARTS)


def llama_transform(gguf_name: str, arr, config: dict):
    if ".attn_q." in gguf_name:
        return permute_rotary(arr, int(config["num_attention_heads"]))
    if ".attn_k." in gguf_name:
        n_kv = int(config.get("num_key_value_heads") or config["num_attention_heads"])
        return permute_rotary(arr, n_kv)
    return arr


def llama_expected_tensors(config: dict) -> set:
    names = top_tensor_names(config) | layer_tensor_names(
        config, tuple(LLAMA_PARTS.values()),
        (("attn_q", "attn_k", "attn_v", "attn_output") if config.get("attention_bias") else ())
        + (("ffn_gate", "ffn_up", "ffn_down") if config.get("mlp_bias") else ()))
    if rope_settings(config)["rope_type"] == "llama3":
        names.add("rope_freqs.weight")
    return names


def llama_extra_tensors(config: dict) -> list:
    if rope_settings(config)["rope_type"] == "llama3":
        return [("rope_freqs.weight", llama3_rope_factors(config))]
    return []


def llama_write_hparams(config: dict, writer) -> None:
    check_activation(config, ("silu", "swish"), "llama")
    write_common_hparams(config, writer)
    # llama3 scaling travels as the rope_freqs tensor
    write_rope_scaling(writer, rope_settings(config), "llama", handled=("llama3",))


LLAMA = Architecture(
    name="llama",
    hf_architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    gguf_arch="llama",
    write_hparams=llama_write_hparams,
    map_name=llama_map_name,
    transform=llama_transform,
    expected_tensors=llama_expected_tensors,
    extra_tensors=llama_extra_tensors,
    tokenizer_kinds=("gpt2", "llama"),
    description="Llama 2/3.x, SmolLM2, Mistral 7B (q/k rows permuted to llama.cpp's rotary layout)",
)


class _KeyRecorder:
    """Stands in for gguf.GGUFWriter when only the checks inside ``write_hparams`` matter."""

    def __init__(self, arch: str):
        self.arch = arch
        self.keys: list[str] = []

    def __getattr__(self, name: str):
        if not name.startswith("add_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.keys.append(name[4:])


def check_convertible(config: dict, arch: Architecture) -> list[str]:
    """Everything an architecture refuses about a config.json, without weights (for ``plan``).

    Runs the entry's own hparams writer against a recorder, so a rope type, activation or
    attention variant llama.cpp cannot compute fails before training, with the same message
    the converter would give. Returns the hparams that would be written.
    """
    text = arch.text_config(config)
    recorder = _KeyRecorder(arch.gguf_arch)
    try:
        arch.write_hparams(text, recorder)
        arch.extra_tensors(text)
        arch.expected_tensors(text)
    except KeyError as e:
        raise UnsupportedArchitecture(f"config.json: {arch.name} needs key {e} that the config lacks") from None
    return recorder.keys
