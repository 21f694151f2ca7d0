"""Where and how the base model is loaded for training.

Resolves device, dtype and quantization (QLoRA NF4 on CUDA, plain LoRA on CPU) and
loads the model accordingly; every choice that is not the obvious one is announced
through the progress callback as a one-line notice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from edgelora.errors import TrainingError

log = logging.getLogger("edgelora.training.loop")

Progress = Callable[[dict], None]


def notice(progress: Progress | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress({"event": "notice", "message": message})


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN reports native bf16 support (AVX512-BF16 / AMX) on this CPU."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older torch or no oneDNN: be conservative
        return False


def resolve_setup(device: str, quantization: str, dtype: str, progress: Progress | None) -> tuple[str, str, str]:
    """Turn "auto" choices into concrete (device, quantization, dtype); refuse impossible ones."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise TrainingError(f"device: expected auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("device: cuda requested but torch sees no CUDA GPU")

    if quantization not in ("auto", "nf4", "none"):
        raise TrainingError(f"quantization: expected auto, nf4 or none, got {quantization!r}")
    if quantization == "nf4" and device == "cpu":
        raise TrainingError("quantization: nf4 (QLoRA) needs a CUDA GPU; use quantization='none' on CPU")
    if quantization == "auto":
        quantization = "none"
        if device != "cpu":
            try:
                import bitsandbytes  # noqa: F401

                quantization = "nf4"
            except ImportError:
                notice(progress, "bitsandbytes not installed: training plain LoRA (no 4-bit base) instead of QLoRA")

    aliases = {"bf16": "bfloat16", "fp32": "float32", "bfloat16": "bfloat16", "float32": "float32"}
    if dtype == "auto":
        if device == "cpu":
            dtype = "bfloat16" if cpu_has_fast_bf16() else "float32"
            if dtype == "float32":
                notice(progress, "this CPU has no native bf16 matmul: training LoRA in fp32 (slower, more memory)")
            else:
                notice(progress, "no CUDA GPU: training plain LoRA in bf16 on the CPU (fine for small models)")
        else:
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    elif dtype in aliases:
        dtype = aliases[dtype]
    else:
        raise TrainingError(f"dtype: expected auto, bfloat16 or float32, got {dtype!r}")
    return device, quantization, dtype


def linear_target_modules(model) -> list[str]:
    """Names (last path component) of every Linear layer except the output head."""
    import torch

    head = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        # bitsandbytes' Linear4bit subclasses nn.Linear, so QLoRA models match too.
        if isinstance(module, torch.nn.Linear) and module is not head and not name.endswith("lm_head"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def load_model(base_dir: Path, device: str, quantization: str, dtype: str):
    """Load the base from local files only, ready for LoRA: NF4 + k-bit prep, or plain."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    # transformers renamed torch_dtype to dtype in 4.56; pass whichever it knows.
    new_kw = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)
    kwargs = {"local_files_only": True, ("dtype" if new_kw else "torch_dtype"): torch_dtype}
    try:
        if quantization == "nf4":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            index = torch.device(device).index or 0
            model = AutoModelForCausalLM.from_pretrained(base_dir, device_map={"": index}, **kwargs)
            # Not peft's prepare_model_for_kbit_training: it casts norms, embeddings and
            # the head to fp32, which runs the whole residual stream in fp32 (slower,
            # more memory). The base stays bf16; LoRA weights are fp32 masters under autocast.
            for p in model.parameters():
                p.requires_grad_(False)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs).to(device)
            if device != "cpu":
                # On CPU recomputation costs more time than the memory is worth.
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                model.enable_input_require_grads()
    except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError) as e:
        raise TrainingError(f"{base_dir}: CUDA out of memory loading the base model ({quantization=}, {dtype=})") from e
    except (OSError, ValueError) as e:
        raise TrainingError(f"{base_dir}: cannot load base model ({type(e).__name__}: {e})".replace("\n", " ")) from e
    model.config.use_cache = False
    return model


def memory_budget(gib: float) -> float | str | None:
    """[train] memory_budget_gib as the loop takes it: 0 "auto" (from the free GPU memory), -1 None
    (off: least memory), else the GiB."""
    return "auto" if gib == 0 else (None if gib < 0 else gib)


def check_config(c, max_length: int) -> None:
    """The [train] settings a run cannot start with, as one-line errors naming the field."""
    for name in ("r", "epochs", "batch_size", "grad_accum", "eval_every"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TrainingError(f"{name}: must be a positive integer, got {value!r}")
    if not isinstance(max_length, int) or max_length < 1:
        raise TrainingError(f"max_length: must be a positive integer, got {max_length!r}")
    for name in ("max_steps", "save_every"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TrainingError(f"{name}: must be a positive integer or 0 (off), got {value!r}")
    if not c.learning_rate > 0:
        raise TrainingError(f"learning_rate: must be positive, got {c.learning_rate!r}")
    if not isinstance(c.dequant_cache, int) or c.dequant_cache < -1:
        raise TrainingError(f"dequant_cache: must be -1 (all) or a count >= 0, got {c.dequant_cache!r}")
    if not isinstance(c.recompute_layers, int) or c.recompute_layers < -1:
        raise TrainingError(f"recompute_layers: must be -1 (all) or a count >= 0, got {c.recompute_layers!r}")
    budget = c.memory_budget_gib
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or (budget < 0 and budget != -1):
        raise TrainingError(f"memory_budget_gib: must be 0 (automatic), -1 (off) or a positive number of GiB, "
                            f"got {budget!r}")
    if budget > 0 and (c.recompute_layers != -1 or c.dequant_cache != 0):
        raise TrainingError("memory_budget_gib: chooses recompute_layers and dequant_cache itself; "
                            "leave those at -1 and 0 or drop the budget")
    if not 0 <= c.dropout < 1 or not 0 <= c.warmup_ratio < 1:
        raise TrainingError("dropout and warmup_ratio: must be in [0, 1)")


def limit_recompute(model, recompute_layers: int) -> int | None:
    """Keep gradient checkpointing on the first ``recompute_layers`` layers only; return how many recompute."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # older transformers: no per-layer switch
        return None
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    if not layers:
        return None
    if recompute_layers >= 0:
        for layer in layers[recompute_layers:]:
            layer.gradient_checkpointing = False
    return sum(1 for m in layers if m.gradient_checkpointing)
