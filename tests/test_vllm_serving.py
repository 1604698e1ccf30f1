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
    assert servable_methods() == [
        "none",
        "ttm",
        "events",
        "holitom_outer",
        "visionzip",
        "fastvid",
        "vidcom2",
        "frames",
        "spatial",
        "random",
    ]


@pytest.mark.parametrize(
    "entry,error,message",
    [
        ({"method": "visionzp"}, UnknownMethodError, "did you mean 'visionzip'"),
        ({"method": "ttm", "kk": 0.7}, UnknownMethodError, "no parameter 'kk'"),
        ({"method": "visionzip", "retention": 0}, BudgetError, "retention must be in"),
        ({"method": "dycoke"}, InvalidParameterError, "use method 'ttm'"),
        ({"method": "cdpruner"}, InvalidParameterError, "reads the question"),
        ({"method": "vidcom2", "mode": "faithful"}, InvalidParameterError, "decides its token count"),
        ({"method": "holitom"}, InvalidParameterError, "use method 'holitom_outer'"),
        ({"method": "holitom_outer", "mode": "faithful"}, InvalidParameterError, "decides its token count"),
        ({"method": "holitom_outer", "tau": 2}, InvalidParameterError, "tau"),
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
        ({"method": "holitom_outer", "retention": 0.25}, 8, 64, 128),
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


@pytest.mark.parametrize(
    "raw,value",
    [("0.25", 0.25), ("1", 1), (0.25, 0.25)],
)
def test_numbers_given_as_json_strings_are_parsed(raw, value):
    serving = serving_config({"vidpress": {"method": "visionzip", "retention": raw}})
    assert serving.stage.retention == value and serving.settings == {"retention": value}


@pytest.mark.parametrize(
    "raw,error,message",
    [
        ("a quarter", BudgetError, "retention must be in \\(0, 1\\], got 'a quarter'"),
        ("1.5", BudgetError, "got 1.5"),
        ("true", BudgetError, "got True"),
    ],
)
def test_strings_that_are_not_a_valid_number_are_refused_with_the_value(raw, error, message):
    with pytest.raises(error, match=message):
        serving_config({"vidpress": {"method": "visionzip", "retention": raw}})


def test_text_settings_stay_text():
    assert serving_config({"vidpress": {"method": "ttm", "k": "0.7", "mode": "fixed"}}).stage.mode == "fixed"


def engine_config(entry=None, architecture="LlavaOnevisionForConditionalGeneration", pruning=None, tp=1):
    """The parts of a vLLM config the plugin's start-up check reads."""
    from types import SimpleNamespace

    hf = SimpleNamespace(architectures=[architecture], **({"vidpress": entry} if entry else {}))
    model = SimpleNamespace(hf_config=hf, multimodal_config=SimpleNamespace(video_pruning_rate=pruning))
    return SimpleNamespace(model_config=model, parallel_config=SimpleNamespace(tensor_parallel_size=tp))


QWEN = "Qwen2_5_VLForConditionalGeneration"


@pytest.mark.parametrize(
    "config,error,message",
    [
        (engine_config({"method": "frames"}, pruning=0.75), InvalidParameterError, "EVS.*choose one"),
        (engine_config({"method": "frames"}, QWEN, pruning=0.75), InvalidParameterError, "EVS.*choose one"),
        (engine_config({"method": "visionzip"}, tp=2), InvalidParameterError, "tensor_parallel_size=2"),
        (
            engine_config({"method": "visionzip", "mode": "faithful"}, QWEN),
            InvalidParameterError,
            "M-RoPE.*mode='fixed'",
        ),
        (
            engine_config({"method": "visionzip", "mode": "faithful"}, "Qwen3VLMoeForConditionalGeneration"),
            InvalidParameterError,
            "M-RoPE.*mode='fixed'",
        ),
        (
            engine_config({"method": "frames"}, "Glm4vForConditionalGeneration"),
            vidpress.errors.UnsupportedModelError,
            "Glm4vForConditionalGeneration, which the vidpress plugin does not serve",
        ),
        (engine_config({"method": "visionzp"}), UnknownMethodError, "did you mean 'visionzip'"),
    ],
)
def test_the_start_up_check_refuses_what_the_engine_cannot_run(config, error, message):
    from vidpress.integrations.vllm.serving import check_engine

    with pytest.raises(error, match=message):
        check_engine(config)


def test_the_start_up_check_passes_what_it_can_run():
    from vidpress.integrations.vllm.serving import check_engine

    assert check_engine(engine_config()).stage is None  # no entry: vLLM's model, EVS or not
    assert check_engine(engine_config(pruning=0.5, architecture="Qwen3VLForConditionalGeneration")).stage is None
    assert check_engine(engine_config({"method": "visionzip", "mode": "faithful"})).method == "visionzip"
    assert check_engine(engine_config({"method": "frames"}, tp=4)).method == "frames"  # no encoder attention


def test_the_start_up_line_states_the_declared_placeholders():
    from types import SimpleNamespace

    from vidpress.integrations.vllm.serving import describe

    llava = SimpleNamespace(model_type="llava_onevision", vision_config=SimpleNamespace(image_size=384, patch_size=14))
    # 27 patches a side, pooled 2x2 to 14: 196 per frame; 32 frames + the newline = 6,273; 25 % of 6,272 = 1,568
    line = describe(serving_config({"vidpress": {"method": "frames", "retention": 0.25}}), llava, 32)
    assert "frames(retention=0.25)" in line and "a video of 32 frames takes 1,569 of its 6,273 placeholders" in line
    qwen = SimpleNamespace(
        model_type="qwen2_5_vl",
        vision_config=SimpleNamespace(patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    )
    # 448 px: 16 x 16 merged tokens per 2-frame patch; 16 patches = 4,096; ttm's own count for them
    ttm = serving_config({"vidpress": {"method": "ttm", "k": 0.7}})
    kept = ttm.stage.kept_count(16, 256)
    line = describe(ttm, qwen, 32)
    assert f"32 frames at 448x448 px takes {kept:,} of its 4,096 placeholders" in line


def test_observed_requests_feed_the_counters_and_profiling_is_left_out():
    pytest.importorskip("prometheus_client")
    from vidpress.integrations.vllm import observe

    def value(name):
        return observe.counter(name).labels("probe")._value.get()

    before = {name: value(name) for name in observe.METRICS}
    with observe.profiling():
        observe.record("probe", [(513, 129)], images=2)
    assert {name: value(name) for name in observe.METRICS} == before
    observe._warned_images.discard("probe")
    with pytest.warns(vidpress.errors.VidpressWarning, match="images pass uncompressed"):
        observe.record("probe", [(513, 129), (None, 65)], images=1)
    assert value("videos") - before["videos"] == 2
    assert value("video_tokens_kept") - before["video_tokens_kept"] == 129 + 65
    assert value("video_tokens_in") - before["video_tokens_in"] == 513  # the unknown one is not guessed
    assert value("video_tokens_saved") - before["video_tokens_saved"] == 513 - 129
    assert value("images_uncompressed") - before["images_uncompressed"] == 1


def test_full_counts_remember_the_latest_videos():
    from vidpress.integrations.vllm.observe import FullCounts

    counts = FullCounts(size=2)
    counts.remember("a", 1), counts.remember("b", 2), counts.remember("a", 1), counts.remember("c", 3)
    assert (counts.get("a"), counts.get("b"), counts.get("c")) == (1, None, 3)


def test_a_request_may_pick_its_own_method_checked_as_the_servers_is():
    from vidpress.integrations.vllm.serving import request_config

    server = serving_config({"vidpress": {"method": "frames", "retention": 0.25}})
    assert request_config(server, None, "llava_onevision") is server
    own = request_config(server, {"method": "spatial", "retention": "0.5"}, "qwen2_5_vl")
    assert own.method == "spatial" and own.stage.kept_count(4, 16) == 32
    assert request_config(server, {"method": "none"}, "llava_onevision").stage is None
    refusals = [
        (serving_config({}), {"method": "frames"}, "runs no vidpress method"),
        (server, {"method": "visionzp"}, "refused: unknown method 'visionzp'.*did you mean 'visionzip'"),
        (server, {"method": "fastv"}, "inside the LLM"),
        (server, {"method": "visionzip"}, "reads the vision encoder's attention.*not started for"),
        (server, "frames", 'with a "method"'),
        (server, {"method": "random", "seed": 10**300}, "over 256 bytes"),
    ]
    for base, raw, message in refusals:
        with pytest.raises(InvalidParameterError, match=message):  # a ValueError: vLLM answers 400
            request_config(base, raw, "llava_onevision")
    attention_server = serving_config({"vidpress": {"method": "visionzip"}})
    assert request_config(attention_server, {"method": "fastvid"}, "llava_onevision").method == "fastvid"
    with pytest.raises(InvalidParameterError, match="M-RoPE"):
        request_config(attention_server, {"method": "visionzip", "mode": "faithful"}, "qwen2_5_vl")


def test_each_video_carries_its_requests_method_to_the_model():
    from vidpress.integrations.vllm.serving import encode_entry, entry_stages, request_config

    server = serving_config({"vidpress": {"method": "frames", "retention": 0.25}})
    own = request_config(server, {"method": "random", "retention": 0.5}, "llava_onevision")
    field = torch.cat([encode_entry(own, 2), encode_entry(None, 1), encode_entry(own, 1)])
    assert field.shape == (4, 256) and field.dtype == torch.uint8
    stages = entry_stages(field, server, 4)
    assert stages[0] is stages[1] is stages[3] and stages[2] is server.stage  # one stage per distinct entry
    assert stages[0].kind == "random" and stages[0].retention == 0.5
    assert entry_stages(list(field), server, 4) == stages  # the field as vLLM may hand it: a list of rows
    assert entry_stages(None, server, 3) == [server.stage] * 3
