"""Model sizes for the accounting: LLM and vision-tower dimensions, the presets of real checkpoints, and
:func:`spec_from_config` for LLaVA-OneVision, LLaVA-NeXT-Video and Qwen2.5-VL configs. The formulas and the
per-request :class:`~vidpress.accounting.Accounting` live in :mod:`vidpress.accounting`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class LLMDims:
    """LLM sizes: hidden ``d``, MLP ``m``, layers, attention heads, KV heads, head size."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class VisionDims:
    """Vision tower sizes; ``tokens`` is the encoder sequence per frame (patches plus any CLS).

    ``window_tokens`` > 0: all but ``full_layers`` layers attend within windows of that many tokens
    (Qwen2.5-VL); ``temporal_patch`` frames share one patch embedding (Qwen: 2).
    """

    hidden: int
    intermediate: int
    layers: int
    tokens: int
    patch_size: int
    channels: int = 3
    window_tokens: int = 0
    full_layers: int = 0
    temporal_patch: int = 1


@dataclass(frozen=True)
class ModelSpec:
    """Everything the calculator needs about a video LLM.

    Attributes
    ----------
    tokens_per_frame : int
        Visual tokens per frame entering the LLM (after projector and pooling), e.g. 196 for LLaVA-OV.
    grid : tuple[int, int]
        (h, w) layout of those tokens.
    patches : int
        Encoder patch tokens per frame that go through the projector (CLS excluded).
    merge : int
        Qwen's patch merger side (2): the projector maps ``merge**2`` patches to one token. 1: a per-patch MLP.
    extra_visual : int
        Tokens appended to the video block (LLaVA-OV's single newline); never pruned, so accounted as
        non-visual tokens.
    dtype_bytes : int
        Bytes per KV element (2 for fp16/bf16).
    """

    name: str
    llm: LLMDims
    vision: VisionDims
    tokens_per_frame: int
    grid: tuple[int, int]
    patches: int
    extra_visual: int = 1
    dtype_bytes: int = 2
    merge: int = 1


def _siglip(layers: int = 26) -> VisionDims:
    # SigLIP-so400m-patch14-384 with LLaVA's last layer removed: 27x27 patches, no CLS.
    return VisionDims(hidden=1152, intermediate=4304, layers=layers, tokens=729, patch_size=14)


PRESETS: dict[str, ModelSpec] = {
    "llava-ov-0.5b": ModelSpec("llava-ov-0.5b", LLMDims(896, 4864, 24, 14, 2, 64), _siglip(), 196, (14, 14), 729),
    "llava-ov-7b": ModelSpec("llava-ov-7b", LLMDims(3584, 18944, 28, 28, 4, 128), _siglip(), 196, (14, 14), 729),
    "llava-ov-72b": ModelSpec("llava-ov-72b", LLMDims(8192, 29568, 80, 64, 8, 128), _siglip(), 196, (14, 14), 729),
    # LLaVA-Video-7B-Qwen2 as transformers loads it (LlavaOnevisionForConditionalGeneration): the LLaVA-OV-7B
    # layout, one newline after the video. The original code puts a newline after every grid row instead
    # ("grid"); no transformers class reproduces that, so this preset counts the layout vidpress runs.
    "llava-video-7b": ModelSpec("llava-video-7b", LLMDims(3584, 18944, 28, 28, 4, 128), _siglip(), 196, (14, 14), 729),
    # Qwen2.5-VL-7B at 448x448 frames: 32x32 patches per temporal patch (2 frames), merged 2x2 -> 256 tokens;
    # 32-layer ViT (hidden 1280, MLP 3420), 112 px windows (64 patches) except 4 full-attention blocks.
    "qwen2.5-vl-7b": ModelSpec(
        "qwen2.5-vl-7b",
        LLMDims(3584, 18944, 28, 28, 4, 128),
        VisionDims(1280, 3420, 32, 1024, 14, window_tokens=64, full_layers=4, temporal_patch=2),
        256,
        (16, 16),
        1024,
        extra_visual=0,
        merge=2,
    ),
    # LongVA-7B: Qwen2-7B-224K LLM, CLIP-L/336 (24x24 patches + CLS, full tower run), 2x2 pooling -> 144/frame.
    # LongVA's video layout has no newline token [RECON: UniRes without newline for video].
    "longva-7b": ModelSpec(
        "longva-7b",
        LLMDims(3584, 18944, 28, 28, 4, 128),
        VisionDims(1024, 4096, 24, 577, 14),
        144,
        (12, 12),
        576,
        extra_visual=0,
    ),
}


