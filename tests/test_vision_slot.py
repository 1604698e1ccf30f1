"""The vision slot: frames a plan can never use are not encoded, the answers are those of encoding every frame,
and the report's vision FLOPs count what was really encoded (equal to the calculator's)."""

from dataclasses import dataclass

import pytest
import torch

import vidpress
from vidpress.accounting import estimate, spec_from_config, vision_flops
from vidpress.errors import IncompatibleStagesError, VidpressError
from vidpress.methods import UniformFrames, UniformSpatial
from vidpress.pipeline import build_inputs
from vidpress.stages import Stages, VisionStage, compose
from vidpress.stages.vision.tome import TokenMerging


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


# -- METok coarse-to-fine --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny112():
    """A random LLaVA-OneVision whose SigLIP sees 8 x 8 patches (112 px): a 4 x 4 token grid per frame."""
    from vidpress.models.random import random_model

    torch.manual_seed(0)
    return random_model(layers=2, hidden=64, image_size=112, seed=0)


def test_a_low_resolution_pass_gives_the_documented_grid(tiny112, clip_frames):
    """encode_at: at the tower's own 8 patches it is the model's tokens; CoarseToFine's sides for strides 1, 2, 4
    of the 4 x 4 grid are 8, 4 and 2 patches (16, 4 and 1 tokens, what pooling by the stride would leave)."""
    from vidpress.adapters.registry import adapter_for
    from vidpress.stages.pre_llm.event_pooling import EventPooling
    from vidpress.stages.vision.coarse_to_fine import CoarseToFine

    adapter = adapter_for(tiny112.model)
    inputs = build_inputs(tiny112.processor, clip_frames[:4], "What happens?")
    pixels = inputs["pixel_values_videos"]
    with torch.no_grad():
        model = tiny112.model.model.get_video_features(
            pixels,
            vision_feature_layer=tiny112.model.config.vision_feature_layer,
            vision_feature_select_strategy=tiny112.model.config.vision_feature_select_strategy,
            return_dict=True,
        ).pooler_output[0, :-1]
        sides = CoarseToFine(events=EventPooling(retention=0.25)).patch_sides(adapter.patch_side())
        assert sides == {1: 8, 2: 4, 4: 2}
        assert torch.allclose(adapter.encode_at(pixels[0], 8).flatten(0, 1), model, atol=1e-5)
        assert [adapter.encode_at(pixels[0], sides[k]).shape[1] for k in (1, 2, 4)] == [16, 4, 1]
    # the 384-px LLaVA-OV tower: 27 patches, 14 x 14 tokens; strides 2 and 4 at 14 and 8 patches (7 x 7, 4 x 4)
    assert CoarseToFine(events=EventPooling(retention=0.25)).patch_sides(27) == {1: 27, 2: 14, 4: 8}


@pytest.mark.parametrize(
    "first_pass,refine,calls,passes,share",
    [
        ("low", "strides", [(8, 28), (1, 112), (3, 56)], ((8, 4), (1, 64), (3, 16)), 0.3),
        ("middle", "strides", [(8, 56), (1, 112)], ((8, 16), (1, 64)), 0.4),  # the middle frames keep the first pass's
        ("low", "full", [(8, 28), (4, 112)], ((8, 4), (4, 64)), 0.6),  # the key and middle frames at full resolution
        ("low", "all", [(8, 28), (8, 112)], ((8, 4), (8, 64)), 1.1),  # every frame: the first pass only plans
    ],
)
def test_coarse_to_fine_encodes_each_frame_at_its_plans_resolution_and_reports_it(
    tiny112, clip_frames, first_pass, refine, calls, passes, share
):
    """Tower inputs counted per call: all 8 frames at the first pass's resolution (28 px: 2 patches, or 56 px),
    then the frames the plan keeps whole at 112 px and, after a low first pass, those at the middle stride at
    56 px, as many as the content-free allotment says; the runtime report's vision FLOPs equal the calculator's;
    the LLM sees the declared count."""
    method = vidpress.methods.METok(retention=0.25, coarse=True, layers=(1,), first_pass=first_pass, refine=refine)
    stages = method.build()
    allotment = stages.pre_llm.allotment(8, (4, 4))  # 8 frames of 16 tokens, budget 32
    assert sorted(allotment) == [1, 2, 2, 2, 4, 4, 4, 4]  # 16 + 4 + 7 = 27, then 4 each while the rest fit 1
    sizes = []
    tower = tiny112.model.model.vision_tower
    hook = tower.register_forward_pre_hook(
        lambda m, a, k: sizes.append(tuple((a[0] if a else k["pixel_values"]).shape)), with_kwargs=True
    )
    inputs = build_inputs(tiny112.processor, clip_frames[:8], "What happens?")
    try:
        with torch.no_grad(), vidpress.apply(tiny112.model, method) as run:
            tiny112.model(**inputs)
    finally:
        hook.remove()
    assert [(n, h) for n, _, h, _ in sizes] == calls
    report = run.report.accounting
    assert report.prefill_visual[0] == stages.pre_llm.kept_count(8, 16) == 16 + 3 * 4 + 4 * 1
    assert report.vision_passes == passes
    spec = spec_from_config(tiny112.model.config)
    planned = estimate(spec, 8, stages, text_tokens=report.other_tokens - 1)
    assert planned.vision_flops == report.vision_flops and planned.projector_flops == report.projector_flops
    assert report.vision_flops < share * estimate(spec, 8).vision_flops


