"""The vision slot's deferred encoding: a coarse first pass, then each frame at the resolution its plan needs.

The runtime's wrapper of the video encoder returns an unencoded output when the vision stage defers
(:attr:`~vidpress.stages.VisionStage.deferred`), and the request, which knows the question, encodes here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch

from ..errors import VidpressError
from ..stages.pre_llm.pooling import pool_grid
from ..tokens import VisualTokens

if TYPE_CHECKING:
    from ..adapters.base import Adapter


def encode_deferred(
    adapter: Adapter, vision: Any, original: Any, arguments: dict[str, Any], tokens: VisualTokens
) -> tuple[VisualTokens, tuple[tuple[int, int], ...]]:
    """Encode a video the vision stage deferred: every frame at the first pass's resolution (the low or the middle
    stride's), the plan from those tokens and ``tokens.text``, then the stride-1 frames through the model's own
    encoder (``original`` on ``arguments``) and, after a low first pass, the middle-stride frames at theirs.

    Returns
    -------
    tokens : VisualTokens
        ``tokens`` with ``features`` (the stride-1 frames' model tokens, zeros elsewhere), ``coarse`` ({stride:
        (1, F, T_k, D)}) and ``vision_plan`` ([EventPlan]).
    passes : tuple of (frames, patches per frame)
        What the tower encoded, for the accounting.

    Raises
    ------
    VidpressError
        More than one video in the batch (each video has its own plan and resolutions).
    """
    pixels = arguments["pixel_values_videos"]
    batch, frames = pixels.shape[:2]
    if batch != 1:
        raise VidpressError(f"coarse-to-fine encoding plans one video at a time; run the {batch} videos one by one")
    side = adapter.patch_side()
    sides = vision.patch_sides(side)
    fine, middle, low = vision.events.budget_strides()
    stride = vision.first_stride()
    first = adapter.encode_at(pixels[0], sides[stride])  # (F, T_first, D)
    plan = vision.plan(tokens, first)
    full = [f for f in range(frames) if plan.strides[f] == fine and fine < stride]
    mid = [f for f in range(frames) if plan.strides[f] == middle and fine < middle < stride]
    refined = {"strides": full, "full": full + mid, "all": list(range(frames))}[vision.refine]
    from_model = {"strides": (), "full": (middle,) if mid else (), "all": (middle, low)}[vision.refine]
    features = torch.zeros_like(tokens.features)
    if refined:
        keep = sorted(refined)
        out = adapter.expand_frames(original(**adapter.select_frames(arguments, keep)), keep, frames, features.shape[2])
        features = adapter.encode_video({"mm_encoder_outputs": {"video": out}})[0].features.to(features.dtype)
    coarse = {stride: first[None].to(features.dtype)}
    h, w = tokens.grid
    for k in from_model:  # the model's tokens of the frames at stride k, pooled as stage 1 pools them
        at = [f for f in range(frames) if plan.strides[f] == k]
        pooled = pool_grid(features[0].view(frames, h, w, -1), k, "bilinear")
        coarse[k] = torch.zeros_like(pooled)[None]
        coarse[k][0, at] = pooled[at]
    features[0, [f for f in range(frames) if plan.strides[f] != fine]] = 0  # stride-1 frames' tokens only
    if low > stride and low not in from_model:  # the low-stride frames pool the first pass's grid
        grid = math.isqrt(first.shape[1])
        pooled = pool_grid(first.view(frames, grid, grid, -1), low // stride, "bilinear")
        coarse[low] = pooled[None].to(features.dtype)
    if mid and vision.refine == "strides":
        encoded = adapter.encode_at(pixels[0, mid], sides[middle])
        coarse[middle] = encoded.new_zeros(1, frames, *encoded.shape[1:]).to(features.dtype)
        coarse[middle][0, mid] = encoded.to(features.dtype)
    passes = vision.encoded({fine: len(full), middle: len(mid)}, frames, side)
    tokens = dataclasses.replace(tokens, features=features, coarse=coarse, vision_plan=[plan])
    return tokens, passes
