"""Checks that the merged view is the adapter-attached model, and writing it out.

- ``tensor_identity_check``: per merged tensor, ``(W + sBA)x == Wx + s·B(Ax)`` on random x
  (catches orientation, transposition and dtype bugs in the merge arithmetic).
- ``alpha_check``: logits of PEFT's adapter-attached model vs a model carrying the view's
  tensors on chat-templated probe prompts. PEFT computes its own scale from the adapter
  config, so a wrong alpha/r/rsLoRA/pattern in the view shows up here.
- ``materialize``: merged safetensors (sharded, streamed tensor by tensor) + config + tokenizer.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from edgelora.errors import FidelityError
from edgelora.util.files import atomic_dir

IDENTITY_RTOL = 1e-4  # float32 matmuls in two association orders differ by ~1e-6 relative
SHARD_BYTES = 2_000_000_000
_COPY_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken", ".md")
_SKIP_COPY = ("model.safetensors.index.json", "adapter_config.json", "edgelora-import.json")


def tensor_identity_check(view, n_random: int = 4, *, seed: int = 0, rtol: float = IDENTITY_RTOL) -> dict:
    """For every LoRA-merged tensor compare the merged matrix with the factored product on
    ``n_random`` random vectors. Raises FidelityError beyond ``rtol`` (relative to |Wx|∞)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    worst, worst_name, checked = 0.0, None, 0
    for name in view.merged_names():
        pair = view.lora_pair(name)
        if pair is None:
            continue  # saved whole (modules_to_save): nothing to factor
        w = view.base_tensor(name)
        merged = view.get(name)
        a, b = view.lora_factors(name)
        x = torch.randn(w.shape[1], n_random, generator=gen)
        if pair.kind in ("embedding", "linear_t"):  # delta = (BA)ᵀ, so delta·x = Aᵀ(Bᵀx)
            factored = w @ x + pair.scale * (a.T @ (b.T @ x))
        else:
            factored = w @ x + pair.scale * (b @ (a @ x))
        got = merged @ x
        ref = factored.abs().max().item() or 1.0
        err = (got - factored).abs().max().item() / ref
        if not err <= worst:  # also catches NaN
            worst, worst_name = err, name
        checked += 1
    report = {"checked": checked, "n_random": n_random, "max_rel_err": worst, "worst": worst_name,
              "rtol": rtol, "replaced": len(view.merged_names()) - checked}
    if not worst <= rtol:
        raise FidelityError(f"merge identity: {worst_name}: relative error {worst:.3g} > {rtol:g} "
                            "between (W+sBA)x and Wx+sB(Ax)")
    return report