def test_a_tome_first_pass_encodes_every_frame_merged_then_the_key_frames_whole(tiny112, clip_frames):
    """first_pass="tome": one call with all 8 frames at 112 px whose tower layers merge 64 -> 32 -> 16 tokens
    (first_retention 1: the 16 tokens the model keeps per frame), then the key frame at 112 px unmerged (the MLPs
    see all 64); the middle- and low-stride frames take no pass of their own. The report lists the merged pass
    with its merges and equals the calculator."""
    from vidpress.adapters.registry import adapter_for

    method = vidpress.methods.METok(retention=0.25, coarse=True, layers=(1,), first_pass="tome", first_retention=1.0)
    stages = method.build()
    assert stages.vision.first_pass_merging == TokenMerging(retention=1.0, grid=True)
    sizes, mlp = [], []
    tower = tiny112.model.model.vision_tower
    hooks = [
        tower.register_forward_pre_hook(
            lambda m, a, k: sizes.append(tuple((a[0] if a else k["pixel_values"]).shape)), with_kwargs=True
        ),
        *(
            block.mlp_out.register_forward_pre_hook(lambda m, a: mlp.append(tuple(a[0].shape[:2])))
            for block in adapter_for(tiny112.model).tower_blocks()
        ),
    ]
    inputs = build_inputs(tiny112.processor, clip_frames[:8], "What happens?")
    try:
        with torch.no_grad(), vidpress.apply(tiny112.model, method) as run:
            tiny112.model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    assert [(n, h) for n, _, h, _ in sizes] == [(8, 112), (1, 112)]
    assert mlp == [(8, 32), (8, 16), (1, 64), (1, 64)]  # ToMe merges between attention and MLP
    report = run.report.accounting
    assert report.vision_passes == ((8, 64, (32, 16)), (1, 64))
    assert report.prefill_visual[0] == stages.pre_llm.kept_count(8, 16)
    spec = spec_from_config(tiny112.model.config)
    planned = estimate(spec, 8, stages, text_tokens=report.other_tokens - 1)
    assert planned.vision_passes == report.vision_passes
    assert planned.vision_flops == report.vision_flops and planned.projector_flops == report.projector_flops
    whole = estimate(spec, 8).vision_flops
    merged = vision_flops(spec, 8, 64, (32, 16))
    assert (
        report.vision_flops == merged + vision_flops(spec, 1) and merged < 0.8 * whole
    )  # 64 then 32 tokens attend, 32 then 16 through the MLPs


def test_a_first_pass_merging_nothing_gives_the_model_tokens_every_stride_pools(tiny112, clip_frames):
    """With a ToMe first pass that merges nothing, the first pass is the model's own tokens, so pooling its grid
    for the middle- and low-stride frames (refine="strides") gives the logits of re-encoding every frame with the
    model (refine="all") under the same plan."""
    from vidpress.stages.pre_llm.event_pooling import EventPooling
    from vidpress.stages.vision.coarse_to_fine import CoarseToFine

    class Unmerged(CoarseToFine):
        @property
        def first_pass_merging(self):
            return TokenMerging(r=0, grid=True)

    events = EventPooling(retention=0.25)
    inputs = build_inputs(tiny112.processor, clip_frames[:8], "What happens?")
    logits = []
    with torch.no_grad():
        for refine in ("strides", "all"):
            with vidpress.apply(tiny112.model, compose(Unmerged(events, "tome", refine), events)) as run:
                logits.append(tiny112.model(**inputs).logits[0, -1])
            assert run.report.accounting.vision_passes[0] == (8, 64, (0, 0))
    assert torch.allclose(*logits, atol=1e-4)


