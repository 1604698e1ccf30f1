"""Data passed from the runtime to stages. Shape glossary used across vidpress:

B batch rows, F frames, T visual tokens per frame, N visual tokens in the sequence, S sequence length,
L LLM layers, D LLM hidden size, R scored query rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class VisualTokens:
    """Projected and pooled visual tokens of one video per batch row, before the LLM.

    Attributes
    ----------
    features : Tensor, shape (B, F, T, D)
        Per-frame token grid after the projector and the 2-D pooling, in the LLM's width.
    grid : tuple[int, int]
        (h, w) with h * w == T: the spatial layout of each frame's tokens (row-major).
    unpooled : Tensor, shape (B, F, h0, w0, D), optional
        The projected grid before the model's own 2-D pooling (only when a stage's ``Needs.unpooled``).
    extra : Tensor, shape (B, E, D), optional
        Tokens the model appends to the video block (LLaVA-OV's ``image_newline``), in the LLM's width.
    text : Tensor, shape (B, R, D), optional
        Input embeddings of the prompt tokens after the video (question and answer header), when a stage's
        ``Needs.text``; ``text_ids`` (B, R) are their token ids.
    pixels : Tensor, shape (B, F, 3, H, W), optional
        The video's pixel values as the vision tower received them, when a stage's ``Needs.pixels``.
    """

    features: Tensor
    grid: tuple[int, int]
    unpooled: Tensor | None = None
    extra: Tensor | None = None
    text: Tensor | None = None
    text_ids: Tensor | None = None
    pixels: Tensor | None = None

    @property
    def num_frames(self) -> int:
        return self.features.shape[1]

    @property
    def tokens_per_frame(self) -> int:
        return self.features.shape[2]


@dataclass(frozen=True)
class LayerSignals:
    """What an in-LLM stage sees at one layer (only what its :class:`~vidpress.stages.Needs` declared).

    Attributes
    ----------
    layer : int
        0-based LLM layer whose attention produced ``scores``.
    scores : Tensor, shape (B, N_alive)
        float32 attention probabilities of the declared query rows over the visual keys currently alive,
        softmax over *all* keys (visual and text), then averaged over heads and query rows.
    events : LongTensor, shape (B, N_alive), optional
        Event index of each alive visual token, when the pre-LLM stage returned a :class:`PackedTokens`.
    key_events : BoolTensor, shape (B, E), optional
        Which events the pre-LLM stage marked as key events.
    """

    layer: int
    scores: Tensor
    events: Tensor | None = None
    key_events: Tensor | None = None


@dataclass
class StageContext:
    """Read-only facts about the request plus a per-request memory namespace for each stage.

    Attributes
    ----------
    num_layers : int
        Number of LLM decoder layers.
    step : int
        Decoding step: 0 during prefill, then 1, 2, ... for each generated token's forward.
    """

    num_layers: int
    step: int = 0
    _memory: dict[int, dict[str, Any]] = field(default_factory=dict)

    def memory(self, stage: object) -> dict[str, Any]:
        """A dict owned by ``stage`` for this request only (e.g. DyCoke's previous attention)."""
        return self._memory.setdefault(id(stage), {})


@dataclass(frozen=True)
class PackedTokens:
    """A new visual block built by a pre-LLM stage (e.g. METok's event-adaptive pooling), replacing the
    video's placeholders; every token in it is a visual token.

    Attributes
    ----------
    features : Tensor, shape (B, M, D)
        The block in temporal order; M may not exceed the number of placeholders it replaces.
    events : LongTensor, shape (B, M)
        Event index of each token (0-based, non-decreasing).
    key_events : BoolTensor, shape (B, E)
        Key-event flags, E = number of events.
    frame_of : LongTensor, shape (B, M)
        Source frame of each token, -1 for tokens that belong to no frame (newlines).
    info : Any
        What the stage wants reported (e.g. an :class:`~vidpress.stages.pre_llm.events.EventPlan`).
    """

    features: Tensor
    events: Tensor
    key_events: Tensor
    frame_of: Tensor
    info: Any = None

    @property
    def num_kept(self) -> int:
        return self.features.shape[1]
