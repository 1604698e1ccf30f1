"""Parameter validation shared by stages and methods (clear ValueError subclasses, never assert)."""

from __future__ import annotations

from typing import Any

from .errors import InvalidParameterError


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
