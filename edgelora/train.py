"""LoRA training: a small explicit loop over transformers + PEFT (no HF Trainer).

On CUDA the base is loaded in 4-bit NF4 (QLoRA: double quantization, bf16 compute,
paged 8-bit AdamW, gradient checkpointing). On CPU it is plain LoRA in bf16 where
the CPU has native bf16 matmul, fp32 otherwise. The adapter with the lowest eval
loss is the one left in ``out_dir``; ``out_dir`` only appears once training is done.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Iterator

from .data import IGNORE_INDEX, encode_chat
from .errors import TrainingError
from .fsutil import atomic_dir
from .train_setup import Progress, notice, linear_target_modules, load_model, resolve_setup

# Architectures whose ForCausalLM head is exactly lm_head(hidden): for these the
# loss is computed on labelled positions only, skipping the vocab projection of
# prompt tokens. Others (logit soft-capping, logit scaling) use the full forward.
_PLAIN_HEAD_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3"}
_BEST_DIR = ".best-adapter"


def _versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _encode_all(tokenizer, examples: list[dict], max_length: int) -> tuple[list[dict], int, int]:
    encoded, truncated, dropped = [], 0, 0
    for ex in examples:
        enc = encode_chat(tokenizer, ex["messages"], max_length=max_length)
        truncated += enc["truncated"]
        if all(t == IGNORE_INDEX for t in enc["labels"]):
            dropped += 1  # truncation ate every assistant token: nothing to learn from
            continue
        encoded.append(enc)
    return encoded, truncated, dropped


def _collate(batch: list[dict], pad_id: int, device: str) -> dict:
    import torch

    width = max(len(e["input_ids"]) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.to(device),
        "tokens": int(mask.sum()),
        "targets": int((labels[:, 1:] != IGNORE_INDEX).sum()),
    }


def _micro_batches(encoded: list[dict], batch_size: int, seed: int) -> Iterator[list[dict]]:
    """Endless stream of micro-batches; each epoch is a fresh seeded shuffle."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield [encoded[i] for i in order[start : start + batch_size]]


def _loss_sum(model, batch: dict, plain_head: bool):
    """Summed next-token cross-entropy over labelled positions of one micro-batch."""
    import torch.nn.functional as F

    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    if plain_head:
        base = model.get_base_model()
        hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = base.get_output_embeddings()(hidden.last_hidden_state[:, :-1][keep])
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, :-1][keep]
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def _eval_loss(model, batches: list[dict], plain_head: bool) -> float | None:
    import torch

    if not batches:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            total += float(_loss_sum(model, b, plain_head))
            count += b["targets"]
    model.train()
    return total / max(count, 1)


def _plot(rows: list[dict], path: Path) -> None:
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


def _check_args(**kw) -> None:
    for name in ("r", "epochs", "batch_size", "grad_accum", "max_length", "eval_every"):
        if not isinstance(kw[name], int) or kw[name] < 1:
            raise TrainingError(f"{name}: must be a positive integer, got {kw[name]!r}")
    if kw["max_steps"] is not None and (not isinstance(kw["max_steps"], int) or kw["max_steps"] < 1):
        raise TrainingError(f"max_steps: must be a positive integer or None, got {kw['max_steps']!r}")
    if not kw["learning_rate"] > 0:
        raise TrainingError(f"learning_rate: must be positive, got {kw['learning_rate']!r}")
    if not 0 <= kw["dropout"] < 1 or not 0 <= kw["warmup_ratio"] < 1:
        raise TrainingError("dropout and warmup_ratio: must be in [0, 1)")


