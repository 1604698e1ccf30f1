"""Evidence survival: which share of the pixels a question needs reaches the LLM, and stays alive in it.

Given evidence regions per frame (pixel masks, or boxes rasterised by :func:`boxes_to_masks`), each of the model's
frame tokens carries the share of the evidence its receptive area covers (:func:`token_evidence`: a token's area is
its cell of the frame's token grid, the grid after the family's pooling or merging; a Qwen token covers its
temporal patch's frames). A method's plans then decide where that evidence goes:

- *strict*: a frame token that reaches the LLM as its own token, unchanged;
- *merged*: a frame token that reaches the LLM only as a member of a merged token (``PackedTokens.members``:
  VisionZip's contextual tokens, FastVID's and HoliTom's merges, METok's pooling), with its weight there;
- *dropped*: the rest.

Inside the LLM the same shares follow every prefill drop (and HoliTom's in-LLM merges) per layer, and, while
decoding, the visual KV each layer attends to (DyCoke's and METok's decode stages). The runtime computes them from
the plans it applies (:meth:`~vidpress.runtime.install.Run.set_evidence`), so they cannot drift from what ran.

What it measures: whether the evidence reaches the LLM, not whether the LLM uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import InvalidParameterError
from .selection import Selection
from .tokens import PackedTokens

Box = tuple[float, float, float, float]


def boxes_to_masks(boxes: Mapping[int, Sequence[Box]], frames: int, size: int = 112) -> Tensor:
    """Evidence masks (frames, size, size) float32 from boxes per frame: ``{frame: [(x0, y0, x1, y1), ...]}``, each
    corner a fraction of the frame's width and height in [0, 1] (x0 < x1, y0 < y1).

    Raises
    ------
    InvalidParameterError
        A frame outside ``range(frames)`` or a box outside the frame or empty.
    """
    masks = torch.zeros(frames, size, size)
    for frame, frame_boxes in boxes.items():
        if not 0 <= frame < frames:
            raise InvalidParameterError(f"evidence box on frame {frame}, but the video has {frames} frames")
        for box in frame_boxes:
            x0, y0, x1, y1 = (float(v) for v in box)
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise InvalidParameterError(
                    f"evidence box {box} must be (x0, y0, x1, y1) fractions of the frame with x0 < x1, y0 < y1"
                )
            masks[frame, round(y0 * size) : max(round(y1 * size), round(y0 * size) + 1),
                  round(x0 * size) : max(round(x1 * size), round(x0 * size) + 1)] = 1.0  # fmt: skip
    return masks


def token_evidence(masks: Tensor, grid: tuple[int, int], temporal_patch: int = 1) -> Tensor:
    """Each frame token's share of the evidence, (ceil(F / temporal_patch), h * w) float32, summing to 1 (all zeros
    when the masks hold none).

    Parameters
    ----------
    masks : Tensor, shape (F, H, W)
        Evidence per pixel in [0, 1] of each frame given to the model.
    grid : (h, w)
        The frame's token grid as the LLM sees it (LLaVA-OV: the 2x2-pooled grid; Qwen: after the 2x2 merger) or,
        for vision-tower tokens, the patch grid.
    temporal_patch : int
        Frames per token (Qwen: 2); a last incomplete patch takes what frames it has.

    Raises
    ------
    InvalidParameterError
        ``masks`` not 3-D, values outside [0, 1], or a grid or patch below 1.
    """
    if masks.dim() != 3:
        raise InvalidParameterError(f"evidence masks must be (frames, height, width), got {tuple(masks.shape)}")
    if min(grid) < 1 or temporal_patch < 1:
        raise InvalidParameterError(f"grid {grid} and temporal_patch {temporal_patch} must be >= 1")
    masks = masks.float()
    if masks.numel() and (masks.min() < 0 or masks.max() > 1):
        raise InvalidParameterError("evidence masks must hold values in [0, 1]")
    # each cell's covered share of its own area; cells are equal, so proportional to the evidence they hold
    cells = torch.nn.functional.adaptive_avg_pool2d(masks[:, None], grid).flatten(1)
    pad = -len(cells) % temporal_patch
    cells = torch.cat([cells, cells.new_zeros(pad, cells.shape[1])]).view(-1, temporal_patch, cells.shape[1]).sum(1)
    total = cells.sum()
    return cells / total if total > 0 else cells


def carriers(plan: Selection | PackedTokens, columns: Tensor) -> tuple[Tensor, Tensor]:
    """How a pre-LLM ``plan``'s K visual tokens carry the frame tokens ``columns`` (B, E): each token's weight on
    each (B, K, E) float32, and whether it *is* that frame token unchanged (B, K, E) bool. A packed block's
    ``members`` say it, else its ``areas`` (what each token covers of the frame tokens' cells); with neither, its
    tokens are taken as their sources unchanged."""
    if isinstance(plan, Selection):
        own = plan.keep.to(columns.device)[..., None] == columns[:, None, :]
        return own.float(), own
    count = plan.num_visual
    declared = plan.members if plan.members is not None else plan.areas
    if declared is None:
        source = plan.source[:, :count] if plan.source is not None else None
        if source is None:
            raise InvalidParameterError("a packed block with neither members nor sources carries unknown evidence")
        own = source.to(columns.device)[..., None] == columns[:, None, :]
        return own.float(), own
    weights = columns.new_zeros(*columns.shape[:1], count, columns.shape[1], dtype=torch.float32)
    own = torch.zeros_like(weights, dtype=torch.bool)
    for b, members in enumerate(declared):
        token, source, weight = (t.to(columns.device) for t in (members.token, members.source, members.weight))
        hit = source[:, None] == columns[b][None, :]  # (members, E)
        entry, column = hit.nonzero(as_tuple=True)
        weights[b].index_put_((token[entry], column), weight[entry].float(), accumulate=True)
        sizes = torch.bincount(token[weight > 1e-6], minlength=count)
        single = (sizes[token[entry]] == 1) & (weight[entry] > 1 - 1e-6)
        own[b, token[entry][single], column[single]] = True
    return weights, own


@dataclass
class EvidenceTrace:
    """The evidence a request's prompt entries carry, kept by the runtime: per base-layout entry, its weight on each
    evidence-bearing frame token and whether it is that token unchanged.

    Attributes
    ----------
    evidence : Tensor, shape (B, E)
        The share of the evidence each of the E frame tokens that hold some carries (sums to 1 per row).
    weights : Tensor, shape (B, S0, E)
        Each prompt entry's weight on each of them (0 off the visual tokens).
    own : Tensor, shape (B, S0, E)
        Whether the entry is that frame token unchanged.
    """

    evidence: Tensor
    weights: Tensor
    own: Tensor
    pre_llm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # strict, merged, merged weight
    prefill: list[tuple[float, float]] = field(default_factory=list)  # (strict, reached) per layer
    decode_sum: list[float] = field(default_factory=list)  # reached share of the attended KV, summed over steps

    def shares(self, entries: Tensor) -> tuple[float, float, float]:
        """(strict, reached, weighted) share of the evidence held by the prompt entries ``entries`` (B, n), the
        batch's mean: a frame token counts once however many entries hold it."""
        index = entries.to(self.weights.device)[..., None].expand(-1, -1, self.weights.shape[-1])
        weights, own = self.weights.gather(1, index), self.own.gather(1, index)
        strict = (own.any(1).float() * self.evidence).sum(-1)
        reached = ((weights > 0).any(1).float() * self.evidence).sum(-1)
        weighted = (weights.sum(1).clamp(max=1) * self.evidence).sum(-1)
        return tuple(min(1.0, float(v.mean())) for v in (strict, reached, weighted))  # type: ignore[return-value]

    def merge(self, rows: Tensor, alive: Tensor, weights: Tensor) -> None:
        """An in-LLM merge: the kept entries ``rows`` (B, K) now hold ``weights`` (B, K, n) of the ``alive`` entries
        (B, n) (:class:`~vidpress.selection.MergedSelection`); an entry that took others in is no longer one frame
        token unchanged."""
        held = self.weights.gather(1, alive.to(self.weights.device)[..., None].expand(-1, -1, self.weights.shape[-1]))
        merged = torch.bmm(weights.float().to(held.device), held)  # a member's evidence at its weight in the merge
        took_in = ((weights > 0).sum(-1) > 1).to(held.device)
        index = rows.to(held.device)[..., None].expand(-1, -1, held.shape[-1])
        self.weights.scatter_(1, index, merged)
        self.own.scatter_(1, index, self.own.gather(1, index) & ~took_in[..., None])


@dataclass(frozen=True)
class EvidenceSurvival:
    """Where a request's evidence went (shares of the whole evidence, in [0, 1]).

    Attributes
    ----------
    strict : float
        Reached the LLM as its own, unchanged tokens.
    merged : float
        Reached it only inside merged tokens.
    merged_weight : float
        The weight that merged evidence has in the tokens that hold it (evidence-weighted mean, at most ``merged``).
    prefill_strict, prefill_reached : list of float
        Per LLM layer during prefill: held by alive tokens unchanged, or at all (merges inside the LLM included).
    decode_reached : list of float
        Per LLM layer, the share held by the visual KV entries attended while decoding, averaged over steps (the
        stored share when nothing selects).
    """

    strict: float
    merged: float
    merged_weight: float
    prefill_strict: list[float]
    prefill_reached: list[float]
    decode_reached: list[float]

    @property
    def dropped(self) -> float:
        return max(0.0, 1.0 - self.strict - self.merged)

    def as_dict(self) -> dict[str, Any]:
        return {
            "strict": self.strict,
            "merged": self.merged,
            "merged_weight": self.merged_weight,
            "dropped": self.dropped,
            "prefill_strict": self.prefill_strict,
            "prefill_reached": self.prefill_reached,
            "decode_reached": self.decode_reached,
        }


def trace(
    plan: Selection | PackedTokens, evidence: Tensor, entries: Tensor, prompt_len: int, num_layers: int = 1
) -> EvidenceTrace:
    """The :class:`EvidenceTrace` of a request: ``evidence`` (B, N) over the N frame tokens, the pre-LLM ``plan``, and
    the base-layout entries ``entries`` (B, K) its K visual tokens fill, in a prompt of ``prompt_len`` entries,
    with every one of ``num_layers`` LLM layers holding what entered (until a prefill stage drops some)."""
    batch = evidence.shape[0]
    count = int((evidence > 0).sum(-1).max()) if evidence.numel() else 0
    columns = evidence.topk(count, dim=-1).indices if count else evidence.new_zeros(batch, 0, dtype=torch.long)
    weights, own = carriers(plan, columns)
    full_w = weights.new_zeros(batch, prompt_len, count)
    full_o = torch.zeros_like(full_w, dtype=torch.bool)
    index = entries.to(weights.device)[..., None].expand(-1, -1, count)
    full_w.scatter_(1, index, weights[:, : entries.shape[1]])
    full_o.scatter_(1, index, own[:, : entries.shape[1]])
    found = EvidenceTrace(evidence.gather(1, columns).float(), full_w, full_o)
    strict, reached, weighted = found.shares(entries)
    found.pre_llm = (strict, reached - strict, weighted - strict)
    found.prefill = [(strict, reached)] * num_layers
    found.decode_sum = [0.0] * num_layers
    return found
