"""The adapter protocol and the registry of supported model classes.

An adapter knows one model family's layout (where the LLM and its layers are, how the video is encoded,
how rotary embeddings apply); the runtime does all surgery through it, so methods never import a
transformers model class.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from torch import Tensor, nn

from ..tokens import VisualTokens


class Adapter(Protocol):
    """What the runtime needs from a model family."""

    model_class_names: tuple[str, ...]

    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder stack (``LlamaModel``/``Qwen2Model``) whose forward runs the LLM."""

    def decoder_layers(self, model: nn.Module) -> Sequence[nn.Module]:
        """The LLM's decoder layers, in order; each has a ``self_attn`` module."""

    def video_token_id(self, model: nn.Module) -> int:
        """The placeholder id marking visual-token positions in ``input_ids``."""

    def encode_video(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[VisualTokens, Tensor]:
        """Run the vision tower, projector and pooling: (per-frame tokens, extra tokens (B, E, D))."""

    def query_states(self, attention: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotary-embedded queries (B, H, R, head_dim) of ``hidden`` (B, R, D) for one attention module."""

    def key_states(self, attention: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotary-embedded keys (B, H_kv, n, head_dim) of ``hidden`` (B, n, D), as the layer would cache them."""

    def attention_input(self, layer: nn.Module, hidden: Tensor) -> tuple[nn.Module, Tensor]:
        """A decoder layer's attention module and what it receives from the layer input ``hidden`` (its norm)."""

    def restore_inputs(self, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]) -> None:
        """Put back, from the vision tower's last call, inputs ``generate`` consumed before the forward."""

    def prefill_positions(
        self, model: nn.Module, kwargs: dict[str, Any], input_ids: Tensor, mask: Tensor | None
    ) -> Tensor | None:
        """Position ids of the full prompt, sequence last ((B, S), or (R, B, S) for M-RoPE); None lets the runtime
        derive 1-D ids from the mask as ``generate`` does."""

    def unpooled_capture(self, model: nn.Module) -> tuple[nn.Module, str] | None:
        """(module, "input" | "output") the runtime captures for :meth:`unpooled_grid` (METok stage 1); None when
        nothing needs capturing."""

    def unpooled_grid(self, model: nn.Module, captured: Tensor | None, tokens: VisualTokens) -> tuple[Tensor, Any, int]:
        """The grid before the model's pooling (B, F, h0, w0, D'), the projector to apply after pooling it (None
        when the grid is already projected) and how far the grid is already pooled from the patch grid."""

    def encoder_signals(
        self, model: nn.Module, module: nn.Module, args: tuple, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """Attention received and head-averaged keys from one call of :meth:`encoder_attention`'s module."""

    def encoder_attention(self, model: nn.Module) -> nn.Module:
        """The vision attention module whose attention VisionZip / FastVID score."""

    def encoder_has_cls(self, model: nn.Module) -> bool:
        """Whether the encoder sequence starts with a CLS token the projector drops."""

    def pool_encoder_signals(
        self, model: nn.Module, received: Tensor, keys: Tensor, batch: int, frames: int
    ) -> tuple[Tensor, Tensor]:
        """Encoder attention (B*F, P) and keys (B*F, P, Dk) pooled like the features: (B, F, T), (B, F, T, Dk)."""
