"""Controls at a visual-token budget: uniform frame subsampling, uniform spatial subsampling, random tokens.
A method that cannot beat these at a retention is not worth its complexity there.

Every pre-LLM stage in vidpress that takes a ``retention`` keeps exactly
:func:`~vidpress.stages.pre_llm.budget.visual_budget` tokens, so methods compared at the same retention feed the
LLM the same number of visual tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ...errors import BudgetError
from ...method import StageMethod
from ...selection import Selection
from ...stages import Needs, PreLLMStage
from ...tokens import StageContext, VisualTokens
from .budget import frame_budgets, spread, visual_budget


@dataclass(frozen=True)
class UniformBaseline(PreLLMStage):
    """A control at a budget of ``visual_budget(retention, F*T)`` tokens.

    Parameters
    ----------
    retention : float
        Fraction of visual tokens kept, in (0, 1].
    kind : {"frames", "spatial", "random"}
        ``frames``: keep whole frames spread evenly over the video (the remainder of the budget comes from
        one more frame, evenly strided positions); ``spatial``: every frame keeps the same number of evenly
        strided positions (the first frames take the remainder); ``random``: tokens drawn uniformly without
        replacement, a draw of its own for every video (see ``seed``).
    seed : int
        For ``random``: each batch row's draw is seeded by ``seed`` and a fingerprint of that row's features, so a
        video gets the same draw every time (on one device), whatever else is in the batch, and different videos
        get independent draws. One draw shared by every video would be a fixed positional pattern: over a set of
        videos whose content is not uniform over positions it is biased (e.g. it kept 0.44 of the needles at 50 %
        on the needle split, whose needles sit in the top and bottom rows).
    """

    retention: float = 0.25
    kind: Literal["frames", "spatial", "random"] = "frames"
    seed: int = 0
    needs: Needs = field(default=Needs(), init=False, repr=False)

    def __post_init__(self) -> None:
        visual_budget(self.retention, 1)
        if self.kind not in ("frames", "spatial", "random"):
            raise BudgetError(f"kind must be 'frames', 'spatial' or 'random', got {self.kind!r}")

    def kept_count(self, frames: int, tokens_per_frame: int, grid: tuple[int, int] | None = None) -> int:
        return visual_budget(self.retention, frames * tokens_per_frame)

    def encoded_frames(self, frames: int, tokens_per_frame: int) -> list[int] | None:
        """``frames``: the frames it keeps (the runtime encodes only these); the other kinds use every frame."""
        if self.kind != "frames":
            return None
        return self._frames_plan(frames, tokens_per_frame)[0]

    def _frames_plan(self, frames: int, per_frame: int) -> tuple[list[int], list[int]]:
        """(chosen frames, tokens kept in each): whole frames spread evenly, the remainder from one more."""
        whole, rest = divmod(visual_budget(self.retention, frames * per_frame), per_frame)
        return spread(whole + (rest > 0), frames).tolist(), [per_frame] * whole + ([rest] if rest else [])

    def _row_seed(self, sums: Tensor) -> int:
        """``seed`` mixed with a fingerprint of one video: its tokens' feature sums (F, T), float32 on the CPU."""
        digest = hashlib.blake2b(str(self.seed).encode(), digest_size=8)
        digest.update(sums.numpy().tobytes())
        return int.from_bytes(digest.digest(), "little") >> 1  # manual_seed takes up to 2**63 - 1

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> Selection:
        batch, frames, per_frame, _ = tokens.features.shape
        n = frames * per_frame
        budget = visual_budget(self.retention, n)
        if self.kind == "random":
            generator = torch.Generator()
            sums = tokens.features.float().sum(-1).cpu()  # one transfer for the batch's fingerprints
            keep = torch.stack(
                [torch.randperm(n, generator=generator.manual_seed(self._row_seed(row)))[:budget] for row in sums]
            )
        else:
            if self.kind == "frames":
                chosen, counts = self._frames_plan(frames, per_frame)
            else:
                chosen, counts = list(range(frames)), frame_budgets(budget, frames)
            keep = torch.cat([spread(c, per_frame) + f * per_frame for f, c in zip(chosen, counts) if c])
            keep = keep.expand(batch, -1)
        return Selection.from_indices(keep.to(tokens.features.device), n)


@dataclass(frozen=True)
class UniformFrames(UniformBaseline, StageMethod):
    """Uniform frame subsampling: the budget of ``retention`` spent on whole frames spread over the video."""

    name: ClassVar[str] = "frames"
    kind: Literal["frames", "spatial", "random"] = field(default="frames", init=False, repr=False)
    seed: int = field(default=0, init=False, repr=False)


@dataclass(frozen=True)
class UniformSpatial(UniformBaseline, StageMethod):
    """Uniform spatial subsampling: every frame keeps the same evenly strided share of its positions."""

    name: ClassVar[str] = "spatial"
    kind: Literal["frames", "spatial", "random"] = field(default="spatial", init=False, repr=False)
    seed: int = field(default=0, init=False, repr=False)


@dataclass(frozen=True)
class RandomTokens(UniformBaseline, StageMethod):
    """Random token dropping: ``retention`` of the visual tokens drawn uniformly (seeded by ``seed``)."""

    name: ClassVar[str] = "random"
    kind: Literal["frames", "spatial", "random"] = field(default="random", init=False, repr=False)
