"""HoliTom's inner-LLM merging (Shao et al., NeurIPS 2025): at layer K, FastV's ranking chooses the visual tokens
that stay, and every other visual token is merged into the kept token whose hidden state is most like its own
(docs/methods.md).

Reference: cokeshao/HoliTom ``holitom/modeling_qwen2.py`` (``Qwen2Model_holitom.forward``, the block at
``layer_idx == HOLITOM_k``) at ``b1d1412``: layer K - 1's attention of the last prompt token (head mean) ranks
the video span; the top ``round(n * (1 - R))`` stay (Python's ``round``) at their original positions; each
other token, in position order, joins the kept token of highest cosine similarity (ties to the highest-ranked).

faithful vs fixed (the kept set and the assignment are the same):

- ``faithful``: the reference's running average: for each joining token in position order, ``kept = (kept +
  joining) / 2``, so a token's weight halves with every later join (the kept token's own is 1/2^m).
- ``fixed`` (default): a kept token becomes the plain mean of itself and every token that joined it.

The reference's span is the whole video block, LLaVA-OV's trailing newline included; here only visual tokens
are ranked and merged, and the newline stays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..._checks import check_mode
from ...errors import BudgetError, VidpressError
from ...selection import MergedSelection
from ...tokens import LayerSignals, StageContext
from .attention_rank import AttentionRank


def merge_weights(keep_order: Tensor, hidden: Tensor, running: bool) -> tuple[Tensor, Tensor]:
    """Each token of ``hidden`` (n, D) not in ``keep_order`` (K,) (the kept tokens, highest-ranked first) joins the
    kept token of highest cosine similarity. Returns the kept tokens in ascending index order, (K,), and their
    weights on the n tokens, (K, n) float32: the running average in position order (``running``), else the mean."""
    n, count = hidden.shape[0], len(keep_order)
    kept = torch.zeros(n, dtype=torch.bool, device=hidden.device)
    kept[keep_order] = True
    joining = (~kept).nonzero()[:, 0]
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    target = (unit[joining] @ unit[keep_order].T).argmax(-1) if count and len(joining) else joining[:0]
    weights = torch.nn.functional.one_hot(keep_order, n).float()  # (K, n), rows in rank order
    if running:
        for token, into in zip(joining.tolist(), target.tolist()):
            weights[into] /= 2
            weights[into, token] = 0.5
    else:
        weights[target, joining] = 1.0
        weights /= weights.sum(-1, keepdim=True)
    order = keep_order.argsort()
    return keep_order[order], weights[order]


@dataclass(frozen=True)
class SimilarityMerge(AttentionRank):
    """HoliTom's inner-LLM merge: FastV's drop at layer K (``round(n * (1 - R))`` kept by layer K - 1's last-token
    attention) where each dropped visual token is first merged into its most similar kept token.

    Parameters
    ----------
    schedule : tuple of (layer, key_fraction, other_fraction)
        As :class:`AttentionRank`, one step: HoliTom's K and 1 - R.
    depth : int, optional
        The LLM depth K was chosen for (28: LLaVA-OV-7B); a shallower LLM gets K at the same fraction of its depth.
    mode : {"fixed", "faithful"}
        How the merged hidden states are formed (module docstring).

    Returns a :class:`~vidpress.selection.MergedSelection` (the kept tokens and their merged hidden states).

    Raises
    ------
    InvalidParameterError
        As :class:`AttentionRank`; an unknown ``mode``.
    BudgetError
        No visual token would stay to merge the others into.
    VidpressError
        Called without the hidden states (``LayerSignals.hidden``), outside the runtime.
    """

    mode: Literal["faithful", "fixed"] = "fixed"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_mode(self.mode)
        object.__setattr__(self, "needs", dataclasses.replace(self.needs, hidden=True))

    def for_depth(self, num_layers: int) -> SimilarityMerge:
        resolved = super().for_depth(num_layers)
        return SimilarityMerge(
            schedule=resolved.schedule, query_rows=self.query_rows, count_rule=self.count_rule, mode=self.mode
        )

    def __call__(self, signals: LayerSignals, ctx: StageContext | None = None) -> MergedSelection:
        plan = super().__call__(signals, ctx)
        if plan.num_kept == 0 and plan.n:
            raise BudgetError(
                f"keeping {self.schedule[0][1]} of {plan.n} visual tokens keeps none to merge the others into (the "
                "reference fails there); lower HoliTom's R"
            )
        if signals.hidden is None:
            raise VidpressError("SimilarityMerge needs the visual tokens' hidden states (LayerSignals.hidden)")
        keep, features, weights = [], [], []
        for b in range(plan.batch_size):
            kept = plan.keep[b].to(signals.scores.device)
            # highest-ranked first: the reference's order, which decides similarity ties
            ranked = kept[signals.scores[b, kept].float().argsort(descending=True, stable=True)]
            order, weight = merge_weights(ranked, signals.hidden[b], self.mode == "faithful")
            keep.append(order)
            weights.append(weight)
            features.append((weight.to(signals.hidden.device) @ signals.hidden[b].float()).to(signals.hidden.dtype))
        return MergedSelection(torch.stack(keep), plan.n, torch.stack(features), torch.stack(weights))
