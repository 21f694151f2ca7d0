"""The NF4 round trip a QLoRA adapter was trained against, computed with bitsandbytes itself.

QLoRA trains the LoRA factors on top of ``dequantize(quantize_nf4(W))``, not on ``W``: every
``nn.Linear`` of the decoder (not the embeddings, not ``lm_head``) is stored in 4-bit and
dequantized to the compute dtype on each forward. Merging into that round-tripped base
reproduces what the adapter saw; merging into the original bf16 base reproduces what the
adapter was meant to correct. The merge stage measures both (:mod:`edgelora.merge.base_choice`).

bitsandbytes' own ``quantize_4bit``/``dequantize_4bit`` run on CPU (0.45+ ships CPU kernels),
so the round trip is the library's, bit for bit, rather than a re-implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgelora.errors import AdapterMismatch

_NOT_QUANTIZED = ("embed_tokens.weight", "lm_head.weight", "embed_positions.weight", "wte.weight")


def _bitsandbytes():
    try:
        import bitsandbytes.functional as bnb_functional
    except ImportError as e:
        raise AdapterMismatch("merge base 'nf4' needs bitsandbytes (pip install 'bitsandbytes>=0.45'): "
                              f"{e}") from None
    return bnb_functional


def is_quantized_in_qlora(name: str, shape) -> bool:
    """Whether transformers' bitsandbytes loader stores this tensor in 4-bit: Linear weights
    (2-D), except the embeddings and the output head it keeps in full precision."""
    return len(shape) == 2 and not name.endswith(_NOT_QUANTIZED)


def nf4_roundtrip(weight, *, blocksize: int = 64, double_quant: bool = True, dtype=None):
    """``dequantize_4bit(quantize_4bit(weight))`` with bitsandbytes' NF4 (quant_type='nf4').

    ``weight`` is first cast to ``dtype`` (default bfloat16, the dtype QLoRA loads the base in
    before quantizing); the result is in ``dtype`` too, like Linear4bit's dequantized weight.
    ``double_quant`` quantizes the per-block absmax again (bnb's compress_statistics).
    """
    import torch

    F = _bitsandbytes()
    dtype = dtype or torch.bfloat16
    w = weight.detach().to("cpu", dtype).contiguous()
    packed, state = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4")
    return F.dequantize_4bit(packed, state).to(dtype)


@dataclass(frozen=True)
class Nf4Base:
    """A MergedView ``base_filter``: base tensors as the 4-bit QLoRA model computes with them."""

    blocksize: int = 64
    double_quant: bool = True

    def __call__(self, name: str, tensor):
        import torch

        if not is_quantized_in_qlora(name, tensor.shape):
            return tensor
        return nf4_roundtrip(tensor, blocksize=self.blocksize, double_quant=self.double_quant).to(torch.float32)

    def describe(self) -> dict:
        return {"quant_type": "nf4", "blocksize": self.blocksize, "double_quant": self.double_quant,
                "compute_dtype": "bfloat16"}
