"""Prefill pruning by attention rank on a layer schedule: METok stage 2 (methods.md §2.2), and the engine
of FastV / PyramidDrop-style in-LLM dropping.

At each scheduled layer l the visual tokens alive are ranked by the attention they receive at layer l - 1
from the declared query rows (fp32, computed apart from the real SDPA attention; the n x n matrix is never
formed) and the top ones survive into layer l. Kept tokens keep their original rotary positions; the
system prefix and all text are always kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from ...errors import BudgetError, InvalidParameterError
from ...selection import Selection
from ...stages import Needs
from ...tokens import LayerSignals, StageContext
from .schedule import METOK_SCHEDULE, keep_count, solve_keep


@dataclass(frozen=True)
class AttentionRank:
    """Drop visual tokens at the input of scheduled layers by the attention they receive.

    Parameters
    ----------
    schedule : tuple of (layer, key_fraction, other_fraction)
        At each 0-based ``layer`` (>= 1, increasing), each key event keeps ``key_fraction`` of its alive
        tokens and each non-key event ``other_fraction`` (rule :func:`keep_count`; fractions relative to the
        tokens alive just before that layer, in [0, 1]). Without events (no event-aware pre-LLM stage) all
        visual tokens form one key event. Default: METok's reference schedule :data:`METOK_SCHEDULE`.
        A layer may be a float in (0, 1): a fraction of the LLM's depth, resolved by :meth:`for_depth`.
    query_rows : {"text", "last"}
        Which query rows score the tokens: every text token after the video (METok) or the last one (FastV).
    retention : float, optional
        Target mean fraction of visual tokens alive per LLM layer, in (0, 1]; when set, the fractions of the
        schedule are replaced by one keep fraction per step solved by :func:`solve_keep` for the model's
        depth (FastV / PyramidDrop at a budget).

    Raises
    ------
    InvalidParameterError
        Layers not increasing from >= 1, or a fraction outside [0, 1].
    BudgetError
        Batch rows whose events would keep different numbers of tokens.
    """

    schedule: tuple[tuple[int, float, float], ...] = METOK_SCHEDULE
    query_rows: Literal["text", "last"] = "text"
    retention: float | None = None
    needs: Needs = field(init=False, repr=False)

    def __post_init__(self) -> None:
        layers = [s[0] for s in self.schedule]
        relative = all(isinstance(v, float) and 0 < v < 1 for v in layers)
        if not layers or (not relative and layers[0] < 1) or any(b <= a for a, b in zip(layers, layers[1:])):
            raise InvalidParameterError(f"schedule layers must be increasing and >= 1 (or fractions of depth in "
                                        f"(0, 1)), got {layers}")
        if self.retention is not None and not 0 < self.retention <= 1:
            raise BudgetError(f"retention must be in (0, 1], got {self.retention}")
        for layer, key, other in self.schedule:
            if not (0 <= key <= 1 and 0 <= other <= 1):
                raise InvalidParameterError(f"keep fractions must lie in [0, 1], got ({key}, {other}) at layer {layer}")
        if self.query_rows not in ("text", "last"):
            raise InvalidParameterError(f"query_rows must be 'text' or 'last', got {self.query_rows!r}")
        resolved = not relative and self.retention is None
        object.__setattr__(self, "needs", Needs(query_rows=self.query_rows,
                                                score_layers=tuple(layer - 1 for layer in layers) if resolved else ()))

    def for_depth(self, num_layers: int) -> AttentionRank:
        """This stage for an LLM of ``num_layers`` layers: depth fractions and ``retention`` resolved.

        Raises
        ------
        BudgetError
            A layer beyond the model's depth, or an unreachable retention.
        """
        layers = [max(1, round(v * num_layers)) if isinstance(v, float) else v for v in self.layers]
        if layers[-1] >= num_layers or len(set(layers)) < len(layers):
            raise BudgetError(f"pruning layers {layers} do not fit an LLM of {num_layers} layers; choose layers "
                              f"between 1 and {num_layers - 1}")
        schedule = tuple((layer, key, other) for layer, (_, key, other) in zip(layers, self.schedule))
        if self.retention is not None:
            lam = solve_keep(self.retention, layers, num_layers)
            schedule = tuple((layer, lam, lam) for layer in layers)
        return replace(self, schedule=schedule, retention=None)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(s[0] for s in self.schedule)

    def __call__(self, signals: LayerSignals, ctx: StageContext | None = None) -> Selection:
        _, key_fraction, other_fraction = self.schedule[self.layers.index(signals.layer + 1)]
        scores = signals.scores
        batch, n = scores.shape
        events = signals.events if signals.events is not None else torch.zeros_like(scores, dtype=torch.long)
        key = signals.key_events if signals.key_events is not None else torch.ones(batch, 1, dtype=torch.bool)
        rows = []
        for b in range(batch):
            kept = []
            for e in events[b].unique().tolist():
                members = (events[b] == e).nonzero()[:, 0]
                k = keep_count(key_fraction if bool(key[b, e]) else other_fraction, members.numel())
                kept.append(members[scores[b, members].float().topk(k).indices])
            rows.append(torch.cat(kept) if kept else scores.new_zeros(0, dtype=torch.long))
        if len({r.numel() for r in rows}) > 1:
            raise BudgetError(f"batch rows keep different numbers of tokens ({[r.numel() for r in rows]}); run the "
                              "videos one at a time")
        return Selection.from_indices(torch.stack(rows), n)
