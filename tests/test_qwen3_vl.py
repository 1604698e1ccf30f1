"""Qwen3-VL specifics: DeepStack features follow the kept and merged tokens, timestamps stay as text, the prompt
layout and positions are the model's own, and the calculator agrees with the runtime."""

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest
import torch

import vidpress
from vidpress.accounting import estimate
from vidpress.adapters.registry import spec_from_config
from vidpress.errors import BudgetError, IncompatibleStagesError
from vidpress.methods import METHODS
from vidpress.pipeline import build_inputs
from vidpress.selection import Selection
from vidpress.stages import Needs, PreLLMStage
from vidpress.tokens import PackedTokens

QUESTION = "What happens in the video?"


@dataclass(frozen=True)
class FirstHalfOfFrame(PreLLMStage):
    """Keeps only the first half of one frame's tokens."""

    frame: int = 1
    name: ClassVar[str] = "first-half"
    needs: Needs = field(default=Needs(), init=False, repr=False)

    def kept_count(self, frames: int, tokens_per_frame: int, grid=None) -> int:
        return tokens_per_frame // 2

    def __call__(self, tokens, ctx=None) -> Selection:
        batch, _, per_frame, _ = tokens.features.shape
        keep = torch.arange(per_frame // 2) + self.frame * per_frame
        return Selection(keep.expand(batch, -1).contiguous(), tokens.features.shape[1] * per_frame)


def _added_by_deepstack(model, stage, inputs, levels=3):
    """What was added to each of the first ``levels`` layers' outputs: the output after vidpress's hooks minus the
    layer's own output, per layer (B, S0, D)."""
    before, after, handles = {}, {}, []
    layers = model.model.language_model.layers
    for level in range(levels):
        handles.append(layers[level].register_forward_hook(lambda m, a, out, i=level: before.__setitem__(i, out)))
    try:
        with torch.no_grad(), vidpress.apply(model, stage) as run:
            for level in range(levels):
                handles.append(
                    layers[level].register_forward_hook(lambda m, a, out, i=level: after.__setitem__(i, out))
                )
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [after[i] - before[i] for i in range(levels)], run.last_session


def test_deepstack_features_are_added_at_exactly_the_kept_tokens(tiny_qwen3, clip_frames):
    model = tiny_qwen3.model
    inputs = build_inputs(tiny_qwen3.processor, clip_frames, QUESTION)
    with torch.no_grad():
        out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    added, session = _added_by_deepstack(model, FirstHalfOfFrame(frame=1), inputs)
    per_frame = 4  # 64 px: 2x2 merged tokens per temporal patch
    visual = session.visual[0].nonzero()[:, 0]
    assert len(visual) == per_frame // 2
    for level, delta in enumerate(added):
        features = out.deepstack_features[level][0]
        expected = features[per_frame : per_frame + per_frame // 2]
        assert torch.allclose(delta[0, visual], expected, atol=1e-6)  # (h + f) - h: f up to rounding
        assert not torch.allclose(delta[0, visual], features[per_frame + per_frame // 2 : 2 * per_frame], atol=1e-3)
        others = torch.ones(delta.shape[1], dtype=torch.bool)
        others[visual] = False
        assert not delta[0, others].any()  # nothing added to text (timestamps included)


def test_merged_tokens_carry_their_members_deepstack_features(tiny_qwen3, clip_frames):
    """VisionZip's contextual tokens: the features added are the same weighted merge of the members' features."""
    model = tiny_qwen3.model
    inputs = build_inputs(tiny_qwen3.processor, clip_frames, QUESTION)
    with torch.no_grad():
        out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    stage = vidpress.VisionZip(retention=0.5, contextual_share=0.5)
    captured = {}
    original = type(stage).__call__

    def spy(self, tokens, ctx=None):
        captured["plan"] = plan = original(self, tokens, ctx)
        return plan

    type(stage).__call__ = spy
    try:
        added, session = _added_by_deepstack(model, stage, inputs)
    finally:
        type(stage).__call__ = original
    plan: PackedTokens = captured["plan"]
    assert plan.members is not None
    weights = plan.members[0].weight
    assert ((weights > 0) & (weights < 1)).any()  # something was merged
    visual = session.visual[0].nonzero()[:, 0]
    for level, delta in enumerate(added):
        merged = plan.members[0].combine(out.deepstack_features[level][0], plan.num_visual)
        # the block is laid out frame by frame between the timestamps: the same tokens, in their frame's order
        order = plan.frame_of[0].argsort(stable=True)
        assert torch.allclose(delta[0, visual], merged[order], atol=1e-6)


def test_prompt_layout_has_a_timestamp_per_temporal_patch(tiny_qwen3, clip_frames):
    processor = tiny_qwen3.processor
    times = [0.5 * i for i in range(len(clip_frames))]
    inputs = build_inputs(processor, clip_frames, QUESTION, timestamps=times)
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    patches = [f"<{(times[i] + times[i + 1]) / 2:.1f} seconds><|vision_start|>" for i in range(0, len(times), 2)]
    assert text.count("seconds>") == 6 and all(p in text for p in patches)
    assert text.count("<|vision_start|>") == 7  # the template's own start and end stay around the video
    assert (
        (inputs["mm_token_type_ids"] == 2).sum()
        == (inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum()
        == 24
    )
    template = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    )
    at_fps = build_inputs(processor, clip_frames, QUESTION)["input_ids"].shape[1]
    # what check_frames counts: the prompt less the template's text, its <|video_pad|> excepted
    assert processor.tokens_per_video(12) == at_fps - len(processor.tokenizer(template)["input_ids"]) + 1
    hf_layout = "<|vision_start|><0.5 seconds><|vision_start|>"  # transformers 5.x keeps the outer markers
    assert processor.tokenizer.decode(build_inputs(processor, clip_frames, QUESTION)["input_ids"][0]).count(hf_layout)
    odd = build_inputs(processor, clip_frames[:5], QUESTION, timestamps=[0, 1, 2, 3, 4])
    assert "<4.0 seconds>" in processor.tokenizer.decode(odd["input_ids"][0])  # the last frame repeated


def _compressing():
    for name, cls in METHODS.items():
        if name == "tome":
            continue
        try:
            yield cls.at_retention(0.5)
        except (NotImplementedError, BudgetError):
            yield cls.keep_everything()


@pytest.mark.parametrize("method", list(_compressing()), ids=lambda m: m.label)
def test_timestamps_survive_and_tokens_stay_in_their_frame(tiny_qwen3, clip_frames, method):
    processor, model = tiny_qwen3.processor, tiny_qwen3.model
    inputs = build_inputs(processor, clip_frames, QUESTION)
    ids = inputs["input_ids"][0]
    video = ids == model.config.video_token_id
    with torch.no_grad(), vidpress.apply(model, method) as run:
        model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    kept = run.last_session.kept[0]
    assert set((~video).nonzero()[:, 0].tolist()) <= set(kept.tolist())  # all text, timestamps included
    starts = (ids == processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")).nonzero()[:, 0]
    kept_video = kept[video[kept]]
    frame_of_slot = torch.bucketize(kept_video, starts) - 1
    assert (frame_of_slot >= 0).all() and frame_of_slot.diff().ge(0).all()  # in frame order, between timestamps


def test_kept_tokens_keep_the_models_mrope_ids(tiny_qwen3, clip_frames):
    model = tiny_qwen3.model
    inputs = build_inputs(tiny_qwen3.processor, clip_frames, QUESTION)
    full, _ = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"]
    )
    seen = {}
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.__setitem__("ids", kw["position_ids"]), with_kwargs=True
    )
    try:
        with torch.no_grad(), vidpress.apply(model, vidpress.UniformFrames(retention=0.5)) as run:
            model(**inputs)
    finally:
        handle.remove()
    kept = run.last_session.kept[0]
    assert torch.equal(seen["ids"][-3:, 0], full[:, 0, kept])


def test_images_with_the_video_are_refused(tiny_qwen3, clip_frames):
    inputs = build_inputs(tiny_qwen3.processor, clip_frames, QUESTION)
    inputs["pixel_values"] = torch.zeros(4, 1536)
    with torch.no_grad(), vidpress.apply(tiny_qwen3.model, vidpress.UniformFrames(retention=0.5)):
        with pytest.raises(vidpress.errors.VidpressError, match="no images"):
            tiny_qwen3.model(**inputs)


def test_a_merge_without_members_is_refused(tiny_qwen3, clip_frames):
    @dataclass(frozen=True)
    class MeanOfFrames(PreLLMStage):
        name: ClassVar[str] = "mean-of-frames"
        needs: Needs = field(default=Needs(), init=False, repr=False)

        def kept_count(self, frames, tokens_per_frame, grid=None):
            return tokens_per_frame

        def __call__(self, tokens, ctx=None):
            x = tokens.features
            batch, frames, per_frame, _ = x.shape
            source = torch.arange(per_frame).expand(batch, -1)
            zeros = torch.zeros_like(source)
            return PackedTokens(x.mean(1), zeros, torch.ones(batch, 1, dtype=torch.bool), zeros, source=source)

    inputs = build_inputs(tiny_qwen3.processor, clip_frames, QUESTION)
    with torch.no_grad(), vidpress.apply(tiny_qwen3.model, MeanOfFrames()):
        with pytest.raises(IncompatibleStagesError, match="members"):
            tiny_qwen3.model(**inputs)


@pytest.mark.parametrize("fixture", ["tiny_qwen3", "tiny_qwen3_moe"])
@pytest.mark.parametrize("method", ["dycoke", "fastv", "visionzip", "metok", "holitom"])
def test_report_agrees_with_the_config_calculator(request, clip_frames, fixture, method):
    loaded = request.getfixturevalue(fixture)
    chosen = METHODS[method].at_retention(0.5) if method != "dycoke" else vidpress.DyCoke(k=0.5, l=2, p=0.5)
    inputs = build_inputs(loaded.processor, clip_frames, QUESTION)
    with torch.no_grad(), vidpress.apply(loaded.model, chosen) as run:
        loaded.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    measured = run.report.accounting
    spec = spec_from_config(loaded.model.config, tokens_per_frame=4, dtype_bytes=4)
    assert spec.deepstack == 3
    assert spec.llm.router == (4 if fixture.endswith("moe") else 0)
    text = measured.other_tokens - 6 * spec.text_per_frame  # the calculator adds the times per temporal patch
    calculated = estimate(spec, 12, chosen.build(), text_tokens=text)  # frames, not temporal patches
    assert calculated.prefill_visual == measured.prefill_visual
    assert calculated.prefill_flops == pytest.approx(measured.prefill_flops)
    assert calculated.projector_flops == measured.projector_flops
    assert calculated.kv_bytes == measured.kv_bytes


def test_moe_and_deepstack_flops_by_hand():
    from vidpress.specs import PRESETS

    spec = PRESETS["qwen3-vl-30b-a3b"]
    d, m, layers = 2048, 8 * 768, 48
    acc = estimate(spec, 4, None, text_tokens=10)  # 4 frames: 2 temporal patches
    n = 2 * 256 + 10 + 2 * 8  # and each one's time and vision start / end
    per_layer = 4 * n * d * d + 2 * n * n * d + 2 * n * d * m + n * d * 128
    assert acc.prefill_flops == layers * per_layer + 3 * 512 * d
    wide = 4 * 1152
    assert acc.projector_flops == 4 * 2 * 256 * (wide * wide + wide * d)


def test_random_build_runs_from_the_cli_name():
    from vidpress.adapters.registry import random_builds

    assert {"random-qwen3-vl", "random-qwen3-vl-moe"} <= set(random_builds())


def test_frames_odd_count_is_padded_like_the_model(tiny_qwen3):
    frames = (np.random.default_rng(0).random((5, 64, 64, 3)) * 255).astype(np.uint8)
    inputs = build_inputs(tiny_qwen3.processor, frames, QUESTION)
    assert inputs["video_grid_thw"].tolist() == [[3, 4, 4]]
