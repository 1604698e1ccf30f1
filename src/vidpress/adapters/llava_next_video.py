"""Adapter for the LLaVA-NeXT-Video layout (``LlavaNextVideoForConditionalGeneration``): LongVA's family.

Video path (transformers' own ``get_video_features``): vision tower -> 2x2 average pooling of the encoder
grid (``vision_resampler``) -> projector; no newline tokens for video. LongVA-7B (CLIP-L/336, 24x24 -> 144
tokens per frame, Qwen2 LLM) has exactly this layout; transformers has no LongVA class, so its checkpoints
load here once converted to this class. LLaVA-Video-7B puts a newline after every grid row of every frame,
which no transformers class reproduces; LlavaOnevisionForConditionalGeneration (one newline after the
video) is the closest for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ..tokens import VisualTokens
from .llava_tower import LlavaTowerAdapter

if TYPE_CHECKING:
    from ..models.random import LoadedModel


class LlavaNextVideoAdapter(LlavaTowerAdapter):
    """A LLaVA tower with the pooling before the projector and no newline (it encodes at its own resolution only:
    the pooling runs on the encoder grid)."""

    model_class_names = ("LlavaNextVideoForConditionalGeneration",)
    model_types = ("llava_next_video",)
    random_name = "random-llava-next-video"
    extra_visual = 0

    @classmethod
    def pooled_side(cls, config: dict[str, Any], side: int) -> int:
        """Average pooling by ``spatial_pool_stride`` (default 2)."""
        return side // config.get("spatial_pool_stride", 2)

    @classmethod
    def build_random(cls, layers: int = 4, hidden: int = 128, image_size: int | None = None) -> LoadedModel:
        """A random LLaVA-NeXT-Video (LongVA's layout): Qwen2 LM, 6-layer CLIP tower at 336 px by default (its feature
        layer, the penultimate, deep enough for ToMe's default: 576 patches halve to 36 per frame, a quarter of 144)."""
        from ..models.random import random_llava_next_video

        return random_llava_next_video(layers=layers, hidden=hidden, image_size=image_size or 336, tower_layers=6)

    def grid(self) -> tuple[int, int]:
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size // self.config.spatial_pool_stride
        return side, side

    def vision_modules(self) -> tuple[nn.Module, ...]:
        inner = self.model.model
        return inner.vision_tower, inner.vision_resampler, inner.multi_modal_projector

    def unpooled_capture(self) -> tuple[nn.Module, str]:
        """The pooling runs before the projector here: capture the pooling's input (the encoder grid)."""
        return self.model.model.vision_resampler, "input"

    def run_video_encoder(self, inputs: dict[str, Any]) -> Any:
        return self.model.model.get_video_features(
            inputs["pixel_values_videos"],
            vision_feature_layer=inputs.get("vision_feature_layer", self.config.vision_feature_layer),
            vision_feature_select_strategy=inputs.get(
                "vision_feature_select_strategy", self.config.vision_feature_select_strategy
            ),
            return_dict=True,
        )

    def encode_video(self, inputs: dict[str, Any]) -> tuple[VisualTokens, Tensor]:
        """Per-frame tokens (B, F, T, D) and no extra tokens (B, 0, D); consumes the video inputs."""
        features = self.video_outputs(inputs).pooler_output  # (B, F*T, D)
        grid = self.grid()
        tokens = features.reshape(features.shape[0], -1, grid[0] * grid[1], features.shape[-1])
        return VisualTokens(tokens, grid), features[:, :0]

    def unpooled_grid(self, projected: Tensor | None, tokens: VisualTokens) -> tuple[Tensor, nn.Module, int]:
        """The captured encoder grid (B*F, h0*w0, Dv) -> (B, F, h0, w0, Dv), and the projector that a stage pooling
        it itself (METok stage 1) applies after pooling, in the model's own order."""
        grid, _, stride = super().unpooled_grid(projected, tokens)
        return grid, self.model.model.multi_modal_projector, stride

    def pool_patch_grid(self, x: Tensor) -> Tensor:
        """Average pooling by ``spatial_pool_stride``, as the model's ``vision_resampler`` pools its features."""
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        grid = x.view(x.shape[0], side, side, -1).permute(0, 3, 1, 2)
        return nn.functional.avg_pool2d(grid, self.config.spatial_pool_stride).flatten(2).transpose(1, 2)
