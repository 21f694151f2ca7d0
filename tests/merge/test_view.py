"""The lazy merged view against PEFT's own merge, and the checks around it."""

from __future__ import annotations

from model_fixtures import PROMPTS, make_adapter

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from edgelora.errors import AdapterMismatch, FidelityError, UnsafeWeightsError
from edgelora.merge.view import MergedView
from edgelora.merge.alpha_check import alpha_check, materialize, tensor_identity_check

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
def peft_merged_state(base_dir: Path, adapter_dir: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama_dir, tmp_path_factory):
    return make_adapter(tiny_llama_dir, tmp_path_factory.mktemp("adapter"))


def assert_view_matches_peft(view: MergedView, ref: dict) -> int:
    import torch

    merged = 0
    for name in view.names():
        got = view.get(name)
        assert torch.allclose(got, ref[name], atol=1e-6, rtol=1e-5), name
        merged += view.is_merged(name)
    return merged


def test_view_equals_peft_merge_and_unload(tiny_llama_dir, adapter_dir):
    ref = peft_merged_state(tiny_llama_dir, adapter_dir)
    with MergedView(tiny_llama_dir, adapter_dir) as view:
        assert view.lora_scale("model.layers.0.self_attn.q_proj.weight") == pytest.approx(2.0)
        assert assert_view_matches_peft(view, ref) == 2 * len(TARGETS)
        with MergedView(tiny_llama_dir) as base:  # the adapter really changes something
            name = "model.layers.1.mlp.down_proj.weight"
            assert (view.get(name) - base.get(name)).abs().max() > 1e-3
        report = tensor_identity_check(view)
    assert report["checked"] == 2 * len(TARGETS) and report["max_rel_err"] < 1e-5


def test_rslora_scale(tiny_llama_dir, tmp_path):
    ad = make_adapter(tiny_llama_dir, tmp_path / "ad", r=16, lora_alpha=8, use_rslora=True)
    with MergedView(tiny_llama_dir, ad) as view:
        assert view.lora_scale("model.layers.0.mlp.up_proj.weight") == pytest.approx(8 / math.sqrt(16))
        assert_view_matches_peft(view, peft_merged_state(tiny_llama_dir, ad))


def test_rank_and_alpha_pattern(tiny_llama_dir, tmp_path):
    # PEFT's patterns are regexes matched against the end of the module path.
    ad = make_adapter(tiny_llama_dir, tmp_path / "ad", rank_pattern={"q_proj": 2, r"layers\.1\.mlp\.down_proj": 8},
                      alpha_pattern={"v_proj": 3})
    with MergedView(tiny_llama_dir, ad) as view:
        assert view.lora_pair("model.layers.0.self_attn.q_proj.weight").r == 2
        assert view.lora_pair("model.layers.1.mlp.down_proj.weight").r == 8
        assert view.lora_pair("model.layers.0.mlp.down_proj.weight").r == 4
        assert view.lora_scale("model.layers.1.mlp.down_proj.weight") == pytest.approx(8 / 8)
        assert view.lora_scale("model.layers.0.self_attn.v_proj.weight") == pytest.approx(3 / 4)
        assert_view_matches_peft(view, peft_merged_state(tiny_llama_dir, ad))


def test_modules_to_save_and_embedding_lora(tiny_llama_dir, tmp_path):
    # "norm" matches every RMSNorm (PEFT matches by suffix); embed_tokens gets an embedding LoRA.
    ad = make_adapter(tiny_llama_dir, tmp_path / "ad", target_modules=["q_proj", "embed_tokens"],
                      modules_to_save=["norm"])
    import torch

    ref = peft_merged_state(tiny_llama_dir, ad)
    with MergedView(tiny_llama_dir, ad) as view, MergedView(tiny_llama_dir) as base:
        assert view.is_merged("model.norm.weight") and view.lora_pair("model.norm.weight") is None
        assert view.lora_pair("model.embed_tokens.weight").kind == "embedding"
        for name in base.names():
            assert torch.allclose(view.get(name), ref[name], atol=1e-6, rtol=1e-5), name
        # The base is tied; PEFT's LoRA changes only the input embedding, so the adapter-attached
        # model still projects through the original matrix (merge_and_unload would change both).
        assert not view.config["tie_word_embeddings"]
        assert torch.equal(view.get("lm_head.weight"), base.get("model.embed_tokens.weight"))
        tensor_identity_check(view)
    report = alpha_check(tiny_llama_dir, ad, PROMPTS[:1], tolerance=1e-3)
    assert report["top1_agreement"] == 1.0


