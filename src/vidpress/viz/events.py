"""Draw METok's stage-1 decisions: the similarity curve with event boundaries, key events and key frames,
and a strip of frame thumbnails labelled with each frame's token budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..stages.pre_llm.events import EventPlan


def draw_events(
    plan: EventPlan, frames: np.ndarray, timestamps: Sequence[float], path: str | Path, title: str = ""
) -> Path:
    """Write a PNG of ``plan`` for ``frames`` (F, H, W, 3) uint8 sampled at ``timestamps`` (seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num = len(plan.strides)
    cols = min(num, 16)
    rows = -(-num // cols)
    fig = plt.figure(figsize=(max(10, cols * 1.1), 3.2 + 1.3 * rows), constrained_layout=True)
    grid = fig.add_gridspec(1 + rows, cols, height_ratios=[2.4] + [1] * rows)
    ax = fig.add_subplot(grid[0, :])
    for e, (a, b) in enumerate(plan.events):
        key = e in plan.key_events
        ax.axvspan(
            a - 0.5,
            b + 0.5,
            color="tab:orange" if key else "tab:gray",
            alpha=0.18 if key else 0.08,
            label="key event" if key and e == plan.key_events[0] else None,
        )
    ax.plot(np.arange(num - 1) + 0.5, plan.similarity, "-o", ms=3, color="tab:blue", label="adjacent-frame similarity")
    for b in plan.boundaries:
        ax.axvline(b + 0.5, color="tab:red", ls="--", lw=1)
    relevance = np.asarray(plan.relevance)
    span = np.ptp(relevance) or 1.0
    ax.plot(
        np.arange(num),
        (relevance - relevance.min()) / span,
        ":",
        color="tab:green",
        label="frame-text relevance (scaled)",
    )
    ax.scatter(plan.key_frames, [1.03] * len(plan.key_frames), marker="v", color="tab:orange", label="key frame")
    ax.set_xlim(-0.5, num - 0.5)
    ax.set_xlabel("frame")
    ax.set_ylabel("cosine similarity")
    ax.set_title(title or f"{len(plan.events)} events, {sum(plan.tokens)} tokens before newlines")
    ax.legend(loc="lower left", fontsize=7, ncols=4)
    for i in range(num):
        thumb = fig.add_subplot(grid[1 + i // cols, i % cols])
        thumb.imshow(frames[i])
        thumb.set_xticks([])
        thumb.set_yticks([])
        colour = "tab:orange" if i in plan.key_frames else "black"
        thumb.set_title(f"{timestamps[i]:.1f}s\n{plan.tokens[i]} tok (s{plan.strides[i]})", fontsize=7, color=colour)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def events_table(plan: EventPlan, timestamps: Sequence[float]) -> Any:
    """A rich table: one row per event (frames, time span, key status, key frames, tokens)."""
    from rich.table import Table

    table = Table(title="METok events")
    for col in ("event", "frames", "time (s)", "key event", "key frames", "tokens"):
        table.add_column(col, justify="right")
    for e, (a, b) in enumerate(plan.events):
        keys = [f for f in plan.key_frames if a <= f <= b]
        table.add_row(
            str(e),
            f"{a}-{b}",
            f"{timestamps[a]:.1f}-{timestamps[b]:.1f}",
            "yes" if e in plan.key_events else "no",
            ", ".join(map(str, keys)),
            str(sum(plan.tokens[a : b + 1])),
        )
    return table
