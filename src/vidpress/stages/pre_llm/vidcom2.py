"""VidCom2 (Liu et al., EMNLP 2025): frames that stand out from the video get more of the budget, and within each
frame the tokens that stand out from both the video and the frame are kept (docs/methods.md).

Reference: xuyang-liu16/VidCom2 ``token_compressor/vidcom2/vidcom2.py`` at ``d31b156`` (``vidcom2_compression``:
``select_low_var_channels``, ``compute_gaussian_scores``, ``compute_scales``, ``select_outlier_indices``,
``map_features`` with the linear mapper), applied to the model's pooled frame tokens (LLaVA-OV's 196 per frame
before the newline; a Qwen temporal patch's merged tokens).

1. Of the D channels, the ``int(D * channel_share)`` with the lowest variance over all the video's tokens are
   kept (population variance), in ``topk`` order.
2. On those channels, each token is L2-normalised; its similarity to the video's mean token and to its frame's
   mean token is a sum of Gaussian kernels ``exp(-||x - c||^2 / (2a))`` over a in 1/8, 1/4, 1/2, 1, 2.
3. Frame f's scale is ``r * (1 + p_f - mean(p))`` with ``p = softmax(-mean_t(video similarity) / temperature)``
   (temperature 0.01), clamped to at most 1: frames least like the video get more.
4. Frame f keeps the ``k_f`` tokens with the lowest video + frame similarity, in position order.

faithful vs fixed:

- ``faithful``: ``k_f = max(1, round(scale_f * T))`` as the reference, so the count depends on the content (and
  is not ``r * F * T``; with r = 1 frames below the mean probability still lose tokens).
- ``fixed`` (default): the same scales apportioned to exactly ``visual_budget(r, F*T)`` tokens (largest
  remainders, at most T and, when the budget allows, at least one per frame), so ``retention=1`` keeps every token
  and vLLM can size the prompt before it sees the video.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..._checks import check_mode, check_ratio
from ...errors import BudgetError, InvalidParameterError
from ...method import StageMethod
from ...selection import Selection
from ...stages import Needs, PreLLMStage
from ...tokens import StageContext, VisualTokens
from .budget import apportion, visual_budget

#: The Gaussian kernel widths a of the reference's multi-scale similarity.
KERNEL_WIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0)


def outlier_scores(x: Tensor, channel_share: float) -> tuple[Tensor, Tensor]:
    """VidCom2's scores of one video's tokens ``x`` (F, T, D): each token's similarity to the video's and to its
    frame's mean on the lowest-variance channels, (F, T) and (F, T) float32 (module docstring, steps 1-2)."""
    frames, per_frame, dim = x.shape
    flat = x.reshape(frames * per_frame, dim).float()
    channels = torch.topk(flat.var(dim=0, unbiased=False), int(dim * channel_share), largest=False).indices
    unit = torch.nn.functional.normalize(flat[:, channels].view(frames, per_frame, -1), dim=-1)

    def similarity(center: Tensor) -> Tensor:
        distance = ((unit - center) ** 2).sum(-1)
        return sum(torch.exp(-distance / (2 * a)) for a in KERNEL_WIDTHS)  # type: ignore[return-value]

    return similarity(unit.mean(dim=(0, 1), keepdim=True)), similarity(unit.mean(dim=1, keepdim=True))


def frame_scales(video_similarity: Tensor, retention: float, temperature: float) -> Tensor:
    """Each frame's share of its tokens (F,): ``r * (1 + p_f - mean(p))``, at most 1, with p the softmax of the
    frames' negated mean video similarity at ``temperature`` (module docstring, step 3)."""
    scores = -video_similarity.mean(-1)
    probs = torch.softmax((scores - scores.max()) / temperature, dim=0)
    return (retention * (1 + probs - probs.mean())).clamp(max=1.0)


@dataclass(frozen=True)
class VidCom2(PreLLMStage, StageMethod):
    """VidCom2 (Liu et al., EMNLP 2025), a method that is one pre-LLM stage: frame budgets by how much each frame
    differs from the video, tokens by how much they differ from the video and their frame, at a budget of
    ``visual_budget(retention, F*T)`` tokens (``mode="fixed"``). ``VidCom2(retention=1.0)`` keeps every token.

    Parameters
    ----------
    retention : float
        The reference's ``base_scale``: fraction of visual tokens kept, in (0, 1].
    channel_share : float
        Share of the lowest-variance channels the similarities are computed on, in (0, 1] (reference 0.5).
    temperature : float
        Softmax temperature of the frame scales, > 0 (reference 0.01).
    mode : {"fixed", "faithful"}
        See the module docstring.

    Input ``tokens.features`` (B, F, T, D); returns a :class:`~vidpress.selection.Selection` over the F*T frame
    tokens, frame by frame in position order.

    Raises
    ------
    BudgetError
        ``retention`` outside (0, 1].
    InvalidParameterError
        ``channel_share`` outside (0, 1] or leaving no channel of the tokens' width, ``temperature`` <= 0,
        unknown ``mode``.
    """

    name: ClassVar[str] = "vidcom2"
    retention: float = 0.25
    channel_share: float = 0.5
    temperature: float = 0.01
    mode: Literal["faithful", "fixed"] = "fixed"
    needs: Needs = field(default=Needs(), init=False, repr=False)

    def __post_init__(self) -> None:
        visual_budget(self.retention, 1)
        check_ratio("channel_share", self.channel_share)
        if self.channel_share == 0:
            raise InvalidParameterError("channel_share must be > 0: the similarities need at least one channel")
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or self.temperature <= 0
        ):
            raise InvalidParameterError(f"temperature must be a number > 0, got {self.temperature!r}")
        check_mode(self.mode)

    def kept_count(self, frames: int, tokens_per_frame: int, grid: tuple[int, int] | None = None) -> int | None:
        """``visual_budget(r, F*T)`` in fixed mode; None in faithful mode, where the content decides."""
        return visual_budget(self.retention, frames * tokens_per_frame) if self.mode == "fixed" else None

    def frame_counts(self, scales: Tensor, per_frame: int) -> list[int]:
        """Tokens each frame keeps from its scale (F,): the reference's rounding, or the exact budget."""
        if self.mode == "faithful":
            return (scales * per_frame).round().long().clamp(min=1).tolist()
        budget = visual_budget(self.retention, len(scales) * per_frame)
        return apportion(budget, scales, per_frame)

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> Selection:
        batch, frames, per_frame, dim = tokens.features.shape
        if int(dim * self.channel_share) < 1:
            raise InvalidParameterError(
                f"channel_share={self.channel_share} of {dim} channels leaves none; raise channel_share"
            )
        rows = []
        for b in range(batch):
            video, frame = outlier_scores(tokens.features[b], self.channel_share)
            counts = self.frame_counts(frame_scales(video, self.retention, self.temperature), per_frame)
            score = video + frame
            rows.append(
                torch.cat(
                    [
                        torch.topk(score[f], k, largest=False, sorted=False).indices.sort().values + f * per_frame
                        for f, k in enumerate(counts)
                        if k
                    ]
                )
            )
        if len({len(r) for r in rows}) > 1:
            raise BudgetError(
                f"videos in the batch keep different counts {sorted({len(r) for r in rows})} in faithful mode; run "
                "them one at a time"
            )
        return Selection(torch.stack(rows).to(tokens.features.device), frames * per_frame)
