"""METok stage 1 building blocks: event segmentation, frame-text relevance, key events and key frames.

methods.md §2.1. Frames are split into events at the lowest adjacent-frame similarities; each frame gets a
relevance to the question; the most relevant events are key events and the most relevant frames of each
event key frames. :func:`plan_events` returns everything as an :class:`EventPlan` (also what
``vidpress events`` draws).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from ...errors import InvalidParameterError, VidpressError
from ...tokens import VisualTokens


def adjacent_similarity(frames: Tensor) -> Tensor:
    """Cosine similarity of consecutive frame embeddings: (F, D) -> (F - 1,), float32."""
    x = torch.nn.functional.normalize(frames.float(), dim=-1)
    return (x[1:] * x[:-1]).sum(-1)


def segment(similarity: Tensor, mode: Literal["faithful", "adaptive"], *, boundaries: int = 4,
            z: float = 1.0, min_event_frames: int = 4) -> list[int]:
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


class FrameTextRelevance(Protocol):
    """Scores each frame's relevance to the question: ``(tokens, row, frames (F, D)) -> (F,)``.

    ``tokens`` is the stage's :class:`~vidpress.tokens.VisualTokens` (``text``, ``text_ids``, ``pixels`` are
    filled when :attr:`needs_pixels` asks for pixels), ``row`` the batch row, ``frames`` one embedding per frame.
    """

    needs_pixels: bool

    def __call__(self, tokens: VisualTokens, row: int, frames: Tensor) -> Tensor: ...


class EmbeddingRelevance:
    """Default relevance, no second vision model: cosine between the mean input embedding of the text after
    the video (the question, in the VLLM's own embedding space) and each frame's mean projected feature.

    Cost: one (F x D) by (D) product, negligible next to the vision encoder.
    """

    needs_pixels = False

    def __call__(self, tokens: VisualTokens, row: int, frames: Tensor) -> Tensor:
        if tokens.text is None or tokens.text.shape[1] == 0:
            return torch.zeros(frames.shape[0], device=frames.device)
        query = torch.nn.functional.normalize(tokens.text[row].float().mean(0), dim=-1)
        return torch.nn.functional.normalize(frames.float(), dim=-1) @ query


class SiglipRelevance:
    """The reference's relevance: a second, full SigLIP (text + vision towers) scores every frame
    (methods.md §2.1 step 1). The question text (decoded from the prompt after the video with the VLLM's
    ``tokenizer``) is tokenised by SigLIP's tokenizer, cut into ``chunk``-token pieces whose text features are
    max-pooled; r_i = cos(text, pooled image feature of frame i).

    Cost: the SigLIP vision tower runs once more over every frame (about the vision encoder's FLOPs again for
    so400m, which vidpress's accounting does not add to the LLM figures) plus the text tower per chunk.

    Parameters
    ----------
    path : str
        A local SigLIP checkpoint directory (or a hub id where the hub is reachable), e.g. the one named by
        the VLLM's vision tower (``google/siglip-so400m-patch14-384`` for LLaVA-OV). The VLLM's pixel values
        are reused, resized to SigLIP's input size when they differ.
    tokenizer : the VLLM's tokenizer (to recover the question text from the prompt ids).
    """

    needs_pixels = True

    def __init__(self, path: str, tokenizer: Any, chunk: int = 64):
        from transformers import AutoTokenizer, SiglipModel

        self.model = SiglipModel.from_pretrained(path).eval()
        self.siglip_tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer, self.chunk = tokenizer, chunk

    @torch.no_grad()
    def __call__(self, tokens: VisualTokens, row: int, frames: Tensor) -> Tensor:
        if tokens.pixels is None or tokens.text_ids is None:
            raise VidpressError("SiglipRelevance needs the video's pixel values and the prompt ids")
        text = self.tokenizer.decode(tokens.text_ids[row].tolist(), skip_special_tokens=True)
        ids = self.siglip_tokenizer(text, return_tensors="pt").input_ids[0]
        pad = self.siglip_tokenizer.pad_token_id or 0
        ids = torch.cat([ids, ids.new_full((-len(ids) % self.chunk,), pad)]).view(-1, self.chunk)
        param = next(self.model.parameters())
        text_features = self.model.get_text_features(input_ids=ids.to(param.device))
        text_features = getattr(text_features, "pooler_output", text_features).amax(0)
        pixels = tokens.pixels[row].to(param)
        size = self.model.config.vision_config.image_size
        if pixels.shape[-1] != size:
            pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear")
        image = self.model.get_image_features(pixel_values=pixels)
        image = getattr(image, "pooler_output", image)
        cos = torch.nn.functional.normalize(image.float(), dim=-1) @ torch.nn.functional.normalize(text_features.float(), dim=-1)
        return cos.to(frames.device)


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


def plan_events(frames: Tensor, relevance: Tensor, *, segmentation: str, boundaries: int, z: float,
                min_event_frames: int, key_events: int | float, key_frames: int | float,
                strides: tuple[int, int, int, int], grid: tuple[int, int], rounding=math.ceil) -> EventPlan:
    """Segment, choose key events/frames and assign each frame a pooling stride (methods.md §2.1 steps 2-5).

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
    event_score = torch.stack([relevance[a: b + 1].max() for a, b in events])  # max r_i over the event
    key_ev = sorted(event_score.topk(count_of(key_events, len(events), "key_events")).indices.tolist())
    key_fr: list[int] = []
    frame_stride = [0] * num
    for e, (a, b) in enumerate(events):
        chosen = relevance[a: b + 1].topk(count_of(key_frames, b - a + 1, "key_frames")).indices + a
        key_fr += sorted(chosen.tolist())
        base = 0 if e in key_ev else 2
        for f in range(a, b + 1):
            frame_stride[f] = strides[base + (0 if f in chosen or a == b else 1)]
    tokens = [rounding(grid[0] / s) * rounding(grid[1] / s) for s in frame_stride]
    return EventPlan(similarity.tolist(), bounds, events, relevance.float().tolist(), key_ev, key_fr,
                     frame_stride, tokens)
