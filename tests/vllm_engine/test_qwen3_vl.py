"""The plugin on Qwen3-VL (dense and MoE) inside vLLM: the video span vLLM builds (times as text, the kept tokens
in their frames, DeepStack channels, positions) equals what vidpress's transformers runtime feeds the LLM; every
request shape is answered at the declared count; vLLM's own EVS runs beside the plugin."""

import pytest

pytest.importorskip("vllm")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vidpress.integrations.vllm.checkpoints import (  # noqa: E402
    declared_placeholders,
    engine_args,
    video_grid,
    video_request,
)
from vidpress.integrations.vllm.serving import servable_methods, serving_config  # noqa: E402

from .test_plugin import hf_inputs, transformers_block, video_placeholders  # noqa: E402
from .test_requests import positions_fed, resized_clips, shapes  # noqa: E402

FRAMES = 8  # conftest's clip
FPS = 2.0  # video_request's


def _timestamps(frames):
    """Each temporal patch's time as vLLM's processor gives it: the mean of its two frames' times."""
    return [(2 * i + 0.5) / FPS for i in range(-(-frames // 2))]


def _span(family, loaded, path, clip, settings):
    """(what transformers feeds the LLM for the video span: embeddings (S, D), DeepStack features (levels, S, D),
    positions (3, S), which rows are visual tokens; vLLM's block for the same span (S, D + levels * D + 5))."""
    from vllm import LLM

    stage = serving_config({"vidpress": settings}).stage
    meta = {"video_metadata": [{"fps": FPS, "total_num_frames": FRAMES, "frames_indices": list(range(FRAMES))}]}
    inputs = hf_inputs(family, path, clip, loaded, **meta)
    sessions = []
    embeds, positions = transformers_block(loaded.model, stage, inputs, sessions)
    session = sessions[-1]
    llm = LLM(**engine_args(path, settings))
    (normalizes,) = llm.apply_model(
        lambda model: type(getattr(getattr(model, "visual", None), "input_norm", None)).__name__ == "FusedMMInputNorm"
    )
    raw = hf_inputs(family, path, clip, loaded, normalized=not normalizes, **meta)
    kwargs = {k: v for k, v in raw.items() if k in ("pixel_values_videos", "video_grid_thw")}
    kwargs["timestamps"] = [_timestamps(FRAMES)]
    (blocks,) = llm.apply_model(lambda model: [e.cpu() for e in model.embed_multimodal(**kwargs)])
    del llm
    return embeds, session, positions, blocks[0]


@pytest.mark.parametrize(
    "family,settings",
    [
        ("qwen3_vl", {"method": "visionzip", "retention": 0.5}),
        ("qwen3_vl", {"method": "frames", "retention": 0.5}),
        ("qwen3_vl", {"method": "ttm", "k": 0.5}),
        ("qwen3_vl", {"method": "vidcom2", "retention": 0.5}),
        ("qwen3_vl", {"method": "holitom_outer", "retention": 0.5}),
        ("qwen3_vl_moe", {"method": "fastvid", "retention": 0.5}),
    ],
)
def test_vllm_builds_the_span_transformers_feeds_the_llm(checkpoints, clip, family, settings):
    loaded, path = checkpoints[family]
    embeds, session, positions, block = _span(family, loaded, path, clip, settings)
    dim, levels = embeds.shape[-1], session.deepstack.shape[0]
    main, deepstack, extra = block[:, :dim], block[:, dim : dim * (1 + levels)], block[:, -5:]
    visual = session.visual[0]
    # the span starts at the first time, after the template's own <|vision_start|>
    start = int(visual.nonzero()[0]) - int(extra[:, 4].long().nonzero()[0])
    rows = slice(start, start + len(block))
    assert (
        int(visual[rows].sum())
        == int(extra[:, 4].sum())
        == declared_placeholders(
            family, serving_config({"vidpress": settings}).stage, FRAMES, loaded.processor.image_size
        )
    )
    assert torch.equal(visual[rows], extra[:, 4].bool())  # each kept token between its own frame's times
    assert torch.allclose(main, embeds[rows], atol=1e-4)  # times as text, tokens (merged ones too)
    carried = session.deepstack[:, 0, rows].permute(1, 0, 2).reshape(len(block), -1)
    assert torch.allclose(deepstack, carried, atol=1e-4)  # DeepStack features kept and merged alike
    ids = positions[-3:, 0, rows]
    assert torch.equal(extra[:, :3].T.long() - extra[:1, :3].T.long(), ids - ids[:, :1])  # original (t, h, w) ids


def test_every_request_shape_is_answered_and_the_engine_lives(checkpoints, clip):
    from vllm import LLM, SamplingParams

    loaded, path = checkpoints["qwen3_vl"]
    size, video_id = loaded.processor.image_size, loaded.model.config.video_token_id
    params = SamplingParams(max_tokens=2, temperature=0.0)
    plain = video_request("qwen3_vl", clip, size)
    for method in servable_methods():
        settings = {"method": "ttm", "k": 0.7} if method == "ttm" else {"method": method, "retention": 0.5}
        settings = None if method == "none" else settings
        stage = serving_config({"vidpress": settings} if settings else {}).stage
        llm = LLM(**engine_args(path, settings, limit_mm_per_prompt={"video": 3, "image": 2}))
        for name, request, frames in shapes("qwen3_vl", clip, size):
            if frames == (1,):  # transformers' Qwen3-VL video processor refuses it, compressed or not: a 400
                with pytest.raises(ValueError, match="Failed to apply Qwen3VLProcessor"):
                    llm.generate(request, params, use_tqdm=False)
                continue
            out = llm.generate(request, params, use_tqdm=False)[0]
            placeholders = video_placeholders(loaded, out.prompt_token_ids)
            assert placeholders == sum(declared_placeholders("qwen3_vl", stage, f, size) for f in frames), (
                method,
                name,
            )
            assert len(out.outputs[0].token_ids) == 2, (method, name)
        out = llm.generate(plain, params, use_tqdm=False)[0]  # and the engine serves the next request
        assert video_placeholders(loaded, out.prompt_token_ids) == declared_placeholders("qwen3_vl", stage, 8, size)
        assert sum(1 for t in out.prompt_token_ids if t == video_id) > 0
        del llm


def test_vllms_own_evs_runs_beside_the_plugin(checkpoints, clip):
    """vLLM's EVS on Qwen3-VL with the plugin's class in place (its position fix included): fewer placeholders,
    generation completes; EVS and a vidpress method together are refused."""
    from vllm import LLM

    loaded, path = checkpoints["qwen3_vl"]
    llm = LLM(**engine_args(path, video_pruning_rate=0.75))
    out = llm.generate(video_request("qwen3_vl", clip, loaded.processor.image_size))[0]
    temporal, per_frame = video_grid("qwen3_vl", FRAMES, loaded.processor.image_size)
    assert video_placeholders(loaded, out.prompt_token_ids) < temporal * per_frame
    assert len(out.outputs[0].token_ids) > 0
    del llm
    with pytest.raises(Exception, match="choose one"):
        LLM(**engine_args(path, {"method": "frames"}, video_pruning_rate=0.75))


def test_generation_matches_between_a_method_and_its_keep_everything_request(checkpoints, clip):
    """A request asking for ``none`` on a compressed server gets every placeholder, and the same first-token
    log-probabilities as a server keeping every token through the same pruning path."""
    from vllm import LLM, SamplingParams

    loaded, path = checkpoints["qwen3_vl"]
    size = loaded.processor.image_size
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)

    def ask(llm, entry=None):
        request = dict(video_request("qwen3_vl", np.asarray(clip), size))
        if entry is not None:
            request["mm_processor_kwargs"] = {"vidpress": entry}
        out = llm.generate(request, params, use_tqdm=False)[0]
        top = {t: round(p.logprob, 4) for t, p in out.outputs[0].logprobs[0].items()}
        return video_placeholders(loaded, out.prompt_token_ids), top

    llm = LLM(**engine_args(path, {"method": "spatial", "retention": 1.0}))
    everything = ask(llm)
    del llm
    llm = LLM(**engine_args(path, {"method": "visionzip", "retention": 0.5}))
    assert ask(llm)[0] == everything[0] // 2
    assert ask(llm, {"method": "none"}) == everything
    del llm


@pytest.mark.parametrize("media", ["two videos", "an image then a video"])
def test_positions_are_the_uncompressed_prompts_at_the_kept_tokens(checkpoints, clip, media):
    """Uniform frame sampling (whose kept temporal patches are known) on two videos of different lengths, or after
    an image: the positions vLLM feeds the LLM are those transformers' get_rope_index gives the uncompressed prompt,
    at the kept tokens, times and text included."""
    from PIL import Image
    from transformers import AutoProcessor
    from vllm import LLM

    loaded, path = checkpoints["qwen3_vl"]
    size, config = loaded.processor.image_size, loaded.model.config
    settings = {"method": "frames", "retention": 0.5}
    stage = serving_config({"vidpress": settings}).stage
    lengths = (8, 4) if media == "two videos" else (8,)
    video, image = "<|vision_start|><|video_pad|><|vision_end|>", "<|vision_start|><|image_pad|><|vision_end|>"
    body = f"{video}and{video}" if media == "two videos" else f"{image}and{video}"
    prompt = f"<|im_start|>user\n{body}\nWhat happens?<|im_end|>\n<|im_start|>assistant\n"
    requests = [video_request("qwen3_vl", np.roll(clip, i, axis=0)[:n], size) for i, n in enumerate(lengths)]
    data = {"video": [r["multi_modal_data"]["video"] for r in requests]}
    picture = Image.fromarray(clip[3]).resize((size, size))
    if media != "two videos":
        data["image"] = picture
    llm = LLM(**engine_args(path, settings, limit_mm_per_prompt={"video": 2, "image": 1}))

    out, positions = positions_fed(llm, {"prompt": prompt, "multi_modal_data": data})
    del llm

    processor = AutoProcessor.from_pretrained(path)
    frames = resized_clips(clip, lengths, size)
    metadata = [{"fps": FPS, "total_num_frames": n, "frames_indices": list(range(n))} for n in lengths]
    extra = {} if media == "two videos" else {"images": [picture]}
    inputs = processor(text=prompt, videos=frames, video_metadata=metadata, return_tensors="pt", **extra)
    full, _ = loaded.model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs["video_grid_thw"],
    )
    ids = inputs["input_ids"][0]
    keep = ids != config.video_token_id
    frame_starts = ((ids == config.vision_start_token_id) & torch.roll(ids == config.video_token_id, -1)).nonzero()[
        :, 0
    ]
    frame = 0
    for t, h, w in inputs["video_grid_thw"].tolist():
        per_patch = h * w // 4
        for patch in stage.encoded_frames(t, per_patch):
            first = int(frame_starts[frame + patch]) + 1
            keep[first : first + per_patch] = True
        frame += t
    expected = full[:, 0, keep]
    assert len(out.prompt_token_ids) == expected.shape[1]
    assert torch.equal(positions[:, : expected.shape[1]].long(), expected)


def test_chunked_prefill_through_a_video_span_answers_as_one_step(checkpoints, clip):
    """Step budgets of 23 and 40 tokens cut the prompt inside the video's span (its times, frames and the template's
    markers): the answer and its log-probabilities equal a one-step prefill's."""
    from vllm import LLM, SamplingParams

    loaded, path = checkpoints["qwen3_vl"]
    request = video_request("qwen3_vl", clip, loaded.processor.image_size)
    params = SamplingParams(max_tokens=4, temperature=0.0, logprobs=3)
    answers = []
    for budget in (None, 23, 40):
        steps = {} if budget is None else {"max_num_batched_tokens": budget, "enable_chunked_prefill": True}
        settings = {"method": "visionzip", "retention": 0.5}
        llm = LLM(**engine_args(path, settings, enable_prefix_caching=False, mm_processor_cache_gb=0, **steps))
        out = llm.generate(request, params, use_tqdm=False)[0].outputs[0]
        answers.append((out.token_ids, [{t: round(p.logprob, 4) for t, p in lp.items()} for lp in out.logprobs]))
        del llm
    assert answers[1] == answers[0] and answers[2] == answers[0]
