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

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..._checks import check_layer, check_mode, check_ratio
from ...errors import BudgetError
from ...stages import Needs, SourcePositions
from ...tokens import PackedTokens, StageContext, VisualTokens
from .events import dyseg
from .merging import density_scores, merge_into_anchors, require_encoder_attention
from .uniform import frame_budgets, visual_budget


@dataclass(frozen=True)
class FastVIDStage(SourcePositions):
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

    Input ``tokens.features`` (B, F, T, D), ``tokens.attention`` (B, F, T); returns a :class:`PackedTokens` in
    original order (a merged token at its anchor) whose events are the segments.

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


    def budgets(self, frames: int, per_frame: int) -> tuple[list[int], list[int]]:
        """(tokens kept, of which salient) per frame."""
        faithful = self.mode == "faithful"  # the reference floors per frame
        kept = ([int(per_frame * self.retention)] * frames if faithful
                else frame_budgets(visual_budget(self.retention, frames * per_frame), frames))
        return kept, [(int if faithful else round)(self.salient_share * k) for k in kept]

    def anchors(self, need: list[int], room: list[int]) -> tuple[list[int], list[int]]:
        """Anchor frames (offsets) of a segment and their anchor counts, from each frame's owed ``need``/``room``."""
        total, length = sum(need), len(need)
        for stride in range(self.anchor_stride, 0, -1):
            frames = list(range(0, length, stride))
            base, rest = divmod(total, len(frames))
            counts = [base + (self.mode == "fixed" and i < rest) for i in range(len(frames))]  # faithful floors
            if all(c <= room[f] for f, c in zip(frames, counts)):
                return frames, counts
            if self.mode == "faithful":
                raise BudgetError(f"FastVID faithful mode asks an anchor frame for {base} tokens but it has "
                                  f"{min(room[f] for f in frames)}; lower retention or use mode='fixed'")
        return list(range(length)), need

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> PackedTokens:
        require_encoder_attention(tokens, "FastVID")
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
                    out.append(merge_into_anchors(anchors, pool, self.merge_weight, faithful))
                    where += [f * per_frame + int(i) for f, i in zip(owners, anchor_ids)]
                event += [e] * (sum(salient[first:last + 1]) + sum(counts))
            source = torch.tensor(where, device=x.device)
            order = source.argsort()
            rows.append((torch.cat(out)[order], source[order] // per_frame, torch.tensor(event, device=x.device)[order],
                         source[order]))
        return PackedTokens.from_rows(rows, num_events, frames * per_frame, tokens.extra)
