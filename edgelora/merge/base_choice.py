"""Which base to merge a LoRA adapter into: the original weights or their NF4 round trip.

A QLoRA adapter was trained against the NF4-dequantized base (:mod:`edgelora.merge.nf4`). Merged
into the original bf16 base it may or may not behave like the adapter-attached 4-bit model,
so ``merge.base = "auto"`` measures both merged models against that reference on the probe
prompts and keeps the closer one; ``"bf16"`` / ``"nf4"`` choose without measuring.

The reference is the model the adapter was trained with: for an adapter whose
``train_report.json`` says ``quantization = "nf4"``, PEFT's adapter attached to the
NF4-round-tripped base (on CPU this is what bitsandbytes' Linear4bit computes, with float32
activations); otherwise PEFT's adapter on the original base.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgelora.errors import ConfigError

MERGE_BASES = ("auto", "bf16", "nf4")


def trained_in_nf4(adapter_dir) -> bool | None:
    """From the adapter's train_report.json: True/False, or None when the report is absent."""
    report = Path(adapter_dir) / "train_report.json"
    if not report.is_file():
        return None
    return json.loads(report.read_text()).get("quantization") == "nf4"


def base_filter_for(choice: str, nf4=None):
    """The MergedView ``base_filter`` for a chosen merge base (None for the original weights)."""
    from edgelora.merge.nf4 import Nf4Base

    if choice not in ("bf16", "nf4"):
        raise ConfigError(f"merge base {choice!r}: expected bf16 or nf4")
    return (nf4 or Nf4Base()) if choice == "nf4" else None


def _distance(ref, got) -> dict:
    max_abs, sum_abs, n, agree, positions = 0.0, 0.0, 0, 0, 0
    for r, g in zip(ref, got):
        d = (r - g).abs()
        max_abs = max(max_abs, d.max().item())
        sum_abs += d.sum().item()
        n += d.numel()
        agree += int((r.argmax(-1) == g.argmax(-1)).sum().item())
        positions += r.shape[0]
    return {"max_abs_diff": max_abs, "mean_abs_diff": sum_abs / max(n, 1),
            "top1_agreement": agree / max(positions, 1), "positions": positions}


def measure_merge_bases(base_dir, adapter_dir, prompts, *, reference: str = "nf4", nf4=None,
                        max_prompt_tokens: int = 256) -> dict:
    """Logit distance of the bf16-merged and the NF4-merged model to the reference model
    (``reference`` = "nf4": adapter on the NF4 round-tripped base; "bf16": on the original)."""
    from edgelora.merge.view import MergedView
    from edgelora.merge.alpha_check import probe_batches
    from edgelora.merge.nf4 import Nf4Base
    from edgelora.merge.streamed_forward import reference_logits

    nf4 = nf4 or Nf4Base()
    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    batches = probe_batches(base_dir, adapter_dir, prompts, max_prompt_tokens, "comparing merge bases")
    ref = reference_logits(base_dir, batches, adapter_dir=adapter_dir,
                           base_filter=nf4 if reference == "nf4" else None).logits
    candidates = {}
    for choice in ("bf16", "nf4"):
        with MergedView(base_dir, adapter_dir, base_filter=base_filter_for(choice, nf4)) as view:
            candidates[choice] = _distance(ref, reference_logits(base_dir, batches, view=view).logits)
    closer = min(("bf16", "nf4"), key=lambda c: candidates[c]["mean_abs_diff"])  # ties keep bf16
    return {"reference": f"PEFT adapter on the {'NF4 round-tripped' if reference == 'nf4' else 'original'} base",
            "nf4": nf4.describe(), "prompts": len(batches), "candidates": candidates, "closer": closer}


def choose_merge_base(base_dir, adapter_dir, prompts, mode: str = "auto", *, nf4=None) -> dict:
    """The merge-report entry: which base is merged into and, in "auto", both measurements."""
    if mode not in MERGE_BASES:
        raise ConfigError(f"edgelora.toml: [merge] base {mode!r} must be one of {', '.join(MERGE_BASES)}")
    qlora = trained_in_nf4(adapter_dir)
    if mode != "auto":
        return {"mode": mode, "chosen": mode, "trained_in_nf4": qlora}
    if not qlora:
        # trained on the original weights (or unknown): there is no 4-bit model to match
        return {"mode": "auto", "chosen": "bf16", "trained_in_nf4": qlora,
                "note": "adapter not trained on an NF4 base (train_report.json), merged into the original base"}
    measured = measure_merge_bases(base_dir, adapter_dir, prompts, reference="nf4", nf4=nf4)
    return {"mode": "auto", "chosen": measured["closer"], "trained_in_nf4": qlora, **measured}
