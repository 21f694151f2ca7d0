"""QLoRA training speed: the tutorial recipe (peer), Unsloth and edgelora's loop (ours), same GPU, data and seed.

Peer (benchmarks.md §2): transformers Trainer + PEFT + bitsandbytes NF4 (double quant,
bf16 compute), ``prepare_model_for_kbit_training``, LoRA r=16 alpha=32 dropout 0.05 on
q,k,v,o,gate,up,down, gradient checkpointing, paged 8-bit AdamW, lr 2e-4, bf16, SDPA.
Ours: ``edgelora.training.loop.train_lora`` with the same LoRA and optimizer settings (no fp32
upcast, autocast, Liger RMSNorm/RoPE/SwiGLU + fused linear cross-entropy when installed,
padding-free packing). Unsloth (``unsloth``): ``FastLanguageModel.from_pretrained(dir,
load_in_4bit=True)`` + ``get_peft_model(..., use_gradient_checkpointing="unsloth")`` with the
same r/alpha/targets and its default dropout 0 (``unsloth-d05``: the peer's 0.05), driven by
the peer's ``Trainer`` loop (paged 8-bit AdamW, same batches in the same order); on
variable-length data it gets each step's examples padding-free in one row with
``packed_seq_lengths``, the way its own SFTTrainer batches them.

Workload: a Llama-shaped model with random bf16 weights (saved once, then loaded
through the real 4-bit path by each variant), random token data. ``fixed``: every
example is ``--seq`` tokens. ``varlen``: lengths drawn log-normally in [32, seq]. Both
take ``--batch`` examples per step; the peer pads each batch to its longest example,
ours packs them padding-free into rows of up to ``--seq`` tokens.

Every variant runs in its own process (fresh CUDA memory statistics, no kernel patches
leaking across), the variants interleaved ``--repeats`` times. Tokens/s counts real
(non-padding) tokens between the end of warm-up step ``--warmup`` and the last step,
with ``torch.cuda.synchronize`` at each step end. MFU = (4·N_nonembedding·tokens/s +
attention FLOPs/s) / 989e12, attention FLOPs per token = 6·layers·hidden·L_example/…
(causal, forward + backward) — see ``attention_flops``.

    python bench/bench_train.py --shape 1b --steps 50 --out results.json
    python bench/bench_train.py --shape 8b --batch 2 --variants unsloth,ours,ours-mU --repeats 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    # Llama-3.2-1B: tied embeddings.
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    # Llama-3.1-8B.
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
    # A small shape for checking the script itself.
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=True, rope_theta=10000.0),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16, as benchmarks.md defines MFU


def build_tokenizer(dest: Path, vocab: int) -> None:
    """A word-level tokenizer with exactly ``vocab`` entries (<pad>, <s>, </s>, then w3, w4, ...).

    Only Unsloth needs one beside the model (its loader reads it); the data are token ids.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    core = Tokenizer(WordLevel(words, unk_token="<pad>"))
    core.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<pad>", model_max_length=131072)
    tok.save_pretrained(dest)


def build_model(shape: str, dest: Path, seq: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (dest / "tokenizer.json").is_file() and (dest / "config.json").is_file():
        build_tokenizer(dest, SHAPES[shape]["vocab_size"])
    if (dest / "config.json").is_file():
        return dest
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=max(seq, 2048), rms_norm_eps=1e-5,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(dest, safe_serialization=True)
    build_tokenizer(dest, cfg.vocab_size)
    del model
    torch.cuda.empty_cache()
    return dest


def make_data(kind: str, n: int, seq: int, vocab: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if kind == "fixed":
            length = seq
        else:  # long-tailed chat-like lengths, median ~ seq/6
            length = int(min(seq, max(32, rng.lognormvariate(math.log(seq / 6), 0.8))))
        out.append([rng.randrange(3, vocab) for _ in range(length)])
    return out


def nonembedding_params(cfg: dict) -> int:
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    return layers * (2 * h * h + 2 * h * kv + 3 * h * i)


def attention_flops(cfg: dict, lengths: list[int]) -> float:
    """Causal attention FLOPs (QK^T and AV, forward + backward) for examples of these lengths.

    Forward per example of length L and layer: 2 matmuls x 2 FLOP x L^2/2 x hidden;
    backward twice the forward: 6 x L^2/2 x hidden per layer... i.e. 3·L²·hidden·layers·2.
    """
    return sum(6.0 * cfg["num_hidden_layers"] * cfg["hidden_size"] * L * L for L in lengths)


# --------------------------------------------------------------------------- one variant (own process)


class StepClock:
    def __init__(self):
        self.times: list[float] = []
        self.losses: list[float] = []

    def tick(self, loss):
        import torch

        torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        if loss is not None:
            self.losses.append(float(loss))


def run_peer(model_dir: Path, data: list[list[int]], args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed

    set_seed(args.seed)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb, dtype=torch.bfloat16,
                                                 device_map={"": 0}, attn_implementation="sdpa")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    set_seed(args.seed)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                                             bias="none", task_type="CAUSAL_LM"))
    return _trainer_loop(model, data, args, padding_free=False, gradient_checkpointing=True, attention_mask=True)


