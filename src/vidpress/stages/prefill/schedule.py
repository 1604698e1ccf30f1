"""Layer-schedule arithmetic for in-LLM pruning: METok's per-event rule (docs/methods.md) and the per-step
keep fraction that meets a mean retention (FastV / PyramidDrop at a budget)."""

from __future__ import annotations

import math

from ...errors import BudgetError

#: METok's reference schedule: layers [3, 10, 19], rho = 0.76; non-key events rho/2 at the first layer and
#: 0 after it, key events 0 at the last layer (docs/methods.md).
METOK_SCHEDULE = ((3, 0.76, 0.38), (10, 0.76, 0.0), (19, 0.0, 0.0))


#: METok's reference pruning layers and the depth of the LLM they were chosen for (LLaVA-OV-7B's Qwen2-7B).
METOK_LAYERS, METOK_DEPTH = (3, 10, 19), 28


def fit_layers(layers: list[int], num_layers: int, depth: int) -> list[int]:
    """``layers`` chosen for a ``depth``-layer LLM, on one of ``num_layers``: as they are when the last one fits,
    else at the same fractions of the depth, each at least 1 and past the one before ((3, 10, 19) of 28 on 4
    layers: (1, 2, 3)).

    Raises
    ------
    BudgetError
        The LLM has fewer layers than the schedule has steps (plus layer 0).
    """
    if layers[-1] < num_layers:
        return list(layers)
    if len(layers) >= num_layers:
        raise BudgetError(
            f"{len(layers)} pruning layers do not fit an LLM of {num_layers} layers (layer 0 is never pruned); "
            f"choose at most {num_layers - 1} layers"
        )
    fitted: list[int] = []
    for i, layer in enumerate(layers):
        room = num_layers - (len(layers) - i)  # leave one layer for each later step
        fitted.append(min(room, max(round(layer * num_layers / depth), fitted[-1] + 1 if fitted else 1)))
    return fitted


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
