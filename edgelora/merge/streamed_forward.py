"""Reference logits in bounded memory: transformers' own model, run one module's weights at a time.

Every logits check (GGUF vs HF, the alpha check, sidecar vs PEFT, the merge-base choice) needs a
float32 reference. Loading the whole model in float32 costs 4 bytes a parameter (6.7 GB at 1B,
32 GB at 8B). Here transformers builds the model with its parameters on the meta device (buffers,
such as the rotary frequencies and Gemma's embedding scale, are computed for real), and forward
hooks read each module's parameters from the safetensors files just before the module runs and
drop them right after. The numerics are transformers' for every architecture (masks, sliding
windows, rope scaling, soft-capping, (1+w) norms, biases), and memory holds one module's weights
and the activations, whatever the depth. Two modules are special:

- the input embedding reads only the rows of the probe tokens;
- the output projection runs in blocks of vocabulary rows (tied: read from the embedding).

With a PEFT adapter attached (``adapter_dir``), PEFT's own LoRA layers are injected into the empty
model, so PEFT computes the scale from the adapter config, independently of :class:`MergedView`;
their A/B factors are read from the adapter file. All probes of a group run as one right-padded
batch: causal attention never looks to the right, so padding changes nothing at real positions,
and every weight is read once per group.

What cannot be streamed runs the full model instead, and the result says so and why
(``ReferenceLogits.mode``/``why_full``): adapters carrying more than Linear LoRA factors (saved
modules, embedding LoRA, an untied head), or a model whose parameter names are not the
checkpoint's (transformers renames some checkpoints' keys on load).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LOGITS_BUDGET_BYTES = 256 << 20  # float32 logits of one group of probes
HEAD_BLOCK_BYTES = 64 << 20  # float32 output-projection rows read at a time


@dataclass
class ReferenceLogits:
    logits: list  # per probe, float32 [len(ids), vocab]
    mode: str  # "streamed" or "full"
    why_full: str | None = None

    def describe(self) -> str:
        return self.mode if self.why_full is None else f"{self.mode} ({self.why_full})"


def reference_logits(model_dir, batches: list[list[int]], *, adapter_dir=None, base_filter=None, view=None,
                     logits_budget_bytes: int = LOGITS_BUDGET_BYTES) -> ReferenceLogits:
    """Float32 logits of ``model_dir`` on each token list of ``batches``.

    ``view`` (a :class:`edgelora.merge.MergedView`): the view's tensors (merged model). Else the
    base (through ``base_filter``), with ``adapter_dir`` attached by PEFT when given."""
    from edgelora.merge.view import MergedView

    if view is not None and adapter_dir is not None:
        raise ValueError("reference_logits: pass a view or an adapter, not both")
    own = view is None
    src_view = view if view is not None else MergedView(model_dir, adapter_dir, base_filter=base_filter)
    try:
        why = _why_not_streamed(src_view) if adapter_dir is not None else None
        if why is None:
            try:
                return ReferenceLogits(_streamed(Path(model_dir), batches, src_view, adapter_dir,
                                                 logits_budget_bytes), "streamed")
            except _NotStreamable as e:
                why = str(e)
        return ReferenceLogits(_full(Path(model_dir), batches, view, adapter_dir, base_filter), "full", why)
    finally:
        if own:
            src_view.close()


class _NotStreamable(Exception):
    pass


def _why_not_streamed(view) -> str | None:
    """Why PEFT's adapter-attached model cannot be read from base tensors + LoRA factors alone."""
    summary = view.summary()
    if summary["replaced_tensors"] or summary["untied"]:
        return f"adapter replaces {(summary['replaced_tensors'] + summary['untied'])[0]}"
    for name in view.merged_names():
        pair = view.lora_pair(name)
        if pair is None or pair.kind != "linear":
            return f"adapter's {name} is not a Linear LoRA"
    return None


def load_view_tensors(model, view) -> None:
    """Copy every tensor of ``view`` into the (materialized) HF ``model``."""
    import torch

    from edgelora.errors import FidelityError

    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    names = view.names()
    if "lm_head.weight" in names and getattr(model.config, "tie_word_embeddings", False):
        # modules_to_save=["lm_head"] untied it: give lm_head its own parameter.
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        params["lm_head.weight"] = model.lm_head.weight
    missing = [n for n in names if n not in params]
    if missing:
        raise FidelityError(f"model has no parameter for view tensor {missing[0]}")
    with torch.no_grad():
        for n in names:
            params[n].copy_(view.get(n).to(params[n].dtype))


