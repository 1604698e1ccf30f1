"""What the LLaVA families share: a SigLIP/CLIP/DINOv2 tower read at ``vision_feature_layer``, a projector, a
per-frame pooling of the patch grid, a Llama/Qwen2 decoder (LLaVA-OneVision, LLaVA-NeXT-Video). Each family's
adapter derives from :class:`LlavaTowerAdapter` and adds only what differs (where the pooling sits, the extra
tokens, encoding at other resolutions)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import IncompatibleStagesError, VidpressError
from ..specs import ModelSpec, VisionDims
from ..tokens import VisualTokens
from .base import Adapter, TowerBlock
from .encoder_attention import check_signals, encoder_signals

if TYPE_CHECKING:
    from ..processing import OfflineVideoProcessor


class LlavaTowerAdapter(Adapter):
    """A LLaVA family: ``model.model`` holds ``vision_tower``, ``multi_modal_projector`` and ``language_model``.

    Subclasses set ``extra_visual`` (tokens the model appends to a video) and implement :meth:`pooled_side`,
    :meth:`grid`, :meth:`pool_patch_grid`, :meth:`run_video_encoder` and :meth:`encode_video`.
    """

    #: Tokens the model appends to the video block.
    extra_visual: int = 0

    @classmethod
    def pooled_side(cls, config: dict[str, Any], side: int) -> int:
        """Tokens per side of a frame after the model's pooling of a ``side`` x ``side`` patch grid."""
        raise NotImplementedError

    @classmethod
    def spec(
        cls, config: dict[str, Any], name: str | None, dtype_bytes: int, tokens_per_frame: int | None
    ) -> ModelSpec:
        """The spec of a LLaVA-style config: ``text_config`` + ``vision_config`` (SigLIP, CLIP or DINOv2; CLIP and
        DINOv2 count their CLS token in the encoder sequence), pooled per :meth:`pooled_side`."""
        text, vision = config["text_config"], config["vision_config"]
        side = vision["image_size"] // vision["patch_size"]
        cls_token = 1 if vision.get("model_type", "") in ("clip_vision_model", "dinov2") else 0
        vdims = VisionDims(
            vision["hidden_size"],
            vision.get("intermediate_size") or int(vision["hidden_size"] * vision.get("mlp_ratio", 4)),
            vision["num_hidden_layers"],
            side * side + cls_token,
            vision["patch_size"],
            feature_depth=_feature_depth(config.get("vision_feature_layer", -1), vision["num_hidden_layers"])
            % vision["num_hidden_layers"],  # 0: every layer
        )
        pooled = cls.pooled_side(config, side)
        return ModelSpec(
            name or config.get("_name_or_path") or config.get("model_type", "model"),
            cls.llm_dims(text),
            vdims,
            pooled * pooled,
            (pooled, pooled),
            side * side,
            cls.extra_visual,
            dtype_bytes,
        )

    @classmethod
    def offline_processor(
        cls, tokenizer: Any, config: Any, preprocessor: dict[str, Any], chat_template: str | None
    ) -> OfflineVideoProcessor:
        """Square frames at the tower's ``image_size``, normalised with the checkpoint's mean/std (0.5 when
        absent, SigLIP's), placeholders per the family's layout."""
        from ..processing import OfflineVideoProcessor

        vision = config.vision_config
        return OfflineVideoProcessor(
            tokenizer,
            vision.image_size,
            vision.patch_size,
            preprocessor.get("image_mean", [0.5] * 3),
            preprocessor.get("image_std", [0.5] * 3),
            chat_template=chat_template,
            layout=cls.model_types[0],
        )

    def vision_modules(self) -> tuple[nn.Module, ...]:
        return self.model.model.vision_tower, self.model.model.multi_modal_projector

    def unpooled_capture(self) -> tuple[nn.Module, str]:
        """Where the runtime captures what :meth:`unpooled_grid` needs: the projector's output (B*F, h0*w0, D)."""
        return self.model.model.multi_modal_projector, "output"

    def run_video_encoder(self, inputs: dict[str, Any]) -> Any:
        return self.model.model.get_video_features(
            inputs["pixel_values_videos"],
            vision_feature_layer=inputs.get("vision_feature_layer"),
            vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
            return_dict=True,
        )

    def tower_features(self, pixels: Tensor) -> Tensor:
        """Frames (n, C, H, W) through the tower (position embeddings interpolated to their size): the feature
        layer's hidden states (n, tokens, Dv), CLS included."""
        tower = self.model.model.vision_tower
        extra = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in _parameters(tower) else {}
        return tower(pixels, output_hidden_states=True, **extra).hidden_states[self.config.vision_feature_layer]

    # -- merging inside the tower (ToMe) ------------------------------------------------------------------------

    def tower_blocks(self) -> list[TowerBlock]:
        """The encoder layers' modules the merging hooks act on (SigLIP, CLIP and DINOv2 layers).

        Raises
        ------
        IncompatibleStagesError
            A tower whose layers are not laid out as those, or an attention implementation that takes no additive
            mask (proportional attention needs one).
        """
        tower = self.model.model.vision_tower
        attn = getattr(tower.config, "_attn_implementation", None) or "eager"
        if attn not in ("eager", "sdpa"):
            raise IncompatibleStagesError(
                f"ToMe's proportional attention adds log(size) to the vision tower's attention logits, which the "
                f"{attn!r} implementation cannot take; load the model with attn_implementation='sdpa' or 'eager'"
            )
        # SigLIP and CLIP keep their layers in ``encoder.layers``, DINOv2 in ``encoder.layer``
        layers = next(
            (m for name, m in tower.named_modules() if name.endswith(("encoder.layers", "encoder.layer"))), None
        )
        blocks: list[TowerBlock] = []
        for layer in layers if layers is not None else ():
            attention = getattr(layer, "self_attn", None) or getattr(layer, "attention", None)
            mlp_in = getattr(layer, "layer_norm2", None) or getattr(layer, "norm2", None)
            mlp_out = getattr(layer, "layer_scale2", None) or getattr(layer, "mlp", None)
            if attention is None or mlp_in is None or mlp_out is None or not hasattr(attention, "k_proj"):
                blocks = []
                break
            heads = getattr(attention, "num_heads", None) or attention.config.num_attention_heads
            blocks.append(TowerBlock(layer, attention, attention.k_proj, mlp_in, mlp_out, heads))
        if not blocks:
            raise IncompatibleStagesError(
                f"{type(tower).__name__}'s layers are not SigLIP/CLIP/DINOv2 encoder layers; ToMe runs on those towers"
            )
        return blocks

    def tower_has_cls(self) -> bool:
        """Whether the encoder sequence starts with a CLS token (CLIP, DINOv2), which ToMe never merges."""
        return self.config.vision_config.model_type in ("clip_vision_model", "dinov2")

    def feature_depth(self) -> int:
        """Encoder layers up to the one whose output the projector reads (``vision_feature_layer``).

        Raises
        ------
        IncompatibleStagesError
            Several feature layers (they would hold different merged tokens).
        """
        layer, total = self.config.vision_feature_layer, self.config.vision_config.num_hidden_layers
        if not isinstance(layer, int):
            raise IncompatibleStagesError(
                f"vision_feature_layer={layer!r} reads several encoder layers; ToMe needs one feature layer"
            )
        return _feature_depth(layer, total)

    def project_merged(self, hidden: Tensor) -> Tensor:
        """The feature layer's merged tokens (n, K, Dv), CLS dropped, through the projector without the spatial
        pooling: (n, K, D)."""
        return self.model.model.multi_modal_projector(hidden)

    def encoder_attention(self) -> nn.Module:
        """The vision attention module of the layer whose output the projector receives
        (``config.vision_feature_layer``): VisionZip scores tokens by this layer's attention.

        Raises
        ------
        VidpressError
            Multi-layer or embedding-layer vision features (no single attention layer to score).
        """
        layer = self.config.vision_feature_layer
        tower = self.model.model.vision_tower
        modules = [m for m in tower.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")]
        if not isinstance(layer, int) or layer == 0 or not modules:
            raise VidpressError(
                f"vision_feature_layer={layer!r} has no single attention layer to score; "
                "encoder-attention methods need one integer feature layer"
            )
        return modules[layer if layer < 0 else layer - 1]

    def encoder_signals(
        self, module: Any, args: tuple, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """Attention received (B*F, P) and head-averaged keys (B*F, P, Dk) of ``module``'s call with ``args``/
        ``kwargs`` (see :func:`~vidpress.adapters.encoder_attention.encoder_signals`)."""
        hidden = args[0] if args else kwargs["hidden_states"]
        return encoder_signals(module, hidden, self.encoder_has_cls())

    def encoder_has_cls(self) -> bool:
        """Whether the encoder's first token is a CLS token the projector drops ("default" strategy)."""
        return self.config.vision_feature_select_strategy == "default"

    def pool_encoder_signals(self, received: Tensor, keys: Tensor, batch: int, frames: int) -> tuple[Tensor, Tensor]:
        """Pool encoder attention (B*F, P) and keys (B*F, P, Dk) to the frame grid with the model's own pooling:
        (B, F, T) and (B, F, T, Dk). The CLS column, if any, is dropped first, as the projector drops it."""
        check_signals(received, batch * frames)
        if self.encoder_has_cls():
            received, keys = received[:, 1:], keys[:, 1:]
        pooled = self.pool_patch_grid(torch.cat([received[..., None], keys], dim=-1))
        return pooled[..., 0].reshape(batch, frames, -1), pooled[..., 1:].reshape(batch, frames, pooled.shape[1], -1)

    def unpooled_grid(self, projected: Tensor | None, tokens: VisualTokens) -> tuple[Tensor, Any, int]:
        """The projector's output before pooling, (B*F, h0*w0, D) -> (B, F, h0, w0, D); nothing to project after
        pooling (None); the grid is the patch grid (stride 1)."""
        batch, frames = tokens.features.shape[:2]
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        if projected is None or projected.shape[0] != batch * frames or projected.shape[1] != side * side:
            raise VidpressError(
                "the unpooled grid of this video was not captured; run the model with the method "
                "installed (vidpress.apply) so vidpress sees the vision encoding"
            )
        return projected.view(batch, frames, side, side, -1), None, 1

    def pool_patch_grid(self, x: Tensor) -> Tensor:
        """The model's own per-frame pooling of a patch grid (n, h0*w0, C) -> (n, T, C)."""
        raise NotImplementedError


def _feature_depth(layer: Any, layers: int) -> int:
    """Encoder layers up to the feature layer (hidden states count the embeddings first); 0: all of them."""
    return layer % (layers + 1) if isinstance(layer, int) else 0


def _parameters(module: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(module.forward).parameters)
