"""Importance matrix for llama.cpp's quantizer, computed in Python from calibration data.

For every Linear layer of the merged HF model, a forward pre-hook accumulates the sum of
squared inputs per input channel and the number of tokens seen. Their ratio (the mean
squared activation of each column) is what llama.cpp's quantizer weighs rounding errors
with; the very low-bit types (IQ1/IQ2/IQ3_XXS, Q2_K_S) refuse to run without it.

Files are written in llama.cpp's GGUF imatrix layout (``general.type = imatrix``,
``imatrix.datasets`` / ``chunk_count`` / ``chunk_size``, tensors ``<name>.in_sum2`` and
``<name>.counts``), so ``llama-quantize --imatrix`` reads them too; :func:`read_imatrix`
reads that layout and the legacy ``.dat`` one back as the per-tensor means the quantizer
takes. Tensor names are the GGUF names (``blk.0.attn_q.weight``), mapped through the
architecture entry the converter uses.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from edgelora.errors import QuantizeError
from edgelora.util.files import atomic_path

IMATRIX_TYPE = "imatrix"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


def gguf_name_for(module_name: str, arch, config: dict) -> str | None:
    """GGUF weight name of an HF Linear module, or None when it is not exported."""
    from edgelora.gguf.architectures import tied

    if module_name == "lm_head":
        # A tied model's output matmul reads token_embd: its columns are weighed by the same inputs.
        return "token_embd.weight" if tied(config) else "output.weight"
    try:
        return arch.map_name(module_name + ".weight", config)
    except KeyError:
        return None


def _merged_model(model_dir, adapter_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
    if adapter_dir is not None:
        from edgelora.merge.view import MergedView
        from edgelora.merge.streamed_forward import load_view_tensors

        with MergedView(model_dir, adapter_dir) as view:
            load_view_tensors(model, view)
    return model.eval()


def compute_imatrix(model_dir, token_batches: list[list[int]], *, adapter_dir=None, architectures=None) -> dict:
    """Sums of squared inputs and token counts per GGUF weight, over ``token_batches``.

    Returns {"sums": {name: float64 array}, "counts": {name: int}, "tokens", "chunks", "seconds"}.
    """
    import json

    import numpy as np
    import torch

    from edgelora.gguf.architectures import find_architecture
    from edgelora.gguf.builtin import builtin_architectures

    model_dir = Path(model_dir)
    batches = [ids for ids in token_batches if ids]
    if not batches:
        raise QuantizeError("importance matrix: no calibration tokens")
    config = json.loads((model_dir / "config.json").read_text())
    arch = find_architecture(config, architectures or builtin_architectures())
    text_config = arch.text_config(config)
    t0 = time.monotonic()
    model = _merged_model(model_dir, adapter_dir)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def make_hook(gguf_name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            acc = sums.get(gguf_name)
            sq = (x * x).sum(0)
            sums[gguf_name] = sq if acc is None else acc + sq
            counts[gguf_name] = counts.get(gguf_name, 0) + x.shape[0]
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            gguf_name = gguf_name_for(name, arch, text_config)
            if gguf_name is not None:
                hooks.append(module.register_forward_pre_hook(make_hook(gguf_name)))
    if not hooks:
        raise QuantizeError(f"{model_dir}: importance matrix: no Linear layer maps to a GGUF tensor")
    from edgelora.runtime.llama import default_threads

    threads = torch.get_num_threads()
    # Every core busy-waiting in OpenMP on a shared machine ran 12x slower than half of them.
    torch.set_num_threads(min(threads, default_threads()))
    try:
        with torch.no_grad():
            for ids in batches:
                model(torch.tensor([ids]))
    finally:
        torch.set_num_threads(threads)
        for h in hooks:
            h.remove()
    return {"sums": {k: v.numpy().astype(np.float64) for k, v in sums.items()}, "counts": counts,
            "tokens": sum(len(b) for b in batches), "chunks": len(batches),
            "seconds": round(time.monotonic() - t0, 3)}


def means(result: dict) -> dict:
    """{GGUF name: float32 mean squared activation per input column} (what the quantizer takes)."""
    import numpy as np

    return {k: (v / max(result["counts"][k], 1)).astype(np.float32) for k, v in result["sums"].items()}


def write_imatrix(path, result: dict, *, dataset: str = "calibration") -> Path:
    """Write ``result`` of :func:`compute_imatrix` as a GGUF imatrix file (atomically)."""
    import gguf
    import numpy as np

    path = Path(path)
    chunk_size = max(1, result["tokens"] // max(result["chunks"], 1))
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=IMATRIX_TYPE)
        writer.add_type(IMATRIX_TYPE)
        writer.add_array(KEY_DATASETS, [dataset])
        writer.add_uint32(KEY_CHUNK_COUNT, int(result["chunks"]))
        writer.add_uint32(KEY_CHUNK_SIZE, int(chunk_size))
        for name in sorted(result["sums"]):
            sums = np.asarray(result["sums"][name], dtype=np.float32).reshape(1, -1)
            writer.add_tensor(f"{name}.in_sum2", sums)
            writer.add_tensor(f"{name}.counts", np.array([[float(result["counts"][name])]], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def read_imatrix(path) -> dict:
    """{GGUF tensor name: float32 means} from a GGUF imatrix or a legacy ``.dat`` file."""
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"{path}: imatrix file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)


def _read_gguf(path: Path) -> dict:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    sums, counts = {}, {}
    for t in reader.tensors:
        data = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = data
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = data
    if not sums:
        raise QuantizeError(f"{path}: no <tensor>.in_sum2 entries; not an imatrix file")
    out = {}
    for name, s in sums.items():
        if name not in counts:
            raise QuantizeError(f"{path}: {name}.in_sum2 without {name}.counts")
        c = counts[name]
        per = s.reshape(len(c), -1)
        vals = np.where(c[:, None] > 0, per / np.maximum(c[:, None], 1e-30), 1.0)
        out[name] = vals.reshape(-1).astype(np.float32)
    return out


def _read_legacy(path: Path) -> dict:
    import numpy as np

    raw = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(raw):
            raise QuantizeError(f"{path}: truncated legacy imatrix file")
        vals = struct.unpack_from(fmt, raw, pos)
        pos += size
        return vals

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise QuantizeError(f"{path}: legacy imatrix file has no entries")
    out = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        name = raw[pos:pos + length].decode("utf-8", "replace")
        pos += length
        ncall, nval = take("<ii")
        if nval < 1:
            raise QuantizeError(f"{path}: entry {name!r} has no values")
        vals = np.frombuffer(raw, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        out[name] = vals / ncall if ncall > 0 else vals
    return out


def calibration_batches(tokenizer_dir, conversations: list[dict], *, max_examples: int, max_tokens: int) -> list[list[int]]:
    """Token ids of whole conversations rendered with the tokenizer's chat template (as in training)."""
    from edgelora.runtime.chat_template import load_tokenizer_template, render_chat
    from edgelora.gguf.validate import hf_tokenizer

    tok = hf_tokenizer(tokenizer_dir)
    template, special = load_tokenizer_template(tokenizer_dir)
    batches = []
    for ex in conversations[:max_examples]:
        text = render_chat(template, ex["messages"], add_generation_prompt=False, special_tokens=special)
        ids = tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
        if ids:
            batches.append(ids)
    return batches
