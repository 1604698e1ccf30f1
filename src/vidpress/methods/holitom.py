"""HoliTom (Shao et al., "HoliTom: Holistic Token Merging for Fast Video Large Language Models", NeurIPS 2025).

Outer-LLM merging before the LLM (:class:`~vidpress.stages.pre_llm.holitom.HoliTomMerge`) plus inner-LLM merging
at layer K (:class:`~vidpress.stages.prefill.similarity_merge.SimilarityMerge`). See docs/methods.md and the two
stage modules for the faithful/fixed differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from .._checks import check_layer, check_ratio
from ..errors import InvalidParameterError
from ..method import Method
from ..stages import Stages
from ..stages.pre_llm.holitom import HoliTomMerge
from ..stages.prefill.similarity_merge import SimilarityMerge

#: The LLM depth HoliTom's K was chosen for (LLaVA-OV-7B's Qwen2-7B); shallower LLMs get K at the same fraction.
HOLITOM_DEPTH = 28


@dataclass(frozen=True)
class HoliTom(Method):
    """HoliTom = HoliTomMerge (pre-LLM) + SimilarityMerge (prefill, at layer ``k``).

    Parameters
    ----------
    retention : float
        The reference's ``RETAIN_RATIO``: fraction of visual tokens entering the LLM, in (0, 1] (default 0.15).
    tau, beta, contextual_share, knn, max_window
        HoliTom's tau, beta, D and K and the longest window (:class:`HoliTomMerge`; reference 0.8, 0.6, 0, 7, 1024).
    k : int or None
        HoliTom's K (``HOLITOM_k``): the layer whose input is merged, chosen for a 28-layer LLM (default 18, the
        reference's evaluation scripts); None leaves the LLM alone ("HoliTom (w/o M)").
    r : float
        HoliTom's R (``HOLITOM_r``): the fraction of the visual tokens alive at layer K merged away, in [0, 1]
        (default 0.5).
    mode : {"fixed", "faithful"}
        Both stages' mode.

    ``HoliTom(retention=1.0, r=0.0)`` keeps every token and reproduces the uncompressed model.

    Raises
    ------
    BudgetError
        ``retention`` outside (0, 1].
    InvalidParameterError
        A parameter out of range (each stage's), ``k`` below 1, ``r`` = 1.
    """

    name: ClassVar[str] = "holitom"
    retention: float = 0.15
    tau: float = 0.8
    beta: float = 0.6
    contextual_share: float = 0.0
    knn: int = 7
    max_window: int = 1024
    k: int | None = 18
    r: float = 0.5
    mode: Literal["faithful", "fixed"] = "fixed"

    @classmethod
    def keep_everything(cls) -> HoliTom:
        return cls(retention=1.0, r=0.0)

    def build(self) -> Stages:
        outer = HoliTomMerge(
            retention=self.retention,
            tau=self.tau,
            beta=self.beta,
            contextual_share=self.contextual_share,
            knn=self.knn,
            max_window=self.max_window,
            mode=self.mode,
        )
        check_ratio("r", self.r, symbol="HoliTom's R")
        if self.r == 1:
            raise InvalidParameterError("r (HoliTom's R) = 1 merges every visual token into none; choose r < 1")
        if self.k is None:
            return Stages(pre_llm=outer)
        check_layer("k (HoliTom's K)", self.k, minimum=1)
        keep = 1.0 - self.r
        inner = SimilarityMerge(
            schedule=((self.k, keep, keep),),
            query_rows="last",
            count_rule="round",
            depth=HOLITOM_DEPTH,
            mode=self.mode,
        )
        return Stages(pre_llm=outer, prefill=inner)
