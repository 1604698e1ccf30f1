"""Every request shape a client can send reaches a compressed vLLM engine and is answered, each video by its own
plan, and the engine serves the next request; on Qwen2.5-VL every kept token of every video has the M-RoPE
position the uncompressed prompt gives it."""

import pytest

pytest.importorskip("vllm")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vidpress.integrations.vllm.checkpoints import (  # noqa: E402
    declared_placeholders,
    engine_args,
    video_request,
)
from vidpress.integrations.vllm.serving import servable_methods, serving_config  # noqa: E402

RETENTION = {"llava_onevision": 0.25, "qwen2_5_vl": 0.5}
QWEN_MARKS = ("<|vision_start|><|video_pad|><|vision_end|>", "<|vision_start|><|image_pad|><|vision_end|>")
MARKS = {"llava_onevision": ("<video>", "<image>"), "qwen2_5_vl": QWEN_MARKS, "qwen3_vl": QWEN_MARKS}


def entry(family, method):
    if method == "none":
        return None
    return {"method": "ttm", "k": 0.7} if method == "ttm" else {"method": method, "retention": RETENTION[family]}


def shapes(family, clip, size):
    """(name, request, frames of each video in prompt order)."""
    from PIL import Image

    video, image = MARKS[family]

    def prompt(body):
        return f"<|im_start|>user\n{body}\nWhat happens?<|im_end|>\n<|im_start|>assistant\n"

    def clip_of(frames):
        return video_request(family, frames, size)["multi_modal_data"]["video"]

    picture = Image.fromarray(clip[0]).resize((size, size))
    lengths = {"two videos": (8, 6), "three videos": (8, 4, 2), "a 1-frame video": (1,), "a 2-frame video": (2,)}
    out = [
        (
            name,
            {"prompt": prompt(video * len(frames)), "multi_modal_data": {"video": [clip_of(clip[:f]) for f in frames]}},
            frames,
        )
        for name, frames in lengths.items()
    ]
    out.append(
        (
            "a video and an image",
            {"prompt": prompt(image + video), "multi_modal_data": {"video": clip_of(clip), "image": picture}},
            (8,),
        )
    )
    out.append(
        ("images only", {"prompt": prompt(image + image), "multi_modal_data": {"image": [picture, picture]}}, ())
    )
    out.append(("text only", prompt("Hello"), ()))
    return out


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_every_request_shape_is_answered_and_the_engine_lives(checkpoints, clip, family):
    from vllm import LLM, SamplingParams

    loaded, path = checkpoints[family]
    size, video_id = loaded.processor.image_size, loaded.model.config.video_token_id
    params = SamplingParams(max_tokens=2, temperature=0.0)
    plain = video_request(family, clip, size)
    for method in servable_methods():
        settings = entry(family, method)
        stage = serving_config({"vidpress": settings} if settings else {}).stage
        llm = LLM(**engine_args(path, settings, limit_mm_per_prompt={"video": 3, "image": 2}))
        for name, request, frames in shapes(family, clip, size):
            out = llm.generate(request, params, use_tqdm=False)[0]
            placeholders = sum(1 for t in out.prompt_token_ids if t == video_id)
            assert placeholders == sum(declared_placeholders(family, stage, f, size) for f in frames), (method, name)
            assert len(out.outputs[0].token_ids) == 2, (method, name)
        out = llm.generate(plain, params, use_tqdm=False)[0]  # and the engine serves the next request
        assert sum(1 for t in out.prompt_token_ids if t == video_id) == declared_placeholders(family, stage, 8, size)
        assert len(out.outputs[0].token_ids) == 2, method
        del llm


def record_positions(model):
    """Keep each M-RoPE recomputation's positions on the model (``model._positions``), through vLLM's apply_model."""
    model._positions = []
    recompute = model.recompute_mrope_positions

    def recorded(*args, **kwargs):
        out = recompute(*args, **kwargs)
        model._positions.append(out[1].clone())
        return out

    model.recompute_mrope_positions = recorded


def positions_fed(llm, request):
    """The prompt ``request`` gets in ``llm`` and the M-RoPE positions its last recomputation fed the LLM."""
    from vllm import SamplingParams

    llm.apply_model(record_positions)
    out = llm.generate(request, SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)[0]
    (positions,) = llm.apply_model(lambda model: model._positions[-1].cpu())
    return out, positions


def resized_clips(clip, lengths, size):
    """The clip rolled by i and cut to each of ``lengths`` frames, resized to ``size`` as the requests send it."""
    from PIL import Image

    return [
        np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in np.roll(clip, i, 0)[:n]])
        for i, n in enumerate(lengths)
    ]


