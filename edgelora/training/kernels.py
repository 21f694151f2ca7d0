"""Faster training on CUDA: fused kernels and a loss that never builds full logits.

Liger Kernel (optional, ``pip install liger-kernel``) supplies fused RMSNorm, RoPE
and SwiGLU for the architectures it knows; they are patched onto the loaded model
instance and work under PEFT and bitsandbytes 4-bit layers because they call the
(wrapped) projection modules. Its fused linear cross-entropy computes the loss
from hidden states and the output head in chunks, so the ``tokens x vocab`` fp32
logits are never held in memory. Everything here is a no-op on CPU.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger("edgelora.training.loop")


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


def nf4_linears(model) -> list[tuple[object, int]]:
    """Every bitsandbytes 4-bit linear with how many times a training step dequantizes it.

    Forward and backward dequantize each weight once; a decoder layer that recomputes its
    activations (gradient checkpointing on) runs its forward a second time: 3 per step.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # older transformers: no per-layer switch, treat every layer alike
        GradientCheckpointingLayer = None
    recomputes = {}
    if GradientCheckpointingLayer is not None:
        for layer in model.modules():
            if isinstance(layer, GradientCheckpointingLayer):
                for sub in layer.modules():
                    recomputes[id(sub)] = bool(layer.gradient_checkpointing)
    default = bool(getattr(model, "is_gradient_checkpointing", False))
    return [(m, 3 if recomputes.get(id(m), default) else 2)
            for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def cache_order(sizes_and_counts: list[tuple[int, int]]) -> list[int]:
    """Indices of weights in the order worth caching: fewest elements per dequantization saved first.

    Each dequantization costs a fixed CPU overhead (a Python autograd function, op dispatch,
    kernel launches) plus GPU time proportional to the weight's size; caching costs memory
    proportional to the size. Small weights in recomputing layers (k/v projections) pay
    most per byte, MLP weights of layers that keep their activations least. Ties keep
    model order.
    """
    return sorted(range(len(sizes_and_counts)), key=lambda i: (sizes_and_counts[i][0] / sizes_and_counts[i][1], i))


def cache_dequantized_weights(model, max_modules: int | None = None, *, only: list | None = None) -> int:
    """Give 4-bit base layers a bf16 copy of their dequantized weight; return how many got one.

    bitsandbytes dequantizes every NF4 weight again in the forward pass, in the
    recomputation of checkpointed layers and in the backward pass, each time through
    a Python-level autograd function. The base weights are frozen, so dequantizing
    once gives the same values for the whole run: the layer then runs a plain bf16
    matmul. The cost is memory (2 bytes per cached weight on top of the 4-bit copy),
    so ``max_modules`` caps how many weights are cached, taken in ``cache_order``
    (smallest weights of recomputing layers first). Call it after the recompute
    switches are set (``limit_recompute``): they decide which weights pay most.
    ``only`` names the modules to cache instead (``edgelora.train_memory.plan``'s choice).
    """
    import torch

    linears = nf4_linears(model)
    if not linears:
        return 0
    import bitsandbytes as bnb

    if only is not None:
        chosen = list(only)
    else:
        order = cache_order([(m.weight.quant_state.shape.numel(), calls) for m, calls in linears])
        chosen = [linears[i][0] for i in (order if max_modules is None else order[:max_modules])]
    for module in chosen:
        weight = module.weight
        dense = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).to(torch.bfloat16)
        dense.requires_grad_(False)
        module.register_buffer("edgelora_dense_weight", dense, persistent=False)
        if hasattr(module, "edgelora_absmax"):  # lean_nf4_matmuls' scales: no longer needed
            del module.edgelora_absmax
            del module.edgelora_nf4
        _swap_forward(module, "DenseCached", _dense_forward)
    return len(chosen)


_SWAPPED: dict = {}  # (original class, kind) -> its patched subclass


def _swap_forward(module, kind: str, forward) -> None:
    """Give ``module`` a subclass of its class whose ``forward`` is ``forward``.

    One subclass per (class, kind), shared by every module so patched, instead of a closure
    per instance: every decoder layer runs the same code (what ``torch.compile`` needs to
    compile a layer once), and isinstance checks (PEFT's) still hold.
    """
    base = getattr(type(module), "_edgelora_base_class", type(module))
    cls = _SWAPPED.get((base, kind))
    if cls is None:
        cls = type(f"{base.__name__}{kind}", (base,), {"forward": forward, "_edgelora_base_class": base})
        _SWAPPED[(base, kind)] = cls
    module.__class__ = cls


