"""The merge stage: choose the merge base, then check the merged view against the adapter
(per-tensor identity and adapter-attached vs merged logits)."""

from __future__ import annotations

from edgelora import artifacts as A
from edgelora.data.stage import probe_prompts
from edgelora.util.files import atomic_write_json


def merge(ctx) -> dict:
    from edgelora.merge.alpha_check import alpha_check, tensor_identity_check
    from edgelora.merge.base_choice import base_filter_for, choose_merge_base
    from edgelora.merge.view import MergedView

    m = ctx.config.merge
    base = ctx.need(A.BASE)["path"]
    adapter = ctx.need(A.ADAPTER)
    prompts = probe_prompts(ctx)
    merge_base = choose_merge_base(base, adapter, prompts, m.base)
    if "candidates" in merge_base:
        c = merge_base["candidates"]
        ctx.log(f"  merge base vs the adapter-attached 4-bit model: bf16 mean |Δlogit| "
                f"{c['bf16']['mean_abs_diff']:.3g}, nf4 {c['nf4']['mean_abs_diff']:.3g} -> {merge_base['chosen']}")
    base_filter = base_filter_for(merge_base["chosen"])
    with MergedView(base, adapter, base_filter=base_filter) as view:
        identity = tensor_identity_check(view)
    logits = alpha_check(base, adapter, prompts, tolerance=m.max_abs_logit_diff,
                         min_top1=m.min_top1_agreement, base_filter=base_filter)
    report = {"tensor_identity": identity, "logits": logits, "merge_base": merge_base}
    atomic_write_json(ctx.stage_dir("merge") / "merge_report.json", report)
    ctx.log(f"  alpha check: max |Δlogit| {_num(logits.get('max_abs_diff'))}, "
            f"top-1 agreement {_num(logits.get('top1_agreement'))}")
    return {A.MERGE_REPORT: report}


def _num(x) -> str:
    """A measurement for people: 4 significant digits."""
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)
