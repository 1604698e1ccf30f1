"""HoliTom's outer-LLM merging (Shao et al., NeurIPS 2025): global temporal segmentation by dynamic programming,
then spatial-temporal merging (docs/methods.md).

Reference: cokeshao/HoliTom ``holitom/llava_arch.py`` at ``b1d1412`` (``select_static_windows``,
``get_static_dynamic_features``, ``holitom``, ``merge_tokens_by_attention_density``, ``merge_tokens_by_density``,
``cluster_dpc_knn``, ``merge_tokens_by_clustering``), applied to the model's pooled frame tokens with the vision
encoder's attention pooled the same way (LLaVA-OV's 196 per frame before the newline).

1. A token is *static* from frame f to f + 1 when the cosine of its (L2-normalised) features there exceeds
   ``tau``. A window [s, e] of frames saves ``(e - s) * (tokens static through the whole window)`` tokens; the
   split of the video into windows that saves the most is found by dynamic programming (windows of at most
   ``max_window`` frames; a tie keeps the frame alone, then the shortest window).
2. The retention is rescaled to what is left: ``r' = min(r / ((N - saved) / N), 1)``.
3. In each window of several frames, each static token becomes the mean of its W frames; those means are
   merged by DPC-kNN clustering into ``round(n_static * r')`` tokens.
4. In every frame, of its ``n`` other (dynamic) tokens, ``ceil(n * r')`` are kept: ``round(ceil(n * r') * (1 -
   D))`` dominant ones by encoder attention and the rest as DPC-kNN cluster centres of the remaining tokens.
5. A cluster token is ``beta * centre + (1 - beta) * mean(tokens assigned to it)`` (nearest centre by Euclidean
   distance), or the centre alone when nothing joined it.

faithful vs fixed (segmentation and selections are the same):

- ``faithful``: counts as the reference (the total depends on the content); each window's static tokens, then
  each frame's dominant and then contextual tokens, renumbered contiguously as the reference rebuilds the sequence.
- ``fixed`` (default): exactly ``visual_budget(r, F*T)`` tokens, apportioned over the windows' static sets and
  the frames' dynamic sets in proportion to their sizes (largest remainders); when the budget exceeds what the
  segmentation leaves, the windows that save least are split back into single frames first, so ``retention=1``
  keeps every token unchanged. Every token sits at its source's original position (a static token at the
  window's first frame), in that order.

Both: exact density ties go to the lower index (the reference adds unseeded 1e-6 noise); similarities and
distances in float32 (the reference computes them in the model's dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..._checks import check_layer, check_mode, check_ratio
from ...stages import Needs, SourcePositions
from ...tokens import Members, PackedTokens, StageContext, VisualTokens
from .budget import visual_budget
from .merging import density_scores, require_encoder_attention


def frame_similarity(x: Tensor) -> Tensor:
    """Cosine similarity of each token to itself in the next frame, for ``x`` (F, T, D): (F - 1, T) float32."""
    unit = torch.nn.functional.normalize(x.float(), dim=-1)
    return torch.nn.functional.cosine_similarity(unit[:-1], unit[1:], dim=-1)


def static_windows(similarity: Tensor, tau: float, max_window: int) -> tuple[list[tuple[int, int]], int]:
    """HoliTom's global temporal segmentation of F frames from their ``similarity`` (F - 1, T) (module docstring,
    step 1): the windows ``(first, last)`` in order, covering every frame once, and the tokens they save in all.
    Counts are exact integers (the reference accumulates them in float32, exact below 2**24)."""
    frames = similarity.shape[0] + 1
    above = (similarity > tau).long()
    # saved[s][w - 2]: tokens saved by the window of w >= 2 frames starting at s
    saved: list[list[int]] = []
    for s in range(frames - 1):
        run = above[s : s + max_window - 1].cumprod(0).sum(-1)  # (w - 1,): static through frames s..s+w-1
        saved.append((run * torch.arange(1, len(run) + 1)).tolist())
    best, first = [0] * frames, [0] * frames
    for i in range(frames):
        value, start = (best[i - 1] if i else 0), i
        for size in range(2, min(i + 1, max_window) + 1):
            s = i - size + 1
            candidate = (best[s - 1] if s else 0) + saved[s][size - 2]
            if candidate > value:
                value, start = candidate, s
        best[i], first[i] = value, start
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((first[i], i))
        i = first[i] - 1
    return windows[::-1], best[-1]


def cluster_centres(x: Tensor, count: int, knn: int) -> Tensor:
    """The ``count`` DPC-kNN cluster centres of ``x`` (n, D), with the reference's ``min(knn, count)`` nearest
    neighbours for the density: row indices (count,), ascending."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    return density_scores(x, min(knn, count)).topk(count).indices.sort().values


