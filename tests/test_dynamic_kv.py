"""DyCoke decode-time selection on constructed attention (methods.md §1.3)."""

import torch

from vidpress.stages.decode.dynamic_kv import DynamicKV
from vidpress.tokens import LayerSignals, StageContext


def step(stage, ctx, scores):
    return stage(LayerSignals(layer=stage.first_layer - 1, scores=torch.tensor([scores])), ctx)


def test_pruned_token_comes_back_later():
    stage, ctx = DynamicKV(l=3, p=0.5, mode="fixed"), StageContext(num_layers=8)
    first = step(stage, ctx, [0.9, 0.8, 0.1, 0.05])
    assert first.keep[0].tolist() == [0, 1]
    second = step(stage, ctx, [0.05, 0.1, 0.8, 0.9])  # attention moved: re-select
    assert second.keep[0].tolist() == [2, 3]  # tokens 2, 3 were pruned at step 1 and come back


def test_stable_attention_fixed_reuses_faithful_uses_full_cache():
    fixed, faithful = DynamicKV(p=0.5, mode="fixed"), DynamicKV(p=0.5, mode="faithful")
    c1, c2 = StageContext(num_layers=8), StageContext(num_layers=8)
    a, b = [0.9, 0.8, 0.1, 0.05, 0.01], [0.91, 0.79, 0.1, 0.05, 0.01]  # cosine ~ 1 >= 0.9
    first = step(fixed, c1, a)
    assert step(fixed, c1, b) is first
    assert step(faithful, c2, a) is not None
    assert step(faithful, c2, b) is None  # the reference turns pruning off for that step


def test_faithful_always_keeps_last_visual_token():
    plan = step(DynamicKV(p=0.75, mode="faithful"), StageContext(num_layers=8), [0.9, 0.8, 0.7, 0.6, 0.0])
    assert 4 in plan.keep[0].tolist()
    assert plan.num_kept == int(4 * 0.25) + 1


def test_state_is_per_request():
    stage = DynamicKV(p=0.5)
    step(stage, StageContext(num_layers=8), [0.9, 0.8, 0.1, 0.05])
    fresh = StageContext(num_layers=8)
    assert fresh.memory(stage) == {}