def test_adapter_for_a_different_base(tiny_llama_dir, tmp_path):
    from conftest import make_tiny_llama

    other = make_tiny_llama(tmp_path / "wide", tiny_llama_dir, hidden=96, heads=4, kv_heads=2)
    ad = make_adapter(other, tmp_path / "ad")
    with pytest.raises(AdapterMismatch, match=r"adapter does not fit base: model\.layers\.0\..*_proj\.weight is"):
        MergedView(tiny_llama_dir, ad)


def test_inconsistent_rank_in_config(tiny_llama_dir, adapter_dir, tmp_path):
    ad = tmp_path / "ad"
    shutil.copytree(adapter_dir, ad)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["r"] = 8
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterMismatch, match="has rank 4 .* says r=8"):
        MergedView(tiny_llama_dir, ad)
    cfg["r"], cfg["lora_alpha"] = 4, 0
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterMismatch, match="lora_alpha must be a positive number"):
        MergedView(tiny_llama_dir, ad)


def test_dora_and_pickle_adapters_refused(tiny_llama_dir, adapter_dir, tmp_path):
    ad = tmp_path / "ad"
    shutil.copytree(adapter_dir, ad)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    (ad / "adapter_config.json").write_text(json.dumps(dict(cfg, use_dora=True)))
    with pytest.raises(AdapterMismatch, match="use_dora: DoRA adapters are not supported"):
        MergedView(tiny_llama_dir, ad)
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    (ad / "adapter_model.safetensors").rename(ad / "adapter_model.bin")
    with pytest.raises(UnsafeWeightsError, match="adapter_model.bin"):
        MergedView(tiny_llama_dir, ad)


def test_alpha_check_passes_and_catches_a_wrong_scale(tiny_llama_dir, adapter_dir):
    report = alpha_check(tiny_llama_dir, adapter_dir, PROMPTS, tolerance=1e-3)
    assert report["top1_agreement"] == 1.0 and report["max_abs_diff"] < 1e-3
    assert report["positions"] > 40

    view = MergedView(tiny_llama_dir, adapter_dir)
    name = "model.layers.1.self_attn.o_proj.weight"
    view._lora[name] = dataclasses.replace(view._lora[name], scale=view._lora[name].scale * 1.5)
    with pytest.raises(FidelityError, match=r"max \|Δ\| .* \(limit 0.001\)"):
        alpha_check(tiny_llama_dir, adapter_dir, PROMPTS, tolerance=1e-3, view=view)
    view.close()


def test_materialize_round_trips(tiny_llama_dir, adapter_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from edgelora.sources.fetch import check_base_dir

    out = tmp_path / "merged"
    with MergedView(tiny_llama_dir, adapter_dir) as view:
        # A tiny shard size forces several shards and an index.
        report = materialize(view, out, shard_bytes=200_000)
        assert len(report["shards"]) > 1
        check_base_dir(out)  # allowlist, tokenizer present, headers sane, shards all there
        assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
        with MergedView(out) as back:
            assert sorted(back.names()) == sorted(view.names())
            for n in view.names():
                assert torch.equal(back.get(n), view.get(n)), n
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.config.tie_word_embeddings
    assert not list(tmp_path.glob(".merged*"))  # no staging left behind


def test_modules_to_save_lm_head_on_a_tied_base(tiny_llama_dir, tmp_path):
    # The tied base has no lm_head tensor; PEFT trains its own copy, so the merge unties.
    ad = make_adapter(tiny_llama_dir, tmp_path / "ad", target_modules=["q_proj"], modules_to_save=["lm_head"])
    with MergedView(tiny_llama_dir, ad) as view:
        assert "lm_head.weight" in view.names() and not view.config["tie_word_embeddings"]
        report = materialize(view, tmp_path / "merged")
    assert report["tensors"] == len(MergedView(tiny_llama_dir).names()) + 1
    alpha_check(tiny_llama_dir, ad, PROMPTS[:1], tolerance=1e-3)