def train_lora(
    *,
    base_dir,
    train_examples: list[dict],
    eval_examples: list[dict],
    out_dir,
    r: int = 16,
    alpha: float = 32,
    dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
    learning_rate: float = 1e-3,
    epochs: int = 3,
    max_steps: int | None = None,
    batch_size: int = 8,
    grad_accum: int = 1,
    warmup_ratio: float = 0.05,
    max_length: int = 256,
    seed: int = 0,
    eval_every: int = 20,
    device: str = "auto",
    quantization: str = "auto",
    dtype: str = "auto",
    max_seconds: float | None = None,
    progress: Progress | None = None,
) -> dict:
    """Train a LoRA adapter on chat examples; leave the best one (by eval loss) in ``out_dir``.

    ``out_dir`` receives adapter_model.safetensors, adapter_config.json,
    metrics.jsonl, loss.png and train_report.json, all at once when training ends.
    ``progress(event)`` gets ``{"step","total","loss","eval_loss","tokens_per_s","lr","eta_s"}``
    after every optimizer step and ``{"event": "notice", "message": str}`` for notices.
    Returns the report (also written as train_report.json).
    """
    _check_args(**{k: v for k, v in locals().items() if k not in ("progress",)})
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if not (base_dir / "config.json").is_file():
        raise TrainingError(f"{base_dir}: no config.json, not a model directory")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, set_seed

    oom_error = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    device, quantization, dtype = resolve_setup(device, quantization, dtype, progress)
    started = time.monotonic()
    set_seed(seed)

    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    train_enc, train_trunc, train_dropped = _encode_all(tokenizer, train_examples, max_length)
    eval_enc, eval_trunc, eval_dropped = _encode_all(tokenizer, eval_examples, max_length)
    if not train_enc:
        raise TrainingError("train_examples: no example has an assistant token within max_length")
    if train_dropped or eval_dropped:
        notice(progress, f"{train_dropped + eval_dropped} example(s) skipped: truncation to "
                f"max_length={max_length} left no assistant tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    if device == "cpu" and dropout > 0:
        # Measured on SmolLM2-135M: dropout's random masks take ~40% of a CPU step.
        notice(progress, f"lora dropout {dropout:g} costs ~40% of each CPU step; dropout=0 trains faster")
    model = load_model(base_dir, device, quantization, dtype)
    targets = linear_target_modules(model) if target_modules == "all-linear" else (
        [t.strip() for t in target_modules.split(",")] if isinstance(target_modules, str) else list(target_modules)
    )
    set_seed(seed)  # LoRA init draws from the RNG: same seed, same adapter
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    plain_head = model.get_base_model().config.model_type in _PLAIN_HEAD_MODEL_TYPES
    params = [p for p in model.parameters() if p.requires_grad]
    if quantization == "nf4":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=learning_rate, weight_decay=0.0)
    else:
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)

    micro_per_epoch = math.ceil(len(train_enc) / batch_size)
    total = max_steps or epochs * math.ceil(micro_per_epoch / grad_accum)
    warmup = math.ceil(warmup_ratio * total)

    def lr_factor(step: int) -> float:  # linear warmup, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    eval_batches = [_collate(eval_enc[i : i + batch_size], pad_id, device) for i in range(0, len(eval_enc), batch_size)]
    stream = _micro_batches(train_enc, batch_size, seed)

    rows: list[dict] = []
    best = {"eval_loss": None, "step": None}
    step, micro_done, train_tokens, train_seconds, stopped = 0, 0, 0, 0.0, None
    try:
        with atomic_dir(out_dir) as staging:
            metrics = open(staging / "metrics.jsonl", "w", encoding="utf-8")

            def evaluate_and_keep(row: dict) -> None:
                loss = _eval_loss(model, eval_batches, plain_head)
                row["eval_loss"] = loss
                if loss is not None and (best["eval_loss"] is None or loss < best["eval_loss"]):
                    best.update(eval_loss=loss, step=step)
                    shutil.rmtree(staging / _BEST_DIR, ignore_errors=True)
                    model.save_pretrained(staging / _BEST_DIR)

            model.train()
            first_eval_loss = _eval_loss(model, eval_batches, plain_head)
            loop_started = time.monotonic()
            with metrics:
                while step < total:
                    t0 = time.monotonic()
                    window = [_collate(next(stream), pad_id, device) for _ in range(grad_accum)]
                    n_targets = sum(b["targets"] for b in window)
                    loss_total = 0.0
                    for b in window:
                        loss_sum = _loss_sum(model, b, plain_head)
                        (loss_sum / n_targets).backward()
                        loss_total += float(loss_sum.detach())
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    lr = scheduler.get_last_lr()[0]
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    micro_done += grad_accum
                    seconds = time.monotonic() - t0
                    tokens = sum(b["tokens"] for b in window)
                    train_tokens += tokens
                    train_seconds += seconds
                    row = {"step": step, "loss": loss_total / n_targets, "lr": lr,
                           "tokens_per_s": tokens / seconds, "epoch": micro_done / micro_per_epoch}
                    over_time = max_seconds is not None and time.monotonic() - started >= max_seconds
                    if step % eval_every == 0 or step == total or over_time:
                        evaluate_and_keep(row)
                    rows.append(row)
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    if progress is not None:
                        eta = (total - step) * (time.monotonic() - loop_started) / step
                        if max_seconds is not None:
                            eta = min(eta, max(0.0, max_seconds - (time.monotonic() - started)))
                        progress({"event": "step", "step": step, "total": total, "loss": row["loss"], "lr": lr,
                                  "eval_loss": row.get("eval_loss"), "tokens_per_s": row["tokens_per_s"],
                                  "eta_s": eta})
                    if over_time and step < total:
                        stopped = "max_seconds"
                        notice(progress, f"time budget of {max_seconds:g}s reached: stopped at step {step}/{total}")
                        break
            if best["step"] is None:  # no eval set: the final adapter is the one kept
                model.save_pretrained(staging / _BEST_DIR)
                best["step"] = step
            for f in (staging / _BEST_DIR).iterdir():
                f.replace(staging / f.name)
            (staging / _BEST_DIR).rmdir()
            _plot(rows, staging / "loss.png")
            report = {
                "steps": step,
                "total_steps": total,
                "stopped_early": stopped,
                "epochs_done": round(micro_done / micro_per_epoch, 3),
                "train_examples": len(train_enc),
                "eval_examples": len(eval_enc),
                "skipped_examples": train_dropped + eval_dropped,
                "truncated_examples": train_trunc + eval_trunc,
                "initial_eval_loss": first_eval_loss,
                "final_eval_loss": rows[-1].get("eval_loss") if rows else None,
                "best_eval_loss": best["eval_loss"],
                "best_step": best["step"],
                "final_train_loss": rows[-1]["loss"] if rows else None,
                "train_tokens": train_tokens,
                "tokens_per_s": train_tokens / train_seconds if train_seconds else None,
                "seconds": round(time.monotonic() - started, 2),
                "device": device,
                "dtype": dtype,
                "quantization": quantization,
                "lora": {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets},
                "optimizer": {"name": type(optimizer).__name__, "learning_rate": learning_rate,
                              "batch_size": batch_size, "grad_accum": grad_accum,
                              "warmup_steps": warmup, "schedule": "cosine", "max_length": max_length},
                "seed": seed,
                "versions": _versions("torch", "transformers", "peft", "bitsandbytes", "accelerate"),
            }
            (staging / "train_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    except oom_error as e:
        raise TrainingError(
            f"CUDA out of memory at step {step + 1} (batch_size={batch_size}, max_length={max_length}): "
            "lower batch_size (raise grad_accum to keep the effective batch) or max_length"
        ) from e
    return report
