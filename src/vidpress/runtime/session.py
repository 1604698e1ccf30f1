"""Per-request state: the token layouts per layer, positions, stage memory and measurements.

Vocabulary used by the runtime:

- *logical* positions index the prompt as the user built it (every placeholder present);
- the *base layout* is the sequence fed to layer 0 after the pre-LLM plan: ``kept`` (B, S0) holds the
  logical position of each of its entries;
- ``layouts[l]`` (B, n_l) indexes the base layout with the entries alive at layer l's input during prefill
  (None: all of them). Each layer's KV cache stores exactly those entries, then every generated token;
- ``stored[l]`` is the same for what layer l's cache holds after prefill: the prefill layout unless a decode
  stage trimmed the cache (METok stage 3).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import BudgetError
from ..evidence import EvidenceTrace
from ..stages import Stages
from ..tokens import StageContext


def per_row_positions(mask: Tensor) -> Tensor:
    """Indices of the True entries of a (B, n) mask as (B, k); every row must hold the same k."""
    counts = mask.sum(1)
    if counts.numel() and (counts != counts[0]).any():
        raise BudgetError(
            f"batch rows hold different numbers of visual tokens ({counts.tolist()}); vidpress needs the same "
            "number of frames and tokens per video in a batch: run the videos one at a time"
        )
    return mask.nonzero()[:, 1].view(mask.shape[0], -1)


@dataclass(frozen=True)
class DeferredCall:
    """A video encoding a deferring vision stage left to the request: the family's encoder entry point, its
    arguments, and the call that runs a tower pass under the first pass's merging (None: an unmerged first pass)."""

    original: Callable[..., Any]
    arguments: dict[str, Any]
    merged: Callable[[Callable[[], Tensor]], tuple[Tensor, tuple[int, ...]]] | None


@dataclass(frozen=True)
class TowerOutput:
    """What a tower that merged tokens (ToMe) left for the request: the tokens merged per encoder layer and, when
    the merged tokens are not mapped back onto the grid, the projected merged tokens (B, F, N, D), the patch ->
    token groups (B, F, P) and N, the tokens per frame through the projector."""

    merges: tuple[int, ...]
    tokens: Tensor | None = None
    groups: Tensor | None = None
    projected: int | None = None


@dataclass
class Captures:
    """What the tower calls of one request leave for its start: filled by the runtime's hooks and the video
    encoder wrapper as the video is encoded, read once by :func:`~vidpress.runtime.prefill.start_request`.

    ``projected``: the projector's latest output (the unpooled grid); ``pixels``: the vision tower's latest input
    (B*F, 3, H, W); ``encoder``: the encoder attention received per token and its keys; ``encoded``: the frames
    the tower encoded (None: all); ``deferred``: an encoding left to the request; ``merged``: a merging tower's
    output."""

    projected: Tensor | None = None
    pixels: Tensor | None = None
    encoder: tuple[Tensor, Tensor] | None = None
    encoded: list[int] | None = None
    deferred: DeferredCall | None = None
    merged: TowerOutput | None = None


@dataclass
class Timings:
    """What one request measured, in seconds, and the clock marks (``time.perf_counter``) it is measured from."""

    ttft_s: float = math.nan  # first token: vision encoding (also when generate ran it first) + LLM prefill
    vision_s: float = 0.0  # vision tower and projector, vidpress's encoder-attention work excluded
    llm_prefill_s: float = math.nan  # the LLM's prefill forward
    overhead_s: float = 0.0  # vidpress's own work before the first token
    decode_overhead_s: float = 0.0  # vidpress's own work while decoding
    decode_s: float = 0.0  # decoding forwards
    vision_before_s: float = 0.0  # encoding that generate ran before the first forward
    llm_start: float = 0.0
    step_start: float = 0.0

    def add_overhead(self, start: float, decoding: bool) -> None:
        """Add the time since ``start`` to the prefill or the decoding overhead."""
        if decoding:
            self.decode_overhead_s += time.perf_counter() - start
        else:
            self.overhead_s += time.perf_counter() - start


