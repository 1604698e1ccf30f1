"""The stage protocols: one per place a method can act.

A stage is a frozen object that maps tensors to a :class:`~vidpress.selection.Selection`. It never
touches hooks, caches, masks or positions: the runtime does, from what the stage declares in
:class:`Needs`.

=============  ===========================================  ==============================
slot           acts on                                      returns
=============  ===========================================  ==============================
``pre_llm``    projected, pooled tokens (B, F, T, D)         Selection over F*T tokens, or a
                                                             PackedTokens block replacing the video
``prefill``    LLM layer inputs during prefill               Selection over alive visual tokens
``decode``     the KV cache at each decoding step            Selection over visual KV, or None
=============  ===========================================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from ..selection import Selection
from ..tokens import LayerSignals, PackedTokens, StageContext, VisualTokens


@dataclass(frozen=True)
class Needs:
    """What a stage asks the runtime to compute for it.

    Attributes
    ----------
    query_rows : {"none", "last", "text"}
        Which query rows to score: the last token ("last"), every text token after the video ("text").
    score_layers : tuple[int, ...]
        0-based LLM layers whose attention rows are scored (fp32, separately from the real SDPA attention).
    unpooled : bool
        A pre-LLM stage gets the projected grid before the model's pooling (``VisualTokens.unpooled``).
    text : bool
        A pre-LLM stage gets the embeddings of the text after the video (``VisualTokens.text``).
    pixels : bool
        A pre-LLM stage gets the video's pixel values (``VisualTokens.pixels``).
    encoder_attention : bool
        A pre-LLM stage gets the vision encoder's attention received per token and its keys
        (``VisualTokens.attention`` / ``keys``), computed apart from the encoder's own attention call.
    trim_after_prefill : bool
        A decode stage: once prefill ends, layers >= ``first_layer`` permanently keep only the visual KV
        entries alive at the last layer (METok stage 3); nothing is re-selected while decoding.
    scores_at_drop : bool
        A prefill stage: score each drop layer with its own attention (its input norm, q and k applied to its
        input, before the drop) instead of the attention of the layer before (PyramidDrop); the
        ``LayerSignals.layer`` it receives is then the drop layer itself.
    """

    query_rows: Literal["none", "last", "text"] = "none"
    score_layers: tuple[int, ...] = ()
    unpooled: bool = False
    text: bool = False
    pixels: bool = False
    encoder_attention: bool = False
    trim_after_prefill: bool = False
    scores_at_drop: bool = False


class SourcePositions:
    """Mixin for pre-LLM stages with a faithful/fixed ``mode`` that pack their own block (METok stage 1,
    VisionZip, FastVID): the references renumber the block contiguously (``faithful``); ``fixed`` puts every
    token at its source's original position (:attr:`~vidpress.tokens.PackedTokens.source`)."""

    mode: str

    @property
    def positions(self) -> str:
        return "contiguous" if self.mode == "faithful" else "original"


@runtime_checkable
class PreLLMStage(Protocol):
    """Acts on projected tokens before the LLM; the plan shortens the prefill sequence."""

    needs: Needs

    def __call__(self, tokens: VisualTokens, ctx: StageContext) -> Selection | PackedTokens: ...


@runtime_checkable
class PrefillStage(Protocol):
    """Drops visual tokens at the input of ``layers`` during prefill (scores come from layer - 1, or from the
    drop layer itself when ``needs.scores_at_drop``)."""

    needs: Needs
    layers: tuple[int, ...]

    def __call__(self, signals: LayerSignals, ctx: StageContext) -> Selection | None: ...


@runtime_checkable
class DecodeStage(Protocol):
    """Chooses, at each decoding step, which visual KV entries layers >= ``first_layer`` attend to.

    Returning None means every layer sees the full cache at this step. Storage is never deleted, so a
    token left out at one step can be selected again later.
    """

    needs: Needs
    first_layer: int

    def __call__(self, signals: LayerSignals, ctx: StageContext) -> Selection | None: ...
