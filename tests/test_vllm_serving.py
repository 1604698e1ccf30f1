"""The vLLM plugin's vLLM-free half: the server's configuration and the compression of one video's embeddings,
against counts worked out by hand and against what the transformers runtime feeds the LLM (tests/vllm_engine runs the
plugin inside a vLLM engine)."""

import dataclasses

import pytest
import torch

import vidpress
from vidpress.errors import BudgetError, InvalidParameterError, UnknownMethodError
from vidpress.integrations.vllm.serving import compress_video, servable_methods, serving_config
from vidpress.pipeline import build_inputs
from vidpress.stages.pre_llm.temporal_merge import TemporalMerge
from vidpress.tokens import VisualTokens


def test_no_entry_or_none_is_the_uncompressed_model():
    assert serving_config({}).stage is None
    assert serving_config({"vidpress": {"method": "none"}}).stage is None
    assert servable_methods() == ["none", "ttm", "events", "visionzip", "fastvid", "frames", "spatial", "random"]


@pytest.mark.parametrize(
    "entry,error,message",
    [
        ({"method": "visionzp"}, UnknownMethodError, "did you mean 'visionzip'"),
        ({"method": "ttm", "kk": 0.7}, UnknownMethodError, "no parameter 'kk'"),
        ({"method": "visionzip", "retention": 0}, BudgetError, "retention must be in"),
        ({"method": "dycoke"}, InvalidParameterError, "use method 'ttm'"),
        ({"method": "metok"}, InvalidParameterError, "use method 'events'"),
        ({"method": "events"}, InvalidParameterError, "needs a retention"),
        ({"method": "events", "retention": 0.25, "relevance": "siglip"}, InvalidParameterError, "DistinctRelevance"),
        ({"method": "events", "retention": 0.05}, BudgetError, "raise retention to >= 0.062"),
        ({"method": "fastv"}, InvalidParameterError, "inside the LLM"),
        ({"method": "tome"}, InvalidParameterError, "inside the vision tower"),
        ({"method": "fastvid", "mode": "faithful"}, InvalidParameterError, "mode='fixed'"),
        ({"retention": 0.25}, InvalidParameterError, 'with a "method"'),
        ("visionzip", InvalidParameterError, 'with a "method"'),
    ],
)
def test_bad_entries_name_the_value_and_the_fix(entry, error, message):
    with pytest.raises(error, match=message):
        serving_config({"vidpress": entry})


@pytest.mark.parametrize(
    "entry,frames,per_frame,kept",
    [
        # visual_budget(0.25, 8 * 64) = 128 tokens
        ({"method": "frames", "retention": 0.25}, 8, 64, 128),
        ({"method": "visionzip", "retention": 0.25}, 8, 64, 128),
        ({"method": "random", "retention": 0.1}, 8, 64, 51),
        # METok's events at 25 % on an 8 x 8 grid, strides (1, 2, 4): 64, 16 and 4 tokens a frame; by rank the finest
        # that leaves the later frames 4 each within 128: 1 key frame, 3 at the middle stride, 4 at the low one
        ({"method": "events", "retention": 0.25}, 8, 64, 64 + 3 * 16 + 4 * 4),
        # 10 %: 51 tokens; 8 frames x 4 = 32, then 16 - 4 = 12 more fits once: 16 + 7 * 4
        ({"method": "events", "retention": 0.1}, 8, 64, 16 + 7 * 4),
        # TTM's count is its own (checked against the reference's in test_reference_conformance.py)
        ({"method": "ttm", "k": 0.7}, 8, 64, TemporalMerge(k=0.7).kept_count(8, 64)),
    ],
)
def test_compress_video_keeps_the_declared_count_then_the_extra_tokens(entry, frames, per_frame, kept):
    stage = serving_config({"vidpress": entry}).stage
    assert stage.kept_count(frames, per_frame) == kept
    torch.manual_seed(0)
    features, extra = torch.randn(1, frames, per_frame, 16), torch.randn(1, 1, 16)
    side = int(per_frame**0.5)
    tokens = VisualTokens(
        features,
        (side, side),
        extra=extra,
        attention=torch.rand(1, frames, per_frame),
        keys=torch.randn(1, frames, per_frame, 8),
    )
    block, source = compress_video(stage, tokens)
    assert block.shape == (kept + 1, 16) and source.shape == (kept + 1,)
    assert torch.equal(block[-1], extra[0, 0]) and int(source[-1]) == frames * per_frame  # the newline, last
    if entry["method"] in ("frames", "random"):  # a Selection: kept tokens are the input's, at their own places
        assert torch.equal(block[:-1], features.flatten(1, 2)[0, source[:-1]])


def test_a_stage_that_breaks_its_declared_count_is_caught():
    class Liar(TemporalMerge):
        def kept_count(self, frames, tokens_per_frame, grid=None):
            return 1

    tokens = VisualTokens(torch.randn(1, 4, 4, 8), (2, 2))
    with pytest.raises(vidpress.VidpressError, match="declared 1"):
        compress_video(Liar(k=0.5), tokens)


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "visionzip", "retention": 0.25},
        {"method": "ttm", "k": 0.7},
        {"method": "random", "retention": 0.3},
        {"method": "events", "retention": 0.25},
    ],
)
def test_compress_video_equals_what_the_transformers_runtime_feeds_the_llm(tiny, clip_frames, entry):
    """Same model, same video: the block the plugin builds from the tower's embeddings (and encoder attention) is
    the block vidpress's transformers runtime puts at the video's placeholders."""
    stage = serving_config({"vidpress": entry}).stage
    seen, recorded = {}, {}

    class Recording(type(stage)):  # the runtime hands the stage its tokens; keep them
        def __call__(self, tokens, ctx=None):
            recorded["tokens"] = tokens
            return super().__call__(tokens, ctx)

    recording = Recording(**{f.name: getattr(stage, f.name) for f in dataclasses.fields(stage) if f.init})
    inputs = build_inputs(tiny.processor, clip_frames[:8], "What happens?")
    hook = tiny.model.model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.update(embeds=k["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad(), vidpress.apply(tiny.model, recording):
            tiny.model(**inputs)
    finally:
        hook.remove()
    block, _ = compress_video(stage, recorded["tokens"])
    start = int((inputs["input_ids"][0] == tiny.model.config.video_token_id).nonzero()[0])
    assert torch.allclose(seen["embeds"][0, start : start + len(block)], block, atol=1e-6)
    assert seen["embeds"].shape[1] == inputs["input_ids"].shape[1] - (8 * 4 + 1) + len(block)
