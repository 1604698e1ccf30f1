"""Model-level surgery: start a request (encode, pre-LLM plan, rebuild inputs) and fix decode-step inputs.

Kept tokens keep their original positions by default, and text after the video keeps the positions the
uncompressed model gives it; ``positions="contiguous"`` renumbers the shortened prompt (DyCoke's
reference behaviour) and shifts decoding positions to match.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from transformers import DynamicCache

from .._checks import check_context
from ..errors import BudgetError, IncompatibleStagesError, VidpressError
from ..selection import Selection
from ..tokens import PackedTokens, VisualTokens
from .session import Session, per_row_positions


def default_positions(input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Position ids as ``generate`` derives them: mask cumsum (0 on padding), else arange. (B, S)."""
    if mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def start_request(
    model: Any,
    adapter: Any,
    stages: Any,
    kwargs: dict[str, Any],
    positions: str,
    projected: Any = None,
    pixels: Any = None,
    encoder: Any = None,
) -> Session:
    """Run vision + pre-LLM stage and rewrite ``kwargs`` in place for a shortened prefill.

    ``projected`` / ``pixels`` / ``encoder`` return the projector's latest output (the unpooled grid), the
    vision tower's latest input and the encoder attention signals, captured by the runtime for stages that
    need them.
    """
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise VidpressError("vidpress needs input_ids with video placeholders at prefill, got inputs_embeds only")
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() != 2:
        raise VidpressError("vidpress needs a 2-D attention_mask (B, S) at prefill; got a prepared 4-D mask")
    batch, length = input_ids.shape
    check_context(model, length)
    is_video = input_ids == adapter.video_token_id(model)
    video_pos = per_row_positions(is_video)  # (B, Nv)

    video_pixels = kwargs.get("pixel_values_videos")
    tokens, extra = adapter.encode_video(model, kwargs)
    tokens = dataclasses.replace(tokens, extra=extra)  # a packed block ends with the model's own extra tokens
    _, frames, per_frame, _ = tokens.features.shape
    n_frame_tokens = frames * per_frame
    if video_pos.shape[1] != n_frame_tokens + extra.shape[1]:
        raise BudgetError(
            f"input_ids hold {video_pos.shape[1]} video placeholders but the video gives "
            f"{n_frame_tokens + extra.shape[1]} tokens; build the prompt with the model's processor"
        )
    embeds = model.get_input_embeddings()(input_ids)
    pre = stages.pre_llm
    if pre is not None and (pre.needs.unpooled or pre.needs.text or pre.needs.pixels or pre.needs.encoder_attention):
        unpooled, project, stride = (
            adapter.unpooled_grid(model, projected(), tokens) if pre.needs.unpooled else (None, None, 1)
        )
        after = int(video_pos[:, -1].max()) + 1
        seen = pixels() if pixels is not None else None
        if video_pixels is None and seen is not None and seen.shape[0] == batch * frames:
            video_pixels = seen.view(batch, frames, *seen.shape[1:])
        if pre.needs.pixels and video_pixels is None:
            raise VidpressError(f"{type(pre).__name__} needs the video's pixel values: pass pixel_values_videos")
        attention = keys = None
        if pre.needs.encoder_attention:
            if encoder is None or encoder() is None:
                raise VidpressError(
                    f"{type(pre).__name__} needs the vision encoder's attention for this video; "
                    "run the model with the method installed (vidpress.apply)"
                )
            attention, keys = adapter.pool_encoder_signals(model, *encoder(), batch, frames)
        tokens = VisualTokens(
            tokens.features,
            tokens.grid,
            unpooled=unpooled,
            project=project,
            unpooled_stride=stride,
            extra=extra,
            text=embeds[:, after:],
            text_ids=input_ids[:, after:],
            pixels=video_pixels,
            attention=attention,
            keys=keys,
        )

    start = time.perf_counter()
    if pre is not None:
        plan = pre(tokens, None)
        if isinstance(plan, Selection) and plan.n != n_frame_tokens:
            raise VidpressError(f"{type(pre).__name__} planned over {plan.n} tokens, expected {n_frame_tokens}")
    else:
        plan = Selection.identity(batch, n_frame_tokens, device=input_ids.device)
    overhead = time.perf_counter() - start

    events = None
    if isinstance(plan, PackedTokens):  # a new block fills the first M placeholders of the video
        if plan.num_kept > video_pos.shape[1]:
            raise BudgetError(
                f"{type(pre).__name__} packed {plan.num_kept} tokens into {video_pos.shape[1]} "
                "placeholders; choose larger pooling strides"
            )
        kept_video = video_pos[:, : plan.num_kept]
        block = plan.features.to(embeds.dtype)
        embeds = embeds.scatter(1, kept_video[..., None].expand(-1, -1, embeds.shape[-1]), block)
        visual = torch.zeros_like(is_video).scatter_(1, kept_video[:, : plan.num_visual], True)
        events = torch.full_like(input_ids, -1).scatter_(1, kept_video, plan.events.to(input_ids.device))
    else:
        block = torch.cat([tokens.features.flatten(1, 2), extra], dim=1).to(embeds.dtype)
        embeds = embeds.masked_scatter(is_video[..., None], block)
        kept_video = torch.cat([video_pos.gather(1, plan.keep.to(video_pos.device)), video_pos[:, n_frame_tokens:]], 1)
        visual = torch.zeros_like(is_video).scatter_(1, video_pos[:, :n_frame_tokens], True)
    kept = torch.cat([per_row_positions(~is_video), kept_video], dim=1).sort(dim=1).values  # (B, S0)

    original = adapter.prefill_positions(model, kwargs, input_ids, mask)  # (B, S), or (R, B, S) for M-RoPE
    original = (
        default_positions(input_ids, mask) if original is None else original.expand(*original.shape[:-2], batch, -1)
    )
    new_mask = mask.gather(1, kept) if mask is not None else None
    mrope_delta = None
    if original.dim() == 3:  # decoding continues after the largest (t, h, w) id, as transformers' rope deltas do
        mrope_delta = original[-3:].amax(dim=(0, 2))[:, None] + 1 - length
    if positions == "contiguous":
        if original.dim() == 3:
            asking = [type(s).__name__ for s in (pre, stages.prefill) if s is not None and s.positions == "contiguous"]
            raise IncompatibleStagesError(
                f"{' and '.join(asking)} renumber(s) positions contiguously (the reference "
                "code's 1-D behaviour); M-RoPE models keep (t, h, w) ids: use mode='fixed'"
            )
        new_positions = default_positions(kept, new_mask)
        offset = original[:, -1:] - new_positions[:, -1:]
    else:
        at = kept
        if isinstance(plan, PackedTokens) and plan.source is not None:  # each token at its source's position
            mapping = torch.arange(length, device=kept.device).expand(batch, -1).clone()
            mapping.scatter_(1, kept_video, video_pos.gather(1, plan.source.to(video_pos.device)))
            at = mapping.gather(1, kept)
        new_positions, offset = original.gather(-1, at.expand(*original.shape[:-2], -1, -1)), None

    session = Session(
        stages=stages,
        num_layers=len(adapter.decoder_layers(model)),
        prompt_len=length,
        kept=kept,
        visual=visual.gather(1, kept),
        frames=frames,
        tokens_per_frame=per_frame,
        pos_offset=offset,
        mrope_delta=mrope_delta,
        mask=new_mask,
        renumber=stages.prefill is not None and stages.prefill.positions == "contiguous",
    )
    if events is not None:
        session.events, session.key_events, session.stage_info = events.gather(1, kept), plan.key_events, plan.info
    session.timings.overhead_s = overhead
    session.other_tokens = int(kept.shape[1] - session.visual[0].sum())
    cache = kwargs.get("cache")
    kwargs.update(
        input_ids=None,
        inputs_embeds=embeds.gather(1, kept[..., None].expand(-1, -1, embeds.shape[-1])),
        attention_mask=new_mask,
        position_ids=new_positions,
        cache=cache if cache is not None else DynamicCache(config=model.config),
    )
    return session


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
