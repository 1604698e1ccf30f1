"""Whether a model's family can run a method's stages together: refused at installation, before any hook or
encoding (the family-specific refusals live in its adapter; these are the ones that depend on the combination)."""

from __future__ import annotations

from typing import cast

from ..adapters.base import Adapter
from ..errors import IncompatibleStagesError
from ..stages import DeferredEncoding, Stages
from .tome import check_merging, check_tower


def check_stages(adapter: Adapter, stages: Stages) -> None:
    """Refuse ``stages`` (already sized for the model's depth) that ``adapter``'s family cannot run together.

    Raises
    ------
    IncompatibleStagesError
        A deferring vision stage on a family that encodes at one resolution, or without its own event stage in
        the pre-LLM slot; a merging vision stage the tower or the other stages cannot take
        (:func:`~.tome.check_merging`); a prefill stage merging hidden states before DeepStack's last layer; a
        pre-LLM or prefill stage renumbering positions contiguously on an M-RoPE family.
    BudgetError
        A merging schedule the tower's layers cannot reach.
    """
    _check_vision(adapter, stages)
    _check_deepstack(adapter, stages)
    check_positions(stages, adapter.mrope, type(adapter).__name__)


def _check_vision(adapter: Adapter, stages: Stages) -> None:
    """A deferring vision stage needs a family that encodes at any resolution and its own event stage in the
    pre-LLM slot (which packs what it encoded), and with a ToMe first pass a tower that merges; a merging one
    without ``grid`` needs the pre-LLM slot to pack its merged tokens, and with ``grid`` leaves that slot to any
    stage."""
    vision = stages.vision
    if vision is not None and vision.merges:
        check_merging(adapter, stages)
    if vision is None or not vision.deferred:
        return
    if not adapter.encodes_at_any_resolution:
        raise IncompatibleStagesError(
            f"{type(adapter).__name__} does not encode frames at other resolutions; coarse-to-fine vision stages "
            "run on LLaVA-OneVision"
        )
    if stages.pre_llm is not cast(DeferredEncoding, vision).events:
        raise IncompatibleStagesError(
            f"{type(vision).__name__} plans with its own event stage, which must also fill the pre-LLM slot "
            f"(got {type(stages.pre_llm).__name__}); use METok(retention=..., coarse=True)"
        )
    if vision.first_pass_merging is not None:  # after the family's refusal, which names what runs it
        check_tower(adapter, vision.first_pass_merging)


def _check_deepstack(adapter: Adapter, stages: Stages) -> None:
    """A prefill stage that merges hidden states must act after the last layer DeepStack adds features to: those
    features belong to single tokens, and a merged token has several."""
    prefill, levels = stages.prefill, min(adapter.deepstack_levels(), len(adapter.decoder_layers()))
    if prefill is not None and prefill.needs.hidden and levels and prefill.layers[0] < levels:
        raise IncompatibleStagesError(
            f"{type(prefill).__name__} merges hidden states at layer {prefill.layers[0]}, before DeepStack's last "
            f"layer {levels - 1} on {type(adapter).__name__}; merge at layer {levels} or later"
        )


def check_positions(stages: Stages, mrope: bool, family: str) -> None:
    """Refuse pre-LLM or prefill stages that renumber the shortened prompt 0..n-1 on an M-RoPE model (``family``
    names it): its visual tokens have (t, h, w) ids, and 1-D ones are not what it was trained on. Called at
    installation from the adapter's declaration, and by the layout from the positions themselves.

    Raises
    ------
    IncompatibleStagesError
        Naming the stages and ``mode='fixed'``.
    """
    asking = [type(s).__name__ for s in (stages.pre_llm, stages.prefill) if s is not None and s.positions != "original"]
    if mrope and asking:
        raise IncompatibleStagesError(
            f"{' and '.join(asking)} renumber(s) positions contiguously (the reference code's 1-D behaviour); "
            f"{family}'s M-RoPE keeps (t, h, w) ids: use mode='fixed'"
        )