def run_unsloth(model_dir: Path, data: list[list[int]], args) -> dict:
    """Unsloth at its recommended QLoRA settings, through the same Trainer loop as the peer."""
    import unsloth  # noqa: F401  (first: it patches transformers and peft on import)
    import torch
    from transformers import set_seed
    from unsloth import FastLanguageModel

    set_seed(args.seed)
    model, _tokenizer = FastLanguageModel.from_pretrained(model_name=str(model_dir), max_seq_length=args.seq,
                                                          dtype=torch.bfloat16, load_in_4bit=True)
    dropout = 0.05 if args.variant.endswith("-d05") else 0.0
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=dropout, target_modules=TARGETS,
                                             bias="none", use_gradient_checkpointing="unsloth",
                                             random_state=args.seed, max_seq_length=args.seq)
    return _trainer_loop(model, data, args, padding_free=args.data == "varlen", gradient_checkpointing=False,
                         attention_mask=False)


def _trainer_loop(model, data: list[list[int]], args, *, padding_free: bool, gradient_checkpointing: bool,
                  attention_mask: bool) -> dict:
    """The tutorial's transformers Trainer loop (paged 8-bit AdamW, lr 2e-4 cosine, bf16), batches in our order.

    ``padding_free``: each step's examples laid end to end in one row, with position ids
    restarting per example and ``packed_seq_lengths`` (Unsloth's padding-free batches; the
    first token of each example is not a target). Otherwise one example per row, padded.
    """
    import random

    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from edgelora.training.packing import epoch_batches

    # Same first epoch order as ours (edgelora's seeded shuffle), read sequentially, so
    # every variant sees identical batches and the first-step losses are comparable.
    encoded = [{"input_ids": ids} for ids in data]
    order = [i for batch in epoch_batches(encoded, batch_size=args.batch, rng=random.Random(args.seed),
                                          packed=False, row_tokens=args.seq) for row in batch for i in row]
    rows = [{"input_ids": data[i], "labels": data[i]} for i in order]

    def collate(batch):
        if padding_free:
            ids = torch.tensor([[t for r in batch for t in r["input_ids"]]], dtype=torch.long)
            pos = torch.tensor([[p for r in batch for p in range(len(r["input_ids"]))]], dtype=torch.long)
            labels = ids.clone()
            start = 0
            for r in batch:
                labels[0, start] = -100
                start += len(r["input_ids"])
            tokens_per_step.append(ids.shape[1])
            return {"input_ids": ids, "labels": labels, "position_ids": pos,
                    "packed_seq_lengths": torch.tensor([len(r["input_ids"]) for r in batch], dtype=torch.int32)}
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[k, :n] = torch.tensor(r["input_ids"])
            labels[k, :n] = torch.tensor(r["labels"])
            mask[k, :n] = 1
        tokens_per_step.append(int(mask.sum()))  # no workers: one collate per step, in order
        out = {"input_ids": ids, "labels": labels}
        if attention_mask or int(mask.sum()) != mask.numel():
            out["attention_mask"] = mask
        return out

    clock = StepClock()
    tokens_per_step: list[int] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            clock.tick(None)

        def on_step_end(self, a, state, control, **kw):
            clock.tick(None)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                clock.losses.append(float(logs["loss"]))

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.peer_batch, gradient_accumulation_steps=1,
        learning_rate=2e-4, max_steps=args.steps, bf16=True, optim="paged_adamw_8bit",
        gradient_checkpointing=gradient_checkpointing, logging_steps=1, save_strategy="no", report_to="none",
        lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 20), seed=args.seed, data_seed=args.seed,
        dataloader_num_workers=0, remove_unused_columns=False, max_grad_norm=1.0, weight_decay=0.0)

    class InOrderTrainer(Trainer):
        def _get_train_sampler(self, *a, **kw):
            return torch.utils.data.SequentialSampler(rows)

    trainer = InOrderTrainer(model=model, args=targs, train_dataset=rows, data_collator=collate,
                             callbacks=[Clock()])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {"times": clock.times, "losses": clock.losses, "tokens_per_step": tokens_per_step,
            "peak_bytes": torch.cuda.max_memory_allocated()}


