"""Layer-schedule arithmetic for in-LLM pruning: METok's per-event rule (docs/methods.md) and the per-step
keep fraction that meets a mean retention (FastV / PyramidDrop at a budget)."""

from __future__ import annotations

import math

from ...errors import BudgetError

#: METok's reference schedule: layers [3, 10, 19], rho = 0.76; non-key events rho/2 at the first layer and
#: 0 after it, key events 0 at the last layer (docs/methods.md).
METOK_SCHEDULE = ((3, 0.76, 0.38), (10, 0.76, 0.0), (19, 0.0, 0.0))


def metok_schedule(layers: tuple[int, ...] = (3, 10, 19), rho: float = 0.76) -> tuple[tuple[int, float, float], ...]:
    """The reference per-event rule for any number of pruning layers (>= 1)."""
    out = []
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        out.append((layer, 0.0 if last else rho, rho / 2 if i == 0 and not last else 0.0))
    return tuple(out)


def solve_keep(retention: float, layers: list[int], num_layers: int) -> float:
    """The per-step keep fraction lambda that makes the mean visual tokens alive per layer equal ``retention``.

    With every visual token alive before ``layers[0]`` and a fraction lambda of the survivors kept at each
    scheduled layer, the mean alive fraction is ``(layers[0] + sum_i lambda^(i+1) * span_i) / num_layers``.

    Raises
    ------
    BudgetError
        ``retention`` is below ``layers[0] / num_layers`` (unreachable even when dropping everything).
    """
    spans = [b - a for a, b in zip(layers, list(layers[1:]) + [num_layers])]

    def mean(lam: float) -> float:
        return (layers[0] + sum(lam ** (i + 1) * span for i, span in enumerate(spans))) / num_layers

    if not 0 < retention <= 1:
        raise BudgetError(f"retention must be in (0, 1], got {retention}")
    if retention < mean(0.0):
        raise BudgetError(
            f"retention {retention} is unreachable when pruning starts at layer {layers[0]} of "
            f"{num_layers} (minimum {mean(0.0):.3f}); prune earlier or raise the retention"
        )
    lo, hi = 0.0, 1.0
    for _ in range(60):  # mean() is increasing in lambda
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(mid) < retention else (lo, mid)
    return (lo + hi) / 2


def keep_count(fraction: float, n: int) -> int:
    """Tokens kept of ``n`` at ``fraction``: 0 when the fraction is 0, else max(1, ceil(fraction * n))."""
    return 0 if fraction == 0 or n == 0 else min(n, max(1, math.ceil(fraction * n - 1e-9)))
