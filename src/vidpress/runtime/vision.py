"""The vision slot's deferred encoding: a coarse first pass, then each frame at the resolution its plan needs.

The runtime's wrapper of the video encoder returns an unencoded output when the vision stage defers
(:attr:`~vidpress.stages.VisionStage.deferred`), and the request, which knows the question, encodes here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch

from ..errors import VidpressError
from ..stages.pre_llm.pooling import pool_grid
from ..tokens import VisualTokens

if TYPE_CHECKING:
    from ..adapters.base import Adapter
    from ..stages import DeferredEncoding
    from .session import DeferredCall


def encode_deferred(
    adapter: Adapter, vision: DeferredEncoding, call: DeferredCall, tokens: VisualTokens
) -> tuple[VisualTokens, tuple[tuple, ...]]:
    """Encode a video the vision stage deferred: every frame in the first pass (at the low or the middle stride's
    resolution, or at full resolution with the tower merging), the plan from those tokens and ``tokens.text``,
    then the frames whose tokens come from the model (:meth:`CoarseToFine.sources`) through its own encoder
    (``call.original`` on ``call.arguments``) and, after a low first pass, the middle-stride frames at theirs.
    ``call.merged`` runs the merged first pass (:attr:`CoarseToFine.first_pass_merging`).

    Returns
    -------
    tokens : VisualTokens
        ``tokens`` with ``features`` (the stride-1 frames' model tokens, zeros elsewhere), ``coarse`` ({stride:
        (1, F, T_k, D)}) and ``vision_plan`` ([EventPlan]).
    passes : tuple of (frames, patches per frame[, merges per layer])
        What the tower encoded, for the accounting.

    Raises
    ------
    VidpressError
        More than one video in the batch (each video has its own plan and resolutions).
    """
    original, arguments, merged = call.original, call.arguments, call.merged
    pixels = arguments["pixel_values_videos"]
    batch, frames = pixels.shape[:2]
    if batch != 1:
        raise VidpressError(f"coarse-to-fine encoding plans one video at a time; run the {batch} videos one by one")
    side = adapter.patch_side()
    sides = vision.patch_sides(side)
    fine, middle, _ = vision.events.budget_strides()
    stride = vision.first_stride()
    merges = None
    if vision.first_pass_merging is not None:
        if merged is None:
            raise VidpressError("a merged first pass runs under the runtime's tower merging: use vidpress.apply")
        first, merges = merged(lambda: adapter.encode_at(pixels[0], side))
    else:
        first = adapter.encode_at(pixels[0], sides[stride])  # (F, T_first, D)
    plan = vision.plan(tokens, first)
    sources = vision.sources()
    at = {k: [f for f in range(frames) if plan.strides[f] == k] for k in sources}
    features = torch.zeros_like(tokens.features)
    refined = sorted(f for k, source in sources.items() if source == "model" for f in at[k])
    if refined:
        out = adapter.expand_frames(
            original(**adapter.select_frames(arguments, refined)), refined, frames, features.shape[2]
        )
        features = adapter.encode_video({"mm_encoder_outputs": {"video": out}})[0].features.to(features.dtype)
    h, w = tokens.grid
    grids = {"model": (features[0], (h, w), 1), "first": (first, (math.isqrt(first.shape[1]),) * 2, stride)}
    coarse = {}
    for k, source in sources.items():
        if k == fine:
            continue
        if source == "own":
            if not at[k]:
                continue
            encoded = adapter.encode_at(pixels[0, at[k]], sides[k])
            pooled = encoded.new_zeros(frames, *encoded.shape[1:])
            pooled[at[k]] = encoded
        else:
            grid, (gh, gw), scale = grids[source]
            pooled = pool_grid(grid.reshape(frames, gh, gw, -1), k // scale, "bilinear")
        coarse[k] = pooled[None].to(features.dtype)
    features[0, [f for f in range(frames) if plan.strides[f] != fine]] = 0  # stride-1 frames' tokens only
    passes = vision.encoded({k: len(v) for k, v in at.items()}, frames, side, merges)
    tokens = dataclasses.replace(tokens, features=features, coarse=coarse, vision_plan=[plan])
    return tokens, passes
