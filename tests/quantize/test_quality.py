"""Quality report and gate on the real SmolLM2-135M (F16 GGUF by edgelora, llama.cpp quantizer),
and the chat smoke test on the quantized model a bundle would ship."""

from __future__ import annotations

import pytest

from edgelora.errors import QuantizeError
from edgelora.quantize.pipeline import quantize_all
from edgelora.quantize.quality import GateThresholds, heldout_token_batches, measure, render_markdown

HELDOUT = [
    {"messages": [{"role": "system", "content": "Extract the support ticket as JSON with keys product, severity, sentiment."},
                  {"role": "user", "content": "My laptop will not turn on after the update. I am furious."},
                  {"role": "assistant", "content": '{"product":"laptop","severity":"high","sentiment":"negative"}'}]},
    {"messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."},
                  {"role": "assistant", "content": "Paris."}]},
    {"messages": [{"role": "user", "content": "Write a haiku about the sea."},
                  {"role": "assistant", "content": "Waves fold into foam,\nsalt wind carries gull voices,\n"
                                                   "the tide keeps its time."}]},
]


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_dir, tmp_path_factory):
    from edgelora.gguf.convert import convert

    out = tmp_path_factory.mktemp("quality") / "smollm2.F16.gguf"
    convert(smollm2_dir, out, outtype="f16")
    return out


@pytest.fixture(scope="module")
def batches(smollm2_f16):
    return heldout_token_batches(smollm2_f16, HELDOUT, n_texts=3, max_tokens=64)


@pytest.fixture(scope="module")
def shipped(smollm2_f16, batches, tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped")
    lines: list[str] = []
    result = quantize_all(smollm2_f16, out, "smollm2", ["Q8_0", "Q2_K"], batches=batches,
                          thresholds=GateThresholds(), gate="drop", log=lines.append)
    return out, result, lines


def test_reference_against_itself_is_exact(smollm2_f16, batches):
    report = measure(smollm2_f16, {"F16": smollm2_f16}, batches)
    m = report["results"]["F16"]
    assert m["mean_kl"] == pytest.approx(0.0, abs=1e-6) and m["top1_agreement"] == 1.0
    assert m["ppl"] == pytest.approx(m["ppl_ref"], rel=1e-6) and 1.0 < m["ppl_ref"] < 1000
    assert report["positions"] == sum(len(b) for b in batches)
    assert batches[0][0] != batches[0][1]  # chat-templated, tokenized by llama.cpp


def test_gate_keeps_q8_0_and_drops_q2_k_with_numbers(shipped):
    out, (types, report), lines = shipped
    q8, q2 = report["results"]["Q8_0"], report["results"]["Q2_K"]
    assert q8["mean_kl"] < 0.02 and q8["top1_agreement"] > 0.95   # Q8_0 is near-lossless
    assert q2["mean_kl"] > 10 * q8["mean_kl"] and q2["top1_agreement"] < q8["top1_agreement"]
    assert list(types) == ["Q8_0"]
    assert report["gate"]["Q2_K"]["passed"] is False and report["gate"]["Q8_0"]["passed"] is True
    assert any("Q2_K FAILS (mean KL" in ln and "left out of the bundle" in ln for ln in lines)
    assert sorted(p.name for p in out.iterdir()) == ["smollm2.Q8_0.gguf"]  # no candidates, no partials
    md = render_markdown(report)
    assert "| Q2_K | no |" in md and "FAIL: mean KL" in md and "| Q8_0 | no |" in md


def test_build_fails_when_no_type_passes(smollm2_f16, batches, tmp_path):
    strict = GateThresholds(max_kl=0.0, min_top1=1.0, max_ppl_ratio=1.0)
    with pytest.raises(QuantizeError, match=r"no requested type passes: Q4_0: mean KL [0-9.]+ > 0"):
        quantize_all(smollm2_f16, tmp_path, "smollm2", ["Q4_0"], batches=batches, thresholds=strict,
                     log=lambda *_: None)
    assert not list(tmp_path.glob("*.gguf"))


def test_chat_smoke_through_create_chat_completion(shipped):
    """The embedded chat template drives llama-cpp-python's chat handler: it stops by itself
    and no turn token leaks into the answer."""
    from edgelora.runtime.llama import open_llama

    out, (types, _), _ = shipped
    llm = open_llama(types["Q8_0"], n_ctx=512)
    try:
        assert "tokenizer.chat_template" in llm.metadata
        reply = llm.create_chat_completion(
            messages=[{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": "What is the capital of France?"}],
            max_tokens=96, temperature=0.0, seed=0)
    finally:
        llm.close()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop" and reply["usage"]["completion_tokens"] < 96
    text = choice["message"]["content"]
    assert text.strip()
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "assistant\n"):
        assert marker not in text


def test_task_score_column_comes_from_the_eval_report(shipped):
    from edgelora.quantize.stage import task_scores

    _, (_, report), _ = shipped
    eval_report = {"sets": {"heldout": {"metrics": ["exact"], "models": {
        "base.Q8_0": {"metrics": {"exact": 0.0}}, "fine-tune.Q8_0": {"metrics": {"exact": 0.9}}}}}}
    scores = task_scores(eval_report)
    assert scores == {"Q8_0": 0.9} and task_scores({}) == {}
    md = render_markdown(report, scores)
    assert any(ln.startswith("| type |") and "task score" in ln for ln in md.splitlines())
    row = next(ln for ln in md.splitlines() if ln.startswith("| Q8_0 |"))
    assert "90.0%" in row and row.endswith("pass |")
