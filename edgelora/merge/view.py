"""The merged model as a lazy view: base tensors plus scale·B·A, per tensor, on read.

Nothing is materialised: base tensors are read through safetensors memory maps and
the LoRA delta is added to each tensor as it is asked for, so converting a merged
model reads the base once and never holds more than one tensor.

What a PEFT LoRA adapter may contain, and what the view does with it:

- ``<module>.lora_A.weight`` / ``lora_B.weight`` (Linear): ``W + s · B @ A``
  (transposed for ``fan_in_fan_out`` Conv1D layers);
- ``<module>.lora_embedding_A`` / ``lora_embedding_B`` (Embedding): ``W + s · (B @ A)ᵀ``;
- any other ``<module>.weight``/``.bias`` (``modules_to_save``, saved embedding layers,
  ``bias="all"``): the saved tensor replaces the base tensor;
- an embedding changed on a tied model: ``lm_head.weight`` becomes its own tensor holding
  the original matrix (the adapter-attached model projects through it), config untied;
- ``s = alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``; ``r`` and ``alpha`` come
  from ``rank_pattern`` / ``alpha_pattern`` with PEFT's own matching rule.

Everything else PEFT can express but a plain merge cannot (DoRA, LoRA biases, activated
LoRA, trainable-token deltas, LoRA on raw parameters, layer replication) is refused by name.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from edgelora.errors import AdapterMismatch, BaseModelError, UnsafeWeightsError
from edgelora.util.safetensors import SafetensorsFile


@dataclass(frozen=True)
class LoraPair:
    a_key: str
    b_key: str
    scale: float
    kind: str = "linear"  # "linear" | "linear_t" (fan_in_fan_out) | "embedding"
    r: int = 0
    alpha: float = 0.0


# adapter_config fields whose non-default value means "this is not a plain LoRA merge".
_REFUSED_OPTIONS = {
    "use_dora": "DoRA adapters are not supported; merge them with PEFT's merge_and_unload first",
    "lora_bias": "LoRA biases (lora_bias=true) are not supported",
    "alora_invocation_tokens": "activated LoRA (aLoRA) cannot be merged into the weights",
    "trainable_token_indices": "trainable-token adapters are not supported",
    "target_parameters": "LoRA on raw parameters (target_parameters) is not supported",
    "layer_replication": "layer_replication is not supported",
    "use_qalora": "QALoRA adapters are not supported",
    "arrow_config": "Arrow routing adapters cannot be merged",
}


class MergedView:
    """Read-only mapping of HF tensor name -> float32 torch tensor (merged on read).

    ``MergedView(base_dir)`` is the base alone; with ``adapter_dir`` each targeted
    weight is returned as ``W + scale * B @ A``, and tensors the adapter saved whole
    (``modules_to_save``) replace the base's.
    """

    def __init__(self, base_dir: str | Path, adapter_dir: str | Path | None = None, *, base_filter=None):
        """``base_filter(name, float32 tensor) -> tensor`` changes base tensors as they are read,
        before any delta is added (e.g. :class:`edgelora.nf4.Nf4Base`, the QLoRA merge base)."""
        from safetensors import safe_open

        from edgelora.util.safetensors import check_safetensors_header

        self.base_dir = Path(base_dir)
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        self.base_filter = base_filter
        cfg_path = self.base_dir / "config.json"
        if not cfg_path.is_file():
            raise BaseModelError(f"{cfg_path}: missing config.json")
        self.config = json.loads(cfg_path.read_text())
        files = sorted(self.base_dir.glob("*.safetensors"))
        if not files:
            raise BaseModelError(f"{self.base_dir}: no .safetensors weights")
        for f in files:
            check_safetensors_header(f)
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where: dict[str, object] = {}
        self._files: dict[str, SafetensorsFile] = {}  # tensor data is read, not memory-mapped
        for f, h in zip(files, self._handles):
            reader = SafetensorsFile(f)
            for k in h.keys():
                self._where[k] = h
                self._files[k] = reader
        self._lora: dict[str, LoraPair] = {}
        self._replaced: dict[str, str] = {}  # base name -> adapter key holding the whole tensor
        self._base_override: dict[str, str] = {}  # base name -> adapter key of W under the LoRA
        self._aliases: dict[str, str] = {}  # new name -> base name read unmerged (untied lm_head)
        self._adapter = None
        self.adapter_config: dict | None = None
        if self.adapter_dir is not None:
            self._load_adapter()

    # -- adapter ---------------------------------------------------------------
    def _load_adapter(self) -> None:
        from safetensors import safe_open

        from edgelora.util.safetensors import check_safetensors_header

        cfg_path = self.adapter_dir / "adapter_config.json"
        weights = self.adapter_dir / "adapter_model.safetensors"
        if not weights.is_file() and (self.adapter_dir / "adapter_model.bin").is_file():
            raise UnsafeWeightsError(f"{self.adapter_dir / 'adapter_model.bin'}: pickle-based adapter "
                                     "weights are refused; save the adapter with safe_serialization")
        for p in (cfg_path, weights):
            if not p.is_file():
                raise AdapterMismatch(f"{p}: missing adapter file")
        acfg = json.loads(cfg_path.read_text())
        self.adapter_config = acfg
        _check_options(cfg_path, acfg)
        check_safetensors_header(weights)
        self._adapter = safe_open(str(weights), framework="pt")
        r_default = _positive(cfg_path, "r", acfg.get("r"))
        alpha_default = _positive(cfg_path, "lora_alpha", acfg.get("lora_alpha", r_default))
        rank_pattern = acfg.get("rank_pattern") or {}
        alpha_pattern = acfg.get("alpha_pattern") or {}
        rslora = bool(acfg.get("use_rslora"))
        fan_in_fan_out = bool(acfg.get("fan_in_fan_out"))
        keys = set(self._adapter.keys())
        used: set[str] = set()
        for key in sorted(keys):
            for a_tag, b_tag, kind in ((".lora_A.", ".lora_B.", "linear"),
                                       (".lora_embedding_A", ".lora_embedding_B", "embedding")):
                if a_tag not in key:
                    continue
                module = key.split(a_tag)[0]
                b_key = key.replace(a_tag, b_tag)
                if b_key not in keys:
                    raise AdapterMismatch(f"{weights}: {key} has no matching {b_key}")
                used.update((key, b_key))
                base_name = self._base_name_for(module) + ".weight"
                if base_name not in self._where:
                    raise AdapterMismatch(self._no_base_msg(weights, key, base_name))
                rel = self._base_name_for(module)
                r = int(_positive(cfg_path, f"rank_pattern[{rel}]", _pattern_value(rel, rank_pattern, r_default)))
                alpha = _positive(cfg_path, f"alpha_pattern[{rel}]",
                                  _pattern_value(rel, alpha_pattern, alpha_default))
                a_shape = tuple(self._adapter.get_slice(key).get_shape())
                b_shape = tuple(self._adapter.get_slice(b_key).get_shape())
                w_shape = tuple(self.shape(base_name))
                if len(a_shape) != 2 or len(b_shape) != 2:
                    raise AdapterMismatch(f"{weights}: {key} is not a 2-D LoRA factor ({list(a_shape)})")
                if a_shape[0] != r or b_shape[1] != r:
                    raise AdapterMismatch(
                        f"{weights}: {key} has rank {a_shape[0]} (B: {b_shape[1]}) but adapter_config "
                        f"says r={r} for {rel}")
                if kind == "embedding":
                    fits = (a_shape[1], b_shape[0]) == w_shape
                elif fan_in_fan_out:
                    kind, fits = "linear_t", (a_shape[1], b_shape[0]) == w_shape
                else:
                    fits = (b_shape[0], a_shape[1]) == w_shape
                if not fits:
                    raise AdapterMismatch(
                        f"adapter does not fit base: {base_name} is {list(w_shape)}, adapter "
                        f"{key} gives A {list(a_shape)}, B {list(b_shape)}")
                scale = alpha / math.sqrt(r) if rslora else alpha / r
                self._lora[base_name] = LoraPair(key, b_key, scale, kind, r, float(alpha))
        for key in sorted(keys - used):
            self._add_replacement(weights, key)
        self._untie_if_needed(acfg)

    def _untie_if_needed(self, acfg: dict) -> None:
        """PEFT applies an embedding LoRA (or a saved embedding copy) to the input side only:
        with tied weights the adapter-attached model still projects through the *original*
        embedding matrix. Merging into the shared matrix (what merge_and_unload does) would
        change the output layer too, so the merged model gets an untied lm_head holding the
        original matrix. With ensure_weight_tying PEFT changes both sides, and so do we."""
        emb = "model.embed_tokens.weight"
        if (self.config.get("tie_word_embeddings") and not acfg.get("ensure_weight_tying")
                and (emb in self._lora or emb in self._replaced)
                and "lm_head.weight" not in self._where and "lm_head.weight" not in self._replaced):
            self._aliases["lm_head.weight"] = emb
            self.config = dict(self.config, tie_word_embeddings=False)

    def _add_replacement(self, weights: Path, key: str) -> None:
        """A whole tensor saved by the adapter (modules_to_save, embeddings, biases)."""
        if "lora_" in key or not key.endswith((".weight", ".bias")):
            raise AdapterMismatch(f"{weights}: unrecognised adapter tensor {key}")
        stem, leaf = key.rsplit(".", 1)
        # PEFT's save_embedding_layers copy of a LoRA-wrapped layer: it replaces the base
        # tensor under the LoRA (PEFT loads it into base_layer), the delta still applies.
        under_lora = stem.endswith(".base_layer")
        if under_lora:
            stem = stem[: -len(".base_layer")]
        base_name = self._base_name_for(stem) + "." + leaf
        shape = list(self._adapter.get_slice(key).get_shape())
        if base_name in self._where:
            if self.shape(base_name) != shape:
                raise AdapterMismatch(f"adapter does not fit base: {base_name} is {self.shape(base_name)}, "
                                      f"adapter's {key} is {shape}")
        elif base_name == "lm_head.weight" and self.config.get("tie_word_embeddings"):
            # modules_to_save=["lm_head"] on a tied model: PEFT trains a separate copy, so
            # the merged model has its own output matrix and is no longer tied.
            self.config = dict(self.config, tie_word_embeddings=False)
        else:
            raise AdapterMismatch(self._no_base_msg(weights, key, base_name))
        if under_lora and leaf == "weight":
            if base_name not in self._lora:
                raise AdapterMismatch(f"{weights}: {key} is a base_layer copy of a module without LoRA")
            self._base_override[base_name] = key
            return
        if base_name in self._lora:
            raise AdapterMismatch(f"{weights}: {base_name} is both LoRA-adapted and saved whole")
        self._replaced[base_name] = key

    def _no_base_msg(self, weights: Path, key: str, base_name: str) -> str:
        if base_name == "lm_head.weight" and self.config.get("tie_word_embeddings"):
            return (f"{weights}: adapter tensor {key} targets lm_head, which this base ties to "
                    "embed_tokens; merging it would change the embeddings too (refused)")
        return f"adapter does not fit base: adapter tensor {key} has no base tensor {base_name}"

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
        extra = [n for n in list(self._replaced) + list(self._aliases) if n not in self._where]
        return list(self._where) + extra

    def shape(self, name: str) -> list[int]:
        if name in self._replaced:
            return list(self._adapter.get_slice(self._replaced[name]).get_shape())
        name = self._aliases.get(name, name)
        return list(self._where[name].get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        if name in self._replaced and name not in self._where:
            return str(self._adapter.get_slice(self._replaced[name]).get_dtype())
        name = self._aliases.get(name, name)
        return str(self._where[name].get_slice(name).get_dtype())

    def is_merged(self, name: str) -> bool:
        return name in self._lora or name in self._replaced or name in self._aliases

    def lora_scale(self, name: str) -> float | None:
        pair = self._lora.get(name)
        return pair.scale if pair else None

    def lora_pair(self, name: str) -> LoraPair | None:
        return self._lora.get(name)

    def base_tensor(self, name: str, scratch=None):
        """The tensor under the LoRA delta, as float32 (the base's, or the adapter's saved copy).

        ``scratch``: a flat float32 buffer the result may be a view of (see ``get``)."""
        import torch

        name = self._aliases.get(name, name)
        if name in self._base_override:
            # a private copy: get() adds the delta in place, and safetensors may share storage
            t = self._adapter.get_tensor(self._base_override[name]).to(torch.float32, copy=True)
        else:
            t = self._files[name].read_f32(name, scratch)
        return t if self.base_filter is None else self.base_filter(name, t)

    def lora_factors(self, name: str):
        """(A, B) as float32 for a LoRA-adapted tensor."""
        import torch

        pair = self._lora[name]
        return (self._adapter.get_tensor(pair.a_key).to(torch.float32),
                self._adapter.get_tensor(pair.b_key).to(torch.float32))

    def plain_source(self, name: str):
        """``(SafetensorsFile, stored name, LoraPair or None)`` when ``get(name)`` is exactly the
        stored base tensor plus at most a plain ``s · B @ A`` (no base filter, no replaced or
        adapter-held base, no transposed/embedding delta): a caller may then compute it in row
        chunks itself (see :mod:`edgelora.gguf.fused_merge`). Else None."""
        if self.base_filter is not None or name in self._replaced:
            return None
        base = self._aliases.get(name, name)
        if base in self._base_override or base not in self._files:
            return None
        pair = self._lora.get(name)
        if pair is not None and pair.kind != "linear":
            return None
        return self._files[base], base, pair

    def stored_nbytes(self, name: str) -> int:
        """Bytes of the base tensor as stored (0 when it does not come from the base files)."""
        base = self._aliases.get(name, name)
        return self._files[base].nbytes(base) if base in self._files else 0

    def get(self, name: str, scratch=None):
        """The tensor as float32: replaced, or with the LoRA delta added when targeted.

        With ``scratch`` (a flat float32 tensor) the result may be a view of it, valid until
        the caller reuses the buffer: for streaming conversion, one buffer for every tensor."""
        import torch

        if name in self._replaced:
            return self._adapter.get_tensor(self._replaced[name]).to(torch.float32)
        t = self.base_tensor(name, scratch)
        pair = self._lora.get(name)
        if pair is not None:
            a, b = self.lora_factors(name)
            if pair.kind in ("embedding", "linear_t"):
                t.add_((b @ a).T, alpha=pair.scale)
            else:  # in place: no full-size temporaries for the delta
                t.addmm_(b, a, alpha=pair.scale)
        return t

    def merged_names(self) -> list[str]:
        return sorted(set(self._lora) | set(self._replaced) | set(self._aliases))

    def summary(self) -> dict:
        """What the adapter changes, for reports and the bundle manifest."""
        acfg = self.adapter_config or {}
        scales = sorted({round(p.scale, 6) for p in self._lora.values()})
        return {"lora_tensors": len(self._lora), "replaced_tensors": sorted(self._replaced),
                "untied": sorted(self._aliases),
                "r": acfg.get("r"), "lora_alpha": acfg.get("lora_alpha"),
                "use_rslora": bool(acfg.get("use_rslora")), "scales": scales,
                "rank_pattern": acfg.get("rank_pattern") or {}, "alpha_pattern": acfg.get("alpha_pattern") or {}}

    def __contains__(self, name: str) -> bool:
        return name in self._where or name in self._replaced or name in self._aliases

    def close(self) -> None:
        self._handles = []
        self._where = {}
        self._files = {}
        self._adapter = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_options(cfg_path: Path, acfg: dict) -> None:
    if acfg.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatch(f"{cfg_path}: peft_type {acfg.get('peft_type')!r} is not a LoRA adapter")
    for field, why in _REFUSED_OPTIONS.items():
        if acfg.get(field):
            raise AdapterMismatch(f"{cfg_path}: {field}: {why}")


def _positive(cfg_path: Path, field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise AdapterMismatch(f"{cfg_path}: {field} must be a positive number, got {value!r}")
    return value


def _pattern_value(module: str, pattern: dict, default):
    """PEFT's rank/alpha pattern rule: the first key K (a regex) with `(.*\\.)?(K)$` matching
    the module path wins, exactly as peft.utils.other.get_pattern_key does."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default
