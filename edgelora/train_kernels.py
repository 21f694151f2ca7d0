"""Faster training on CUDA: fused kernels and a loss that never builds full logits.

Liger Kernel (optional, ``pip install liger-kernel``) supplies fused RMSNorm, RoPE
and SwiGLU for the architectures it knows; they are patched onto the loaded model
instance and work under PEFT and bitsandbytes 4-bit layers because they call the
(wrapped) projection modules. Its fused linear cross-entropy computes the loss
from hidden states and the output head in chunks, so the ``tokens x vocab`` fp32
logits are never held in memory. Everything here is a no-op on CPU.
"""

from __future__ import annotations

import logging

log = logging.getLogger("edgelora.train")


def liger_available() -> bool:
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


# Families whose RMSNorm (no offset, llama casting), RoPE and SiLU-gated MLP match
# Liger's kernels exactly. Gemma-style norms (1 + weight) are deliberately absent.
_LIGER_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


def _cuda_rope(original, liger_rope):
    """RoPE that runs Liger's kernel on CUDA tensors and the original code elsewhere."""

    def rope(q, k, cos, sin, *args, **kwargs):
        if q.is_cuda and not args and set(kwargs) <= {"unsqueeze_dim"}:
            return liger_rope(q, k, cos, sin, **kwargs)
        return original(q, k, cos, sin, *args, **kwargs)

    rope.__edgelora_liger__ = True
    return rope


def apply_fused_kernels(model, device: str) -> list[str]:
    """Patch Liger's RMSNorm and SwiGLU onto this model's modules, and RoPE for CUDA tensors.

    Only the given instance's modules are changed (Liger's own ``apply_liger_kernel_to_*``
    also swaps classes module-wide, which would break a CPU model built later in the
    same process). The RoPE function is module-level in transformers, so it is wrapped
    to take Liger's path for CUDA tensors only. Returns what was applied ([] on CPU,
    without liger-kernel, or for other architectures).
    """
    if not device.startswith("cuda") or not liger_available():
        return []
    model_type = getattr(model.config, "model_type", None)
    if model_type not in _LIGER_TYPES or getattr(model.config, "hidden_act", "silu") not in ("silu", "swish"):
        return []
    import sys

    from liger_kernel.transformers.monkey_patch import _patch_rms_norm_module, _patch_swiglu_module
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from liger_kernel.transformers.swiglu import LigerSwiGLUMLP

    applied = set()
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm") and hasattr(module, "weight"):
            _patch_rms_norm_module(module)
            applied.add("liger:rms_norm")
        elif name.endswith("MLP") and all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")):
            _patch_swiglu_module(module, LigerSwiGLUMLP)
            applied.add("liger:swiglu")
    modeling = sys.modules.get(type(model.get_decoder()).__module__)
    original = getattr(modeling, "apply_rotary_pos_emb", None)
    if original is not None:
        if not getattr(original, "__edgelora_liger__", False):
            modeling.apply_rotary_pos_emb = _cuda_rope(original, liger_rotary_pos_emb)
        applied.add("liger:rope")
    log.info("fused kernels: %s", ", ".join(sorted(applied)))
    return sorted(applied)


def fused_loss_sum(head_weight, hidden, targets):
    """Summed cross-entropy of ``hidden @ head_weight.T`` against ``targets`` (Liger, chunked).

    ``hidden`` is (N, d) for the labelled positions only; returns a 0-d tensor.
    """
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(reduction="sum")(head_weight, hidden, targets)


def cache_dequantized_weights(model, max_modules: int | None = None) -> int:
    """Give 4-bit base layers a bf16 copy of their dequantized weight; return how many got one.

    bitsandbytes dequantizes every NF4 weight again in the forward pass, in the
    recomputation of checkpointed layers and in the backward pass, each time through
    a Python-level autograd function. The base weights are frozen, so dequantizing
    once gives the same values for the whole run: the layer then runs a plain bf16
    matmul. The cost is memory (2 bytes per cached weight on top of the 4-bit copy),
    so ``max_modules`` caps how many layers (in model order) are cached.
    """
    import torch
    import torch.nn.functional as F

    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    cached = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        if max_modules is not None and cached >= max_modules:
            break
        weight = module.weight
        dense = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).to(torch.bfloat16)
        dense.requires_grad_(False)
        module.register_buffer("edgelora_dense_weight", dense, persistent=False)

        def forward(x, *args, _m=module, **kwargs):
            bias = _m.bias.to(x.dtype) if _m.bias is not None else None
            return F.linear(x.to(torch.bfloat16), _m.edgelora_dense_weight, bias)

        module.forward = forward
        cached += 1
    return cached
