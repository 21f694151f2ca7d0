"""Merged HF model -> GGUF (F32/F16/BF16), streamed tensor by tensor.

The base is read once through :class:`edgelora.merge.MergedView` (LoRA deltas added
on read) and the GGUF is written once: every tensor is declared first, then header,
keys and tensor infos are written, then each tensor's data, so memory stays at about
one tensor. Before anything is written, ladder step 1 checks the plan.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import re
import time
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgelora.errors import ConversionError
from edgelora.util.files import atomic_path
from edgelora.gguf.architectures import Architecture, find_architecture
from edgelora.gguf.builtin import builtin_architectures
from edgelora.gguf.fused_merge import CHUNK_ELEMENTS
from edgelora.gguf.streaming import BackgroundTensorWriter, TensorDataWriter

OUTTYPES = ("f32", "f16", "bf16")


@dataclass(frozen=True)
class PlannedTensor:
    gguf_name: str
    hf_name: str | None  # None: computed by the architecture (extra tensor)
    shape: tuple[int, ...]
    keep_f32: bool


def _is_f32_tensor(gguf_name: str, shape) -> bool:
    # llama.cpp wants every 1-D tensor (norms, biases, rope factors) in F32.
    return len(shape) <= 1 or gguf_name.endswith((".bias", "_norm.weight")) or gguf_name.startswith("rope_")


def tensor_order_key(name: str):
    m = re.match(r"blk\.(\d+)\.(.*)", name)
    return (1, int(m.group(1)), m.group(2)) if m else (0 if name.startswith("token_embd") else 2, 0, name)


VOCAB_TENSORS = ("token_embd.weight", "output.weight")  # one row per token


def plan_tensors(view, arch: Architecture, config: dict | None = None) -> tuple[list[PlannedTensor], list[str]]:
    """Every HF tensor mapped or knowingly skipped; unknown names are collected into one error."""
    config = config if config is not None else arch.text_config(view.config)
    planned: list[PlannedTensor] = []
    skipped: list[str] = []
    unknown: list[str] = []
    leftovers = [n for n in view.names() if "lora_" in n or ".base_layer." in n]
    if leftovers:
        raise ConversionError(f"{view.base_dir}: unmerged PEFT tensors in the base weights "
                              f"(e.g. {leftovers[0]}); merge the adapter first")
    for hf_name in view.names():
        try:
            gguf_name = arch.map_name(hf_name, config)
        except KeyError:
            unknown.append(hf_name)
            continue
        if gguf_name is None:
            skipped.append(hf_name)
            continue
        shape = tuple(view.shape(hf_name))
        planned.append(PlannedTensor(gguf_name, hf_name, shape, _is_f32_tensor(gguf_name, shape)))
    if unknown:
        raise ConversionError(f"{view.base_dir}: {len(unknown)} tensor(s) not mapped by the {arch.name} "
                              f"GGUF architecture: {', '.join(unknown[:5])}")
    for name, arr in arch.extra_tensors(config):
        planned.append(PlannedTensor(name, None, tuple(arr.shape), True))
    names = [p.gguf_name for p in planned]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConversionError(f"{view.base_dir}: several HF tensors map to {sorted(dupes)[0]}")
    missing = sorted(arch.expected_tensors(config) - set(names))
    extra = sorted(set(names) - arch.expected_tensors(config))
    if missing:
        raise ConversionError(f"{view.base_dir}: missing tensor(s) llama.cpp needs: {', '.join(missing[:5])}")
    if extra:
        # llama.cpp refuses files with tensors it does not create ("wrong number of tensors")
        raise ConversionError(f"{view.base_dir}: tensor(s) the {arch.gguf_arch} GGUF arch would reject: "
                              f"{', '.join(extra[:5])}")
    planned.sort(key=lambda p: tensor_order_key(p.gguf_name))
    return planned, skipped


def fit_vocab_rows(planned: list[PlannedTensor], rows_out: int) -> list[PlannedTensor]:
    """Embedding/output tensors cut to ``rows_out`` rows (Gemma 3: the real vocabulary)."""
    return [dataclasses.replace(p, shape=(rows_out, *p.shape[1:]))
            if p.gguf_name in VOCAB_TENSORS and p.shape[0] > rows_out else p for p in planned]


def check_vocab(planned: list[PlannedTensor], export, config: dict, where: Path,
                embedding_rows: int | None = None) -> None:
    """Ladder step 1, tokenizer side: token count == embedding rows, special ids in range."""
    rows = next(p.shape[0] for p in planned if p.gguf_name == "token_embd.weight")
    if len(export.tokens) != rows:
        raise ConversionError(f"{where}: {len(export.tokens)} tokens but token_embd has {rows} rows")
    hf_rows = embedding_rows if embedding_rows is not None else rows
    if int(config.get("vocab_size", hf_rows)) != hf_rows:
        raise ConversionError(f"{where / 'config.json'}: vocab_size {config.get('vocab_size')} "
                              f"!= {hf_rows} embedding rows")
    for name, tid in export.special_ids.items():
        if not 0 <= tid < rows:
            raise ConversionError(f"{where}: {name} token id {tid} out of range [0, {rows})")


def _lineage(writer, config: dict, adapter_config: dict | None, name: str, base_model: dict | None) -> None:
    writer.add_name(name)
    base = dict(base_model or {})
    if not base:
        src = (adapter_config or {}).get("base_model_name_or_path") or config.get("_name_or_path") or ""
        if src.count("/") == 1 and not src.startswith((".", "/")):
            org, model = src.split("/")
            base = {"name": model, "organization": org, "repo_url": f"https://huggingface.co/{src}"}
    if base:
        writer.add_base_model_count(1)
        for key in ("name", "organization", "version", "repo_url"):
            if base.get(key):
                getattr(writer, f"add_base_model_{key}")(0, str(base[key]))


def to_output(arr, keep_f32: bool, outtype: str, name: str, out=None):
    """The array exactly as its bytes go to the file (BF16 as raw int16 bit patterns).

    ``out``: a flat 16-bit torch buffer of the output dtype to cast into instead of a new array."""
    import numpy as np
    import torch

    if keep_f32 or outtype == "f32":
        return np.ascontiguousarray(arr, dtype=np.float32)
    # torch casts on every core and vectorised (numpy's astype(float16) is one slow thread);
    # both round to nearest even
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if out is not None:
        narrow = out[: t.numel()].view(t.shape)
        narrow.copy_(t)
        if outtype == "bf16":
            return narrow.view(torch.int16).numpy()
    if outtype == "f16":
        # |x| >= 65520 rounds to inf, NaN stays NaN (and fails both tests)
        half = narrow if out is not None else t.to(torch.float16)
        lo, hi = torch.aminmax(half)  # vectorised on half; isfinite on half is ~10x slower
        if not (lo.item() > -math.inf and hi.item() < math.inf):
            raise ConversionError(f"{name}: a weight overflows float16; convert with outtype bf16 or f32")
        return half.numpy()
    # numpy has no bfloat16: write its raw 16-bit pattern
    return t.to(torch.bfloat16).view(torch.int16).numpy()


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _fused_output(view, arch, p: PlannedTensor, config: dict, outtype: str, out, raw_buf, work):
    """``p``'s 16-bit output computed in cache-sized row chunks (edgelora.gguf.fused_merge), or
    None where only the general path is exact (filtered/replaced bases, 1-D tensors, transforms
    that change values). ``out``/``raw_buf``: pooled buffers, or None for a fresh allocation."""
    import torch

    from edgelora.gguf.fused_merge import NotRowOrder, merged_rows, row_order

    source = view.plain_source(p.hf_name)
    if source is None or len(p.shape) != 2 or work is None:
        return None
    try:
        order = row_order(arch, p.gguf_name, p.shape[0], config)
    except NotRowOrder:
        return None
    file, stored_name, pair = source
    if raw_buf is None:
        raw_buf = torch.empty(file.nbytes(stored_name), dtype=torch.uint8)
    stored = file.read_raw(stored_name, raw_buf)
    if stored.dim() != 2 or stored.shape[1] != p.shape[1] or stored.shape[0] < p.shape[0]:
        return None
    if out is None:
        out = torch.empty(math.prod(p.shape), dtype=torch.float16 if outtype == "f16" else torch.bfloat16)
    lora = None
    if pair is not None:
        a, b = view.lora_factors(p.hf_name)
        lora = (a, b, pair.scale)
    try:
        result = merged_rows(stored, lora, p.shape[0], order, out, work)
    except OverflowError:
        raise ConversionError(f"{p.hf_name}: a weight overflows float16; convert with outtype bf16 or f32") from None
    return result.numpy() if outtype == "f16" else result.view(torch.int16).numpy()


def _stream_in_blocks(view, arch, p: PlannedTensor, config: dict, block_numel: int, free, raw_buf, work,
                      tensor_out) -> bool:
    """A tensor larger than the pooled buffers (the vocabulary tensors: 0.5 G elements on
    Llama 3 8B) merged and written in row blocks that fit them, so memory does not grow with
    the vocabulary. False (nothing written) where only the whole-tensor path applies."""
    import torch

    from edgelora.gguf.fused_merge import NotRowOrder, merged_rows, row_order

    source = view.plain_source(p.hf_name)
    if source is None or len(p.shape) != 2 or work is None or not 0 < p.shape[1] <= block_numel:
        return False
    file, stored_name, pair = source
    stored_shape = file.shape(stored_name)
    if len(stored_shape) != 2 or stored_shape[1] != p.shape[1] or stored_shape[0] < p.shape[0]:
        return False
    try:
        if row_order(arch, p.gguf_name, p.shape[0], config) is not None:
            return False  # a reordered tensor needs rows from anywhere: whole-tensor path
    except NotRowOrder:
        return False
    itemsize = file.nbytes(stored_name) // math.prod(stored_shape)
    rows, step = p.shape[0], min(block_numel // p.shape[1], raw_buf.numel() // (p.shape[1] * itemsize))
    if step == 0:
        return False
    a_b = view.lora_factors(p.hf_name) if pair is not None else None
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        stored = file.read_raw(stored_name, raw_buf, rows=(r0, r1))
        lora = None if a_b is None else (a_b[0], a_b[1][r0:r1], pair.scale)
        out = free.get()
        try:
            block = merged_rows(stored, lora, r1 - r0, None, out, work)
        except OverflowError:
            free.put(out)
            raise ConversionError(f"{p.hf_name}: a weight overflows float16; convert with outtype bf16 or f32") from None
        data = block.view(torch.int16).numpy() if block.dtype == torch.bfloat16 else block.numpy()
        tensor_out.write(data, partial(free.put, out), first=r0 == 0, last=r1 == rows)
    return True


def convert(model_dir, out_path, *, adapter_dir=None, outtype: str = "f16",
            architectures: dict | None = None, progress: Callable[[int, int, str], None] | None = None,
            tokenizer_dir=None, name: str | None = None, base_model: dict | None = None,
            base_filter=None) -> dict:
    """Write ``out_path`` (GGUF) from ``model_dir`` (+ optional PEFT ``adapter_dir``, merged on read).

    ``base_filter`` is the merge base (MergedView's; e.g. the NF4 round trip for QLoRA adapters).

    ``architectures`` is the registry (default: every built-in entry); ``progress``
    is called as ``progress(done, total, gguf_tensor_name)``. Returns a JSON-able report.
    """
    import gguf
    import numpy as np
    import torch

    from edgelora.merge.view import MergedView
    from edgelora.gguf.tokenizer import build_tokenizer_export, write_tokenizer

    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} not supported (choose one of {', '.join(OUTTYPES)})")
    t0 = time.monotonic()
    model_dir = Path(model_dir)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else model_dir
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]

    with MergedView(model_dir, adapter_dir, base_filter=base_filter) as view:
        arch = find_architecture(view.config, architectures or builtin_architectures())
        config = arch.text_config(view.config)
        planned, skipped = plan_tensors(view, arch, config)
        rows = next(p.shape[0] for p in planned if p.gguf_name == "token_embd.weight")
        export = build_tokenizer_export(tokenizer_dir, config=config)
        rows_out = int(arch.vocab_rows(config, len(export.tokens), rows))
        export = export.padded_to(rows_out, tokenizer_dir)
        planned = fit_vocab_rows(planned, rows_out)
        check_vocab(planned, export, config, model_dir, embedding_rows=rows)
        extras = dict(arch.extra_tensors(config))

        with atomic_path(out_path) as tmp:
            writer = gguf.GGUFWriter(str(tmp), arch.gguf_arch)
            tensor_out = None
            try:
                writer.add_type("model")
                _lineage(writer, view.config, view.adapter_config,
                         name or (Path(adapter_dir).name if adapter_dir else model_dir.name), base_model)
                writer.add_file_type(int(file_type))
                writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
                arch.write_hparams(dict(config, vocab_size=rows_out), writer)
                write_tokenizer(writer, export)
                for p in planned:
                    f32 = p.keep_f32 or outtype == "f32"
                    itemsize = 4 if f32 else 2
                    n = int(np.prod(p.shape)) if p.shape else 1
                    dtype = np.float32 if f32 else (np.float16 if outtype == "f16" else np.int16)
                    raw = None if f32 or outtype == "f16" else gguf.GGMLQuantizationType.BF16
                    writer.add_tensor_info(p.gguf_name, p.shape, np.dtype(dtype), n * itemsize, raw_dtype=raw)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                total_bytes = 0
                tensor_out = BackgroundTensorWriter(TensorDataWriter(writer))  # writes overlap the next tensor's compute
                # ... on a core of their own: torch's spinning pool threads on every core fight the
                # writer (on 2 cores: 1 compute thread, 35 % less CPU time, same or better wall time)
                threads_before = torch.get_num_threads()
                torch.set_num_threads(max(1, min(threads_before, _usable_cores() - 1)))
                # One float32 buffer for every layer tensor (to_output copies out of it before the
                # next read), and three 16-bit output buffers handed back by the writer thread once
                # written (one being filled, one queued, one being written): no fresh allocations,
                # so no page faults per tensor. The vocabulary tensors, the largest, allocate their own.
                buf_numel = 0 if outtype == "f32" else max(
                    (math.prod(p.shape) for p in planned if not p.keep_f32 and p.gguf_name not in VOCAB_TENSORS),
                    default=0)
                scratch = torch.empty(buf_numel, dtype=torch.float32) if buf_numel else None
                free: queue.Queue = queue.Queue()
                for _ in range(3 if buf_numel else 0):
                    free.put(torch.empty(buf_numel, dtype=torch.float16 if outtype == "f16" else torch.bfloat16))
                work = None if outtype == "f32" else torch.empty(CHUNK_ELEMENTS, dtype=torch.float32)
                raw_buf = torch.empty(max((view.stored_nbytes(p.hf_name) for p in planned
                                           if p.hf_name and 0 < math.prod(p.shape) <= buf_numel), default=0),
                                      dtype=torch.uint8)
                for i, p in enumerate(planned):
                    # a float32 output is queued as is, so it must not live in the buffer
                    f32_out = p.keep_f32 or outtype == "f32"
                    pooled = not f32_out and p.hf_name is not None and 0 < math.prod(p.shape) <= buf_numel
                    if not pooled and not f32_out and p.hf_name is not None and _stream_in_blocks(
                            view, arch, p, config, buf_numel, free, raw_buf, work, tensor_out):
                        total_bytes += math.prod(p.shape) * 2
                        if progress is not None:
                            progress(i + 1, len(planned), p.gguf_name)
                        continue
                    buf = free.get() if pooled else None
                    data = None if f32_out or p.hf_name is None else _fused_output(
                        view, arch, p, config, outtype, buf, raw_buf if pooled else None, work)
                    if data is None:
                        if p.hf_name is None:
                            arr = extras[p.gguf_name]
                        else:
                            arr = view.get(p.hf_name, None if f32_out else scratch).numpy()
                            if p.gguf_name in VOCAB_TENSORS:
                                arr = arr[: p.shape[0]]
                            arr = arch.transform(p.gguf_name, arr, config)
                        data = to_output(arr, p.keep_f32, outtype, p.hf_name or p.gguf_name, buf)
                    if tuple(data.shape) != p.shape:
                        raise ConversionError(f"{p.hf_name}: transform changed shape {p.shape} -> {data.shape}")
                    tensor_out.write(data, None if buf is None else partial(free.put, buf))
                    total_bytes += data.nbytes
                    if progress is not None:
                        progress(i + 1, len(planned), p.gguf_name)
                tensor_out.finish()
                writer.flush()
            finally:
                if tensor_out is not None:
                    tensor_out.stop()
                    torch.set_num_threads(threads_before)
                writer.close()
        merged = view.merged_names()

    out_path = Path(out_path)
    return {
        "path": str(out_path), "arch": arch.name, "gguf_arch": arch.gguf_arch, "outtype": outtype,
        "pre": export.pre, "n_tensors": len(planned), "tensor_bytes": total_bytes,
        "file_bytes": out_path.stat().st_size, "skipped": skipped, "merged_tensors": len(merged),
        "tokenizer": export.summary(), "seconds": round(time.monotonic() - t0, 3),
    }
