"""The method registry: an explicit name -> class map (greppable; no decorator registries). Methods that
combine stages (DyCoke, METok) are :class:`Method` classes here; single-stage methods (VisionZip, FastVID,
FastV, PyramidDrop, the controls) are their stage classes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UnknownMethodError
from ..method import Method
from ..stages import Stage, Stages
from ..stages import compose as compose_stages

if TYPE_CHECKING:
    from ..runtime.install import Run
from ..stages.pre_llm.cdpruner import CDPruner
from ..stages.pre_llm.fastvid import FastVID
from ..stages.pre_llm.uniform import RandomTokens, UniformFrames, UniformSpatial
from ..stages.pre_llm.vidcom2 import VidCom2
from ..stages.pre_llm.visionzip import VisionZip
from ..stages.prefill.peers import FastV, PyramidDrop
from .dycoke import DyCoke
from .holitom import HoliTom
from .metok import METok
from .tome import ToMe

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        DyCoke,
        METok,
        ToMe,
        FastV,
        PyramidDrop,
        VisionZip,
        FastVID,
        VidCom2,
        CDPruner,
        HoliTom,
        UniformFrames,
        UniformSpatial,
        RandomTokens,
    )
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


def apply(model: Any, method: Method | Stages | Stage | str, **params: Any) -> Run:
    """Install ``method`` on ``model`` and return the :class:`~vidpress.runtime.install.Run` handle.

    Use as a context manager (``with vidpress.apply(model, DyCoke()):``) or keep it and call
    ``run.remove()``. ``method`` may be a name from ``vidpress.METHODS`` with ``params`` as hyperparameters, a
    composition, or a bare stage (``TemporalMerge(k=0.7)``).

    Raises
    ------
    UnsupportedModelError
        The model class has no adapter; the message lists the supported classes.
    UnknownMethodError
        An unknown method name or parameter.
    """
    from ..runtime.install import install

    if isinstance(method, str):
        method = get_method(method, **params)
    elif params:
        raise TypeError("hyperparameters go into the method object when a Method or Stages is given")
    if isinstance(method, Method):
        return install(model, method.build(), name=method.label)
    if isinstance(method, Stage):  # a bare stage fills its own slot
        return install(model, compose_stages(method), name=type(method).__name__)
    return install(model, method, name=method.name)


__all__ = [
    "METHODS",
    "CDPruner",
    "DyCoke",
    "FastV",
    "FastVID",
    "HoliTom",
    "METok",
    "PyramidDrop",
    "RandomTokens",
    "ToMe",
    "UniformFrames",
    "UniformSpatial",
    "VidCom2",
    "VisionZip",
    "apply",
    "get_method",
]
