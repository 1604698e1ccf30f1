"""Prefill pruning by attention rank on a layer schedule: METok stage 2 (docs/methods.md), and the engine
of FastV / PyramidDrop-style in-LLM dropping.

At each scheduled layer l the visual tokens alive are ranked by the attention they receive from the declared
query rows (fp32, computed apart from the real SDPA attention; the n x n matrix is never formed) and the top
ones survive into layer l. The attention is layer l - 1's (FastV, METok) or, with ``score_layer="own"``,
layer l's own, its input norm, q and k applied to its input just before the drop (PyramidDrop). Kept tokens
keep their original rotary positions unless ``positions="contiguous"``; the system prefix and all text are
always kept.

Counts (``count_rule``):

- ``"ceil"``: each event keeps ``max(1, ceil(f * n))`` of its ``n`` alive tokens (METok's per-event rule).
- ``"round"``: ``round(n * f)`` of the ``n`` alive tokens, ranked over the whole video (FastV's reference,
  pkunlp-icler/FastV ``src/FastV/llava-hf/transformers/.../modeling_llama.py`` at ``d165972``: Python's
  ``round``, halves to even).
- ``"floor_input"``: ``int(N * f_1 * ... * f_s)`` at the s-th drop, N the visual tokens entering the LLM,
  ranked over the whole video (PyramidDrop's reference, Cooperx521/PyramidDrop
  ``llava/model/modeling_llama_pdrop.py`` ``pdrop_rank_drop`` at ``6444f30``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from ...errors import BudgetError, InvalidParameterError
from ...selection import Selection
from ...stages import Needs, PrefillStage
from ...tokens import LayerSignals, StageContext
from .schedule import METOK_SCHEDULE, fit_layers, keep_count, solve_keep


@dataclass(frozen=True)
class AttentionRank(PrefillStage):
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
    count_rule : {"ceil", "round", "floor_input"}
        How many tokens a step keeps (module docstring). ``"round"`` and ``"floor_input"`` rank all visual
        tokens together (the references have no events) and use the key fraction.
    score_layer : {"previous", "own"}
        Score with layer l - 1's attention, or with layer l's own projections on its input (PyramidDrop).
    positions : {"original", "contiguous"}
        ``contiguous`` renumbers the sequence 0..n-1 after every drop and shifts decoding positions to match
        (PyramidDrop's reference); refused on M-RoPE models.
    depth : int, optional
        The LLM depth the integer layers were chosen for: on an LLM too shallow for them they move to the same
        fractions of its depth (:func:`~.schedule.fit_layers`; METok's defaults). None: such an LLM is refused.

    Raises
    ------
    InvalidParameterError
        Layers not increasing from >= 1, a fraction outside [0, 1], or an unknown rule.
    BudgetError
        Batch rows whose events would keep different numbers of tokens.
    """

    schedule: tuple[tuple[int, float, float], ...] = METOK_SCHEDULE
    query_rows: Literal["text", "last"] = "text"
    retention: float | None = None
    count_rule: Literal["ceil", "round", "floor_input"] = "ceil"
    score_layer: Literal["previous", "own"] = "previous"
    positions: Literal["original", "contiguous"] = "original"
    depth: int | None = None
    needs: Needs = field(init=False, repr=False)

    def __post_init__(self) -> None:
        layers = [s[0] for s in self.schedule]
        relative = all(isinstance(v, float) and 0 < v < 1 for v in layers)
        if not layers or (not relative and layers[0] < 1) or any(b <= a for a, b in zip(layers, layers[1:])):
            raise InvalidParameterError(
                f"schedule layers must be increasing and >= 1 (or fractions of depth in (0, 1)), got {layers}"
            )
        if self.retention is not None and not 0 < self.retention <= 1:
            raise BudgetError(f"retention must be in (0, 1], got {self.retention}")
        for layer, key, other in self.schedule:
            if not (0 <= key <= 1 and 0 <= other <= 1):
                raise InvalidParameterError(f"keep fractions must lie in [0, 1], got ({key}, {other}) at layer {layer}")
        for name, allowed in (
            ("query_rows", ("text", "last")),
            ("count_rule", ("ceil", "round", "floor_input")),
            ("score_layer", ("previous", "own")),
            ("positions", ("original", "contiguous")),
        ):
            if getattr(self, name) not in allowed:
                raise InvalidParameterError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        resolved = not relative and self.retention is None
        own = self.score_layer == "own"
        object.__setattr__(
            self,
            "needs",
            Needs(
                query_rows=self.query_rows,
                scores_at_drop=own,
                score_layers=tuple(layer - 1 for layer in layers) if resolved and not own else (),
            ),
        )

    def for_depth(self, num_layers: int) -> AttentionRank:
        """This stage for an LLM of ``num_layers`` layers: depth fractions and ``retention`` resolved (a plain
        :class:`AttentionRank`, also for the presets below).

        Raises
        ------
        BudgetError
            A layer beyond the model's depth, or an unreachable retention.
        """
        layers = [max(1, round(v * num_layers)) if isinstance(v, float) else v for v in self.layers]
        if self.depth is not None:
            layers = fit_layers(layers, num_layers, self.depth)
        if layers[-1] >= num_layers or len(set(layers)) < len(layers):
            raise BudgetError(
                f"pruning layers {layers} do not fit an LLM of {num_layers} layers; choose layers "
                f"between 1 and {num_layers - 1}"
            )
        schedule = tuple((layer, key, other) for layer, (_, key, other) in zip(layers, self.schedule))
        if self.retention is not None:
            lam = solve_keep(self.retention, layers, num_layers)
            schedule = tuple((layer, lam, lam) for layer in layers)
        return AttentionRank(
            schedule=schedule,
            query_rows=self.query_rows,
            count_rule=self.count_rule,
            score_layer=self.score_layer,
            positions=self.positions,
        )

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(s[0] for s in self.schedule)

    def drop_layer(self, signals: LayerSignals) -> int:
        """The scheduled layer whose input ``signals`` were scored for."""
        return signals.layer + (0 if self.needs.scores_at_drop else 1)

    def __call__(self, signals: LayerSignals, ctx: StageContext | None = None) -> Selection:
        step = self.layers.index(self.drop_layer(signals))
        _, key_fraction, other_fraction = self.schedule[step]
        scores = signals.scores
        batch, n = scores.shape
        if self.count_rule != "ceil":
            if self.count_rule == "round":
                k = round(n * key_fraction)
            else:
                if signals.input_count is None:
                    raise InvalidParameterError(
                        "count_rule='floor_input' needs the visual tokens entering the LLM (LayerSignals.input_count)"
                    )
                k = int(signals.input_count * math.prod(s[1] for s in self.schedule[: step + 1]))
            return Selection.top_k(scores, min(k, n))
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
            raise BudgetError(
                f"batch rows keep different numbers of tokens ({[r.numel() for r in rows]}); run the "
                "videos one at a time"
            )
        return Selection.from_indices(torch.stack(rows), n)
