"""llama.cpp quantization of a converted tiny Llama."""

from __future__ import annotations

import pytest

from edgelora.errors import QuantizeError
from edgelora.gguf.convert import convert
from edgelora.gguf.validate import compare_logits, read_back
from edgelora.runtime.llama import open_llama
from edgelora.quantize.llama_quantize import NEEDS_IMATRIX, ftype_for, quantize, supported_types


@pytest.fixture(scope="module")
def f16_gguf(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny.f16.gguf"
    convert(tiny_llama_dir, out, outtype="f16")
    return out


def test_q8_0_loads_generates_and_agrees(f16_gguf, tiny_llama_dir, tmp_path):
    out = tmp_path / "tiny.Q8_0.gguf"
    report = quantize(f16_gguf, out, "q8_0", nthread=2)
    assert report["qtype"] == "Q8_0" and out.is_file()
    assert report["out_bytes"] < report["in_bytes"]
    assert not list(tmp_path.glob("*.partial"))
    rb = read_back(out)
    assert rb["problems"] == [] and rb["tensor_types"].get("Q8_0", 0) >= 14  # 7 matrices x 2 layers
    llm = open_llama(out, n_ctx=256)
    text = llm("The capital of France is", max_tokens=8, temperature=0.0)
    assert text["usage"]["completion_tokens"] > 0
    del llm
    agree = compare_logits(out, tiny_llama_dir, prompts=("The capital of France is",), n_tokens=32)
    assert agree["top1_agreement"] >= 0.9


def test_k_quant_with_fallback_rows_loads(f16_gguf, tmp_path):
    # hidden 64 is not a multiple of 256: llama.cpp falls back per tensor, and must still succeed
    out = tmp_path / "tiny.Q4_K_M.gguf"
    quantize(f16_gguf, out, "Q4_K_M", nthread=2)
    assert read_back(out)["problems"] == []


def test_unknown_type_lists_known(f16_gguf, tmp_path):
    with pytest.raises(QuantizeError, match="Q4_K_M") as err:
        quantize(f16_gguf, tmp_path / "x.gguf", "Q9_Z")
    assert "Q9_Z" in str(err.value)
    assert not (tmp_path / "x.gguf").exists()


def test_imatrix_types_refused(f16_gguf, tmp_path):
    with pytest.raises(QuantizeError, match="importance matrix"):
        quantize(f16_gguf, tmp_path / "x.gguf", "IQ2_XXS")


def test_llama_cpp_failure_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(QuantizeError, match="failed"):
        quantize(bad, tmp_path / "out.gguf", "Q8_0")
    assert not (tmp_path / "out.gguf").exists() and not list(tmp_path.glob("*.partial"))


def test_supported_types_map_to_llama_cpp_constants():
    import llama_cpp

    types = supported_types()
    assert {"Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "F16", "BF16"} <= set(types)
    assert not NEEDS_IMATRIX & set(types)
    assert ftype_for("Q4_K_M") == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert len({ftype_for(t) for t in types}) == len(types)
