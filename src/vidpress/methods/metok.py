"""METok ("Multi-stage Event-based Token compression", 2025): the first public implementation.

Stage 1 event-aware pooling before the LLM, stage 2 hierarchical per-event pruning during prefill, stage 3
a one-time layer-wise KV trim after prefill (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..errors import InvalidParameterError
from ..method import Method
from ..stages import Stages
from ..stages.decode.layerwise_trim import LayerwiseTrim
from ..stages.pre_llm.event_pooling import EventPooling
from ..stages.prefill.attention_rank import AttentionRank
from ..stages.prefill.schedule import METOK_DEPTH, METOK_LAYERS, metok_schedule
from ..stages.vision.coarse_to_fine import CoarseToFine


@dataclass(frozen=True)
class METok(Method):
    """METok = EventPooling (pre-LLM) + AttentionRank (prefill, per event) + LayerwiseTrim (decode).

    Parameters
    ----------
    mode : {"fixed", "faithful"}
        ``fixed`` (default) segments adaptively (events follow the video); ``faithful`` forces the reference's
        5 events. Everything else is shared; positions are always kept (the reference's left-padding path
        does not remap them, which vidpress does not reproduce).
    key_events, key_frames : int or float
        METok's alpha and beta: counts (reference: 3 key events, 6 key frames per event) or fractions.
    strides : 4 ints
        Pooling strides (key event: key frame, other; non-key event: key frame, other); reference (2, 4, 4, 8).
    layers : tuple of int
        Pruning layers (reference (3, 10, 19), chosen for a 28-layer LLM: on an LLM of fewer than 20 layers the
        reference layers move to the same fractions of its depth, e.g. (1, 2, 3) on 4 layers; other layers are
        taken as given); ``rho`` is the per-step keep ratio (reference 0.76).
    schedule : tuple of (layer, key_fraction, other_fraction), optional
        Overrides ``layers``/``rho`` with an explicit schedule (see AttentionRank).
    z, min_event_frames, boundaries
        Segmentation knobs (see EventPooling).
    relevance : FrameTextRelevance, optional
        Frame-text scorer: default ``EmbeddingRelevance`` (no second model); ``SiglipRelevance(path,
        tokenizer)`` is the reference's second SigLIP, for users with that checkpoint.
    retention : float, optional
        Stage 1's fixed-budget form (not in the paper; see EventPooling): at most that share of the visual tokens
        enter the LLM, a count fixed before the content is seen. None: the paper's content-sized plan.
    coarse : bool
        Coarse-to-fine vision encoding (needs ``retention``; LLaVA-OneVision): a low-resolution first pass of every
        frame plans the events, then only the frames kept finer are encoded at their resolution
        (:class:`~vidpress.stages.vision.coarse_to_fine.CoarseToFine`). ``first_pass`` ("low" or "middle") is
        the first pass's resolution, or "tome": full resolution with the tower merging to ``first_retention``;
        ``refine`` ("strides", "full", "all") which frames the second pass encodes at full resolution (see
        CoarseToFine).

    ``METok(mode="faithful", boundaries=0, strides=(2, 2, 2, 2), schedule=((3, 1.0, 1.0),))`` keeps every
    token of a LLaVA-OV video and reproduces the uncompressed model.
    """

    name: ClassVar[str] = "metok"
    mode: Literal["faithful", "fixed"] = "fixed"
    key_events: int | float = 3
    key_frames: int | float = 6
    strides: tuple[int, int, int, int] = (2, 4, 4, 8)
    pool: Literal["bilinear", "average"] = "bilinear"
    layers: tuple[int, ...] = METOK_LAYERS
    rho: float = 0.76
    schedule: tuple[tuple[int, float, float], ...] | None = None
    z: float = 1.0
    min_event_frames: int = 4
    boundaries: int = 4
    relevance: Any = None
    retention: float | None = None
    coarse: bool = False
    first_pass: Literal["low", "middle", "tome"] = "low"
    refine: Literal["strides", "full", "all"] = "strides"
    first_retention: float | None = None

    @classmethod
    def keep_everything(cls) -> METok:
        """One event (z=100 finds no boundary), every frame at the model's own tokens (stride 2 on the patch grid),
        two pruning steps keeping everything."""
        return cls(z=100.0, strides=(2, 2, 2, 2), schedule=((1, 1.0, 1.0), (3, 1.0, 1.0)))

    def build(self) -> Stages:
        if self.coarse and self.retention is None:
            raise InvalidParameterError(
                "METok's coarse-to-fine encoding plans with its fixed-budget form: set a retention as well, e.g. "
                "METok(retention=0.25, coarse=True)"
            )
        defaults = {"first_pass": "low", "refine": "strides", "first_retention": None}
        changed = [k for k, default in defaults.items() if getattr(self, k) != default]
        if changed and not self.coarse:
            raise InvalidParameterError(
                f"METok's {', '.join(changed)} set coarse-to-fine encoding, which is off: add coarse=True or drop them"
            )
        schedule = self.schedule or metok_schedule(tuple(self.layers), self.rho)
        reference = self.schedule is None and tuple(self.layers) == METOK_LAYERS
        events = EventPooling(
            mode=self.mode,
            boundaries=self.boundaries,
            z=self.z,
            min_event_frames=self.min_event_frames,
            key_events=self.key_events,
            key_frames=self.key_frames,
            strides=self.strides,
            pool=self.pool,
            relevance=self.relevance,
            retention=self.retention,
        )
        return Stages(
            vision=CoarseToFine(events, self.first_pass, self.refine, self.first_retention) if self.coarse else None,
            pre_llm=events,
            prefill=AttentionRank(schedule=schedule, query_rows="text", depth=METOK_DEPTH if reference else None),
            decode=LayerwiseTrim(follows_prefill=True),
        )
