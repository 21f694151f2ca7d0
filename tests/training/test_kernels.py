"""Which dequantized NF4 weights are worth caching (CPU: pure arithmetic)."""

from edgelora.training.kernels import cache_order


def test_cache_order_prefers_small_weights_that_are_dequantized_most():
    # One Llama-8B-shaped layer that recomputes (3 dequantizations a step), one that does not (2).
    q, kv, o, mlp = 4096 * 4096, 1024 * 4096, 4096 * 4096, 14336 * 4096
    names = ["q", "k", "v", "o", "gate", "up", "down"]
    sizes = [q, kv, kv, o, mlp, mlp, mlp]
    weights = [(s, 3) for s in sizes] + [(s, 2) for s in sizes]
    labels = [f"recompute.{n}" for n in names] + [f"keep.{n}" for n in names]
    order = [labels[i] for i in cache_order(weights)]
    assert order == ["recompute.k", "recompute.v", "keep.k", "keep.v", "recompute.q", "recompute.o",
                     "keep.q", "keep.o", "recompute.gate", "recompute.up", "recompute.down",
                     "keep.gate", "keep.up", "keep.down"]


def test_cache_order_keeps_model_order_among_equals():
    assert cache_order([(10, 2)] * 4) == [0, 1, 2, 3]
    assert cache_order([]) == []


# ----------------------------------------------------------------------------- memory budget planner

from edgelora.training.memory import GIB, margin_bytes, plan  # noqa: E402


def _llama8b_weights(dequant_s=(5e-5, 6e-5, 9e-5)):
    """(layer, elements, seconds per dequantization) for 32 Llama-3.1-8B layers."""
    kv, sq, mlp = 1024 * 4096, 4096 * 4096, 14336 * 4096
    t_kv, t_sq, t_mlp = dequant_s
    one = [(sq, t_sq), (kv, t_kv), (kv, t_kv), (sq, t_sq), (mlp, t_mlp), (mlp, t_mlp), (mlp, t_mlp)]
    return [(layer, n, t) for layer in range(32) for n, t in one]


def _peak(p, weights, base, act):
    # With no layer keeping its activations, the one being recomputed holds as much.
    return base + max(32 - p.recompute_layers, 1) * act + sum(2 * weights[i][1] for i in p.cached)


def test_plan_fits_the_budget_and_uses_it():
    weights = _llama8b_weights()
    base, act = int(8.0 * GIB), int(0.7 * GIB)
    budget = int(16.44 * GIB)
    p = plan(budget_bytes=budget, base_peak_bytes=base, layers=32, layer_activation_bytes=act,
             layer_forward_s=6e-3, weights=weights)
    assert p.predicted_peak_bytes == _peak(p, weights, base, act)
    assert p.predicted_peak_bytes <= budget - margin_bytes(budget)
    # What is left could not hold one more weight: the budget is used, not wasted.
    left = budget - margin_bytes(budget) - p.predicted_peak_bytes
    assert left < min(2 * n for i, (_, n, _) in enumerate(weights) if i not in p.cached)
    assert 20 <= p.recompute_layers < 32
    # Every k/v projection is cached (most time per byte); no MLP weight is (least).
    sizes = [weights[i][1] for i in p.cached]
    assert sizes.count(1024 * 4096) == 64 and 14336 * 4096 not in sizes


def test_plan_follows_what_was_measured():
    weights = _llama8b_weights()
    base, act, budget = int(8 * GIB), int(0.7 * GIB), int(16.44 * GIB)
    # A slow layer forward makes keeping activations worth more than any cache ...
    slow = plan(budget_bytes=budget, base_peak_bytes=base, layers=32, layer_activation_bytes=act,
                layer_forward_s=1.0, weights=weights)
    # ... a free one makes it worth nothing, so everything goes to the cache.
    free = plan(budget_bytes=budget, base_peak_bytes=base, layers=32, layer_activation_bytes=act,
                layer_forward_s=0.0, weights=weights)
    assert slow.recompute_layers < free.recompute_layers == 32
    assert len(free.cached) > len(slow.cached)
    assert slow.predicted_saving_s > 1.0 and free.predicted_saving_s > 0


def test_plan_with_no_room_changes_nothing():
    weights = _llama8b_weights()
    p = plan(budget_bytes=int(8 * GIB), base_peak_bytes=int(8 * GIB), layers=32,
             layer_activation_bytes=int(0.7 * GIB), layer_forward_s=6e-3, weights=weights)
    assert (p.recompute_layers, p.cached, p.predicted_saving_s) == (32, [], 0.0)
    assert p.predicted_peak_bytes == int(8 * GIB) + int(0.7 * GIB)  # the floor: one layer's activations live at a time


def test_plan_counts_two_dequantizations_for_layers_that_keep_activations():
    # Two layers of one 1000-element weight (2000 bytes cached); room for exactly 8000 bytes
    # over base, of which the floor (one layer's recomputed activations) takes 4000.
    weights = [(0, 1000, 1.0), (1, 1000, 1.0)]
    budget = 10**9
    base = budget - margin_bytes(budget) - 8000
    p = plan(budget_bytes=budget, base_peak_bytes=base, layers=2, layer_activation_bytes=4000,
             layer_forward_s=5.0, weights=weights)
    # Cache only: 3 + 3 = 6 s. Keep layer 1 and cache both: 5 + 3 + 2 = 10 s (layer 1's
    # recomputation, with its dequantization, is already gone). Keep both: 5 + 5 = 10 s, a tie.
    assert (p.recompute_layers, p.cached, p.predicted_saving_s) == (1, [0, 1], 10.0)
    assert p.predicted_peak_bytes == base + 8000


def test_memory_budget_excludes_setting_the_knobs(tmp_path):
    import pytest

    from edgelora.errors import TrainingError
    from edgelora.config import TrainConfig
    from edgelora.training.loop import train_lora

    with pytest.raises(TrainingError, match="memory_budget_gib"):
        train_lora(base_dir=tmp_path, train_examples=[], eval_examples=[], out_dir=tmp_path / "o", config=TrainConfig(memory_budget_gib=16.0, recompute_layers=24))
    with pytest.raises(TrainingError, match="memory_budget_gib"):
        train_lora(base_dir=tmp_path, train_examples=[], eval_examples=[], out_dir=tmp_path / "o", config=TrainConfig(memory_budget_gib=-2.0))
