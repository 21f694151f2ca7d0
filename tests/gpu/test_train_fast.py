"""The fast CUDA path (opt-in: ``pytest -m gpu``): NF4 base kept in bf16, autocast, Liger kernels, packing."""

import json

import pytest

from edgelora.data.chat import encode_chat
from edgelora.training.packing import collate, pack_rows
from edgelora.testing.tiny import example
from edgelora.config import TrainConfig
from edgelora.testing.tiny import train_args
from edgelora.training.loop import train_lora

pytestmark = pytest.mark.gpu


def _nf4_peft(tiny_llama_dir, kernels: bool):
    import torch
    from peft import LoraConfig, get_peft_model

    from edgelora.training.kernels import apply_fused_kernels
    from edgelora.training.setup import load_model

    model = load_model(tiny_llama_dir, "cuda", "nf4", "bfloat16")
    applied = apply_fused_kernels(model, "cuda") if kernels else []
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    return model, applied


def test_packed_equals_padded_with_fused_kernels_on_nf4(tiny_llama_dir):
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("liger_kernel")
    import torch
    from transformers import AutoTokenizer

    from edgelora.training.loop import loss_sum_of

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    convs = [[{"role": "user", "content": f"Question {i}? " + "word " * (i * 5)},
              {"role": "assistant", "content": "Answer " + "x " * (9 - i)}] for i in range(8)]
    data = [encode_chat(tok, c, max_length=256) for c in convs]
    padded = collate([[e] for e in data], tok.pad_token_id, "cuda", packed=False)
    rows = pack_rows(data, list(range(len(data))), row_tokens=256)
    packed = collate([[data[i] for i in r] for r in rows], tok.pad_token_id, "cuda", packed=True)

    plain, _ = _nf4_peft(tiny_llama_dir, kernels=False)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = float(loss_sum_of(plain, padded, True))
    del plain
    fast, applied = _nf4_peft(tiny_llama_dir, kernels=True)
    assert "liger:rms_norm" in applied and "liger:swiglu" in applied
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        fused_padded = float(loss_sum_of(fast, padded, True, fused=True))
        fused_packed = float(loss_sum_of(fast, packed, True, fused=True))
    # bf16 compute: agreement to a few parts in a thousand.
    assert fused_padded == pytest.approx(ref, rel=5e-3)
    assert fused_packed == pytest.approx(fused_padded, rel=5e-3)


def test_fast_qlora_trains_and_records_kernels_and_memory(tiny_llama_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    train = [example(f"Item {i}?", "banana split") for i in range(32)]
    held = [example(f"Item {i}?", "banana split") for i in range(32, 36)]
    out = tmp_path / "adapter"
    report = train_lora(base_dir=tiny_llama_dir, train_examples=train, eval_examples=held, out_dir=out, max_length=64, config=TrainConfig(r=8, alpha=16, learning_rate=2e-2, max_steps=12, batch_size=8, eval_every=4, device="cuda", packing=True))
    assert report["quantization"] == "nf4" and report["packing"] is True
    assert report["peak_gpu_memory_bytes"] > 0
    if report["kernels"]:
        assert "liger:fused_linear_cross_entropy" in report["kernels"]
    assert report["best_eval_loss"] < report["initial_eval_loss"] - 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]


def _nf4_model_and_probe(tiny_llama_dir):
    """A tiny NF4 + LoRA model in train mode and a function giving (loss, LoRA gradients) on a fixed batch."""
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import AutoTokenizer

    from edgelora.training.loop import loss_sum_of

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    data = [encode_chat(tok, example(f"Q {i}?", "an answer " * (i + 1))["messages"], max_length=128) for i in range(4)]
    batch = collate([[e] for e in data], tok.pad_token_id, "cuda", packed=False)
    model, _ = _nf4_peft(tiny_llama_dir, kernels=False)
    model.train()

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_sum_of(model, batch, True)
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    return model, loss_and_grads


def test_dequantized_weight_cache_gives_the_same_loss_and_gradients(tiny_llama_dir):
    import torch

    from edgelora.training.kernels import cache_dequantized_weights

    model, loss_and_grads = _nf4_model_and_probe(tiny_llama_dir)
    ref_loss, ref_grads = loss_and_grads()
    assert cache_dequantized_weights(model) == 14  # 2 layers x 7 linears
    loss, grads = loss_and_grads()
    assert loss == pytest.approx(ref_loss, rel=1e-3)
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=2e-2, atol=1e-4), name