def _dense_forward(self, x, *args, **kwargs):
    import torch
    import torch.nn.functional as F

    bias = self.bias.to(x.dtype) if self.bias is not None else None
    return F.linear(x.to(torch.bfloat16), self.edgelora_dense_weight, bias)


def _lean_forward(self, x, *args, **kwargs):
    import torch

    return _nf4_matmul_function().apply(x.to(torch.bfloat16), self.edgelora_nf4, self.edgelora_absmax,
                                        self.edgelora_blocksize, self.edgelora_shape)


def _dequantize(module):
    """The bf16 weight of a 4-bit linear prepared by ``lean_nf4_matmuls``: one kernel, one op call."""
    return _dequantize_nf4(module.edgelora_nf4, module.edgelora_absmax, module.edgelora_blocksize,
                           module.edgelora_shape)


def _dequantize_nf4(packed, absmax, blocksize: int, shape: tuple):
    import torch

    return torch.ops.bitsandbytes.dequantize_4bit.default(packed, absmax, blocksize, "nf4", list(shape), torch.bfloat16)


@functools.cache
def _nf4_matmul_function():
    import torch
    import torch.nn.functional as F

    class NF4Matmul(torch.autograd.Function):
        """x @ dequant(W).T for a frozen 4-bit W: dequantized in forward and again in backward.

        Only the packed 4-bit weight and its fp32 scales are saved (plain tensors, no module);
        the dequantization is bitsandbytes' registered op.
        """

        @staticmethod
        def forward(ctx, x, packed, absmax, blocksize, shape):
            ctx.save_for_backward(packed, absmax)
            ctx.blocksize, ctx.shape = blocksize, shape
            return F.linear(x, _dequantize_nf4(packed, absmax, blocksize, shape))

        @staticmethod
        def backward(ctx, grad):
            packed, absmax = ctx.saved_tensors
            return grad @ _dequantize_nf4(packed, absmax, ctx.blocksize, ctx.shape), None, None, None, None

    return NF4Matmul


def lean_nf4_matmuls(model) -> int:
    """Route the 4-bit linears not already cached through a leaner matmul; return how many.

    Same values as bitsandbytes (same dequantization kernel, same fp32 block scales), with
    less CPU work per call: the double-quantized block scales are expanded to fp32 once
    (4 bytes per 64 weights, ~0.4 GiB for an 8B model) instead of at every call, and one
    small autograd function replaces bitsandbytes' generic path (shape checks, kernel
    choice, nested-scale reconstruction in forward and backward). Training a QLoRA step
    on H200 is bound by this per-call CPU overhead, not by the GPU.
    """
    import torch

    linears = [m for m, _ in nf4_linears(model) if not hasattr(m, "edgelora_dense_weight")]
    if not linears or not hasattr(torch.ops, "bitsandbytes") or not hasattr(torch.ops.bitsandbytes, "dequantize_4bit"):
        return 0
    import bitsandbytes as bnb

    done = 0
    for module in linears:
        state = module.weight.quant_state
        if module.bias is not None or state.quant_type != "nf4" or len(state.shape) != 2:
            continue
        if state.nested:
            absmax = bnb.functional.dequantize_blockwise(state.absmax, state.state2)
            absmax += state.offset
            absmax = absmax.float()
        else:
            absmax = state.absmax.float()
        module.register_buffer("edgelora_absmax", absmax, persistent=False)
        # The packed weight as a plain tensor (same storage): Params4bit's __torch_function__
        # stays out of the traced path.
        module.register_buffer("edgelora_nf4", module.weight.data.as_subclass(torch.Tensor), persistent=False)
        module.edgelora_blocksize, module.edgelora_shape = int(state.blocksize), tuple(state.shape)
        _swap_forward(module, "LeanNF4", _lean_forward)
        done += 1
    return done


def time_dequantization(module, device: str, repeats: int = 10) -> float:
    """Seconds one dequantization of this 4-bit linear's weight takes here (CPU dispatch and GPU kernel)."""
    import time

    import torch

    if hasattr(module, "edgelora_absmax"):
        def once():
            return _dequantize(module)
    else:
        import bitsandbytes as bnb

        def once():
            return bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)

    once()
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / repeats