@dataclass
class Session:
    stages: Stages
    num_layers: int
    prompt_len: int
    kept: Tensor
    visual: Tensor
    frames: int
    tokens_per_frame: int
    encoded_frames: int = 0  # frames the vision tower encoded (fewer than ``frames`` when some were skipped)
    vision_passes: tuple[tuple, ...] | None = None  # (frames, patches per frame[, merges]) of each tower pass
    vision_merges: tuple[int, ...] | None = None  # tokens the tower merged per layer (ToMe)
    projected_tokens: int | None = None  # tokens per frame through the projector, when not every patch
    pos_offset: Tensor | None = None
    mrope_delta: Tensor | None = None  # (B, 1): M-RoPE id of the first generated token minus its logical index
    mask: Tensor | None = None  # (B, S0) attention mask of the base layout
    renumber: bool = False  # prefill drops renumber positions contiguously (PyramidDrop's reference)
    logical_len: int = 0
    layouts: list[Tensor | None] = field(default_factory=list)
    stored: list[Tensor | None] = field(default_factory=list)
    events: Tensor | None = None
    key_events: Tensor | None = None
    stage_info: Any = None
    ctx: StageContext = field(init=False)
    queries: dict[int, Tensor] = field(default_factory=dict)
    scores: dict[int, Tensor] = field(default_factory=dict)
    view: Tensor | None = None
    view_visual: int = 0
    decode_steps: int = 0
    decode_visual_sum: list[float] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    started: float = field(default_factory=time.perf_counter)
    peak_memory_bytes: int = 0
    other_tokens: int = 0  # non-visual prompt entries (text, the model's extra video tokens)
    query_rows: Tensor | None = None  # positions of the prefill query rows being scored
    deepstack: Tensor | None = None  # (levels, B, S0, D) features added after the first layers (zeros off visual)
    evidence: EvidenceTrace | None = None  # where the request's evidence goes (Run.set_evidence)

    def __post_init__(self) -> None:
        self.ctx = StageContext(num_layers=self.num_layers)
        self.layouts = [None] * self.num_layers
        self.stored = self.layouts  # the same list until a trim replaces it
        self.decode_visual_sum = [0.0] * self.num_layers
        self.logical_len = self.prompt_len

    @property
    def base_len(self) -> int:
        return self.kept.shape[1]

    def layout(self, layer: int, stored: bool = False) -> Tensor:
        """(B, n_l) base-layout indices alive at ``layer`` during prefill (``stored``: held in its cache)."""
        found = (self.stored if stored else self.layouts)[layer]
        if found is None:
            return torch.arange(self.base_len, device=self.kept.device).expand(self.kept.shape[0], -1)
        return found

    def visual_at(self, layer: int, stored: bool = False) -> Tensor:
        """(B, n_l) bool: which entries of ``layer``'s prompt layout are visual tokens."""
        return self.visual.gather(1, self.layout(layer, stored))

    def visual_count(self, layer: int, stored: bool = False) -> int:
        return int(self.visual_at(layer, stored)[0].sum())

    def physical_index(self, layer: int, generated: int) -> Tensor | None:
        """(B, n_l + generated) base-layout indices of layer ``layer``'s cache; None when it is the base."""
        found = self.stored[layer]
        if found is None:
            return None
        extra = torch.arange(self.base_len, self.base_len + generated, device=found.device)
        return torch.cat([found, extra.expand(found.shape[0], -1)], dim=1)

    def position_shift(self, layer: int) -> int:
        """How far decoding positions move back at ``layer`` when drops renumber contiguously: the entries
        dropped before it (0 otherwise)."""
        found = self.layouts[layer]
        return self.base_len - found.shape[1] if self.renumber and found is not None else 0

    def timed(self, start: float) -> None:
        """Add the time since ``start`` to vidpress's overhead (prefill's, or decoding's while decoding)."""
        self.timings.add_overhead(start, self.ctx.step > 0)
