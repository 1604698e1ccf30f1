"""What the vLLM plugin needs that does not need vLLM: the server's configuration, the stage it builds, and the
compression of one video's embeddings with that stage (torch only, so it is tested without vLLM).

A serving engine sizes the prompt before it sees the video, so a stage runs in vLLM only when it declares its
count from (frames, tokens per frame) alone (:meth:`~vidpress.stages.PreLLMStage.kept_count`). It also encodes
(and caches) a video apart from its prompt, so no stage sees the question here: METok's event stage ranks frames
by how distinct they are (:class:`~vidpress.stages.pre_llm.relevance.DistinctRelevance`).
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...adapters.registry import ADAPTERS
from ...errors import InvalidParameterError, UnknownMethodError, UnsupportedModelError, VidpressError
from ...method import check_params, parse_value
from ...runtime.carry import carry
from ...selection import Selection
from ...stages import PreLLMStage, check_encoded, declared_count
from ...stages.pre_llm.event_pooling import EventPooling
from ...stages.pre_llm.holitom import HoliTomMerge
from ...stages.pre_llm.relevance import DistinctRelevance
from ...stages.pre_llm.temporal_merge import TemporalMerge
from ...tokens import PackedTokens, VisualTokens

#: The key of the server's configuration in the model's config (``--hf-overrides '{"vidpress": {...}}'``).
CONFIG_KEY = "vidpress"

#: Pre-LLM stages of multi-stage methods, served by themselves: DyCoke's token merging, METok's event-aware
#: pooling (its fixed-budget form: ``retention`` is required) and HoliTom's outer-LLM merging.
STAGE_ENTRIES = {"ttm": TemporalMerge, "events": EventPooling, "holitom_outer": HoliTomMerge}


#: Why a stage in each slot but the pre-LLM one cannot run in vLLM.
_SLOT_REASONS = {
    "vision": "acts inside the vision tower, and the plugin acts on what vLLM's tower returns",
    "prefill": "drops tokens inside the LLM during prefill, which vLLM's paged KV cache does not take",
    "decode": "prunes the KV cache while decoding, which vLLM's paged cache does not take",
}


def unservable(name: str) -> str | None:
    """Why the registered method ``name`` cannot run in vLLM, derived from the slots its default build fills
    (anything but the pre-LLM one), with the servable entry of its pre-LLM stage when there is one; None when it
    only fills the pre-LLM slot."""
    from ...methods import METHODS

    stages = METHODS[name]().build()
    slots = [(slot, stage) for slot in _SLOT_REASONS if (stage := getattr(stages, slot)) is not None]
    if not slots and stages.pre_llm is not None and stages.pre_llm.needs.text:
        return (
            f"its {type(stages.pre_llm).__name__} reads the question, and vLLM encodes (and caches) a video apart "
            "from its prompt"
        )
    if not slots:
        return None
    reason = "; ".join(f"its {type(stage).__name__} {_SLOT_REASONS[slot]}" for slot, stage in slots)
    alone = [entry for entry, cls in STAGE_ENTRIES.items() if isinstance(stages.pre_llm, cls)]
    return reason + (f"; use method {alone[0]!r} (its pre-LLM stage alone)" if alone else "")


def servable_methods() -> list[str]:
    """Method names the plugin accepts: ``none``, the pre-LLM stages served by themselves, and every registered
    method that fills the pre-LLM slot alone."""
    from ...methods import METHODS

    return ["none", *STAGE_ENTRIES] + [name for name in METHODS if unservable(name) is None]


@dataclass(frozen=True)
class ServingConfig:
    """The method a server runs: its name, the pre-LLM stage (None: uncompressed) and the raw settings."""

    method: str
    stage: PreLLMStage | None
    settings: dict[str, Any]


def serving_config(config: Any) -> ServingConfig:
    """The server's method from a model config (object or dict) carrying ``{"vidpress": {"method": name,
    **hyperparameters}}``; no such key, or method ``none``, is the uncompressed model.

    Raises
    ------
    UnknownMethodError
        An unknown method or hyperparameter (the message lists the valid ones).
    InvalidParameterError
        The entry is not a mapping with a ``method``, the method cannot run in vLLM (it acts inside the LLM, or
        its count depends on the content), or a hyperparameter is out of range.
    """
    raw = config.get(CONFIG_KEY) if isinstance(config, dict) else getattr(config, CONFIG_KEY, None)
    if raw is None:
        return ServingConfig("none", None, {})
    if not isinstance(raw, dict) or "method" not in raw:
        raise InvalidParameterError(
            f'the "{CONFIG_KEY}" entry must be a mapping with a "method", e.g. {{"method": "visionzip", '
            f'"retention": 0.25}}; got {raw!r}'
        )
    # numbers and flags may come as JSON strings ("0.25"); other text stays text (mode "fixed")
    settings = {key: parse_value(value) if isinstance(value, str) else value for key, value in raw.items()}
    name = raw["method"]
    settings.pop("method")
    if name in ("none", "uncompressed") and not settings:
        return ServingConfig("none", None, {})
    from ...methods import METHODS

    reason = unservable(name) if isinstance(name, str) and name in METHODS else None
    if reason is not None:
        raise InvalidParameterError(f"method {name!r} cannot run in vLLM: {reason}")
    if name in STAGE_ENTRIES:
        check_params(STAGE_ENTRIES[name], name, settings)
        if name == "events" and settings.get("retention") is None:
            raise InvalidParameterError(
                "method 'events' needs a retention (its fixed-budget form), e.g. "
                '{"method": "events", "retention": 0.25}; vLLM sizes the prompt before it sees the video'
            )
        if name == "events" and "relevance" in settings:
            raise InvalidParameterError(
                "method 'events' takes no relevance in vLLM: the engine encodes a video apart from its prompt, so "
                "frames rank by how distinct they are (DistinctRelevance)"
            )
        extra = {"relevance": DistinctRelevance()} if name == "events" else {}
        stage = STAGE_ENTRIES[name](**settings, **extra)
    else:
        if name not in METHODS:
            hint = difflib.get_close_matches(str(name), servable_methods(), n=1)
            raise UnknownMethodError(
                f"unknown method {name!r} for vLLM; choose one of: {', '.join(servable_methods())}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
        stages = METHODS[name].from_dict(settings).build()
        stage = stages.pre_llm
    if stage.kept_count(8, 16) is None:
        raise InvalidParameterError(
            f"{name} with {settings} decides its token count from the content (e.g. FastVID's faithful mode); "
            "vLLM sizes the prompt before it sees the video: use mode='fixed'"
        )
    return ServingConfig(name, stage, settings)


def compress_video(
    stage: PreLLMStage, tokens: VisualTokens, encoded: list[int] | None = None, riders: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One video's embeddings after ``stage``, in the order they enter the LLM.

    Parameters
    ----------
    stage : PreLLMStage
        A stage that declares its count (:meth:`~vidpress.stages.PreLLMStage.kept_count`).
    tokens : VisualTokens
        ``features`` (1, F, T, D), ``extra`` (1, E, D) the model's own extra tokens (LLaVA-OV's newline; E may be
        0), and what the stage needs (encoder ``attention``/``keys``).
    encoded : list of int, optional
        The frames the tower encoded when it skipped some (the others hold zeros): the plan must keep none of them.
    riders : Tensor, shape (1, F*T, C), optional
        Values attached to each frame token that the stage does not read (Qwen3-VL's DeepStack features): kept and
        merged as the plan keeps and merges the tokens (:func:`~vidpress.runtime.carry.carry`) and appended to
        each kept token's channels (zeros on the extra tokens).

    Returns
    -------
    kept : Tensor, shape (M, D) or (M, D + C)
        The kept visual tokens then the extra tokens; M = ``kept_count(F, T) + E``.
    source : LongTensor, shape (M,)
        The uncompressed placeholder (index into the F*T frame tokens, then the extras) whose position each kept
        token takes; ``arange(M)`` when the stage renumbers its block contiguously.

    Raises
    ------
    VidpressError
        The stage kept another count than it declared (the prompt would not match the embeddings), or a token of
        a frame that was not encoded.
    IncompatibleStagesError
        ``riders`` with a stage that merges tokens without declaring their members.
    """
    batch, frames, per_frame, _ = tokens.features.shape
    n = frames * per_frame
    extra = tokens.extra if tokens.extra is not None else tokens.features.new_zeros(batch, 0, tokens.features.shape[-1])
    plan = stage(tokens, None)
    if encoded is not None:
        check_encoded(plan, encoded, per_frame)
    if isinstance(plan, PackedTokens):
        kept = plan.features[0]
        source = plan.source[0] if plan.source is not None and stage.positions == "original" else None
        if plan.extra_tokens != extra.shape[1]:  # a stage that does not append the model's extras itself
            kept = torch.cat([kept, extra[0].to(kept.dtype)])
            source = None if source is None else torch.cat([source, n + torch.arange(extra.shape[1])])
        if source is None:
            source = torch.arange(kept.shape[0])
    elif isinstance(plan, Selection):
        kept = torch.cat([plan.apply(tokens.features.flatten(1, 2))[0], extra[0].to(tokens.features.dtype)])
        source = torch.cat([plan.keep[0].cpu(), n + torch.arange(extra.shape[1])])
    else:
        raise VidpressError(f"{type(stage).__name__} returned {type(plan).__name__}, not a Selection or PackedTokens")
    if riders is not None:
        carried = carry(plan, riders, tokens.features.flatten(1, 2), type(stage).__name__)[0]
        carried = torch.cat([carried, carried.new_zeros(kept.shape[0] - carried.shape[0], carried.shape[1])])
        kept = torch.cat([kept, carried.to(kept.dtype)], dim=1)
    declared = declared_count(stage, frames, per_frame, tokens.grid) + extra.shape[1]
    if kept.shape[0] != declared:
        raise VidpressError(
            f"{type(stage).__name__} kept {kept.shape[0]} tokens but declared {declared} for {frames} x {per_frame}; "
            "the prompt was sized with the declared count"
        )
    return kept, source.to(torch.long)


