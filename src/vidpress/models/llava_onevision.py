"""Adapter for LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``) in stock transformers.

Video path (transformers' own ``get_video_features``): vision tower -> projector -> 2x2 bilinear pooling per
frame -> one ``image_newline`` token appended after all frames. 1-D rotary positions.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import VidpressError
from ..tokens import VisualTokens
from .encoder_attention import check_signals, encoder_signals


class LlavaOnevisionAdapter:
    model_class_names = ("LlavaOnevisionForConditionalGeneration",)

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def decoder_layers(self, model: nn.Module):
        return self.language_model(model).layers

    def video_token_id(self, model: nn.Module) -> int:
        return model.config.video_token_id

    def grid(self, model: nn.Module) -> tuple[int, int]:
        vision = model.config.vision_config
        side = math.ceil(vision.image_size // vision.patch_size / 2)
        return side, side

    def vision_modules(self, model: nn.Module) -> tuple[nn.Module, ...]:
        """Modules whose forward time is the vision-encoding time (tower and projector)."""
        return model.model.vision_tower, model.model.multi_modal_projector

    def restore_inputs(self, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]) -> None:
        """Put back video inputs ``generate`` consumed before the forward (nothing for this family)."""

    def prefill_positions(
        self, model: nn.Module, kwargs: dict[str, Any], input_ids: Tensor, mask: Tensor | None
    ) -> Tensor | None:
        """The caller's 1-D position ids, if any (None: the runtime derives them from the mask)."""
        return kwargs.get("position_ids")

    def unpooled_capture(self, model: nn.Module) -> tuple[nn.Module, str]:
        """Where the runtime captures what :meth:`unpooled_grid` needs: the projector's output (B*F, h0*w0, D)."""
        return model.model.multi_modal_projector, "output"

    def has_video(self, inputs: dict[str, Any]) -> bool:
        return inputs.get("pixel_values_videos") is not None or bool(
            (inputs.get("mm_encoder_outputs") or {}).get("video")
        )

    def video_outputs(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        """transformers' video-encoder output for this request, consuming the video inputs from ``inputs``:
        ``generate`` pre-encodes the video into ``mm_encoder_outputs["video"]``; a direct call passes pixel values,
        which :meth:`run_video_encoder` encodes."""
        encoded = dict(inputs.get("mm_encoder_outputs") or {})
        out = encoded.pop("video", None)
        if out is None:
            out = self.run_video_encoder(model, inputs)
        inputs.update(pixel_values_videos=None, mm_encoder_outputs=encoded or None)
        if "image_sizes_videos" in inputs:
            inputs["image_sizes_videos"] = None
        return out

    def run_video_encoder(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        """transformers' own ``get_video_features`` on the request's ``pixel_values_videos``."""
        return model.model.get_video_features(
            inputs["pixel_values_videos"],
            vision_feature_layer=inputs.get("vision_feature_layer"),
            vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
            return_dict=True,
        )

    def encode_video(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[VisualTokens, Tensor]:
        """Per-frame tokens (B, F, T, D) and the newline (B, 1, D); consumes the video inputs from ``inputs``."""
        features = self.video_outputs(model, inputs).pooler_output  # (B, F*T + 1, D): frame tokens, newline
        grid = self.grid(model)
        per_frame = grid[0] * grid[1]
        frames = (features.shape[1] - 1) // per_frame
        tokens = features[:, : frames * per_frame].reshape(features.shape[0], frames, per_frame, -1)
        return VisualTokens(tokens, grid), features[:, frames * per_frame :]

    def unpooled_grid(
        self, model: nn.Module, projected: Tensor | None, tokens: VisualTokens
    ) -> tuple[Tensor, None, int]:
        """The projector's output before pooling, (B*F, h0*w0, D) -> (B, F, h0, w0, D); nothing to project after
        pooling (None); the grid is the patch grid (stride 1)."""
        batch, frames = tokens.features.shape[:2]
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        if projected is None or projected.shape[0] != batch * frames or projected.shape[1] != side * side:
            raise VidpressError(
                "the unpooled grid of this video was not captured; run the model with the method "
                "installed (vidpress.apply) so vidpress sees the vision encoding"
            )
        return projected.view(batch, frames, side, side, -1), None, 1

    def encoder_attention(self, model: nn.Module) -> nn.Module:
        """The vision attention module of the layer whose output the projector receives
        (``config.vision_feature_layer``): VisionZip scores tokens by this layer's attention.

        Raises
        ------
        VidpressError
            Multi-layer or embedding-layer vision features (no single attention layer to score).
        """
        layer = model.config.vision_feature_layer
        modules = [m for m in model.model.vision_tower.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")]
        if not isinstance(layer, int) or layer == 0 or not modules:
            raise VidpressError(
                f"vision_feature_layer={layer!r} has no single attention layer to score; "
                "encoder-attention methods need one integer feature layer"
            )
        return modules[layer if layer < 0 else layer - 1]

    def encoder_signals(
        self, model: nn.Module, module: nn.Module, args: tuple, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """Attention received (B*F, P) and head-averaged keys (B*F, P, Dk) of ``module``'s call with ``args``/
        ``kwargs`` (see :func:`~vidpress.models.encoder_attention.encoder_signals`)."""
        hidden = args[0] if args else kwargs["hidden_states"]
        return encoder_signals(module, hidden, self.encoder_has_cls(model))

    def encoder_has_cls(self, model: nn.Module) -> bool:
        """Whether the encoder's first token is a CLS token the projector drops ("default" strategy)."""
        return model.config.vision_feature_select_strategy == "default"

    def pool_encoder_signals(
        self, model: nn.Module, received: Tensor, keys: Tensor, batch: int, frames: int
    ) -> tuple[Tensor, Tensor]:
        """Pool encoder attention (B*F, P) and keys (B*F, P, Dk) to the frame grid with the model's own pooling:
        (B, F, T) and (B, F, T, Dk). The CLS column, if any, is dropped first, as the projector drops it."""
        check_signals(received, batch * frames)
        if self.encoder_has_cls(model):
            received, keys = received[:, 1:], keys[:, 1:]
        pooled = self.pool_patch_grid(model, torch.cat([received[..., None], keys], dim=-1))
        return pooled[..., 0].reshape(batch, frames, -1), pooled[..., 1:].reshape(batch, frames, pooled.shape[1], -1)

    def pool_patch_grid(self, model: nn.Module, x: Tensor) -> Tensor:
        """The model's own per-frame pooling of a patch grid (n, h0*w0, C) -> (n, T, C): bilinear 2x2 here."""
        return model.model.apply_pooling(x)

    def query_states(self, attention: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return self._projected_states(attention, hidden, cos, sin, "q")

    def key_states(self, attention: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return self._projected_states(attention, hidden, cos, sin, "k")

    def attention_input(self, layer: nn.Module, hidden: Tensor) -> tuple[nn.Module, Tensor]:
        return layer.self_attn, layer.input_layernorm(hidden)

    @staticmethod
    def _projected_states(attention: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor, which: str) -> Tensor:
        shape = (*hidden.shape[:-1], -1, attention.head_dim)
        states = getattr(attention, f"{which}_proj")(hidden).view(shape).transpose(1, 2)
        norm = getattr(attention, f"{which}_norm", None)
        if norm is not None:  # Qwen3-style query/key norm
            states = norm(states)
        rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb
        return rotary(states, states, cos, sin)[0]