def _messages(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def encode_prompts(tokenizer, prompts) -> list[list[int]]:
    """Chat-template each prompt (a string or a message list) with a generation prompt."""
    out = []
    for p in prompts:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(_messages(p), tokenize=False, add_generation_prompt=True)
        else:
            text = p if isinstance(p, str) else "\n".join(m["content"] for m in p)
        ids = tokenizer.encode(text, add_special_tokens=False)
        out.append(list(ids))
    return out


def probe_batches(base_dir: Path, adapter_dir: Path, prompts, max_prompt_tokens: int, purpose: str):
    """Token id lists of the chat-templated probe prompts (the last ``max_prompt_tokens`` each)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    batches = [ids[-max_prompt_tokens:] for ids in encode_prompts(tok, prompts) if ids]
    if not batches:
        raise FidelityError(f"{adapter_dir}: {purpose} needs at least one non-empty probe prompt")
    return batches


def alpha_check(base_dir, adapter_dir, prompts, *, tolerance: float = 1e-2, min_top1: float = 1.0,
                max_prompt_tokens: int = 256, view=None, base_filter=None) -> dict:
    """Adapter-attached (PEFT) vs merged (the view's tensors) logits on probe prompts.

    ``tolerance`` is an absolute bound on max |Δlogit| (float32 on both sides; expect ~1e-5).
    Top-1 agreement counts a position as agreeing when both argmaxes match or the merged
    model's logit at PEFT's argmax is within ``tolerance`` of its maximum (an exact tie).
    Raises FidelityError beyond either bound. ``view`` lets a caller pass a MergedView
    (tests corrupt one to prove the check fails). Both sides run streamed, one module's
    weights in memory at a time (:mod:`edgelora.merge.streamed_forward`).
    """
    import torch

    from edgelora.merge.view import MergedView
    from edgelora.merge.streamed_forward import reference_logits

    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    batches = probe_batches(base_dir, adapter_dir, prompts, max_prompt_tokens, "alpha check")
    # base_filter (e.g. the NF4 merge base): PEFT attaches to the same base
    reference = reference_logits(base_dir, batches, adapter_dir=adapter_dir, base_filter=base_filter)
    ref = reference.logits
    own_view = view is None
    view = view or MergedView(base_dir, adapter_dir, base_filter=base_filter)
    try:
        merged = reference_logits(base_dir, batches, view=view)
    finally:
        if own_view:
            view.close()
    got = merged.logits

    max_abs, sum_abs, n_vals, agree, positions = 0.0, 0.0, 0, 0, 0
    for r, g in zip(ref, got):
        d = (r - g).abs()
        max_abs = max(max_abs, d.max().item()) if torch.isfinite(d).all() else float("inf")
        sum_abs += d.sum().item()
        n_vals += d.numel()
        r_top = r.argmax(-1)
        g_at_r = g.gather(-1, r_top[:, None])[:, 0]
        ok = (g.argmax(-1) == r_top) | (g.max(-1).values - g_at_r <= tolerance)
        agree += int(ok.sum().item())
        positions += ok.numel()
    report = {"prompts": len(batches), "positions": positions, "max_abs_diff": max_abs,
              "mean_abs_diff": sum_abs / max(n_vals, 1), "top1_agreement": agree / max(positions, 1),
              "tolerance": tolerance, "min_top1": min_top1,
              "max_abs_logit": max(r.abs().max().item() for r in ref),
              "reference": reference.describe(), "merged": merged.describe()}
    if not (max_abs <= tolerance and report["top1_agreement"] >= min_top1):
        raise FidelityError(
            f"alpha check {adapter_dir}: merged vs adapter-attached logits differ: max |Δ| "
            f"{max_abs:.4g} (limit {tolerance:g}), mean |Δ| {report['mean_abs_diff']:.3g}, top-1 "
            f"agreement {report['top1_agreement']:.4f} (min {min_top1:g}) over {positions} positions")
    return report


# -- writing merged safetensors -------------------------------------------------------
_ST_DTYPES = {"F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
              "F64": ("float64", 8)}


def materialize(view, out_dir, *, shard_bytes: int = SHARD_BYTES) -> dict:
    """Write the merged model to ``out_dir`` (atomically): safetensors shards of about
    ``shard_bytes`` each, written tensor by tensor, each in its base dtype, plus the base's
    config, tokenizer and generation files. Returns {path, files, shards, tensors, bytes}."""
    out_dir = Path(out_dir)
    names = sorted(view.names())
    plan, shard, size = [], [], 0
    for n in names:
        dt = view.dtype(n)
        if dt not in _ST_DTYPES:
            raise FidelityError(f"materialize: tensor {n} has dtype {dt}; only float tensors are written")
        nbytes = _numel(view.shape(n)) * _ST_DTYPES[dt][1]
        if shard and size + nbytes > shard_bytes:
            plan.append(shard)
            shard, size = [], 0
        shard.append((n, dt, view.shape(n), nbytes))
        size += nbytes
    if shard:
        plan.append(shard)
    with atomic_dir(out_dir) as staging:
        weight_map, files, total = {}, [], 0
        for i, shard in enumerate(plan):
            fname = ("model.safetensors" if len(plan) == 1
                     else f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors")
            total += _write_shard(view, staging / fname, shard)
            files.append(fname)
            weight_map.update({n: fname for n, *_ in shard})
        if len(plan) > 1:
            (staging / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))
        (staging / "config.json").write_text(json.dumps(view.config, indent=2, sort_keys=True) + "\n")
        for src in sorted(Path(view.base_dir).iterdir()):
            if (src.is_file() and src.suffix in _COPY_SUFFIXES and src.name not in _SKIP_COPY
                    and src.name != "config.json"):
                shutil.copyfile(src, staging / src.name)
        staging.chmod(0o755)
    return {"path": str(out_dir), "shards": files, "tensors": len(names), "bytes": total,
            "merged_tensors": len(view.merged_names())}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _write_shard(view, path: Path, shard) -> int:
    """safetensors layout: u64 header length, JSON header (offsets known from shapes alone),
    then the raw little-endian tensor bytes in header order, one tensor in memory at a time."""
    import torch

    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for n, dt, shape, nbytes in shard:
        header[n] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data section 8-byte aligned, as safetensors does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for n, dt, shape, nbytes in shard:
            t = view.get(n).to(getattr(torch, _ST_DTYPES[dt][0])).contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
            if len(data) != nbytes:
                raise FidelityError(f"materialize: {n} gave {len(data)} bytes, expected {nbytes}")
            f.write(data)
    return offset
