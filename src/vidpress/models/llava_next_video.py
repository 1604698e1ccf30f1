"""Adapter for the LLaVA-NeXT-Video layout (``LlavaNextVideoForConditionalGeneration``): LongVA's family.

Video path (transformers' own ``get_video_features``): vision tower -> 2x2 average pooling of the encoder
grid (``vision_resampler``) -> projector; no newline tokens for video. LongVA-7B (CLIP-L/336, 24x24 -> 144
tokens per frame, Qwen2 LLM) has exactly this layout; transformers has no LongVA class, so its checkpoints
load here once converted to this class. LLaVA-Video-7B puts a newline after every grid row of every frame,
which no transformers class reproduces; LlavaOnevisionForConditionalGeneration (one newline after the
video) is the closest for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import VidpressError
from ..tokens import VisualTokens
from .base import register
from .encoder_attention import check_signals
from .llava_onevision import LlavaOnevisionAdapter


class LlavaNextVideoAdapter(LlavaOnevisionAdapter):
    model_class_names = ("LlavaNextVideoForConditionalGeneration",)

    def grid(self, model: nn.Module) -> tuple[int, int]:
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size // model.config.spatial_pool_stride
        return side, side

    def vision_modules(self, model: nn.Module) -> tuple[nn.Module, ...]:
        return model.model.vision_tower, model.model.vision_resampler, model.model.multi_modal_projector

    def unpooled_capture(self, model: nn.Module) -> tuple[nn.Module, str]:
        """The pooling runs before the projector here: capture the pooling's input (the encoder grid)."""
        return model.model.vision_resampler, "input"

    def encode_video(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[VisualTokens, Tensor]:
        """Per-frame tokens (B, F, T, D) and no extra tokens (B, 0, D); consumes the video inputs."""
        encoded = dict(inputs.get("mm_encoder_outputs") or {})
        out = encoded.pop("video", None)
        if out is None:
            out = model.model.get_video_features(
                inputs["pixel_values_videos"],
                vision_feature_layer=inputs.get("vision_feature_layer", model.config.vision_feature_layer),
                vision_feature_select_strategy=inputs.get("vision_feature_select_strategy",
                                                          model.config.vision_feature_select_strategy),
                return_dict=True,
            )
        inputs.update(pixel_values_videos=None, mm_encoder_outputs=encoded or None)
        features = out.pooler_output  # (B, F*T, D)
        grid = self.grid(model)
        tokens = features.reshape(features.shape[0], -1, grid[0] * grid[1], features.shape[-1])
        return VisualTokens(tokens, grid), features[:, :0]

    def unpooled_grid(self, model: nn.Module, projected: Tensor | None,
                      tokens: VisualTokens) -> tuple[Tensor, nn.Module, int]:
        """The captured encoder grid (B*F, h0*w0, Dv) -> (B, F, h0, w0, Dv), and the projector that a stage pooling
        it itself (METok stage 1) applies after pooling, in the model's own order."""
        batch, frames = tokens.features.shape[:2]
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        if projected is None or projected.shape[0] != batch * frames or projected.shape[1] != side * side:
            raise VidpressError("the encoder grid for this video was not captured; run the model with the method "
                                "installed (vidpress.apply) so vidpress sees the vision encoding")
        return projected.view(batch, frames, side, side, -1), model.model.multi_modal_projector, 1

    def pool_encoder_signals(self, model: nn.Module, received: Tensor, keys: Tensor, batch: int,
                             frames: int) -> tuple[Tensor, Tensor]:
        """Average-pool encoder attention (B*F, P) and keys (B*F, P, Dk) to the frame grid, as the features
        are pooled: (B, F, T) and (B, F, T, Dk)."""
        check_signals(received, batch * frames)
        if self.encoder_has_cls(model):
            received, keys = received[:, 1:], keys[:, 1:]
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        x = torch.cat([received[..., None], keys], dim=-1).view(received.shape[0], side, side, -1).permute(0, 3, 1, 2)
        pooled = nn.functional.avg_pool2d(x, model.config.spatial_pool_stride).flatten(2).transpose(1, 2)
        return pooled[..., 0].reshape(batch, frames, -1), pooled[..., 1:].reshape(batch, frames, pooled.shape[1], -1)


ADAPTER = register(LlavaNextVideoAdapter())
