"""How much a quantized GGUF drifts from the F16 GGUF, and the gate that keeps broken types out.

One forward pass per held-out text and model (``logits_all``), no generation: the F16
model's next-token log-probabilities are kept in a disk-backed array, then each quantized
model is compared position by position:

- mean KL(P_f16 ‖ P_quant) of the next-token distributions (nats),
- top-1 agreement (same argmax),
- perplexity of the texts' own next tokens, and its ratio to the F16 perplexity.

The gate is a set of thresholds on these numbers (:class:`GateThresholds`).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgelora.errors import QuantizeError


@dataclass(frozen=True)
class GateThresholds:
    # Defaults from SmolLM2-135M measurements (bench/RESULTS.md, "Quantization quality").
    max_kl: float = 0.10
    min_top1: float = 0.85
    max_ppl_ratio: float = 1.10

    def failures(self, m: dict) -> list[str]:
        out = []
        if not m["mean_kl"] <= self.max_kl:
            out.append(f"mean KL {m['mean_kl']:.4f} > {self.max_kl:g}")
        if not m["top1_agreement"] >= self.min_top1:
            out.append(f"top-1 agreement {m['top1_agreement']:.3f} < {self.min_top1:g}")
        if not m["ppl_ratio"] <= self.max_ppl_ratio:
            out.append(f"perplexity ×{m['ppl_ratio']:.3f} > ×{self.max_ppl_ratio:g}")
        return out


def heldout_token_batches(reference_gguf, conversations: list[dict], *, n_texts: int, max_tokens: int) -> list[list[int]]:
    """Whole held-out conversations (answers included) rendered with the GGUF's embedded chat
    template and tokenized by llama.cpp, as the quantized models will see them."""
    from edgelora.runtime.chat_template import render_chat
    from edgelora.runtime.llama import chat_template_of, open_llama

    llm = open_llama(reference_gguf, n_ctx=max_tokens + 8)
    try:
        template, special = chat_template_of(llm)
        batches = []
        for ex in conversations[:n_texts]:
            text = render_chat(template, ex["messages"], add_generation_prompt=False, special_tokens=special)
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)[:max_tokens]
            if len(ids) >= 2:
                batches.append(ids)
    finally:
        llm.close()
    if not batches:
        raise QuantizeError("quality report: no held-out text with at least two tokens")
    return batches


def _log_softmax(logits):
    import numpy as np

    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _forward_logprobs(gguf_path, batches, n_ctx):
    """Yield (batch index, log-probs [n_tokens, vocab] float64) for each batch: one forward pass each."""
    import numpy as np

    from edgelora.runtime.llama import open_llama

    llm = open_llama(gguf_path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True)
    try:
        for i, ids in enumerate(batches):
            llm.reset()
            llm.eval(ids)
            yield i, _log_softmax(np.asarray(llm.scores[: len(ids)]))
    finally:
        llm.close()


def measure(reference_gguf, candidates: dict, batches: list[list[int]], *, log=None) -> dict:
    """{label: metrics} of each candidate GGUF against ``reference_gguf`` on ``batches``."""
    import numpy as np

    n_ctx = max(len(b) for b in batches) + 8
    offsets = np.cumsum([0] + [len(b) for b in batches])
    t0 = time.monotonic()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="edgelora-quality-") as tmp:
        ref = None
        ref_nll = []
        for i, lp in _forward_logprobs(reference_gguf, batches, n_ctx):
            if ref is None:  # disk-backed: vocab x positions can pass a GiB for large vocabularies
                ref = np.lib.format.open_memmap(Path(tmp) / "ref.npy", mode="w+", dtype=np.float32,
                                                shape=(int(offsets[-1]), lp.shape[1]))
            ref[offsets[i]:offsets[i + 1]] = lp
            ids = batches[i]
            ref_nll.extend(-lp[np.arange(len(ids) - 1), ids[1:]])
        ref_ppl = math.exp(float(np.mean(ref_nll)))
        ref_seconds = time.monotonic() - t0
        for label, path in candidates.items():
            t1 = time.monotonic()
            kl_sum, agree, n_pos, nll = 0.0, 0, 0, []
            for i, lp in _forward_logprobs(path, batches, n_ctx):
                r = np.asarray(ref[offsets[i]:offsets[i + 1]], dtype=np.float64)
                kl_sum += float((np.exp(r) * (r - lp)).sum())
                agree += int((r.argmax(-1) == lp.argmax(-1)).sum())
                n_pos += r.shape[0]
                ids = batches[i]
                nll.extend(-lp[np.arange(len(ids) - 1), ids[1:]])
            ppl = math.exp(float(np.mean(nll)))
            results[label] = {"mean_kl": kl_sum / n_pos, "top1_agreement": agree / n_pos, "ppl": ppl,
                              "ppl_ref": ref_ppl, "ppl_delta": ppl - ref_ppl, "ppl_ratio": ppl / ref_ppl,
                              "positions": n_pos, "seconds": round(time.monotonic() - t1, 2)}
            if log:
                m = results[label]
                log(f"  {label:16s} KL {m['mean_kl']:.4f}  top-1 {m['top1_agreement']:.3f}  "
                    f"ppl {m['ppl']:.3f} (F16 {ref_ppl:.3f})")
    return {"reference": str(reference_gguf), "texts": len(batches), "positions": int(offsets[-1]),
            "reference_seconds": round(ref_seconds, 2), "results": results,
            "seconds": round(time.monotonic() - t0, 2)}


def apply_gate(report: dict, shipped_labels: dict, thresholds: GateThresholds) -> dict:
    """Add ``passed``/``failures`` to each result; ``shipped_labels`` maps type -> label measured."""
    report = dict(report)
    report["thresholds"] = asdict(thresholds)
    gate = {}
    for qtype, label in shipped_labels.items():
        m = report["results"][label]
        fails = thresholds.failures(m)
        gate[qtype] = {"label": label, "passed": not fails, "failures": fails}
    report["gate"] = gate
    return report


def render_markdown(report: dict, task_scores: dict | None = None) -> str:
    """The quality report as a Markdown table (task score column when one is defined)."""
    th = report.get("thresholds") or {}
    gate = report.get("gate") or {}
    shipped = {g["label"]: (q, g) for q, g in gate.items()}
    lines = ["# Quantization quality", "",
             f"Each type against the F16 GGUF on {report['texts']} held-out texts "
             f"({report['positions']} positions), one forward pass each, llama-cpp-python.", ""]
    if th:
        lines += [f"Gate: mean KL ≤ {th['max_kl']:g}, top-1 agreement ≥ {th['min_top1']:g}, "
                  f"perplexity ratio ≤ {th['max_ppl_ratio']:g}.", ""]
    task = bool(task_scores)
    head = "| type | imatrix | mean KL | top-1 | ppl | Δppl | ratio |" + (" task score |" if task else "") + " gate |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for label, m in report["results"].items():
        qtype, g = shipped.get(label, (None, None))
        verdict = "—" if g is None else ("pass" if g["passed"] else "FAIL: " + "; ".join(g["failures"]))
        imat = "yes" if label.endswith("+imatrix") else "no"
        row = (f"| {label.split('+')[0]} | {imat} | {m['mean_kl']:.4f} | {m['top1_agreement']:.3f} | "
               f"{m['ppl']:.3f} | {m['ppl_delta']:+.3f} | {m['ppl_ratio']:.3f} |")
        if task:
            s = task_scores.get(qtype) if qtype else None
            row += f" {s:.1%} |" if isinstance(s, (int, float)) else " — |"
        lines.append(row + f" {verdict} |")
    ref = next(iter(report["results"].values()), {}).get("ppl_ref")
    if ref is not None:
        lines += ["", f"F16 perplexity on these texts: {ref:.3f}."]
    return "\n".join(lines) + "\n"
