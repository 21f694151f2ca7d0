"""HF Llama -> GGUF: convert tiny models, load them in llama.cpp, compare against HF."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from conftest import make_tiny_llama
from edgelora.errors import ConversionError, UnknownTokenizer, UnsupportedArchitecture
from edgelora.gguf.architectures import LLAMA, find_architecture
from edgelora.gguf.convert import convert
from edgelora.gguf.reader import f32_tensor, read_metadata
from edgelora.gguf.tokenizer import pre_tokenizer_name
from edgelora.gguf.validate import check_tokenization, compare_logits, read_back, validate

PROMPTS = ("The capital of France is", "<|im_start|>user\nHi  there 2+2=?<|im_end|>\n")


@pytest.fixture(scope="module")
def tok_dir(smollm2_dir):
    return smollm2_dir


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    """The shared tiny Llama: tied embeddings, GQA 4/2, SmolLM2's real tokenizer."""
    return tiny_llama_dir


def _tensor_names(path) -> dict:
    from gguf import GGMLQuantizationType

    return {name: GGMLQuantizationType(t).name for name, _, t, _ in read_metadata(path).tensors}


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_convert_matches_hf(tiny, tmp_path, outtype):
    out = tmp_path / f"tiny.{outtype}.gguf"
    seen = []
    report = convert(tiny, out, outtype=outtype, progress=lambda d, t, n: seen.append((d, t)))
    assert report["pre"] == "smollm" and report["outtype"] == outtype
    assert seen[-1] == (report["n_tensors"], report["n_tensors"])
    assert not list(tmp_path.glob("*.partial"))
    names = _tensor_names(out)
    assert "output.weight" not in names  # tied
    assert names["blk.0.attn_norm.weight"] == "F32"
    assert names["blk.0.attn_q.weight"] == outtype.upper()
    result = validate(out, tiny, min_top1=0.98, prompts=PROMPTS, n_tokens=32)
    assert result["tokenization"]["chat_template_checked"]
    assert result["logits"]["top1_agreement"] >= 0.98
    assert result["logits"]["max_abs_delta"] < (1e-2 if outtype == "f32" else 0.1)
    rb = result["read_back"]
    assert rb["rope_freq_base"] == pytest.approx(100000.0) and rb["rms_eps"] == pytest.approx(1e-5)


def test_bf16_loads_and_agrees(tiny, tmp_path):
    out = tmp_path / "tiny.bf16.gguf"
    convert(tiny, out, outtype="bf16")
    assert _tensor_names(out)["blk.1.ffn_down.weight"] == "BF16"
    assert compare_logits(out, tiny, prompts=PROMPTS[:1], n_tokens=24)["top1_agreement"] >= 0.9


def test_untied_mqa_bias_head_dim(tok_dir, tmp_path):
    """Untied output, one KV head, attention biases and head_dim != hidden/heads."""
    model = make_tiny_llama(tmp_path / "m", tok_dir, tie=False, kv_heads=1, attention_bias=True, head_dim=32,
                            seed=3)
    out = tmp_path / "m.gguf"
    convert(model, out, outtype="f32")
    names = _tensor_names(out)
    assert "output.weight" in names and "blk.0.attn_k.bias" in names
    kv = read_metadata(out).kv
    assert kv["llama.attention.key_length"] == 32 and kv["llama.attention.head_count_kv"] == 1
    assert compare_logits(out, model, prompts=PROMPTS, n_tokens=32)["top1_agreement"] >= 0.98


