"""CDPruner (Zhang et al., NeurIPS 2025): the visual tokens chosen by a determinantal point process whose kernel
weighs pairwise similarity by each token's relevance to the instruction, so the kept set is diverse and relevant
(docs/methods.md).

Reference: Theia-4869/CDPruner ``llava/model/llava_arch.py`` at ``ed9c12d``, ``LlavaMetaForCausalLM.encode_images``:

1. Similarity ``S = cos(x_i, x_j)`` of the projected tokens (fp32).
2. Relevance of each token: ``-mean_m cos(e_i, t_m)`` of its image embedding ``e_i`` against the instruction's
   text embeddings ``t_m`` (the reference negates it), min-max normalised as ``(r - min + 1e-6) / (max - min)``.
3. Kernel ``L = diag(r) S diag(r)``; the greedy MAP of the DPP (the fast Cholesky-style update: pick the largest
   remaining diagonal, orthogonalise, lower the others) picks the kept tokens, which are then sorted.

Where the reference reads CLIP's image embeddings and its text encoder on the instruction, transformers' video LLMs
carry neither: here ``e_i`` is the projected visual token and ``t_m`` the LLM's input embeddings of the prompt's text
after the video (the question), the signal METok's default relevance uses; with no text after the video every
token's relevance is 1 (a diversity-only DPP). The reference prunes an image's tokens; here a video's F*T tokens
are one set (``faithful``) or each frame is a set at an even share of the budget (``fixed``, the default: every
frame keeps tokens, and the cost is linear in F rather than quadratic in F*T).

The instruction reaches the stage, so vLLM, which encodes and caches a video apart from its prompt, refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..._checks import check_mode
from ...errors import BudgetError
from ...method import StageMethod
from ...selection import Selection
from ...stages import Needs, PreLLMStage
from ...tokens import StageContext, VisualTokens
from .budget import frame_budgets, visual_budget


def relevance(embeds: Tensor, text: Tensor | None) -> Tensor:
    """Each token's relevance (N,) from its embedding (N, C) and the instruction's text embeddings (M, C), as the
    reference normalises it (module docstring, step 2); all ones with no text."""
    if text is None or text.shape[0] == 0:
        return embeds.new_ones(embeds.shape[0], dtype=torch.float32)
    # normalize() divides by the norm as the reference does, and leaves a zero vector (a padding token's
    # embedding) at zero where the reference's division would give NaN
    e = torch.nn.functional.normalize(embeds.float(), dim=-1)
    t = torch.nn.functional.normalize(text.float(), dim=-1)
    r = (-(e @ t.T)).mean(dim=-1)
    spread = r.max() - r.min()
    if not bool(spread > 0):  # every token equally relevant (the reference divides by zero)
        return torch.ones_like(r)
    return (r - r.min() + 1e-6) / spread


def dpp_kernel(features: Tensor, rel: Tensor) -> Tensor:
    """``diag(rel) S diag(rel)`` (N, N) float32 with S the cosine similarity of ``features`` (N, D)."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1)  # a zero token (a frame never encoded) stays 0
    return rel[:, None] * (unit @ unit.T) * rel[None, :]


def dpp_greedy(kernel: Tensor, count: int) -> Tensor:
    """The greedy MAP of the DPP with ``kernel`` (N, N): ``count`` indices in the order picked (module docstring,
    step 3).

    Raises
    ------
    BudgetError
        The picked tokens span the kernel's space before ``count`` (no remaining gain is positive), where the
        reference would go on with the square root of a non-positive number.
    """
    n = kernel.shape[0]
    basis = kernel.new_zeros(count, n)
    gains = torch.diagonal(kernel).clone()
    picked = []
    for i in range(count):
        j = int(torch.argmax(gains))
        if not bool(gains[j] > 0):
            raise BudgetError(
                f"CDPruner's DPP found {i} tokens that already span the tokens' similarity space (its rank); "
                f"{count} cannot all add diversity: lower the retention"
            )
        picked.append(j)
        e = (kernel[j] - basis[:i, j] @ basis[:i]) / torch.sqrt(gains[j])
        basis[i] = e
        gains -= e**2
        gains[j] = -float("inf")
    return torch.tensor(picked, dtype=torch.long, device=kernel.device)


@dataclass(frozen=True)
class CDPruner(PreLLMStage, StageMethod):
    """CDPruner (Zhang et al., NeurIPS 2025), a method that is one pre-LLM stage: the tokens a determinantal point
    process picks for being both diverse and relevant to the question, ``visual_budget(retention, F*T)`` of them.
    ``CDPruner(retention=1.0)`` keeps every token.

    Parameters
    ----------
    retention : float
        Fraction of visual tokens kept, in (0, 1] (the reference's ``visual_token_num`` = this share of the tokens).
    mode : {"fixed", "faithful"}
        ``faithful``: one DPP over the video's F*T tokens; ``fixed``: one per frame at an even share of the budget.

    Input ``tokens.features`` (B, F, T, D) and ``tokens.text`` (B, R, D), the question's input embeddings
    (``Needs.text``); returns a :class:`~vidpress.selection.Selection` over the F*T frame tokens, in position order.

    Raises
    ------
    BudgetError
        ``retention`` outside (0, 1], or more tokens than the similarity kernel's rank can make diverse (tokens of
        a width smaller than the count; :func:`dpp_greedy`).
    InvalidParameterError
        Unknown ``mode``.
    """

    name: ClassVar[str] = "cdpruner"
    retention: float = 0.25
    mode: Literal["faithful", "fixed"] = "fixed"
    needs: Needs = field(default=Needs(text=True), init=False, repr=False)

    def __post_init__(self) -> None:
        visual_budget(self.retention, 1)
        check_mode(self.mode)

    def kept_count(self, frames: int, tokens_per_frame: int, grid: tuple[int, int] | None = None) -> int:
        return visual_budget(self.retention, frames * tokens_per_frame)

    def _pick(self, features: Tensor, text: Tensor | None, count: int) -> Tensor:
        if count == features.shape[0]:
            return torch.arange(count, device=features.device)
        return dpp_greedy(dpp_kernel(features, relevance(features, text)), count).sort().values

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> Selection:
        batch, frames, per_frame, _ = tokens.features.shape
        budget = visual_budget(self.retention, frames * per_frame)
        rows = []
        for b in range(batch):
            text = None if tokens.text is None else tokens.text[b]
            x = tokens.features[b]
            if self.mode == "faithful":
                rows.append(self._pick(x.flatten(0, 1), text, budget))
                continue
            parts = [
                self._pick(x[f], text, k) + f * per_frame for f, k in enumerate(frame_budgets(budget, frames)) if k
            ]
            rows.append(torch.cat(parts))
        return Selection(torch.stack(rows).to(tokens.features.device), frames * per_frame)
