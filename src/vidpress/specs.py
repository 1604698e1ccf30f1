"""Model sizes for the accounting: LLM and vision-tower dimensions and the presets of real checkpoints. A config's
spec comes from its family's adapter (:func:`vidpress.adapters.registry.spec_from_config`); the formulas and
the per-request :class:`~vidpress.accounting.Accounting` live in :mod:`vidpress.accounting`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LLMDims:
    """LLM sizes: hidden ``d``, MLP ``m``, layers, attention heads, KV heads, head size; for a mixture of experts
    ``m`` is the active experts' width summed and ``router`` the number of experts the router scores (0: dense)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    router: int = 0


@dataclass(frozen=True)
class VisionDims:
    """Vision tower sizes; ``tokens`` is the encoder sequence per frame (patches plus any CLS).

    ``window_tokens`` > 0: all but ``full_layers`` layers attend within windows of that many tokens
    (Qwen2.5-VL); ``temporal_patch`` frames share one patch embedding (Qwen: 2). ``feature_depth``: the layers up
    to the one whose output the projector reads (0: all), the layers a merging vision stage (ToMe) merges in.
    """

    hidden: int
    intermediate: int
    layers: int
    tokens: int
    patch_size: int
    channels: int = 3
    window_tokens: int = 0
    full_layers: int = 0
    temporal_patch: int = 1
    feature_depth: int = 0

    @property
    def used_layers(self) -> int:
        return self.feature_depth or self.layers


@dataclass(frozen=True)
class ModelSpec:
    """Everything the calculator needs about a video LLM.

    Attributes
    ----------
    tokens_per_frame : int
        Visual tokens per frame entering the LLM (after projector and pooling), e.g. 196 for LLaVA-OV.
    grid : tuple[int, int]
        (h, w) layout of those tokens.
    patches : int
        Encoder patch tokens per frame that go through the projector (CLS excluded).
    merge : int
        Qwen's patch merger side (2): the projector maps ``merge**2`` patches to one token. 1: a per-patch MLP.
    extra_visual : int
        Tokens appended to the video block (LLaVA-OV's single newline); never pruned, so accounted as
        non-visual tokens.
    dtype_bytes : int
        Bytes per KV element (2 for fp16/bf16).
    deepstack : int
        DeepStack levels (Qwen3-VL): extra mergers of that many tower layers' outputs, added to the visual tokens'
        hidden states after the LLM's first ``deepstack`` layers.
    text_per_frame : int
        Text tokens the prompt layout puts around each frame of tokens (Qwen3-VL: ``<t seconds>``, vision start
        and end: 8 in Qwen's tokenizer, which splits digits, for times under 10 s, 9 under 100 s), less the
        template's own start and end, counted once.
    """

    name: str
    llm: LLMDims
    vision: VisionDims
    tokens_per_frame: int
    grid: tuple[int, int]
    patches: int
    extra_visual: int = 1
    dtype_bytes: int = 2
    merge: int = 1
    deepstack: int = 0
    text_per_frame: int = 0


def _siglip(layers: int = 26) -> VisionDims:
    # SigLIP-so400m-patch14-384 with LLaVA's last layer removed: 27x27 patches, no CLS.
    return VisionDims(hidden=1152, intermediate=4304, layers=layers, tokens=729, patch_size=14)


def _qwen3(name: str, llm: LLMDims) -> ModelSpec:
    # Qwen3-VL's 27-layer ViT (hidden 1152, MLP 4304, patch 16, no windows) at 512 px: 1,024 patches per temporal
    # patch (2 frames) merged 2x2 to 256 tokens; DeepStack from ViT layers 8, 16, 24 into LLM layers 0-2; 8 text
    # tokens of time and vision start/end per temporal patch.
    vision = VisionDims(1152, 4304, 27, 1024, 16, temporal_patch=2)
    return ModelSpec(name, llm, vision, 256, (16, 16), 1024, extra_visual=0, merge=2, deepstack=3, text_per_frame=8)


PRESETS: dict[str, ModelSpec] = {
    "llava-ov-0.5b": ModelSpec("llava-ov-0.5b", LLMDims(896, 4864, 24, 14, 2, 64), _siglip(), 196, (14, 14), 729),
    "llava-ov-7b": ModelSpec("llava-ov-7b", LLMDims(3584, 18944, 28, 28, 4, 128), _siglip(), 196, (14, 14), 729),
    "llava-ov-72b": ModelSpec("llava-ov-72b", LLMDims(8192, 29568, 80, 64, 8, 128), _siglip(), 196, (14, 14), 729),
    # LLaVA-Video-7B-Qwen2 as transformers loads it (LlavaOnevisionForConditionalGeneration): the LLaVA-OV-7B
    # layout, one newline after the video. The original code puts a newline after every grid row instead
    # ("grid"); no transformers class reproduces that, so this preset counts the layout vidpress runs.
    "llava-video-7b": ModelSpec("llava-video-7b", LLMDims(3584, 18944, 28, 28, 4, 128), _siglip(), 196, (14, 14), 729),
    # Qwen2.5-VL-7B at 448x448 frames: 32x32 patches per temporal patch (2 frames), merged 2x2 -> 256 tokens;
    # 32-layer ViT (hidden 1280, MLP 3420), 112 px windows (64 patches) except 4 full-attention blocks.
    "qwen2.5-vl-7b": ModelSpec(
        "qwen2.5-vl-7b",
        LLMDims(3584, 18944, 28, 28, 4, 128),
        VisionDims(1280, 3420, 32, 1024, 14, window_tokens=64, full_layers=4, temporal_patch=2),
        256,
        (16, 16),
        1024,
        extra_visual=0,
        merge=2,
    ),
    # Qwen3-VL (see _qwen3), LLMs from the published configs: Qwen3-VL-8B is Qwen3-8B's (36 layers, 8 KV heads);
    # Qwen3-VL-30B-A3B a 48-layer MoE, 128 experts of MLP width 768, 8 active per token.
    "qwen3-vl-8b": _qwen3("qwen3-vl-8b", LLMDims(4096, 12288, 36, 32, 8, 128)),
    "qwen3-vl-30b-a3b": _qwen3("qwen3-vl-30b-a3b", LLMDims(2048, 8 * 768, 48, 32, 4, 128, router=128)),
    # LongVA-7B: Qwen2-7B-224K LLM, CLIP-L/336 (24x24 patches + CLS, full tower run), 2x2 pooling -> 144/frame.
    # LongVA's video layout has no newline token [RECON: UniRes without newline for video].
    "longva-7b": ModelSpec(
        "longva-7b",
        LLMDims(3584, 18944, 28, 28, 4, 128),
        VisionDims(1024, 4096, 24, 577, 14, feature_depth=23),
        144,
        (12, 12),
        576,
        extra_visual=0,
    ),
}
