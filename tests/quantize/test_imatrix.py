"""Importance matrix: hooks on the HF model, GGUF names, llama.cpp's file layouts, and low-bit types."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edgelora.errors import QuantizeError
from edgelora.quantize.imatrix import compute_imatrix, means, read_imatrix, write_imatrix
from edgelora.quantize.llama_quantize import quantize

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Importance matrices weigh rounding errors by activations.",
         "Réponds en français, s'il te plaît. 日本語も少し。"]


@pytest.fixture(scope="module")
def tiny256(smollm2_dir, tmp_path_factory):
    """Rows of 256 columns, so the IQ2/Q2_K kernels apply instead of falling back per tensor."""
    from conftest import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny256"), smollm2_dir, hidden=256, heads=4, kv_heads=2,
                           layers=2)


@pytest.fixture(scope="module")
def token_batches(tiny256):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny256), local_files_only=True)
    return [tok(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def result(tiny256, token_batches):
    return compute_imatrix(tiny256, token_batches)


@pytest.fixture(scope="module")
def tiny256_f16(tiny256, tmp_path_factory):
    from edgelora.gguf.convert import convert

    out = tmp_path_factory.mktemp("tiny256gguf") / "tiny.F16.gguf"
    convert(tiny256, out, outtype="f16")
    return out


def test_names_are_the_gguf_weights_and_values_are_mean_squared_inputs(result, tiny256, token_batches, tiny256_f16):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    weights = {t.name: t for t in gguf.GGUFReader(str(tiny256_f16)).tensors}
    expected = {f"blk.{i}.{p}.weight" for i in range(2) for p in
                ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")} | {"token_embd.weight"}
    assert set(result["sums"]) == expected  # tied lm_head reads token_embd
    for name, values in means(result).items():
        assert values.dtype == np.float32 and values.shape == (int(weights[name].shape[0]),)  # ne[0]: input columns
    n_tokens = sum(len(b) for b in token_batches)
    assert result["counts"]["blk.0.attn_q.weight"] == n_tokens and result["tokens"] == n_tokens
    # The lm_head input is the final normed hidden state: recompute it independently.
    model = AutoModelForCausalLM.from_pretrained(str(tiny256), dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        sq = sum((model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].double() ** 2).sum(0)
                 for ids in token_batches)
    np.testing.assert_allclose(result["sums"]["token_embd.weight"], sq.numpy(), rtol=1e-5)
    # q, k and v read the same normed input
    np.testing.assert_allclose(result["sums"]["blk.1.attn_q.weight"], result["sums"]["blk.1.attn_v.weight"])


def test_gguf_file_round_trip_in_llama_cpp_layout(result, tmp_path):
    import gguf

    path = write_imatrix(tmp_path / "imatrix.gguf", result, dataset="train.jsonl")
    reader = gguf.GGUFReader(str(path))
    keys = {k: f for k, f in reader.fields.items()}
    assert bytes(keys["general.type"].parts[-1]).decode() == "imatrix"
    assert int(keys["imatrix.chunk_count"].parts[-1][0]) == 3
    names = {t.name: t for t in reader.tensors}
    t = names["blk.0.ffn_down.weight.in_sum2"]
    assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [512, 1]  # ne0 = columns
    assert list(names["blk.0.ffn_down.weight.counts"].shape) == [1, 1]
    back = read_imatrix(path)
    ref = means(result)
    assert set(back) == set(ref)
    for k in ref:
        np.testing.assert_allclose(back[k], ref[k], rtol=1e-6)


def test_legacy_dat_layout_is_read(tmp_path):
    # int32 n; per entry: int32 len, name, int32 ncall, int32 nval, float32[nval] (= mean*ncall)
    vals = np.array([2.0, 4.0, 6.0], dtype="<f4")
    name = b"blk.0.attn_q.weight"
    raw = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 2, 3) + vals.tobytes()
    raw += struct.pack("<i", 2) + struct.pack("<i", 4) + b"data"
    (tmp_path / "old.dat").write_bytes(raw)
    np.testing.assert_allclose(read_imatrix(tmp_path / "old.dat")["blk.0.attn_q.weight"], [1.0, 2.0, 3.0])
    (tmp_path / "bad.dat").write_bytes(struct.pack("<i", 1) + struct.pack("<i", 50) + b"short")
    with pytest.raises(QuantizeError, match="truncated|no values"):
        read_imatrix(tmp_path / "bad.dat")


@pytest.mark.parametrize("qtype", ["IQ2_XXS", "Q2_K_S"])
def test_low_bit_types_need_and_work_with_the_imatrix(qtype, result, tiny256_f16, tmp_path):
    from edgelora.gguf.validate import read_back
    from edgelora.runtime.llama import open_llama

    with pytest.raises(QuantizeError, match="importance matrix"):
        quantize(tiny256_f16, tmp_path / "no.gguf", qtype, nthread=2)
    out = tmp_path / f"tiny.{qtype}.gguf"
    report = quantize(tiny256_f16, out, qtype, nthread=2, imatrix=means(result))
    assert report["imatrix"] and read_back(out)["problems"] == []
    kind = {"IQ2_XXS": "IQ2_XXS", "Q2_K_S": "Q2_K"}[qtype]
    assert read_back(out)["tensor_types"].get(kind, 0) >= 4
    llm = open_llama(out, n_ctx=128)
    assert llm("The capital of France is", max_tokens=4, temperature=0.0)["usage"]["completion_tokens"] > 0
    del llm


def test_bad_imatrix_is_refused_before_llama_cpp(tiny256_f16, tmp_path):
    with pytest.raises(QuantizeError, match="finite"):
        quantize(tiny256_f16, tmp_path / "x.gguf", "IQ2_XXS", imatrix={"blk.0.attn_q.weight": np.array([np.nan])})
    # a wrong-sized entry: llama.cpp's own check, surfaced as one line
    with pytest.raises(QuantizeError, match="imatrix size 7 is different from tensor size 256"):
        quantize(tiny256_f16, tmp_path / "x.gguf", "Q4_0", imatrix={"blk.0.attn_q.weight": np.ones(7)})
    assert not list(tmp_path.glob("*.gguf"))
