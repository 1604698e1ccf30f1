"""Exact accounting of what a method saves: tokens alive per layer, FLOPs and KV-cache bytes.

FLOPs follow the convention of FastV and of DyCoke's / METok's tables so figures compare with the papers:
per transformer layer over ``n`` tokens, ``4*n*d**2 + 2*n**2*d + 2*n*d*m`` (d hidden size, m MLP size), i.e.
one multiply-accumulate counts as one FLOP and a gated MLP's third matrix is not counted. A decoding step
with ``c`` cached entries attended costs ``4*d**2 + 2*c*d + 2*d*m`` per layer. The vision encoder (same
per-layer formula plus the patch embedding) and the projector are counted separately from the LLM.

KV-cache bytes per token per layer are ``2 * kv_heads * head_dim * dtype_bytes`` (keys and values).

Model sizes, presets and config parsing live in :mod:`vidpress.specs`. The calculator works from a config
alone (:func:`estimate`), for the presets in :data:`PRESETS` or any
LLaVA-OneVision, LLaVA-NeXT-Video, Qwen2.5-VL or Qwen3-VL (dense or MoE) ``config.json``, and from a measured run
(:class:`vidpress.report.Report`). For Qwen2.5-VL and Qwen3-VL a "frame" of tokens is a temporal patch of two
video frames; Qwen2.5-VL's windowed encoder layers attend within windows (``2*n*w*d`` instead of ``2*n**2*d``)
and the projector is the 2x2 patch merger. Qwen3-VL adds a merger per DeepStack level and one addition per
visual token alive (``d`` FLOPs) after each of the LLM's first ``deepstack`` layers. A mixture-of-experts LLM
counts its active experts' MLPs (``m`` = experts per token x expert width) and its router, ``n*d*E`` per layer
for ``E`` experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .adapters.registry import resolve_spec, spec_from_config  # noqa: F401 (API)
from .errors import BudgetError
from .specs import PRESETS, LLMDims, ModelSpec, VisionDims  # noqa: F401 (API)
from .stages import TowerCounts


def layer_flops(n: float, d: int, m: int) -> float:
    """FLOPs of one transformer layer over ``n`` tokens (FastV convention, see module docstring)."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def decode_layer_flops(context: float, d: int, m: int) -> float:
    """FLOPs of one layer for one new token attending to ``context`` cached entries."""
    return 4 * d * d + 2 * context * d + 2 * d * m


def kv_bytes_per_token(llm: LLMDims, dtype_bytes: int = 2) -> int:
    """KV-cache bytes one token takes in one layer: 2 * kv_heads * head_dim * dtype_bytes."""
    return 2 * llm.kv_heads * llm.head_dim * dtype_bytes


def vision_flops(
    spec: ModelSpec, frames: int, patches: int | None = None, merges: tuple[int, ...] | None = None
) -> float:
    """Vision-encoder FLOPs for ``frames`` frames (temporal patches) of ``patches`` patches each (default the
    tower's own resolution): patch embedding plus every encoder layer, windowed layers attending within
    ``window_tokens``. ``merges``: tokens merged in each layer between its attention and its MLP (ToMe), so the
    layer's attention runs on the tokens it receives and its MLP on those left."""
    v = spec.vision
    tokens = v.tokens if patches is None else patches + v.tokens - spec.patches  # a CLS token stays
    embed = tokens * v.channels * v.temporal_patch * v.patch_size**2 * v.hidden
    if merges:
        total: float = embed
        for layer in range(v.layers):
            r = merges[layer] if layer < len(merges) else 0
            total += layer_flops(tokens, v.hidden, 0) + 2 * (tokens - r) * v.hidden * v.intermediate
            tokens -= r
        return frames * total
    full = layer_flops(tokens, v.hidden, v.intermediate)
    if not v.window_tokens:
        return frames * (embed + v.layers * full)
    windowed = full - 2 * tokens * tokens * v.hidden + 2 * tokens * v.window_tokens * v.hidden
    return frames * (embed + v.full_layers * full + (v.layers - v.full_layers) * windowed)


