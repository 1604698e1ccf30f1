"""The adapter table: one adapter class per supported model family, found by the model's class name, a config's
``model_type`` or the name of its random build; and :func:`spec_from_config`, which asks the family for its
accounting spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UnsupportedModelError
from ..specs import PRESETS, ModelSpec
from .base import Adapter
from .llava_next_video import LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen3_vl import Qwen3VLAdapter, Qwen3VLMoeAdapter

ADAPTERS: tuple[type[Adapter], ...] = (
    LlavaOnevisionAdapter,
    LlavaNextVideoAdapter,
    Qwen2_5_VLAdapter,
    Qwen3VLAdapter,
    Qwen3VLMoeAdapter,
)


def supported_models() -> list[str]:
    """The transformers model class names vidpress has adapters for."""
    return [name for adapter in ADAPTERS for name in adapter.model_class_names]


def adapter_for(model: Any) -> Adapter:
    """The adapter of ``model``'s family, bound to ``model``.

    Raises
    ------
    UnsupportedModelError
        The class is not supported; the message lists the supported classes.
    """
    name = type(model).__name__
    for adapter in ADAPTERS:
        if name in adapter.model_class_names:
            return adapter(model)
    raise UnsupportedModelError(
        f"vidpress has no adapter for {name}; supported model classes: {', '.join(supported_models())}"
    )


def family_of(config: Any) -> type[Adapter]:
    """The adapter class of a config (object or dict) by its ``model_type``; a config of another type with a
    ``text_config``/``vision_config`` pair is read as LLaVA-OneVision-style.

    Raises
    ------
    UnsupportedModelError
        Neither a supported ``model_type`` nor a LLaVA-style config.
    """
    cfg = config if isinstance(config, dict) else config.to_dict()
    for adapter in ADAPTERS:
        if cfg.get("model_type") in adapter.model_types:
            return adapter
    if cfg.get("text_config") and cfg.get("vision_config"):
        return LlavaOnevisionAdapter
    raise UnsupportedModelError(
        f"config of type {cfg.get('model_type')!r} has no text_config/vision_config; the calculator supports "
        f"{', '.join(t for a in ADAPTERS for t in a.model_types)} configs and the presets {', '.join(PRESETS)}"
    )


def random_builds() -> dict[str, type[Adapter]]:
    """``load_model`` names of the families' small random-weight builds."""
    return {adapter.random_name: adapter for adapter in ADAPTERS}


def spec_from_config(
    config: Any, name: str | None = None, dtype_bytes: int = 2, tokens_per_frame: int | None = None
) -> ModelSpec:
    """A :class:`~vidpress.specs.ModelSpec` from a LLaVA-OneVision, LLaVA-NeXT-Video, Qwen2.5-VL or Qwen3-VL config
    object, a config dict, or a ``config.json`` path (LLaVA-NeXT-Video: average pooling by ``spatial_pool_stride``,
    no newline; Qwen2.5-VL / Qwen3-VL: ``tokens_per_frame`` per temporal patch, default 256 = 448 / 512 px frames).

    Raises
    ------
    UnsupportedModelError
        The config lacks a ``text_config``/``vision_config`` pair of a supported layout, or the file is not JSON.
    FileNotFoundError
        No config.json at the path.
    """
    if isinstance(config, (str, Path)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(
                f"no config.json at {path}; pass a preset name ({', '.join(PRESETS)}) or a config path"
            )
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UnsupportedModelError(f"{path} is not valid JSON ({exc}); pass a model's config.json") from None
    cfg = config if isinstance(config, dict) else config.to_dict()
    return family_of(cfg).spec(cfg, name, dtype_bytes, tokens_per_frame)


def resolve_spec(model: str) -> ModelSpec:
    """A preset name or a config path to a :class:`~vidpress.specs.ModelSpec`.

    Raises
    ------
    UnsupportedModelError
        Neither a preset nor an existing path.
    """
    if model in PRESETS:
        return PRESETS[model]
    if Path(model).exists():
        return spec_from_config(model, name=Path(model).stem if Path(model).is_file() else Path(model).name)
    raise UnsupportedModelError(f"unknown model {model!r}: use a preset ({', '.join(PRESETS)}) or a config.json path")
