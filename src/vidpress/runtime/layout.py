"""The shortened prompt's layout: which entries of the logical prompt stay, at which positions, and the DeepStack
features of the kept visual tokens (the pre-LLM plan applied to the prompt by :func:`.prefill.start_request`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import BudgetError
from ..selection import Selection
from ..stages import Stages
from ..tokens import PackedTokens, VisualTokens
from .carry import carry
from .compat import check_positions

if TYPE_CHECKING:
    from ..adapters.base import Adapter


def default_positions(input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Position ids as ``generate`` derives them: mask cumsum (0 on padding), else arange. (B, S)."""
    if mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


@dataclass
class Layout:
    """The prompt after the pre-LLM plan: embeddings of every logical entry, which entries stay (``kept``), and
    which of them are visual tokens and their events."""

    embeds: Tensor  # (B, S, D) logical layout, the video's placeholders filled
    kept: Tensor  # (B, S0) logical indices kept, sorted
    kept_video: Tensor  # (B, M) logical indices of the video block kept
    visual: Tensor  # (B, S) bool: visual tokens
    events: Tensor | None  # (B, S) event of each entry (-1 outside), for packed blocks


def frame_slots(plan: PackedTokens, pre: Any, per_frame: int) -> Tensor:
    """(B, M) placeholder of each packed token when text splits the video's placeholders by frame (Qwen3-VL's
    timestamps): the block's tokens of frame f fill frame f's placeholders in block order, so every token stays
    between its own frame's text; a token of no frame follows the frame before it.

    Raises
    ------
    BudgetError
        More tokens of one frame than the frame has placeholders.
    """
    frame_of = plan.frame_of.tolist()
    slots = []
    for row in frame_of:
        taken: dict[int, int] = {}
        frame, out = 0, []
        for f in row:
            frame = f if f >= 0 else frame
            rank = taken.get(frame, 0)
            if rank >= per_frame:
                raise BudgetError(
                    f"{type(pre).__name__} packed more than {per_frame} tokens for frame {frame}, which has "
                    f"{per_frame} placeholders between its timestamps; on this model a frame's tokens must fit its "
                    "own placeholders"
                )
            taken[frame] = rank + 1
            out.append(frame * per_frame + rank)
        slots.append(out)
    return torch.tensor(slots, dtype=torch.long)


def deepstack_features(plan: Selection | PackedTokens, pre: Any, tokens: VisualTokens, base: Layout) -> Tensor | None:
    """DeepStack features of the base layout's entries, (levels, B, S0, D), zeros at entries that are not visual
    tokens, kept and merged as the plan keeps and merges the tokens (:func:`~.carry.carry`).

    Raises
    ------
    IncompatibleStagesError
        A packed block that merges tokens without declaring their members.
    """
    deepstack = tokens.deepstack
    if deepstack is None:
        return None
    levels, batch, frames, per_frame, dim = deepstack.shape
    values = deepstack.permute(1, 2, 3, 0, 4).reshape(batch, frames * per_frame, levels * dim)
    visual = carry(plan, values, tokens.features.flatten(1, 2), type(pre).__name__)
    visual = visual.view(batch, -1, levels, dim).permute(2, 0, 1, 3)  # (levels, B, K, D)
    at = base.kept_video[:, : visual.shape[2]].to(visual.device)
    logical = visual.new_zeros(levels, batch, base.visual.shape[1], dim)
    logical.scatter_(2, at[None, ..., None].expand(levels, -1, -1, dim), visual)
    return logical.gather(2, base.kept.to(visual.device)[None, ..., None].expand(levels, -1, -1, dim))


def kept_positions(
    model: Any,
    adapter: Adapter,
    stages: Stages,
    kwargs: dict[str, Any],
    plan: Any,
    base: Layout,
    input_ids: Tensor,
    mask: Tensor | None,
    video_pos: Tensor,
):
    """(positions of the kept entries, the decoding offset or None, the M-RoPE delta or None, the kept mask)."""
    batch, length = input_ids.shape
    original = adapter.prefill_positions(kwargs, input_ids, mask)  # (B, S), or (R, B, S) for M-RoPE
    if original is None:
        original = default_positions(input_ids, mask)
    else:
        original = original.expand(*original.shape[:-2], batch, -1)
    kept = base.kept
    new_mask = mask.gather(1, kept) if mask is not None else None
    mrope_delta = None
    if original.dim() == 3:  # decoding continues after the largest (t, h, w) id, as transformers' rope deltas do
        mrope_delta = original[-3:].amax(dim=(0, 2))[:, None] + 1 - length
    # installation refused this on families that declare M-RoPE; the positions' own shape catches any other
    check_positions(stages, original.dim() == 3, type(adapter).__name__)
    if any(s is not None and s.positions == "contiguous" for s in (stages.pre_llm, stages.prefill)):
        new_positions = default_positions(kept, new_mask)
        return new_positions, original[:, -1:] - new_positions[:, -1:], mrope_delta, new_mask
    at = kept
    if isinstance(plan, PackedTokens) and plan.source is not None:  # each token at its source's position
        mapping = torch.arange(length, device=kept.device).expand(batch, -1).clone()
        mapping.scatter_(1, base.kept_video, video_pos.gather(1, plan.source.to(video_pos.device)))
        at = mapping.gather(1, kept)
    return original.gather(-1, at.expand(*original.shape[:-2], -1, -1)), None, mrope_delta, new_mask
