"""Small random-weight models of each supported family's real architecture, built offline (as transformers'
own tests do), with a byte-level tokenizer built in code. Answers are meaningless; shapes, layouts and costs
are the family's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..processing import OfflineQwen3VideoProcessor, OfflineQwenVideoProcessor, OfflineVideoProcessor

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<video>\n{% elif c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class LoadedModel:
    """A model, its processor, and a plain statement of what its weights are; ``protocol`` is how it was trained
    to be asked multiple-choice questions (``vidpress.evaluate.PROTOCOLS``)."""

    model: Any
    processor: Any
    description: str
    trained: bool
    protocol: str = "direct"


def _processor(
    tokenizer: Any, image_size: int, patch: int, mean: list[float] = IMAGENET_MEAN, std: list[float] = IMAGENET_STD
) -> OfflineVideoProcessor:
    return OfflineVideoProcessor(tokenizer, image_size, patch, mean, std, chat_template=CHAT_TEMPLATE)


def _llava_config(text: dict, vision: dict, tokenizer: Any) -> Any:
    from transformers import LlavaOnevisionConfig

    # DINOv2 has a CLS token to drop ("default"); SigLIP has none ("full").
    strategy: Literal["default", "full"] = "full" if vision["model_type"].startswith("siglip") else "default"
    return LlavaOnevisionConfig(  # type: ignore[call-arg]  # the token-id aliases transformers' stubs do not list
        text_config=text,
        vision_config=vision,
        vision_feature_layer=-1,
        vision_feature_select_strategy=strategy,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
    )


QWEN_TEMPLATE = CHAT_TEMPLATE.replace("<video>\n", "<|vision_start|><|video_pad|><|vision_end|>")


def _qwen2_text(tokenizer: Any, layers: int, hidden: int) -> dict:
    return dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def byte_tokenizer(extra_specials: tuple[str, ...] = ()) -> Any:
    """A byte-level BPE tokenizer with no merges (vocab = 256 bytes + specials), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>", "<video>", *extra_specials]}
    )
    return tok


def random_model(
    layers: int = 4,
    hidden: int = 64,
    image_size: int = 56,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    tower: str = "siglip",
    tower_layers: int | None = None,
) -> LoadedModel:
    """A small random-weight LLaVA-OneVision (Qwen2 LM, 2-layer SigLIP tower; ``tower="dinov2"``: a 3-layer DINOv2
    tower with its CLS token and layer scales, as the default model's; ``tower_layers`` another depth) with a
    byte-level tokenizer.

    ``image_size`` 56 with patch 14 gives a 4x4 patch grid, pooled to 2x2 = 4 tokens per frame; 224 gives 64.
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    tokenizer = byte_tokenizer()
    text = _qwen2_text(tokenizer, layers, hidden)
    names = {"siglip": "SigLIP", "dinov2": "DINOv2"}
    if tower not in names:
        raise ValueError(f"tower must be one of {sorted(names)}, got {tower!r}")
    if tower == "dinov2":
        vision = dict(model_type="dinov2", mlp_ratio=2, num_hidden_layers=tower_layers or 3, layerscale_value=0.5)
    else:
        vision = dict(model_type="siglip_vision_model", intermediate_size=64, num_hidden_layers=tower_layers or 2)
    vision.update(hidden_size=32, num_attention_heads=2, image_size=image_size, patch_size=14)
    torch.manual_seed(seed)
    config = _llava_config(text, vision, tokenizer)
    config._attn_implementation = attn_implementation
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    mean, std = ([0.5] * 3, [0.5] * 3) if tower == "siglip" else (IMAGENET_MEAN, IMAGENET_STD)
    return LoadedModel(
        model,
        _processor(tokenizer, image_size, 14, mean, std),
        f"random-weight LLaVA-OneVision ({layers}-layer Qwen2 LM, hidden {hidden}; {names[tower]} tower)",
        trained=False,
    )


def random_llava_next_video(
    layers: int = 4,
    hidden: int = 64,
    image_size: int = 56,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    tower_layers: int = 2,
) -> LoadedModel:
    """A small random-weight ``LlavaNextVideoForConditionalGeneration`` (LongVA's layout: ``tower_layers``-layer CLIP
    tower, penultimate layer without CLS, 2x2 average pooling before the projector, no newline; Qwen2 LM),
    byte-level tokenizer.

    ``image_size`` 56 with patch 14 gives 4x4 patches, pooled to 2x2 = 4 tokens per frame; 336 gives LongVA's 144.
    """
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    tokenizer = byte_tokenizer()
    text = _qwen2_text(tokenizer, layers, hidden)
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=tower_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=14,
        projection_dim=32,
    )
    torch.manual_seed(seed)
    config = LlavaNextVideoConfig(
        text_config=text,
        vision_config=vision,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        spatial_pool_mode="average",
        spatial_pool_stride=2,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
    )
    config._attn_implementation = attn_implementation
    model = LlavaNextVideoForConditionalGeneration(config).eval()
    processor = OfflineVideoProcessor(
        tokenizer, image_size, 14, [0.5] * 3, [0.5] * 3, chat_template=CHAT_TEMPLATE, layout="llava_next_video"
    )
    return LoadedModel(
        model,
        processor,
        f"random-weight LLaVA-NeXT-Video / LongVA layout ({layers}-layer Qwen2 LM, "
        f"hidden {hidden}; CLIP tower) - answers are not meaningful",
        trained=False,
    )


def _qwen_tokenizer() -> tuple[Any, dict[str, Any]]:
    """The byte-level tokenizer with Qwen's vision specials, and their ids as the configs name them."""
    specials = ("<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>")
    tokenizer = byte_tokenizer(specials)
    names = ("vision_start_token_id", "vision_end_token_id", "video_token_id", "image_token_id")
    return tokenizer, dict(zip(names, tokenizer.convert_tokens_to_ids(list(specials))))


