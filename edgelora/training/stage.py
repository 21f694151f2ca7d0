"""The train stage: the [train] section and the prepared data into a LoRA adapter."""

from __future__ import annotations

from edgelora import artifacts as A
from edgelora.util.files import read_jsonl


def train(ctx) -> dict:
    from edgelora.data.guards import max_seq_length
    from edgelora.training.loop import train_lora
    from edgelora.training.progress import TrainProgress

    ds = ctx.need(A.DATASET)
    out = ctx.stage_dir("train") / "adapter"
    with TrainProgress(ctx) as progress:
        report = train_lora(
            base_dir=ctx.need(A.BASE)["path"], train_examples=read_jsonl(ds["train"]),
            eval_examples=read_jsonl(ds["heldout"]), out_dir=out, config=ctx.config.train,
            max_length=max_seq_length(ctx), checkpoint_dir=ctx.stage_dir("train") / "checkpoints",
            resume=bool(ctx.options.get("resume")), force=bool(ctx.options.get("force")), progress=progress)
    best = report.get("best_eval_loss")
    ctx.log(f"  {report.get('steps')} steps, best eval loss {'-' if best is None else f'{best:.4g}'}, "
            f"{report.get('tokens_per_s') or 0:.0f} tokens/s on {report.get('device')}")
    return {A.ADAPTER: str(out.resolve()), A.TRAIN_REPORT: report}
