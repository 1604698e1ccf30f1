"""METok stage 3, layer-wise KV trimming after prefill (docs/methods.md).

Once prefill ends, every layer from ``first_layer`` on keeps only the visual KV entries that survive every
later pruning step (the set alive at the last layer); earlier layers keep all of theirs. Storage is freed
for real (the cache tensors are index-selected), nothing is re-selected while decoding, and per-layer cache
lengths differ afterwards. Generic in the number of layers and pruning steps (the reference hard-codes 28
layers and 3 steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import InvalidParameterError
from ...selection import Selection
from ...stages import DecodeStage, Needs
from ...tokens import LayerSignals, StageContext


@dataclass(frozen=True)
class LayerwiseTrim(DecodeStage):
    """Trim layers >= ``first_layer`` to the final survivors once, right after prefill.

    Parameters
    ----------
    first_layer : int
        First trimmed layer (METok's reference: its first pruning layer, 3, so layers 0-2 keep the full stage-1
        visual KV).
    follows_prefill : bool
        Take the prefill stage's first pruning layer instead, whatever the LLM's depth makes it (METok's), resolved
        with the composition (:meth:`~vidpress.stages.Stages.for_depth`).

    Raises
    ------
    InvalidParameterError
        ``first_layer`` < 0.
    """

    first_layer: int = 3
    follows_prefill: bool = False
    needs: Needs = field(default=Needs(trim_after_prefill=True), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.first_layer < 0:
            raise InvalidParameterError(f"first_layer must be >= 0, got {self.first_layer}")

    def __call__(self, signals: LayerSignals, ctx: StageContext | None = None) -> Selection | None:
        return None  # nothing is chosen per step: the trim happened once after prefill

    def trim_counts(self, per_layer: list[int]) -> list[int]:
        """Visual KV entries stored per layer after the trim, from the prefill counts per layer."""
        final = per_layer[-1]
        return [n if layer < self.first_layer else min(n, final) for layer, n in enumerate(per_layer)]
