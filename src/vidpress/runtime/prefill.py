"""Model-level surgery: start a request (encode, pre-LLM plan, rebuild inputs) and fix decode-step inputs.

Kept tokens keep their original positions by default, and text after the video keeps the positions the
uncompressed model gives it; ``positions="contiguous"`` renumbers the shortened prompt (DyCoke's
reference behaviour) and shifts decoding positions to match.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor
from transformers import DynamicCache

from .._checks import check_context
from ..errors import BudgetError, IncompatibleStagesError, InvalidParameterError, VidpressError
from ..evidence import EvidenceTrace, token_evidence, trace
from ..selection import Selection
from ..stages import DeferredEncoding, Stages, check_encoded
from ..tokens import PackedTokens, VisualTokens
from .carry import carry
from .session import Captures, Session, per_row_positions
from .vision import encode_deferred

if TYPE_CHECKING:
    from ..adapters.base import Adapter


def default_positions(input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Position ids as ``generate`` derives them: mask cumsum (0 on padding), else arange. (B, S)."""
    if mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


@dataclass
class _Base:
    """The prompt after the pre-LLM plan: embeddings of every logical entry, which entries stay (``kept``), and
    which of them are visual tokens and their events."""

    embeds: Tensor  # (B, S, D) logical layout, the video's placeholders filled
    kept: Tensor  # (B, S0) logical indices kept, sorted
    kept_video: Tensor  # (B, M) logical indices of the video block kept
    visual: Tensor  # (B, S) bool: visual tokens
    events: Tensor | None  # (B, S) event of each entry (-1 outside), for packed blocks


def _prompt(model: Any, adapter: Adapter, kwargs: dict[str, Any]) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """``input_ids``, the 2-D mask, where the video placeholders are (B, S) and their positions (B, Nv)."""
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise VidpressError("vidpress needs input_ids with video placeholders at prefill, got inputs_embeds only")
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() != 2:
        raise VidpressError("vidpress needs a 2-D attention_mask (B, S) at prefill; got a prepared 4-D mask")
    check_context(model, input_ids.shape[1])
    is_video = input_ids == adapter.video_token_id()
    return input_ids, mask, is_video, per_row_positions(is_video)


def _stage_inputs(
    model: Any,
    adapter: Adapter,
    pre: Any,
    kwargs: dict[str, Any],
    tokens: VisualTokens,
    embeds: Tensor,
    input_ids: Tensor,
    video_pos: Tensor,
    captures: Captures,
) -> VisualTokens:
    """``tokens`` with what the pre-LLM stage declared it needs (``Needs``): the unpooled grid, the text after
    the video, pixel values, the encoder's attention, from what the request's tower calls left (``captures``)."""
    if pre is None or not (pre.needs.unpooled or pre.needs.text or pre.needs.pixels or pre.needs.encoder_attention):
        return tokens
    batch, frames = tokens.features.shape[:2]
    unpooled, project, stride = (
        adapter.unpooled_grid(captures.projected, tokens) if pre.needs.unpooled else (None, None, 1)
    )
    video_pixels, seen = kwargs.get("pixel_values_videos"), captures.pixels
    if video_pixels is None and seen is not None and seen.shape[0] == batch * frames:
        video_pixels = seen.view(batch, frames, *seen.shape[1:])
    if pre.needs.pixels and video_pixels is None:
        raise VidpressError(f"{type(pre).__name__} needs the video's pixel values: pass pixel_values_videos")
    attention = keys = None
    if pre.needs.encoder_attention:
        signals = captures.encoder
        if signals is None:
            raise VidpressError(
                f"{type(pre).__name__} needs the vision encoder's attention for this video; "
                "run the model with the method installed (vidpress.apply)"
            )
        received, encoder_keys = signals
        attention, keys = adapter.pool_encoder_signals(received, encoder_keys, batch, frames)
    after = int(video_pos[:, -1].max()) + 1
    return dataclasses.replace(
        tokens,
        unpooled=unpooled,
        project=project,
        unpooled_stride=stride,
        text=embeds[:, after:],
        text_ids=input_ids[:, after:],
        pixels=video_pixels,
        attention=attention,
        keys=keys,
    )


def _plan(pre: Any, tokens: VisualTokens) -> tuple[Selection | PackedTokens, float]:
    """The pre-LLM stage's plan (everything when there is none) and the seconds it took."""
    batch, frames, per_frame, _ = tokens.features.shape
    start = time.perf_counter()
    if pre is None:
        return Selection.identity(batch, frames * per_frame, device=tokens.features.device), 0.0
    plan = pre(tokens, None)
    if isinstance(plan, Selection) and plan.n != frames * per_frame:
        raise VidpressError(f"{type(pre).__name__} planned over {plan.n} tokens, expected {frames * per_frame}")
    return plan, time.perf_counter() - start