def test_coarse_to_fine_keeping_everything_is_the_uncompressed_model(tiny112, clip_frames):
    """At retention 1 every frame takes stride 1: the first pass is spent, then every frame is encoded at full
    resolution and packed as is, so the logits are the uncompressed model's."""
    from vidpress.stages.pre_llm.event_pooling import EventPooling
    from vidpress.stages.vision.coarse_to_fine import CoarseToFine

    events = EventPooling(retention=1.0)
    inputs = build_inputs(tiny112.processor, clip_frames[:6], "What happens?")
    with torch.no_grad():
        plain = tiny112.model(**inputs).logits[0, -1]
        with vidpress.apply(tiny112.model, compose(CoarseToFine(events=events), events)) as run:
            mine = tiny112.model(**inputs).logits[0, -1]
    assert torch.allclose(plain, mine, atol=1e-5)
    assert run.report.accounting.vision_passes == ((6, 4), (6, 64))


def test_coarse_to_fine_generates_and_times_both_passes(tiny112, clip_frames):
    from vidpress.pipeline import ask

    method = vidpress.methods.METok(retention=0.25, coarse=True, layers=(1,))
    answer = ask(
        tiny112.model, tiny112.processor, clip_frames[:8], "What happens?", method, max_new_tokens=3, min_new_tokens=3
    )
    report = answer.report
    assert len(answer.tokens) == 3 and report.accounting.vision_passes is not None
    assert 0 < report.vision_s <= report.ttft_s


def test_coarse_to_fine_refuses_what_it_cannot_run(tiny112, tiny_qwen, tiny_next_video, clip_frames):
    from vidpress.stages.pre_llm.event_pooling import EventPooling
    from vidpress.stages.pre_llm.visionzip import VisionZip
    from vidpress.stages.vision.coarse_to_fine import CoarseToFine

    with pytest.raises(vidpress.errors.InvalidParameterError, match="set a retention"):
        vidpress.methods.METok(coarse=True).build()
    with pytest.raises(vidpress.errors.InvalidParameterError, match="fixed-budget form"):
        CoarseToFine(events=EventPooling())
    with pytest.raises(vidpress.errors.InvalidParameterError, match="first_pass must be"):
        CoarseToFine(events=EventPooling(retention=0.5), first_pass="high")
    with pytest.raises(vidpress.errors.InvalidParameterError, match="set first_pass='tome'"):
        CoarseToFine(events=EventPooling(retention=0.5), first_retention=0.25)
    with pytest.raises(vidpress.errors.InvalidParameterError, match="first_pass, first_retention set coarse-to-fine"):
        vidpress.methods.METok(retention=0.25, first_pass="tome", first_retention=0.25).build()
    with pytest.raises(vidpress.errors.BudgetError, match="retention"):
        CoarseToFine(events=EventPooling(retention=0.5), first_pass="tome", first_retention=1.5)
    with pytest.raises(vidpress.errors.BudgetError, match="no fewer than"):  # 64 -> 1 token in 2 layers
        vidpress.apply(
            tiny112.model, vidpress.methods.METok(retention=0.25, coarse=True, layers=(1,), first_pass="tome")
        )
    with pytest.raises(vidpress.errors.InvalidParameterError, match="pool='bilinear'"):
        CoarseToFine(events=EventPooling(retention=0.5, pool="average"))
    events = EventPooling(retention=0.5)
    with pytest.raises(IncompatibleStagesError, match="must also fill the pre-LLM slot"):
        vidpress.apply(tiny112.model, compose(CoarseToFine(events=events), VisionZip(retention=0.5)))
    for other in (tiny_qwen, tiny_next_video):
        with pytest.raises(IncompatibleStagesError, match="does not encode frames at other resolutions"):
            vidpress.apply(other.model, compose(CoarseToFine(events=events), events))
    turn = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}
    prompt = tiny112.processor.apply_chat_template([turn])
    two = tiny112.processor(text=[prompt, prompt], videos=[clip_frames[:4], clip_frames[4:8]], return_tensors="pt")
    with pytest.raises(VidpressError, match="one video at a time"), torch.no_grad():
        with vidpress.apply(tiny112.model, compose(CoarseToFine(events=events), events)):
            tiny112.model(**two)
