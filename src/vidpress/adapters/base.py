"""The adapter base class: one model family, bound to one loaded model.

An adapter knows its family's layout (where the LLM and its layers are, how the video is encoded, how rotary
embeddings apply); the runtime does all surgery through it, so stages never import a transformers model class.
It also carries what the family needs without a model: its accounting spec from a config
(:meth:`Adapter.spec`), its torchvision-free processor (:meth:`Adapter.offline_processor`) and its small
random-weight build (:meth:`Adapter.build_random`). The registry (:mod:`vidpress.adapters.registry`) lists the
families.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from torch import Tensor, nn

from ..errors import IncompatibleStagesError
from ..specs import LLMDims, ModelSpec
from ..stages import lay_back
from ..tokens import VisualTokens

if TYPE_CHECKING:
    from ..models.random import LoadedModel
    from ..processing import OfflineVideoProcessor


@dataclass(frozen=True)
class TowerBlock:
    """The modules of one vision encoder layer that ToMe's hooks act on (SigLIP, CLIP, DINOv2 alike): the layer,
    its attention (takes ``attention_mask``), the keys projection, the MLP branch's input norm and its last module
    (the MLP, or DINOv2's layer scale), and the attention heads."""

    layer: nn.Module
    attention: nn.Module
    keys: nn.Module
    mlp_in: nn.Module
    mlp_out: nn.Module
    heads: int


class Adapter:
    """What the runtime needs from a model family, for one loaded ``model``.

    Subclasses set ``model_class_names`` (the transformers classes), ``model_types`` (their config
    ``model_type`` values) and ``random_name`` (the ``load_model`` name of the random build), and implement the
    methods that raise here. The defaults below are the transformers decoder layout every supported family shares
    (``model.model.language_model`` with Llama/Qwen2-style attention).
    """

    model_class_names: ClassVar[tuple[str, ...]]
    model_types: ClassVar[tuple[str, ...]]
    random_name: ClassVar[str]

    def __init__(self, model: nn.Module):
        # a transformers model: each family reaches its own submodules and config fields by name
        self.model: Any = model
        self.config: Any = model.config

    # -- the family without a model ----------------------------------------------------------------------------

    @classmethod
    def spec(
        cls, config: dict[str, Any], name: str | None, dtype_bytes: int, tokens_per_frame: int | None
    ) -> ModelSpec:
        """The accounting :class:`~vidpress.specs.ModelSpec` of a config dict of this family."""
        raise NotImplementedError

    @classmethod
    def offline_processor(
        cls, tokenizer: Any, config: Any, preprocessor: dict[str, Any], chat_template: str | None
    ) -> OfflineVideoProcessor:
        """The torchvision-free processor for a checkpoint of this family, from its tokenizer, model config,
        preprocessor settings (``image_mean``/``image_std``) and chat template."""
        raise NotImplementedError

    @classmethod
    def build_random(cls, layers: int = 4, hidden: int = 128, image_size: int | None = None) -> LoadedModel:
        """A small random-weight model of this family's real architecture, with its processor."""
        raise NotImplementedError

    @staticmethod
    def llm_dims(text: dict[str, Any]) -> LLMDims:
        """LLM sizes from a text config dict."""
        heads = text["num_attention_heads"]
        return LLMDims(
            text["hidden_size"],
            text["intermediate_size"],
            text["num_hidden_layers"],
            heads,
            text.get("num_key_value_heads") or heads,
            text.get("head_dim") or text["hidden_size"] // heads,
        )

    # -- the LLM -----------------------------------------------------------------------------------------------

    def language_model(self) -> Any:
        """The decoder stack (``LlamaModel``/``Qwen2Model``) whose forward runs the LLM."""
        return self.model.model.language_model

    def decoder_layers(self) -> Sequence[Any]:
        """The LLM's decoder layers, in order; each has a ``self_attn`` module."""
        return self.language_model().layers

    def video_token_id(self) -> int:
        """The placeholder id marking visual-token positions in ``input_ids``."""
        return self.config.video_token_id

    def query_states(self, attention: Any, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotary-embedded queries (B, H, R, head_dim) of ``hidden`` (B, R, D) for one attention module."""
        return self._projected_states(attention, hidden, cos, sin, "q")

    def key_states(self, attention: Any, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotary-embedded keys (B, H_kv, n, head_dim) of ``hidden`` (B, n, D), as the layer would cache them."""
        return self._projected_states(attention, hidden, cos, sin, "k")

    def attention_input(self, layer: Any, hidden: Tensor) -> tuple[Any, Tensor]:
        """A decoder layer's attention module and what it receives from the layer input ``hidden`` (its norm)."""
        return layer.self_attn, layer.input_layernorm(hidden)

    @staticmethod
    def _projected_states(attention: Any, hidden: Tensor, cos: Tensor, sin: Tensor, which: str) -> Tensor:
        shape = (*hidden.shape[:-1], -1, attention.head_dim)
        states = getattr(attention, f"{which}_proj")(hidden).view(shape).transpose(1, 2)
        norm = getattr(attention, f"{which}_norm", None)
        if norm is not None:  # Qwen3-style query/key norm
            states = norm(states)
        rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb
        return rotary(states, states, cos, sin)[0]

    #: Whether the LLM's positions are M-RoPE (t, h, w) ids, which a stage renumbering the prompt contiguously
    #: (the 1-D references' ``faithful`` behaviour) would destroy.
    mrope = False

    def deepstack_levels(self) -> int:
        """How many of the LLM's first layers add DeepStack features (``VisualTokens.deepstack``) to the visual
        tokens' hidden states after them (Qwen3-VL); 0 for families without DeepStack."""
        return 0

    def prefill_positions(self, kwargs: dict[str, Any], input_ids: Tensor, mask: Tensor | None) -> Tensor | None:
        """Position ids of the full prompt, sequence last ((B, S), or (R, B, S) for M-RoPE); None lets the runtime
        derive 1-D ids from the mask as ``generate`` does. Default: the caller's 1-D ids, if any."""
        return kwargs.get("position_ids")

    # -- the video ---------------------------------------------------------------------------------------------

    def has_video(self, inputs: dict[str, Any]) -> bool:
        """Whether a forward's inputs carry a video (pixels, or an encoding ``generate`` made first)."""
        return inputs.get("pixel_values_videos") is not None or bool(
            (inputs.get("mm_encoder_outputs") or {}).get("video")
        )

    def vision_modules(self) -> tuple[nn.Module, ...]:
        """Modules whose forward time is the vision-encoding time (tower, resampler, projector)."""
        raise NotImplementedError

    def video_outputs(self, inputs: dict[str, Any]) -> Any:
        """transformers' video-encoder output for this request, consuming the video inputs from ``inputs``:
        ``generate`` pre-encodes the video into ``mm_encoder_outputs["video"]``; a direct call passes pixel values,
        which :meth:`run_video_encoder` encodes."""
        encoded = dict(inputs.get("mm_encoder_outputs") or {})
        out = encoded.pop("video", None)
        if out is None:
            out = self.run_video_encoder(inputs)
        inputs.update(pixel_values_videos=None, mm_encoder_outputs=encoded or None)
        if "image_sizes_videos" in inputs:
            inputs["image_sizes_videos"] = None
        return out

    def run_video_encoder(self, inputs: dict[str, Any]) -> Any:
        """transformers' own ``get_video_features`` on the request's video inputs."""
        raise NotImplementedError

    # -- frames the tower skips (VisionStage / PreLLMStage.encoded_frames) --------------------------------------

    def video_encoder(self) -> tuple[Any, str]:
        """(object, method name) of the video encoder entry point that ``generate`` and ``forward`` both call
        (transformers' ``get_video_features``): the runtime wraps it to encode only the frames a plan can use."""
        return self.model.model, "get_video_features"

    def grid(self) -> tuple[int, int]:
        """(h, w) visual tokens per frame as the LLM sees them, at the model's own frame resolution.

        Raises
        ------
        NotImplementedError
            A family whose grid follows each video's resolution (Qwen2.5-VL: :meth:`frame_grid` reads it from the
            encoder's arguments).
        """
        raise NotImplementedError(f"{type(self).__name__}'s frame grid follows each video; see frame_grid")

    def frame_grid(self, arguments: dict[str, Any]) -> tuple[int, int]:
        """(frames as the LLM sees them, tokens per frame) of the video encoder's ``arguments``."""
        pixels = arguments["pixel_values_videos"]
        side = self.grid()
        return pixels.shape[1], side[0] * side[1]

    def select_frames(self, arguments: dict[str, Any], keep: list[int]) -> dict[str, Any]:
        """The video encoder's ``arguments`` restricted to the frames ``keep`` (pixels (B, F, C, H, W))."""
        pixels = arguments["pixel_values_videos"]
        return {**arguments, "pixel_values_videos": pixels[:, keep]}

    def expand_frames(self, output: Any, keep: list[int], frames: int, per_frame: int) -> Any:
        """The encoder's ``output`` for the frames ``keep`` laid back on all ``frames``: ``pooler_output`` (B,
        F'*T + E, D) becomes (B, F*T + E, D), zeros where a frame was not encoded, the model's extra tokens last."""
        output.pooler_output = lay_back(output.pooler_output, keep, frames, per_frame)
        return output

    def encode_video(self, inputs: dict[str, Any]) -> tuple[VisualTokens, Tensor]:
        """Run the vision tower, projector and pooling: (per-frame tokens, extra tokens (B, E, D))."""
        raise NotImplementedError

    # -- encoding at other resolutions (the vision slot's coarse-to-fine) -----------------------------------------

    #: Whether :meth:`encode_at` and :meth:`unencoded_output` exist for this family.
    encodes_at_any_resolution = False

    def patch_side(self) -> int:
        """Patches per side of a frame at the tower's own resolution."""
        vision = self.config.vision_config
        return vision.image_size // vision.patch_size

    def encode_at(self, pixels: Tensor, side: int) -> Tensor:
        """Frames (n, C, H, W) resized to ``side`` x ``side`` patches and encoded as the model encodes a frame
        (tower, feature layer, projector, pooling): (n, T', D) tokens on the pooled grid of that many patches.

        Raises
        ------
        IncompatibleStagesError
            The family cannot encode at another resolution.
        """
        raise IncompatibleStagesError(
            f"{type(self).__name__} does not encode frames at other resolutions; coarse-to-fine vision stages run "
            "on LLaVA-OneVision"
        )

    def unencoded_output(self, arguments: dict[str, Any]) -> Any:
        """The video encoder's output for ``arguments`` with no frame encoded: zeros on every frame, the model's
        extra tokens last (what the vision slot returns when it defers the encoding to the request)."""
        raise IncompatibleStagesError(f"{type(self).__name__} cannot defer its video encoding")

    # -- merging inside the tower (ToMe) ------------------------------------------------------------------------

    def tower_blocks(self) -> list[TowerBlock]:
        """The vision encoder layers' modules ToMe's hooks act on.

        Raises
        ------
        IncompatibleStagesError
            The family's tower is not a SigLIP/CLIP/DINOv2 encoder (this default, and the methods below).
        """
        raise self._no_tower_merging()

    def tower_has_cls(self) -> bool:
        """Whether the encoder sequence starts with a CLS token, which ToMe never merges."""
        raise self._no_tower_merging()

    def feature_depth(self) -> int:
        """Encoder layers up to the one whose output the projector reads."""
        raise self._no_tower_merging()

    def tower_features(self, pixels: Tensor) -> Tensor:
        """Frames (n, C, H, W) through the tower: the feature layer's hidden states (n, tokens, Dv), CLS included."""
        raise self._no_tower_merging()

    def project_merged(self, hidden: Tensor) -> Tensor:
        """The feature layer's merged tokens (n, K, Dv), CLS dropped, through the projector without the model's
        spatial pooling: (n, K, D)."""
        raise self._no_tower_merging()

    def _no_tower_merging(self) -> IncompatibleStagesError:
        return IncompatibleStagesError(
            f"{type(self).__name__}'s vision tower is not a SigLIP/CLIP/DINOv2 encoder; ToMe in the tower runs on "
            "LLaVA-OneVision and LLaVA-NeXT-Video"
        )

    def restore_inputs(self, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]) -> None:
        """Put back, from the vision tower's last call, inputs ``generate`` consumed before the forward (nothing by
        default)."""

    def unpooled_capture(self) -> tuple[nn.Module, str] | None:
        """(module, "input" | "output") the runtime captures for :meth:`unpooled_grid` (METok stage 1); None when
        nothing needs capturing."""
        raise NotImplementedError

    def unpooled_grid(self, captured: Tensor | None, tokens: VisualTokens) -> tuple[Tensor, Any, int]:
        """The grid before the model's pooling (B, F, h0, w0, D'), the projector to apply after pooling it (None
        when the grid is already projected) and how far the grid is already pooled from the patch grid."""
        raise NotImplementedError

    # -- the vision encoder's attention (VisionZip, FastVID) ---------------------------------------------------

    def encoder_attention(self) -> nn.Module:
        """The vision attention module whose attention VisionZip / FastVID score."""
        raise NotImplementedError

    def encoder_has_cls(self) -> bool:
        """Whether the encoder sequence starts with a CLS token the projector drops."""
        return False

    def encoder_signals(
        self, module: Any, args: tuple, kwargs: dict[str, Any], vision_kwargs: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """Attention received and head-averaged keys from one call of :meth:`encoder_attention`'s module."""
        raise NotImplementedError

    def pool_encoder_signals(self, received: Tensor, keys: Tensor, batch: int, frames: int) -> tuple[Tensor, Tensor]:
        """Encoder attention (B*F, P) and keys (B*F, P, Dk) pooled like the features: (B, F, T), (B, F, T, Dk)."""
        raise NotImplementedError
