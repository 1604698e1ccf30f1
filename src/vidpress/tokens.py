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
    """

    features: Tensor
    grid: tuple[int, int]

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
    """

    layer: int
    scores: Tensor


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
