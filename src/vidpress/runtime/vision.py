"""The vision slot's deferred encoding: a coarse first pass, then each frame at the resolution its plan needs.

The runtime's wrapper of the video encoder returns an unencoded output when the vision stage defers
(:attr:`~vidpress.stages.VisionStage.deferred`), and the request, which knows the question, encodes here.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from ..errors import VidpressError
from ..tokens import VisualTokens

if TYPE_CHECKING:
    from ..adapters.base import Adapter


def encode_deferred(
    adapter: Adapter, vision: Any, original: Any, arguments: dict[str, Any], tokens: VisualTokens
) -> tuple[VisualTokens, tuple[tuple[int, int], ...]]:
    """Encode a video the vision stage deferred: every frame at the low stride's resolution, the plan from those
    tokens and ``tokens.text``, then the stride-1 frames through the model's own encoder (``original`` on
    ``arguments``) and the middle-stride frames at their resolution.

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
    first = adapter.encode_at(pixels[0], sides[low])  # (F, T_low, D)
    plan = vision.plan(tokens, first)
    full = [f for f in range(frames) if plan.strides[f] == fine and fine != low]
    mid = [f for f in range(frames) if plan.strides[f] == middle and middle not in (fine, low)]
    features = torch.zeros_like(tokens.features)
    if full:
        out = adapter.expand_frames(original(**adapter.select_frames(arguments, full)), full, frames, features.shape[2])
        features = adapter.encode_video({"mm_encoder_outputs": {"video": out}})[0].features.to(features.dtype)
    coarse = {low: first[None].to(features.dtype)}
    if mid:
        encoded = adapter.encode_at(pixels[0, mid], sides[middle])
        coarse[middle] = encoded.new_zeros(1, frames, *encoded.shape[1:]).to(features.dtype)
        coarse[middle][0, mid] = encoded.to(features.dtype)
    passes = vision.encoded({fine: len(full), middle: len(mid)}, frames, side)
    tokens = dataclasses.replace(tokens, features=features, coarse=coarse, vision_plan=[plan])
    return tokens, passes
