"""VisionZip (Yang et al., CVPR 2025) per frame: dominant tokens by vision-encoder attention received, plus
contextual tokens that merge the rest by key similarity (docs/methods.md).

Where it acts here: on the model's pooled frame grid (LLaVA-OV's 2x2 bilinear pooling), with the encoder's
attention and keys pooled the same way - the "pooling" variant of the LLaVA-OV ports (HoliTom, DyToK).
Tokens are merged after the projector (the reference merges encoder outputs before it); the projector is
per-token, so only the non-linearity separates the two.

faithful vs fixed (selection is the same):

- ``faithful``: a contextual token is ``target + mean(tokens assigned to it)``, as the reference adds them,
  which doubles its scale; each frame's dominant tokens then its contextual ones, numbered contiguously
  from the video's start (the reference rebuilds the sequence).
- ``fixed`` (default): a contextual token is the mean of its target and the tokens assigned to it; every
  token sits in original order at its source's position (a contextual token at its target's), so the text
  after the video keeps its uncompressed positions and no gap opens between video and text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..._checks import check_mode, check_ratio
from ...method import StageMethod
from ...stages import Needs, SourcePositions
from ...tokens import Members, PackedTokens, StageContext, VisualTokens
from .budget import frame_budgets, visual_budget
from .merging import frame_members, merge_into_targets, require_encoder_attention


@dataclass(frozen=True)
class VisionZip(SourcePositions, StageMethod):
    """VisionZip (Yang et al., CVPR 2025), a method that is one pre-LLM stage: per frame, the tokens most attended
    in the vision encoder plus contextual tokens merged from the rest, at a budget of
    ``visual_budget(retention, F*T)`` tokens. ``VisionZip(retention=1.0)`` keeps every token unchanged.

    Parameters
    ----------
    retention : float
        Fraction of visual tokens entering the LLM, in (0, 1]; split evenly over frames.
    contextual_share : float
        Share of each frame's budget spent on contextual (merged) tokens, in [0, 1] (default 1/7: the 6:1
        dominant:contextual split of the LLaVA-OV ports, e.g. 42 + 7 of 196 at 25 %). Never more contextual
        tokens than tokens dropped, so ``retention=1`` keeps every token unchanged.
    mode : {"fixed", "faithful"}
        How contextual tokens are formed (see module docstring).

    Input ``tokens.features`` (B, F, T, D) with ``tokens.attention`` (B, F, T) and ``tokens.keys``
    (B, F, T, Dk); returns a :class:`~vidpress.tokens.PackedTokens` of the kept tokens frame by frame
    (order and positions per ``mode``), followed by the model's extra tokens.

    Raises
    ------
    BudgetError
        ``retention`` outside (0, 1].
    InvalidParameterError
        ``contextual_share`` outside [0, 1], unknown ``mode``.
    """

    name: ClassVar[str] = "visionzip"
    retention: float = 0.25
    contextual_share: float = 1 / 7
    mode: Literal["faithful", "fixed"] = "fixed"
    needs: Needs = field(default=Needs(encoder_attention=True), init=False, repr=False)

    def __post_init__(self) -> None:
        visual_budget(self.retention, 1)
        check_ratio("contextual_share", self.contextual_share)
        check_mode(self.mode)

    def kept_count(self, frames: int, tokens_per_frame: int, grid: tuple[int, int] | None = None) -> int:
        return visual_budget(self.retention, frames * tokens_per_frame)

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> PackedTokens:
        attention, keys = require_encoder_attention(tokens, "VisionZip")
        batch, frames, per_frame, _ = tokens.features.shape
        budgets = frame_budgets(visual_budget(self.retention, frames * per_frame), frames)
        rows, members = [], []
        for b in range(batch):
            parts, sources, weights = [], [], []
            # frame_budgets gives the first frames one token more: at most two runs of frames, each one budget
            for budget in sorted(set(budgets), reverse=True):
                chosen = [f for f, n in enumerate(budgets) if n == budget]
                if budget == 0:
                    continue
                feats, source, weight = self._frames(
                    tokens.features[b, chosen], attention[b, chosen], keys[b, chosen], budget
                )
                first = torch.tensor(chosen, device=source.device)[:, None] * per_frame
                parts.append(feats.flatten(0, 1))
                sources.append((source + first).flatten())
                weights.append(frame_members(weight, first[:, 0], sum(len(w) for w in parts[:-1])))
            source = torch.cat(sources)
            rows.append((torch.cat(parts), source // per_frame, torch.zeros_like(source), source))
            members.append(Members.cat(weights))
        return PackedTokens.from_rows(rows, 1, frames * per_frame, tokens.extra, members=members)

    def _frames(self, x: Tensor, attention: Tensor, keys: Tensor, budget: int) -> tuple[Tensor, Tensor, Tensor]:
        """Dominant then contextual tokens of G frames ``x`` (G, T, D) with their encoder ``attention`` (G, T) and
        ``keys`` (G, T, Dk), each frame ``budget`` tokens, in the order of ``mode``: (G, budget, D), their sources
        within each frame (G, budget) and each token's weight on each of its frame's tokens (G, budget, T)."""
        per_frame = x.shape[1]
        contextual = min(round(budget * self.contextual_share), per_frame - budget)
        dominant = attention.topk(budget - contextual, dim=-1).indices.sort(-1).values
        parts, sources = [x.gather(1, dominant[..., None].expand(-1, -1, x.shape[-1]))], [dominant]
        weights = [torch.nn.functional.one_hot(dominant, per_frame).float()]
        if contextual:
            rest = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            rest.scatter_(1, dominant, False)
            rest = rest.nonzero()[:, 1].view(len(x), -1)  # (G, T - dominant), in token order
            merged, targets, on_rest = merge_into_targets(
                x.gather(1, rest[..., None].expand(-1, -1, x.shape[-1])),
                keys.gather(1, rest[..., None].expand(-1, -1, keys.shape[-1])),
                contextual,
                self.mode == "faithful",
            )
            parts.append(merged)
            sources.append(rest[:, targets])
            on_frame = on_rest.new_zeros(len(x), contextual, per_frame)
            weights.append(on_frame.scatter_(2, rest[:, None].expand(-1, contextual, -1), on_rest))
        feats, source, weight = torch.cat(parts, 1), torch.cat(sources, 1), torch.cat(weights, 1)
        if self.mode == "fixed":
            source, order = source.sort(-1)
            feats = feats.gather(1, order[..., None].expand(-1, -1, feats.shape[-1]))
            weight = weight.gather(1, order[..., None].expand(-1, -1, per_frame))
        return feats, source, weight


VisionZipStage = VisionZip  # the stage's earlier name
