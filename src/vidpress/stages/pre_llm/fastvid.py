"""FastVID (Shen et al., NeurIPS 2025): dynamic temporal segmentation (DySeg) then density-based
spatiotemporal pruning (STPrune) of each segment (docs/methods.md).

Per frame, the budget is split between tokens chosen by vision-encoder attention (Attention Token Selection)
and a share ``d`` of density-peak anchor tokens (DPC-kNN score = density x distance to the nearest denser
token, over the tokens attention did not choose). Anchors sit on every ``p``-th frame of a segment counted
from its end (the last frame is always an anchor frame), which carries the anchor budget of the frames
between; the segment's remaining tokens are merged into the anchors (Density-based Token Merging). Every
kept token keeps its original position (a merged token its anchor's), as in the reference.

Reference: LunarShen/FastVID ``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py``
at ``a40a109``, the FastVID block of ``Qwen2Model.forward`` from DySeg to the sorted ``keep_indexs``.

faithful vs fixed (the reference code's behaviour vs what ``fixed`` changes):

- Budget: the reference keeps ``retain = int(T * r)`` per frame, of which ``int(retain * d)`` anchors, and an
  anchor frame of an L-frame segment takes ``(int(retain * d) * L) // ceil(L / p)`` anchors, so it keeps
  fewer tokens than ``r * F * T``; ``fixed`` keeps exactly ``visual_budget(r, F * T)``.
- Limits: the reference fails (``topk`` out of range) when F < c and when an anchor frame is asked for more
  anchors than it has candidates (e.g. r >= 0.5 at T=196 with a 4-frame segment); ``faithful`` raises
  :class:`~vidpress.errors.BudgetError` there naming the limit, ``fixed`` uses min(c, F) segments and moves
  anchor frames closer together until the budget fits.
- Merging: the reference merges every remaining token of a segment into *each* anchor frame's anchors
  separately (a token is counted once per anchor frame); ``fixed`` assigns each token once, to its most
  similar anchor over all the segment's anchors.
- Density ties: the reference adds unseeded 1e-6 noise; both modes break ties by index.

The frame features DySeg compares are each frame's mean token here (the reference reads a pooled SigLIP
head that transformers' LLaVA-OneVision checkpoints do not carry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..._checks import check_layer, check_mode, check_ratio
from ...errors import BudgetError
from ...method import StageMethod
from ...stages import Needs, PreLLMStage
from ...tokens import Members, PackedTokens, StageContext, VisualTokens
from .budget import frame_budgets, visual_budget
from .events import dyseg
from .merging import anchor_members, density_scores, merge_into_anchors, require_encoder_attention


def anchor_offsets(length: int, stride: int) -> list[int]:
    """Anchor frames of a ``length``-frame segment: every ``stride``-th frame counted back from its last."""
    return [o for o in range(length) if (length - 1 - o) % stride == 0]


@dataclass(frozen=True)
class FastVID(PreLLMStage, StageMethod):
    """FastVID, a method that is one pre-LLM stage. ``FastVID(retention=1.0)`` keeps every token.

    Parameters
    ----------
    retention : float
        FastVID's r: fraction of visual tokens entering the LLM, in (0, 1].
    threshold : float
        DySeg's tau: adjacent-frame cosine similarity below which a segment ends (reference 0.9).
    min_segments : int
        DySeg's c: at least this many segments (the c - 1 lowest similarities are always cuts; reference 8).
    anchor_share : float
        STPrune's d: share of each frame's budget given to density-peak anchor tokens; the rest is chosen by
        encoder attention (reference 0.4, i.e. 30 attention-chosen and 19 anchor tokens of 49).
    anchor_stride : int
        DTM's p: every p-th frame of a segment, counted from its end, is an anchor frame (reference 4).
    merge_weight : float
        DTM's beta: an anchor keeps at least this weight in its merged token (reference 0.6).
    knn : int
        k of the DPC-kNN density, the token itself included (reference 4).
    mode : {"fixed", "faithful"}
        See the module docstring.

    Input ``tokens.features`` (B, F, T, D), ``tokens.attention`` (B, F, T); returns a :class:`PackedTokens` in
    original order (a merged token at its anchor, ``source`` the original indices) whose events are the segments.

    Raises
    ------
    BudgetError
        ``retention`` outside (0, 1]; in faithful mode, F < c or an anchor frame asked for more anchors than
        it has candidates (where the reference code fails), or ``int(T * r) = 0`` (it would keep no token).
    InvalidParameterError
        A share outside [0, 1], ``min_segments``/``anchor_stride``/``knn`` < 1, unknown ``mode``.
    """

    name: ClassVar[str] = "fastvid"
    retention: float = 0.25
    threshold: float = 0.9
    min_segments: int = 8
    anchor_share: float = 0.4
    anchor_stride: int = 4
    merge_weight: float = 0.6
    knn: int = 4
    mode: Literal["faithful", "fixed"] = "fixed"
    needs: Needs = field(default=Needs(encoder_attention=True), init=False, repr=False)

    def __post_init__(self) -> None:
        visual_budget(self.retention, 1)
        for name in ("anchor_share", "merge_weight"):
            check_ratio(name, getattr(self, name))
        for name in ("min_segments", "anchor_stride", "knn"):
            check_layer(name, getattr(self, name), minimum=1)
        check_mode(self.mode)

    def kept_count(self, frames: int, tokens_per_frame: int, grid: tuple[int, int] | None = None) -> int | None:
        """``visual_budget(r, F*T)`` in fixed mode; None in faithful mode, where the segments decide."""
        return visual_budget(self.retention, frames * tokens_per_frame) if self.mode == "fixed" else None

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> PackedTokens:
        attention, _ = require_encoder_attention(tokens, "FastVID")
        batch, frames, per_frame, _ = tokens.features.shape
        run = self._faithful if self.mode == "faithful" else self._fixed
        rows, members, num_events = [], [], 1
        for b in range(batch):
            x = tokens.features[b]
            if self.mode == "faithful" and frames < self.min_segments:
                raise BudgetError(
                    f"FastVID's reference needs at least c={self.min_segments} frames (it takes the "
                    f"c - 1 lowest of F - 1 similarities), got F={frames}; lower min_segments or use "
                    "mode='fixed'"
                )
            segments = dyseg(x.float().mean(1), self.threshold, self.min_segments)
            num_events = max(num_events, len(segments))
            out, where, parts = run(x, attention[b], segments)
            source = torch.tensor(where, device=x.device)
            event = torch.bucketize(
                source // per_frame, torch.tensor([a for a, _ in segments[1:]], device=x.device), right=True
            )
            order = source.argsort()
            rows.append((torch.cat(out)[order], source[order] // per_frame, event[order], source[order]))
            members.append(Members.cat(parts).reorder(order))
        return PackedTokens.from_rows(rows, num_events, frames * per_frame, tokens.extra, members=members)

    def _salient(self, x: Tensor, attention: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """Per frame: the ``count`` most attended positions (F, count) and the rest in position order (F, T - count)."""
        top = attention.topk(count, dim=-1).indices
        rest = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device).scatter_(1, top, False)
        return top, rest.nonzero()[:, 1].view(x.shape[0], -1)

    def _faithful(self, x: Tensor, attention: Tensor, segments: list[tuple[int, int]]) -> tuple[list, list, list]:
        frames, per_frame, _ = x.shape
        retain = int(per_frame * self.retention)
        if retain == 0:
            raise BudgetError(
                f"FastVID's reference keeps int(T * r) = int({per_frame} * {self.retention}) = 0 tokens per "
                "frame: no video would reach the LLM; raise retention or use mode='fixed'"
            )
        context = int(retain * self.anchor_share)
        top, rest = self._salient(x, attention, retain - context)
        out = [x[f, top[f]] for f in range(frames)]
        where = [f * per_frame + i for f in range(frames) for i in top[f].tolist()]
        parts = [Members.of_kept(torch.tensor(where, device=x.device))]
        for first, last in segments:
            length = last - first + 1
            count = context * length // math.ceil(length / self.anchor_stride)
            anchor_frames = [first + o for o in anchor_offsets(length, self.anchor_stride)]
            if count > rest.shape[1]:
                raise BudgetError(
                    f"FastVID faithful: an anchor frame of a {length}-frame segment needs {count} anchors "
                    f"but has {rest.shape[1]} candidates (the reference code fails here: "
                    f"int(int(T*r)*d) * L // ceil(L/p) must not exceed T - salient); lower retention "
                    "or use mode='fixed'"
                )
            # Frames whose anchor count equals a single frame's merge only their own tokens (the reference's
            # single-frame path); larger counts merge the whole segment into each anchor frame's anchors.
            if count == 0:
                continue
            single = count == context
            pool = (
                None
                if single
                else x[first : last + 1]
                .gather(1, rest[first : last + 1, :, None].expand(-1, -1, x.shape[-1]))
                .flatten(0, 1)
            )
            in_segment = rest[first : last + 1] + torch.arange(first, last + 1, device=x.device)[:, None] * per_frame
            for f in anchor_frames:
                candidates = x[f, rest[f]]
                chosen = density_scores(candidates, self.knn).topk(count).indices
                merged = merge_into_anchors(candidates[chosen], candidates if pool is None else pool, self.merge_weight)
                out.append(merged[0])
                anchors = f * per_frame + rest[f, chosen]
                joined = f * per_frame + rest[f] if pool is None else in_segment.flatten()
                parts.append(anchor_members(merged, anchors, joined, len(where)))
                where += anchors.tolist()
        return out, where, parts

    def _fixed(self, x: Tensor, attention: Tensor, segments: list[tuple[int, int]]) -> tuple[list, list, list]:
        frames, per_frame, _ = x.shape
        kept = frame_budgets(visual_budget(self.retention, frames * per_frame), frames)
        anchored = [round(self.anchor_share * k) for k in kept]
        out: list[Tensor] = []
        where: list[int] = []
        parts: list[Members] = []
        for first, last in segments:
            candidates = []  # per frame: positions left after attention selection
            for f in range(first, last + 1):
                top, rest = self._salient(x[f : f + 1], attention[f : f + 1], kept[f] - anchored[f])
                out.append(x[f, top[0]])
                parts.append(Members.of_kept(f * per_frame + top[0], len(where)))
                where += (f * per_frame + top[0]).tolist()
                candidates.append(rest[0])
            anchor_frames, counts = self._fixed_anchors(anchored[first : last + 1], [len(c) for c in candidates])
            if not sum(counts):
                continue
            anchor_ids = torch.cat(
                [
                    candidates[a][density_scores(x[first + a, candidates[a]], self.knn).topk(c).indices]
                    for a, c in zip(anchor_frames, counts)
                ]
            )
            owners = [first + a for a, c in zip(anchor_frames, counts) for _ in range(c)]
            pool = torch.cat([x[first + i, c] for i, c in enumerate(candidates)])
            merged = merge_into_anchors(x[owners, anchor_ids], pool, self.merge_weight)
            out.append(merged[0])
            anchors = torch.tensor(owners, device=x.device) * per_frame + anchor_ids
            pooled = torch.cat([(first + i) * per_frame + c for i, c in enumerate(candidates)])
            parts.append(anchor_members(merged, anchors, pooled, len(where)))
            where += anchors.tolist()
        return out, where, parts

    def _fixed_anchors(self, need: list[int], room: list[int]) -> tuple[list[int], list[int]]:
        """Anchor frames (offsets, counted from the segment's end) and their anchor counts: the segment's
        anchor budget ``sum(need)`` spread over them, the stride shrinking until every frame has room."""
        total, length = sum(need), len(need)
        for stride in range(self.anchor_stride, 0, -1):
            frames = anchor_offsets(length, stride)
            base, extra = divmod(total, len(frames))
            counts = [base + (i < extra) for i in range(len(frames))]
            if all(c <= room[f] for f, c in zip(frames, counts)):
                return frames, counts
        return list(range(length)), need


FastVIDStage = FastVID  # the stage's earlier name
