"""METok stage 1 building blocks: event segmentation, frame-text relevance, key events and key frames.

docs/methods.md Frames are split into events at the lowest adjacent-frame similarities; each frame gets a
relevance to the question; the most relevant events are key events and the most relevant frames of each
event key frames (relevance scorers: :mod:`.relevance`). :func:`plan_events` returns everything as an
:class:`EventPlan` (also what
``vidpress events`` draws).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ...errors import InvalidParameterError


def adjacent_similarity(frames: Tensor) -> Tensor:
    """Cosine similarity of consecutive frame embeddings: (F, D) -> (F - 1,), float32."""
    x = torch.nn.functional.normalize(frames.float(), dim=-1)
    return (x[1:] * x[:-1]).sum(-1)


def segment(
    similarity: Tensor,
    mode: Literal["faithful", "adaptive"],
    *,
    boundaries: int = 4,
    z: float = 1.0,
    min_event_frames: int = 4,
) -> list[int]:
    """Event boundaries: sorted frame indices i such that a new event starts at frame i + 1.

    Parameters
    ----------
    similarity : Tensor, shape (F - 1,)
        Adjacent-frame similarities (:func:`adjacent_similarity`).
    mode : {"faithful", "adaptive"}
        ``faithful``: the ``boundaries`` lowest similarities (the reference's k = 4, giving 5 events;
        fewer when F - 1 < k). ``adaptive``: every similarity below ``mean - z * std`` is a boundary, at most
        ``F // min_event_frames - 1`` of them (the lowest), so the number of events follows the video.
    """
    n = similarity.numel()
    if n == 0:
        return []
    if mode == "faithful":
        count = min(boundaries, n)
    elif mode == "adaptive":
        below = similarity < similarity.mean() - z * similarity.std(unbiased=False)
        count = min(int(below.sum()), max(0, (n + 1) // min_event_frames - 1))
    else:
        raise InvalidParameterError(f"segmentation must be 'faithful' or 'adaptive', got {mode!r}")
    return sorted(similarity.topk(count, largest=False).indices.tolist())


def events_from_boundaries(boundaries: list[int], num_frames: int) -> list[tuple[int, int]]:
    """Inclusive frame ranges ``[(first, last), ...]`` of the events, in temporal order."""
    starts = [0] + [b + 1 for b in boundaries]
    ends = list(boundaries) + [num_frames - 1]
    return list(zip(starts, ends))


def count_of(amount: int | float, n: int, name: str) -> int:
    """An int is a count (capped at n); a float in (0, 1] a fraction of n, rounded up."""
    if isinstance(amount, bool) or amount <= 0 or (isinstance(amount, float) and amount > 1):
        raise InvalidParameterError(f"{name} must be a count >= 1 or a fraction in (0, 1], got {amount!r}")
    return min(n, amount if isinstance(amount, int) else math.ceil(amount * n))


@dataclass(frozen=True)
class EventPlan:
    """Stage-1 decisions for one video. Frame indices are 0-based; ``strides[i]`` pools frame i."""

    similarity: list[float]
    boundaries: list[int]
    events: list[tuple[int, int]]
    relevance: list[float]
    key_events: list[int]
    key_frames: list[int]
    strides: list[int]
    tokens: list[int]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def plan_events(
    frames: Tensor,
    relevance: Tensor,
    *,
    segmentation: Literal["faithful", "adaptive"],
    boundaries: int,
    z: float,
    min_event_frames: int,
    key_events: int | float,
    key_frames: int | float,
    strides: tuple[int, int, int, int],
    grid: tuple[int, int],
    rounding=math.ceil,
) -> EventPlan:
    """Segment, choose key events/frames and assign each frame a pooling stride (docs/methods.md).

    Parameters
    ----------
    frames : Tensor, shape (F, D)
        One embedding per frame (mean of its projected tokens).
    relevance : Tensor, shape (F,)
        Frame-text relevance r_i.
    strides : (key event & key frame, key event other, non-key event & key frame, non-key other)
    grid : (h0, w0) of the unpooled grid, to count tokens per frame (``rounding(h0 / s) * rounding(w0 / s)``:
        ceil for bilinear pooling, floor for average pooling).
    """
    num = frames.shape[0]
    similarity = adjacent_similarity(frames)
    bounds = segment(similarity, segmentation, boundaries=boundaries, z=z, min_event_frames=min_event_frames)
    events = events_from_boundaries(bounds, num)
    event_score = torch.stack([relevance[a : b + 1].max() for a, b in events])  # max r_i over the event
    key_ev = sorted(event_score.topk(count_of(key_events, len(events), "key_events")).indices.tolist())
    key_fr: list[int] = []
    frame_stride = [0] * num
    for e, (a, b) in enumerate(events):
        chosen = relevance[a : b + 1].topk(count_of(key_frames, b - a + 1, "key_frames")).indices + a
        key_fr += sorted(chosen.tolist())
        base = 0 if e in key_ev else 2
        for f in range(a, b + 1):
            frame_stride[f] = strides[base + (0 if f in chosen or a == b else 1)]
    tokens = [rounding(grid[0] / s) * rounding(grid[1] / s) for s in frame_stride]
    return EventPlan(
        similarity.tolist(), bounds, events, relevance.float().tolist(), key_ev, key_fr, frame_stride, tokens
    )


def dyseg(frames: Tensor, threshold: float, min_segments: int) -> list[tuple[int, int]]:
    """DySeg: cut after frame i when similarity(i, i+1) < ``threshold`` or is among the ``min_segments - 1``
    lowest. ``frames`` (F, D) frame embeddings; returns inclusive (first, last) frame ranges."""
    similarity = adjacent_similarity(frames)
    lowest = similarity.topk(min(min_segments - 1, similarity.numel()), largest=False).indices
    cuts = set(lowest.tolist()) | set((similarity < threshold).nonzero().flatten().tolist())
    return events_from_boundaries(sorted(cuts), frames.shape[0])
