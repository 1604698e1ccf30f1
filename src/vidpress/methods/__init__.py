"""The method registry: an explicit name -> class map (greppable; no decorator registries)."""

from __future__ import annotations

from typing import Any

from ..errors import UnknownMethodError
from ..method import Method, Stages
from .dycoke import DyCoke
from .fastv import FastV, PyramidDrop
from .fastvid import FastVID
from .metok import METok
from .uniform import RandomTokens, UniformFrames, UniformSpatial
from .visionzip import VisionZip

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (DyCoke, METok, FastV, PyramidDrop, VisionZip, FastVID, UniformFrames, UniformSpatial, RandomTokens)
}


def get_method(name: str, **params: Any) -> Method | Stages:
    """Build a method by name (``"none"`` gives the uncompressed model) with ``params`` as hyperparameters."""
    if name in ("none", "uncompressed"):
        if params:
            raise UnknownMethodError(f"the uncompressed model takes no parameters, got {sorted(params)}")
        return Stages()
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of: none, {', '.join(METHODS)}")
    return METHODS[name].from_dict(params)


__all__ = [
    "METHODS",
    "DyCoke",
    "FastV",
    "FastVID",
    "METok",
    "PyramidDrop",
    "RandomTokens",
    "UniformFrames",
    "UniformSpatial",
    "VisionZip",
    "get_method",
]