def projector_flops(spec: ModelSpec, frames: int, patches: int | None = None) -> float:
    """Projector FLOPs over every patch of ``frames`` frames of ``patches`` patches (default the tower's own): a
    two-layer MLP (vision width -> d -> d), or Qwen's merger (``merge**2`` patches concatenated: 4Dv -> 4Dv -> d
    per token), once more per DeepStack level (Qwen3-VL's mergers of earlier tower layers)."""
    d, dv = spec.llm.hidden, spec.vision.hidden
    patches = spec.patches if patches is None else patches
    if spec.merge > 1:
        wide = spec.merge**2 * dv
        return (1 + spec.deepstack) * frames * patches // spec.merge**2 * (wide * wide + wide * d)
    return frames * patches * (dv * d + d * d)


@dataclass
class Accounting:
    """Tokens, FLOPs and KV bytes of one request, per LLM layer.

    Attributes
    ----------
    prefill_visual : list[int]
        Visual tokens alive at the input of each LLM layer during prefill (length L).
    decode_visual : list[float]
        Visual KV entries attended at each layer per decoding step (mean over steps; length L).
    stored_visual : list[int]
        Visual KV entries stored in each layer's cache after prefill (length L).
    other_tokens : int
        Non-visual tokens of the prompt (text, template, newline), alive in every layer.
    encoded_frames : int, optional
        Frames (temporal patches) the vision tower encoded, when a stage skipped some; None: all ``frames``.
    vision_passes : tuple of (frames, patches per frame[, tokens merged per layer]), optional
        What the tower encoded when a vision stage chose resolutions per frame (coarse-to-fine); it replaces
        ``encoded_frames`` in the vision and projector FLOPs. A pass with merges ran the tower merging (a ToMe
        first pass).
    vision_merges : tuple of int, optional
        Tokens the tower merged in each of its layers (ToMe), per frame.
    projected_tokens : int, optional
        Tokens per frame through the projector when not every patch is (ToMe's merged tokens).
    """

    spec: ModelSpec
    frames: int
    prefill_visual: list[int]
    decode_visual: list[float]
    stored_visual: list[int]
    other_tokens: int
    encoded_frames: int | None = None
    vision_passes: tuple[tuple, ...] | None = None
    vision_merges: tuple[int, ...] | None = None
    projected_tokens: int | None = None

    def _passes(self) -> list[tuple[int, int | None, tuple[int, ...] | None]]:
        """(frames, patches per frame, tokens merged per layer) of each tower pass."""
        if self.vision_passes is None:
            return [(self.frames if self.encoded_frames is None else self.encoded_frames, None, self.vision_merges)]
        return [(f, patches, merges[0] if merges else self.vision_merges) for f, patches, *merges in self.vision_passes]

    @property
    def visual_in(self) -> int:
        """Visual tokens the uncompressed model feeds the LLM: frames x tokens per frame."""
        return self.frames * self.spec.tokens_per_frame

    @property
    def prefill_flops(self) -> float:
        """LLM prefill FLOPs, summed over layers with each layer's live length."""
        llm = self.spec.llm
        layers = sum(
            layer_flops(n + self.other_tokens, llm.hidden, llm.intermediate)
            + (n + self.other_tokens) * llm.hidden * llm.router
            for n in self.prefill_visual
        )
        return layers + sum(self.prefill_visual[: self.spec.deepstack]) * llm.hidden  # DeepStack additions

    @property
    def decode_flops_per_token(self) -> float:
        """LLM FLOPs of the first decoding step (context = attended entries + the new token)."""
        llm = self.spec.llm
        return sum(
            decode_layer_flops(n + self.other_tokens + 1, llm.hidden, llm.intermediate) + llm.hidden * llm.router
            for n in self.decode_visual
        )

    @property
    def vision_flops(self) -> float:
        """Vision-encoder FLOPs of the frames it encoded, at the resolutions it encoded them."""
        return sum(vision_flops(self.spec, frames, patches, merges) for frames, patches, merges in self._passes())

    @property
    def projector_flops(self) -> float:
        return sum(
            projector_flops(self.spec, frames, self.projected_tokens or patches)
            for frames, patches, _ in self._passes()
        )

    @property
    def kv_bytes_per_layer(self) -> list[int]:
        """KV-cache bytes stored per layer after prefill (visual + other tokens)."""
        per = kv_bytes_per_token(self.spec.llm, self.spec.dtype_bytes)
        return [(n + self.other_tokens) * per for n in self.stored_visual]

    @property
    def kv_bytes(self) -> int:
        return sum(self.kv_bytes_per_layer)

    @property
    def visual_kv_bytes(self) -> int:
        """Stored visual KV bytes over all layers after prefill."""
        return sum(self.stored_visual) * kv_bytes_per_token(self.spec.llm, self.spec.dtype_bytes)

    @property
    def attended_visual_kv_bytes(self) -> float:
        """Visual KV bytes read per decoding step (what decode-time pruning such as DyCoke's reduces)."""
        return sum(self.decode_visual) * kv_bytes_per_token(self.spec.llm, self.spec.dtype_bytes)

    @property
    def retention(self) -> float:
        """Fraction of the uncompressed visual tokens entering the LLM."""
        return self.prefill_visual[0] / self.visual_in if self.visual_in else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "frames": self.frames,
            "tokens_per_frame": self.spec.tokens_per_frame,
            "visual_tokens_in": self.visual_in,
            "visual_tokens_llm": self.prefill_visual[0],
            "other_tokens": self.other_tokens,
            "retention": self.retention,
            "prefill_visual_per_layer": self.prefill_visual,
            "decode_visual_per_layer": self.decode_visual,
            "stored_visual_per_layer": self.stored_visual,
            "prefill_flops": self.prefill_flops,
            "decode_flops_per_token": self.decode_flops_per_token,
            "frames_encoded": self.frames if self.encoded_frames is None else self.encoded_frames,
            **({"vision_passes": [list(p) for p in self.vision_passes]} if self.vision_passes else {}),
            **({"vision_merges": list(self.vision_merges)} if self.vision_merges else {}),
            "vision_flops": self.vision_flops,
            "projector_flops": self.projector_flops,
            "kv_bytes_per_layer": self.kv_bytes_per_layer,
            "kv_bytes": self.kv_bytes,
            "visual_kv_bytes": self.visual_kv_bytes,
            "attended_visual_kv_bytes": self.attended_visual_kv_bytes,
        }