def cluster_merge(x: Tensor, centres: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Every row of ``x`` (n, D) that is no centre joins its nearest centre (Euclidean; ties to the first centre);
    a centre with members becomes ``beta * centre + (1 - beta) * mean(members)``. Returns the merged tokens (m, D)
    and each one's weight on each row of ``x`` (m, n) float32."""
    n, m = x.shape[0], len(centres)
    weights = torch.zeros(m, n, device=x.device)
    weights[torch.arange(m, device=x.device), centres] = 1.0
    others = torch.ones(n, dtype=torch.bool, device=x.device)
    others[centres] = False
    if m and bool(others.any()):
        rows = others.nonzero()[:, 0]
        assign = torch.cdist(x[rows].float(), x[centres].float()).argmin(-1)
        members = torch.nn.functional.one_hot(assign, m).T.float()  # (m, n - m)
        count = members.sum(-1, keepdim=True)
        joined = count[:, 0] > 0
        weights[joined] *= beta
        weights[:, rows] = members * (1 - beta) / count.clamp(min=1)
    return (weights @ x.float()).to(x.dtype), weights


def _members(weights: Tensor, sources: Tensor, start: int) -> Members:
    """Members of ``weights`` (m, n) on rows whose frame-token indices are ``sources`` (n,), tokens from ``start``."""
    token, row = weights.nonzero(as_tuple=True)
    return Members(start + token, sources[row], weights[token, row])


@dataclass(frozen=True)
class HoliTomMerge(SourcePositions):
    """HoliTom's outer-LLM stage: windows of frames whose static tokens merge across time, then per frame the
    tokens the vision encoder attends most plus DPC-kNN cluster tokens, at ``visual_budget(retention, F*T)``
    tokens (``mode="fixed"``). ``HoliTomMerge(retention=1.0)`` keeps every token unchanged.

    Parameters
    ----------
    retention : float
        The reference's ``RETAIN_RATIO``: fraction of visual tokens entering the LLM, in (0, 1].
    tau : float
        HoliTom's tau (``T``): the cosine above which a token counts as static between frames, in [0, 1]
        (reference default 0.8; its 10 % runs use 0.65).
    beta : float
        HoliTom's beta (``BETA``): the centre's weight in a cluster token, in [0, 1] (reference 0.6).
    contextual_share : float
        HoliTom's D: share of each frame's kept dynamic tokens that are DPC-kNN cluster tokens, in [0, 1]
        (reference 0: all by attention).
    knn : int
        HoliTom's K: nearest neighbours of the density (at most the cluster count), >= 1 (reference 7).
    max_window : int
        Longest window in frames, >= 1 (reference ``MAX_WINDOW_SIZE`` 1024).
    mode : {"fixed", "faithful"}
        See the module docstring.

    Input ``tokens.features`` (B, F, T, D) with the encoder's ``tokens.attention`` (B, F, T); returns a
    :class:`~vidpress.tokens.PackedTokens` with each token's members (``PackedTokens.members``), followed by the
    model's extra tokens.

    Raises
    ------
    BudgetError
        ``retention`` outside (0, 1]; faithful videos of a batch that keep different counts.
    InvalidParameterError
        ``tau``, ``beta`` or ``contextual_share`` outside [0, 1], ``knn`` or ``max_window`` below 1, an unknown
        ``mode``.
    VidpressError
        No encoder attention (the stage runs outside the runtime).
    """

    retention: float = 0.15
    tau: float = 0.8
    beta: float = 0.6
    contextual_share: float = 0.0
    knn: int = 7
    max_window: int = 1024
    mode: Literal["faithful", "fixed"] = "fixed"
    needs: Needs = field(default=Needs(encoder_attention=True), init=False, repr=False)

    def __post_init__(self) -> None:
        visual_budget(self.retention, 1)
        check_ratio("tau", self.tau, symbol="HoliTom's tau")
        check_ratio("beta", self.beta, symbol="HoliTom's beta")
        check_ratio("contextual_share", self.contextual_share, symbol="HoliTom's D")
        check_layer("knn (HoliTom's K)", self.knn, minimum=1)
        check_layer("max_window", self.max_window, minimum=1)
        check_mode(self.mode)

    def kept_count(self, frames: int, tokens_per_frame: int, grid: tuple[int, int] | None = None) -> int | None:
        """``visual_budget(r, F*T)`` in fixed mode; None in faithful mode, where the content decides."""
        return visual_budget(self.retention, frames * tokens_per_frame) if self.mode == "fixed" else None

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> PackedTokens:
        attention, _ = require_encoder_attention(tokens, "HoliTom")
        batch, frames, per_frame, _ = tokens.features.shape
        rows, members = [], []
        for b in range(batch):
            feats, source, weights = self._video(tokens.features[b], attention[b])
            rows.append((feats, source // per_frame, torch.zeros_like(source), source))
            members.append(weights)
        return PackedTokens.from_rows(rows, 1, frames * per_frame, tokens.extra, members=members)

    def _video(self, x: Tensor, attention: Tensor) -> tuple[Tensor, Tensor, Members]:
        """One video ``x`` (F, T, D): its tokens (M, D), their sources (M,) and members, in the order of ``mode``."""
        frames, per_frame, _ = x.shape
        similarity = frame_similarity(x)
        windows, saved = static_windows(similarity, self.tau, self.max_window)
        total = frames * per_frame
        statics = [
            (similarity[s:e] > self.tau).all(0) if e > s else torch.zeros(per_frame, dtype=torch.bool)
            for s, e in windows
        ]
        if self.mode == "faithful":
            ratio = min(self.retention / ((total - saved) / total), 1)
            counts = [
                (round(int(m.sum()) * ratio), [math.ceil(int((~m).sum()) * ratio)] * (e - s + 1))
                for (s, e), m in zip(windows, statics)
            ]
        else:
            windows, statics, counts = self._budget(windows, statics, per_frame)
        parts, sources, weights = [], [], []
        start = 0
        frame_token = torch.arange(total, device=x.device).view(frames, per_frame)
        for (s, e), static, (static_count, dynamic_counts) in zip(windows, statics, counts):
            position = torch.arange(per_frame, device=x.device)
            if static_count:
                where = position[static.to(x.device)]
                means = x[s : e + 1, where].float().mean(0).to(x.dtype)
                centres = cluster_centres(means, static_count, self.knn)
                merged, weight = cluster_merge(means, centres, self.beta)
                # a static mean weighs 1/W on each frame of the window
                span = e - s + 1
                token, row = weight.nonzero(as_tuple=True)
                frame = torch.arange(s, e + 1, device=x.device)
                parts.append(merged)
                sources.append(frame_token[s, where[centres]])
                weights.append(
                    Members(
                        (start + token).repeat_interleave(span),
                        frame_token[frame[None, :], where[row][:, None]].flatten(),
                        (weight[token, row] / span).repeat_interleave(span),
                    )
                )
                start += len(merged)
            dynamic = position[~static.to(x.device)]
            for f, keep in zip(range(s, e + 1), dynamic_counts):
                feats, rows, weight = self._frame(x[f, dynamic], attention[f, dynamic], keep)
                parts.append(feats)
                sources.append(frame_token[f, dynamic[rows]])
                weights.append(_members(weight, frame_token[f, dynamic], start))
                start += len(feats)
        feats, source, member = torch.cat(parts), torch.cat(sources), Members.cat(weights)
        if self.mode == "fixed":
            source, order = source.sort()
            feats, member = feats[order], member.reorder(order)
        return feats, source, member

    def _frame(self, x: Tensor, attention: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
        """``keep`` tokens of one frame's dynamic tokens ``x`` (n, D): dominant by ``attention`` (n,), in position
        order, then cluster tokens (centres in position order). Returns them (keep, D), the rows whose positions
        they take (keep,) and their weights on the n rows (keep, n)."""
        dominant_count = round(keep * (1 - self.contextual_share))
        dominant = attention.float().topk(dominant_count).indices.sort().values
        weights = torch.zeros(len(dominant), len(x), device=x.device)
        weights[torch.arange(len(dominant), device=x.device), dominant] = 1.0
        parts, rows = [x[dominant]], [dominant]
        if keep > dominant_count:
            rest = torch.ones(len(x), dtype=torch.bool, device=x.device)
            rest[dominant] = False
            rest = rest.nonzero()[:, 0]
            centres = cluster_centres(x[rest], keep - dominant_count, self.knn)
            merged, on_rest = cluster_merge(x[rest], centres, self.beta)
            parts.append(merged)
            rows.append(rest[centres])
            weights = torch.cat([weights, on_rest.new_zeros(len(merged), len(x)).index_copy_(1, rest, on_rest)])
        return torch.cat(parts), torch.cat(rows), weights

    def _budget(
        self, windows: list[tuple[int, int]], statics: list[Tensor], per_frame: int
    ) -> tuple[list[tuple[int, int]], list[Tensor], list[tuple[int, list[int]]]]:
        """Fixed mode: the windows (those saving least split into single frames while the budget exceeds what is
        left) and each window's (static count, dynamic count per frame) summing to ``visual_budget(r, F*T)``."""
        frames = windows[-1][1] + 1
        budget = visual_budget(self.retention, frames * per_frame)
        windows, statics = list(windows), list(statics)

        def left() -> int:
            return sum(int(m.sum()) + (e - s + 1) * int((~m).sum()) for (s, e), m in zip(windows, statics))

        while left() < budget:
            saving = [((e - s) * int(m.sum()), s) for (s, e), m in zip(windows, statics) if e > s]
            _, first = min(saving)
            i = next(j for j, (s, _) in enumerate(windows) if s == first)
            s, e = windows[i]
            windows[i : i + 1] = [(f, f) for f in range(s, e + 1)]
            statics[i : i + 1] = [torch.zeros(per_frame, dtype=torch.bool) for _ in range(s, e + 1)]
        sizes = []
        for (s, e), m in zip(windows, statics):
            sizes.append(int(m.sum()))
            sizes.extend([int((~m).sum())] * (e - s + 1))
        shares = proportional(budget, sizes)
        counts, at = [], 0
        for s, e in windows:
            counts.append((shares[at], shares[at + 1 : at + 2 + e - s]))
            at += e - s + 2
        return windows, statics, counts


def proportional(budget: int, sizes: list[int]) -> list[int]:
    """``budget`` <= sum(``sizes``) tokens over groups in proportion to their ``sizes``, at most each size: floors,
    then one more to the largest remainders (ties to the lower index)."""
    total = sum(sizes)
    ideal = [budget * n / total for n in sizes] if total else [0.0] * len(sizes)
    counts = [min(n, math.floor(v)) for n, v in zip(sizes, ideal)]
    order = sorted(range(len(sizes)), key=lambda g: (-(ideal[g] - counts[g]), g))
    for g in order[: budget - sum(counts)]:
        counts[g] += 1
    return counts