def random_qwen2_5_vl(
    layers: int = 4, hidden: int = 64, image_size: int = 56, seed: int = 0, attn_implementation: str = "sdpa"
) -> LoadedModel:
    """A small random-weight ``Qwen2_5_VLForConditionalGeneration``: windowed ViT with a full-attention last block,
    2x2 patch merger, 2-frame temporal patches, M-RoPE (mrope_section scaled to the head size).

    ``image_size`` 56 gives 4x4 patches merged to 2x2 = 4 tokens per temporal patch (two frames).
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer, ids = _qwen_tokenizer()
    head_dim = hidden // 4
    text = dict(
        _qwen2_text(tokenizer, layers, hidden),
        model_type="qwen2_5_vl_text",
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1e6,
            "mrope_section": [
                head_dim // 8,
                head_dim // 8 * 3 // 2,
                head_dim // 2 - head_dim // 8 - head_dim // 8 * 3 // 2,
            ],
        },
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        out_hidden_size=hidden,
        fullatt_block_indexes=[1],
        tokens_per_second=2,
    )
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    config._attn_implementation = attn_implementation
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = OfflineQwenVideoProcessor(tokenizer, image_size, chat_template=QWEN_TEMPLATE)
    return LoadedModel(
        model,
        processor,
        f"random-weight Qwen2.5-VL ({layers}-layer LM, hidden {hidden}; windowed ViT, "
        "M-RoPE) - answers are not meaningful",
        trained=False,
    )


def random_qwen3_vl(
    layers: int = 4,
    hidden: int = 64,
    image_size: int = 64,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    moe: bool = False,
) -> LoadedModel:
    """A small random-weight ``Qwen3VLForConditionalGeneration`` (``moe``: ``Qwen3VLMoeForConditionalGeneration``,
    4 experts, 2 active): 3-layer ViT (patch 16, learned position grid, 2D RoPE) whose every layer feeds DeepStack
    (``deepstack_visual_indexes`` [0, 1, 2]: features added to the LLM's first 3 layers), 2x2 merger, 2-frame
    temporal patches, Qwen3 LM (query/key norms) with interleaved M-RoPE, timestamps in the prompt.

    ``image_size`` 64 gives 4x4 patches merged to 2x2 = 4 tokens per temporal patch (two frames).
    """
    from transformers import (
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
    )

    tokenizer, ids = _qwen_tokenizer()
    head_dim = hidden // 4
    half = head_dim // 2  # interleaved M-RoPE: sections of t, h, w frequencies summing to head_dim / 2
    text = dict(
        _qwen2_text(tokenizer, layers, hidden),
        model_type="qwen3_vl_moe_text" if moe else "qwen3_vl_text",
        head_dim=head_dim,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5e5,
            "mrope_section": [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16],
            "mrope_interleaved": True,
        },
    )
    if moe:
        # the published config's routing: top-k of the softmax, renormalised (vLLM reads norm_topk_prob)
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden, decoder_sparse_step=1)
        text.update(norm_topk_prob=True)
    vision = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=hidden,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1, 2],
    )
    torch.manual_seed(seed)
    config: Any
    if moe:
        config = Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        config._attn_implementation = attn_implementation
        model: Any = Qwen3VLMoeForConditionalGeneration(config).eval()
    else:
        config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        config._attn_implementation = attn_implementation
        model = Qwen3VLForConditionalGeneration(config).eval()
    processor = OfflineQwen3VideoProcessor(tokenizer, image_size, chat_template=QWEN_TEMPLATE)
    kind = "Qwen3-VL-MoE" if moe else "Qwen3-VL"
    lm = "MoE LM, 4 experts, 2 active" if moe else "LM"
    return LoadedModel(
        model,
        processor,
        f"random-weight {kind} ({layers}-layer {lm}, hidden {hidden}; ViT with DeepStack, interleaved M-RoPE, "
        "timestamps) - answers are not meaningful",
        trained=False,
    )


def full_size_config(preset: str) -> Any:
    """(config, tokenizer) of a LLaVA-OneVision preset's real architecture (``llava-ov-0.5b``, ``-7b``, ``-72b``:
    Qwen2 LLM of the preset's sizes, 152,064-token vocabulary, SigLIP-so400m at 384 px with its last layer
    removed) and the byte-level tokenizer, for random-weight cost measurements.

    Raises
    ------
    UnsupportedModelError
        ``preset`` is not a LLaVA-OneVision preset.
    """
    from ..errors import UnsupportedModelError
    from ..specs import PRESETS

    if preset not in PRESETS or not preset.startswith("llava-ov"):
        choices = ", ".join(p for p in PRESETS if p.startswith("llava-ov"))
        raise UnsupportedModelError(f"no full-size random build for {preset!r}; choose one of {choices}")
    llm, tokenizer = PRESETS[preset].llm, byte_tokenizer()
    text = dict(
        model_type="qwen2",
        vocab_size=152064,
        hidden_size=llm.hidden,
        intermediate_size=llm.intermediate,
        num_hidden_layers=llm.layers,
        num_attention_heads=llm.heads,
        num_key_value_heads=llm.kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=llm.hidden < 1024,
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=26,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
    )
    return _llava_config(text, vision, tokenizer), tokenizer


def random_full_size(
    preset: str = "llava-ov-7b", dtype: torch.dtype = torch.bfloat16, device: str | None = None, seed: int = 0
) -> LoadedModel:
    """A random-weight model with a preset's real dimensions, built directly on ``device`` (default: CUDA when
    available) in ``dtype``, SDPA attention: speed and memory at full size without the checkpoint.

    LLaVA-OneVision-7B in bf16 takes about 16 GB; build it on a GPU.
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    config, tokenizer = full_size_config(preset)
    config._attn_implementation = "sdpa"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaOnevisionForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    processor = _processor(tokenizer, 384, 14, [0.5] * 3, [0.5] * 3)
    return LoadedModel(
        model,
        processor,
        f"random-weight {preset} (real architecture, {str(dtype).split('.')[-1]}, "
        f"{device}) - answers are not meaningful",
        trained=False,
    )
