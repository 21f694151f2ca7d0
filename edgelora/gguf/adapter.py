"""PEFT LoRA adapter -> LoRA GGUF sidecar (``general.type = adapter``).

llama.cpp loads the sidecar next to the base GGUF (``Llama(model_path=base, lora_path=sidecar)``)
and adds ``scale · lora_b @ (lora_a @ x)`` to each adapted matmul, with
``scale = adapter.lora.alpha / rank`` where ``rank`` is read from each ``lora_b``'s shape.
So one alpha serves the whole file, and everything PEFT expresses per module has to be
baked into ``lora_b``:

- rsLoRA (``alpha / sqrt(r)``) and ``rank_pattern``/``alpha_pattern``: ``lora_b`` is
  multiplied by ``s_module · r_module / alpha_file`` (exactly 1 where the module uses the
  adapter's defaults, so a plain adapter is written unchanged);
- the architecture's per-tensor row transform (llama's q/k rotary permutation) acts on
  the rows of ``W`` and so on the rows of ``B``: ``transform(W + sBA) = transform(W) +
  s·transform(B)·A``. That identity is checked per tensor on a random probe, so an
  architecture whose transform is not row-wise fails loudly instead of writing a wrong file.

What a sidecar cannot carry is refused by name: tensors the adapter saves whole
(``modules_to_save``), embedding LoRA, and ``fan_in_fan_out`` layers. Convert those merged.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from edgelora.errors import ConversionError
from edgelora.util.files import atomic_path
from edgelora.gguf.architectures import find_architecture
from edgelora.gguf.builtin import builtin_architectures

SIDECAR_OUTTYPES = ("f32", "f16", "bf16")


def file_alpha(adapter_config: dict) -> float:
    """The single ``adapter.lora.alpha`` that gives the adapter's default modules their PEFT scale."""
    r = float(adapter_config["r"])
    alpha = float(adapter_config.get("lora_alpha", r))
    return alpha * math.sqrt(r) if adapter_config.get("use_rslora") else alpha


def _as_f32(value: float) -> float:
    import numpy as np

    return float(np.float32(value))  # what llama.cpp reads back


def _encode(arr, outtype: str):
    import numpy as np
    import torch

    if outtype == "f32":
        return np.ascontiguousarray(arr, dtype=np.float32)
    if outtype == "f16":
        out = np.ascontiguousarray(arr.astype(np.float16))
        if not np.isfinite(out).all():
            raise ConversionError("a LoRA factor overflows float16; write the sidecar as f32 or bf16")
        return out
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy()


def _check_row_wise(arch, gguf_name: str, b, config: dict):
    """transform(B) such that transform(B @ P) == transform(B) @ P (row-wise), else refuse."""
    import numpy as np

    try:
        tb = arch.transform(gguf_name, b, config)
        probe = np.random.default_rng(0).standard_normal((b.shape[1], 3)).astype(np.float32)
        tbp = arch.transform(gguf_name, b @ probe, config)
    except (ValueError, IndexError) as e:
        raise ConversionError(f"{gguf_name}: the {arch.name} tensor transform cannot be applied to a "
                              f"LoRA factor ({e}); convert the adapter merged instead") from None
    tb = np.asarray(tb, dtype=np.float32)
    if tb.shape != b.shape or not np.allclose(tb @ probe, tbp, rtol=1e-4, atol=1e-5):
        raise ConversionError(f"{gguf_name}: the {arch.name} tensor transform is not row-wise, so a LoRA "
                              "sidecar cannot express it; convert the adapter merged instead")
    return tb


def plan_sidecar(view, arch, config: dict) -> list[tuple[str, str, float]]:
    """[(gguf base name, HF name, lora_b factor)] in file order; refuses what a sidecar cannot carry."""
    from edgelora.gguf.convert import tensor_order_key

    replaced = [n for n in view.merged_names() if view.lora_pair(n) is None]
    if replaced:
        raise ConversionError(f"{view.adapter_dir}: {replaced[0]} is saved whole by the adapter "
                              "(modules_to_save or an untied embedding); a LoRA sidecar cannot carry it, "
                              "convert the adapter merged instead")
    alpha = _as_f32(file_alpha(view.adapter_config))
    rows = []
    for hf_name in view.merged_names():
        pair = view.lora_pair(hf_name)
        if pair.kind != "linear":
            raise ConversionError(f"{view.adapter_dir}: {pair.a_key} is an {pair.kind} LoRA; a sidecar "
                                  "carries Linear LoRA only, convert the adapter merged instead")
        try:
            gguf_name = arch.map_name(hf_name, config)
        except KeyError:
            gguf_name = None
        if gguf_name is None:
            raise ConversionError(f"{view.adapter_dir}: LoRA target {hf_name} has no tensor in the "
                                  f"{arch.gguf_arch} GGUF")
        # llama.cpp applies alpha_file / r to this tensor; PEFT applies pair.scale.
        rows.append((gguf_name, hf_name, pair.scale * pair.r / alpha))
    rows.sort(key=lambda row: tensor_order_key(row[0]))
    return rows


