"""Layer-level surgery: prefill drops between decoder layers, fp32 scoring, and per-step KV views.

- Decoder-layer pre-hooks gather each layer's inputs (hidden states at drop layers; rotary embeddings,
  position ids and 4-D masks at every layer after the first drop) by the session's layout.
- Attention pre-hooks compute the declared query rows; attention post-hooks score them against the
  layer's cached keys (fp32), leaving the model's own SDPA attention untouched.
- During decoding, attention pre-hooks hand layers >= the decode stage's first layer the decode stage's view of
  the cache (:mod:`.kv`), and attention post-hooks give that stage its scores.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor
from transformers import Cache

from ..errors import VidpressError
from ..selection import MergedSelection
from ..tokens import LayerSignals
from .kv import ViewCache, attended_evidence, gather_seq, select_view
from .layout import default_positions
from .scoring import attention_rows
from .session import Session, per_row_positions

if TYPE_CHECKING:
    from ..adapters.base import Adapter
    from ..stages import Stages


def _rows(session: Session, layer: int, length: int, decoding: bool) -> Tensor:
    """Positions (R,) of the query rows scored at ``layer``."""
    stage = session.stages.decode if decoding else session.stages.prefill
    if stage is None:
        raise VidpressError(f"layer {layer} is scored with no stage of this request to use the scores")
    if decoding or stage.needs.query_rows == "last":
        return torch.tensor([length - 1])
    visual = session.visual_at(layer)
    last_visual = int((visual.long() * torch.arange(visual.shape[1], device=visual.device)).amax())
    return torch.arange(last_visual + 1, length)


def layer_positions(session: Session, index: Tensor, kwargs: dict, rotary: Any, hidden: Tensor) -> dict:
    """Rotary embeddings, position ids and 4-D mask of the base-layout entries ``index`` (B, n) for one layer's
    call: gathered from the base layout's, or numbered 0..n-1 afresh when drops renumber contiguously."""
    out: dict[str, Any] = {}
    index = index.to(hidden.device)
    if session.renumber:
        mask = None if session.mask is None else session.mask.to(index.device).gather(1, index)
        out["position_ids"] = default_positions(index, mask)
        out["position_embeddings"] = rotary(hidden, out["position_ids"])
    else:
        cos, sin = kwargs["position_embeddings"]
        out["position_embeddings"] = (gather_seq(cos, index, 1), gather_seq(sin, index, 1))
        if kwargs.get("position_ids") is not None:
            out["position_ids"] = gather_seq(kwargs["position_ids"], index, 1)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, Tensor) and mask.dim() == 4:
        out["attention_mask"] = gather_seq(gather_seq(mask, index, 2), index, 3)
    return out


def _key_mask(mask: Any) -> Tensor | None:
    """(B, n) bool of the keys a 4-D attention mask (B, 1, q, n) lets the last query row see; None without one."""
    if not isinstance(mask, Tensor) or mask.dim() != 4:
        return None
    return mask[:, 0, -1, :].bool() if mask.dtype == torch.bool else mask[:, 0, -1, :] == 0


def drop_layer_scores(
    session: Session, adapter: Adapter, module: Any, hidden: Tensor, call: dict, layer: int
) -> Tensor:
    """(B, n) fp32 attention of the declared query rows at ``layer``'s own attention, from its input ``hidden``
    (B, n, D) and that input's ``call`` kwargs (positions, mask), before anything is dropped there."""
    attention, normed = adapter.attention_input(module, hidden)
    rows = _rows(session, layer - 1, hidden.shape[1], False).to(hidden.device)
    cos, sin = call["position_embeddings"]
    query = adapter.query_states(attention, normed[:, rows], cos[:, rows], sin[:, rows])
    keys = adapter.key_states(attention, normed, cos, sin)
    return attention_rows(
        query, keys, attention.scaling, row_positions=rows, key_mask=_key_mask(call.get("attention_mask"))
    )


def layer_pre_hook(session_of, adapter: Adapter, rotary: Any, layer: int):
    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        session: Session | None = session_of(kwargs.get("cache"))
        if session is None:
            return None
        if session.ctx.step > 0:
            shift = session.position_shift(layer)
            if not shift:
                return None
            # the cache holds this layer's prompt at renumbered positions: decoding continues from there
            kwargs["position_ids"] = kwargs["position_ids"] - shift
            kwargs["position_embeddings"] = rotary(args[0] if args else kwargs["hidden_states"], kwargs["position_ids"])
            return args, kwargs
        hidden = args[0] if args else kwargs.pop("hidden_states")
        stage = session.stages.prefill
        if stage is not None and layer in stage.layers:
            start = time.perf_counter()
            before = session.layout(layer - 1)
            visual = per_row_positions(session.visual_at(layer - 1))
            scored = stage.needs.scored_layer(layer)
            if stage.needs.scores_at_drop:
                call = (
                    layer_positions(session, before, kwargs, rotary, hidden)
                    if session.layouts[layer - 1] is not None
                    else kwargs
                )
                scores = drop_layer_scores(session, adapter, module, hidden, call, layer)
            else:
                scores = session.scores.pop(scored)
            scores = scores.gather(1, visual.to(scores.device))
            events = None if session.events is None else session.events.gather(1, before).gather(1, visual)
            states = gather_seq(hidden, visual.to(hidden.device), 1) if stage.needs.hidden else None
            signals = LayerSignals(scored, scores, events, session.key_events, session.visual_count(0), states)
            plan = stage(signals, session.ctx)
            if isinstance(plan, MergedSelection):  # the kept tokens take their merged states before the drop
                rows = visual.gather(1, plan.keep.to(visual.device)).to(hidden.device)
                index = rows[..., None].expand(-1, -1, hidden.shape[-1])
                hidden = hidden.scatter(1, index, plan.features.to(hidden.device, hidden.dtype))
                if session.evidence is not None:
                    alive = before.gather(1, visual)
                    session.evidence.merge(alive.gather(1, plan.keep.to(alive.device)), alive, plan.weights)
            if plan is not None:
                others = per_row_positions(~session.visual_at(layer - 1))
                local = torch.cat([others, visual.gather(1, plan.keep.to(visual.device))], 1).sort(1).values
                hidden = gather_seq(hidden, local.to(hidden.device), 1)
                session.layouts[layer] = before.gather(1, local)
                if session.evidence is not None:
                    found = session.evidence.shares(session.layout(layer))[:2]
                    session.evidence.prefill[layer:] = [found] * (session.num_layers - layer)
            session.timed(start)
        elif layer > 0 and session.layouts[layer - 1] is not None:
            session.layouts[layer] = session.layouts[layer - 1]
        layout = session.layouts[layer]
        if layout is not None:
            kwargs.update(layer_positions(session, layout, kwargs, rotary, hidden))
        return (hidden, *args[1:]), kwargs

    return hook


