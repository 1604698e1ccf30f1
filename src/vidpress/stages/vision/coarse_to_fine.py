"""METok coarse-to-fine: event-aware compression *during* vision encoding (docs/methods.md).

METok's fixed-budget event stage (:class:`~vidpress.stages.pre_llm.event_pooling.EventPooling` with a
``retention``) gives each frame a stride on the model's token grid: 1 (the model's own tokens), 2 or 4. A frame
pooled by 4 anyway needs no full-resolution encoding, so the tower runs:

1. a first pass over every frame at the low stride's resolution: the patch grid that the model's 2x2 pooling
   turns into exactly the low stride's tokens (LLaVA-OV at 384 px: 8 x 8 patches, 112 px, for 4 x 4 tokens);
   events, key events and key frames come from these tokens and the question, as METok plans them;
2. the frames the plan keeps at stride 1 at full resolution, and those at stride 2 at the middle resolution.

Frames at the low stride keep their first-pass tokens. Vision FLOPs: every frame at the low resolution plus
the stride-1 and stride-2 frames at theirs; how many frames take each is fixed by (F, grid, retention)
(:meth:`CoarseToFine.passes`), so the calculator and the runtime agree. Tokens at a lower resolution are the
tower's own at that resolution, not a pooling of the full-resolution ones: the accuracy cost is measured, not
assumed (docs/benchmarks.md).

``first_pass="tome"`` makes the first pass full resolution under ToMe instead (:class:`TokenMerging` with
``grid``: every patch takes its merged token's features, the model's projector and pooling run unchanged). The
tower then only sees its own resolution, the one a small tower trained at one resolution reads well; the
stride-1 frames are encoded again without merging, and the other strides pool the first pass's grid as stage 1
pools the model's. Its accuracy against the low-resolution passes is measured in docs/benchmarks.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import Tensor

from ...errors import InvalidParameterError
from ...tokens import VisualTokens
from .. import Needs, TowerCounts, VisionStage
from ..pre_llm.budget import visual_budget
from ..pre_llm.event_pooling import EventPooling
from ..pre_llm.events import EventPlan
from .tome import TokenMerging

#: Where the frames at a stride take their tokens from: the model's own encoder at full resolution pooled by the
#: stride (``model``), the first pass's grid pooled to the stride (``first``), or a pass at the stride's own
#: resolution (``own``).
Source = Literal["model", "first", "own"]


@dataclass(frozen=True)
class CoarseToFine(VisionStage):
    """Encode each frame at the resolution METok's fixed-budget plan needs (module docstring).

    Parameters
    ----------
    events : EventPooling
        METok's event stage in its fixed-budget form (``retention`` set): the plan that chooses the strides, the
        same object the pre-LLM slot packs with.
    first_pass : {"low", "middle", "tome"}
        The first pass's resolution: the low stride's (cheapest: the low-stride frames keep the tower's own tokens
        at that resolution), or the middle stride's (the middle-stride frames keep its tokens and the low-stride
        frames pool them 2x2, closer to the full-resolution tokens a small tower was trained on; 4x the first
        pass's cost); or ``tome``: full resolution with the tower merging tokens (:attr:`first_pass_merging`),
        the middle- and low-stride frames pooling its grid.
    refine : {"strides", "full", "all"}
        ``strides`` (cheapest): the middle-stride frames at the middle stride's resolution after a low first pass,
        or pooled from the first pass's grid after the others. ``full``: the middle-stride frames at full
        resolution with the key frames, pooled 2x2 on the model's grid (exactly the tokens METok's stage 1 gives
        them; only the low-stride frames keep first-pass tokens). ``all``: every frame at full resolution, pooled
        by its stride; the first pass only plans (no vision savings: it isolates what planning from the first pass
        costs).
    first_retention : float, optional
        ``first_pass="tome"``: tokens per frame the tower leaves at its feature layer, as a share of the model's
        tokens per frame (:attr:`TokenMerging.retention`). Default ``1 / middle**2``: as many as the middle
        stride keeps, so its frames' pooled tokens stay distinct (merging further collapses each frame towards one
        token, which the testbed's LLM misreads: docs/benchmarks.md).

    Raises
    ------
    InvalidParameterError
        ``events`` is not an :class:`EventPooling` with a ``retention``; an unknown ``first_pass`` or
        ``refine``; ``first_retention`` without ``first_pass="tome"``.
    BudgetError
        ``first_retention`` outside (0, 1].
    """

    slot: ClassVar[str] = "vision"
    events: Any = None
    first_pass: Literal["low", "middle", "tome"] = "low"
    refine: Literal["strides", "full", "all"] = "strides"
    first_retention: float | None = None
    needs: Needs = field(default=Needs(text=True), init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.events, EventPooling) or self.events.retention is None:
            raise InvalidParameterError(
                "CoarseToFine needs METok's event stage in its fixed-budget form, e.g. "
                f"CoarseToFine(events=EventPooling(retention=0.25)); got {self.events!r}"
            )
        if self.first_pass not in ("low", "middle", "tome"):
            raise InvalidParameterError(f"first_pass must be 'low', 'middle' or 'tome', got {self.first_pass!r}")
        if self.first_retention is not None:
            if self.first_pass != "tome":
                raise InvalidParameterError(
                    f"first_retention sets the merging of a ToMe first pass; got first_pass={self.first_pass!r}: "
                    "set first_pass='tome' or drop first_retention"
                )
            visual_budget(self.first_retention, 1)
        if self.refine not in ("strides", "full", "all"):
            raise InvalidParameterError(f"refine must be 'strides', 'full' or 'all', got {self.refine!r}")
        if self.events.pool != "bilinear":
            raise InvalidParameterError(
                f"CoarseToFine encodes each stride's tokens at the resolution whose 2x2 bilinear pooling gives them; "
                f"the event stage pools with {self.events.pool!r}: use pool='bilinear'"
            )

    @property
    def deferred(self) -> bool:
        return True

    def plan(self, tokens: VisualTokens, first: Tensor) -> EventPlan:
        """The plan of a one-video request from its first pass ``first`` (F, T_low, D) and ``tokens`` (the model's
        grid and the question, ``tokens.text``): each frame's stride (:meth:`EventPooling.budget_plan`)."""
        return self.events.budget_plan(tokens, 0, first.mean(1))

    @property
    def first_pass_merging(self) -> TokenMerging | None:
        """The merging the first pass runs the tower under (``first_pass="tome"``), mapped back onto the grid."""
        if self.first_pass != "tome":
            return None
        middle = self.events.budget_strides()[1]
        return TokenMerging(retention=self.first_retention or 1 / middle**2, grid=True)

    def patch_sides(self, side: int) -> dict[int, int]:
        """Patch-grid side the tower encodes at, per stride of the model's token grid, for a tower whose full
        resolution is ``side`` x ``side`` patches (pooled 2x2 by the model to ``ceil(side / 2)``): the grid whose
        pooling gives exactly the stride's tokens (stride 1: ``side`` itself)."""
        pooled = math.ceil(side / 2)
        return {k: side if k == 1 else 2 * math.ceil(pooled / k) for k in self.events.budget_strides()}

    def passes(
        self, frames: int, grid: tuple[int, int], side: int, merges: tuple[int, ...] | None = None
    ) -> tuple[tuple, ...]:
        """What the tower encodes for a video of ``frames`` on the model grid ``grid`` from a ``side``-patch tower,
        as (frames, patches per frame[, tokens merged per layer]): all frames in the first pass (``merges``: its
        tower merging, a ToMe first pass), then the frames the plan encodes again (content-free counts,
        :meth:`EventPooling.allotment`)."""
        allotment = self.events.allotment(frames, grid)
        return self.encoded({k: allotment.count(k) for k in set(allotment)}, frames, side, merges)

    def tower_counts(self, frames: int, side: int, grid: tuple[int, int], layers: int) -> TowerCounts:
        """The first pass, then the frames the content-free plan encodes again (:meth:`passes`)."""
        merge = self.first_pass_merging
        merges = None if merge is None else merge.schedule(side * side, layers, math.prod(grid))
        return TowerCounts(passes=self.passes(frames, grid, side, merges))

    def first_stride(self) -> int:
        """The stride whose resolution the first pass encodes every frame at (a ToMe first pass: 1, merged)."""
        fine, middle, low = self.events.budget_strides()
        return {"low": low, "middle": middle, "tome": fine}[self.first_pass]

    def sources(self) -> dict[int, Source]:
        """Where each stride's frames take their tokens from (:data:`Source`): the key frames always from the
        model's own encoder; the others per ``refine`` and the first pass."""
        fine, middle, low = self.events.budget_strides()
        first = self.first_stride()
        out: dict[int, Source] = {fine: "model"}
        if self.refine == "all":
            out.update({middle: "model", low: "model"})
        elif self.refine == "full":
            out.update({middle: "model", low: "first"})
        else:
            out.update({middle: "own" if middle < first else "first", low: "first"})
        out[fine] = "model"  # strides may coincide: the key frames' tokens are the model's
        return out

    def encoded(
        self, counts: dict[int, int], frames: int, side: int, merges: tuple[int, ...] | None = None
    ) -> tuple[tuple, ...]:
        """(frames, patches per frame[, merges]) of each pass, in the order they run, from the frames per stride
        ``counts`` of a plan: the first pass over all ``frames`` (with ``merges`` when it merges), the model's
        own encoder on the frames it refines, then a pass at the middle stride's resolution."""
        sides = self.patch_sides(side)
        sources = self.sources()
        first = (frames, sides[self.first_stride()] ** 2) + ((merges,) if merges else ())
        model = sum(counts.get(k, 0) for k, s in sources.items() if s == "model")
        own = [(counts.get(k, 0), sides[k] ** 2) for k, s in sources.items() if s == "own"]
        return tuple(p for p in (first, (model, side**2), *own) if p[0])
