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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import Tensor

from ...errors import InvalidParameterError
from ...tokens import VisualTokens
from .. import Needs, VisionStage
from ..pre_llm.event_pooling import EventPooling
from ..pre_llm.events import EventPlan


@dataclass(frozen=True)
class CoarseToFine(VisionStage):
    """Encode each frame at the resolution METok's fixed-budget plan needs (module docstring).

    Parameters
    ----------
    events : EventPooling
        METok's event stage in its fixed-budget form (``retention`` set): the plan that chooses the strides, the
        same object the pre-LLM slot packs with.
    first_pass : {"low", "middle"}
        The first pass's resolution: the low stride's (cheapest: the low-stride frames keep the tower's own tokens
        at that resolution), or the middle stride's (the middle-stride frames keep its tokens and the low-stride
        frames pool them 2x2, closer to the full-resolution tokens a small tower was trained on; 4x the first
        pass's cost).
    refine : {"strides", "full", "all"}
        After a low first pass, the middle-stride frames at the middle stride's resolution (``strides``, cheapest),
        or at full resolution with the key frames, pooled 2x2 on the model's grid (``full``: those frames get
        exactly the tokens METok's stage 1 gives them; only the low-stride frames keep low-resolution tokens).
        ``all``: every frame at full resolution, pooled by its stride; the first pass only plans (no vision
        savings: it isolates what planning from the first pass costs).

    Raises
    ------
    InvalidParameterError
        ``events`` is not an :class:`EventPooling` with a ``retention``.
    """

    slot: ClassVar[str] = "vision"
    events: Any = None
    first_pass: Literal["low", "middle"] = "low"
    refine: Literal["strides", "full", "all"] = "strides"
    needs: Needs = field(default=Needs(text=True), init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.events, EventPooling) or self.events.retention is None:
            raise InvalidParameterError(
                "CoarseToFine needs METok's event stage in its fixed-budget form, e.g. "
                f"CoarseToFine(events=EventPooling(retention=0.25)); got {self.events!r}"
            )
        if self.first_pass not in ("low", "middle"):
            raise InvalidParameterError(f"first_pass must be 'low' or 'middle', got {self.first_pass!r}")
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

    def patch_sides(self, side: int) -> dict[int, int]:
        """Patch-grid side the tower encodes at, per stride of the model's token grid, for a tower whose full
        resolution is ``side`` x ``side`` patches (pooled 2x2 by the model to ``ceil(side / 2)``): the grid whose
        pooling gives exactly the stride's tokens (stride 1: ``side`` itself)."""
        pooled = math.ceil(side / 2)
        return {k: side if k == 1 else 2 * math.ceil(pooled / k) for k in self.events.budget_strides()}

    def passes(self, frames: int, grid: tuple[int, int], side: int) -> tuple[tuple[int, int], ...]:
        """What the tower encodes for a video of ``frames`` on the model grid ``grid`` from a ``side``-patch tower,
        as (frames, patches per frame): all frames at the low stride's resolution (the first pass), then the
        frames the plan gives the key and the middle stride (content-free counts, :meth:`EventPooling.allotment`)."""
        allotment = self.events.allotment(frames, grid)
        return self.encoded({k: allotment.count(k) for k in set(allotment)}, frames, side)

    def first_stride(self) -> int:
        """The stride whose resolution the first pass encodes every frame at."""
        _, middle, low = self.events.budget_strides()
        return middle if self.first_pass == "middle" else low

    def encoded(self, counts: dict[int, int], frames: int, side: int) -> tuple[tuple[int, int], ...]:
        """(frames, patches per frame) of each pass, in the order they run, from the frames per stride ``counts``
        of a plan: the first pass over all ``frames``, then the strides finer than it."""
        sides = self.patch_sides(side)
        first = self.first_stride()
        finer = [k for k in dict.fromkeys(self.events.budget_strides()) if k < first]
        out = [(frames, sides[first] ** 2)]
        if self.refine == "all":
            out.append((frames, side**2))
        elif self.refine == "full":
            out.append((sum(counts.get(k, 0) for k in finer), side**2))
        else:
            out += [(counts.get(k, 0), sides[k] ** 2) for k in finer]
        return tuple(p for p in out if p[0])
