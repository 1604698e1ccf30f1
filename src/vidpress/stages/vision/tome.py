"""ToMe (Bolya et al., ICLR 2023) inside the vision tower: bipartite soft matching of ``r`` tokens per layer with
proportional attention, as ``facebookresearch/ToMe`` releases it (``tome/merge.py``, ``tome/patch/timm.py``).

Per encoder layer, between the attention and the MLP:

1. the layer's keys averaged over heads are the similarity metric; tokens alternate into two sets, A (even
   positions) and B (odd); each A token's most cosine-similar B token is its edge;
2. the ``r`` A tokens with the strongest edges merge into their B tokens (a size-weighted mean); a CLS token
   (CLIP, DINOv2) is never merged; at most half of the unprotected tokens merge in one layer;
3. the layer's output is the unmerged A tokens (in A order), then B; each token's size (patches it holds) adds
   ``log(size)`` to every attention logit it receives in the later layers (proportional attention).

The matching is a value (:class:`Matching`): it merges features, sizes and provenance alike, and maps any merged
tensor back onto the tokens it came from. The runtime applies it through hooks (``vidpress.runtime.tome``); the
stages here only decide counts and pack the result.

What the LLM receives (:class:`TokenMerging`):

- ``grid=False`` (ToMe as a peer): the feature layer's merged tokens, through the projector, without the model's
  spatial pooling (they already average patches), ``round(retention * T)`` per frame. :class:`MergedBlock`
  packs them in the pre-LLM slot; they have no (F, T) layout, so no other pre-LLM stage can follow.
- ``grid=True``: every patch takes its merged token's features (provenance), so the model's projector and
  pooling run unchanged and the later slots see the model's (F, T) grid; only the tower's cost falls.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..._checks import check_mode
from ...errors import BudgetError, InvalidParameterError, VidpressError
from ...tokens import Members, PackedTokens, StageContext, VisualTokens
from .. import Needs, SourcePositions, TowerCounts, VisionStage
from ..pre_llm.budget import visual_budget
from ..pre_llm.merging import frame_members
from ..pre_llm.pooling import cell_areas


@dataclass(frozen=True)
class Matching:
    """One layer's bipartite soft matching over ``tokens`` tokens (n sequences at once).

    Attributes
    ----------
    unmerged : LongTensor, shape (n, |A| - r)
        Indices into A (the even positions) of the A tokens that stay, in output order.
    merged : LongTensor, shape (n, r)
        Indices into A of the tokens merged away.
    targets : LongTensor, shape (n, r)
        Index into B (the odd positions) that each merged token joins.
    tokens : int
        Tokens before the merge; ``tokens - r`` after.
    """

    unmerged: Tensor
    merged: Tensor
    targets: Tensor
    tokens: int

    @property
    def r(self) -> int:
        return self.merged.shape[1]

    def merge(self, x: Tensor, reduce: Literal["sum", "amax", "mean"] = "sum") -> Tensor:
        """(n, tokens, c) -> (n, tokens - r, c): the kept A tokens, then B with the merged ones reduced in."""
        a, b = x[:, ::2], x[:, 1::2]
        width = x.shape[-1]
        kept = a.gather(1, self.unmerged[..., None].expand(-1, -1, width))
        moved = a.gather(1, self.merged[..., None].expand(-1, -1, width))
        b = b.scatter_reduce(1, self.targets[..., None].expand(-1, -1, width), moved, reduce=reduce)
        return torch.cat([kept, b], dim=1)

    def groups(self) -> Tensor:
        """(n, tokens) LongTensor: the output index each input token ends up in."""
        n, kept = self.unmerged.shape
        out = torch.empty(n, self.tokens, dtype=torch.long, device=self.unmerged.device)
        b_count = self.tokens // 2
        out[:, 1::2] = kept + torch.arange(b_count, device=out.device)
        a_out = torch.empty(n, (self.tokens + 1) // 2, dtype=torch.long, device=out.device)
        a_out.scatter_(1, self.unmerged, torch.arange(kept, device=out.device).expand(n, -1))
        a_out.scatter_(1, self.merged, kept + self.targets)
        out[:, ::2] = a_out
        return out

    def unmerge(self, y: Tensor) -> Tensor:
        """(n, tokens - r, c) -> (n, tokens, c): every input token takes its output token's value."""
        return unmerge(y, self.groups())


def unmerge(merged: Tensor, groups: Tensor) -> Tensor:
    """Merged tokens (n, t', c) laid back on the tokens they came from (n, t, c) by ``groups`` (n, t): the merged
    token each one ended in (:meth:`Matching.groups`, composed over layers)."""
    return merged.gather(1, groups[..., None].expand(-1, -1, merged.shape[-1]))


