"""What a finished training run leaves: the adapter folder with metrics, loss plot and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgelora.training import checkpoints as ckpts
from edgelora.util.files import atomic_dir


def library_versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def plot_losses(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot, no global backend switch.
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (assistant tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def finish_adapter(out_dir: Path, ckpt_root: Path, model, state: dict, *, stopped, extra: dict) -> dict:
    """Assemble out_dir atomically from the best adapter, metrics, plot and report; drop checkpoints."""
    rows = state["rows"]
    with atomic_dir(out_dir) as staging:
        best = ckpt_root / f"best-{state['best_step']:08d}" if state["best_step"] is not None else None
        if best is None or not best.is_dir():  # no eval set: the final adapter is the one kept
            model.save_pretrained(staging)
            state["best_step"] = state["step"] if best is None else state["best_step"]
        else:
            for f in best.iterdir():
                shutil.copy2(f, staging / f.name)
        (staging / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        plot_losses(rows, staging / "loss.png")
        report = {
            "steps": state["step"],
            "total_steps": state["total"],
            "stopped_early": stopped,
            "initial_eval_loss": state["initial_eval_loss"],
            "final_eval_loss": rows[-1].get("eval_loss") if rows else None,
            "best_eval_loss": state["best_eval_loss"],
            "best_step": state["best_step"],
            "final_train_loss": rows[-1]["loss"] if rows else None,
            "train_tokens": state["train_tokens"],
            "tokens_per_s": state["train_tokens"] / state["train_seconds"] if state["train_seconds"] else None,
            **extra,
        }
        (staging / "train_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    ckpts.clear(ckpt_root)
    return report
