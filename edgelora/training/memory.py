"""Pick recompute and dequantized-cache settings that fit a GPU memory budget (CUDA QLoRA).

Two knobs trade GPU memory for speed: a decoder layer that keeps its activations skips
the recomputation of its forward pass, and a cached bf16 copy of an NF4 weight skips its
dequantizations. What each costs and saves is measured on the real model and batch
before training (``probe``): the step's peak memory, the activations one layer keeps,
how long one layer's forward takes and how long one dequantization of each weight shape
takes. ``plan`` then spends the budget where it saves the most time per byte.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

GIB = 2**30


@dataclass(frozen=True)
class Probe:
    peak_bytes: int  # step peak with all but the last layer recomputing, nothing cached, less its activations
    layer_activation_bytes: int  # extra memory one layer holds when it does not recompute
    layer_forward_s: float  # one decoder layer's forward (what skipping its recomputation saves)
    dequant_s: dict  # weight shape (out, in) -> seconds per dequantization


@dataclass(frozen=True)
class Plan:
    recompute_layers: int
    cached: list  # indices into the weight list given to ``plan``
    predicted_peak_bytes: int
    predicted_saving_s: float  # per micro-batch, against recomputing everything with no cache


# Share of the GPU memory free at the start that the automatic budget may plan for: the rest
# is left to other processes, allocator growth and eval batches.
FREE_SHARE = 0.9


def free_memory_budget(device: str) -> int:
    """The automatic budget: what this process already holds plus what is free, times FREE_SHARE."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return int(FREE_SHARE * (free + torch.cuda.memory_reserved(device)))


def margin_bytes(budget_bytes: int) -> int:
    """Room left for allocator fragmentation and what the probe does not see: 0.25 GiB + 2 %."""
    return int(0.25 * GIB + 0.02 * budget_bytes)


def plan(*, budget_bytes: int, base_peak_bytes: int, layers: int, layer_activation_bytes: int,
         layer_forward_s: float, weights: list[tuple[int, int, float]]) -> Plan:
    """Choose how many layers recompute and which weights to cache so the peak fits the budget.

    ``base_peak_bytes`` is the probe's peak less the one kept layer's activations (``probe``);
    ``weights`` holds (layer index, elements, seconds per dequantization) per NF4 weight.
    With K layers keeping their activations the peak is ``base + max(K, 1)`` layers'
    activations: with none kept, the layer being recomputed holds as much during its
    backward (the K = 0 floor; measured 2.48 GiB at 1B where ``base + 0`` said 1.93).
    Layers that keep their activations are the last ones (``recompute_layers`` counts from
    the first). Keeping a layer's activations saves its forward recomputation; caching a
    weight saves 3 dequantizations per micro-batch in a recomputing layer, 2 in one that
    keeps its activations (its recomputation, dequantization included, is already saved).
    For each number of recomputing layers the rest of the budget is filled with the
    weights that save the most seconds per byte; the best total wins.
    """
    floor = base_peak_bytes + layer_activation_bytes  # every layer recomputing
    room = budget_bytes - margin_bytes(budget_bytes) - floor
    best = Plan(layers, [], floor, 0.0)
    if room <= 0:
        return best
    for recompute in range(layers, -1, -1):
        kept = layers - recompute
        left = room - max(kept - 1, 0) * layer_activation_bytes
        if left < 0:
            break
        saving = kept * layer_forward_s
        value = []  # (seconds saved per byte, index)
        for i, (layer, elements, seconds) in enumerate(weights):
            calls = 2 if layer >= recompute else 3
            value.append((calls * seconds / (2 * elements), i))
        value.sort(key=lambda v: (-v[0], v[1]))
        cached = []
        for per_byte, i in value:
            size = 2 * weights[i][1]
            if size <= left:
                left -= size
                cached.append(i)
                saving += per_byte * size
        if saving > best.predicted_saving_s:
            used = max(kept - 1, 0) * layer_activation_bytes + sum(2 * weights[i][1] for i in cached)
            best = Plan(recompute, sorted(cached), floor + used, saving)
    return best


