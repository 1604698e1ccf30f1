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

from torch import Tensor, nn

from ..tokens import VisualTokens
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

    def run_video_encoder(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        return model.model.get_video_features(
            inputs["pixel_values_videos"],
            vision_feature_layer=inputs.get("vision_feature_layer", model.config.vision_feature_layer),
            vision_feature_select_strategy=inputs.get(
                "vision_feature_select_strategy", model.config.vision_feature_select_strategy
            ),
            return_dict=True,
        )

    def encode_video(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[VisualTokens, Tensor]:
        """Per-frame tokens (B, F, T, D) and no extra tokens (B, 0, D); consumes the video inputs."""
        features = self.video_outputs(model, inputs).pooler_output  # (B, F*T, D)
        grid = self.grid(model)
        tokens = features.reshape(features.shape[0], -1, grid[0] * grid[1], features.shape[-1])
        return VisualTokens(tokens, grid), features[:, :0]

    def unpooled_grid(
        self, model: nn.Module, projected: Tensor | None, tokens: VisualTokens
    ) -> tuple[Tensor, nn.Module, int]:
        """The captured encoder grid (B*F, h0*w0, Dv) -> (B, F, h0, w0, Dv), and the projector that a stage pooling
        it itself (METok stage 1) applies after pooling, in the model's own order."""
        grid, _, stride = super().unpooled_grid(model, projected, tokens)
        return grid, model.model.multi_modal_projector, stride

    def pool_patch_grid(self, model: nn.Module, x: Tensor) -> Tensor:
        """Average pooling by ``spatial_pool_stride``, as the model's ``vision_resampler`` pools its features."""
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        grid = x.view(x.shape[0], side, side, -1).permute(0, 3, 1, 2)
        return nn.functional.avg_pool2d(grid, model.config.spatial_pool_stride).flatten(2).transpose(1, 2)
