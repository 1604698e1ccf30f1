"""Data passed from the runtime to stages. Shape glossary used across vidpress:

B batch rows, F frames, T visual tokens per frame, N visual tokens in the sequence, S sequence length,
L LLM layers, D LLM hidden size, R scored query rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .errors import BudgetError


@dataclass(frozen=True)
class VisualTokens:
    """Projected and pooled visual tokens of one video per batch row, before the LLM.

    Attributes
    ----------
    features : Tensor, shape (B, F, T, D)
        Per-frame token grid after the projector and the 2-D pooling, in the LLM's width.
    grid : tuple[int, int]
        (h, w) with h * w == T: the spatial layout of each frame's tokens (row-major).
    unpooled : Tensor, shape (B, F, h0, w0, D'), optional
        The grid before the model's own 2-D pooling (only when a stage's ``Needs.unpooled``): projected
        (D' = D) when the model pools after its projector (LLaVA-OV), the encoder output otherwise.
    unpooled_stride : int
        How far ``unpooled`` is already pooled from the patch grid (Qwen's 2x2 merger: 2; otherwise 1).
    project : callable, optional
        Maps pooled ``unpooled`` tokens (..., D') to the LLM width D: the model's projector when it pools
        before projecting (LLaVA-NeXT-Video), None (identity) otherwise.
    extra : Tensor, shape (B, E, D), optional
        Tokens the model appends to the video block (LLaVA-OV's ``image_newline``), in the LLM's width.
    text : Tensor, shape (B, R, D), optional
        Input embeddings of the prompt tokens after the video (question and answer header), when a stage's
        ``Needs.text``; ``text_ids`` (B, R) are their token ids.
    pixels : Tensor, shape (B, F, 3, H, W), optional
        The video's pixel values as the vision tower received them, when a stage's ``Needs.pixels``.
    attention : Tensor, shape (B, F, T), optional
        float32 vision-encoder attention each token receives (VisionZip's dominance score), pooled to the
        frame grid like the features, when a stage's ``Needs.encoder_attention``; ``keys`` (B, F, T, Dk) are
        that layer's head-averaged keys, pooled the same way (VisionZip's merging metric).
    coarse : dict[int, Tensor], optional
        Frame tokens the tower encoded at a lower resolution (the vision slot's coarse-to-fine passes), per stride
        k of the model's token grid: (B, F, ceil(h/k) * ceil(w/k), D), zeros for frames not encoded at it.
    vision_plan : list, optional
        Per batch row, the plan the vision slot encoded by (an EventPlan: each frame's stride); ``features`` hold
        the model's tokens of the stride-1 frames only.
    merged : Tensor, shape (B, F, K, D), optional
        The tower's merged tokens per frame, projected (ToMe in the vision slot); ``merged_groups`` (B, F, P) gives
        the merged token each of a frame's P patches ended in.
    deepstack : Tensor, shape (levels, B, F, T, D), optional
        Features the model adds to each visual token's hidden state after its first ``levels`` LLM layers
        (Qwen3-VL's DeepStack). Stages never read them: the runtime keeps, merges and drops them as the stage's
        plan does with ``features``.
    """

    features: Tensor
    grid: tuple[int, int]
    unpooled: Tensor | None = None
    project: Any = None
    unpooled_stride: int = 1
    extra: Tensor | None = None
    text: Tensor | None = None
    text_ids: Tensor | None = None
    pixels: Tensor | None = None
    attention: Tensor | None = None
    keys: Tensor | None = None
    coarse: dict[int, Tensor] | None = None
    vision_plan: list | None = None
    merged: Tensor | None = None
    merged_groups: Tensor | None = None
    deepstack: Tensor | None = None

    @property
    def num_frames(self) -> int:
        return self.features.shape[1]

    @property
    def tokens_per_frame(self) -> int:
        return self.features.shape[2]


@dataclass(frozen=True)
class LayerSignals:
    """What an in-LLM stage sees at one layer (only what its :class:`~vidpress.stages.Needs` declared).

    Attributes
    ----------
    layer : int
        0-based LLM layer whose attention produced ``scores``.
    scores : Tensor, shape (B, N_alive)
        float32 attention probabilities of the declared query rows over the visual keys currently alive,
        softmax over *all* keys (visual and text), then averaged over heads and query rows.
    events : LongTensor, shape (B, N_alive), optional
        Event index of each alive visual token, when the pre-LLM stage returned a :class:`PackedTokens`.
    key_events : BoolTensor, shape (B, E), optional
        Which events the pre-LLM stage marked as key events.
    input_count : int, optional
        Visual tokens entering the LLM's first layer (PyramidDrop's reference keeps fractions of this count).
    hidden : Tensor, shape (B, N_alive, D), optional
        The alive visual tokens' hidden states at the drop layer's input (``Needs.hidden``).
    """

    layer: int
    scores: Tensor
    events: Tensor | None = None
    key_events: Tensor | None = None
    input_count: int | None = None
    hidden: Tensor | None = None


@dataclass
class StageContext:
    """Read-only facts about the request plus a per-request memory namespace for each stage.

    Attributes
    ----------
    num_layers : int
        Number of LLM decoder layers.
    step : int
        Decoding step: 0 during prefill, then 1, 2, ... for each generated token's forward.
    """

    num_layers: int
    step: int = 0
    _memory: dict[int, dict[str, Any]] = field(default_factory=dict)

    def memory(self, stage: object) -> dict[str, Any]:
        """A dict owned by ``stage`` for this request only (e.g. DyCoke's previous attention)."""
        return self._memory.setdefault(id(stage), {})


@dataclass(frozen=True)
class Members:
    """How one batch row's packed block combines the frame tokens: token ``token[e]`` of the block takes
    ``weight[e]`` times frame token ``source[e]`` (an index into the F*T frame tokens); a kept token is one member
    of weight 1, a merged one the weighted members of its merge. The same combination carries what rides with the
    tokens (Qwen3-VL's DeepStack features) and says what each token holds of which frame token.

    Attributes
    ----------
    token, source : LongTensor, shape (E,)
    weight : Tensor, shape (E,), float32
    """

    token: Tensor
    source: Tensor
    weight: Tensor

    def combine(self, values: Tensor, count: int) -> Tensor:
        """Each of ``count`` tokens' weighted sum of its members' ``values`` (N, D): (count, D) float32."""
        parts = values[self.source.to(values.device)].float() * self.weight.to(values.device)[:, None]
        return values.new_zeros(count, values.shape[-1], dtype=torch.float32).index_add_(
            0, self.token.to(values.device), parts
        )

    @staticmethod
    def of_kept(source: Tensor, start: int = 0) -> Members:
        """Tokens ``start, start + 1, ...`` that are the frame tokens ``source`` (K,) unchanged."""
        token = torch.arange(start, start + len(source), device=source.device)
        return Members(token, source, torch.ones(len(source), device=source.device))

    @staticmethod
    def cat(parts: list[Members]) -> Members:
        return Members(*(torch.cat([getattr(m, f) for m in parts]) for f in ("token", "source", "weight")))

    def reorder(self, order: Tensor) -> Members:
        """The same members after the block's tokens are reordered by ``order`` (new token i = old ``order[i]``)."""
        return replace(self, token=order.argsort().to(self.token.device)[self.token])


@dataclass(frozen=True)
class PackedTokens:
    """A new visual block built by a pre-LLM stage (e.g. METok's event-adaptive pooling), replacing the
    video's placeholders; every token in it is a visual token.

    Attributes
    ----------
    features : Tensor, shape (B, M, D)
        The block in temporal order; M may not exceed the number of placeholders it replaces.
    events : LongTensor, shape (B, M)
        Event index of each token (0-based, non-decreasing).
    key_events : BoolTensor, shape (B, E)
        Key-event flags, E = number of events.
    frame_of : LongTensor, shape (B, M)
        Source frame of each token, -1 for tokens that belong to no frame (newlines).
    info : Any
        What the stage wants reported (e.g. an :class:`~vidpress.stages.pre_llm.events.EventPlan`).
    source : LongTensor, shape (B, M), optional
        The video placeholder (index into the F*T frame tokens, then the extra tokens) whose position each token
        takes: itself for a kept token, the target or anchor for a merged one. With it the runtime gives the
        block the original positions of its sources (gathered (t, h, w) ids on M-RoPE models) unless the stage
        asks for contiguous positions; without it the block is numbered from the video's start.
    extra_tokens : int
        How many tokens at the end of the block are the model's own extra tokens (LLaVA-OV's newline) kept
        as in the uncompressed layout: they are not visual tokens and are accounted like text. METok's
        newlines per event are part of its budget and stay visual (``extra_tokens=0``).
    members : tuple of Members, optional
        Per batch row, what each visual token of the block combines of the frame tokens (``Members``); without it
        a token is taken to be its ``source`` unchanged, which the runtime checks where it matters (DeepStack).
    areas : tuple of Members, optional
        Per batch row, when the tokens combine no frame tokens (METok pooling the grid before the model's own
        pooling): each token's share of each frame token's cell of the frame (weights over the frame tokens, by
        area). Evidence survival reads it; nothing is carried by it.
    """

    features: Tensor
    events: Tensor
    key_events: Tensor
    frame_of: Tensor
    info: Any = None
    extra_tokens: int = 0
    source: Tensor | None = None
    members: tuple[Members, ...] | None = None
    areas: tuple[Members, ...] | None = None

    @property
    def num_kept(self) -> int:
        return self.features.shape[1]

    @property
    def num_visual(self) -> int:
        """Visual tokens in the block: ``num_kept - extra_tokens``."""
        return self.num_kept - self.extra_tokens

    @staticmethod
    def from_rows(
        rows: list[tuple[Tensor, Tensor, Tensor, Tensor]],
        num_events: int,
        n: int,
        extra: Tensor | None = None,
        info: Any = None,
        members: list[Members] | None = None,
    ) -> PackedTokens:
        """Stack per-row blocks, each followed by the model's ``extra`` tokens (B, E, D) as non-visual tokens.

        ``rows`` holds, per batch row, (features (M, D), frame_of (M,), events (M,), source (M,)) with sources
        indexing the ``n`` frame tokens; the extra tokens take their own placeholders (n, n + 1, ...). Every
        event is a key event. Used by stages that merge tokens without key events (VisionZip, FastVID).

        Raises
        ------
        BudgetError
            Rows of different lengths (videos that compress differently; run them one at a time).
        """
        lengths = sorted({len(r[0]) for r in rows})
        if len(lengths) > 1:
            raise BudgetError(f"videos in the batch compress to different lengths {lengths}; run them one at a time")
        n_extra = 0 if extra is None else extra.shape[1]
        feats, frame_of, events, sources = [], [], [], []
        for b, (x, f, e, src) in enumerate(rows):
            tail = e[-1:] if len(e) else e.new_zeros(1)
            feats.append(x if extra is None or not n_extra else torch.cat([x, extra[b].to(x.dtype)]))
            frame_of.append(torch.cat([f, f.new_full((n_extra,), -1)]))
            events.append(torch.cat([e, tail.expand(n_extra)]))
            sources.append(torch.cat([src, n + torch.arange(n_extra, device=src.device)]))
        key = torch.ones(len(rows), num_events, dtype=torch.bool, device=feats[0].device)
        return PackedTokens(
            torch.stack(feats),
            torch.stack(events),
            key,
            torch.stack(frame_of),
            info,
            n_extra,
            torch.stack(sources),
            None if members is None else tuple(members),
        )
