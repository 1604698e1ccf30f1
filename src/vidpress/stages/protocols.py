"""The stage protocols, one per slot (the table in :mod:`vidpress.stages`), and :class:`Needs`, what a stage asks
the runtime to compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Self

from torch import Tensor

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
    hidden : bool
        A prefill stage gets the alive visual tokens' hidden states at its drop layer's input
        (``LayerSignals.hidden``) and may return a :class:`~vidpress.selection.MergedSelection`.
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
    hidden: bool = False

    def scored_layer(self, drop_layer: int) -> int:
        """The layer whose attention scores the drop at ``drop_layer``: itself with ``scores_at_drop``, else the
        layer before."""
        return drop_layer if self.scores_at_drop else drop_layer - 1


class Stage:
    """Base of every stage: a frozen dataclass that declares its slot and what it needs, and maps tensors to a
    plan. Each capability the runtime or the calculator may use has a default here, so nothing is probed.

    Attributes
    ----------
    slot : {"pre_llm", "prefill", "decode"}
        Where the stage acts (class attribute of each slot's base).
    needs : Needs
        What the runtime computes for it.
    """

    slot: ClassVar[str]
    needs: Needs

    @property
    def positions(self) -> Literal["original", "contiguous"]:
        """``original``: kept tokens keep their rotary positions; ``contiguous``: the sequence is renumbered
        (the 1-D references' behaviour; refused on M-RoPE models)."""
        return "original"

    def for_depth(self, num_layers: int) -> Self:
        """This stage for an LLM of ``num_layers`` layers (layer fractions and budgets resolved)."""
        return self


@dataclass(frozen=True)
class TowerCounts:
    """What a vision stage makes the tower encode, counted before any content is seen (the calculator's input).

    Attributes
    ----------
    passes : tuple of (frames, patches per frame[, tokens merged per layer]), optional
        Each tower pass in order, when the stage encodes otherwise than the model's single pass; None: one pass.
    merges : tuple of int, optional
        Tokens merged at each tower layer of the model's pass (ToMe).
    projected : int, optional
        Tokens per frame through the projector when not every patch reaches it.
    visual_per_frame : int, optional
        Visual tokens per frame entering the LLM when the vision stage decides them (merged tokens); None: the
        pre-LLM slot decides.
    """

    passes: tuple[tuple, ...] | None = None
    merges: tuple[int, ...] | None = None
    projected: int | None = None
    visual_per_frame: int | None = None


class VisionStage(Stage):
    """Decides, before the vision tower runs, what it encodes: frames never encoded cost no vision FLOPs. The
    token grid the later slots see is unchanged (F frames of T tokens); a frame left out holds zeros, which no
    later stage may select (the runtime checks)."""

    slot: ClassVar[str] = "vision"

    def encoded_frames(self, frames: int, tokens_per_frame: int) -> list[int] | None:
        """The frames (of ``frames``, each ``tokens_per_frame`` tokens as the LLM sees them) the tower encodes, in
        order; None: all of them."""
        return None

    def tower_counts(self, frames: int, side: int, grid: tuple[int, int], layers: int) -> TowerCounts:
        """What the tower encodes for ``frames`` frames of ``side`` x ``side`` patches that the model turns into a
        ``grid`` of tokens, through ``layers`` encoder layers up to the feature layer; the default: the model's
        own single pass (frame skipping is :meth:`encoded_frames`)."""
        return TowerCounts()

    @property
    def deferred(self) -> bool:
        """Whether the stage decides each frame's resolution from a first pass and the question, so the runtime
        defers the video's encoding to the request (:class:`~vidpress.stages.vision.coarse_to_fine.CoarseToFine`)."""
        return False

    @property
    def merges(self) -> bool:
        """Whether the stage merges tokens inside the tower's layers, so the runtime installs the merging hooks
        (:class:`~vidpress.stages.vision.tome.TokenMerging`)."""
        return False

    @property
    def first_pass_merging(self) -> TowerMerging | None:
        """The merging a deferring stage's first pass runs the tower under (the runtime installs the merging hooks
        for it); None: an unmerged first pass, or none."""
        return None


class TowerMerging(Protocol):
    """What a vision stage that merges inside the tower (``merges``, or a first pass's ``first_pass_merging``)
    declares to the runtime and the calculator (:class:`~vidpress.stages.vision.tome.TokenMerging`)."""

    @property
    def grid(self) -> bool:
        """Whether the merged tokens are mapped back onto the patch grid (the model's own count)."""
        ...

    @property
    def proportional(self) -> bool:
        """ToMe's proportional attention."""
        ...

    def schedule(self, patches: int, layers: int, tokens_per_frame: int) -> tuple[int, ...]:
        """Tokens merged at each encoder layer up to the feature layer."""
        ...

    def tokens_left(self, patches: int, layers: int, tokens_per_frame: int) -> int:
        """Tokens per frame left at the feature layer."""
        ...


class DeferredEncoding(Protocol):
    """What a vision stage that defers the video's encoding to the request (``deferred``) declares to the runtime
    and the calculator (:class:`~vidpress.stages.vision.coarse_to_fine.CoarseToFine`)."""

    @property
    def events(self) -> Any:
        """The event stage that plans (EventPooling), which also fills the pre-LLM slot."""
        ...

    @property
    def first_pass_merging(self) -> TowerMerging | None: ...

    def plan(self, tokens: VisualTokens, first: Tensor) -> Any:
        """The per-frame strides of a request from its first pass."""
        ...

    def patch_sides(self, side: int) -> dict[int, int]: ...

    def first_stride(self) -> int: ...

    def sources(self) -> dict[int, str]: ...

    def encoded(
        self, counts: dict[int, int], frames: int, side: int, merges: tuple[int, ...] | None = None
    ) -> tuple[tuple, ...]: ...

    def passes(
        self, frames: int, grid: tuple[int, int], side: int, merges: tuple[int, ...] | None = None
    ) -> tuple[tuple, ...]: ...


class PreLLMStage(Stage):
    """Acts on projected tokens before the LLM; the plan shortens the prefill sequence. Returns a
    :class:`~vidpress.selection.Selection` over the F*T frame tokens or a :class:`~vidpress.tokens.PackedTokens`
    block replacing the video."""

    slot: ClassVar[str] = "pre_llm"

    def kept_count(self, frames: int, tokens_per_frame: int, grid: tuple[int, int] | None = None) -> int | None:
        """Visual tokens the stage keeps for a video of ``frames`` x ``tokens_per_frame``, when that is fixed
        before the content is seen (a serving engine sizes the prompt with it); None when the content decides.
        ``grid`` is the (h, w) of a frame's tokens, for stages that re-pool it (default: square)."""
        return None

    def encoded_frames(self, frames: int, tokens_per_frame: int) -> list[int] | None:
        """The only frames the plan can keep tokens of, when that is fixed before the content is seen (uniform
        frame sampling): the runtime then encodes only these. None: the plan may use any frame."""
        return None

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> Selection | PackedTokens:
        raise NotImplementedError


class PrefillStage(Stage):
    """Drops visual tokens at the input of ``layers`` during prefill (scores come from layer - 1, or from the
    drop layer itself when ``needs.scores_at_drop``)."""

    slot: ClassVar[str] = "prefill"

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers at whose input it drops, increasing (resolved for the LLM's depth by :meth:`for_depth`)."""
        raise NotImplementedError

    def __call__(self, signals: LayerSignals, ctx: StageContext | None = None) -> Selection | None:
        raise NotImplementedError


class DecodeStage(Stage):
    """Chooses, at each decoding step, which visual KV entries layers >= ``first_layer`` attend to.

    Returning None means every layer sees the full cache at this step. Storage is never deleted, so a
    token left out at one step can be selected again later (unless ``needs.trim_after_prefill``).
    """

    slot: ClassVar[str] = "decode"

    @property
    def first_layer(self) -> int:
        """The first layer it acts on."""
        raise NotImplementedError

    @property
    def follows_prefill(self) -> bool:
        """Whether its first layer is the prefill stage's first drop layer, whatever the LLM's depth makes it
        (:meth:`Stages.for_depth` sets it)."""
        return False

    def trim_counts(self, per_layer: list[int]) -> list[int]:
        """Visual KV entries each layer stores after prefill, from the prefill counts (unchanged by default)."""
        return list(per_layer)

    def __call__(self, signals: LayerSignals, ctx: StageContext) -> Selection | None:
        raise NotImplementedError


class SourcePositions(PreLLMStage):
    """Pre-LLM stages with a faithful/fixed ``mode`` that pack their own block (METok stage 1, VisionZip):
    the references renumber the block contiguously (``faithful``); ``fixed`` puts every token at its source's
    original position (:attr:`~vidpress.tokens.PackedTokens.source`)."""

    mode: str

    @property
    def positions(self) -> Literal["original", "contiguous"]:
        return "contiguous" if self.mode == "faithful" else "original"