def probe(model, batch: dict, loss_sum, layers: list, linears: list, device: str) -> Probe:
    """Measure, on one micro-batch, what ``plan`` needs. Leaves no gradients behind.

    The last layer runs without recomputation and the one before it with, so their
    retained memory differs by exactly one layer's activations; the step's peak is taken
    in that state and the one kept layer's activations subtracted. RNG state is restored,
    so training draws the same dropout masks as without the probe.
    """
    import torch

    def sync_time():
        torch.cuda.synchronize(device)
        return time.perf_counter()

    kept, recomputing = layers[-1], layers[-2] if len(layers) > 1 else None
    saved_flags = [layer.gradient_checkpointing for layer in layers]
    for layer in layers[:-1]:
        layer.gradient_checkpointing = True
    kept.gradient_checkpointing = False
    retained, clock, hooks = {}, {}, []

    def watch(layer, name):
        def pre(module, args, kwargs=None):
            retained.setdefault(name, []).append(-torch.cuda.memory_allocated(device))
            clock.setdefault(name, []).append(-sync_time())

        def post(module, args, output, kwargs=None):
            clock[name][-1] += sync_time()
            retained[name][-1] += torch.cuda.memory_allocated(device)

        hooks.append(layer.register_forward_pre_hook(pre))
        hooks.append(layer.register_forward_hook(post))

    watch(kept, "kept")
    if recomputing is not None:
        watch(recomputing, "recomputing")
    try:
        with torch.random.fork_rng(devices=[torch.device(device)]):
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            loss_sum(batch).backward()
            peak = torch.cuda.max_memory_allocated(device)
            model.zero_grad(set_to_none=True)
    finally:
        for h in hooks:
            h.remove()
        for layer, flag in zip(layers, saved_flags):
            layer.gradient_checkpointing = flag
    # First forward call of each layer: the recomputation in backward runs it again.
    activation = max(0, retained["kept"][0] - (retained["recomputing"][0] if recomputing is not None else 0))
    forward_s = clock["kept"][0]
    dequant_s = {}
    from edgelora.training.kernels import time_dequantization

    for module in linears:
        shape = tuple(module.weight.quant_state.shape)
        if shape not in dequant_s:
            dequant_s[shape] = time_dequantization(module, device)
    torch.cuda.empty_cache()
    return Probe(peak - activation, activation, forward_s, dequant_s)


def describe(p: Probe, chosen: Plan, budget_bytes: int, cached_total: int) -> dict:
    """The train report's record of the automatic choice."""
    return {
        "budget_gib": round(budget_bytes / GIB, 3),
        "probe": {**{k: v for k, v in asdict(p).items() if k != "dequant_s"},
                  "dequant_s": {f"{a}x{b}": round(s, 7) for (a, b), s in p.dequant_s.items()}},
        "recompute_layers": chosen.recompute_layers,
        "dequant_cache": cached_total,
        "predicted_peak_gib": round(chosen.predicted_peak_bytes / GIB, 3),
        "predicted_saving_s_per_micro_batch": round(chosen.predicted_saving_s, 4),
    }


def fit_memory_budget(model, train_enc, batch_size, max_length, packing, batch_of, loss_sum, budget_gib,
                       device, progress) -> dict:
    """Measure on the longest micro-batch, choose recompute/cache settings for the budget, apply them."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from edgelora.training.kernels import cache_dequantized_weights, nf4_linears
    from edgelora.training.packing import pack_rows
    from edgelora.training.setup import limit_recompute, notice

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    linears = [m for m, _ in nf4_linears(model)]
    longest = sorted(range(len(train_enc)), key=lambda i: -len(train_enc[i]["input_ids"]))[:batch_size]
    rows = pack_rows(train_enc, longest, max_length) if packing else [[i] for i in longest]
    batch = batch_of([[train_enc[i] for i in row] for row in rows])
    measured = probe(model, batch, loss_sum, layers, linears, device)
    layer_of = {}
    for j, layer in enumerate(layers):
        for sub in layer.modules():
            layer_of[id(sub)] = j
    weights = [(layer_of.get(id(m), len(layers)), m.weight.quant_state.shape.numel(),
                measured.dequant_s[tuple(m.weight.quant_state.shape)]) for m in linears]
    budget = int(budget_gib * GIB)
    chosen = plan(budget_bytes=budget, base_peak_bytes=measured.peak_bytes, layers=len(layers),
                  layer_activation_bytes=measured.layer_activation_bytes,
                  layer_forward_s=measured.layer_forward_s, weights=weights)
    limit_recompute(model, chosen.recompute_layers)
    cached = cache_dequantized_weights(model, only=[linears[i] for i in chosen.cached])
    record = describe(measured, chosen, budget, cached)
    notice(progress, f"memory budget {budget_gib:g} GiB: {chosen.recompute_layers} of {len(layers)} layers "
           f"recompute, {cached} dequantized weights cached (predicted peak {record['predicted_peak_gib']} GiB)")
    floor = measured.peak_bytes + measured.layer_activation_bytes
    if floor > budget:
        notice(progress, f"memory budget {budget_gib:g} GiB is below the smallest setting's peak "
               f"({floor / GIB:.2f} GiB): training with every layer recomputing and no cache")
    return record
