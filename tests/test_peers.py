"""Peers and controls: counts at a budget, keep-everything equivalence, composition."""

import math

import pytest
import torch

import vidpress
from vidpress.accounting import estimate, spec_from_config
from vidpress.errors import BudgetError
from vidpress.method import compose
from vidpress.methods import FastV, PyramidDrop, RandomTokens, UniformFrames, UniformSpatial
from vidpress.stages.decode.dynamic_kv import DynamicKV
from vidpress.stages.prefill.attention_rank import solve_keep
from vidpress.tokens import VisualTokens

CONTROLS = (UniformFrames, UniformSpatial, RandomTokens)


def _tokens(frames=8, per_frame=16):
    return VisualTokens(torch.randn(1, frames, per_frame, 4), (4, 4))


def _spec(layers=8):
    return spec_from_config({"text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": layers,
                                             "num_attention_heads": 4, "num_key_value_heads": 2},
                             "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                               "image_size": 112, "patch_size": 14,
                                               "model_type": "siglip_vision_model"}})


def test_controls_keep_hand_computed_tokens():
    keep = {cls: {r: cls(retention=r).build().pre_llm(_tokens()).keep[0] for r in (0.25, 0.1)} for cls in CONTROLS}
    # 8 frames x 16 tokens: 25 % -> 32 tokens, 10 % -> round(12.8) = 13, for every control alike
    assert {k.numel() for c in keep.values() for k in c.values()} == {32, 13}
    frames = keep[UniformFrames]
    assert (frames[0.25] // 16).unique().tolist() == [2, 6]  # two whole frames, evenly spread
    assert (frames[0.1] // 16).unique().tolist() == [4] and frames[0.1].numel() == 13
    spatial = keep[UniformSpatial]
    assert torch.bincount(spatial[0.25] // 16, minlength=8).tolist() == [4] * 8
    assert torch.bincount(spatial[0.1] // 16, minlength=8).tolist() == [2] * 5 + [1] * 3
    with pytest.raises(BudgetError):
        UniformFrames(retention=1.5)


def test_fastv_and_pdrop_counts_by_hand():
    spec = _spec(layers=8)
    n = 4 * 8 * 8 // 4 * 4  # 4x4 tokens per frame (112 px, patch 14 -> 8x8 -> pooled 4x4), 32 frames
    assert spec.tokens_per_frame == 16
    frames = 32
    n = frames * 16
    fastv = estimate(spec, frames, FastV(k=2, r=0.5).build())
    assert fastv.prefill_visual == [n, n] + [n // 2] * 6
    # retention 0.5 over 8 layers with K = 2: (2 + 6 lambda) / 8 = 0.5 -> lambda = 1/3
    assert solve_keep(0.5, [2], 8) == pytest.approx(1 / 3)
    at_half = estimate(spec, frames, FastV(k=2, retention=0.5).build())
    assert at_half.prefill_visual == [n, n] + [math.ceil(n / 3)] * 6
    pdrop = estimate(spec, frames, PyramidDrop().build())  # fractions of depth -> layers 2, 4, 6
    assert pdrop.prefill_visual == [n, n, n // 2, n // 2, n // 4, n // 4, n // 8, n // 8]
    with pytest.raises(BudgetError, match="unreachable"):
        estimate(spec, frames, FastV(k=2, retention=0.1).build())


@pytest.mark.parametrize("method", [FastV(k=1, r=0.0), PyramidDrop(layers=(1, 2, 3), lam=1.0)]
                         + [cls(retention=1.0) for cls in CONTROLS], ids=lambda m: m.label)
def test_keep_everything_equals_uncompressed(tiny, inputs, method):
    with torch.no_grad():
        reference = tiny.model(**inputs).logits
        with vidpress.apply(tiny.model, method):
            out = tiny.model(**inputs).logits
    assert torch.allclose(out, reference, atol=1e-5)


def test_composed_counts_are_the_composition_of_the_parts(tiny, inputs):
    composed = compose(UniformSpatial(retention=0.5), FastV(k=1, r=0.5), DynamicKV(l=3, p=0.5))
    with torch.no_grad(), vidpress.apply(tiny.model, composed) as run:
        tiny.model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    acc = run.report.accounting
    n = acc.visual_in
    entering = n // 2  # the pre-LLM part alone
    after = math.ceil(entering * 0.5)  # then FastV at layer 1
    assert acc.prefill_visual == [entering] + [after] * 3
    assert acc.decode_visual[3] == after - int(0.5 * after)  # DynamicKV leaves out P of layer 3's view
    spec = spec_from_config(tiny.model.config)
    assert estimate(spec, acc.frames, composed, text_tokens=acc.other_tokens - 1).prefill_visual == acc.prefill_visual


def test_fastv_generate_stays_consistent(tiny, inputs):
    with torch.no_grad(), vidpress.apply(tiny.model, FastV(k=2, r=0.75)) as run:
        out = tiny.model.generate(**inputs, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                  return_dict_in_generate=True)
    acc = run.report.accounting
    for layer in range(4):
        assert out.past_key_values.layers[layer].keys.shape[2] == acc.other_tokens + acc.stored_visual[layer] + 19
    assert acc.stored_visual[2] == math.ceil(acc.visual_in * 0.25)


def test_decode_stage_before_a_prefill_drop_is_refused(tiny, inputs):
    from vidpress.errors import IncompatibleStagesError

    composed = compose(FastV(k=2, r=0.5), DynamicKV(l=1, p=0.5))  # DyCoke selects at layer 0, FastV drops at 2
    with torch.no_grad(), vidpress.apply(tiny.model, composed), pytest.raises(IncompatibleStagesError, match="layer 2"):
        tiny.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
