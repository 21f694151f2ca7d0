"""LoRA GGUF sidecar: base GGUF + adapter GGUF in real llama.cpp vs the PEFT-attached HF model."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgelora.errors import ConversionError
from edgelora.gguf.adapter import compare_sidecar, convert_adapter, file_alpha
from edgelora.gguf.architectures import LLAMA, permute_rotary
from edgelora.gguf.convert import convert
from edgelora.gguf.reader import f32_tensor, read_metadata
from edgelora.merge.view import MergedView
from model_fixtures import make_adapter

PROMPTS = ("The capital of France is", "<|im_start|>user\nHi  there 2+2=?<|im_end|>\n")
# float32 on both sides; llama.cpp's kernels sum in another order (observed ~1e-4)
MAX_DELTA = 2e-2


@pytest.fixture(scope="module")
def base_gguf(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sidecar-base") / "base.f32.gguf"
    convert(tiny_llama_dir, out, outtype="f32")
    return out


@pytest.fixture(scope="module")
def patterned_adapter(tiny_llama_dir, tmp_path_factory):
    """rsLoRA with per-module ranks and alphas: every way the file alpha can be wrong."""
    return make_adapter(tiny_llama_dir, tmp_path_factory.mktemp("sidecar-adapter"), seed=7, r=4, lora_alpha=8,
                        use_rslora=True, rank_pattern={"q_proj": 8, "gate_proj": 2},
                        alpha_pattern={"down_proj": 3, "v_proj": 16, "k_proj": 5})


@pytest.fixture(scope="module")
def sidecar(tiny_llama_dir, patterned_adapter, base_gguf, tmp_path_factory):
    """Written and validated through the API the CLI calls (base GGUF + sidecar vs PEFT)."""
    from edgelora import api

    out = tmp_path_factory.mktemp("sidecar") / "adapter.f32.gguf"
    report = api.convert_adapter(tiny_llama_dir, patterned_adapter, out, outtype="f32", base_gguf=base_gguf,
                                 prompts=PROMPTS, n_tokens=32)
    return out, report


def test_sidecar_matches_peft_attached_model(sidecar):
    path, report = sidecar
    assert report["convert"]["lora_pairs"] == 2 * 7 and report["convert"]["baked_scales"] > 0
    got = report["validation"]
    assert got["positions"] == 2 * 32
    assert got["top1_agreement"] >= 0.98 and got["max_abs_delta"] < MAX_DELTA, got


def test_sidecar_metadata_and_baked_scales(tiny_llama_dir, patterned_adapter, sidecar):
    import numpy as np

    path, _ = sidecar
    meta = read_metadata(path)
    assert meta.kv["general.type"] == "adapter" and meta.kv["adapter.type"] == "lora"
    assert meta.kv["general.architecture"] == "llama" and meta.kv_types["adapter.lora.alpha"] == ("FLOAT32",)
    alpha = meta.kv["adapter.lora.alpha"]
    assert alpha == pytest.approx(8 * 2)  # rsLoRA: alpha·sqrt(r) makes llama.cpp's alpha/r = alpha/sqrt(r)
    assert not any(k.startswith("tokenizer.") for k in meta.kv)
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    with MergedView(tiny_llama_dir, patterned_adapter) as view:
        for hf_name in view.merged_names():
            gguf_name = LLAMA.map_name(hf_name, cfg)
            a = f32_tensor(path, meta, gguf_name + ".lora_a")
            b = f32_tensor(path, meta, gguf_name + ".lora_b")
            va, vb = (t.numpy() for t in view.lora_factors(hf_name))
            want = view.lora_scale(hf_name) * LLAMA.transform(gguf_name, vb @ va, cfg)
            got = alpha / b.shape[1] * (b @ a)  # what llama.cpp computes for this tensor
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=hf_name)


def test_missing_lora_b_permutation_is_caught(tiny_llama_dir, patterned_adapter, base_gguf, tmp_path):
    """Bug injection: the sidecar written without llama's q/k permutation must fail the check."""
    unpermuted = dataclasses.replace(LLAMA, transform=lambda name, arr, cfg: arr)
    out = tmp_path / "bad.gguf"
    convert_adapter(tiny_llama_dir, patterned_adapter, out, outtype="f32", architectures={"llama": unpermuted})
    got = compare_sidecar(base_gguf, out, tiny_llama_dir, patterned_adapter, prompts=PROMPTS, n_tokens=32)
    assert not (got["top1_agreement"] >= 0.98 and got["max_abs_delta"] < MAX_DELTA), got


def test_file_alpha_and_row_wise_guard(tiny_llama_dir, patterned_adapter, tmp_path):
    assert file_alpha({"r": 16, "lora_alpha": 32}) == 32
    assert file_alpha({"r": 16, "lora_alpha": 32, "use_rslora": True}) == 128
    # a transform that is not row-wise (here: a column flip) cannot be expressed on lora_b
    flipped = dataclasses.replace(LLAMA, transform=lambda name, arr, cfg: arr[:, ::-1].copy())
    with pytest.raises(ConversionError, match="not row-wise"):
        convert_adapter(tiny_llama_dir, patterned_adapter, tmp_path / "x.gguf", architectures={"llama": flipped})
    assert not list(tmp_path.iterdir())
    assert permute_rotary  # the permutation the sidecar relies on is the converter's own


def test_sidecar_refuses_modules_to_save(tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "mts", r=2, target_modules=["q_proj"],
                           modules_to_save=["lm_head"])
    with pytest.raises(ConversionError, match="saved whole"):
        convert_adapter(tiny_llama_dir, adapter, tmp_path / "x.gguf")


def test_cli_convert_adapter_only(tiny_llama_dir, patterned_adapter, tmp_path):
    from click.testing import CliRunner

    from edgelora.cli import cli

    out = tmp_path / "cli-adapter.gguf"
    result = CliRunner().invoke(cli, ["convert", str(tiny_llama_dir), "--adapter", str(patterned_adapter),
                                      "--adapter-only", "--no-validate", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["type"] == "lora-adapter" and report["outtype"] == "f16"
    assert read_metadata(out).kv["general.type"] == "adapter"
    result = CliRunner().invoke(cli, ["convert", str(tiny_llama_dir), "--adapter-only", "-o", str(out)])
    assert result.exit_code != 0 and "--adapter" in result.output
