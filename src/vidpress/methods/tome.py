"""ToMe (Bolya et al., ICLR 2023) in the vision tower as a peer method (:mod:`vidpress.stages.vision.tome`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from .._checks import check_mode
from ..method import Method
from ..stages import Stages
from ..stages.vision.tome import MergedBlock, TokenMerging


@dataclass(frozen=True)
class ToMe(Method):
    """ToMe = TokenMerging (vision) + MergedBlock (pre-LLM, unless ``grid``).

    Parameters
    ----------
    retention : float, optional
        Tokens per frame the LLM receives, as a share of the model's (LLaVA-OV-7B at 0.25: 49 of 196); the tower
        merges down to that many by its feature layer. Default 0.25 unless ``r`` is given.
    r : int or tuple of int, optional
        ToMe's own knob instead: tokens merged per encoder layer (constant, or one per layer), capped at half.
    grid : bool
        Map the merged tokens back onto the patch grid (each patch takes its token's features): the LLM sees the
        model's own grid and count, only the tower's cost falls; compose with any pre-LLM stage for retention.
    mode : {"fixed", "faithful"}
        How the merged block is ordered and numbered (see MergedBlock); ``faithful`` is ToMe's output order.
    proportional : bool
        ToMe's proportional attention (``prop_attn``).

    ``ToMe(r=0)`` (or ``ToMe(r=0, grid=True)``) merges nothing: the model's own tokens, uncompressed.
    """

    name: ClassVar[str] = "tome"
    retention: float | None = None
    r: int | tuple[int, ...] | None = None
    grid: bool = False
    mode: Literal["faithful", "fixed"] = "fixed"
    proportional: bool = True

    @classmethod
    def keep_everything(cls) -> ToMe:
        """Nothing merged, the tokens mapped back onto the model's grid: its own pooling and count, on every family
        ToMe runs on (without ``grid`` the unpooled tokens outnumber a pooling model's placeholders)."""
        return cls(r=0, grid=True)

    def build(self) -> Stages:
        check_mode(self.mode)  # also with grid, where no MergedBlock would check it
        retention = 0.25 if self.retention is None and self.r is None else self.retention
        vision = TokenMerging(retention=retention, r=self.r, grid=self.grid, proportional=self.proportional)
        return Stages(vision=vision, pre_llm=None if self.grid else MergedBlock(mode=self.mode))
