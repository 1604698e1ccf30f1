"""The vision slot: frames a plan can never use are not encoded, the answers are those of encoding every frame,
and the report's vision FLOPs count what was really encoded (equal to the calculator's)."""

from dataclasses import dataclass

import pytest
import torch

import vidpress
from vidpress.accounting import estimate, spec_from_config
from vidpress.errors import IncompatibleStagesError, VidpressError
from vidpress.methods import UniformFrames, UniformSpatial
from vidpress.pipeline import build_inputs
from vidpress.stages import Stages, VisionStage, compose


@dataclass(frozen=True)
class EncodeAll(UniformFrames):
    """UniformFrames without its declaration: every frame is encoded (the reference for equality)."""

    def encoded_frames(self, frames, tokens_per_frame):
        return None


@dataclass(frozen=True)
class FirstFrames(VisionStage):
    count: int = 2

    def encoded_frames(self, frames, tokens_per_frame):
        return list(range(self.count))


FAMILIES = ["tiny", "tiny_next_video", "tiny_qwen"]


def tower_rows(loaded):
    """Counts the frames (LLaVA: images; Qwen: patch rows) each vision-tower call receives."""
    seen = []
    adapter = vidpress.adapters.registry.adapter_for(loaded.model)
    tower = adapter.vision_modules()[0]
    hook = tower.register_forward_pre_hook(
        lambda m, a, k: seen.append((a[0] if a else k.get("pixel_values", k.get("hidden_states"))).shape[0]),
        with_kwargs=True,
    )
    return seen, hook


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_frames_encodes_only_its_frames_and_answers_the_same(family, request, clip_frames):
    loaded = request.getfixturevalue(family)
    inputs = build_inputs(loaded.processor, clip_frames[:8], "What happens?")
    frames = 4 if family == "tiny_qwen" else 8  # Qwen: 2 frames per temporal patch
    stage = UniformFrames(retention=0.25)
    seen, hook = tower_rows(loaded)
    try:
        with torch.no_grad(), vidpress.apply(loaded.model, stage) as run:
            skipped = loaded.model(**inputs).logits[0, -1]
        rows_skipped = seen[-1]
        with torch.no_grad(), vidpress.apply(loaded.model, EncodeAll(retention=0.25)):
            full = loaded.model(**inputs).logits[0, -1]
        rows_full = seen[-1]
    finally:
        hook.remove()
    per_frame = run.report.accounting.spec.tokens_per_frame
    chosen = stage.encoded_frames(frames, per_frame)
    assert len(chosen) == frames // 4  # 25 % of the frames, whole
    assert rows_skipped * frames == rows_full * len(chosen)  # the tower saw only the chosen frames
    assert torch.allclose(skipped, full, atol=1e-5)
    report = run.report.accounting
    assert report.encoded_frames == len(chosen) and report.as_dict()["frames_encoded"] == len(chosen)
    spec = spec_from_config(loaded.model.config, tokens_per_frame=per_frame)
    planned = estimate(spec, 8, Stages(pre_llm=stage))
    assert planned.vision_flops == pytest.approx(report.vision_flops)
    assert report.vision_flops == pytest.approx(estimate(spec, 8).vision_flops * len(chosen) / frames)


def test_generate_still_encodes_the_video_once_before_prefill(tiny, clip_frames):
    """generate reads the encoder's parameters from its signature: the wrapper keeps them, so the video is still
    pre-encoded once, as without vidpress."""
    import inspect

    inputs = build_inputs(tiny.processor, clip_frames[:8], "What happens?")
    before = inspect.signature(tiny.model.model.get_video_features)
    seen, hook = tower_rows(tiny)
    try:
        with torch.no_grad(), vidpress.apply(tiny.model, vidpress.methods.VisionZip(retention=0.5)):
            assert inspect.signature(tiny.model.model.get_video_features) == before
            tiny.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        hook.remove()
    assert seen == [8]


def test_generate_skips_the_frames_too(tiny, clip_frames):
    inputs = build_inputs(tiny.processor, clip_frames[:8], "What happens?")
    seen, hook = tower_rows(tiny)
    try:
        with torch.no_grad(), vidpress.apply(tiny.model, UniformFrames(retention=0.25)) as run:
            tiny.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        hook.remove()
    assert seen == [2] and run.report.decode_steps == 2
    assert "get_video_features" not in vars(tiny.model.model)  # the wrapper is gone with the method


def test_a_plan_that_keeps_a_skipped_frame_is_refused(tiny, clip_frames):
    inputs = build_inputs(tiny.processor, clip_frames[:8], "What happens?")
    composed = compose(FirstFrames(count=2), UniformSpatial(retention=0.5))  # spatial keeps tokens of every frame
    with torch.no_grad(), vidpress.apply(tiny.model, composed):
        with pytest.raises(VidpressError, match="did not encode"):
            tiny.model(**inputs)


def test_vision_and_pre_llm_declarations_intersect():
    stages = compose(FirstFrames(count=4), UniformFrames(retention=0.25))
    assert UniformFrames(retention=0.25).encoded_frames(8, 16) == [2, 6]  # spread evenly
    assert stages.encoded_frames(8, 16) == [2]
    with pytest.raises(IncompatibleStagesError, match="encodes none"):
        compose(FirstFrames(count=1), UniformFrames(retention=0.25)).encoded_frames(8, 16)
    assert Stages(pre_llm=UniformFrames(retention=1.0)).encoded_frames(8, 16) is None  # every frame: no skipping
