"""Every method on every supported model family, through the same stages (issue: model families)."""

import pytest
import torch

import vidpress
from vidpress.adapters.registry import supported_models
from vidpress.errors import UnsupportedModelError
from vidpress.method import compose
from vidpress.methods import (
    METHODS,
    DyCoke,
    FastV,
    FastVID,
    METok,
    PyramidDrop,
    UniformSpatial,
    VisionZip,
)
from vidpress.pipeline import build_inputs
from vidpress.stages.decode.dynamic_kv import DynamicKV

# every registered method at its keep-everything setting (a method that declares none fails here)
KEEP_EVERYTHING = [cls.keep_everything() for cls in METHODS.values()]
# where a method cannot run at all, with the reason it gives
REFUSED = {(("tome", family)): "SigLIP/CLIP/DINOv2" for family in ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")}
COMPRESSING = [
    DyCoke(k=0.7, l=2, p=0.5),
    METok(key_events=1, key_frames=3, schedule=((1, 0.7, 0.4), (3, 0.5, 0.0))),
    compose(FastV(k=2, r=0.5), DynamicKV(l=3, p=0.5)),
    compose(VisionZip(retention=0.25), DynamicKV(l=1, p=0.5)),
    compose(FastVID(retention=0.25), DynamicKV(l=1, p=0.5)),
]


FAMILIES = ["llava_onevision", "llava_next_video", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"]


@pytest.fixture(params=FAMILIES)
def family(request, clip_frames):
    fixture = {
        "llava_onevision": "tiny",
        "llava_next_video": "tiny_next_video",
        "qwen2_5_vl": "tiny_qwen",
        "qwen3_vl": "tiny_qwen3",
        "qwen3_vl_moe": "tiny_qwen3_moe",
    }[request.param]
    loaded = request.getfixturevalue(fixture)
    return loaded, build_inputs(loaded.processor, clip_frames, "What happens in the video?")


def test_next_video_layout_has_no_newline(tiny_next_video, clip_frames):
    inputs = build_inputs(tiny_next_video.processor, clip_frames, "q")
    assert (inputs["input_ids"] == tiny_next_video.model.config.video_token_index).sum() == 12 * 4


def test_the_families_tested_are_the_registered_ones():
    from vidpress.adapters.registry import ADAPTERS

    assert sorted(FAMILIES) == sorted(adapter.model_types[0] for adapter in ADAPTERS)


@pytest.mark.parametrize("method", KEEP_EVERYTHING, ids=lambda m: m.label)
def test_keep_everything_reproduces_logits_and_greedy_tokens(family, method):
    loaded, inputs = family
    refused = REFUSED.get((method.name, loaded.model.config.model_type))
    if refused is not None:
        with pytest.raises(vidpress.errors.IncompatibleStagesError, match=refused):
            vidpress.apply(loaded.model, method)
        return
    with torch.no_grad():
        reference = loaded.model(**inputs).logits
        greedy = loaded.model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        with vidpress.apply(loaded.model, method):
            out = loaded.model(**inputs).logits
            tokens = loaded.model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.allclose(out, reference, atol=1e-5)
    assert torch.equal(tokens, greedy)


@pytest.mark.parametrize("method", COMPRESSING, ids=lambda m: getattr(m, "label", None) or m.name)
def test_generate_with_decode_pruning_keeps_caches_as_accounted(family, method):
    loaded, inputs = family
    with torch.no_grad(), vidpress.apply(loaded.model, method) as run:
        out = loaded.model.generate(
            **inputs, max_new_tokens=21, min_new_tokens=21, do_sample=False, return_dict_in_generate=True
        )
    acc = run.report.accounting
    assert acc.prefill_visual[0] < acc.visual_in or acc.prefill_visual[-1] < acc.visual_in
    for layer in range(4):
        assert out.past_key_values.layers[layer].keys.shape[2] == acc.other_tokens + acc.stored_visual[layer] + 20
    assert run.report.decode_steps == 20


def test_unsupported_model_lists_the_supported_classes():
    assert {
        "LlavaOnevisionForConditionalGeneration",
        "LlavaNextVideoForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
    } <= set(supported_models())
    with pytest.raises(UnsupportedModelError, match="LlavaNextVideoForConditionalGeneration"):
        vidpress.apply(torch.nn.Linear(2, 2), DyCoke())


def test_next_video_report_agrees_with_config_calculator(tiny_next_video, clip_frames):
    from vidpress.accounting import estimate, spec_from_config

    inputs = build_inputs(tiny_next_video.processor, clip_frames, "What happens in the video?")
    method = VisionZip(retention=0.25)
    with torch.no_grad(), vidpress.apply(tiny_next_video.model, method) as run:
        tiny_next_video.model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    acc = run.report.accounting
    spec = spec_from_config(tiny_next_video.model.config, dtype_bytes=4)
    assert (spec.tokens_per_frame, spec.extra_visual, spec.vision.tokens) == (4, 0, 17)  # 2x2 pooled, no newline, CLS
    planned = estimate(spec, 12, method.build(), text_tokens=acc.other_tokens)
    assert planned.prefill_visual == acc.prefill_visual and planned.kv_bytes == acc.kv_bytes
    assert planned.prefill_flops == pytest.approx(acc.prefill_flops)


def _llm_positions(model):
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k.get("position_ids")), with_kwargs=True
    )
    return seen, hook


