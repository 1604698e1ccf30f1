"""The stage protocols: one per place a method can act.

A stage is a frozen object that maps tensors to a :class:`~vidpress.selection.Selection`. It never
touches hooks, caches, masks or positions: the runtime does, from what the stage declares in
:class:`Needs`.

=============  ===========================================  ==============================
slot           acts on                                      returns
=============  ===========================================  ==============================
``vision``     what the vision tower encodes                 the frames to encode
``pre_llm``    projected, pooled tokens (B, F, T, D)         Selection over F*T tokens, or a
                                                             PackedTokens block replacing the video
``prefill``    LLM layer inputs during prefill               Selection over alive visual tokens
``decode``     the KV cache at each decoding step            Selection over visual KV, or None
=============  ===========================================  ==============================
"""

from .composition import Stages, check_encoded, compose, declared_count, lay_back
from .protocols import (
    DecodeStage,
    DeferredEncoding,
    Needs,
    PrefillStage,
    PreLLMStage,
    SourcePositions,
    Stage,
    TowerCounts,
    TowerMerging,
    VisionStage,
)

__all__ = [
    "DecodeStage",
    "DeferredEncoding",
    "Needs",
    "PreLLMStage",
    "PrefillStage",
    "SourcePositions",
    "Stage",
    "Stages",
    "TowerCounts",
    "TowerMerging",
    "VisionStage",
    "check_encoded",
    "compose",
    "declared_count",
    "lay_back",
]
