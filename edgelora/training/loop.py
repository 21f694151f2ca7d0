"""LoRA training: a small explicit loop over transformers + PEFT (no HF Trainer).

On CUDA the base is loaded in 4-bit NF4 (QLoRA: double quantization, bf16 compute
under autocast, paged 8-bit AdamW, gradient checkpointing, fused Liger kernels when
installed). On CPU it is plain LoRA in bf16 where the CPU has native bf16 matmul,
fp32 otherwise. Examples are packed padding-free by default. Checkpoints are
atomic and resumable; the adapter with the lowest eval loss is the one left in
``out_dir``, which only appears once training is done.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from edgelora.training import checkpoints as ckpts
from edgelora.training.checkpoints import SigtermFlag
from edgelora.data.chat import IGNORE_INDEX, encode_example, has_trained_tokens
from edgelora.training.distributed import World, all_reduce_grads, all_reduce_sum, barrier, world_from_env
from edgelora.errors import TrainingError, TrainingInterrupted
from edgelora.util.hashing import sha256_file
from edgelora.training.packing import collate, eval_rows, micro_batch_stream, split_rows
from edgelora.training.kernels import (apply_fused_kernels, cache_dequantized_weights, fused_loss_sum, lean_nf4_matmuls,
                            nf4_linears)
from edgelora.config import TrainConfig
from edgelora.training.memory import GIB, fit_memory_budget, free_memory_budget
from edgelora.training.report import finish_adapter, library_versions
from edgelora.training.setup import (Progress, check_config, memory_budget, limit_recompute, linear_target_modules, load_model, notice,
                                     resolve_setup)

# Architectures whose ForCausalLM head is exactly lm_head(hidden): for these the
# loss is computed on labelled positions only, skipping the vocab projection of
# prompt tokens. Others (logit soft-capping, logit scaling) use the full forward.
_PLAIN_HEAD_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3"}
def _encode_all(tokenizer, examples: list[dict], max_length: int) -> tuple[list[dict], int, int]:
    """Encode examples (chat, plain text, or already tokenized ``input_ids``/``labels``)."""
    encoded, truncated, dropped = [], 0, 0
    for ex in examples:
        if "input_ids" in ex:
            ids, labels = list(ex["input_ids"]), list(ex.get("labels", ex["input_ids"]))
            enc = {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": len(ids) > max_length}
        else:
            enc = encode_example(tokenizer(), ex, max_length=max_length)
        truncated += enc["truncated"]
        if not has_trained_tokens(enc):
            dropped += 1  # truncation ate every trained token: nothing to learn from
            continue
        encoded.append(enc)
    return encoded, truncated, dropped


def loss_sum_of(model, batch: dict, plain_head: bool, fused: bool = False):
    """Summed next-token cross-entropy over labelled positions of one micro-batch."""
    import torch.nn.functional as F

    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    inputs["use_cache"] = False  # with a cache, transformers does not detect packed position ids
    if plain_head:
        base = model.get_base_model()
        hidden = base.get_decoder()(**inputs).last_hidden_state[:, :-1][keep]
        head = base.get_output_embeddings()
        if fused:
            return fused_loss_sum(head.weight, hidden, targets[keep])
        logits = head(hidden)
    else:
        logits = model(**inputs).logits[:, :-1][keep]
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def eval_loss(model, batches: list[dict], plain_head: bool, fused: bool = False, *,
               world: World = World(), device: str = "cpu") -> float | None:
    import torch

    if not batches:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches[world.rank :: world.size]:
            total += float(loss_sum_of(model, b, plain_head, fused))
            count += b["targets"]
    model.train()
    total, count = all_reduce_sum([total, count], device, world)
    return total / max(count, 1)


def budget_total(*, step: int, total: int, seconds_per_step: float, eval_seconds: float, eval_every: int,
                  seconds_left: float) -> int:
    """How many steps fit the time left, counting the evals they trigger; never below step + 1."""
    per_step = seconds_per_step + (eval_seconds / eval_every if eval_every else 0.0)
    fit = int(seconds_left / per_step) if per_step > 0 else total - step
    return max(step + 1, min(total, step + fit))


def train_lora(*, base_dir, train_examples: list[dict], eval_examples: list[dict], out_dir,
               config: TrainConfig | None = None, max_length: int = 256, checkpoint_dir=None,
               resume: bool = False, force: bool = False, progress: Progress | None = None) -> dict:
    """Train a LoRA adapter on chat examples; leave the best one (by eval loss) in ``out_dir``.

    ``config`` is the project's ``[train]`` section (:class:`edgelora.config.TrainConfig`; its
    field help says what each setting does); ``max_length`` is ``[data] max_seq_length``.
    ``out_dir`` receives adapter_model.safetensors, adapter_config.json,
    metrics.jsonl, loss.png and train_report.json, all at once when training ends.
    A micro-batch is ``batch_size`` examples; ``packing`` lays them end to end in rows of
    up to ``max_length`` tokens (no padding, no cross-example attention) instead of
    padding one example per row.
    Checkpoints go to ``checkpoint_dir`` (default: ``<out_dir>.checkpoints``) every
    ``save_every`` steps (default: ``eval_every``) and on SIGTERM, which then raises
    TrainingInterrupted; ``resume`` continues from the newest complete one and refuses
    a changed configuration or dataset unless ``force``. ``early_stop`` > 0 stops once
    eval loss stayed above its best for that many evals in a row. With ``max_seconds``
    the cosine schedule is shortened to the steps that fit the budget, estimated
    after the first steps. Where gradient checkpointing is on (CUDA), only the first
    ``recompute_layers`` decoder layers recompute their activations (-1: all): fewer
    is faster and holds more activations in memory. ``dequant_cache`` (NF4 only) keeps a
    bf16 copy of that many dequantized base weights (-1: all, 0: none): same values,
    fewer dequantizations, 2 bytes per weight more memory; the weights that pay most are
    cached first (smallest per dequantization saved: k/v projections of recomputing layers
    first). ``lean_nf4`` runs the other NF4 weights through a leaner dequantize-and-matmul
    than bitsandbytes' (same values, less CPU overhead per call, +4 bytes per 64 weights).
    ``memory_budget_gib`` (CUDA QLoRA; excludes setting the two knobs) picks both from
    measurements on the longest micro-batch so the step's peak fits the budget
    (``edgelora.training.memory``); the choice is recorded as ``memory_plan`` in the report.
    ``progress(event)`` gets ``{"step","total","loss","eval_loss","tokens_per_s","lr","eta_s"}``
    after every optimizer step and ``{"event": "notice", "message": str}`` for notices.
    Returns the report (also written as train_report.json).
    """
    c = config if config is not None else TrainConfig()
    check_config(c, max_length)
    r, alpha, dropout, learning_rate, seed = c.r, c.alpha, c.dropout, c.learning_rate, c.seed
    epochs, batch_size, grad_accum, warmup_ratio = c.epochs, c.batch_size, c.grad_accum, c.warmup_ratio
    eval_every, early_stop, packing = c.eval_every, c.early_stop, c.packing
    recompute_layers, dequant_cache = c.recompute_layers, c.dequant_cache
    max_steps, max_seconds = c.max_steps or None, c.max_seconds or None
    memory_budget_gib = memory_budget(c.memory_budget_gib)
    save_every = c.save_every or None
    target_modules = "all-linear" if list(c.target_modules) == ["all-linear"] else c.target_modules
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir else out_dir.with_name(out_dir.name + ".checkpoints")
    save_every = save_every or eval_every
    if not (base_dir / "config.json").is_file():
        raise TrainingError(f"{base_dir}: no config.json, not a model directory")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, set_seed

    oom_error = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    device, quantization, dtype = resolve_setup(c.device, c.quantization, c.dtype, progress)
    world = world_from_env(device)
    if world.size > 1 and device.startswith("cuda"):
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(world.local_rank)
    if not world.main:
        progress = None
    started = time.monotonic()
    set_seed(seed)

    loaded = []

    def tokenizer():  # loaded only when some example still needs encoding
        if not loaded:
            loaded.append(AutoTokenizer.from_pretrained(base_dir, local_files_only=True))
        return loaded[0]

    train_enc, train_trunc, train_dropped = _encode_all(tokenizer, train_examples, max_length)
    eval_enc, eval_trunc, eval_dropped = _encode_all(tokenizer, eval_examples, max_length)
    if not train_enc:
        raise TrainingError("train_examples: no example has an assistant token within max_length")
    if train_dropped or eval_dropped:
        notice(progress, f"{train_dropped} train + {eval_dropped} held-out example(s) skipped: truncation to "
                f"max_length={max_length} left no assistant tokens")
    if loaded:
        pad_id = loaded[0].pad_token_id if loaded[0].pad_token_id is not None else (loaded[0].eos_token_id or 0)
    else:
        cfg = json.loads((base_dir / "config.json").read_text())
        eos = cfg.get("eos_token_id")
        pad_id = cfg.get("pad_token_id") or (eos[0] if isinstance(eos, list) else eos) or 0

    if device == "cpu" and dropout > 0:
        # Measured on SmolLM2-135M: dropout's random masks take ~40% of a CPU step.
        notice(progress, f"lora dropout {dropout:g} costs ~40% of each CPU step; dropout=0 trains faster")
    model = load_model(base_dir, device, quantization, dtype)
    recomputed = limit_recompute(model, recompute_layers)
    kernels = apply_fused_kernels(model, device)
    dense_cached = 0
    if quantization == "nf4" and dequant_cache:
        dense_cached = cache_dequantized_weights(model, None if dequant_cache < 0 else dequant_cache)
    lean = lean_nf4_matmuls(model) if quantization == "nf4" and c.lean_nf4 else 0
    targets = linear_target_modules(model) if target_modules == "all-linear" else (
        [t.strip() for t in target_modules.split(",")] if isinstance(target_modules, str) else list(target_modules)
    )
    set_seed(seed)  # LoRA init draws from the RNG: same seed, same adapter
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    on_cuda = device.startswith("cuda")
    autocast = on_cuda and dtype == "bfloat16"
    if autocast:
        # LoRA weights stay fp32 (optimizer precision); autocast runs their matmuls in
        # bf16, so peft need not cast every activation to fp32 first.
        from peft.tuners.tuners_utils import BaseTunerLayer

        for m in model.modules():
            if isinstance(m, BaseTunerLayer):
                m.cast_input_dtype_enabled = False
    plain_head = model.get_base_model().config.model_type in _PLAIN_HEAD_MODEL_TYPES
    fused = plain_head and bool(kernels)
    if fused:
        kernels.append("liger:fused_linear_cross_entropy")
    params = [p for p in model.parameters() if p.requires_grad]
    if quantization == "nf4":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=learning_rate, weight_decay=0.0)
    else:
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)

    micro_per_epoch = math.ceil(len(train_enc) / batch_size)
    per_step = grad_accum * world.size
    settings = {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets,
                "learning_rate": learning_rate, "epochs": epochs, "max_steps": max_steps,
                "batch_size": batch_size, "grad_accum": grad_accum, "warmup_ratio": warmup_ratio,
                "max_length": max_length, "seed": seed, "eval_every": eval_every, "early_stop": early_stop,
                "packing": packing, "device": device.split(":")[0], "quantization": quantization, "dtype": dtype, "world_size": world.size, "base_config": sha256_file(base_dir / "config.json")}
    fingerprint = ckpts.run_fingerprint(settings, train_examples, eval_examples)

    state = {"step": 0, "micro_done": 0, "total": max_steps or epochs * math.ceil(micro_per_epoch / per_step),
             "rows": [], "best_eval_loss": None, "best_step": None, "bad_evals": 0, "train_tokens": 0,
             "train_seconds": 0.0, "splits": 1, "budgeted": False, "initial_eval_loss": None,
             "fingerprint": fingerprint}
    resumed_from = None
    latest = ckpts.latest_complete(ckpt_root) if resume else None
    if resume and latest is None:
        notice(progress, f"--resume: no complete checkpoint in {ckpt_root}; starting from step 0")
    if latest is not None:
        saved = ckpts.read_state(latest)
        changed = ckpts.fingerprint_changes(saved.get("fingerprint", {}), fingerprint)
        if changed and not force:
            raise TrainingError(f"{latest}: checkpoint was made with a different {', '.join(changed)}; "
                                "pass --force to resume anyway, or train without --resume to start over")
        if changed:
            notice(progress, f"--force: resuming {latest.name} although {', '.join(changed)} changed")
        saved["fingerprint"] = fingerprint
        state = saved
        resumed_from = latest.name
    elif world.main:
        ckpts.clear(ckpt_root)
    barrier(world)
    warmup = math.ceil(warmup_ratio * state["total"])

    def lr_factor(step: int) -> float:  # linear warmup, then cosine to zero over state["total"]
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, state["total"] - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    if latest is not None:
        ckpts.restore(latest, model=model, optimizer=optimizer, scheduler=scheduler)
        notice(progress, f"resumed from {latest.name} (step {state['step']}/{state['total']})")

    def batch_of(rows):
        return collate(rows, pad_id, device, packed=packing)

    eval_layout = eval_rows(eval_enc, batch_size, max_length, packing)
    eval_batches = [batch_of(rows) for rows in eval_layout]
    stream = micro_batch_stream(train_enc, batch_size=batch_size, seed=seed, packed=packing,
                                row_tokens=max_length, skip=state["micro_done"])

    def loss_sum(b):
        if autocast:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return loss_sum_of(model, b, plain_head, fused)
        return loss_sum_of(model, b, plain_head, fused)

    def evaluate() -> tuple[float | None, float]:
        t0 = time.monotonic()
        if autocast:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = eval_loss(model, eval_batches, plain_head, fused, world=world, device=device)
        else:
            loss = eval_loss(model, eval_batches, plain_head, fused, world=world, device=device)
        return loss, time.monotonic() - t0

    def save(step: int) -> Path | None:
        path = None
        if world.main:
            path = ckpts.save_checkpoint(ckpt_root, step, model=model, optimizer=optimizer,
                                         scheduler=scheduler, state=state)
            # Older best adapters go only once a checkpoint no longer points at them.
            for old in ckpt_root.glob("best-*"):
                if state["best_step"] is None or old.name != f"best-{state['best_step']:08d}":
                    shutil.rmtree(old, ignore_errors=True)
        barrier(world)
        return path

    def keep_best(step: int) -> None:
        if world.main:
            best = ckpt_root / f"best-{step:08d}"
            tmp = ckpt_root / f".tmp-best-{step:08d}"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            shutil.rmtree(best, ignore_errors=True)
            os.replace(tmp, best)

    ckpt_root.mkdir(parents=True, exist_ok=True)
    if world.main:  # leftovers of a killed run's half-written saves
        for stale in ckpt_root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    metrics_path = ckpt_root / "metrics.jsonl"
    if world.main:  # rewrite the history up to the checkpoint: a resumed run's rows continue it
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in state["rows"]), encoding="utf-8")

    memory_plan = None
    if memory_budget_gib == "auto" and (recompute_layers != -1 or dequant_cache != 0):
        memory_budget_gib = None  # the knobs were set by hand: they win
    if memory_budget_gib is not None:
        if quantization == "nf4" and on_cuda:
            model.train()
            automatic = memory_budget_gib == "auto"
            if automatic:
                memory_budget_gib = round(free_memory_budget(device) / GIB, 3)
            memory_plan = fit_memory_budget(model, train_enc, batch_size, max_length, packing, batch_of,
                                             loss_sum, memory_budget_gib, device, progress)
            memory_plan["automatic"] = automatic
            recomputed, dense_cached = memory_plan["recompute_layers"], memory_plan["dequant_cache"]
            lean = sum(1 for m, _ in nf4_linears(model) if hasattr(m, "edgelora_absmax"))
        elif memory_budget_gib != "auto":
            notice(progress, "memory_budget_gib applies to CUDA QLoRA (nf4) only; ignored")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    eval_seconds = 0.0
    if state["initial_eval_loss"] is None:
        state["initial_eval_loss"], eval_seconds = evaluate()
    stopped = None
    model.train()
    loop_started, loop_step0 = time.monotonic(), state["step"]
    budget_check_at = state["step"] + 3
    try:
        with SigtermFlag() as term, open(metrics_path, "a", encoding="utf-8") as metrics:
            while state["step"] < state["total"]:
                t0 = time.monotonic()
                window = [next(stream) for _ in range(per_step)][world.rank :: world.size]
                state["micro_done"] += per_step
                while True:  # retried with smaller forward chunks on CUDA out-of-memory
                    try:
                        chunks = [batch_of(part) for rows in window for part in split_rows(rows, state["splits"])]
                        n_targets = all_reduce_sum([sum(b["targets"] for b in chunks)], device, world)[0]
                        loss_total = 0.0
                        for b in chunks:
                            ls = loss_sum(b)
                            (ls / max(n_targets, 1)).backward()
                            loss_total += float(ls.detach())
                        break
                    except oom_error as e:
                        optimizer.zero_grad(set_to_none=True)
                        del e
                        torch.cuda.empty_cache()
                        rows_per_micro = max(len(rows) for rows in window)
                        if state["splits"] >= rows_per_micro:
                            raise TrainingError(
                                f"CUDA out of memory at step {state['step'] + 1} even with one row of "
                                f"max_length={max_length} tokens per forward pass: lower max_length "
                                f"(e.g. {max(16, max_length // 2)}) or use a GPU with more memory") from None
                        state["splits"] *= 2
                        notice(progress, f"CUDA out of memory: splitting each micro-batch in {state['splits']} "
                               f"(about {math.ceil(batch_size / state['splits'])} rows per forward); "
                               "same effective batch, recorded in the train report")
                all_reduce_grads(params, world)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                step = state["step"]
                seconds = time.monotonic() - t0
                tokens = all_reduce_sum([sum(b["tokens"] for b in chunks)], device, world)[0]
                loss_total = all_reduce_sum([loss_total], device, world)[0]
                state["train_tokens"] += int(tokens)
                state["train_seconds"] += seconds
                row = {"step": step, "loss": loss_total / max(n_targets, 1), "lr": lr,
                       "tokens_per_s": tokens / seconds, "epoch": state["micro_done"] / micro_per_epoch}
                elapsed = time.monotonic() - started
                if max_seconds is not None and not state["budgeted"] and step >= budget_check_at:
                    state["budgeted"] = True
                    new_total = budget_total(step=step, total=state["total"],
                                              seconds_per_step=(time.monotonic() - loop_started) / (step - loop_step0),
                                              eval_seconds=eval_seconds, eval_every=eval_every,
                                              seconds_left=max_seconds - elapsed)
                    if new_total < state["total"]:
                        notice(progress, f"time budget {max_seconds:g}s: cosine schedule shortened to "
                               f"{new_total} of {state['total']} steps")
                        state["total"] = new_total
                over_time = max_seconds is not None and elapsed >= max_seconds
                flags = all_reduce_sum([float(term.raised), float(over_time)], device, world)
                interrupted, over_time = flags[0] > 0, flags[1] > 0
                if step % eval_every == 0 or step == state["total"] or over_time:
                    loss, eval_seconds = evaluate()
                    row["eval_loss"] = loss
                    if loss is not None:
                        if state["best_eval_loss"] is None or loss < state["best_eval_loss"]:
                            state.update(best_eval_loss=loss, best_step=step, bad_evals=0)
                            keep_best(step)
                        else:
                            state["bad_evals"] += 1
                state["rows"].append(row)
                if world.main:
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                if progress is not None:
                    done = step - loop_step0
                    eta = (state["total"] - step) * (time.monotonic() - loop_started) / max(done, 1)
                    if max_seconds is not None:
                        eta = min(eta, max(0.0, max_seconds - (time.monotonic() - started)))
                    progress({"event": "step", "step": step, "total": state["total"], "loss": row["loss"],
                              "lr": lr, "eval_loss": row.get("eval_loss"), "tokens_per_s": row["tokens_per_s"],
                              "tokens": int(tokens), "eta_s": eta})
                if interrupted:
                    metrics.flush()
                    path = save(step)
                    raise TrainingInterrupted(
                        f"stopped by SIGTERM at step {step}/{state['total']}; checkpoint {path or ckpt_root} "
                        "saved; run again with --resume to continue")
                if early_stop and state["bad_evals"] >= early_stop:
                    stopped = "early_stop"
                    notice(progress, f"early stop at step {step}: eval loss above its best "
                           f"({state['best_eval_loss']:.4f} at step {state['best_step']}) for {early_stop} evals")
                    break
                if over_time and step < state["total"]:
                    stopped = "max_seconds"
                    notice(progress, f"time budget of {max_seconds:g}s reached: stopped at step {step}/{state['total']}")
                    break
                if step % save_every == 0 and step < state["total"]:
                    save(step)
    except oom_error as e:
        raise TrainingError(
            f"CUDA out of memory at step {state['step'] + 1} (batch_size={batch_size}, max_length={max_length}): "
            "lower batch_size (raise grad_accum to keep the effective batch) or max_length"
        ) from e

    report = None
    if world.main:
        report = finish_adapter(out_dir, ckpt_root, model, state, stopped=stopped, extra={
            "epochs_done": round(state["micro_done"] / micro_per_epoch, 3),
            "train_examples": len(train_enc),
            "eval_examples": len(eval_enc),
            "skipped_examples": train_dropped + eval_dropped,
            "skipped_train_examples": train_dropped,
            "skipped_heldout_examples": eval_dropped,
            "truncated_examples": train_trunc + eval_trunc,
            "seconds": round(time.monotonic() - started, 2),
            "device": device.split(":")[0],
            "dtype": dtype,
            "quantization": quantization,
            "packing": packing,
            "kernels": kernels,
            "world_size": world.size,
            "resumed_from": resumed_from,
            "micro_batch_splits": state["splits"],
            "recomputed_layers": recomputed,
            "dequantized_weights_cached": dense_cached,
            "lean_nf4_matmuls": lean,
            "memory_plan": memory_plan,
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if on_cuda else None,
            "lora": {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets},
            "optimizer": {"name": type(optimizer).__name__, "learning_rate": learning_rate,
                          "batch_size": batch_size, "grad_accum": grad_accum, "warmup_steps": warmup,
                          "schedule": "cosine", "max_length": max_length, "early_stop": early_stop},
            "seed": seed,
            "versions": library_versions("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger-kernel"),
        })
    barrier(world)
    if report is None:  # other ranks: the report rank 0 wrote, so every rank returns the same
        report = json.loads((out_dir / "train_report.json").read_text(encoding="utf-8"))
    return report