def test_several_videos_keep_their_original_mrope_positions_in_qwen(checkpoints, clip):
    """Two videos of different lengths, each cut to its own frames (uniform frame sampling, whose kept temporal
    patches are known): the positions vLLM feeds the LLM are those of the uncompressed prompt (transformers'
    get_rope_index) at the kept tokens, text included."""
    from transformers import AutoProcessor
    from vllm import LLM

    loaded, path = checkpoints["qwen2_5_vl"]
    size, config = loaded.processor.image_size, loaded.model.config
    settings = {"method": "frames", "retention": 0.5}
    stage = serving_config({"vidpress": settings}).stage
    lengths = (8, 4)
    video, _ = MARKS["qwen2_5_vl"]
    prompt = f"<|im_start|>user\n{video}and{video}\nWhat happens?<|im_end|>\n<|im_start|>assistant\n"
    videos = [video_request("qwen2_5_vl", np.roll(clip, i, axis=0)[:n], size) for i, n in enumerate(lengths)]
    request = {"prompt": prompt, "multi_modal_data": {"video": [v["multi_modal_data"]["video"] for v in videos]}}

    llm = LLM(**engine_args(path, settings, limit_mm_per_prompt={"video": 2}))

    out, positions = positions_fed(llm, request)
    del llm

    # the uncompressed prompt and its positions, as transformers computes them
    processor = AutoProcessor.from_pretrained(path)
    frames = resized_clips(clip, lengths, size)
    inputs = processor(text=prompt, videos=frames, return_tensors="pt")
    inputs["second_per_grid_ts"] = torch.full((2,), 2 / 2.0)  # 2-frame patches at the requests' 2 fps
    full, _ = loaded.model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"],
        attention_mask=inputs["attention_mask"],
    )
    ids = inputs["input_ids"][0]
    keep = torch.ones(len(ids), dtype=torch.bool)
    starts = (
        (ids == config.video_token_id).int().diff(prepend=torch.zeros(1, dtype=torch.int)).eq(1).nonzero().flatten()
    )
    for start, (t, h, w) in zip(starts.tolist(), inputs["video_grid_thw"].tolist()):
        per_patch = h * w // 4
        kept = stage.encoded_frames(t, per_patch)
        block = torch.zeros(t, per_patch, dtype=torch.bool)
        block[kept] = True
        keep[start : start + t * per_patch] = block.flatten()
    expected = full[:, 0, keep]
    assert len(out.prompt_token_ids) == expected.shape[1]
    assert torch.equal(positions[:, : expected.shape[1]].long(), expected)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_a_request_chooses_its_own_method_as_a_server_of_that_method_would_run_it(checkpoints, clip, family):
    """vLLM's per-request ``mm_processor_kwargs`` carry a ``vidpress`` entry: the request gets that method's count
    and the same first-token log-probabilities as a server started with it; ``none`` keeps every token (on
    Qwen2.5-VL through the pruning path, whose text after a video continues at max(h, w) as transformers' does, so it
    equals a server keeping everything there); a bad entry is refused (a ValueError, HTTP 400 in the server) and the
    engine serves on."""
    from vllm import LLM, SamplingParams

    loaded, path = checkpoints[family]
    size, video_id = loaded.processor.image_size, loaded.model.config.video_token_id
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
    server = {"llava_onevision": {"method": "visionzip", "retention": 0.25}, "qwen2_5_vl": {"method": "ttm", "k": 0.7}}
    own = {"method": "frames", "retention": 0.5}

    def ask(llm, entry=None):
        request = dict(video_request(family, clip, size))
        if entry is not None:
            request["mm_processor_kwargs"] = {"vidpress": entry}
        out = llm.generate(request, params, use_tqdm=False)[0]
        top = {t: round(p.logprob, 4) for t, p in out.outputs[0].logprobs[0].items()}
        return sum(1 for t in out.prompt_token_ids if t == video_id), top

    def alone(settings):
        llm = LLM(**engine_args(path, settings))
        answer = ask(llm)
        del llm
        return answer

    keep_all = {"method": "spatial", "retention": 1.0} if family == "qwen2_5_vl" else None
    expected_own, expected_none = alone(own), alone(keep_all)
    llm = LLM(**engine_args(path, server[family]))
    stage = serving_config({"vidpress": server[family]}).stage
    assert ask(llm)[0] == declared_placeholders(family, stage, 8, size)
    assert ask(llm, own) == expected_own
    assert ask(llm, {"method": "none"}) == expected_none
    with pytest.raises(ValueError, match="did you mean 'visionzip'"):
        ask(llm, {"method": "visionzp"})
    assert ask(llm)[0] == declared_placeholders(family, stage, 8, size)
    del llm