def convert_adapter(model_dir, adapter_dir, out_path, *, outtype: str = "f32",
                    architectures: dict | None = None, name: str | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Write ``out_path``: the LoRA GGUF of PEFT ``adapter_dir`` for the GGUF of ``model_dir``.

    ``architectures`` is the GGUF architecture registry (default: built-in llama). Returns a
    JSON-able report (tensors, alpha, how many ``lora_b`` carry a baked scale).
    """
    import gguf
    import numpy as np

    from edgelora.merge.view import MergedView

    outtype = outtype.lower()
    if outtype not in SIDECAR_OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} not supported (choose one of {', '.join(SIDECAR_OUTTYPES)})")
    if adapter_dir is None:
        raise ConversionError("--adapter-only needs an adapter directory (--adapter)")
    t0 = time.monotonic()
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    dtype = {"f32": np.float32, "f16": np.float16, "bf16": np.int16}[outtype]
    raw = gguf.GGMLQuantizationType.BF16 if outtype == "bf16" else None
    itemsize = 4 if outtype == "f32" else 2

    with MergedView(model_dir, adapter_dir) as view:
        arch = find_architecture(view.config, architectures or builtin_architectures())
        text_config = getattr(arch, "text_config", None)  # nested configs (Gemma 3) name their text part
        config = text_config(view.config) if text_config else view.config
        rows = plan_sidecar(view, arch, config)
        if not rows:
            raise ConversionError(f"{adapter_dir}: the adapter has no LoRA tensors")
        alpha = _as_f32(file_alpha(view.adapter_config))
        baked = 0
        with atomic_path(out_path) as tmp:
            writer = gguf.GGUFWriter(str(tmp), arch.gguf_arch)
            try:
                writer.add_type(gguf.GGUFType.ADAPTER)
                writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
                writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
                writer.add_name(name or Path(adapter_dir).name)
                writer.add_file_type(int(file_type))
                writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
                for gguf_name, hf_name, _ in rows:
                    r = view.lora_pair(hf_name).r
                    out_dim, in_dim = view.shape(hf_name)
                    # PEFT's shapes as they are: A [r, in], B [out, r]
                    for suffix, shape in ((".lora_a", (r, in_dim)), (".lora_b", (out_dim, r))):
                        writer.add_tensor_info(gguf_name + suffix, shape, np.dtype(dtype),
                                               r * (in_dim if suffix == ".lora_a" else out_dim) * itemsize,
                                               raw_dtype=raw)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                total = 0
                for i, (gguf_name, hf_name, factor) in enumerate(rows):
                    a, b = (t.numpy() for t in view.lora_factors(hf_name))
                    b = _check_row_wise(arch, gguf_name, b, config)
                    if abs(factor - 1.0) > 1e-9:
                        b = b * np.float32(factor)
                        baked += 1
                    for arr in (a, b):
                        data = _encode(arr, outtype)
                        writer.write_tensor_data(data)
                        total += data.nbytes
                    if progress is not None:
                        progress(i + 1, len(rows), gguf_name)
                writer.flush()
            finally:
                writer.close()
        summary = view.summary()

    out_path = Path(out_path)
    return {"path": str(out_path), "type": "lora-adapter", "gguf_arch": arch.gguf_arch, "outtype": outtype,
            "alpha": alpha, "lora_pairs": len(rows), "baked_scales": baked, "tensor_bytes": total,
            "file_bytes": out_path.stat().st_size, "use_rslora": summary["use_rslora"],
            "rank_pattern": summary["rank_pattern"], "alpha_pattern": summary["alpha_pattern"],
            "seconds": round(time.monotonic() - t0, 3)}


def compare_sidecar(base_gguf, adapter_gguf, model_dir, adapter_dir, *, prompts=None, n_tokens: int = 64,
                    tokenizer_dir=None) -> dict:
    """Base GGUF + sidecar in llama.cpp vs the PEFT adapter-attached HF model (float32)."""
    from edgelora.gguf.validate import compare_logits

    return compare_logits(base_gguf, model_dir, adapter_dir, prompts=prompts, n_tokens=n_tokens,
                          tokenizer_dir=tokenizer_dir, lora_path=str(adapter_gguf))