def bipartite_soft_matching(metric: Tensor, r: int, protected: bool = False) -> Matching | None:
    """ToMe's matching of one layer (``tome/merge.py``: ``bipartite_soft_matching``).

    Parameters
    ----------
    metric : Tensor, shape (n, tokens, c)
        The similarity features (the layer's keys averaged over heads).
    r : int
        Tokens to merge away; at most ``(tokens - protected) // 2``.
    protected : bool
        The first token is a CLS token that never merges; it stays first.

    Returns
    -------
    Matching or None
        None when nothing merges (``r`` capped to 0).
    """
    tokens = metric.shape[1]
    r = min(r, (tokens - int(protected)) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True)
        scores = unit[:, ::2] @ unit[:, 1::2].transpose(-1, -2)  # (n, |A|, |B|)
        if protected:
            scores[:, 0, :] = -math.inf
        strength, edge = scores.max(dim=-1)
        order = strength.argsort(dim=-1, descending=True)
        merged, unmerged = order[:, :r], order[:, r:]
        if protected:  # keeps the CLS token first
            unmerged = unmerged.sort(dim=-1).values
        return Matching(unmerged, merged, edge.gather(1, merged), tokens)


def merge_weighted(matching: Matching, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """Size-weighted mean merge (ToMe's ``merge_wavg``): features (n, t, c) and sizes (n, t, 1) (None: all 1) ->
    merged features (n, t - r, c) and their sizes (patches each holds)."""
    if size is None:
        size = x.new_ones(*x.shape[:-1], 1)
    total = matching.merge(size, "sum")
    return matching.merge(x * size, "sum") / total, total


def merge_schedule(
    patches: int, layers: int, *, r: int | tuple[int, ...] | None = None, keep: int | None = None
) -> tuple[int, ...]:
    """Tokens merged at each of ``layers`` encoder layers over frames of ``patches`` patch tokens (a CLS token
    never merges, so it does not count), after ToMe's cap of half the unprotected tokens.

    ``r``: ToMe's own forms, a constant per layer or a list (``tome/utils.py``: ``parse_r``). ``keep``: the
    schedule that ends with ``keep`` patch tokens, geometric (each layer keeps the same share of its tokens), so
    no layer hits the cap while the reduction is at most ``2 ** layers``.

    Raises
    ------
    BudgetError
        ``keep`` below what ``layers`` layers can reach (``ceil(patches / 2**layers)``).
    """
    if keep is not None:
        least = math.ceil(patches / 2**layers)
        if keep < least:
            raise BudgetError(
                f"ToMe can leave no fewer than {least} of {patches} patches per frame in {layers} layers (each merges "
                f"at most half); asked for {keep}: raise the retention"
            )
        wanted = [max(keep, round(patches * (keep / patches) ** ((i + 1) / layers))) for i in range(layers)]
        wanted[-1] = keep
    per_layer = [r] * layers if isinstance(r, int) else list(r or ()) + [0] * (layers - len(r or ()))
    out, alive = [], patches
    for i in range(layers):
        step = alive - wanted[i] if keep is not None else per_layer[i]
        step = max(0, min(step, alive // 2))
        out.append(step)
        alive -= step
    return tuple(out)


@dataclass(frozen=True)
class TokenMerging(VisionStage):
    """ToMe inside the vision tower (module docstring): merges tokens between attention and MLP in every encoder
    layer up to the feature layer.

    Parameters
    ----------
    retention : float, optional
        Tokens left per frame at the feature layer as a share of the model's tokens per frame T (after its
        pooling): ``round(retention * T)`` (LLaVA-OV-7B at 0.25: 49 of SigLIP's 729 patches); the schedule is
        geometric (:func:`merge_schedule`).
    r : int or tuple of int, optional
        ToMe's ``r``: tokens merged per layer (constant), or per layer. Exactly one of ``retention`` and ``r``.
    grid : bool
        Map the merged tokens back onto the patch grid so the model's projector and pooling run unchanged
        (composes with every pre-LLM stage); False hands the merged tokens to the LLM (:class:`MergedBlock`).
    proportional : bool
        ToMe's proportional attention (``prop_attn``, on for off-the-shelf models).

    Raises
    ------
    InvalidParameterError
        Neither or both of ``retention`` and ``r``; a negative ``r``; ``grid`` or ``proportional`` not a bool.
    BudgetError
        ``retention`` outside (0, 1].
    """

    slot: ClassVar[str] = "vision"
    retention: float | None = None
    r: int | tuple[int, ...] | None = None
    grid: bool = False
    proportional: bool = True
    needs: Needs = field(default=Needs(), init=False, repr=False)

    def __post_init__(self) -> None:
        if (self.retention is None) == (self.r is None):
            raise InvalidParameterError(
                f"ToMe takes a retention (tokens left per frame) or ToMe's r (tokens merged per layer), exactly one; "
                f"got retention={self.retention!r}, r={self.r!r}"
            )
        if self.retention is not None:
            visual_budget(self.retention, 1)
        for name in ("grid", "proportional"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidParameterError(f"ToMe's {name} must be true or false, got {getattr(self, name)!r}")
        rs = (self.r,) if isinstance(self.r, int) else tuple(self.r or ())
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in rs):
            raise InvalidParameterError(f"ToMe's r must be integers >= 0, got {self.r!r}")

    @property
    def merges(self) -> bool:
        return True

    def schedule(self, patches: int, layers: int, tokens_per_frame: int) -> tuple[int, ...]:
        """Tokens merged at each of the ``layers`` encoder layers up to the feature layer, for frames of
        ``patches`` patch tokens that the model pools to ``tokens_per_frame``."""
        keep = None if self.retention is None else visual_budget(self.retention, tokens_per_frame)
        return merge_schedule(patches, layers, r=self.r, keep=keep)

    def tokens_left(self, patches: int, layers: int, tokens_per_frame: int) -> int:
        """Patch tokens per frame at the feature layer: what the LLM receives per frame without ``grid``.

        Raises
        ------
        BudgetError
            Without ``grid``, more tokens left than the model's ``tokens_per_frame`` (its placeholders).
        """
        left = patches - sum(self.schedule(patches, layers, tokens_per_frame))
        if not self.grid and left > tokens_per_frame:
            raise BudgetError(
                f"ToMe leaves {left} of {patches} tokens per frame at the feature layer, more than the model's "
                f"{tokens_per_frame} per frame: merge more (a larger r, or a retention), or set grid=True"
            )
        return left

    def tower_counts(self, frames: int, side: int, grid: tuple[int, int], layers: int) -> TowerCounts:
        """The merges per layer; without ``grid`` also the merged tokens, which alone reach the projector and the
        LLM (:meth:`tokens_left` per frame)."""
        patches, per_frame = side * side, math.prod(grid)
        merges = self.schedule(patches, layers, per_frame)
        if self.grid:
            return TowerCounts(merges=merges)
        left = self.tokens_left(patches, layers, per_frame)
        return TowerCounts(merges=merges, projected=left, visual_per_frame=left)


@dataclass(frozen=True)
class MergedBlock(SourcePositions):
    """Packs the tower's merged tokens (``tokens.merged``: (B, F, K, D) projected, ``tokens.merged_groups``: (B, F,
    P) the merged token each patch ended in) as the video block, frame by frame, then the model's extra tokens.

    Parameters
    ----------
    mode : {"fixed", "faithful"}
        ``faithful``: ToMe's output order (kept A tokens, then B), numbered contiguously; ``fixed`` (default):
        in order of each token's first patch, at the position of the model's token over that patch.
    """

    mode: Literal["faithful", "fixed"] = "fixed"
    needs: Needs = field(default=Needs(), init=False, repr=False)

    def __post_init__(self) -> None:
        check_mode(self.mode)

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> PackedTokens:
        if tokens.merged is None or tokens.merged_groups is None:
            raise VidpressError(
                "MergedBlock packs the vision tower's merged tokens, which this request did not produce; pair it with "
                "TokenMerging(grid=False) in the vision slot (vidpress.ToMe does)"
            )
        batch, frames, per_frame, _ = tokens.features.shape
        h, w = tokens.grid
        patches = tokens.merged_groups.shape[-1]
        side = math.isqrt(patches)
        cells = cell_areas((side, side), (h, w)).to(tokens.merged_groups.device)
        rows, areas = [], []
        for b in range(batch):
            feats, sources, covered = [], [], []
            for f in range(frames):
                groups = tokens.merged_groups[b, f]
                count = tokens.merged.shape[2]
                first = torch.full((count,), patches, dtype=torch.long, device=groups.device)
                first = first.scatter_reduce(0, groups, torch.arange(patches, device=groups.device), reduce="amin")
                cell = (first // side) * h // side * w + (first % side) * w // side
                order = first.argsort() if self.mode == "fixed" else torch.arange(count, device=groups.device)
                feats.append(tokens.merged[b, f][order])
                sources.append(cell[order] + f * per_frame)
                # a merged token is the mean of its patches: what it covers of the model's token cells
                share = torch.nn.functional.one_hot(groups, count).T.float()
                share = (share / share.sum(-1, keepdim=True).clamp(min=1)) @ cells
                start = sum(len(x) for x in feats[:-1])
                covered.append(frame_members(share[order][None], torch.tensor([f * per_frame]), start))
            source = torch.cat(sources)
            rows.append((torch.cat(feats), source // per_frame, torch.zeros_like(source), source))
            areas.append(Members.cat(covered))
        packed = PackedTokens.from_rows(rows, 1, frames * per_frame, tokens.extra)
        return dataclasses.replace(packed, areas=tuple(areas))