#: vLLM architectures the plugin serves, with their family; any other model would ignore a ``vidpress`` entry.
ARCHITECTURES = {
    "LlavaOnevisionForConditionalGeneration": "llava_onevision",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
    "Qwen3VLMoeForConditionalGeneration": "qwen3_vl_moe",
}

#: Families whose kept tokens keep their (t, h, w) M-RoPE ids: the adapters that declare M-RoPE.
MROPE_FAMILIES = tuple(t for adapter in ADAPTERS if adapter.mrope for t in adapter.model_types)


def check_engine(vllm_config: Any) -> ServingConfig:
    """The server's method, checked against the engine it would run in; vLLM's API server calls this (through the
    plugin) before the engine core starts, so a bad entry is refused in one line at start-up.

    Parameters
    ----------
    vllm_config : vllm.config.VllmConfig
        Read only: ``model_config.hf_config`` (the entry, ``architectures``), ``model_config.multimodal_config``
        (``video_pruning_rate``) and ``parallel_config.tensor_parallel_size``.

    Raises
    ------
    UnknownMethodError, InvalidParameterError, BudgetError
        A bad entry (:func:`serving_config`); EVS (``--video-pruning-rate``) with a vidpress method, on every
        family; a stage that reads the encoder's attention over all heads with ``tensor_parallel_size > 1``; a
        stage that renumbers its tokens on Qwen2.5-VL or Qwen3-VL (M-RoPE needs their ids).
    UnsupportedModelError
        A ``vidpress`` entry on an architecture the plugin does not serve (it would be ignored).
    """
    model_config = vllm_config.model_config
    hf_config = model_config.hf_config
    serving = serving_config(hf_config)
    stage = serving.stage
    if stage is None:
        return serving
    architectures = list(getattr(hf_config, "architectures", None) or [])
    family = next((ARCHITECTURES[a] for a in architectures if a in ARCHITECTURES), None)
    if family is None:
        raise UnsupportedModelError(
            f"the vidpress entry ({serving.method}) is set on {', '.join(architectures) or 'a model'}, which the "
            f"vidpress plugin does not serve; it serves {', '.join(ARCHITECTURES)}"
        )
    mm_config = model_config.multimodal_config
    rate = getattr(mm_config, "video_pruning_rate", None)
    if rate:
        raise InvalidParameterError(
            f"--video-pruning-rate {rate} (vLLM's EVS) and vidpress's {serving.method} both prune the video; choose one"
        )
    tp = vllm_config.parallel_config.tensor_parallel_size
    if stage.needs.encoder_attention and tp > 1:
        raise InvalidParameterError(
            f"{serving.method} scores tokens by the vision encoder's attention over all heads; with "
            f"tensor_parallel_size={tp} each rank holds a share of them: serve it with tensor_parallel_size=1 "
            "(or data parallel)"
        )
    if family in MROPE_FAMILIES and stage.positions != "original":
        raise InvalidParameterError(
            f"{serving.method} renumbers its tokens (mode='faithful'); M-RoPE needs their original (t, h, w) ids: "
            "use mode='fixed'"
        )
    return serving