def _base(
    plan: Selection | PackedTokens,
    pre: Any,
    tokens: VisualTokens,
    embeds: Tensor,
    input_ids: Tensor,
    is_video: Tensor,
    video_pos: Tensor,
) -> _Base:
    """Fill the video's placeholders and decide which logical entries the prefill keeps."""
    n_frame_tokens = tokens.features.shape[1] * tokens.features.shape[2]
    events = None
    if isinstance(plan, PackedTokens):  # a new block fills the first M placeholders of the video
        if plan.num_kept > video_pos.shape[1]:
            raise BudgetError(
                f"{type(pre).__name__} packed {plan.num_kept} tokens into {video_pos.shape[1]} "
                "placeholders; choose larger pooling strides"
            )
        contiguous = bool((video_pos[:, -1] - video_pos[:, 0] + 1 == video_pos.shape[1]).all())
        kept_video = (
            video_pos[:, : plan.num_kept]
            if contiguous
            else video_pos.gather(1, _frame_slots(plan, pre, tokens.features.shape[2]).to(video_pos.device))
        )
        embeds = embeds.scatter(
            1, kept_video[..., None].expand(-1, -1, embeds.shape[-1]), plan.features.to(embeds.dtype)
        )
        visual = torch.zeros_like(is_video).scatter_(1, kept_video[:, : plan.num_visual], True)
        events = torch.full_like(input_ids, -1).scatter_(1, kept_video, plan.events.to(input_ids.device))
    else:
        extra = tokens.features[:, 0, :0] if tokens.extra is None else tokens.extra  # (B, 0, D): no extra tokens
        block = torch.cat([tokens.features.flatten(1, 2), extra], dim=1).to(embeds.dtype)
        embeds = embeds.masked_scatter(is_video[..., None], block)
        kept_video = torch.cat([video_pos.gather(1, plan.keep.to(video_pos.device)), video_pos[:, n_frame_tokens:]], 1)
        visual = torch.zeros_like(is_video).scatter_(1, video_pos[:, :n_frame_tokens], True)
    kept = torch.cat([per_row_positions(~is_video), kept_video], dim=1).sort(dim=1).values  # (B, S0)
    return _Base(embeds, kept, kept_video, visual, events)


def _frame_slots(plan: PackedTokens, pre: Any, per_frame: int) -> Tensor:
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


def _deepstack(plan: Selection | PackedTokens, pre: Any, tokens: VisualTokens, base: _Base) -> Tensor | None:
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


