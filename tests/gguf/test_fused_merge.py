"""The row-chunked merge path gives the same GGUF bytes as the whole-tensor path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from model_fixtures import make_adapter

from edgelora.errors import ConversionError
from edgelora.gguf import convert as convert_mod
from edgelora.gguf import fused_merge
from edgelora.gguf.architectures import LLAMA, permute_rotary
from edgelora.gguf.convert import convert
from edgelora.gguf.families import GEMMA2


@pytest.fixture(scope="module")
def bf16_base_and_adapter(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama stored in bf16 (as real bases are) and a random rsLoRA r=4 adapter on
    every linear layer, with a rank pattern (a per-module scale)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("fused")
    base = root / "base"
    shutil.copytree(tiny_llama_dir, base)
    for f in base.glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(f)).items()}, str(f), metadata={"format": "pt"})
    make_adapter(base, root / "adapter", seed=3, use_rslora=True, rank_pattern={"down_proj": 2})
    return base, root / "adapter"


def _tensors(path):
    from gguf import GGUFReader

    return {t.name: np.array(t.data) for t in GGUFReader(str(path)).tensors if len(t.shape) == 2}


@pytest.mark.parametrize("outtype", ["f16", "bf16"])
def test_fused_path_writes_the_same_bytes_as_the_general_path(bf16_base_and_adapter, tmp_path, monkeypatch,
                                                              outtype):
    base, adapter = bf16_base_and_adapter
    calls = []
    real = fused_merge.merged_rows

    def counting(stored, lora, rows_out, order, out, work):
        calls.append((lora is not None, order is not None))
        return real(stored, lora, rows_out, order, out, work)

    monkeypatch.setattr(fused_merge, "merged_rows", counting)
    monkeypatch.setattr(fused_merge, "CHUNK_ELEMENTS", 64 * 5)  # several chunks per tensor, a ragged last one
    monkeypatch.setattr(convert_mod, "CHUNK_ELEMENTS", 64 * 5)
    fused = tmp_path / "fused.gguf"
    convert(base, fused, adapter_dir=adapter, outtype=outtype)
    # every 2-D tensor went through the fused path: merged ones, permuted q/k, and the (tied,
    # unmerged) embedding, larger than the pooled buffers, in several row blocks
    assert calls.count((True, True)) == 4 and calls.count((True, False)) == 10
    assert calls.count((False, False)) > 1

    monkeypatch.setattr(convert_mod, "_fused_output", lambda *a, **k: None)
    general = tmp_path / "general.gguf"
    convert(base, general, adapter_dir=adapter, outtype=outtype)
    a, b = _tensors(fused), _tensors(general)
    assert a.keys() == b.keys()
    # Same arithmetic; only BLAS may order the rank-r sum differently for a different number of
    # rows, which can move a float32 result across an F16/BF16 rounding boundary: one unit in
    # the last place at most, and rarely.
    differing = 0
    for name in a:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        diff = x.view(np.int16).astype(np.int32) - y.view(np.int16).astype(np.int32)
        assert np.abs(diff).max() <= 1, name
        differing += int(np.count_nonzero(diff))
    assert differing <= 1e-3 * sum(x.size for x in a.values())


def test_fused_path_refuses_a_weight_that_overflows_f16(bf16_base_and_adapter, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    base = tmp_path / "base"
    shutil.copytree(bf16_base_and_adapter[0], base)
    f = next(base.glob("*.safetensors"))
    tensors = load_file(str(f))
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name][3, 5] = 7e4
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=rf"{name}: a weight overflows float16"):
        convert(base, tmp_path / "x.gguf", outtype="f16")
    assert not (tmp_path / "x.gguf").exists()


def test_row_order_follows_the_transform(tiny_llama_dir):
    import numpy as np

    config = json.loads((tiny_llama_dir / "config.json").read_text())
    heads = config["num_attention_heads"]
    rows = config["hidden_size"]
    order = fused_merge.row_order(LLAMA, "blk.0.attn_q.weight", rows, config)
    expected = permute_rotary(np.arange(rows), heads)
    assert order.tolist() == expected.tolist() and sorted(order.tolist()) != order.tolist()
    assert fused_merge.row_order(LLAMA, "blk.0.ffn_up.weight", 96, config) is None
    assert fused_merge.row_order(GEMMA2, "blk.0.attn_q.weight", 8, {}) is None


@pytest.mark.parametrize("transform", [
    lambda name, arr, cfg: arr + 1.0,  # Gemma's norm +1 shape of change
    lambda name, arr, cfg: arr * 0.5,
    lambda name, arr, cfg: arr[::-1] * -1.0,  # reorders and negates
    lambda name, arr, cfg: arr[:-1],  # drops a row
    lambda name, arr, cfg: arr.reshape(4, 64, -1)[0],  # needs the real shape
])
def test_transforms_that_change_values_use_the_general_path(transform):
    import dataclasses

    arch = dataclasses.replace(LLAMA, transform=transform)
    with pytest.raises(fused_merge.NotRowOrder):
        fused_merge.row_order(arch, "blk.0.attn_q.weight", 16, {})


def test_merged_rows_matches_whole_tensor_arithmetic():
    import torch

    g = torch.Generator().manual_seed(0)
    stored = torch.randn(37, 24, generator=g).to(torch.bfloat16)
    a, b = torch.randn(3, 24, generator=g), torch.randn(37, 3, generator=g)
    order = torch.randperm(37, generator=g)
    out = torch.empty(37 * 24, dtype=torch.float16)
    got = fused_merge.merged_rows(stored, (a, b, 0.7), 37, order, out, torch.empty(24 * 5))
    want = stored.float().addmm(b, a, alpha=0.7)[order].to(torch.float16)
    assert torch.equal(got, want)
    assert math.prod(got.shape) == 37 * 24
