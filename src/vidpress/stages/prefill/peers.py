"""In-LLM attention-rank peers, each a method that builds one prefill stage (an :class:`AttentionRank` with the
reference's settings): FastV (Chen et al., ECCV 2024) and PyramidDrop (Xing et al., CVPR 2025).

Both drop visual tokens during prefill by the attention the last token pays them (docs/methods.md); the
pruned set then stays fixed for decoding. Scores come from a separate fp32 row, so SDPA stays in place
(the reference FastV falls back to eager attention and its peak memory rises).

References: FastV, pkunlp-icler/FastV ``src/FastV/llava-hf/transformers/src/transformers/models/llama/
modeling_llama.py`` at ``d165972`` (the block at layer K); PyramidDrop, Cooperx521/PyramidDrop
``llava/model/modeling_llama_pdrop.py`` ``pdrop_forward`` / ``pdrop_rank_drop`` at ``6444f30``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, cast

from ..._checks import check_layer, check_mode
from ...method import Method
from ...stages import Stages
from .attention_rank import AttentionRank


@dataclass(frozen=True)
class FastV(Method):
    """FastV: after layer K, keep the top ``round(N * (1 - R))`` of the N visual tokens by last-token attention.

    As in the reference: scores are layer K - 1's attention of the last prompt token (head mean), the count is
    Python's ``round`` (halves to even: 1,548 of 3,097 at R=0.5), kept tokens keep their original positions.
    Builds one prefill stage, an :class:`AttentionRank` with those settings.

    Parameters
    ----------
    k : int
        FastV's K, the first layer that sees the pruned sequence (scores come from layer K - 1); default 2.
    r : float
        FastV's R, the fraction of visual tokens dropped at layer K, in [0, 1]; default 0.5.
    retention : float, optional
        Instead of R: the mean fraction of visual tokens alive per LLM layer, in (0, 1] (R is solved for the
        model's depth; below K / layers it is unreachable and raises BudgetError).

    ``FastV(r=0)`` keeps every token and reproduces the uncompressed model.

    Raises
    ------
    InvalidParameterError
        K < 1 or R outside [0, 1].
    BudgetError
        ``retention`` outside (0, 1].
    """

    name: ClassVar[str] = "fastv"
    k: int = 2
    r: float = 0.5
    retention: float | None = None

    @classmethod
    def keep_everything(cls) -> FastV:
        return cls(k=1, r=0.0)

    def build(self) -> Stages:
        check_layer("k (FastV's K)", self.k, minimum=1)
        keep = 1.0 - self.r
        stage = AttentionRank(
            schedule=((self.k, keep, keep),), query_rows="last", count_rule="round", retention=self.retention
        )
        return Stages(prefill=stage)


@dataclass(frozen=True)
class PyramidDrop(Method):
    """PyramidDrop: at each of its layers l_s, keep ``int(N * lambda^s)`` of the N visual tokens entering the LLM.

    As in the reference, layer l_s ranks the visual tokens with its *own* attention (its input norm, q and k
    applied to its input) of the last prompt token, averaged over heads. Builds one prefill stage, an
    :class:`AttentionRank` with those settings.

    Parameters
    ----------
    layers : tuple of float or int
        Where the drops happen: fractions of depth (default (0.25, 0.5, 0.75), i.e. 8/16/24 of 32 layers as
        in the paper) or 0-based layer indices.
    lam : float
        PyramidDrop's lambda, the fraction kept at each drop, in [0, 1]; default 0.5.
    retention : float, optional
        Instead of lambda: the mean fraction of visual tokens alive per layer, in (0, 1].
    mode : {"fixed", "faithful"}
        ``faithful`` renumbers positions contiguously after every drop and shifts decoding positions to match,
        as the reference does (refused on M-RoPE models); ``fixed`` (default) keeps every token's original
        position. Counts and scores are the reference's in both.

    Raises
    ------
    InvalidParameterError
        Layers not increasing, lambda outside [0, 1], an unknown ``mode``.
    BudgetError
        ``retention`` outside (0, 1].
    """

    name: ClassVar[str] = "pdrop"
    layers: tuple[float, ...] = (0.25, 0.5, 0.75)
    lam: float = 0.5
    retention: float | None = None
    mode: Literal["faithful", "fixed"] = "fixed"

    @classmethod
    def keep_everything(cls) -> PyramidDrop:
        return cls(layers=(1, 2, 3), lam=1.0)

    def build(self) -> Stages:
        check_mode(self.mode)
        stage = AttentionRank(
            # fractions of depth stand in the layer's place until AttentionRank.for_depth resolves them
            schedule=tuple((cast(int, layer), self.lam, self.lam) for layer in self.layers),
            query_rows="last",
            count_rule="floor_input",
            score_layer="own",
            positions="contiguous" if self.mode == "faithful" else "original",
            retention=self.retention,
        )
        return Stages(prefill=stage)
