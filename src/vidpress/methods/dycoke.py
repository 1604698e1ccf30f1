"""DyCoke (Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language Models", CVPR 2025).

TTM before the LLM plus dynamic visual-KV selection at every decoding step. See docs/methods.md and the two
stage modules for the faithful/fixed differences.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from ..method import Method
from ..stages import Stages
from ..stages.decode.dynamic_kv import DynamicKV
from ..stages.pre_llm.temporal_merge import TemporalMerge


@dataclass(frozen=True)
class DyCoke(Method):
    """DyCoke = TemporalMerge (pre-LLM) + DynamicKV (decode).

    Parameters
    ----------
    k : float
        DyCoke's K, TTM pruning ratio in [0, 1] (default 0.7, the paper's main setting).
    l : int
        DyCoke's L, the first layer whose attention is restricted at decode time (default 3).
    p : float
        DyCoke's P, the fraction of visual KV left out per decoding step, in [0, 1] (default 0.7, the paper's
        value; the reference's eval script runs 0.8).
    tau : float
        Attention-change threshold for re-selection (default 0.9, hard-coded in the reference).
    mode : {"fixed", "faithful"}
        ``fixed`` is the default because the faithful loop bounds leave a frame unpruned, lose an odd F's
        last frame, crash for F <= 4, and turn pruning *off* whenever attention is stable. Use ``faithful``
        to reproduce the reference code's token counts (3,098 for F=32, T=196, K=0.7).

    ``DyCoke(k=0, p=0)`` keeps every token and reproduces the uncompressed model.
    """

    name: ClassVar[str] = "dycoke"
    k: float = 0.7
    l: int = 3
    p: float = 0.7
    tau: float = 0.9
    mode: Literal["faithful", "fixed"] = "fixed"

    @classmethod
    def keep_everything(cls) -> DyCoke:
        return cls(k=0, p=0)

    def build(self) -> Stages:
        return Stages(
            pre_llm=TemporalMerge(k=self.k, mode=self.mode),
            decode=DynamicKV(l=self.l, p=self.p, tau=self.tau, mode=self.mode),
        )

    @classmethod
    def at_retention(cls, retention: float) -> DyCoke:
        """DyCoke whose TTM keeps ``retention`` of the visual tokens (idealised count): K = 1 - (4r - 1) / 3.

        Raises
        ------
        BudgetError
            ``retention`` < 0.25: TTM keeps every fourth frame whole, so it cannot go lower.
        """
        from ..errors import BudgetError

        if not 0.25 <= retention <= 1:
            raise BudgetError(
                f"DyCoke's TTM keeps at least 25 % of visual tokens (every 4th frame whole); "
                f"retention {retention} is unreachable"
            )
        return cls(k=round(1 - (4 * retention - 1) / 3, 6))

    def idealised_retention(self) -> float:
        """The paper's TTM retention (1 + 3(1 - K)) / 4, e.g. 47.5 % at K=0.7 (code counts differ slightly)."""
        return (1 + 3 * (1 - self.k)) / 4

    def reference_variants(self) -> list[tuple[str, Method]]:
        """The other mode, so tables show the fixed and the faithful (reference-code) counts side by side."""
        other: Literal["faithful", "fixed"] = "faithful" if self.mode == "fixed" else "fixed"
        return [
            (f"dycoke {other}" + (" (reference code count)" if other == "faithful" else ""), replace(self, mode=other))
        ]
