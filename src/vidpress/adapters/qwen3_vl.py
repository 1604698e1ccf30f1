"""Adapter for Qwen3-VL (``Qwen3VLForConditionalGeneration``) and its MoE (``Qwen3VLMoeForConditionalGeneration``),
in stock transformers.

What differs from Qwen2.5-VL (:mod:`.qwen2_5_vl`, whose video path it shares: 2-frame temporal patches, 2x2
merger, one vidpress "frame" per temporal patch, M-RoPE ids gathered for kept tokens):

- **DeepStack**: the ViT's layers ``deepstack_visual_indexes`` each feed a merger whose output is added to the
  LLM's hidden states at the visual positions after its first layers (``Qwen3VLTextModel._deepstack_process``).
  The adapter returns them with the tokens (``VisualTokens.deepstack``); the runtime keeps, merges and drops them
  exactly as the method keeps, merges and drops the tokens, and adds them at the tokens alive at each layer.
- **Timestamps in the prompt**: each temporal patch is ``<t seconds><|vision_start|>`` + placeholders +
  ``<|vision_end|>``, so the video's placeholders are split by text; that text is never a visual token and is
  always kept.
- **Interleaved M-RoPE**, positions from the model's ``get_rope_index`` (each temporal patch its own grid),
  gathered for the kept tokens as on Qwen2.5-VL.
- A ViT without windows (every layer attends within its temporal patch) and a learned position grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from ..errors import UnsupportedModelError, VidpressError
from ..specs import LLMDims, VisionDims
from ..tokens import VisualTokens
from .encoder_attention import merge_unit_signals
from .qwen2_5_vl import Qwen2_5_VLAdapter

if TYPE_CHECKING:
    from ..models.random import LoadedModel
    from ..processing import OfflineVideoProcessor


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    model_class_names: ClassVar[tuple[str, ...]] = ("Qwen3VLForConditionalGeneration",)
    model_types: ClassVar[tuple[str, ...]] = ("qwen3_vl",)
    random_name = "random-qwen3-vl"

    @staticmethod
    def llm_dims(text: dict[str, Any]) -> LLMDims:
        """LLM sizes; for a mixture of experts the MLP width is the active experts' (``num_experts_per_tok`` x
        ``moe_intermediate_size``) and ``router`` the router's width (``num_experts``).

        Raises
        ------
        UnsupportedModelError
            A MoE config with dense layers among the sparse ones (``mlp_only_layers``, ``decoder_sparse_step``
            > 1), which the per-layer formula does not count.
        """
        dims = Qwen2_5_VLAdapter.llm_dims(text)
        experts = text.get("num_experts") or text.get("num_local_experts")
        if not experts:
            return dims
        if text.get("mlp_only_layers") or text.get("decoder_sparse_step", 1) != 1:
            raise UnsupportedModelError(
                "the calculator counts MoE configs whose every layer is sparse; this one has dense layers "
                f"(mlp_only_layers={text.get('mlp_only_layers')}, "
                f"decoder_sparse_step={text.get('decoder_sparse_step')})"
            )
        active = text["num_experts_per_tok"] * text["moe_intermediate_size"]
        return LLMDims(dims.hidden, active, dims.layers, dims.heads, dims.kv_heads, dims.head_dim, router=experts)

    @staticmethod
    def vision_dims(vision: dict[str, Any], patches: int) -> VisionDims:
        """A ViT without windows: every layer attends within its temporal patch. The resolution is not in the
        config: 512 px frames (256 tokens per temporal patch) unless a measured request says otherwise."""
        return VisionDims(
            vision["hidden_size"],
            vision["intermediate_size"],
            vision["depth"],
            patches,
            vision.get("patch_size", 16),
            temporal_patch=vision.get("temporal_patch_size", 2),
        )

    @staticmethod
    def spec_extras(vision: dict[str, Any]) -> dict[str, Any]:
        """DeepStack's mergers and additions (``ModelSpec.deepstack`` levels), and each temporal patch's
        ``<t seconds>`` and vision start/end as 8 text tokens (Qwen's tokenizer; ``ModelSpec.text_per_frame``)."""
        return {"deepstack": len(vision.get("deepstack_visual_indexes") or ()), "text_per_frame": 8}

    @classmethod
    def offline_processor(
        cls, tokenizer: Any, config: Any, preprocessor: dict[str, Any], chat_template: str | None
    ) -> OfflineVideoProcessor:
        """Square 512 px frames (256 tokens per 2 frames), timestamps in the prompt, mean/std 0.5 unless the
        checkpoint says otherwise."""
        from ..processing import OfflineQwen3VideoProcessor

        return OfflineQwen3VideoProcessor(
            tokenizer,
            512,
            chat_template=chat_template,
            image_mean=preprocessor.get("image_mean", (0.5, 0.5, 0.5)),
            image_std=preprocessor.get("image_std", (0.5, 0.5, 0.5)),
        )

    @classmethod
    def build_random(cls, layers: int = 4, hidden: int = 128, image_size: int | None = None) -> LoadedModel:
        """A random Qwen3-VL (DeepStack, interleaved M-RoPE, timestamps) at 384 px by default."""
        from ..models.random import random_qwen3_vl

        return random_qwen3_vl(layers=layers, hidden=hidden, image_size=image_size or 384)

    def deepstack_levels(self) -> int:
        """LLM layers (the first ones) after which DeepStack features are added at the visual tokens."""
        return len(self.config.vision_config.deepstack_visual_indexes)

    def encode_video(self, inputs: dict[str, Any]) -> tuple[VisualTokens, Tensor]:
        """Tokens per temporal patch (B, T, h*w, D) with their DeepStack features (levels, B, T, h*w, D), and no
        extra tokens (B, 0, D); consumes the video inputs.

        Raises
        ------
        BudgetError
            Videos of different grids in one batch (run them one at a time).
        VidpressError
            Images in the same request: their DeepStack features share the video's mask in the model.
        """
        if inputs.get("pixel_values") is not None or (inputs.get("mm_encoder_outputs") or {}).get("image"):
            raise VidpressError(
                "vidpress compresses Qwen3-VL requests with a video and no images (the model adds both modalities' "
                "DeepStack features through one mask); send the images in another request"
            )
        return super().encode_video(inputs)

    def _stack_video(self, out: Any, grids: Tensor) -> VisualTokens:
        tokens = super()._stack_video(out, grids)
        levels = out.deepstack_features  # per level, one (T*h*w, D) block per video
        shape = tokens.features.shape
        deepstack = torch.stack([torch.stack(list(level)).view(shape) for level in levels])
        return VisualTokens(tokens.features, tokens.grid, deepstack=deepstack)

    def expand_frames(self, output: Any, keep: list[int], frames: int, per_frame: int) -> Any:
        """Each video's merged tokens and DeepStack features laid back on all ``frames`` temporal patches."""
        from ..stages import lay_back

        output = super().expand_frames(output, keep, frames, per_frame)
        output.deepstack_features = [
            [lay_back(block, keep, frames, per_frame) for block in level] for level in output.deepstack_features
        ]
        return output

    def encoder_signals(
        self, module: Any, args: tuple, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """Attention received and head-averaged keys per LLM token, (N,) and (N, Dk) over all videos' merged tokens
        in temporal order (:func:`~.encoder_attention.merge_unit_signals`: each temporal patch attends within
        itself; the ViT has no windows to undo)."""
        return merge_unit_signals(module, args, kwargs, self.config.vision_config.spatial_merge_size)


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Qwen3-VL's mixture-of-experts LLM (``Qwen3VLMoeForConditionalGeneration``): the same video path, DeepStack
    and positions; the accounting counts the active experts and the router."""

    model_class_names = ("Qwen3VLMoeForConditionalGeneration",)
    model_types = ("qwen3_vl_moe",)
    random_name = "random-qwen3-vl-moe"

    @classmethod
    def build_random(cls, layers: int = 4, hidden: int = 128, image_size: int | None = None) -> LoadedModel:
        """A random Qwen3-VL-MoE (4 experts, 2 active) at 384 px by default."""
        from ..models.random import random_qwen3_vl

        return random_qwen3_vl(layers=layers, hidden=hidden, image_size=image_size or 384, moe=True)
