"""NF4 merge base: bitsandbytes' round trip bit for bit, and the auto choice between bases."""

from __future__ import annotations

import json
import shutil

import pytest

from edgelora.config import Config, MergeConfig, problems
from edgelora.merge.view import MergedView
from edgelora.merge.base_choice import base_filter_for, choose_merge_base
from edgelora.merge.alpha_check import alpha_check
from edgelora.merge.nf4 import Nf4Base, is_quantized_in_qlora, nf4_roundtrip
from model_fixtures import PROMPTS, make_adapter

# NF4 code book (QLoRA paper, appendix E): quantiles of N(0, 1) normalised to [-1, 1].
NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0)


def _bits(t):
    import torch

    return t.contiguous().view(torch.int16)


def test_roundtrip_single_quant_is_nf4_by_definition():
    """Independent of bitsandbytes' code: nearest code point per element times its block absmax."""
    import torch

    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    got = nf4_roundtrip(w, double_quant=False)
    blocks = w.float().reshape(-1, 64)
    absmax = blocks.abs().amax(-1, keepdim=True)
    code = torch.tensor(NF4_CODE)
    idx = ((blocks / absmax)[..., None] - code).abs().argmin(-1)
    want = (code[idx] * absmax).reshape(w.shape).to(torch.bfloat16)
    assert torch.equal(_bits(got), _bits(want))
    assert not torch.equal(_bits(got), _bits(w))  # it does quantize


@pytest.mark.parametrize("double_quant", [False, True])
def test_roundtrip_equals_the_4bit_model_transformers_loads(tiny_llama_dir, double_quant):
    """transformers + bitsandbytes load the base in NF4 (QLoRA's recipe) on CPU; every Linear4bit's
    dequantized weight must equal our round trip of the base tensor, bit for bit."""
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=qcfg, dtype=torch.bfloat16,
                                                 device_map="cpu", local_files_only=True)
    checked = 0
    with MergedView(tiny_llama_dir) as view:
        for name, module in model.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                assert module.weight.quant_state.blocksize == 64
                theirs = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                ours = nf4_roundtrip(view.base_tensor(name + ".weight"), double_quant=double_quant)
                assert torch.equal(_bits(ours), _bits(theirs.to(torch.bfloat16))), name
                assert is_quantized_in_qlora(name + ".weight", ours.shape)
                checked += 1
    assert checked == 2 * 7
    assert not is_quantized_in_qlora("model.embed_tokens.weight", (10, 4))
    assert not is_quantized_in_qlora("lm_head.weight", (10, 4))


def test_nf4_view_changes_linear_weights_only(tiny_llama_dir):
    import torch

    with MergedView(tiny_llama_dir) as plain, MergedView(tiny_llama_dir, base_filter=Nf4Base()) as nf4:
        for name in plain.names():
            same = torch.equal(plain.get(name), nf4.get(name))
            assert same == (not is_quantized_in_qlora(name, plain.shape(name))), name


@pytest.fixture(scope="module")
def qlora_adapter(tiny_llama_dir, tmp_path_factory):
    """A random adapter recorded as trained on the NF4 base (what train.py writes on CUDA)."""
    out = make_adapter(tiny_llama_dir, tmp_path_factory.mktemp("qlora-adapter"), seed=3)
    (out / "train_report.json").write_text(json.dumps({"quantization": "nf4"}))
    return out


def test_auto_measures_both_bases_and_picks_the_closer(tiny_llama_dir, qlora_adapter):
    report = choose_merge_base(tiny_llama_dir, qlora_adapter, PROMPTS, "auto")
    bf16, nf4 = report["candidates"]["bf16"], report["candidates"]["nf4"]
    # the NF4-merged model is the 4-bit reference up to float32 summation order
    assert nf4["max_abs_diff"] < 1e-3 and nf4["top1_agreement"] == 1.0
    assert bf16["mean_abs_diff"] > 10 * nf4["mean_abs_diff"]
    assert report["chosen"] == "nf4" and report["trained_in_nf4"] is True
    assert report["nf4"]["blocksize"] == 64 and report["nf4"]["double_quant"] is True


def test_configured_base_wins_and_plain_adapters_merge_into_bf16(tiny_llama_dir, qlora_adapter, tmp_path):
    assert choose_merge_base(tiny_llama_dir, qlora_adapter, PROMPTS, "bf16") == {
        "mode": "bf16", "chosen": "bf16", "trained_in_nf4": True}
    plain = tmp_path / "plain"
    shutil.copytree(qlora_adapter, plain)
    (plain / "train_report.json").write_text(json.dumps({"quantization": "none"}))
    report = choose_merge_base(tiny_llama_dir, plain, PROMPTS, "auto")
    assert report["chosen"] == "bf16" and "candidates" not in report


def test_alpha_check_on_the_nf4_base(tiny_llama_dir, qlora_adapter):
    report = alpha_check(tiny_llama_dir, qlora_adapter, PROMPTS, base_filter=base_filter_for("nf4"))
    assert report["max_abs_diff"] < 1e-3 and report["top1_agreement"] == 1.0


def test_merge_base_config_is_checked():
    assert problems(Config(merge=MergeConfig(base="nf4"))) == problems(Config())
    assert any("[merge] base" in p for p in problems(Config(merge=MergeConfig(base="int8"))))


def test_gguf_converted_on_the_nf4_base_matches_the_4bit_reference(tiny_llama_dir, qlora_adapter, tmp_path):
    from edgelora.gguf.convert import convert
    from edgelora.gguf.validate import compare_logits

    out = tmp_path / "nf4-merged.f32.gguf"
    convert(tiny_llama_dir, out, adapter_dir=qlora_adapter, outtype="f32", base_filter=Nf4Base())
    got = compare_logits(out, tiny_llama_dir, qlora_adapter, prompts=PROMPTS[:1], n_tokens=24,
                         base_filter=Nf4Base())
    assert got["top1_agreement"] >= 0.98 and got["max_abs_delta"] < 2e-2, got
