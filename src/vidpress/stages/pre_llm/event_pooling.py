"""METok stage 1, event-aware compression during vision encoding (docs/methods.md).

The projected grid of each frame, taken *before* the model's own pooling, is pooled with a stride that
depends on whether the frame is a key frame and whether its event is a key event (reference strides
2 / 4 / 4 / 8: 196 / 49 / 16 tokens per frame on a 27 x 27 grid in bilinear mode). Events are emitted in
order, each followed by the model's newline (only the last one when they would not fit the placeholders).

faithful vs fixed (the pooling itself is the same):

- ``faithful`` splits every video into 5 events (the 4 lowest adjacent similarities, hard-coded in the
  reference) and numbers the packed block contiguously, as the reference does.
- ``fixed`` (default) segments adaptively (:func:`~vidpress.stages.pre_llm.events.segment`: a long video is
  not forced into 5 events) and gives each pooled token the original position ((t, h, w) ids on M-RoPE
  models) of the model token nearest its window's centre.

Fixed-budget form (``retention`` set; METok has none, vidpress adds it for serving engines, which size the prompt
before they see the video, and for comparisons at a retention): the same events, key events and key frames rank
the frames (key frames of key events first, then the other key-event frames and the other events' key frames,
then the rest; by relevance within each), and the frames take, rank by rank, the finest of the (key, middle, low)
strides that leaves every later frame the low one within ``visual_budget(retention, F*T)``. Which frames get which
stride follows the content; how many does not, so the count is fixed by (F, T, retention)
(:meth:`EventPooling.kept_count`). It pools the model's own token grid (METok's patch-grid strides over the 2x2
pooling every supported family applies: (2, 4, 8) -> (1, 2, 4), so a key frame keeps the model's tokens), needs
no unpooled capture, and ends with the model's own extra tokens instead of a newline per event.

Frame-text relevance: the reference scores frames with a second full SigLIP model
(:class:`~vidpress.stages.pre_llm.relevance.SiglipRelevance`); the default here is
:class:`~vidpress.stages.pre_llm.relevance.EmbeddingRelevance` (no second vision model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from ..._checks import check_mode
from ...errors import BudgetError, InvalidParameterError, VidpressError
from ...stages import Needs, SourcePositions
from ...tokens import Members, PackedTokens, StageContext, VisualTokens
from .budget import visual_budget
from .events import EventPlan, plan_events
from .merging import frame_members
from .pooling import cell_areas, pool_grid, pool_weights, window_sources
from .relevance import EmbeddingRelevance


@dataclass(frozen=True)
class EventPooling(SourcePositions):
    """METok stage 1 as a pre-LLM stage.

    Parameters
    ----------
    mode : {"fixed", "faithful"}
        Segmentation: ``fixed`` adaptive, ``faithful`` 5 events (see module docstring).
    boundaries : int
        Faithful mode's k, the number of boundaries (reference 4 -> 5 events).
    z : float
        Adaptive mode: boundaries are similarities below mean - z * std.
    min_event_frames : int
        Adaptive mode: at most F // min_event_frames events.
    key_events, key_frames : int or float
        METok's alpha and beta: a count (reference: top 3 events, top 6 frames per event) or a fraction.
    strides : tuple of 4 ints
        Pooling strides (key event & key frame, key event other, non-key & key frame, non-key other).
    pool : {"bilinear", "average"}
        Bilinear matches LLaVA-OV's own pooling.
    relevance : FrameTextRelevance, optional
        Frame-text scorer; default :class:`EmbeddingRelevance` (no second model), or the reference's
        :class:`SiglipRelevance` for users with a SigLIP checkpoint.
    retention : float, optional
        The fixed-budget form (module docstring): at most ``visual_budget(retention, F*T)`` visual tokens, a
        count fixed before the content is seen. None (default): METok's own, content-sized plan.

    Input ``tokens.unpooled`` (B, F, h0, w0, D) (the fixed-budget form: ``tokens.features`` (B, F, T, D) on
    ``tokens.grid``) and ``tokens.text`` (B, R, D); returns a :class:`~vidpress.tokens.PackedTokens` whose
    ``info`` is the list of per-row EventPlans (the fixed-budget form's strides are on the model's token grid).

    Raises
    ------
    InvalidParameterError
        A stride < 1, an unknown mode or pool.
    BudgetError
        Batch rows whose videos pack to different lengths; ``retention`` outside (0, 1], or below what every
        frame at the low stride takes.
    """

    mode: Literal["faithful", "fixed"] = "fixed"
    boundaries: int = 4
    z: float = 1.0
    min_event_frames: int = 4
    key_events: int | float = 3
    key_frames: int | float = 6
    strides: tuple[int, int, int, int] = (2, 4, 4, 8)
    pool: Literal["bilinear", "average"] = "bilinear"
    relevance: Any = None
    retention: float | None = None
    needs: Needs = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.relevance is None:
            object.__setattr__(self, "relevance", EmbeddingRelevance())
        if self.retention is not None:
            visual_budget(self.retention, 1)
        unpooled = self.retention is None
        object.__setattr__(self, "needs", Needs(unpooled=unpooled, text=True, pixels=self.relevance.needs_pixels))
        check_mode(self.mode)
        if len(self.strides) != 4 or any(int(s) != s or s < 1 for s in self.strides):
            raise InvalidParameterError(f"strides must be 4 integers >= 1, got {self.strides}")
        if self.pool not in ("bilinear", "average"):
            raise InvalidParameterError(f"pool must be 'bilinear' or 'average', got {self.pool!r}")
        if self.boundaries < 0 or self.min_event_frames < 1:
            raise InvalidParameterError("boundaries must be >= 0 and min_event_frames >= 1")

    def plan(self, tokens: VisualTokens, row: int, frames: torch.Tensor, grid: tuple[int, int]):
        """The :class:`EventPlan` of batch row ``row`` from its frame embeddings (F, D). Strides are relative to
        the patch grid; on an unpooled grid already merged by ``tokens.unpooled_stride`` (Qwen's 2x2 merger)
        they are divided by it."""
        relevance = self.relevance(tokens, row, frames)
        a, b, c, d = (max(1, s // tokens.unpooled_stride) for s in self.strides)
        strides = (a, b, c, d)
        return plan_events(
            frames,
            relevance,
            segmentation="faithful" if self.mode == "faithful" else "adaptive",
            boundaries=self.boundaries,
            z=self.z,
            min_event_frames=self.min_event_frames,
            key_events=self.key_events,
            key_frames=self.key_frames,
            strides=strides,
            grid=grid,
            rounding=math.ceil if self.pool == "bilinear" else math.floor,
        )

    def _tokens_at(self, stride: int, grid: tuple[int, int]) -> int:
        """Tokens a (h, w) grid pooled by ``stride`` keeps (bilinear rounds up, average down)."""
        rounding = math.ceil if self.pool == "bilinear" else math.floor
        return rounding(grid[0] / stride) * rounding(grid[1] / stride)

    def budget_strides(self) -> tuple[int, int, int]:
        """The fixed-budget form's (key, middle, low) pooling of the model's token grid: ``strides`` (key event
        and key frame, key event other, non-key other) over the model's own 2x2 pooling."""
        key, middle, low = (max(1, self.strides[i] // 2) for i in (0, 1, 3))
        return key, middle, low

    def allotment(self, frames: int, grid: tuple[int, int]) -> list[int]:
        """The fixed-budget form's stride for the frame at each priority rank (rank 0 first), from (F, grid) and
        ``retention`` alone: the finest that leaves every later frame the low stride within the budget.

        Raises
        ------
        BudgetError
            Every frame at the low stride already exceeds ``visual_budget(retention, F*h*w)``.
        InvalidParameterError
            Average pooling at the low stride leaves no token of the grid.
        """
        if self.retention is None:
            raise InvalidParameterError("the fixed-budget form needs a retention, e.g. EventPooling(retention=0.25)")
        cost = {k: self._tokens_at(k, grid) for k in self.budget_strides()}
        budget = visual_budget(self.retention, frames * grid[0] * grid[1])
        fine, middle, low = self.budget_strides()
        if cost[low] == 0:
            raise InvalidParameterError(
                f"average pooling by {low} leaves nothing of a {grid[0]}x{grid[1]} grid; use pool='bilinear' or "
                "smaller strides"
            )
        if frames * cost[low] > budget:
            least = frames * cost[low] / (frames * grid[0] * grid[1])
            raise BudgetError(
                f"METok's fixed-budget form keeps at least {cost[low]} tokens per frame (stride {low} on a "
                f"{grid[0]}x{grid[1]} grid), {frames * cost[low]} for {frames} frames, over the {budget} of "
                f"retention {self.retention}; raise retention to >= {least:.3f} or the low stride"
            )
        used, out = 0, []
        for rank in range(frames):
            later = (frames - 1 - rank) * cost[low]
            stride = next(k for k in (fine, middle, low) if used + cost[k] + later <= budget)
            out.append(stride)
            used += cost[stride]
        return out

    def kept_count(self, frames: int, tokens_per_frame: int, grid: tuple[int, int] | None = None) -> int | None:
        """The fixed-budget form's visual tokens (at most ``visual_budget(retention, F*T)``); None for METok's
        own plan, whose events decide. ``grid`` (h, w) of a frame's tokens; default square.

        Raises
        ------
        InvalidParameterError
            No ``grid`` and ``tokens_per_frame`` is not a square, or a ``grid`` of another size.
        """
        if self.retention is None:
            return None
        if grid is None:
            side = math.isqrt(tokens_per_frame)
            if side * side != tokens_per_frame:
                raise InvalidParameterError(f"{tokens_per_frame} tokens per frame is not a square grid; pass grid")
            grid = (side, side)
        if grid[0] * grid[1] != tokens_per_frame:
            raise InvalidParameterError(f"grid {grid} does not hold {tokens_per_frame} tokens per frame")
        return sum(self._tokens_at(k, grid) for k in self.allotment(frames, grid))

    def budget_plan(self, tokens: VisualTokens, row: int, frames: torch.Tensor | None = None) -> EventPlan:
        """The fixed-budget plan of batch row ``row``: events, key events and key frames as METok plans them from
        one embedding per frame, ``frames`` (F, D) (default: the mean of each frame's ``tokens.features``; the
        vision slot passes a low-resolution first pass's), then each frame's stride on ``tokens.grid``."""
        frames = tokens.features[row].mean(1).float() if frames is None else frames.float()
        plan = self.plan(tokens, row, frames, tokens.grid)  # its strides are METok's own, replaced below
        event_of = [e for e, (a, z) in enumerate(plan.events) for _ in range(a, z + 1)]
        tier = [
            (event_of[f] in plan.key_events) + (f in plan.key_frames) for f in range(len(event_of))
        ]  # 2: key frame of a key event, 1: one of the two, 0: neither
        order = sorted(range(len(event_of)), key=lambda f: (-tier[f], -plan.relevance[f], f))
        strides = [0] * len(order)
        for stride, f in zip(self.allotment(len(order), tokens.grid), order):
            strides[f] = stride
        return replace(plan, strides=strides, tokens=[self._tokens_at(k, tokens.grid) for k in strides])

    def _budget_call(self, tokens: VisualTokens) -> PackedTokens:
        batch, frames, per_frame, dim = tokens.features.shape
        h, w = tokens.grid
        rows, plans, members = [], [], []
        coarse = tokens.coarse or {}
        weights = {k: pool_weights((h, w), k, self.pool).to(tokens.features.device) for k in self.budget_strides()}
        for b in range(batch):
            plan = tokens.vision_plan[b] if tokens.vision_plan is not None else self.budget_plan(tokens, b)
            feats, frame_of, events, source, parts = [], [], [], [], []
            for e, (a, z) in enumerate(plan.events):
                for f in range(a, z + 1):
                    k = plan.strides[f]
                    if k in coarse:  # the tower encoded this frame at the stride's resolution
                        feats.append(coarse[k][b, f])
                    else:
                        feats.append(pool_grid(tokens.features[b, f].view(1, h, w, dim), k, self.pool)[0])
                        first = torch.tensor([f * per_frame], device=feats[-1].device)
                        parts.append(frame_members(weights[k][None], first, sum(len(x) for x in feats[:-1])))
                    where = window_sources((h, w), k, (h, w), self.pool).to(tokens.features.device)
                    source.append(where + f * per_frame)
                    frame_of.append(torch.full_like(where, f))
                    events.append(torch.full_like(where, e))
            rows.append((torch.cat(feats), torch.cat(frame_of), torch.cat(events), torch.cat(source)))
            plans.append(plan)
            members.append(Members.cat(parts) if len(parts) == len(source) else None)
        num_events = max(len(p.events) for p in plans)
        known = None if any(m is None for m in members) else [m for m in members if m is not None]
        packed = PackedTokens.from_rows(rows, num_events, frames * per_frame, tokens.extra, plans, known)
        key = torch.zeros_like(packed.key_events)
        for b, p in enumerate(plans):
            key[b, p.key_events] = True
        return replace(packed, key_events=key)

    def __call__(self, tokens: VisualTokens, ctx: StageContext | None = None) -> PackedTokens:
        if self.retention is not None:
            return self._budget_call(tokens)
        grids = tokens.unpooled
        if grids is None:
            raise VidpressError("EventPooling needs the unpooled grid; install it with vidpress.apply to capture it")
        batch, frames = grids.shape[:2]
        project = tokens.project or (lambda x: x)  # models that pool before their projector
        rows, plans, members, areas = [], [], [], []
        per_frame = tokens.tokens_per_frame
        room = frames * per_frame + (0 if tokens.extra is None else tokens.extra.shape[1])
        # members in frame tokens exist when the grid pooled is the tokens' own (Qwen's merged grid)
        own_grid = tokens.project is None and tuple(grids.shape[2:4]) == tuple(tokens.grid)
        for b in range(batch):
            side = (grids.shape[2], grids.shape[3])
            parts, covered = [], []
            cells = cell_areas(side, tokens.grid).to(grids.device)
            plan = self.plan(tokens, b, project(grids[b].mean((1, 2))).float(), side)
            pooled = {
                s: project(pool_grid(grids[b, [f for f in range(frames) if plan.strides[f] == s]], s, self.pool))
                for s in set(plan.strides)
            }
            taken = {s: 0 for s in pooled}
            feats, events, frame_of, source = [], [], [], []
            for e, (a, z) in enumerate(plan.events):
                for f in range(a, z + 1):
                    s = plan.strides[f]
                    feats.append(pooled[s][taken[s]])
                    taken[s] += 1
                    first = torch.tensor([f * per_frame], device=grids.device)
                    start = sum(len(x) for x in feats[:-1])
                    weights = pool_weights(side, s, self.pool).to(grids.device)
                    if own_grid:
                        parts.append(frame_members(weights[None], first, start))
                    else:  # a finer grid than the tokens': what each covers of their cells
                        covered.append(frame_members((weights @ cells)[None], first, start))
                    events += [e] * feats[-1].shape[0]
                    frame_of += [f] * feats[-1].shape[0]
                    source += (window_sources(side, s, tokens.grid, self.pool) + f * per_frame).tolist()
                newline = None if tokens.extra is None or not tokens.extra.shape[1] else tokens.extra[b, :1]
                if newline is not None and (e == len(plan.events) - 1 or sum(plan.tokens) + len(plan.events) <= room):
                    feats.append(newline.to(grids.dtype))  # one after each event, if they fit
                    events.append(e)
                    frame_of.append(-1)
                    source.append(-1)
            # a newline sits where the next event starts; the last one at the model's own newline placeholder
            for i in reversed(range(len(source))):
                source[i] = source[i] if source[i] >= 0 else (source[i + 1 :] or [frames * per_frame])[0]
            rows.append((torch.cat(feats), events, frame_of, source))
            plans.append(plan)
            members.append(Members.cat(parts) if own_grid else None)
            areas.append(None if own_grid else Members.cat(covered))
        lengths = {len(r[1]) for r in rows}
        if len(lengths) > 1:
            raise BudgetError(
                f"videos in the batch pack to different lengths {sorted(lengths)}; run them one at a time"
            )
        num_events = max(len(p.events) for p in plans)
        key = torch.zeros(batch, num_events, dtype=torch.bool)
        for b, p in enumerate(plans):
            key[b, p.key_events] = True
        device = grids.device
        return PackedTokens(
            torch.stack([r[0] for r in rows]),
            torch.tensor([r[1] for r in rows], device=device),
            key.to(device),
            torch.tensor([r[2] for r in rows], device=device),
            plans,
            source=torch.tensor([r[3] for r in rows], device=device),
            members=tuple(m for m in members if m is not None) if own_grid else None,
            areas=None if own_grid else tuple(a for a in areas if a is not None),
        )
