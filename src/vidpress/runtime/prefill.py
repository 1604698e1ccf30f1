"""Model-level surgery: start a request (encode, pre-LLM plan, rebuild inputs) and fix decode-step inputs.

Kept tokens keep their original positions by default, and text after the video keeps the positions the
uncompressed model gives it; ``positions="contiguous"`` renumbers the shortened prompt (DyCoke's
reference behaviour) and shifts decoding positions to match.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor
from transformers import DynamicCache

from .._checks import check_context
from ..errors import BudgetError, InvalidParameterError, VidpressError
from ..evidence import EvidenceTrace, token_evidence, trace
from ..selection import Selection
from ..stages import DeferredEncoding, Stages, check_encoded
from ..tokens import PackedTokens, VisualTokens
from .layout import Layout, deepstack_features, frame_slots, kept_positions
from .session import Captures, Session, per_row_positions
from .vision import encode_deferred

if TYPE_CHECKING:
    from ..adapters.base import Adapter


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
) -> Layout:
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
            else video_pos.gather(1, frame_slots(plan, pre, tokens.features.shape[2]).to(video_pos.device))
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
    return Layout(embeds, kept, kept_video, visual, events)


def start_request(
    model: Any,
    adapter: Adapter,
    stages: Stages,
    kwargs: dict[str, Any],
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
    deepstack = deepstack_features(plan, stages.pre_llm, tokens, base)
    new_positions, offset, mrope_delta, new_mask = kept_positions(
        model, adapter, stages, kwargs, plan, base, input_ids, mask, video_pos
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
    plan: Selection | PackedTokens, masks: Tensor, tokens: VisualTokens, base: Layout, num_layers: int
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
