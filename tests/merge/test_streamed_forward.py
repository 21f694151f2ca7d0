"""The streamed reference forward equals transformers' full float32 forward on every architecture
the converter supports, with and without a PEFT adapter, and falls back by name where it must."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgelora.merge.view import MergedView
from edgelora.merge.streamed_forward import reference_logits

MAX_DELTA = 1e-4
VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)
GEMMA3_TEXT = dict(COMMON, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
CONFIGS = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        COMMON, tie_word_embeddings=False, attention_bias=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(COMMON, sliding_window=None, tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(COMMON, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(COMMON, head_dim=32, tie_word_embeddings=True)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        COMMON, head_dim=16, query_pre_attn_scalar=16, sliding_window=4, final_logit_softcapping=3.0,
        attn_logit_softcapping=5.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(GEMMA3_TEXT, final_logit_softcapping=4.0)),
    "gemma3-mm": ("Gemma3Config", "Gemma3ForConditionalGeneration", dict(
        text_config=GEMMA3_TEXT, mm_tokens_per_image=4, boi_token_index=3, eoi_token_index=4, image_token_index=5,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14))),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        COMMON, num_key_value_heads=4, partial_rotary_factor=0.5, original_max_position_embeddings=32,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0 + i / 8 for i in range(4)],
                         "long_factor": [2.0 + i / 4 for i in range(4)]})),
}
# Longer than the sliding windows and than phi3's original context (longrope's long factors)
BATCHES = [[1, 7, 9, 11, 13, 20, 21, 22, 30], [1, 40, 41], list(range(1, 48)) + [7] * 9]


def _build(kind: str, dest: Path, seed: int = 0) -> Path:
    import torch
    import transformers as tf

    cfg_cls, model_cls, kwargs = CONFIGS[kind]
    model = getattr(tf, model_cls)(getattr(tf, cfg_cls)(**kwargs)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.15 if p.dim() >= 2 else 0.3
            p.copy_((0.0 if "norm" not in name or kind.startswith("gemma") else 1.0)
                    + torch.randn(p.shape, generator=g) * scale)
    model.save_pretrained(str(dest), safe_serialization=True)
    return dest


def _adapter(model_dir: Path, dest: Path, targets=("q_proj", "v_proj", "down_proj", "qkv_proj"), **extra) -> Path:
    """A PEFT adapter with random (non-zero) A and B, saved by PEFT itself."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=[t for t in targets if t in names], **extra)
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    peft_model.save_pretrained(str(dest))
    return dest


def _full_logits(model_dir: Path, adapter_dir: Path | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0] for ids in BATCHES]


def _max_delta(a, b) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_streamed_equals_full_forward(kind, tmp_path):
    model = _build(kind, tmp_path / "m")
    got = reference_logits(model, BATCHES)
    if kind == "gemma3-mm":
        # saved under the legacy names (language_model.model.*) that transformers renames on load:
        # not guessed at, the full model runs and the result says why
        assert got.mode == "full" and "language_model" in got.why_full
    else:
        assert got.mode == "streamed", got.why_full
    ref = _full_logits(model)
    assert _max_delta(got.logits, ref) <= MAX_DELTA
    assert max(float(r.abs().max()) for r in ref) > 1.0  # not a trivially flat model


@pytest.mark.parametrize("kind", ["llama3", "gemma3", "phi3"])
def test_streamed_peft_and_merged_equal_full_peft(kind, tmp_path):
    model = _build(kind, tmp_path / "m")
    adapter = _adapter(model, tmp_path / "a", use_rslora=True, rank_pattern={"v_proj": 2},
                       alpha_pattern={"down_proj": 3})
    ref = _full_logits(model, adapter)
    peft_side = reference_logits(model, BATCHES, adapter_dir=adapter)
    assert peft_side.mode == "streamed", peft_side.why_full
    assert _max_delta(peft_side.logits, ref) <= MAX_DELTA
    with MergedView(model, adapter) as view:
        merged = reference_logits(model, BATCHES, view=view)
    assert merged.mode == "streamed"
    assert _max_delta(merged.logits, ref) <= 1e-3  # merged weights: another float32 summation order
    # the adapter does something: without it the logits are far away
    assert _max_delta(reference_logits(model, BATCHES).logits, ref) > 0.1


def test_saved_modules_fall_back_to_full_model_by_name(tmp_path):
    model = _build("llama3", tmp_path / "m")
    adapter = _adapter(model, tmp_path / "a", modules_to_save=["lm_head"])
    got = reference_logits(model, BATCHES, adapter_dir=adapter)
    assert got.mode == "full" and "lm_head" in got.why_full
    assert _max_delta(got.logits, _full_logits(model, adapter)) <= MAX_DELTA


def test_renamed_checkpoint_keys_fall_back(tmp_path):
    """A checkpoint whose tensor names are not the model's parameter names (transformers renames
    such keys on load) is not guessed at: the full model runs, and says why."""
    from safetensors.torch import load_file, save_file

    model = _build("qwen2", tmp_path / "m")
    tensors = load_file(str(model / "model.safetensors"))
    renamed = {k.replace("model.layers.", "model.decoder_layers."): v for k, v in tensors.items()}
    save_file(renamed, str(model / "model.safetensors"), metadata={"format": "pt"})
    got = reference_logits(model, BATCHES[:1])
    assert got.mode == "full" and "model.layers.0" in got.why_full


def test_probes_grouped_within_the_logits_budget(tmp_path):
    model = _build("qwen2", tmp_path / "m")
    one_group = reference_logits(model, BATCHES)
    per_probe = reference_logits(model, BATCHES, logits_budget_bytes=1)  # one probe per group
    assert _max_delta(one_group.logits, per_probe.logits) <= MAX_DELTA
    assert json.loads((model / "config.json").read_text())["vocab_size"] == VOCAB
