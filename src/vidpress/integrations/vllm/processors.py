"""vLLM multimodal processors for the plugin's models: where each request's prompt gets its video placeholders.

They run in the API server process, before the video reaches the engine, so everything a request can get wrong is
refused here, as a ``ValueError`` vLLM answers with HTTP 400, never in the engine (which would die of it):

- Each video's placeholders are cut to the declared count of the request's method
  (:meth:`~vidpress.stages.PreLLMStage.kept_count`): the server's, or the request's own from vLLM's per-request
  ``mm_processor_kwargs`` (``{"vidpress": {"method": "frames", "retention": 0.1}}``, checked by
  :func:`~.serving.request_config`), carried to the model in a per-video field (:data:`~.serving.ENTRY_FIELD`), which
  vLLM's item hash covers, so a cached encoding is never reused across methods.
- Video embeddings (``--enable-mm-embeds``) are refused on a compressed server: the stages act on frames.
- Each real request is counted (:mod:`.observe`); vLLM's dummy profiling inputs are not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from vllm.model_executor.models.llava_onevision import LlavaOnevisionMultiModalProcessor
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLMultiModalProcessor
from vllm.model_executor.models.qwen3_vl import Qwen3VLMultiModalProcessor
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import VideoEmbeddingItems
from vllm.multimodal.processing import PromptReplacement

from ...errors import InvalidParameterError
from ...stages import declared_count
from . import observe
from .serving import (
    ENTRY_FIELD,
    REQUEST_KEY,
    ServingConfig,
    encode_entry,
    request_config,
    serving_config,
)


class VidpressProcessor:
    """Mixin over a vLLM processor: the request's method, its per-video entry field, the count of each video's
    placeholders, and the counters."""

    family: ClassVar[str]
    _full_counts: observe.FullCounts | None = None

    def _server(self) -> ServingConfig:
        return serving_config(self.info.get_hf_config())  # type: ignore[attr-defined]

    def _request(self, hf_processor_mm_kwargs: Mapping[str, Any]) -> ServingConfig:
        return request_config(self._server(), hf_processor_mm_kwargs.get(REQUEST_KEY), self.family)

    def _video_count(self, serving: ServingConfig, mm_items: Any, temporal: int, per_frame: int) -> int:
        """Placeholders of a video of ``temporal`` frames (Qwen2.5-VL: temporal patches) of ``per_frame`` tokens,
        square, under ``serving``'s stage (all of them without one); the family's extra tokens not included."""
        if serving.stage is None:
            return temporal * per_frame
        if isinstance(mm_items.get_items("video", object), VideoEmbeddingItems):
            raise InvalidParameterError(
                f"vidpress {serving.method} compresses a video's frames; video embeddings are refused on this "
                "server: send the frames"
            )
        side = math.isqrt(per_frame)
        return declared_count(serving.stage, temporal, per_frame, (side, side))

    def _apply_hf_processor_main(self, mm_items: Any, hf_kwargs: Mapping[str, object]) -> Any:
        """vLLM's processing without the request's ``vidpress`` key, then that entry as each video's field."""
        raw = hf_kwargs.get(REQUEST_KEY)
        out = super()._apply_hf_processor_main(  # type: ignore[misc]
            mm_items, {k: v for k, v in hf_kwargs.items() if k != REQUEST_KEY}
        )
        videos = mm_items.get_count("video", strict=False)
        if videos and self._server().stage is not None:  # every video of a compressed server carries the field
            serving = None if raw is None else request_config(self._server(), raw, self.family)
            out[ENTRY_FIELD] = encode_entry(serving, videos)
        return out

    def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))  # type: ignore[misc]
        if ENTRY_FIELD in hf_inputs:
            fields[ENTRY_FIELD] = MultiModalFieldConfig.batched("video")
        return fields

    def _get_prompt_updates(
        self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs: Any
    ) -> Sequence[Any]:
        """vLLM's updates, with each video's placeholders cut to the declared count of the request's method."""
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)  # type: ignore[misc]
        if self._server().stage is None:
            return updates
        serving = self._request(hf_processor_mm_kwargs)
        video_id = self._video_token_id()

        def replacement(item_idx: int) -> list[int]:
            return [video_id] * self._placeholders(serving, mm_items, out_mm_kwargs, item_idx)

        return [u for u in updates if u.modality != "video"] + [
            PromptReplacement(modality="video", target=[video_id], replacement=replacement)
        ]

    def _video_token_id(self) -> int:
        raise NotImplementedError

    def _placeholders(self, serving: ServingConfig, mm_items: Any, out_mm_kwargs: Any, item_idx: int) -> int:
        """Placeholders of video ``item_idx`` under ``serving`` (the family's grid; :meth:`_video_count`)."""
        raise NotImplementedError

    def get_dummy_mm_inputs(self, *args: Any, **kwargs: Any) -> Any:
        with observe.profiling():
            return super().get_dummy_mm_inputs(*args, **kwargs)  # type: ignore[misc]

    def apply(self, inputs: Any, timing_ctx: Any) -> Any:
        result = super().apply(inputs, timing_ctx)  # type: ignore[misc]
        if self._server().stage is not None:
            method = self._request(inputs.hf_processor_mm_kwargs or {}).method
            images = len(result["mm_placeholders"].get("image", []))
            observe.record(method, self._video_counts(result), images, log=_log())
        return result

    def _video_counts(self, result: Any) -> list[tuple[int | None, int]]:
        """(uncompressed placeholders, placeholders in the prompt) of each video; a video from vLLM's processor
        cache comes without its data, so its uncompressed count is the one remembered by its hash."""
        if self._full_counts is None:
            self._full_counts = observe.FullCounts()
        items, hashes = result["mm_kwargs"].get("video", []), result["mm_hashes"].get("video", [])
        counts = []
        for i, placeholder in enumerate(result["mm_placeholders"].get("video", [])):
            item, key = items[i] if i < len(items) else None, hashes[i] if i < len(hashes) else str(i)
            full = self._full_counts.get(key) if item is None else self._full_counts.remember(key, self._full(item))
            counts.append((full, self._kept(result, placeholder)))
        return counts

    def _kept(self, result: Any, placeholder: Any) -> int:
        """Video tokens in a video's prompt span: all of it, unless the layout writes text there too."""
        return placeholder.length

    def _full(self, item: Any) -> int:
        raise NotImplementedError