def test_llama3_rope_scaling_writes_rope_freqs(tok_dir, tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 100000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    try:
        model = make_tiny_llama(tmp_path / "m", tok_dir, rope_parameters=rope, seed=5)
    except TypeError:  # transformers < 5 spells it rope_scaling
        model = make_tiny_llama(tmp_path / "m", tok_dir, rope_scaling=rope, seed=5)
    out = tmp_path / "m.gguf"
    convert(model, out, outtype="f32")
    assert _tensor_names(out)["rope_freqs.weight"] == "F32"
    res = compare_logits(out, model, prompts=PROMPTS, n_tokens=48)
    assert res["top1_agreement"] >= 0.98 and res["max_abs_delta"] < 1e-2
    # without the factors the file still loads; only the logits show it (measured: 0.63)
    import numpy as np

    flat = dataclasses.replace(LLAMA, extra_tensors=lambda cfg: [("rope_freqs.weight", np.ones(8, np.float32))])
    convert(model, out, outtype="f32", architectures={"llama": flat})
    assert compare_logits(out, model, prompts=PROMPTS, n_tokens=48)["max_abs_delta"] > 0.1


def test_missing_permutation_is_caught(tiny, tmp_path):
    """The ladder must fail a file that loads but is wrong (classic q/k permutation bug)."""
    broken = dataclasses.replace(LLAMA, transform=lambda name, arr, cfg: arr)
    out = tmp_path / "broken.gguf"
    convert(tiny, out, outtype="f32", architectures={"llama": broken})
    assert compare_logits(out, tiny, prompts=PROMPTS, n_tokens=32)["top1_agreement"] < 0.9


def test_adapter_conversion_equals_merged(tiny, tmp_path):
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32, local_files_only=True)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                     init_lora_weights=False)
    torch.manual_seed(1)
    peft_model = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged_dir = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged_dir, safe_serialization=True)

    via_adapter = tmp_path / "adapter.gguf"
    via_merged = tmp_path / "merged.gguf"
    plain = tmp_path / "base.gguf"
    rep = convert(tiny, via_adapter, adapter_dir=tmp_path / "adapter", outtype="f32")
    assert rep["merged_tensors"] == 8
    convert(merged_dir, via_merged, outtype="f32", tokenizer_dir=tiny)
    convert(tiny, plain, outtype="f32")
    a, m, b = ({name: f32_tensor(p, meta, name) for name, *_ in meta.tensors}
               for p, meta in ((p, read_metadata(p)) for p in (via_adapter, via_merged, plain)))
    assert a.keys() == m.keys()
    for name in a:
        np.testing.assert_allclose(a[name], m[name], atol=1e-5, err_msg=name)
    assert not np.allclose(a["blk.0.attn_q.weight"], b["blk.0.attn_q.weight"], atol=1e-3)
    res = compare_logits(via_adapter, tiny, adapter_dir=tmp_path / "adapter", prompts=PROMPTS, n_tokens=32)
    assert res["top1_agreement"] >= 0.98


def _trained_tokenizer_dir(dest: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["the quick brown fox jumps over the lazy dog 12345"] * 50 + ["edge lora gguf tokens"] * 50
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(dest)
    return dest


def test_unknown_tokenizer_hash_refused(tmp_path):
    tok_dir = _trained_tokenizer_dir(tmp_path / "tok")
    with pytest.raises(UnknownTokenizer, match=r"hash [0-9a-f]{64}"):
        pre_tokenizer_name(tok_dir)
    model = make_tiny_llama(tmp_path / "m", tok_dir)
    with pytest.raises(UnknownTokenizer):
        convert(model, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob("*.partial"))


def test_sentencepiece_refused_clearly(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00not a real model")
    with pytest.raises(UnknownTokenizer, match="SentencePiece"):
        pre_tokenizer_name(tmp_path)


def test_pre_tokenizer_name_smollm(tok_dir):
    assert pre_tokenizer_name(tok_dir) == "smollm"


def test_unmapped_tensor_refused_before_writing(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "m"
    shutil.copytree(tiny, model)
    tensors = load_file(str(model / "model.safetensors"))
    import torch

    tensors["model.vision_tower.proj.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="model.vision_tower.proj.weight"):
        convert(model, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_find_architecture_names_config_architectures():
    assert find_architecture({"architectures": ["MistralForCausalLM"]}, {"llama": LLAMA}) is LLAMA
    with pytest.raises(UnsupportedArchitecture, match="GPT2LMHeadModel"):
        find_architecture({"architectures": ["GPT2LMHeadModel"]}, {"llama": LLAMA})


def test_read_back_reports_types(tiny, tmp_path):
    out = tmp_path / "t.gguf"
    convert(tiny, out, outtype="f16")
    rb = read_back(out)
    assert rb["problems"] == [] and rb["pre"] == "smollm" and rb["n_tokens"] == 49152
    assert check_tokenization(out, tiny)["ok"]


@pytest.mark.slow
def test_real_smollm2_converts_faithfully(smollm2_dir, tmp_path):
    """The real 135M model (cheap): llama.cpp's own converter reaches 0.989 top-1 here."""
    model = smollm2_dir
    out = tmp_path / "smol.f16.gguf"
    report = convert(model, out, outtype="f16")
    assert report["pre"] == "smollm" and report["n_tensors"] == 272
    result = validate(out, model, min_top1=0.98, prompts=PROMPTS + ("Once upon a time",), n_tokens=48)
    assert result["logits"]["top1_agreement"] >= 0.98


@pytest.mark.parametrize("value, ok", [(65504.0, True), (-65519.0, True), (65520.0, False),
                                       (-1e6, False), (float("nan"), False), (float("inf"), False)])
def test_f16_output_refuses_weights_that_do_not_fit(value, ok):
    import numpy as np

    from edgelora.errors import ConversionError
    from edgelora.gguf.convert import to_output

    arr = np.array([[0.5, value]], dtype=np.float32)
    if ok:
        assert to_output(arr, False, "f16", "w").dtype == np.float16
    else:
        with pytest.raises(ConversionError, match="overflows float16"):
            to_output(arr, False, "f16", "w")
