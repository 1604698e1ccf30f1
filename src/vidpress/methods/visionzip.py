"""VisionZip (Yang et al., CVPR 2025): per frame, dominant tokens by vision-encoder attention plus contextual
tokens merged from the rest (docs/methods.md). Needs no attention weights from the LLM, so it works with any
attention implementation; the encoder's attention is recomputed apart from its own SDPA call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..method import Method
from ..stages import Stages
from ..stages.pre_llm.visionzip import VisionZipStage


@dataclass(frozen=True)
class VisionZip(Method):
    """VisionZip: per frame, the most attended tokens in the vision encoder plus a few merged from the rest.

    Parameters
    ----------
    retention : float
        Fraction of visual tokens entering the LLM, in (0, 1] (the references' dominant + contextual per
        frame, e.g. 42 + 7 of 196 is 25 %).
    contextual_share : float
        Share of each frame's budget spent on contextual tokens, in [0, 1]; default 1/7 (6:1).
    mode : {"fixed", "faithful"}
        ``fixed`` (default) averages a contextual token with the tokens merged into it; ``faithful`` adds the
        target to their mean, as the reference does.

    ``VisionZip(retention=1.0)`` keeps every token and reproduces the uncompressed model.
    """

    name: ClassVar[str] = "visionzip"
    retention: float = 0.25
    contextual_share: float = 1 / 7
    mode: Literal["faithful", "fixed"] = "fixed"

    def build(self) -> Stages:
        return Stages(pre_llm=VisionZipStage(self.retention, self.contextual_share, self.mode))