@pytest.mark.parametrize("method", [UniformSpatial(retention=0.5), DyCoke(k=0.7, l=2, p=0.5)], ids=lambda m: m.name)
def test_qwen_kept_tokens_keep_their_mrope_ids(tiny_qwen, clip_frames, method):
    inputs = build_inputs(tiny_qwen.processor, clip_frames, "What happens in the video?")
    full, _ = tiny_qwen.model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"],
    )
    seen, hook = _llm_positions(tiny_qwen.model)
    try:
        with torch.no_grad(), vidpress.apply(tiny_qwen.model, method) as run:
            tiny_qwen.model(**inputs)
    finally:
        hook.remove()
    kept = run.last_session.kept[0]
    assert 0 < run.report.accounting.prefill_visual[0] < 24  # 12 frames -> 6 temporal patches x 4 tokens
    assert torch.equal(seen[0][-3:, 0], full[:, 0, kept])  # gathered (t, h, w) ids, never renumbered
    first_text = int((inputs["input_ids"][0] == tiny_qwen.model.config.video_token_id).nonzero().max()) + 1
    column = int((kept == first_text).nonzero())
    assert torch.equal(seen[0][-3:, 0, column], full[:, 0, first_text])


def test_qwen_decoding_without_position_ids_continues_after_the_video(tiny_qwen, clip_frames):
    """Direct forward calls (no generate) must give decode steps the M-RoPE ids the uncompressed model uses."""
    from transformers import DynamicCache

    inputs = build_inputs(tiny_qwen.processor, clip_frames, "What happens in the video?")
    token = torch.tensor([[65]])

    def two_steps():
        cache = DynamicCache(config=tiny_qwen.model.config)
        tiny_qwen.model(**inputs, cache=cache)
        return tiny_qwen.model(input_ids=token, cache=cache).logits  # ids from the cache length + rope deltas

    with torch.no_grad():
        reference = two_steps()
        with vidpress.apply(tiny_qwen.model, DyCoke(k=0, p=0)):
            out = two_steps()
    assert torch.allclose(out, reference, atol=1e-5)


@pytest.mark.parametrize(
    "method, asking",
    [
        (DyCoke(mode="faithful"), "TemporalMerge"),
        (VisionZip(retention=0.25, mode="faithful"), "VisionZip"),
        (PyramidDrop(mode="faithful"), "AttentionRank"),
    ],
    ids=["dycoke", "visionzip", "pyramiddrop"],
)
def test_faithful_renumbering_is_refused_on_mrope_at_apply(tiny_qwen, tiny_qwen3, method, asking):
    """Refused at installation, before any hook or encoding: the model then runs as it did before."""
    from vidpress.errors import IncompatibleStagesError

    for model in (tiny_qwen.model, tiny_qwen3.model):
        hooks = len(model._forward_pre_hooks), len(model._forward_hooks)
        with pytest.raises(IncompatibleStagesError, match=rf"{asking} renumber.*M-RoPE.*mode='fixed'"):
            vidpress.apply(model, method)
        assert (len(model._forward_pre_hooks), len(model._forward_hooks)) == hooks