def _dry_pre_llm(spec: ModelSpec, frames: int, stage: Any, events: int, generator: torch.Generator):
    """Dry-run a pre-LLM stage: (visual tokens kept, event of each (1, M) or None, key events (1, E) or None,
    extra tokens kept beside the visual ones).

    Stages that see the unpooled grid, the question or the encoder attention (METok stage 1, VisionZip,
    FastVID) get a constructed video of ``events`` equal-length events (piecewise-constant frame features),
    a random question and random encoder attention.
    """
    from .tokens import PackedTokens, VisualTokens

    width = max(8, events + 1)
    tokens = VisualTokens(torch.rand(1, frames, spec.tokens_per_frame, width, generator=generator), spec.grid)
    needs = stage.needs
    if needs.unpooled or needs.text or needs.encoder_attention:
        side = math.isqrt(spec.patches)
        event_of = torch.arange(frames) * events // frames
        feats = torch.nn.functional.one_hot(event_of, width).float() + 0.01 * torch.rand(
            frames, width, generator=generator
        )
        unpooled = feats[None, :, None, None, :].expand(1, frames, side, side, width).contiguous()
        features, attention, keys = tokens.features, None, None
        if needs.encoder_attention:
            features = keys = feats[None, :, None, :] + 0.01 * torch.rand(
                1, frames, spec.tokens_per_frame, width, generator=generator
            )
            attention = torch.rand(1, frames, spec.tokens_per_frame, generator=generator)
        tokens = VisualTokens(
            features,
            spec.grid,
            unpooled=unpooled,
            extra=torch.zeros(1, spec.extra_visual, width),
            text=torch.rand(1, 12, width, generator=generator),
            attention=attention,
            keys=keys,
        )
    plan = stage(tokens, None)
    if isinstance(plan, PackedTokens):
        return plan.num_visual, plan.events[:, : plan.num_visual], plan.key_events, plan.extra_tokens
    return plan.num_kept, None, None, spec.extra_visual


