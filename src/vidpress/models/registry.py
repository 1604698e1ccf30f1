"""The adapter table: one adapter per supported model family, found by the model's class name."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError
from .base import Adapter
from .llava_next_video import LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter

ADAPTERS: tuple[Adapter, ...] = (LlavaOnevisionAdapter(), LlavaNextVideoAdapter(), Qwen2_5_VLAdapter())


def supported_models() -> list[str]:
    """The transformers model class names vidpress has adapters for."""
    return [name for adapter in ADAPTERS for name in adapter.model_class_names]


def adapter_for(model: Any) -> Adapter:
    """The adapter for ``model``'s class.

    Raises
    ------
    UnsupportedModelError
        The class is not supported; the message lists the supported classes.
    """
    name = type(model).__name__
    for adapter in ADAPTERS:
        if name in adapter.model_class_names:
            return adapter
    raise UnsupportedModelError(
        f"vidpress has no adapter for {name}; supported model classes: {', '.join(supported_models())}"
    )