def parse_ours(variant: str) -> dict:
    """'ours' (edgelora's defaults: dropout 0, automatic memory plan) with optional suffixes, e.g. ``ours-r24-c128``:

    -min  the least-memory setting: no memory plan, every layer recomputes, nothing cached
          (``memory_budget_gib=-1``; the defaults before issue 18);
    -rK   only the first K decoder layers recompute activations (``recompute_layers=K``);
    -c    cache every dequantized bf16 base weight (``dequant_cache=-1``);
    -cK   cache K base weights — weights, not layers (a Llama layer has 7) — chosen by
          ``edgelora.training.kernels.cache_order`` (``dequant_cache=K``; at 8B, c128 = all q/k/v/o);
    -mG   choose both from a GPU memory budget of G GiB (``memory_budget_gib=G``, e.g. -m16.4);
    -mU   the same with G = Unsloth's peak measured earlier in this run (the driver substitutes it);
    -bnb  run uncached NF4 weights through bitsandbytes' own matmul (``lean_nf4=False``);
    -d05  LoRA dropout 0.05 (the recipe's; -d0 is the default now and accepted as a no-op).
    """
    import re

    opts = {}
    for part in variant.split("-")[1:]:
        if part == "min":
            opts["memory_budget_gib"] = -1
        elif part == "d05":
            opts["dropout"] = 0.05
        elif part == "c":
            opts["dequant_cache"] = -1
        elif re.fullmatch(r"c\d+", part):
            opts["dequant_cache"] = int(part[1:])
        elif re.fullmatch(r"r\d+", part):
            opts["recompute_layers"] = int(part[1:])
        elif re.fullmatch(r"m\d+(\.\d+)?", part):
            opts["memory_budget_gib"] = float(part[1:])
        elif part == "bnb":
            opts["lean_nf4"] = False
        elif part == "d0":
            opts["dropout"] = 0.0
        else:
            raise SystemExit(f"unknown variant suffix {part!r} in {variant!r}")
    return opts