def _log() -> Any:
    from . import server_log

    return server_log()


class LlavaOnevisionProcessor(VidpressProcessor, LlavaOnevisionMultiModalProcessor):
    family = "llava_onevision"

    def _full(self, item: Any) -> int:
        """vLLM's own count for the item's frames: frames x pooled tokens per frame, plus the newline."""
        frames, _, height, width = item["pixel_values_videos"].data.shape
        return frames * self.info._get_num_frame_tokens(image_width=width, image_height=height) + 1

    def _video_token_id(self) -> int:
        return self.info.get_hf_config().video_token_index

    def _placeholders(self, serving: ServingConfig, mm_items: Any, out_mm_kwargs: Any, item_idx: int) -> int:
        """Per frame (pooled 2x2), then the newline."""
        videos = mm_items.get_items("video", object)
        size = videos.get_frame_size(item_idx)
        per_frame = self.info._get_num_frame_tokens(image_width=size.width, image_height=size.height)
        return self._video_count(serving, mm_items, videos.get_num_frames(item_idx), per_frame) + 1


class _QwenCounts(VidpressProcessor):
    """Qwen's counts: per temporal patch of 2x2-merged patches."""

    def _full(self, item: Any) -> int:
        merge = self.info.get_hf_config().vision_config.spatial_merge_size  # type: ignore[attr-defined]
        return int(item["video_grid_thw"].data.prod()) // (merge * merge)

    def _placeholders(self, serving: ServingConfig, mm_items: Any, out_mm_kwargs: Any, item_idx: int) -> int:
        merge = self.info.get_hf_config().vision_config.spatial_merge_size  # type: ignore[attr-defined]
        t, h, w = map(int, out_mm_kwargs["video"][item_idx]["video_grid_thw"].data)
        return self._video_count(serving, mm_items, t, (h // merge) * (w // merge))


class Qwen2_5_VLProcessor(_QwenCounts, Qwen2_5_VLMultiModalProcessor):
    family = "qwen2_5_vl"

    def _video_token_id(self) -> int:
        return self.info.get_tokenizer().get_vocab()[self.info.get_hf_processor().video_token]


class Qwen3VLProcessor(_QwenCounts, Qwen3VLMultiModalProcessor):
    """Qwen3-VL (and its MoE): the video's prompt span in vLLM's layout for pruned videos, each temporal patch's
    ``<t seconds>``, vision start and end, with all the declared placeholders after the first time. The model
    returns the whole span's embeddings, its tokens in their own frames (:class:`~.models.qwen3_vl.Qwen3VL`); the span's
    length is the same."""

    family = "qwen3_vl"

    def _video_token_id(self) -> int:
        return self.info.get_hf_config().video_token_id

    def _get_prompt_updates(
        self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs: Any
    ) -> Sequence[Any]:
        updates = Qwen3VLMultiModalProcessor._get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        if self._server().stage is None:
            return updates
        serving = self._request(hf_processor_mm_kwargs)
        config = self.info.get_hf_config()
        tokenizer = self.info.get_tokenizer()

        def replacement(item_idx: int) -> Any:
            count = self._placeholders(serving, mm_items, out_mm_kwargs, item_idx)
            times = out_mm_kwargs["video"][item_idx]["timestamps"].data
            return Qwen3VLMultiModalProcessor.get_video_repl(
                tokens_per_frame=[count] + [0] * (len(times) - 1),
                timestamps=times,
                tokenizer=tokenizer,
                vision_start_token_id=config.vision_start_token_id,
                vision_end_token_id=config.vision_end_token_id,
                video_token_id=config.video_token_id,
                select_token_id=False,
            )

        video = next(u for u in updates if u.modality == "video")  # its target is the HF processor's video marker
        return [u for u in updates if u.modality != "video"] + [
            PromptReplacement(modality="video", target=video.target, replacement=replacement)
        ]

    def _kept(self, result: Any, placeholder: Any) -> int:
        """The span holds each temporal patch's time, vision start and end too: count its video tokens."""
        span = result["prompt_token_ids"][placeholder.offset : placeholder.offset + placeholder.length]
        return sum(1 for token in span if token == self._video_token_id())