def _positions(
    model: Any,
    adapter: Adapter,
    stages: Stages,
    kwargs: dict[str, Any],
    positions: str,
    plan: Any,
    base: _Base,
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
    if positions == "contiguous":
        if original.dim() == 3:
            asking = [
                type(s).__name__
                for s in (stages.pre_llm, stages.prefill)
                if s is not None and s.positions == "contiguous"
            ]
            raise IncompatibleStagesError(
                f"{' and '.join(asking)} renumber(s) positions contiguously (the reference "
                "code's 1-D behaviour); M-RoPE models keep (t, h, w) ids: use mode='fixed'"
            )
        new_positions = default_positions(kept, new_mask)
        return new_positions, original[:, -1:] - new_positions[:, -1:], mrope_delta, new_mask
    at = kept
    if isinstance(plan, PackedTokens) and plan.source is not None:  # each token at its source's position
        mapping = torch.arange(length, device=kept.device).expand(batch, -1).clone()
        mapping.scatter_(1, base.kept_video, video_pos.gather(1, plan.source.to(video_pos.device)))
        at = mapping.gather(1, kept)
    return original.gather(-1, at.expand(*original.shape[:-2], -1, -1)), None, mrope_delta, new_mask


def start_request(
    model: Any,
    adapter: Adapter,
    stages: Stages,
    kwargs: dict[str, Any],
    positions: str,
    captures: Captures,
    evidence: Tensor | None = None,
) -> Session:
    """Run vision + pre-LLM stage and rewrite ``kwargs`` in place for a shortened prefill.

    ``captures`` is the request's record of what its tower calls leave (:class:`~.session.Captures`); the video
    is encoded here (``adapter.encode_video``) unless generate encoded it before, so it is read after that.
    ``evidence``: masks (F, H, W) of the frames given to the processor, whose survival the session traces.

    Raises
    ------
    VidpressError
        The pre-LLM plan keeps a token of a frame the tower did not encode.
    """
    input_ids, mask, is_video, video_pos = _prompt(model, adapter, kwargs)
    tokens, extra = adapter.encode_video(kwargs)
    encoded_frames = captures.encoded
    tokens = dataclasses.replace(tokens, extra=extra)  # a packed block ends with the model's own extra tokens
    _, frames, per_frame, _ = tokens.features.shape
    if video_pos.shape[1] != frames * per_frame + extra.shape[1]:
        raise BudgetError(
            f"input_ids hold {video_pos.shape[1]} video placeholders but the video gives "
            f"{frames * per_frame + extra.shape[1]} tokens; build the prompt with the model's processor"
        )
    embeds = model.get_input_embeddings()(input_ids)
    tokens = _stage_inputs(model, adapter, stages.pre_llm, kwargs, tokens, embeds, input_ids, video_pos, captures)
    merging = captures.merged
    if merging is not None and merging.tokens is not None:
        tokens = dataclasses.replace(tokens, merged=merging.tokens, merged_groups=merging.groups)
    pending = captures.deferred
    passes = None
    if pending is not None:
        tokens, passes = encode_deferred(adapter, cast(DeferredEncoding, stages.vision), pending, tokens)
    plan, overhead = _plan(stages.pre_llm, tokens)
    if encoded_frames is not None:
        check_encoded(plan, encoded_frames, per_frame)
    base = _base(plan, stages.pre_llm, tokens, embeds, input_ids, is_video, video_pos)
    deepstack = _deepstack(plan, stages.pre_llm, tokens, base)
    new_positions, offset, mrope_delta, new_mask = _positions(
        model, adapter, stages, kwargs, positions, plan, base, input_ids, mask, video_pos
    )
    kept = base.kept
    session = Session(
        stages=stages,
        num_layers=len(adapter.decoder_layers()),
        prompt_len=input_ids.shape[1],
        kept=kept,
        visual=base.visual.gather(1, kept),
        frames=frames,
        tokens_per_frame=per_frame,
        encoded_frames=frames if encoded_frames is None else len(encoded_frames),
        vision_passes=passes,
        vision_merges=None if merging is None else merging.merges,
        projected_tokens=None if merging is None else merging.projected,
        pos_offset=offset,
        mrope_delta=mrope_delta,
        mask=new_mask,
        renumber=stages.prefill is not None and stages.prefill.positions == "contiguous",
        deepstack=deepstack,
    )
    if base.events is not None and isinstance(plan, PackedTokens):  # events come with a packed block
        session.events, session.key_events, session.stage_info = base.events.gather(1, kept), plan.key_events, plan.info
    session.timings.overhead_s = overhead
    session.other_tokens = int(kept.shape[1] - session.visual[0].sum())
    if evidence is not None:
        session.evidence = _trace(plan, evidence, tokens, base, session.num_layers)
    cache = kwargs.get("cache")
    kwargs.update(
        input_ids=None,
        inputs_embeds=base.embeds.gather(1, kept[..., None].expand(-1, -1, base.embeds.shape[-1])),
        attention_mask=new_mask,
        position_ids=new_positions,
        cache=cache if cache is not None else DynamicCache(config=model.config),
    )
    return session


def _trace(
    plan: Selection | PackedTokens, masks: Tensor, tokens: VisualTokens, base: _Base, num_layers: int
) -> EvidenceTrace:
    """The request's evidence trace from its ``masks`` (F, H, W), over the base layout's entries.

    Raises
    ------
    InvalidParameterError
        Masks for another number of frames than the video's.
    """
    batch, frames, per_frame, _ = tokens.features.shape
    patch = -(-len(masks) // frames)
    shares = token_evidence(masks, tokens.grid, patch)
    if shares.shape != (frames, per_frame):
        raise InvalidParameterError(
            f"evidence masks for {len(masks)} frames, but the video gives {frames} frames of {per_frame} tokens; "
            "give one mask per frame passed to the processor"
        )
    count = plan.num_visual if isinstance(plan, PackedTokens) else plan.num_kept
    visual = base.kept_video[:, :count]
    entries = torch.searchsorted(base.kept.to(visual.device), visual)  # the base-layout entry of each token
    return trace(plan, shares.flatten()[None].expand(batch, -1), entries, base.kept.shape[1], num_layers)


def decode_inputs(session: Session, kwargs: dict[str, Any]) -> None:
    """Map a decoding step's logical mask and positions onto the physical cache layout, in place."""
    ids = kwargs.get("input_ids")
    new = (ids if ids is not None else kwargs["inputs_embeds"]).shape[1]
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        kwargs["attention_mask"] = torch.cat(
            [mask[:, : session.prompt_len].gather(1, session.kept), mask[:, session.prompt_len :]], dim=1
        )
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(session.logical_len, session.logical_len + new, device=session.kept.device)[None]
        if session.mrope_delta is not None:
            positions = (positions + session.mrope_delta)[None].expand(3, -1, -1)
    if session.pos_offset is not None:
        positions = positions - session.pos_offset
    kwargs["position_ids"] = positions
    session.logical_len += new
    session.ctx.step += 1
    session.view = None