def deepstack_hook(session_of, layer: int):
    """A decoder layer's forward hook adding, during prefill, the request's DeepStack features of ``layer`` to
    the visual tokens alive at it (as the model's ``_deepstack_process`` adds them to every visual position)."""

    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        session: Session | None = session_of(kwargs.get("cache"))
        if session is None or session.ctx.step > 0 or session.deepstack is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        rows = per_row_positions(session.visual_at(layer)).to(hidden.device)  # (B, k) rows of this layer's input
        entries = session.layout(layer).to(hidden.device).gather(1, rows)
        features = session.deepstack[layer].to(hidden.device)
        index = rows[..., None].expand(-1, -1, hidden.shape[-1])
        added = hidden.gather(1, index) + features.gather(1, entries[..., None].expand_as(index)).to(hidden.dtype)
        hidden = hidden.clone().scatter_(1, index, added)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook


def attention_pre_hook(session_of, adapter: Adapter, layer: int):
    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        cache = kwargs.get("cache")
        session: Session | None = session_of(cache)
        if session is None:
            return None
        decoding = session.ctx.step > 0
        stage = session.stages.decode if decoding else session.stages.prefill
        if stage is not None and layer in stage.needs.score_layers:
            start = time.perf_counter()
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            rows = _rows(session, layer, hidden.shape[1], decoding).to(hidden.device)
            cos, sin = kwargs["position_embeddings"]
            session.queries[layer] = adapter.query_states(module, hidden[:, rows], cos[:, rows], sin[:, rows])
            session.query_rows = rows
            session.timed(start)
        if decoding:
            index = session.physical_index(layer, session.logical_len - session.prompt_len)
            mask = kwargs.get("attention_mask")
            if index is not None and isinstance(mask, Tensor) and mask.dim() == 4:
                mask = gather_seq(mask, index.to(mask.device), 3)
            decode = session.stages.decode
            view = session.view if decode is not None and layer >= decode.first_layer else None
            if view is not None:
                kwargs["cache"] = ViewCache(cast(Cache, cache), view)  # the session's: a Cache
                if isinstance(mask, Tensor) and mask.dim() == 4:
                    mask = gather_seq(mask, view.to(mask.device), 3)
                session.decode_visual_sum[layer] += session.view_visual
            else:
                session.decode_visual_sum[layer] += session.visual_count(layer, stored=True)
            if session.evidence is not None:
                session.evidence.decode_sum[layer] += attended_evidence(session, layer, view)
            kwargs["attention_mask"] = mask
        return args, kwargs

    return hook


def attention_post_hook(session_of, layer: int):
    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        cache = kwargs.get("cache")
        cache = getattr(cache, "_cache", cache)
        session: Session | None = session_of(cache)
        if cache is None or session is None or layer not in session.queries:
            return
        start = time.perf_counter()
        query = session.queries.pop(layer)
        keys = cache.layers[layer].keys
        decoding = session.ctx.step > 0
        rows = None if decoding else session.query_rows
        key_mask = _key_mask(kwargs.get("attention_mask"))
        scores = attention_rows(query, keys, module.scaling, row_positions=rows, key_mask=key_mask)
        if decoding:
            select_view(session, layer, scores)
        else:
            session.scores[layer] = scores
        session.timed(start)

    return hook


def register_layer_hooks(adapter: Adapter, stages: Stages, session_of, add) -> None:
    """Register the decoder-layer hooks: DeepStack injection for the family's levels, and, with a prefill or decode
    stage, the layer pre-hooks (prefill drops), attention pre-hooks (query rows, KV views) and attention
    post-hooks on the layers either stage scores."""
    layers = adapter.decoder_layers()
    # the model adds none once it got no pixels; as the model, none past its last layer
    for level in range(min(adapter.deepstack_levels(), len(layers))):
        add(layers[level].register_forward_hook(deepstack_hook(session_of, level), with_kwargs=True))
    if stages.prefill is None and stages.decode is None:
        return
    scored = {i for stage in (stages.prefill, stages.decode) if stage is not None for i in stage.needs.score_layers}
    rotary = adapter.language_model().rotary_emb
    for index, layer in enumerate(layers):
        if stages.prefill is not None:
            add(layer.register_forward_pre_hook(layer_pre_hook(session_of, adapter, rotary, index), with_kwargs=True))
        attention = layer.self_attn
        add(attention.register_forward_pre_hook(attention_pre_hook(session_of, adapter, index), with_kwargs=True))
        if index in scored:
            add(attention.register_forward_hook(attention_post_hook(session_of, index), with_kwargs=True))
