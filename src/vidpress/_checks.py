"""Parameter validation shared by stages and methods (clear ValueError subclasses, never assert)."""

from __future__ import annotations

from typing import Any

from .errors import InvalidParameterError, PromptTooLongError


def check_ratio(name: str, value: float, *, symbol: str = "") -> None:
    """Raise InvalidParameterError unless 0 <= value <= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        sym = f" ({symbol})" if symbol else ""
        raise InvalidParameterError(f"{name}{sym} must be a ratio in [0, 1], got {value!r}; pick a value such as 0.7")


def check_mode(value: Any) -> None:
    if value not in ("faithful", "fixed"):
        raise InvalidParameterError(f"mode must be 'faithful' or 'fixed', got {value!r}")


def check_layer(name: str, value: int, *, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_context(model: Any, prompt_tokens: int, new_tokens: int = 0) -> None:
    """Raise PromptTooLongError when ``prompt_tokens + new_tokens`` exceed the LLM's position range
    (``text_config.max_position_embeddings``)."""
    config = getattr(model.config, "text_config", model.config)
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and prompt_tokens + new_tokens > limit:
        generated = f" + {new_tokens} to generate" if new_tokens else ""
        raise PromptTooLongError(
            f"the prompt is {prompt_tokens} tokens (text and visual placeholders){generated}, past "
            f"the model's {limit} positions; shorten the question or sample fewer frames"
        )
