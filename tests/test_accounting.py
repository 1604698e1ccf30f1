"""The config-only calculator against DyCoke's table, and the runtime report against the plan."""

import pytest
import torch

import vidpress
from vidpress.accounting import PRESETS, estimate, kv_bytes_per_token, layer_flops, spec_from_config


def test_dycoke_table_llava_ov_7b():
    spec = PRESETS["llava-ov-7b"]
    full = estimate(spec, 32, None, text_tokens=78)
    assert full.prefill_flops / 1e12 == pytest.approx(41.4, rel=0.02)
    ideal = estimate(spec, 32, vidpress.DyCoke(k=0.7).build(), text_tokens=78, retention=0.475)
    assert ideal.prefill_flops / 1e12 == pytest.approx(17.9, rel=0.02)
    code = estimate(spec, 32, vidpress.DyCoke(k=0.7, mode="faithful").build(), text_tokens=78)
    assert code.prefill_visual == [3098] * 28
    assert code.prefill_flops > ideal.prefill_flops


def test_formulas_by_hand():
    assert layer_flops(10, 4, 8) == 4 * 10 * 16 + 2 * 100 * 4 + 2 * 10 * 4 * 8
    assert kv_bytes_per_token(PRESETS["llava-ov-7b"].llm, 2) == 2 * 4 * 128 * 2  # 2 KiB per layer, 56 KiB / token
    acc = estimate(PRESETS["llava-ov-0.5b"], 8, vidpress.DyCoke(k=0.5, l=3, p=0.5).build(), text_tokens=10)
    kept = 2 * 196 + 6 * 98
    assert acc.prefill_visual == [kept] * 24
    assert acc.decode_visual == [kept] * 3 + [int(kept * 0.5)] * 21
    assert acc.kv_bytes == 24 * (kept + 11) * 2 * 2 * 64 * 2


def test_report_agrees_with_config_calculator(tiny, inputs):
    method = vidpress.DyCoke(k=0.7, l=2, p=0.5)
    with vidpress.apply(tiny.model, method) as run, torch.no_grad():
        tiny.model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    report = run.report
    spec = spec_from_config(tiny.model.config, dtype_bytes=4)
    other = report.accounting.other_tokens
    planned = estimate(spec, 12, method.build(), text_tokens=other - 1)
    assert report.accounting.prefill_visual == planned.prefill_visual
    assert report.accounting.prefill_flops == pytest.approx(planned.prefill_flops)
    assert report.accounting.kv_bytes == planned.kv_bytes
    assert report.ttft_s > 0 and report.decode_steps == 5 and report.decode_tokens_per_s > 0
    assert report.as_dict()["visual_tokens_llm"] == planned.prefill_visual[0]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_run(preset):
    acc = estimate(PRESETS[preset], 16, vidpress.DyCoke().build())
    assert 0 < acc.retention < 1 and acc.vision_flops > 0


def test_qwen_preset_counts_temporal_patches_and_windowed_vision_by_hand():
    from vidpress.accounting import layer_flops

    spec = PRESETS["qwen2.5-vl-7b"]
    acc = estimate(spec, 63)  # 63 frames -> 32 temporal patches (the last frame is repeated, as the processor does)
    assert acc.frames == 32 and acc.visual_in == 32 * 256 and acc.other_tokens == 78
    n = 1024
    full = layer_flops(n, 1280, 3420)
    windowed = 4 * n * 1280**2 + 2 * n * 64 * 1280 + 2 * n * 1280 * 3420
    embed = n * 3 * 2 * 14 * 14 * 1280
    assert acc.vision_flops == 32 * (embed + 4 * full + 28 * windowed)
    assert acc.projector_flops == 32 * 256 * (5120 * 5120 + 5120 * 3584)  # merger: 4 x 1280 -> 5120 -> 3584


def test_full_size_random_config_is_the_preset_architecture():
    from vidpress.errors import UnsupportedModelError
    from vidpress.models.random import full_size_config

    config, _ = full_size_config("llava-ov-7b")
    spec, preset = spec_from_config(config), PRESETS["llava-ov-7b"]
    assert (spec.llm, spec.vision, spec.tokens_per_frame, spec.patches) == (
        preset.llm,
        preset.vision,
        preset.tokens_per_frame,
        preset.patches,
    )
    with pytest.raises(UnsupportedModelError, match="llava-ov-7b"):
        full_size_config("longva-7b")
