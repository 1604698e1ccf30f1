"""A composition of stages, one per slot (:class:`Stages`, :func:`compose`), and the checks of what a composition
encodes and keeps: the frames its vision tower encodes, a pre-LLM stage's declared token count, a plan against the
encoded frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from ..errors import IncompatibleStagesError, InvalidParameterError, VidpressError
from ..selection import Selection
from ..tokens import PackedTokens
from .protocols import DecodeStage, PrefillStage, PreLLMStage, Stage, VisionStage


@dataclass(frozen=True)
class Stages:
    """One stage per slot; None leaves that part of the model untouched."""

    pre_llm: PreLLMStage | None = None
    prefill: PrefillStage | None = None
    decode: DecodeStage | None = None
    vision: VisionStage | None = None

    def encoded_frames(self, frames: int, tokens_per_frame: int) -> list[int] | None:
        """The frames the vision tower needs to encode: those the vision stage encodes and the pre-LLM stage can
        use (both declare theirs, None meaning all); None when every frame is needed.

        Raises
        ------
        IncompatibleStagesError
            The two declarations share no frame (nothing would be encoded that the plan could keep).
        """
        declared = [s.encoded_frames(frames, tokens_per_frame) for s in (self.vision, self.pre_llm) if s is not None]
        sets = [set(d) for d in declared if d is not None]
        if not sets:
            return None
        keep = sorted(set.intersection(*sets))
        if not keep:
            raise IncompatibleStagesError(
                f"the vision stage encodes none of the frames the pre-LLM stage keeps ({declared}); change one"
            )
        return None if len(keep) == frames else keep

    def for_depth(self, num_layers: int) -> Stages:
        """Resolve stages whose layers depend on the LLM's depth (e.g. PyramidDrop's fractions, FastV's
        retention target) for an LLM of ``num_layers`` layers.

        Raises
        ------
        BudgetError
            A prefill layer beyond the model's depth, or an unreachable retention.
        InvalidParameterError
            A decode stage starting at or beyond the last layer (it would never act).
        """
        decode = self.decode
        prefill = None if self.prefill is None else self.prefill.for_depth(num_layers)
        if decode is not None and decode.follows_prefill:
            if prefill is None:
                raise IncompatibleStagesError(
                    f"{type(decode).__name__} starts at the prefill stage's first pruning layer, and there is no "
                    "prefill stage: give it a first_layer"
                )
            decode = dataclasses.replace(cast(Any, decode), first_layer=prefill.layers[0])  # a dataclass stage
        if decode is not None and not 0 <= decode.first_layer < num_layers:
            raise InvalidParameterError(
                f"{type(decode).__name__} starts at layer {decode.first_layer} but the LLM has {num_layers} layers "
                f"(0..{num_layers - 1}): it would never act; choose a first layer (DyCoke's L) below {num_layers}"
            )
        return Stages(
            None if self.pre_llm is None else self.pre_llm.for_depth(num_layers),
            prefill,
            None if decode is None else decode.for_depth(num_layers),
            None if self.vision is None else self.vision.for_depth(num_layers),
        )

    @property
    def name(self) -> str:
        parts = [type(s).__name__ for s in (self.vision, self.pre_llm, self.prefill, self.decode) if s is not None]
        return "+".join(parts) or "uncompressed"


def declared_count(stage: PreLLMStage, frames: int, tokens_per_frame: int, grid: tuple[int, int] | None = None) -> int:
    """``stage``'s :meth:`~PreLLMStage.kept_count`, which a caller sizing a prompt before the content needs.

    Raises
    ------
    InvalidParameterError
        The stage lets the content decide its count.
    """
    count = stage.kept_count(frames, tokens_per_frame, grid)
    if count is None:
        raise InvalidParameterError(
            f"{type(stage).__name__} decides its token count from the content; a prompt sized before the video is "
            "seen needs a stage that declares it (e.g. mode='fixed')"
        )
    return count


def check_encoded(plan: Selection | PackedTokens, encoded: list[int], tokens_per_frame: int) -> None:
    """Raise unless ``plan`` keeps tokens of the ``encoded`` frames only (a skipped frame holds zeros).

    Raises
    ------
    VidpressError
        The plan keeps a token of a frame the vision tower did not encode.
    """
    if isinstance(plan, Selection):
        used = plan.keep // tokens_per_frame
    else:
        used = plan.frame_of[plan.frame_of >= 0]
    skipped = set(used.unique().tolist()) - set(encoded)
    if skipped:
        raise VidpressError(
            f"the pre-LLM plan keeps tokens of frames {sorted(skipped)[:8]} that the vision stage did not encode; "
            "the stages disagree on the frames to encode"
        )


def lay_back(x: Tensor, encoded: list[int], frames: int, tokens_per_frame: int) -> Tensor:
    """Tokens of the ``encoded`` frames laid back on all ``frames``, on the token axis (second to last):
    (..., F'*T + E, D) -> (..., F*T + E, D), zeros where a frame was not encoded, the ``E`` extra tokens last."""
    kept = len(encoded) * tokens_per_frame
    shape = (*x.shape[:-2], frames * tokens_per_frame + x.shape[-2] - kept, x.shape[-1])
    full = x.new_zeros(shape)
    index = torch.tensor([f * tokens_per_frame + t for f in encoded for t in range(tokens_per_frame)], dtype=torch.long)
    full[..., index.to(x.device), :] = x[..., :kept, :]
    full[..., frames * tokens_per_frame :, :] = x[..., kept:, :]
    return full


def _slot_of(stage: object) -> str:
    """The slot a bare stage fills, as its base class declares."""
    if not isinstance(stage, Stage):
        raise IncompatibleStagesError(
            f"{stage!r} is not a stage: subclass vidpress.stages.VisionStage, PreLLMStage, PrefillStage or DecodeStage"
        )
    return stage.slot


def compose(*parts: Stages | Stage) -> Stages:
    """Combine compositions and bare stages slot by slot into one :class:`Stages`.

    Raises
    ------
    IncompatibleStagesError
        When two parts fill the same slot (never silently overridden), or a part is not a stage.
    """
    slots: dict[str, Any] = {}
    for stages in parts:
        if isinstance(stages, Stages):
            pairs = [(f.name, getattr(stages, f.name)) for f in dataclasses.fields(Stages)]
        else:
            pairs = [(_slot_of(stages), stages)]
        for slot, stage in pairs:
            if stage is None:
                continue
            if slot in slots:
                raise IncompatibleStagesError(
                    f"two stages fill the {slot!r} slot: {slots[slot]!r} and {stage!r}; drop one of them"
                )
            slots[slot] = stage
    return Stages(**slots)