def run_ours(model_dir: Path, data: list[list[int]], args) -> dict:
    import torch

    from edgelora.testing.tiny import train_args
    from edgelora.training.loop import train_lora

    clock = StepClock()
    tokens_per_step: list[int] = []
    prof = []

    def progress(ev):
        if ev.get("event") == "step":
            clock.tick(ev["loss"])
            tokens_per_step.append(ev["tokens"])
            # Profiled steps come after the timed ones (the profiler slows them down).
            if args.profile and ev["step"] == args.steps:
                p = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                       torch.profiler.ProfilerActivity.CUDA])
                p.start()
                prof.append(p)
            if prof and ev["step"] == args.steps + 3:
                torch.cuda.synchronize()
                prof[0].stop()
                wall = clock.times[-1] - clock.times[-4]
                busy = sum(e.self_device_time_total for e in prof[0].key_averages()
                           if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
                print(f"profile: 3 steps {wall:.3f}s wall, GPU kernels {busy:.3f}s ({100 * busy / wall:.0f}% busy)",
                      flush=True)
                print(prof[0].key_averages().table(sort_by="self_cuda_time_total", row_limit=30), flush=True)
                print(prof[0].key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
        elif ev.get("event") == "notice":
            print("  notice:", ev["message"], flush=True)

    examples = [{"input_ids": ids, "labels": ids} for ids in data]
    out = Path(tempfile.mkdtemp()) / "adapter"
    report = train_lora(base_dir=model_dir, train_examples=examples, eval_examples=[], out_dir=out, max_length=args.seq, progress=progress, **train_args(parse_ours(args.variant), r=16, alpha=32, target_modules=TARGETS, learning_rate=2e-4, max_steps=args.steps + (3 if args.profile else 0), batch_size=args.batch, grad_accum=1, warmup_ratio=0.05, seed=args.seed, eval_every=10**9, packing=args.data == "varlen", device="cuda", quantization="nf4", dtype="bfloat16"))
    return {"times": clock.times, "losses": clock.losses, "tokens_per_step": tokens_per_step,
            "peak_bytes": report["peak_gpu_memory_bytes"], "kernels": report["kernels"],
            "splits": report["micro_batch_splits"], "recomputed_layers": report["recomputed_layers"],
            "dequantized_weights_cached": report.get("dequantized_weights_cached"),
            "lean_nf4_matmuls": report.get("lean_nf4_matmuls"), "memory_plan": report.get("memory_plan"),
            "dropout": report["lora"]["dropout"]}


def variant_main(args) -> None:
    import random

    import torch

    cfg = SHAPES[args.shape]
    data = make_data(args.data, args.examples, args.seq, cfg["vocab_size"], args.seed)
    random.seed(args.seed)
    run = run_peer if args.variant == "peer" else run_unsloth if args.variant.startswith("unsloth") else run_ours
    result = run(Path(args.model_dir), data, args)
    result["variant"] = args.variant
    result["device"] = torch.cuda.get_device_name()
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------- driver


def summarize(res: dict, cfg: dict, args) -> dict:
    """Tokens/s over steps warmup+1..last from per-step end times and per-step real tokens."""
    times, toks, w = res["times"], res["tokens_per_step"], args.warmup
    if not res["variant"].startswith("ours"):  # Trainer: times[0]: train begin; times[k]: end of step k
        ends = times[1:]
    else:  # times[k-1]: end of step k
        ends = times
    steps = min(len(ends), len(toks), args.steps)
    seconds = ends[steps - 1] - ends[w - 1]
    tokens = sum(toks[w:steps])
    tok_s = tokens / seconds
    n = nonembedding_params(cfg)
    return {"variant": res["variant"], "tokens_per_s": tok_s, "peak_gib": res["peak_bytes"] / 2**30,
            "first_loss": res["losses"][0] if res["losses"] else None,
            "losses": res["losses"], "steps_timed": steps - w, "seconds": seconds,
            "linear_tflops": 4 * n * tok_s / 1e12,
            **({k: res[k] for k in ("kernels", "splits", "recomputed_layers", "dequantized_weights_cached",
                                   "lean_nf4_matmuls", "memory_plan", "dropout") if k in res})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--data", choices=["fixed", "varlen"], default="fixed")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--peer-batch", type=int, default=0, help="peer micro-batch (default: --batch, or matched tokens for varlen)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="peer,ours")
    ap.add_argument("--model-dir", default="")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of 3 more steps after the timed ones")
    ap.add_argument("--profile-variants", default="", help="which 'ours' variants --profile applies to (default: all)")
    ap.add_argument("--out", default="bench_train.json")
    ap.add_argument("--time-limit", type=float, default=1e9, help="start no variant after this many seconds")
    # internal: run one variant in this process
    ap.add_argument("--variant", default="")
    ap.add_argument("--result", default="")
    ap.add_argument("--examples", type=int, default=0)
    args = ap.parse_args()
    cfg = SHAPES[args.shape]
    if not args.examples:
        args.examples = args.steps * args.batch + 64
    if args.profile and not args.profile_variants:
        args.profile_variants = args.variants
    args.profile_variants = args.profile_variants.split(",")
    if not args.peer_batch:
        args.peer_batch = args.batch  # same examples per step: packing only removes padding
    if args.variant:
        variant_main(args)
        return

    import torch

    model_dir = Path(args.model_dir or f"/tmp/edgelora-bench-{args.shape}")
    t0 = time.perf_counter()
    build_model(args.shape, model_dir, args.seq)
    print(f"model {args.shape} ready in {time.perf_counter() - t0:.1f}s at {model_dir}", flush=True)
    torch.cuda.empty_cache()
    results = []
    variants = args.variants.split(",")
    for rep in range(args.repeats):
        for variant in variants:
            if time.perf_counter() - t0 > args.time_limit:
                print(f"{variant} rep{rep}: skipped, past --time-limit {args.time_limit}s", flush=True)
                continue
            run_as = variant
            if variant.startswith("ours") and "-mU" in variant:
                peaks = [r["peak_gib"] for r in results if r["variant"].startswith("unsloth") and "failed" not in r]
                if not peaks:
                    print(f"{variant}: skipped, no Unsloth peak measured before it", flush=True)
                    continue
                # Budget = Unsloth's peak (GiB, rounded down to 0.01).
                run_as = variant.replace("-mU", f"-m{math.floor(max(peaks) * 100) / 100:.2f}")
            res_path = Path(tempfile.mkdtemp()) / "res.json"
            cmd = [sys.executable, __file__, "--shape", args.shape, "--data", args.data, "--seq", str(args.seq),
                   "--batch", str(args.batch), "--peer-batch", str(args.peer_batch), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--seed", str(args.seed), "--examples", str(args.examples),
                   "--model-dir", str(model_dir), "--variant", run_as, "--result", str(res_path)]
            if args.profile and variant.startswith("ours") and rep == 0 and variant in args.profile_variants:
                cmd.append("--profile")
            t = time.perf_counter()
            proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if proc.returncode != 0 or not res_path.is_file():
                print(f"{variant}: FAILED (exit {proc.returncode})", flush=True)
                results.append({"variant": variant, "run_as": run_as, "repeat": rep, "failed": proc.returncode})
                continue
            s = summarize(json.loads(res_path.read_text()), cfg, args)
            s["variant"], s["run_as"] = variant, run_as
            s["repeat"], s["wall_s"] = rep, round(time.perf_counter() - t, 1)
            results.append(s)
            print(f"{args.shape} {args.data} rep{rep} {run_as}: {s['tokens_per_s']:.0f} tok/s, "
                  f"peak {s['peak_gib']:.2f} GiB, first loss {s['first_loss']}, wall {s['wall_s']}s, "
                  f"recompute {s.get('recomputed_layers')}, cached {s.get('dequantized_weights_cached')}", flush=True)
            if s.get("memory_plan"):
                print(f"  memory plan: {json.dumps(s['memory_plan'])}", flush=True)
            write_summary(args, cfg, variants, results)
    write_summary(args, cfg, variants, results, final=True)


def write_summary(args, cfg: dict, variants: list[str], results: list[dict], final: bool = False) -> None:
    """Write --out (after every variant, so a run cut short keeps what it measured); print ratios at the end."""
    import statistics

    import torch

    summary = {"shape": args.shape, "data": args.data, "seq": args.seq, "batch": args.batch,
               "peer_batch": args.peer_batch, "steps": args.steps, "warmup": args.warmup,
               "command": "python3 bench/bench_train.py " + " ".join(sys.argv[1:]),
               "device": torch.cuda.get_device_name(), "versions": _versions(), "results": results}
    ok = [r for r in results if "failed" not in r]
    by = {v: sorted(r["tokens_per_s"] for r in ok if r["variant"] == v) for v in variants}
    med = {v: statistics.median(by[v]) for v in by if by[v]}
    summary["median_tokens_per_s"] = med
    summary["peak_gib_max"] = {v: max(r["peak_gib"] for r in ok if r["variant"] == v) for v in med}
    for ref in ("peer", "unsloth"):
        if ref in med:
            summary[f"speedups_vs_{ref}"] = {v: med[v] / med[ref] for v in med}
    if "peer" in med and "ours" in med:
        summary["speedup_median"] = med["ours"] / med["peer"]
    n = nonembedding_params(cfg)
    # Attention FLOPs per real token, averaged over the data's example lengths.
    lengths = [len(x) for x in make_data(args.data, args.examples, args.seq, cfg["vocab_size"], args.seed)]
    attn_per_token = attention_flops(cfg, lengths) / sum(lengths)
    summary["mfu"] = {v: (4 * n + attn_per_token) * med[v] / PEAK_BF16 for v in med}
    if final:
        for ref in ("peer", "unsloth"):
            if f"speedups_vs_{ref}" in summary:
                print(f"speedups vs {ref}: " + ", ".join(f"{v} {x:.3f}" for v, x in summary[f"speedups_vs_{ref}"].items()),
                      flush=True)
        print("peak GiB: " + ", ".join(f"{v} {x:.2f}" for v, x in summary["peak_gib_max"].items()), flush=True)
        print("MFU: " + ", ".join(f"{v} {100 * x:.1f}%" for v, x in summary["mfu"].items()), flush=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger-kernel", "triton",
                 "unsloth", "unsloth_zoo", "trl"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    main()
