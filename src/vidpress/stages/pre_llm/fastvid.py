"""FastVID (Shen et al., NeurIPS 2025): dynamic temporal segmentation (DySeg) then density-based
spatiotemporal pruning (STPrune) of each segment (methods.md §3).

Per frame, a share ``d`` of its budget is chosen by vision-encoder attention (Attention Token Selection);
the rest of the segment's budget goes to density-peak anchor tokens on every ``p``-th frame of the
segment (DPC-kNN score = density x distance to the nearest denser token), and every remaining token of the
segment is merged into its most similar anchor (Density-based Token Merging).

faithful vs fixed (the reference code's quirks):

- kNN density: the reference takes the k *largest* distances (``topk`` without ``largest=False``);
  ``fixed`` uses the k nearest, as DPC-kNN defines it. Both break density ties deterministically (the
  reference adds unseeded noise).
- Merged tokens: the reference averages L2-normalised features, so contextual tokens lose the features'
  scale; ``fixed`` uses normalised features only to assign tokens and merges the raw features.
- Positions: the reference rebuilds the sequence (contiguous positions); ``fixed`` puts every token at its
  source's original position (a merged token at its anchor's), so the text after the video keeps its
  uncompressed positions and no gap opens between video and text.
- Budget: the reference keeps ``int(T * r)`` per frame and ``floor`` per anchor frame, so it keeps fewer
  tokens than the budget and fails when an anchor frame has too few candidates; ``fixed`` keeps exactly
  ``visual_budget(r, F*T)`` and adds anchor frames (smaller stride) until the budget fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..._checks import check_layer, check_mode, check_ratio
from ...errors import BudgetError, VidpressError
from ...stages import Needs
from ...tokens import PackedTokens, StageContext, VisualTokens
from .events import adjacent_similarity, events_from_boundaries
from .uniform import frame_budgets, visual_budget


def dyseg(frames: Tensor, threshold: float, min_segments: int) -> list[tuple[int, int]]:
    """DySeg: cut after frame i when similarity(i, i+1) < ``threshold`` or is among the ``min_segments - 1``
    lowest. ``frames`` (F, D) frame embeddings; returns inclusive (first, last) frame ranges."""
    similarity = adjacent_similarity(frames)
    lowest = similarity.topk(min(min_segments - 1, similarity.numel()), largest=False).indices
    cuts = set(lowest.tolist()) | set((similarity < threshold).nonzero().flatten().tolist())
    return events_from_boundaries(sorted(cuts), frames.shape[0])


def density_scores(x: Tensor, knn: int, nearest: bool) -> Tensor:
    """DPC-kNN score of each of ``x``'s (n, D) tokens: exp(-mean squared kNN distance) times the distance
    to the nearest token of higher density (the densest token gets the largest distance). (n,) float32."""
    x = x.float()
    dist = torch.cdist(x, x) / math.sqrt(x.shape[-1])
    near = dist.topk(min(knn, x.shape[0]), dim=-1, largest=not nearest).values
    density = (-(near**2).mean(-1)).exp()
    density = density + 1e-6 * torch.arange(x.shape[0], device=x.device) / x.shape[0]  # deterministic ties
    denser = density[None, :] > density[:, None]
    return torch.where(denser, dist, dist.max()).min(-1).values * density


@dataclass(frozen=True)
class FastVIDStage:
    """FastVID as a pre-LLM stage.

    Parameters
    ----------
    retention : float
        Fraction of visual tokens entering the LLM, in (0, 1].
    threshold : float
        DySeg's tau: adjacent-frame cosine similarity below which a segment ends (reference 0.9).
    min_segments : int
        DySeg's c: at least this many segments (the c - 1 lowest similarities are always cuts; reference 8).
    salient_share : float
        STPrune's d: share of each frame's budget chosen by encoder attention (reference 0.4).
    anchor_stride : int
        DTM's p: every p-th frame of a segment is an anchor frame (reference 4).
    merge_weight : float
        DTM's beta: an anchor keeps at least this weight in its merged token (reference 0.6).
    knn : int
        k of the DPC-kNN density (reference 4).
    mode : {"fixed", "faithful"}
        See the module docstring.

    Input ``tokens.features`` (B, F, T, D) and ``tokens.attention`` (B, F, T); returns a
    :class:`~vidpress.tokens.PackedTokens` in original token order (a merged token sits at its anchor), whose
    events are the segments.

    Raises
    ------
    BudgetError
        ``retention`` outside (0, 1]; faithful mode asking an anchor frame for more tokens than it has.
    InvalidParameterError
        A share outside [0, 1], ``min_segments``/``anchor_stride``/``knn`` < 1, unknown ``mode``.
    """

    retention: float = 0.25
    threshold: float = 0.9
    min_segments: int = 8
    salient_share: float = 0.4
    anchor_stride: int = 4
    merge_weight: float = 0.6
    knn: int = 4
    mode: Literal["faithful", "fixed"] = "fixed"
    needs: Needs = field(default=Needs(encoder_attention=True), init=False, repr=False)

    def __post_init__(self) -> None:
        visual_budget(self.retention, 1)
        for name in ("salient_share", "merge_weight"):
            check_ratio(name, getattr(self, name))
        for name in ("min_segments", "anchor_stride", "knn"):
            check_layer(name, getattr(self, name), minimum=1)
        check_mode(self.mode)

    @property
    def positions(self) -> str:
        """``contiguous`` in faithful mode (the reference rebuilds the sequence), else sources' positions."""
        return "contiguous" if self.mode == "faithful" else "original"

    def budgets(self, frames: int, per_frame: int) -> tuple[list[int], list[int]]:
        """(tokens kept, of which salient) per frame."""
        if self.mode == "faithful":
            kept = [int(per_frame * self.retention)] * frames
            return kept, [int(self.salient_share * k) for k in kept]
        kept = frame_budgets(visual_budget(self.retention, frames * per_frame), frames)
        return kept, [round(self.salient_share * k) for k in kept]

    def anchors(self, need: list[int], room: list[int]) -> tuple[list[int], list[int]]:
        """Anchor frames of one segment (offsets) and the anchor tokens each takes; ``need``/``room``: the
        contextual tokens each frame owes and the candidates it has."""
        total, length = sum(need), len(need)
        for stride in range(self.anchor_stride, 0, -1):
            frames = list(range(0, length, stride))
            base, rest = divmod(total, len(frames))
            counts = [base + (i < rest) for i in range(len(frames))]
            if self.mode == "faithful":
                counts = [base] * len(frames)
            if all(c <= room[f] for f, c in zip(frames, counts)):
                return frames, counts
            if self.mode == "faithful":
                raise BudgetError(f"FastVID faithful mode asks an anchor frame for {base} tokens but it has "
                                  f"{min(room[f] for f in frames)}; lower retention or use mode='fixed'")
        return list(range(length)), need

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> PackedTokens:
        if tokens.attention is None:
            raise VidpressError("FastVID needs the vision encoder's attention; the runtime provides it when the "
                                "model's adapter exposes its encoder attention")
        batch, frames, per_frame, _ = tokens.features.shape
        kept, salient = self.budgets(frames, per_frame)
        faithful = self.mode == "faithful"
        rows, num_events = [], 1
        for b in range(batch):
            x = tokens.features[b]
            segments = dyseg(x.float().mean(1), self.threshold, self.min_segments)
            num_events = max(num_events, len(segments))
            out, where, event = [], [], []
            for e, (first, last) in enumerate(segments):
                candidates = []  # per frame: positions left after attention selection
                for f in range(first, last + 1):
                    top = tokens.attention[b, f].topk(salient[f]).indices
                    out.append(x[f, top])
                    where += (f * per_frame + top).tolist()
                    rest = torch.ones(per_frame, dtype=torch.bool, device=x.device)
                    rest[top] = False
                    candidates.append(rest.nonzero().flatten())
                need = [kept[f] - salient[f] for f in range(first, last + 1)]
                anchor_frames, counts = self.anchors(need, [len(c) for c in candidates])
                anchor_ids = torch.cat([candidates[a][density_scores(x[first + a, candidates[a]], self.knn,
                                                                     not faithful).topk(c).indices]
                                        for a, c in zip(anchor_frames, counts)]) if sum(counts) else None
                if anchor_ids is not None:
                    owners = [first + a for a, c in zip(anchor_frames, counts) for _ in range(c)]
                    pool = torch.cat([x[first + i, c] for i, c in enumerate(candidates)])
                    anchors = x[owners, anchor_ids]
                    out.append(self.merge(anchors, pool, faithful))
                    where += [f * per_frame + int(i) for f, i in zip(owners, anchor_ids)]
                event += [e] * (sum(salient[first:last + 1]) + sum(counts))
            source = torch.tensor(where, device=x.device)
            order = source.argsort()
            rows.append((torch.cat(out)[order], source[order] // per_frame, torch.tensor(event, device=x.device)[order],
                         source[order]))
        return PackedTokens.from_rows(rows, num_events, frames * per_frame, tokens.extra)

    def merge(self, anchors: Tensor, pool: Tensor, faithful: bool) -> Tensor:
        """DTM: each token of ``pool`` (n, D) joins its most similar anchor (m, D) by cosine; a merged token is
        ``a * anchor + (1 - a) * mean(joined)`` with ``a = max(1 / (count + 1), merge_weight)``. (m, D)."""
        unit_a = torch.nn.functional.normalize(anchors.float(), dim=-1)
        unit_p = torch.nn.functional.normalize(pool.float(), dim=-1)
        assign = (unit_p @ unit_a.T).argmax(-1)
        source, base = (unit_p, unit_a) if faithful else (pool.float(), anchors.float())
        counts = torch.bincount(assign, minlength=anchors.shape[0])[:, None].float()
        mean = torch.zeros_like(base).index_add_(0, assign, source) / counts.clamp(min=1)
        weight = (1 / (counts + 1)).clamp(min=self.merge_weight)
        return (weight * base + (1 - weight) * mean).to(anchors.dtype)
