"""FastVID (Shen et al., NeurIPS 2025): dynamic temporal segmentation, then density-based spatiotemporal
pruning and merging inside each segment (docs/methods.md). Pre-LLM; needs vision-encoder attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..method import Method
from ..stages import Stages
from ..stages.pre_llm.fastvid import FastVIDStage


@dataclass(frozen=True)
class FastVID(Method):
    """FastVID: segments by frame similarity; per segment, attended tokens plus density-peak merged tokens.

    The paper's symbols are given with each parameter.

    Parameters
    ----------
    retention : float
        Fraction of visual tokens entering the LLM, in (0, 1].
    threshold : float
        tau, DySeg's similarity threshold (0.9).
    min_segments : int
        c, DySeg's minimum number of segments (8).
    anchor_share : float
        d, share of each frame's budget given to density-peak anchor tokens; the rest is chosen by encoder
        attention (0.4).
    anchor_stride : int
        p, anchor-frame stride inside a segment, counted back from its last frame (4).
    merge_weight : float
        beta, minimum weight of an anchor in its merged token (0.6).
    knn : int
        k of the DPC-kNN density (4).
    mode : {"fixed", "faithful"}
        ``faithful`` reproduces the reference code's selection (LunarShen/FastVID at ``a40a109``); ``fixed``
        (default) keeps exactly the budget, never fails on short videos or large budgets, and merges each
        token once (see :mod:`vidpress.stages.pre_llm.fastvid`).

    ``FastVID(retention=1.0)`` keeps every token and reproduces the uncompressed model.
    """

    name: ClassVar[str] = "fastvid"
    retention: float = 0.25
    threshold: float = 0.9
    min_segments: int = 8
    anchor_share: float = 0.4
    anchor_stride: int = 4
    merge_weight: float = 0.6
    knn: int = 4
    mode: Literal["faithful", "fixed"] = "fixed"

    def build(self) -> Stages:
        return Stages(
            pre_llm=FastVIDStage(
                self.retention,
                self.threshold,
                self.min_segments,
                self.anchor_share,
                self.anchor_stride,
                self.merge_weight,
                self.knn,
                self.mode,
            )
        )
