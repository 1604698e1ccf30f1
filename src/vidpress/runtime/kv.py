"""Decode-time KV: the entries each layer attends to while decoding, and the cache trimmed after prefill.

A decode stage's selection is handed to a layer as a view of the cache (:class:`ViewCache`) whose ``update``
stores the full keys and values and returns only the selected entries (storage is never deleted); a stage that
trims after prefill (METok's third stage) replaces the layers' stored keys and values by the survivors.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor
from transformers import Cache
from transformers.cache_utils import CacheLayerMixin

from ..errors import IncompatibleStagesError, VidpressError
from ..evidence import EvidenceTrace
from ..selection import Selection
from ..tokens import LayerSignals
from .session import Session, per_row_positions


def gather_seq(x: Tensor, index: Tensor, dim: int) -> Tensor:
    """Gather (B, n) ``index`` along sequence axis ``dim`` of ``x`` (batch axis 0, broadcast if size 1)."""
    shape = list(x.shape)
    shape[dim] = index.shape[1]
    view = [index.shape[0] if i == 0 else (index.shape[1] if i == dim else 1) for i in range(x.dim())]
    if x.shape[0] == 1 and index.shape[0] > 1:
        x = x.expand(index.shape[0], *x.shape[1:])
    shape[0] = index.shape[0]
    return x.gather(dim, index.view(view).expand(shape))


class ViewCache(Cache):
    """One attention call's view of a transformers ``Cache``: it shares the cache's layers, so every read is the
    cache's own, and :meth:`update` stores the new entries in the full cache and returns the keys and values at
    ``index`` (B, n) along the sequence axis (decode-time pruning: the entries still alive)."""

    def __init__(self, cache: Cache, index: Tensor):
        super().__init__(layers=cache.layers)
        self._cache, self._index = cache, index

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        keys, values = self._cache.update(key_states, value_states, layer_idx, *args, **kwargs)
        return gather_seq(keys, self._index, 2), gather_seq(values, self._index, 2)


def attended_evidence(session: Session, layer: int, view: Tensor | None) -> float:
    """The share of the evidence held by the prompt entries ``layer`` attends to at this decoding step: those in the
    decode stage's ``view`` (generated entries point at entry 0, the prompt's first, which is text), or without one
    every stored entry."""
    stored = session.layout(layer, stored=True)
    attended = stored
    if view is not None:
        view = view.to(stored.device)
        attended = torch.where(view < stored.shape[1], stored.gather(1, view.clamp(max=stored.shape[1] - 1)), 0)
    return cast(EvidenceTrace, session.evidence).shares(attended)[1]


def trim_cache(session: Session, cache: Cache, first_layer: int) -> None:
    """Keep, in layers >= ``first_layer``, only the prompt entries alive at the last layer (METok stage 3).

    Prefill layouts are nested, so the last layer's set is what survives every later pruning step. Cache layers
    have no API to select along the sequence (``crop`` keeps a prefix, ``batch_select_indices`` selects rows), so
    the layer's ``keys`` / ``values`` are replaced, as NVIDIA/kvpress's presses do.
    """
    final = session.layout(session.num_layers - 1)
    member = torch.zeros_like(session.visual).scatter_(1, final, True)  # (B, S0)
    session.stored = list(session.layouts)
    for layer in range(first_layer, session.num_layers):
        current = session.layout(layer)
        if current.shape[1] == final.shape[1]:
            continue
        local = per_row_positions(member.gather(1, current))
        store = cache.layers[layer]
        if not isinstance(store, CacheLayerMixin) or store.keys is None or store.values is None:
            raise IncompatibleStagesError(
                f"layer {layer}'s cache is a {type(store).__name__}, which holds no keys and values to trim; "
                "run this model without a decode stage that trims after prefill"
            )
        index = local.to(store.keys.device)
        store.keys, store.values = gather_seq(store.keys, index, 2), gather_seq(store.values, index, 2)
        session.stored[layer] = current.gather(1, local)


def select_view(session: Session, layer: int, scores: Tensor) -> None:
    """Run the decode stage on ``layer``'s scores (B, S) of this decoding step and keep its choice as the session's
    view: every entry that is not a visual token, and the visual tokens it keeps.

    Raises
    ------
    VidpressError
        No decode stage to use the scores.
    IncompatibleStagesError
        Layers from the stage's first on hold different visual tokens (a prefill drop after that layer).
    """
    stage = session.stages.decode
    if stage is None:
        raise VidpressError(f"layer {layer} is scored while decoding with no decode stage to use the scores")
    # Cache layouts are fixed once prefill ends, so checking them at the first decoding step is enough.
    for later in range(stage.first_layer, session.num_layers) if session.ctx.step == 1 else ():
        here, there = session.stored[layer], session.stored[later]
        if there is not here and not (there is not None and here is not None and torch.equal(there, here)):
            raise IncompatibleStagesError(
                f"{type(stage).__name__} selects at layer {layer} but layer {later} holds a different set of "
                "visual tokens (a prefill stage dropped tokens in between); use a decode stage whose first layer "
                "comes after the last prefill drop"
            )
    visual_mask = session.visual_at(layer, stored=True)
    visual = per_row_positions(visual_mask).to(scores.device)
    plan: Selection | None = stage(LayerSignals(layer=layer, scores=scores.gather(1, visual)), session.ctx)
    if plan is None:
        session.view = None
        return
    total = scores.shape[1]
    others = per_row_positions(
        torch.cat([~visual_mask, visual_mask.new_ones(visual_mask.shape[0], total - visual_mask.shape[1])], 1).to(
            scores.device
        )
    )
    session.view = torch.cat([others, visual.gather(1, plan.keep.to(scores.device))], 1).sort(1).values
    session.view_visual = plan.num_kept
