"""Random PEFT adapters on the tiny Llama, shared by the merge, fused-merge and adapter tests."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ["What is 12 + 30?", [{"role": "system", "content": "Answer in JSON."},
                                {"role": "user", "content": "Severity of: printer on fire"}]]


def make_adapter(base_dir: Path, out: Path, *, seed: int = 1, **lora_kwargs) -> Path:
    """A random PEFT LoRA (B != 0) on the tiny Llama, saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    kwargs.update(lora_kwargs)
    peft_model = get_peft_model(model, LoraConfig(**kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.1)
            elif "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(out)
    return out