def _llm_dims(text: dict) -> LLMDims:
    heads = text["num_attention_heads"]
    return LLMDims(
        text["hidden_size"],
        text["intermediate_size"],
        text["num_hidden_layers"],
        heads,
        text.get("num_key_value_heads") or heads,
        text.get("head_dim") or text["hidden_size"] // heads,
    )


def _qwen_spec(cfg: dict, name: str | None, dtype_bytes: int, tokens_per_frame: int | None) -> ModelSpec:
    """Qwen2.5-VL / Qwen2-VL: the resolution is not in the config; 448 px frames (256 tokens per temporal patch)
    unless ``tokens_per_frame`` (square grid) comes from a measured request."""
    vision, merge = cfg["vision_config"], cfg["vision_config"].get("spatial_merge_size", 2)
    tokens = tokens_per_frame or 256
    side = math.isqrt(tokens)
    patches = tokens * merge * merge
    window = (vision.get("window_size", 0) // vision.get("patch_size", 14)) ** 2
    full = len(vision.get("fullatt_block_indexes") or ()) if window else 0
    depth = vision.get("depth") or vision.get("num_hidden_layers")
    vdims = VisionDims(
        vision.get("hidden_size") or vision["embed_dim"],
        vision.get("intermediate_size") or int(vision.get("embed_dim", 0) * vision.get("mlp_ratio", 4)),
        depth,
        patches,
        vision.get("patch_size", 14),
        window_tokens=window,
        full_layers=full,
        temporal_patch=vision.get("temporal_patch_size", 2),
    )
    return ModelSpec(
        name or cfg.get("_name_or_path") or cfg["model_type"],
        _llm_dims(cfg.get("text_config") or cfg),
        vdims,
        tokens,
        (side, tokens // max(side, 1)),
        patches,
        0,
        dtype_bytes,
        merge,
    )


def spec_from_config(
    config: Any, name: str | None = None, dtype_bytes: int = 2, tokens_per_frame: int | None = None
) -> ModelSpec:
    """A :class:`ModelSpec` from a LLaVA-OneVision, LLaVA-NeXT-Video or Qwen2.5-VL config object, a config dict,
    or a ``config.json`` path (LLaVA-NeXT-Video: average pooling by ``spatial_pool_stride``, no newline;
    Qwen2.5-VL: ``tokens_per_frame`` per temporal patch, default 256 = 448 px frames).

    Raises
    ------
    UnsupportedModelError
        The config lacks a ``text_config``/``vision_config`` pair of a supported layout, or the file is not JSON.
    FileNotFoundError
        No config.json at the path.
    """
    if isinstance(config, (str, Path)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(
                f"no config.json at {path}; pass a preset name ({', '.join(PRESETS)}) or a config path"
            )
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UnsupportedModelError(f"{path} is not valid JSON ({exc}); pass a model's config.json") from None
    cfg = config if isinstance(config, dict) else config.to_dict()
    if cfg.get("model_type") in ("qwen2_5_vl", "qwen2_vl"):
        return _qwen_spec(cfg, name, dtype_bytes, tokens_per_frame)
    text, vision = cfg.get("text_config"), cfg.get("vision_config")
    if not text or not vision:
        raise UnsupportedModelError(
            f"config {name or cfg.get('model_type')!r} has no text_config/vision_config; "
            f"the calculator supports LLaVA-OneVision-style configs and the presets {', '.join(PRESETS)}"
        )
    llm = _llm_dims(text)
    side = vision["image_size"] // vision["patch_size"]
    cls_token = 1 if vision.get("model_type", "") in ("clip_vision_model", "dinov2") else 0
    vdims = VisionDims(
        vision["hidden_size"],
        vision.get("intermediate_size") or int(vision["hidden_size"] * vision.get("mlp_ratio", 4)),
        vision["num_hidden_layers"],
        side * side + cls_token,
        vision["patch_size"],
    )
    next_video = cfg.get("model_type") == "llava_next_video"
    pooled = side // cfg.get("spatial_pool_stride", 2) if next_video else math.ceil(side / 2)
    return ModelSpec(
        name or cfg.get("_name_or_path") or cfg.get("model_type", "model"),
        llm,
        vdims,
        pooled * pooled,
        (pooled, pooled),
        side * side,
        0 if next_video else 1,
        dtype_bytes,
    )


def resolve_spec(model: str) -> ModelSpec:
    """A preset name or a config path to a :class:`ModelSpec`."""
    if model in PRESETS:
        return PRESETS[model]
    if Path(model).exists():
        return spec_from_config(model, name=Path(model).stem if Path(model).is_file() else Path(model).name)
    raise UnsupportedModelError(f"unknown model {model!r}: use a preset ({', '.join(PRESETS)}) or a config.json path")