def describe(serving: ServingConfig, hf_config: Any, frames: int) -> str:
    """One line for the server's log: the method, its settings and the video placeholders a ``frames``-frame video
    takes with and without it (LLaVA-OneVision at the tower's resolution, its newline included; Qwen2.5-VL at
    448x448 px, whose count grows with the video's resolution, in 2-frame temporal patches)."""
    stage = serving.stage
    if stage is None:
        return "vidpress: no method configured; videos pass uncompressed"
    vision = hf_config.vision_config
    if getattr(hf_config, "model_type", "") in MROPE_FAMILIES:
        side = 448 // (vision.patch_size * vision.spatial_merge_size)
        temporal, extra, shape = -(-frames // vision.temporal_patch_size), 0, f"{frames} frames at 448x448 px"
    else:
        side = -(-(vision.image_size // vision.patch_size) // 2)
        temporal, extra, shape = frames, 1, f"{frames} frames"
    per_frame = side * side
    full = temporal * per_frame + extra
    kept = declared_count(stage, temporal, per_frame, (side, side)) + extra
    settings = ", ".join(f"{k}={v!r}" for k, v in serving.settings.items())
    return (
        f"vidpress: {serving.method}({settings}) compresses each video before the LLM: a video of {shape} takes "
        f"{kept:,} of its {full:,} placeholders ({kept / full:.1%}); images pass uncompressed"
    )


#: A request's own method, in vLLM's per-request ``mm_processor_kwargs`` (``{"vidpress": {"method": ...}}``); the
#: processor carries it to the model in the per-video field :data:`ENTRY_FIELD` of :data:`ENTRY_BYTES` bytes.
REQUEST_KEY = "vidpress"
ENTRY_FIELD = "vidpress_entry"
ENTRY_BYTES = 256


def request_config(server: ServingConfig, raw: Any, family: str) -> ServingConfig:
    """The method one request asks for in its ``mm_processor_kwargs``, checked as the server's entry is; ``raw``
    None is the server's own. ``{"method": "none"}`` leaves that request's videos uncompressed.

    A request may choose any servable method on a server started with a vidpress method, but a method that
    reads the encoder's attention only where the server's own does (its tensor parallelism was checked for it).

    Raises
    ------
    InvalidParameterError
        A ValueError, which vLLM answers with HTTP 400: the server runs no vidpress method, or the request's entry
        is refused (the reason of :func:`serving_config`, or M-RoPE's on Qwen2.5-VL), or is longer than
        :data:`ENTRY_BYTES` bytes of JSON.
    """
    if raw is None:
        return server
    if server.stage is None:
        raise InvalidParameterError(
            'this server runs no vidpress method, so a request\'s own "vidpress" entry cannot apply: start the '
            "server with --hf-overrides '{\"vidpress\": {...}}'"
        )
    try:
        serving = serving_config({CONFIG_KEY: raw})
    except VidpressError as error:
        raise InvalidParameterError(f'the request\'s "vidpress" entry is refused: {error}') from None
    stage = serving.stage
    if stage is not None and stage.needs.encoder_attention and not server.stage.needs.encoder_attention:
        raise InvalidParameterError(
            f"{serving.method} reads the vision encoder's attention, which this server ({server.method}) was not "
            "started for: start it with such a method (visionzip, fastvid) to take these per request"
        )
    if family in MROPE_FAMILIES and stage is not None and stage.positions != "original":
        raise InvalidParameterError(f"{serving.method} renumbers its tokens; M-RoPE needs their ids: use mode='fixed'")
    if len(entry_json(serving)) > ENTRY_BYTES:
        raise InvalidParameterError(f'the request\'s "vidpress" entry is over {ENTRY_BYTES} bytes of JSON: {raw!r}')
    return serving


def entry_json(serving: ServingConfig) -> bytes:
    """The canonical JSON of a method and its settings (sorted keys)."""
    return json.dumps({"method": serving.method, **serving.settings}, sort_keys=True).encode()


def encode_entry(serving: ServingConfig | None, videos: int) -> Tensor:
    """The :data:`ENTRY_FIELD` of ``videos`` videos that take ``serving``: (videos, ENTRY_BYTES) uint8, its JSON then
    zeros; all zeros (None) stands for the server's own method."""
    row = torch.zeros(ENTRY_BYTES, dtype=torch.uint8)
    if serving is not None:
        data = entry_json(serving)
        row[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return row.expand(videos, -1).clone()


@functools.lru_cache(maxsize=64)
def _entry_stage(data: bytes) -> PreLLMStage | None:
    return serving_config({CONFIG_KEY: json.loads(data)}).stage


def entry_stages(field: Any, server: ServingConfig, videos: int) -> list[PreLLMStage | None]:
    """Each video's stage from the :data:`ENTRY_FIELD` rows the model receives (a tensor or a list of rows; None:
    the server's for all), built once per distinct entry."""
    if field is None:
        return [server.stage] * videos
    rows = [bytes(row.to(torch.uint8).tolist()).rstrip(b"\0") for row in field]
    return [_entry_stage(row) if row else server.stage for row in rows]