def test_lean_nf4_matmul_gives_the_same_loss_and_gradients(tiny_llama_dir):
    import torch

    from edgelora.training.kernels import cache_dequantized_weights, lean_nf4_matmuls

    model, loss_and_grads = _nf4_model_and_probe(tiny_llama_dir)
    ref_loss, ref_grads = loss_and_grads()
    # Both layers recompute: the 2 + 2 k/v projections are the cheapest to cache.
    assert cache_dequantized_weights(model, 4) == 4
    cached = sorted(n.removesuffix(".base_layer").split(".")[-1] for n, m in model.named_modules()
                    if hasattr(m, "edgelora_dense_weight"))
    assert cached == ["k_proj", "k_proj", "v_proj", "v_proj"]
    assert lean_nf4_matmuls(model) == 10
    loss, grads = loss_and_grads()
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-3, atol=1e-6), name


def test_memory_budget_chooses_settings_that_fit_and_records_them(tiny_llama_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    train = [example(f"Item {i}?", "banana split " * (i % 5 + 1)) for i in range(32)]
    held = [example(f"Item {i}?", "banana split") for i in range(32, 36)]
    common = dict(base_dir=tiny_llama_dir, train_examples=train, eval_examples=held, r=8, alpha=16,
                  learning_rate=2e-2, max_steps=6, batch_size=8, eval_every=3, max_length=64, device="cuda")
    # Ample budget for a tiny model: nothing recomputes, every weight is cached.
    roomy = train_lora(out_dir=tmp_path / "roomy", **train_args(common, memory_budget_gib=1.0))
    plan = roomy["memory_plan"]
    assert plan["recompute_layers"] == 0 == roomy["recomputed_layers"]
    assert plan["dequant_cache"] == 14 == roomy["dequantized_weights_cached"]
    assert roomy["lean_nf4_matmuls"] == 0  # every weight cached: none left on the lean path
    assert plan["probe"]["layer_activation_bytes"] > 0 and plan["probe"]["layer_forward_s"] > 0
    assert roomy["peak_gpu_memory_bytes"] <= 1.0 * 2**30
    # A budget below anything possible: the smallest setting, and the same first loss.
    tight = train_lora(out_dir=tmp_path / "tight", **train_args(common, memory_budget_gib=0.001))
    assert tight["memory_plan"]["recompute_layers"] == 2 and tight["dequantized_weights_cached"] == 0
    assert tight["lean_nf4_matmuls"] == 14
    first = [json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0])["loss"] for d in ("roomy", "tight")]
    assert first[0] == pytest.approx(first[1], rel=1e-3)


def test_defaults_plan_memory_from_free_gpu_memory_and_record_it(tiny_llama_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    import torch

    train = [example(f"Item {i}?", "banana split " * (i % 5 + 1)) for i in range(32)]
    common = dict(base_dir=tiny_llama_dir, train_examples=train, eval_examples=[], r=8, alpha=16,
                  learning_rate=2e-2, max_steps=4, batch_size=8, max_length=64, device="cuda")
    free = torch.cuda.mem_get_info()[0] / 2**30
    auto = train_lora(out_dir=tmp_path / "auto", **train_args(common))  # nothing set: the automatic plan
    plan = auto["memory_plan"]
    assert plan["automatic"] is True and 0 < plan["budget_gib"] <= free
    assert auto["lora"]["dropout"] == 0.0
    assert plan["recompute_layers"] == 0 == auto["recomputed_layers"] and auto["dequantized_weights_cached"] == 14
    least = train_lora(out_dir=tmp_path / "least", **train_args(common, memory_budget_gib=-1))
    assert least["memory_plan"] is None and least["recomputed_layers"] == 2 and least["dequantized_weights_cached"] == 0
    hand = train_lora(out_dir=tmp_path / "hand", **train_args(common, recompute_layers=1))  # a knob set by hand wins
    assert hand["memory_plan"] is None and hand["recomputed_layers"] == 1
