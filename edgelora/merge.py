"""The merged model as a lazy view: base tensors plus scale·B·A, per tensor, on read.

Nothing is materialised: base tensors are read through safetensors memory maps and
the LoRA delta is added to each tensor as it is asked for, so converting a merged
model reads the base once and never holds more than one tensor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterMismatch, BaseModelError


@dataclass(frozen=True)
class LoraPair:
    a_key: str
    b_key: str
    scale: float


class MergedView:
    """Read-only mapping of HF tensor name -> float32 torch tensor (merged on read).

    ``MergedView(base_dir)`` is the base alone; with ``adapter_dir`` each targeted
    Linear weight is returned as ``W + scale * B @ A``.
    """

    def __init__(self, base_dir: str | Path, adapter_dir: str | Path | None = None):
        from safetensors import safe_open

        self.base_dir = Path(base_dir)
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        cfg_path = self.base_dir / "config.json"
        if not cfg_path.is_file():
            raise BaseModelError(f"{cfg_path}: missing config.json")
        self.config = json.loads(cfg_path.read_text())
        files = sorted(self.base_dir.glob("*.safetensors"))
        if not files:
            raise BaseModelError(f"{self.base_dir}: no .safetensors weights")
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where: dict[str, object] = {}
        for h in self._handles:
            for k in h.keys():
                self._where[k] = h
        self._lora: dict[str, LoraPair] = {}
        self._adapter = None
        self.adapter_config: dict | None = None
        if self.adapter_dir is not None:
            self._load_adapter()

    # -- adapter ---------------------------------------------------------------
    def _load_adapter(self) -> None:
        from safetensors import safe_open

        cfg_path = self.adapter_dir / "adapter_config.json"
        weights = self.adapter_dir / "adapter_model.safetensors"
        for p in (cfg_path, weights):
            if not p.is_file():
                raise AdapterMismatch(f"{p}: missing adapter file")
        acfg = json.loads(cfg_path.read_text())
        self.adapter_config = acfg
        if acfg.get("use_dora"):
            raise AdapterMismatch(f"{cfg_path}: DoRA adapters are not supported; merge them with PEFT")
        self._adapter = safe_open(str(weights), framework="pt")
        r_default = int(acfg["r"])
        alpha_default = float(acfg.get("lora_alpha", r_default))
        rank_pattern = acfg.get("rank_pattern") or {}
        alpha_pattern = acfg.get("alpha_pattern") or {}
        rslora = bool(acfg.get("use_rslora"))
        for key in self._adapter.keys():
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0]
            b_key = key.replace(".lora_A.", ".lora_B.")
            base_name = self._base_name_for(module) + ".weight"
            if base_name not in self._where:
                raise AdapterMismatch(f"{weights}: adapter tensor {key} has no base tensor {base_name}")
            r = _pattern_value(module, rank_pattern, r_default)
            alpha = _pattern_value(module, alpha_pattern, alpha_default)
            a_shape = tuple(self._adapter.get_slice(key).get_shape())
            b_shape = tuple(self._adapter.get_slice(b_key).get_shape())
            w_shape = tuple(self.shape(base_name))
            if a_shape[0] != r or b_shape[1] != r:
                raise AdapterMismatch(
                    f"{weights}: {key} has rank {a_shape[0]} but adapter_config says r={r}")
            if (b_shape[0], a_shape[1]) != w_shape:
                raise AdapterMismatch(
                    f"adapter does not fit base: {base_name} is {list(w_shape)}, "
                    f"adapter gives {[b_shape[0], a_shape[1]]}")
            scale = alpha / math.sqrt(r) if rslora else alpha / r
            self._lora[base_name] = LoraPair(key, b_key, scale)

    def _base_name_for(self, module: str) -> str:
        # PEFT keys look like base_model.model.<hf module path>
        name = module
        for prefix in ("base_model.model.",):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name + ".weight" not in self._where and "model." + name + ".weight" in self._where:
            name = "model." + name
        return name

    # -- mapping ---------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> list[int]:
        return list(self._where[name].get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        return str(self._where[name].get_slice(name).get_dtype())

    def is_merged(self, name: str) -> bool:
        return name in self._lora

    def lora_scale(self, name: str) -> float | None:
        pair = self._lora.get(name)
        return pair.scale if pair else None

    def get(self, name: str):
        """The tensor as float32, with the LoRA delta added when the adapter targets it."""
        import torch

        t = self._where[name].get_tensor(name).to(torch.float32)
        pair = self._lora.get(name)
        if pair is not None:
            a = self._adapter.get_tensor(pair.a_key).to(torch.float32)
            b = self._adapter.get_tensor(pair.b_key).to(torch.float32)
            t = t + pair.scale * (b @ a)
        return t

    def merged_names(self) -> list[str]:
        return sorted(self._lora)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def close(self) -> None:
        self._handles = []
        self._where = {}
        self._adapter = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _pattern_value(module: str, pattern: dict, default):
    """PEFT's rank/alpha patterns: the key matches when the module path ends with it."""
    for key, value in pattern.items():
        if module == key or module.endswith("." + key):
            return type(default)(value)
    return default
