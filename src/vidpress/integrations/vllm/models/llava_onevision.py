"""LLaVA-OneVision in vLLM with a vidpress pre-LLM stage: frame tokens after vLLM's own projector and 2x2 pooling,
then the newline. Positions are the compressed prompt's own (vLLM numbers the sequence it is given), i.e. the kept
tokens are renumbered contiguously, as the reference implementations do. Encoder attention comes from SigLIP's
fused ``qkv_proj`` output on the tower's last attention."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ....adapters.encoder_attention import received_attention
from ....stages import lay_back
from ....tokens import VisualTokens
from ..processors import LlavaOnevisionProcessor
from ..serving import compress_video
from .common import Entries


@MULTIMODAL_REGISTRY.register_processor(
    LlavaOnevisionProcessor, info=LlavaOnevisionProcessingInfo, dummy_inputs=LlavaOnevisionDummyInputsBuilder
)
class LlavaOnevision(Entries, LlavaOnevisionForConditionalGeneration):
    """vLLM's ``LlavaOnevisionForConditionalGeneration`` with a vidpress pre-LLM stage on each video.

    Raises (at engine start-up; the API server has refused the same already, in one line)
    ------
    UnknownMethodError, InvalidParameterError, BudgetError, UnsupportedModelError
        See :func:`~vidpress.integrations.vllm.serving.check_engine`.
    """

    def _encoder_attention_module(self) -> Any:
        """The tower's last attention: vLLM builds the tower only up to the feature layer the projector reads."""
        return [m for m in self.vision_tower.modules() if hasattr(m, "qkv_proj")][-1]

    def _process_video_pixels(self, inputs: Any) -> Sequence[Tensor]:
        pixels = inputs["pixel_values_videos"]
        frames = [len(v) for v in pixels] if not isinstance(pixels, Tensor) else [pixels.shape[1]] * pixels.shape[0]
        stages = self._video_stages(len(frames))
        if all(stage is None for stage in stages):
            # vLLM's own path returns (1, N, D) per video when a batch's videos differ in length, which its runner
            # refuses (the engine dies); each video as (N, D) is what it takes
            return [video.reshape(-1, video.shape[-1]) for video in super()._process_video_pixels(inputs)]
        attention = any(stage is not None and stage.needs.encoder_attention for stage in stages)
        captured: dict[str, tuple[Tensor, Tensor]] = {}
        hook = None
        if attention:
            # the fused projection's output, so queries and keys are not projected a second time
            module = self._encoder_attention_module()
            hook = module.qkv_proj.register_forward_hook(
                lambda _, args, out: captured.update(signals=self._encoder_signals(module, out[0]))
            )
        side = math.ceil(self.config.vision_config.image_size // self.config.vision_config.patch_size / 2)
        per_frame = side * side
        # frames the plan can never use are not encoded (uniform frame sampling declares them)
        encoded = [None if s is None else s.encoded_frames(f, per_frame) for s, f in zip(stages, frames)]
        if any(e is not None for e in encoded) and not attention:
            full = [e if e is not None else list(range(f)) for e, f in zip(encoded, frames)]
            if isinstance(pixels, Tensor) and len({tuple(e) for e in full}) == 1:
                pixels = pixels[:, full[0]]
            else:
                pixels = [v[e] for v, e in zip(pixels, full)]
            inputs = {"pixel_values_videos": pixels}  # all vLLM's video path reads
        else:
            encoded = [None] * len(frames)
        try:
            videos = super()._process_video_pixels(inputs)
        finally:
            if hook is not None:
                hook.remove()
        received = keys = None
        if "signals" in captured:
            received, keys = captured["signals"]
            received, keys = received.split(frames), keys.split(frames)
        out = []
        for i, (emb, f, stage) in enumerate(zip(videos, frames, stages)):
            emb = emb.reshape(-1, emb.shape[-1])
            if stage is None:  # a request that asked for its videos uncompressed
                out.append(emb)
                continue
            frames_encoded = encoded[i]
            if frames_encoded is not None:
                emb = lay_back(emb, frames_encoded, f, per_frame)
            tokens = VisualTokens(
                emb[: f * per_frame].view(1, f, per_frame, -1),
                (side, side),
                extra=emb[f * per_frame :][None],
                attention=None if received is None else received[i][None],
                keys=None if keys is None else keys[i][None],
            )
            out.append(compress_video(stage, tokens, encoded=encoded[i])[0])
        return out

    def _encoder_signals(self, module: Any, qkv: Tensor) -> tuple[Tensor, Tensor]:
        """Attention received and head-averaged keys of the tower's last attention from its fused projection's
        output ``qkv`` (n, P, 3 * H * head_dim), pooled with the model's own 2x2 pooling: (n, T) and
        (n, T, head_dim)."""
        cls_row = self.config.vision_feature_select_strategy == "default"
        received, keys = received_attention(_split_qk, qkv, module.head_dim, module.scale, cls_row)
        if cls_row:
            received, keys = received[:, 1:], keys[:, 1:]
        pooled = self.apply_pooling(torch.cat([received[..., None], keys], dim=-1))
        return pooled[..., 0], pooled[..., 1:]


def _split_qk(qkv: Tensor) -> tuple[Tensor, Tensor]:
    query, key, _ = qkv.chunk(3, dim=-1)
    return query, key
