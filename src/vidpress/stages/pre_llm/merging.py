"""Token merging shared by the pre-LLM peers: VisionZip's contextual tokens, FastVID's DPC-kNN density
scores and its density-based token merging. Pure tensor functions (docs/methods.md)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...errors import VidpressError
from ...tokens import Members, VisualTokens


def require_encoder_attention(tokens: VisualTokens, name: str) -> tuple[Tensor, Tensor]:
    """The vision encoder's attention received (B, F, T) and keys (B, F, T, Dk) the runtime gave ``tokens``
    (``Needs.encoder_attention``).

    Raises
    ------
    VidpressError
        ``tokens`` carry neither (the stage runs outside the runtime, or the adapter exposes no encoder attention).
    """
    if tokens.attention is None or tokens.keys is None:
        raise VidpressError(
            f"{name} needs the vision encoder's attention; the runtime provides it when the "
            "model's adapter exposes its encoder attention (vidpress.apply)"
        )
    return tokens.attention, tokens.keys


def joined(assign: Tensor, values: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Sum of the ``values`` (n, D) rows joined to each of ``count`` groups by ``assign`` (n,), and the group
    sizes: (count, D) float32, (count, 1) float32."""
    sums = torch.zeros(count, values.shape[1], device=values.device).index_add_(0, assign, values.float())
    return sums, torch.bincount(assign, minlength=count)[:, None].float()


def merge_into_targets(x: Tensor, metric: Tensor, count: int, faithful: bool) -> tuple[Tensor, Tensor, Tensor]:
    """VisionZip's contextual tokens: ``count`` evenly strided targets of ``x`` (..., n, D), every other token
    joined to its most similar target by cosine of ``metric`` (..., n, Dk), over any leading (frame) dimensions.
    Returns (..., count, D), the targets' row indices (count,), the same in every frame, and each merged token's
    weight on each of the n rows (..., count, n) float32 (``faithful``: the target 1, a joined row 1 / joined;
    else every member 1 / (joined + 1))."""
    metric = torch.nn.functional.normalize(metric.float(), dim=-1)
    n = x.shape[-2]
    step = max(1, n // count)
    targets = torch.arange(0, n, step, device=x.device)[:count]
    others = torch.ones(n, dtype=torch.bool, device=x.device)
    others[targets] = False
    assign = (metric[..., others, :] @ metric[..., targets, :].transpose(-1, -2)).argmax(-1)  # (..., n - count)
    lead = assign.shape[:-1]
    # one group per (frame, target): offset each frame's assignments past the previous frames' targets
    offsets = torch.arange(assign[..., 0].numel(), device=x.device).view(*lead, 1) * count
    sums, counts = joined((assign + offsets).flatten(), x[..., others, :].flatten(0, -2), offsets.numel() * count)
    sums, counts = sums.view(*lead, count, -1), counts.view(*lead, count, 1)
    base = x[..., targets, :].float()
    merged = base + sums / counts.clamp(min=1) if faithful else (base + sums) / (counts + 1)
    member = 1 / counts.clamp(min=1) if faithful else 1 / (counts + 1)  # (..., count, 1)
    weights = x.new_zeros(*lead, count, n, dtype=torch.float32)
    rows = torch.arange(count, device=x.device)
    weights[..., rows, targets] = 1.0 if faithful else member[..., 0]
    weights[..., others] = (assign.unsqueeze(-2) == rows[:, None]).float() * member
    return merged.to(x.dtype), targets, weights


def density_scores(x: Tensor, knn: int) -> Tensor:
    """DPC-kNN score of each of ``x``'s (n, D) tokens: exp(-mean squared distance to its k nearest tokens, itself
    included) times the distance to the nearest token of higher density (the densest token gets the largest
    distance); distances are Euclidean / sqrt(D). Exact density ties go to the lower index (the FastVID reference
    adds unseeded 1e-6 noise instead). (n,) float32."""
    x = x.float()
    dist = torch.cdist(x, x) / math.sqrt(x.shape[-1])
    near = dist.topk(min(knn, x.shape[0]), dim=-1, largest=False).values
    density = (-(near**2).mean(-1)).exp()
    index = torch.arange(x.shape[0], device=x.device)
    # denser[i, j]: token j is denser than token i; an exact tie goes to the lower index
    other, own = density[None, :], density[:, None]
    denser = (other > own) | ((other == own) & (index[None, :] < index[:, None]))
    return torch.where(denser, dist, dist.max()).min(-1).values * density


def merge_into_anchors(anchors: Tensor, pool: Tensor, weight_floor: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """FastVID's Density-based Token Merging: each token of ``pool`` (n, D) joins its most similar anchor (m, D)
    by cosine; a merged token is ``a * anchor + (1 - a) * mean(joined)`` with ``a = max(1 / (count + 1),
    weight_floor)`` (the reference's beta), over raw features. Returns (m, D), each anchor's weight ``a`` (m,),
    each pool token's weight in the anchor it joined (n,) float32, and that anchor (n,)."""
    unit_a = torch.nn.functional.normalize(anchors.float(), dim=-1)
    unit_p = torch.nn.functional.normalize(pool.float(), dim=-1)
    assign = (unit_p @ unit_a.T).argmax(-1)
    sums, counts = joined(assign, pool, anchors.shape[0])
    mean = sums / counts.clamp(min=1)
    weight = (1 / (counts + 1)).clamp(min=weight_floor)
    joined_weight = ((1 - weight) / counts.clamp(min=1))[assign, 0]
    merged = (weight * anchors.float() + (1 - weight) * mean).to(anchors.dtype)
    return merged, weight[:, 0], joined_weight, assign


def frame_members(weights: Tensor, first: Tensor, start: int) -> Members:
    """Members of G frames' tokens from each token's weights on its frame's T tokens (G, K, T): token ``start +
    g * K + k`` of the block, frame tokens ``first[g] + t`` (``first`` (G,): each frame's first frame-token index)."""
    frame, token, column = weights.nonzero(as_tuple=True)
    count = weights.shape[1]
    return Members(start + frame * count + token, first[frame] + column, weights[frame, token, column])


def anchor_members(merged: tuple[Tensor, Tensor, Tensor, Tensor], anchors: Tensor, pool: Tensor, start: int) -> Members:
    """Members of the tokens :func:`merge_into_anchors` returned (``merged``), numbered from ``start``: each anchor
    (frame-token index ``anchors`` (m,)) at its weight, each pool token (``pool`` (n,)) at its weight in the anchor
    it joined."""
    _, anchor_weight, joined_weight, assign = merged
    token = torch.arange(start, start + len(anchors), device=anchors.device)
    return Members(
        torch.cat([token, token[assign]]), torch.cat([anchors, pool]), torch.cat([anchor_weight, joined_weight])
    )