def _full(model_dir: Path, batches, view, adapter_dir, base_filter) -> list:
    """The whole model in float32 (the path every check took before streaming)."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgelora.merge.view import MergedView

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
    if view is not None:
        load_view_tensors(model, view)
    else:
        if base_filter is not None:
            with MergedView(model_dir, base_filter=base_filter) as base_view:
                load_view_tensors(model, base_view)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    model.eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0] for ids in batches]


def _empty_model(model_dir: Path, adapter_dir):
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if adapter_dir is not None:
            from peft import LoraConfig, inject_adapter_in_model

            lora_config = LoraConfig.from_pretrained(str(adapter_dir))
            lora_config.inference_mode = True
            model = inject_adapter_in_model(lora_config, model, adapter_name="default", low_cpu_mem_usage=True)
    return model.eval()


def _qualified(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _tensor_readers(model, view, adapter_dir, skip: set) -> dict:
    """Parameter name -> () -> float32 tensor, for every parameter outside ``skip`` (modules)."""
    adapter = None
    if adapter_dir is not None:  # plain reads: a memory map's touched pages would stay resident
        from edgelora.util.safetensors import SafetensorsFile

        adapter = SafetensorsFile(Path(adapter_dir) / "adapter_model.safetensors")
        adapter_keys = set(adapter.keys())
    readers = {}
    for mod_name, module in model.named_modules():
        if module in skip:
            continue
        for leaf, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{leaf}" if mod_name else leaf
            readers[name] = _reader_for(name, list(p.shape), view, adapter, adapter_keys if adapter else set())
    return readers


def _reader_for(name: str, shape: list, view, adapter, adapter_keys: set):
    lora = re.sub(r"\.(lora_[AB])\.default\.", r".\1.", name)
    if lora != name:  # PEFT's layer: its factor as the adapter file stores it
        key = "base_model.model." + lora
        if key not in adapter_keys:
            raise _NotStreamable(f"no adapter tensor {key} for {name}")
        got = adapter.shape(key)
        if got != shape:
            raise _NotStreamable(f"adapter tensor {key} is {got}, model expects {shape}")
        return lambda scratch=None: adapter.read_f32(key)
    stored = name.replace(".base_layer.", ".")
    if stored not in view:
        raise _NotStreamable(f"parameter {name} has no checkpoint tensor {stored}")
    if view.shape(stored) != shape:
        raise _NotStreamable(f"checkpoint tensor {stored} is {view.shape(stored)}, model expects {shape}")
    if adapter is not None:  # PEFT adds the delta itself: the base (or the adapter's base copy)
        return lambda scratch=None: view.base_tensor(stored, scratch)
    return lambda scratch=None: view.get(stored, scratch)


def _row_reader(view, name: str, with_delta: bool):
    """(start, stop) -> float32 rows of ``name``; reads only those rows when the tensor is stored
    as it is, else the whole (merged or filtered) tensor once."""
    import torch

    src = view.plain_source(name)
    if src is not None and src[2] is None:
        file, stored, _ = src
        row_bytes = view.stored_nbytes(name) // view.shape(name)[0]

        def rows(start: int, stop: int):
            buf = torch.empty((stop - start) * row_bytes, dtype=torch.uint8)
            return file.read_raw(stored, buf, rows=(start, stop)).to(torch.float32)
        return rows
    full = view.get(name) if with_delta else view.base_tensor(name)
    return lambda start, stop: full[start:stop]


def _embedding_hooks(module, rows):
    """Before the call: the weight becomes just the rows of the ids asked for (ids remapped)."""
    import torch

    saved = {}

    def before(mod, args, kwargs):
        ids = args[0] if args else kwargs.pop("input")
        uniq, inverse = torch.unique(ids, return_inverse=True)
        mod.weight = torch.nn.Parameter(torch.cat([rows(i, i + 1) for i in uniq.tolist()]), requires_grad=False)
        saved["padding_idx"] = mod.padding_idx
        mod.padding_idx = None  # only matters for gradients, and would index the full table
        return (inverse,) + tuple(args[1:]), kwargs

    def after(mod, args, kwargs, output):
        mod.weight = torch.nn.Parameter(torch.empty(mod.weight.shape, device="meta"), requires_grad=False)
        mod.padding_idx = saved["padding_idx"]

    module.register_forward_pre_hook(before, with_kwargs=True)
    module.register_forward_hook(after, with_kwargs=True)


def _row_block_projection(rows, n_rows: int, n_cols: int, bias):
    import torch

    block = max(1, HEAD_BLOCK_BYTES // (4 * n_cols))

    class RowBlockProjection(torch.nn.Module):
        """``hidden @ W.T (+ b)`` with W read ``block`` rows at a time."""

        def forward(self, hidden):
            out = hidden.new_empty(*hidden.shape[:-1], n_rows)
            for start in range(0, n_rows, block):
                stop = min(start + block, n_rows)
                b = None if bias is None else bias[start:stop]
                out[..., start:stop] = torch.nn.functional.linear(hidden, rows(start, stop), b)
            return out

    return RowBlockProjection()


def _module_hooks(module, readers: dict, prefix: str, scratch):
    """Parameters read before ``module`` runs, dropped after. The largest one of a module without
    parameterised children lands in ``scratch`` (one buffer for all such modules: they never run
    nested), which spares the page faults of a fresh allocation per weight."""
    import torch

    leaves = [(leaf, list(p.shape)) for leaf, p in module.named_parameters(recurse=False)]
    nested = any(True for m in module.modules() if m is not module and any(m.parameters(recurse=False)))
    largest = None if nested else max(leaves, key=lambda lp: _numel(lp[1]))[0]

    def before(mod, args):
        for leaf, _ in leaves:
            t = readers[f"{prefix}.{leaf}" if prefix else leaf](scratch if leaf == largest else None)
            setattr(mod, leaf, torch.nn.Parameter(t, requires_grad=False))

    def after(mod, args, output):
        for leaf, shape in leaves:
            setattr(mod, leaf, torch.nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False))

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def _fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold whenever a large block is freed, so the weights and
    activations that come and go for every module soon come from the heap instead, which
    fragments and grew by ~65 MB a layer at the 1B shape. A fixed 64 KiB threshold keeps every
    large block a mapping of its own, handed back to the system when freed (process-wide, and
    harmless elsewhere: the hot buffers are reused, not reallocated)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 << 10)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _streamed(model_dir: Path, batches, view, adapter_dir, budget: int) -> list:
    import torch

    _fixed_mmap_threshold()
    model = _empty_model(model_dir, adapter_dir)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(emb, torch.nn.Embedding):
        raise _NotStreamable(f"input embedding is a {type(emb).__name__}")
    if type(head) is not torch.nn.Linear:
        raise _NotStreamable(f"output projection is a {type(head).__name__}")
    emb_name, head_name = _qualified(model, emb), _qualified(model, head)
    with_delta = adapter_dir is None
    emb_tensor = f"{emb_name}.weight"
    head_tensor = f"{head_name}.weight" if f"{head_name}.weight" in view else emb_tensor  # tied
    for name in (emb_tensor, head_tensor):
        if name not in view:
            raise _NotStreamable(f"no checkpoint tensor {name}")
    n_vocab, n_hidden = view.shape(head_tensor)
    bias = None
    if head.bias is not None:
        if f"{head_name}.bias" not in view:
            raise _NotStreamable(f"no checkpoint tensor {head_name}.bias")
        bias = view.get(f"{head_name}.bias") if with_delta else view.base_tensor(f"{head_name}.bias")
    parent, _, leaf = head_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf,
            _row_block_projection(_row_reader(view, head_tensor, with_delta), n_vocab, n_hidden, bias))
    _embedding_hooks(emb, _row_reader(view, emb_tensor, with_delta))
    readers = _tensor_readers(model, view, adapter_dir, skip={emb})
    hooked = [(mod_name, module) for mod_name, module in model.named_modules()
              if module is not emb and any(True for _ in module.named_parameters(recurse=False))]
    scratch = torch.empty(max((p.numel() for _, m in hooked for p in m.parameters(recurse=False)), default=0))
    for mod_name, module in hooked:
        _module_hooks(module, readers, mod_name, scratch)

    out: list = [None] * len(batches)
    equal_lengths = _length_dependent_rope(model.config.to_dict())
    for group in _groups([len(ids) for ids in batches], n_vocab, budget, equal_lengths):
        width = max(len(batches[i]) for i in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)  # right padding: never attended to
        for row, i in enumerate(group):
            ids[row, : len(batches[i])] = torch.tensor(batches[i])
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
        for row, i in enumerate(group):
            out[i] = logits[row, : len(batches[i])].clone()
        del logits
    return out


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _length_dependent_rope(config: dict) -> bool:
    """Rope whose frequencies depend on the sequence length (Phi-3's longrope, dynamic NTK):
    padding a probe would change its positions' rotations, so only equal lengths share a batch."""
    for key, value in config.items():
        if isinstance(value, dict) and _length_dependent_rope(value):
            return True
        if key in ("rope_type", "type") and value in ("longrope", "dynamic"):
            return True
    return False


def _groups(lengths: list[int], n_vocab: int, budget: int, equal_lengths: bool = False) -> list[list[int]]:
    """Probes whose padded float32 logits fit ``budget`` together (at least one probe each);
    with ``equal_lengths``, only probes of one length share a group."""
    if equal_lengths:
        by_length: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            by_length.setdefault(n, []).append(i)
        return [[idx[k] for k in g] for idx in by_length.values()
                for g in _groups([lengths[i] for i in idx], n_vocab, budget)]
    groups, cur, width = [], [], 0
    for i, n in enumerate(lengths):
        w = max(width, n)
        if cur and (len(cur) + 1) * w * n_vocab * 4 > budget:
            groups.append(cur)
            cur, w = [], n
        cur.append(i)
        width = w
    if cur:
        groups.append(cur)
    return groups
