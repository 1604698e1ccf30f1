"""Random-weight checkpoints of each family's real architecture, saved the way hub checkpoints are, so vLLM loads
them (tests and the serving benchmark; no hub here).

vLLM reads the checkpoint's own Hugging Face processor and its weight names; transformers saves a LLaVA-OneVision
SigLIP tower as ``vision_tower.embeddings.*`` plus a ``vision_tower.head.*`` that the model never uses, while
vLLM's SigLIP expects ``vision_tower.vision_model.*`` and no head, so those names are rewritten. A Qwen3-VL-MoE's
fused expert weights are saved as transformers holds them, (experts, out, in); the published checkpoints, which
vLLM loads, hold them (experts, in, out), so they are transposed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ...models.random import (
    CHAT_TEMPLATE,
    QWEN_TEMPLATE,
    LoadedModel,
    random_model,
    random_qwen2_5_vl,
    random_qwen3_vl,
)
from ...stages import declared_count

FAMILIES = ("llava_onevision", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
QWEN = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


def random_checkpoint(family: str, layers: int = 2, hidden: int = 128, image_size: int | None = None) -> LoadedModel:
    """A small random model of ``family`` whose sizes vLLM's CPU kernels accept (head size 32).

    Raises
    ------
    ValueError
        An unknown family (one of :data:`FAMILIES`).
    """
    if family == "llava_onevision":
        return random_model(layers=layers, hidden=hidden, image_size=image_size or 224)
    if family == "qwen2_5_vl":
        return random_qwen2_5_vl(layers=layers, hidden=hidden, image_size=image_size or 112)
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        return random_qwen3_vl(layers=layers, hidden=hidden, image_size=image_size or 128, moe=family == "qwen3_vl_moe")
    raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")


def save_for_vllm(loaded: LoadedModel, directory: str | Path) -> Path:
    """Save ``loaded`` (from :func:`random_checkpoint`) with the family's own Hugging Face processor and the
    weight names vLLM loads. Returns the directory."""
    from safetensors.torch import load_file, save_file

    directory = Path(directory)
    config = loaded.model.config
    loaded.model.save_pretrained(directory)
    _hf_processor(loaded, config).save_pretrained(directory)
    if config.model_type == "llava_onevision":
        weights = load_file(directory / "model.safetensors")
        renamed = {
            ("vision_tower.vision_model." + k[len("vision_tower.") :] if k.startswith("vision_tower.") else k): v
            for k, v in weights.items()
            if not k.startswith("vision_tower.head.")
        }
        save_file(renamed, directory / "model.safetensors", metadata={"format": "pt"})
    if config.model_type == "qwen3_vl_moe":
        weights = load_file(directory / "model.safetensors")
        published = {
            k: v.transpose(1, 2).contiguous() if k.endswith(("experts.gate_up_proj", "experts.down_proj")) else v
            for k, v in weights.items()
        }
        save_file(published, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def _hf_processor(loaded: LoadedModel, config: Any) -> Any:
    tokenizer = loaded.processor.tokenizer
    if config.model_type == "llava_onevision":
        from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

        vision = config.vision_config
        side = {"height": vision.image_size, "width": vision.image_size}
        norm = dict(image_mean=loaded.processor.image_mean, image_std=loaded.processor.image_std)
        return LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(
                size=side, crop_size=side, image_grid_pinpoints=[[vision.image_size] * 2], **norm
            ),
            video_processor=LlavaOnevisionVideoProcessor(size=side, **norm),
            tokenizer=tokenizer,
            num_image_tokens=(vision.image_size // vision.patch_size) ** 2,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            chat_template=CHAT_TEMPLATE,
        )
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = {"shortest_edge": loaded.processor.image_size**2, "longest_edge": loaded.processor.image_size**2}
    if config.model_type in ("qwen3_vl", "qwen3_vl_moe"):
        from transformers import Qwen3VLProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(
                size=pixels, patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3
            ),
            # Qwen3-VL bounds the pixels of the whole video (frames x height x width): up to 64 frames at this size
            video_processor=Qwen3VLVideoProcessor(
                size={"shortest_edge": pixels["shortest_edge"], "longest_edge": 64 * pixels["longest_edge"]},
                do_sample_frames=False,
            ),
            tokenizer=tokenizer,
            chat_template=QWEN_TEMPLATE,
        )
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        video_processor=Qwen2VLVideoProcessor(size=pixels, do_sample_frames=False),
        tokenizer=tokenizer,
        chat_template=QWEN_TEMPLATE,
    )


QWEN_PROMPT = (
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n<|im_start|>assistant\n"
)
PROMPTS = {
    "llava_onevision": "<|im_start|>user\n<video>\nWhat happens?<|im_end|>\n<|im_start|>assistant\n",
    **{family: QWEN_PROMPT for family in QWEN},
}


def video_request(family: str, frames: Any, size: int, fps: float = 2.0) -> dict:
    """A vLLM request about ``frames`` (F, H, W, 3) uint8, resized to ``size`` x ``size``: the family's prompt and
    the video as vLLM takes it (Qwen2.5-VL needs the frames' metadata; a bare array is refused)."""
    import numpy as np
    from PIL import Image

    frames = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames])
    video: Any = frames
    if family in QWEN:
        n = len(frames)
        meta = {"total_num_frames": n, "fps": fps, "duration": n / fps, "frames_indices": list(range(n))}
        video = (frames, {**meta, "do_sample_frames": False, "video_backend": "opencv"})
    return {"prompt": PROMPTS[family], "multi_modal_data": {"video": video}}


def video_grid(family: str, frames: int, size: int) -> tuple[int, int]:
    """(frames as the LLM sees them, visual tokens per frame) of a ``size``-pixel video of ``frames`` frames: Qwen
    merges 2 frames per temporal patch and 2x2 patches (of 14 px; Qwen3-VL's of 16); LLaVA-OneVision pools its patch
    grid 2x2 (rounding up)."""
    side = size // (16 if family in ("qwen3_vl", "qwen3_vl_moe") else 14)
    if family in QWEN:
        return -(-frames // 2), (side // 2) ** 2
    return frames, (-(-side // 2)) ** 2


def declared_placeholders(family: str, stage: Any, frames: int, size: int) -> int:
    """Video placeholders a ``frames``-frame, ``size``-pixel video takes in the family's prompt: ``stage``'s declared
    count on the family's grid (:func:`video_grid`; all of it when ``stage`` is None), plus LLaVA-OneVision's
    newline."""
    temporal, per_frame = video_grid(family, frames, size)
    side = math.isqrt(per_frame)
    count = temporal * per_frame if stage is None else declared_count(stage, temporal, per_frame, (side, side))
    return count + (family == "llava_onevision")


def engine_args(directory: str | Path, entry: dict | None = None, **extra: Any) -> dict:
    """Arguments of ``vllm.LLM`` for a checkpoint saved by :func:`save_for_vllm`: eager, fp32, one video per prompt,
    and the ``vidpress`` entry (None: vLLM's own model); ``extra`` adds or replaces any."""
    args = dict(
        model=str(directory),
        enforce_eager=True,
        max_model_len=4096,
        dtype="float32",
        limit_mm_per_prompt={"video": 1},
        hf_overrides={"vidpress": entry} if entry else None,
        seed=0,
    )
    return {**args, **extra}
