"""Budgets shared by the pre-LLM stages: the visual tokens a retention keeps, their split over frames, and evenly
spread indices. Every stage that takes a ``retention`` keeps exactly :func:`visual_budget` tokens."""

from __future__ import annotations

import torch

from ...errors import BudgetError


def visual_budget(retention: float, n: int) -> int:
    """Visual tokens kept of ``n`` at ``retention`` in (0, 1]: ``max(1, round(retention * n))``.

    Raises
    ------
    BudgetError
        ``retention`` outside (0, 1].
    """
    if isinstance(retention, bool) or not isinstance(retention, (int, float)) or not 0 < retention <= 1:
        raise BudgetError(f"retention must be in (0, 1], got {retention!r}; it is the fraction of visual tokens kept")
    return max(1, round(retention * n))


def frame_budgets(budget: int, frames: int) -> list[int]:
    """Split ``budget`` tokens evenly over ``frames`` frames; the first ``budget % frames`` frames take one more."""
    base, rest = divmod(budget, frames)
    return [base + (f < rest) for f in range(frames)]


def spread(count: int, n: int) -> torch.Tensor:
    """``count`` indices spread evenly over ``range(n)`` (centred in equal bins), sorted and unique."""
    return ((torch.arange(count) + 0.5) * n / count).long().clamp_max(n - 1)


def apportion(budget: int, weights: torch.Tensor, cap: int) -> list[int]:
    """``budget`` tokens over len(``weights``) frames in proportion to ``weights`` (F,) >= 0: largest remainders,
    at most ``cap`` per frame and, when the budget allows, at least one each (uniform when every weight is 0).

    Raises
    ------
    BudgetError
        More than ``cap`` per frame would be needed.
    """
    frames = len(weights)
    if budget > frames * cap:
        raise BudgetError(f"{budget} tokens do not fit {frames} frames of at most {cap}")
    floor = 1 if budget >= frames else 0
    w = weights.double().clamp(min=0)
    share = w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1 / frames)
    ideal = floor + share * (budget - floor * frames)
    counts = ideal.floor().long().clamp(max=cap).tolist()
    # frames by remainder, largest first (ties to the lower index): each in turn takes one more while room is left
    order = sorted(range(frames), key=lambda f: (-(float(ideal[f]) - counts[f]), f))
    left = budget - sum(counts)
    while left > 0:
        for f in order:
            if left and counts[f] < cap:
                counts[f] += 1
                left -= 1
    return counts
