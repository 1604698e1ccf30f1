"""Adapter for LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``) in stock transformers.

Video path (transformers' own ``get_video_features``): vision tower -> projector -> 2x2 bilinear pooling per
frame -> one ``image_newline`` token appended after all frames. 1-D rotary positions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..tokens import VisualTokens
from .llava_tower import LlavaTowerAdapter

if TYPE_CHECKING:
    from ..models.random import LoadedModel


class LlavaOnevisionAdapter(LlavaTowerAdapter):
    model_class_names = ("LlavaOnevisionForConditionalGeneration",)
    model_types = ("llava_onevision",)
    random_name = "random"
    #: Tokens appended to the video block (the single ``image_newline``).
    extra_visual = 1

    @classmethod
    def pooled_side(cls, config: dict[str, Any], side: int) -> int:
        """2x2 bilinear pooling, rounding up."""
        return math.ceil(side / 2)

    @classmethod
    def build_random(cls, layers: int = 4, hidden: int = 128, image_size: int | None = None) -> LoadedModel:
        """A random LLaVA-OneVision: Qwen2 LM, 4-layer SigLIP tower at 224 px by default (deep enough for ToMe's
        default: 256 patches halve to 16 per frame, a quarter of the model's 64)."""
        from ..models.random import random_model

        return random_model(layers=layers, hidden=hidden, image_size=image_size or 224, tower_layers=4)

    def grid(self) -> tuple[int, int]:
        vision = self.config.vision_config
        side = math.ceil(vision.image_size // vision.patch_size / 2)
        return side, side

    def encode_video(self, inputs: dict[str, Any]) -> tuple[VisualTokens, Tensor]:
        """Per-frame tokens (B, F, T, D) and the newline (B, 1, D); consumes the video inputs from ``inputs``."""
        features = self.video_outputs(inputs).pooler_output  # (B, F*T + 1, D): frame tokens, newline
        grid = self.grid()
        per_frame = grid[0] * grid[1]
        frames = (features.shape[1] - 1) // per_frame
        tokens = features[:, : frames * per_frame].reshape(features.shape[0], frames, per_frame, -1)
        return VisualTokens(tokens, grid), features[:, frames * per_frame :]

    encodes_at_any_resolution = True

    def encode_at(self, pixels: Tensor, side: int) -> Tensor:
        """Frames (n, C, H, W) bilinearly resized to ``side`` patches a side, through the tower (position
        embeddings interpolated), the feature layer, the projector and the model's 2x2 bilinear pooling: (n,
        ceil(side / 2)**2, D). At the tower's own side these are the model's tokens."""
        size = side * self.config.vision_config.patch_size
        if pixels.shape[-1] != size or pixels.shape[-2] != size:
            pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True)
        hidden = self.tower_features(pixels)
        if self.config.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]
        projected = self.model.model.multi_modal_projector(hidden)
        grid = projected.view(projected.shape[0], side, side, -1).permute(0, 3, 1, 2)
        pooled = torch.nn.functional.interpolate(grid, size=(math.ceil(side / 2),) * 2, mode="bilinear")
        return pooled.flatten(2).transpose(1, 2)

    def unencoded_output(self, arguments: dict[str, Any]) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pixels = arguments["pixel_values_videos"]
        newline = self.model.model.image_newline[None, None].expand(pixels.shape[0], 1, -1)
        frames, per_frame = self.frame_grid(arguments)
        return self.expand_frames(BaseModelOutputWithPooling(pooler_output=newline), [], frames, per_frame)

    def pool_patch_grid(self, x: Tensor) -> Tensor:
        """The model's own per-frame pooling of a patch grid (n, h0*w0, C) -> (n, T, C): bilinear 2x2 here."""
        return self.model.model.apply_pooling(x)
