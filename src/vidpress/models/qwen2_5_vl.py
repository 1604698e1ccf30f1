"""Adapter for Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) and Qwen2-VL, in stock transformers.

Video path (transformers' own ``get_video_features``): frames in 2-frame temporal patches -> windowed ViT ->
2x2 patch merger -> h*w tokens per temporal patch, so one "frame" of vidpress tokens is one temporal patch.
No newline tokens (``<|vision_start|>``/``<|vision_end|>`` are ordinary text tokens around the block).

Positions are 3-D M-RoPE (t, h, w) from the model's own ``get_rope_index`` (or the ones ``generate`` passes):
kept tokens keep their ids, gathered, never renumbered, and text after the video keeps the uncompressed ids.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import BudgetError, VidpressError
from ..tokens import VisualTokens
from .base import register
from .llava_onevision import LlavaOnevisionAdapter

NOT_YET = ("{what} is not available on Qwen2.5-VL yet ({why}); use a method without it, e.g. dycoke, fastv, "
           "pdrop or the frames/spatial/random controls")


class Qwen2_5_VLAdapter(LlavaOnevisionAdapter):
    model_class_names = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")

    def vision_modules(self, model: nn.Module) -> tuple[nn.Module, ...]:
        return (model.model.visual,)

    def grid(self, model: nn.Module, grid_thw: Tensor) -> tuple[int, int]:
        merge = model.config.vision_config.spatial_merge_size
        return int(grid_thw[1]) // merge, int(grid_thw[2]) // merge

    def encode_video(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[VisualTokens, Tensor]:
        """Tokens per temporal patch (B, T, h*w, D) and no extra tokens (B, 0, D); consumes the video inputs.

        Raises
        ------
        BudgetError
            Videos of different grids in one batch (run them one at a time).
        """
        grids = inputs.get("video_grid_thw")
        if grids is None:
            raise VidpressError("Qwen2.5-VL inputs need video_grid_thw; build them with the model's processor")
        encoded = dict(inputs.get("mm_encoder_outputs") or {})
        out = encoded.pop("video", None)
        if out is None:
            out = model.model.get_video_features(inputs["pixel_values_videos"], grids, return_dict=True)
        inputs.update(pixel_values_videos=None, mm_encoder_outputs=encoded or None)
        if len({tuple(g.tolist()) for g in grids}) > 1:
            raise BudgetError(f"videos in the batch have different grids {grids.tolist()}; run them one at a time")
        h, w = self.grid(model, grids[0])
        per_video = out.pooler_output  # one (T*h*w, D) block per video
        tokens = nn.utils.rnn.pad_sequence(list(per_video), batch_first=True).view(len(per_video), -1, h * w,
                                                                                   per_video[0].shape[-1])
        return VisualTokens(tokens, (h, w)), tokens.new_zeros(tokens.shape[0], 0, tokens.shape[-1])

    def restore_inputs(self, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]) -> None:
        """``generate`` encodes the video first and drops ``video_grid_thw``; take it from the vision call."""
        if kwargs.get("video_grid_thw") is None and vision_kwargs.get("grid_thw") is not None:
            kwargs["video_grid_thw"] = vision_kwargs["grid_thw"]

    def prefill_positions(self, model: nn.Module, kwargs: dict[str, Any], input_ids: Tensor,
                          mask: Tensor | None) -> Tensor:
        """M-RoPE ids of the full prompt: those ``generate`` passed ((4, B, S): text row + t, h, w), else the
        model's own ``get_rope_index`` ((3, B, S))."""
        given = kwargs.get("position_ids")
        if given is not None:
            return given
        types = kwargs.get("mm_token_type_ids")
        if types is None:
            types = (input_ids == self.video_token_id(model)).int() * 2
        positions, _ = model.model.get_rope_index(input_ids, types, video_grid_thw=kwargs.get("video_grid_thw"),
                                                  second_per_grid_ts=kwargs.get("second_per_grid_ts"),
                                                  attention_mask=mask)
        return positions

    def unpooled_capture(self, model: nn.Module) -> tuple[nn.Module, str]:
        raise VidpressError(NOT_YET.format(what="pooling the unmerged grid (METok stage 1)",
                                           why="the 2x2 merger is an MLP, not a pooling"))

    def encoder_attention(self, model: nn.Module) -> nn.Module:
        raise VidpressError(NOT_YET.format(what="vision-encoder attention (VisionZip, FastVID)",
                                           why="windowed attention with fused qkv and vision RoPE"))


ADAPTER = register(Qwen2_5_VLAdapter())