def estimate(
    spec: ModelSpec,
    frames: int,
    stages: Any = None,
    *,
    text_tokens: int = 78,
    retention: float | None = None,
    events: int = 5,
) -> Accounting:
    """Config-only accounting of ``stages`` (a :class:`~vidpress.method.Stages`, or None for uncompressed).

    Token counts come from dry-running the method's own stages on placeholder tensors of the right shape
    (random attention scores), so the calculator and the runtime can never disagree on a count. Decode-time
    counts assume the decode stage makes a selection at every step.

    Parameters
    ----------
    text_tokens : int
        Text prompt tokens (template + question); DyCoke's table uses about 78. The video block's extra
        tokens (LLaVA-OV's newline) are added to them as non-visual tokens, except when a stage packs its own
        block (METok's newlines per event count as visual tokens, as they compete for the budget), and so is the
        text the layout writes per frame (``ModelSpec.text_per_frame``: Qwen3-VL's timestamps).
    retention : float, optional
        Override the pre-LLM count with ``round(retention * frames * tokens_per_frame)`` visual tokens (the
        papers' idealised figures, e.g. DyCoke's 47.5 %).
    events : int
        For event-aware stages (METok): the constructed video has this many equal-length events (default 5,
        the reference's count). Real videos decide their own events in adaptive mode.

    Raises
    ------
    BudgetError
        ``frames < 1`` or ``retention`` outside (0, 1].
    """
    from .tokens import LayerSignals, StageContext

    if frames < 1:
        raise BudgetError(f"frames must be >= 1, got {frames}")
    frames = math.ceil(frames / spec.vision.temporal_patch)  # Qwen: one frame of tokens per 2 video frames
    layers = spec.llm.layers
    stages = stages.for_depth(layers) if stages is not None else None
    n = frames * spec.tokens_per_frame
    generator = torch.Generator().manual_seed(0)
    text_tokens += frames * spec.text_per_frame  # text the layout writes between frames (Qwen3-VL's times)
    other = text_tokens + spec.extra_visual
    event_of = key = None
    vision = stages.vision if stages is not None else None
    side = math.isqrt(spec.patches)
    tower = TowerCounts() if vision is None else vision.tower_counts(frames, side, spec.grid, spec.vision.used_layers)
    if retention is not None:
        if not 0 < retention <= 1:
            raise BudgetError(f"retention must be in (0, 1], got {retention}")
        kept = round(retention * n)
    elif tower.visual_per_frame is not None:
        kept = frames * tower.visual_per_frame
    elif stages is not None and stages.pre_llm is not None:
        kept, event_of, key, extra = _dry_pre_llm(spec, frames, stages.pre_llm, events, generator)
        other = text_tokens + extra
    else:
        kept = n
    prefill = [kept] * layers
    if stages is not None and stages.prefill is not None:
        alive = kept
        for layer in range(1, layers):
            if layer in stages.prefill.layers:
                scores = torch.rand(1, alive, generator=generator)
                scored = stages.prefill.needs.scored_layer(layer)
                hidden = torch.rand(1, alive, 8, generator=generator) if stages.prefill.needs.hidden else None
                plan = stages.prefill(
                    LayerSignals(scored, scores, event_of, key, kept, hidden), StageContext(num_layers=layers)
                )
                alive = plan.num_kept
                event_of = None if event_of is None else event_of.gather(1, plan.keep)
            prefill[layer] = alive
    decode: list[float] = list(map(float, prefill))
    stored = list(prefill)
    stage = stages.decode if stages is not None else None
    if stage is not None and stage.needs.trim_after_prefill:
        stored = stage.trim_counts(prefill)
        decode = list(map(float, stored))
    elif stage is not None:
        for layer in range(stage.first_layer, layers):
            scores = torch.rand(1, prefill[layer], generator=generator)
            plan = stage(LayerSignals(layer=stage.first_layer - 1, scores=scores), StageContext(num_layers=layers))
            decode[layer] = float(plan.num_kept if plan is not None else prefill[layer])
    encoded = stages.encoded_frames(frames, spec.tokens_per_frame) if stages is not None else None
    encoded = None if encoded is None else len(encoded)
    return Accounting(
        spec, frames, prefill, decode, stored, other, encoded, tower.passes, tower.merges, tower.projected
    )


__all__ = [
    "PRESETS",
    "Accounting",
    "LLMDims",
    "ModelSpec",
    "VisionDims",
    "estimate",
    "resolve_spec",
    "spec_from_config",
    "layer_flops",
    "kv_bytes_per_token",
]
