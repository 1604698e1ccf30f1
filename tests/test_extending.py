"""A method and a vision stage written outside vidpress, here, with no edit to it: they run through ``apply``, the
report and the config-only calculator as the built-in ones do (docs/adding_a_method.md)."""

from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch

import vidpress
from vidpress.accounting import estimate, spec_from_config
from vidpress.method import StageMethod
from vidpress.pipeline import build_inputs
from vidpress.selection import Selection
from vidpress.stages import Needs, PreLLMStage, Stages, VisionStage


@dataclass(frozen=True)
class EvenFrameCentres(PreLLMStage, StageMethod):
    """Keeps the ``per_frame`` tokens nearest the centre of every even frame (a pre-LLM method)."""

    name: ClassVar[str] = "even-centres"
    per_frame: int = 2
    needs: Needs = field(default=Needs(), init=False, repr=False)

    def kept_count(self, frames, tokens_per_frame, grid=None):
        return (frames + 1) // 2 * min(self.per_frame, tokens_per_frame)

    def __call__(self, tokens, ctx=None):
        batch, frames, tokens_per_frame, _ = tokens.features.shape
        h, w = tokens.grid
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        distance = ((rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2).flatten()
        centre = distance.argsort(stable=True)[: min(self.per_frame, tokens_per_frame)].sort().values
        keep = torch.cat([centre + f * tokens_per_frame for f in range(0, frames, 2)])
        return Selection.from_indices(keep.expand(batch, -1), frames * tokens_per_frame)


@dataclass(frozen=True)
class EvenFrames(VisionStage):
    """Encodes the even frames only (a vision stage): the odd ones cost no vision FLOPs."""

    def encoded_frames(self, frames, tokens_per_frame):
        return list(range(0, frames, 2))


def report_and_plan(loaded, stages, frames, clip_frames):
    inputs = build_inputs(loaded.processor, clip_frames[:frames], "What happens?")
    with torch.no_grad(), vidpress.apply(loaded.model, stages) as run:
        loaded.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    report = run.report.accounting
    dtype_bytes = next(loaded.model.parameters()).element_size()
    spec = spec_from_config(loaded.model.config, dtype_bytes=dtype_bytes, tokens_per_frame=report.spec.tokens_per_frame)
    stages = stages.build() if hasattr(stages, "build") else stages
    return report, estimate(spec, frames, stages, text_tokens=report.other_tokens - spec.extra_visual)


@pytest.mark.parametrize("family", ["tiny", "tiny_next_video", "tiny_qwen"])
def test_a_method_from_outside_runs_through_apply_the_report_and_the_calculator(family, request, clip_frames):
    loaded = request.getfixturevalue(family)
    method = EvenFrameCentres(per_frame=2)
    report, planned = report_and_plan(loaded, method, 8, clip_frames)
    frames = report.frames  # Qwen2.5-VL: 4 temporal patches of the 8 frames
    assert report.prefill_visual[0] == planned.prefill_visual[0] == (frames + 1) // 2 * 2
    assert report.prefill_flops == pytest.approx(planned.prefill_flops)
    assert report.kv_bytes == planned.kv_bytes


def test_a_vision_stage_from_outside_skips_its_frames_in_the_tower_and_the_accounting(tiny, clip_frames):
    stages = Stages(vision=EvenFrames(), pre_llm=EvenFrameCentres(per_frame=2))
    report, planned = report_and_plan(tiny, stages, 8, clip_frames)
    assert report.encoded_frames == planned.encoded_frames == 4
    assert report.vision_flops == pytest.approx(planned.vision_flops)
    assert report.vision_flops == pytest.approx(estimate(planned.spec, 8).vision_flops / 2)
    assert report.prefill_visual[0] == planned.prefill_visual[0] == 4 * 2
