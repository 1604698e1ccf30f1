"""Adapter for Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) and Qwen2-VL, in stock transformers.

Video path (transformers' own ``get_video_features``): frames in 2-frame temporal patches -> windowed ViT ->
2x2 patch merger -> h*w tokens per temporal patch, so one "frame" of vidpress tokens is one temporal patch.
No newline tokens (``<|vision_start|>``/``<|vision_end|>`` are ordinary text tokens around the block).

Positions are 3-D M-RoPE (t, h, w) from the model's own ``get_rope_index`` (or the ones ``generate`` passes):
kept tokens keep their ids, gathered, never renumbered, and text after the video keeps the uncompressed ids.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import BudgetError, VidpressError
from ..specs import ModelSpec, VisionDims
from ..stages import lay_back
from ..tokens import VisualTokens
from .base import Adapter
from .encoder_attention import merge_unit_signals

if TYPE_CHECKING:
    from ..models.random import LoadedModel
    from ..processing import OfflineVideoProcessor


def temporal_patch_rows(grids: list[list[int]], keep: list[int]) -> list[int]:
    """Rows of Qwen's flattened patches (videos one after another, each ``t`` temporal patches of ``h*w`` patch
    rows) that belong to the temporal patches ``keep`` of every video, in order."""
    rows, start = [], 0
    for t, h, w in grids:
        rows += [start + f * h * w + i for f in keep for i in range(h * w)]
        start += t * h * w
    return rows


class Qwen2_5_VLAdapter(Adapter):
    model_class_names: ClassVar[tuple[str, ...]] = (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
    )
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_5_vl", "qwen2_vl")
    random_name = "random-qwen2.5-vl"
    mrope = True

    @classmethod
    def spec(
        cls, config: dict[str, Any], name: str | None, dtype_bytes: int, tokens_per_frame: int | None
    ) -> ModelSpec:
        """The resolution is not in the config: 448 px frames (256 tokens per temporal patch) unless
        ``tokens_per_frame`` (a square grid) comes from a measured request."""
        vision, merge = config["vision_config"], config["vision_config"].get("spatial_merge_size", 2)
        tokens = tokens_per_frame or 256
        side = math.isqrt(tokens)
        patches = tokens * merge * merge
        return ModelSpec(
            name or config.get("_name_or_path") or config["model_type"],
            cls.llm_dims(config.get("text_config") or config),
            cls.vision_dims(vision, patches),
            tokens,
            (side, tokens // max(side, 1)),
            patches,
            0,
            dtype_bytes,
            merge,
            **cls.spec_extras(vision),
        )

    @staticmethod
    def vision_dims(vision: dict[str, Any], patches: int) -> VisionDims:
        """The tower's sizes from its config dict, at ``patches`` patches per temporal patch: windowed attention but
        in ``fullatt_block_indexes``."""
        window = (vision.get("window_size", 0) // vision.get("patch_size", 14)) ** 2
        full = len(vision.get("fullatt_block_indexes") or ()) if window else 0
        return VisionDims(
            vision.get("hidden_size") or vision["embed_dim"],
            vision.get("intermediate_size") or int(vision.get("embed_dim", 0) * vision.get("mlp_ratio", 4)),
            vision.get("depth") or vision["num_hidden_layers"],
            patches,
            vision.get("patch_size", 14),
            window_tokens=window,
            full_layers=full,
            temporal_patch=vision.get("temporal_patch_size", 2),
        )

    @staticmethod
    def spec_extras(vision: dict[str, Any]) -> dict[str, Any]:
        """What the family's :class:`~vidpress.specs.ModelSpec` adds to the shared layout (nothing here)."""
        return {}

    @classmethod
    def offline_processor(
        cls, tokenizer: Any, config: Any, preprocessor: dict[str, Any], chat_template: str | None
    ) -> OfflineVideoProcessor:
        """Square 448 px frames (256 tokens per 2 frames), CLIP-normalised unless the checkpoint says otherwise."""
        from ..processing import CLIP_MEAN, CLIP_STD, OfflineQwenVideoProcessor

        return OfflineQwenVideoProcessor(
            tokenizer,
            448,
            chat_template=chat_template,
            image_mean=preprocessor.get("image_mean", CLIP_MEAN),
            image_std=preprocessor.get("image_std", CLIP_STD),
        )

    @classmethod
    def build_random(cls, layers: int = 4, hidden: int = 128, image_size: int | None = None) -> LoadedModel:
        """A random Qwen2.5-VL (windowed ViT, M-RoPE) at 336 px by default."""
        from ..models.random import random_qwen2_5_vl

        return random_qwen2_5_vl(layers=layers, hidden=hidden, image_size=image_size or 336)

    def vision_modules(self) -> tuple[nn.Module, ...]:
        return (self.model.model.visual,)

    def merged_grid(self, grid_thw: Tensor) -> tuple[int, int]:
        """(h, w) merged tokens per temporal patch of a video's ``grid_thw`` (t, h, w) patches."""
        merge = self.config.vision_config.spatial_merge_size
        return int(grid_thw[1]) // merge, int(grid_thw[2]) // merge

    def encode_video(self, inputs: dict[str, Any]) -> tuple[VisualTokens, Tensor]:
        """Tokens per temporal patch (B, T, h*w, D) and no extra tokens (B, 0, D); consumes the video inputs.

        Raises
        ------
        BudgetError
            Videos of different grids in one batch (run them one at a time).
        """
        grids = inputs.get("video_grid_thw")
        if grids is None:
            raise VidpressError("Qwen2.5-VL inputs need video_grid_thw; build them with the model's processor")
        out = self.video_outputs(inputs)
        if len({tuple(g.tolist()) for g in grids}) > 1:
            raise BudgetError(f"videos in the batch have different grids {grids.tolist()}; run them one at a time")
        tokens = self._stack_video(out, grids)
        features = tokens.features
        return tokens, features.new_zeros(features.shape[0], 0, features.shape[-1])

    def _stack_video(self, out: Any, grids: Tensor) -> VisualTokens:
        """The encoder output's per-video blocks as tokens (B, T, h*w, D) on the merged grid."""
        h, w = self.merged_grid(grids[0])
        per_video = out.pooler_output  # one (T*h*w, D) block per video
        tokens = torch.stack(list(per_video)).view(len(per_video), -1, h * w, per_video[0].shape[-1])
        return VisualTokens(tokens, (h, w))

    def run_video_encoder(self, inputs: dict[str, Any]) -> Any:
        return self.model.model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
        )

    def frame_grid(self, arguments: dict[str, Any]) -> tuple[int, int]:
        """(temporal patches, merged tokens per temporal patch) of the video encoder's arguments.

        Raises
        ------
        BudgetError
            Videos of different grids in one batch.
        """
        grids = arguments["video_grid_thw"]
        if len({tuple(g.tolist()) for g in grids}) > 1:
            raise BudgetError(f"videos in the batch have different grids {grids.tolist()}; run them one at a time")
        h, w = self.merged_grid(grids[0])
        return int(grids[0][0]), h * w

    def select_frames(self, arguments: dict[str, Any], keep: list[int]) -> dict[str, Any]:
        """Patch rows of the temporal patches ``keep`` of every video, and their grids with ``t = len(keep)``."""
        pixels, grids = arguments["pixel_values_videos"], arguments["video_grid_thw"]
        index = torch.tensor(temporal_patch_rows(grids.tolist(), keep), device=pixels.device)
        grids = grids.clone()
        grids[:, 0] = len(keep)
        return {**arguments, "pixel_values_videos": pixels[index], "video_grid_thw": grids}

    def expand_frames(self, output: Any, keep: list[int], frames: int, per_frame: int) -> Any:
        """Each video's merged tokens (T'*h*w, D) laid back on all ``frames`` temporal patches, zeros elsewhere."""
        expanded = [lay_back(pooled, keep, frames, per_frame) for pooled in output.pooler_output]
        output.pooler_output = (
            type(output.pooler_output)(expanded) if isinstance(output.pooler_output, tuple) else expanded
        )
        return output

    def restore_inputs(self, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]) -> None:
        """``generate`` encodes the video first and drops ``video_grid_thw``; take it from the vision call."""
        if kwargs.get("video_grid_thw") is None and vision_kwargs.get("grid_thw") is not None:
            kwargs["video_grid_thw"] = vision_kwargs["grid_thw"]

    def prefill_positions(self, kwargs: dict[str, Any], input_ids: Tensor, mask: Tensor | None) -> Tensor:
        """M-RoPE ids of the full prompt: those ``generate`` passed ((4, B, S): text row + t, h, w), else the
        model's own ``get_rope_index`` ((3, B, S))."""
        given = kwargs.get("position_ids")
        if given is not None:
            return given
        types = kwargs.get("mm_token_type_ids")
        if types is None:
            types = (input_ids == self.video_token_id()).int() * 2
        positions, _ = self.model.model.get_rope_index(
            input_ids,
            types,
            video_grid_thw=kwargs.get("video_grid_thw"),
            second_per_grid_ts=kwargs.get("second_per_grid_ts"),
            attention_mask=mask,
        )
        return positions

    def unpooled_capture(self) -> None:
        """Nothing to capture: the merger is an MLP, so the finest grid in the LLM's width is the merged one."""
        return None

    def unpooled_grid(self, captured: Any, tokens: VisualTokens) -> tuple[Tensor, None, int]:
        """The merged grid (B, T, h, w, D), already pooled 2x2 from the patch grid (stride 2): stages that re-pool
        it (METok stage 1) halve their strides."""
        batch, frames = tokens.features.shape[:2]
        return (
            tokens.features.view(batch, frames, *tokens.grid, -1),
            None,
            self.config.vision_config.spatial_merge_size,
        )

    def encoder_attention(self) -> nn.Module:
        """The last vision block's attention (a full-attention block in Qwen2.5-VL's configs: each temporal
        patch attends within itself), whose output the merger receives."""
        return self.model.model.visual.blocks[-1].attn

    def encoder_signals(
        self, module: Any, args: tuple, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """Attention received and head-averaged keys per LLM token, (N,) and (N, Dk) over all videos' merged tokens
        in temporal order (:func:`~.encoder_attention.merge_unit_signals`), with the window permutation undone as
        the model undoes it after its merger."""
        from transformers.vision_utils import get_vision_window_index

        received, keys = merge_unit_signals(module, args, kwargs, self.config.vision_config.spatial_merge_size)
        vision = self.config.vision_config
        window_index, _ = get_vision_window_index(
            vision_kwargs["grid_thw"], vision.spatial_merge_size, vision.window_size, vision.patch_size
        )
        reverse = window_index.argsort().to(received.device)
        return received[reverse], keys[reverse]

    def pool_encoder_signals(self, received: Tensor, keys: Tensor, batch: int, frames: int) -> tuple[Tensor, Tensor]:
        """Per-token signals (N,), (N, Dk) -> (B, T, h*w), (B, T, h*w, Dk): already one per LLM token."""
        if received.shape[0] % (batch * frames):
            raise VidpressError(
                f"the captured encoder attention has {received.shape[0]} tokens for {batch * frames} "
                "temporal patches; run the model with the method installed (vidpress.apply)"
            )
        return received.view(batch, frames, -1), keys.view(batch, frames, -1, keys.shape[-1])