def test_an_undeclared_mrope_family_is_refused_from_its_positions(tiny_qwen, clip_frames, monkeypatch):
    """A family that returns (t, h, w) ids without declaring M-RoPE installs, and the layout refuses the
    renumbering from the positions' shape at the request, before the LLM runs."""
    from vidpress.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
    from vidpress.errors import IncompatibleStagesError

    monkeypatch.setattr(Qwen2_5_VLAdapter, "mrope", False)
    inputs = build_inputs(tiny_qwen.processor, clip_frames, "q")
    with torch.no_grad(), vidpress.apply(tiny_qwen.model, DyCoke(mode="faithful")):
        with pytest.raises(IncompatibleStagesError, match="TemporalMerge renumber.*M-RoPE.*mode='fixed'"):
            tiny_qwen.model(**inputs)


def test_qwen_encoder_attention_matches_the_models_own_attention_weights(tiny_qwen, clip_frames):
    """Our fp32 recomputation (qkv, vision RoPE, per-segment softmax, merge units, window order undone) against
    the weights the model's own eager attention produces inside its last vision block."""
    from transformers import AttentionInterface
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen
    from transformers.vision_utils import get_vision_window_index

    from vidpress.adapters.qwen2_5_vl import Qwen2_5_VLAdapter

    ADAPTER = Qwen2_5_VLAdapter(tiny_qwen.model)

    inputs = build_inputs(tiny_qwen.processor, clip_frames, "q")
    recorded, seen = [], {}

    def recording(module, *args, **kwargs):
        out, weights = qwen.eager_attention_forward(module, *args, **kwargs)
        recorded.append(weights.float())
        return out, weights

    AttentionInterface.register("vidpress_recording", recording)
    visual, block = tiny_qwen.model.model.visual, ADAPTER.encoder_attention()
    hook = block.register_forward_pre_hook(lambda m, a, k: seen.update(args=a, kwargs=k), with_kwargs=True)
    visual.config._attn_implementation = "vidpress_recording"
    try:
        with torch.no_grad():
            visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"])
    finally:
        visual.config._attn_implementation = "sdpa"
        hook.remove()
    with torch.no_grad():
        received, keys = ADAPTER.encoder_signals(
            block, seen["args"], seen["kwargs"], {"grid_thw": inputs["video_grid_thw"]}
        )
    last = recorded[-len(seen["kwargs"]["cu_seqlens"]) + 1 :]  # the last block's segments (one per temporal patch)
    per_patch = torch.cat([w[0].mean((0, 1)) for w in last]).view(-1, 4).mean(1)
    window, _ = get_vision_window_index(inputs["video_grid_thw"], 2, 56, 14)
    assert torch.allclose(received, per_patch[window.argsort()], atol=1e-5)
    assert received.shape == (24,) and keys.shape == (24, 16)  # 6 temporal patches x 2x2 merged tokens


def test_metok_on_qwen_halves_its_strides_on_the_merged_grid(tiny_qwen, clip_frames):
    inputs = build_inputs(tiny_qwen.processor, clip_frames, "What happens in the video?")
    method = METok(key_events=1, key_frames=1, schedule=((1, 0.7, 0.4), (3, 0.5, 0.0)))
    with torch.no_grad(), vidpress.apply(tiny_qwen.model, method) as run:
        tiny_qwen.model(**inputs)
    plan = run.last_session.stage_info[0]
    # reference strides (2, 4, 4, 8) on the patch grid -> (1, 2, 2, 4) on the 2x2 merged grid: 4 / 1 / 1 tokens
    assert set(plan.strides) <= {1, 2, 4} and 1 in plan.strides
    assert plan.tokens == [4 if s == 1 else 1 for s in plan.strides]
    assert run.report.accounting.prefill_visual[0] == sum(plan.tokens)


def test_a_saved_qwen_checkpoint_loads_and_compresses(tiny_qwen, clip_frames, tmp_path):
    """`vidpress run --model <local dir>` path for Qwen2.5-VL: load_model picks the adapter and the processor."""
    from vidpress.models.loading import load_model

    tiny_qwen.model.save_pretrained(tmp_path)
    tiny_qwen.processor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.float32)
    inputs = build_inputs(loaded.processor, clip_frames, "What happens in the video?")
    assert inputs["video_grid_thw"].tolist() == [[6, 4, 4]]
    with torch.no_grad(), vidpress.apply(loaded.model, FastVID(retention=0.5)) as run:
        loaded.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert run.report.accounting.prefill_visual[0] == 12
