"""Controls at the same visual-token budget as the methods: uniform frames, uniform spatial positions, random
tokens. A method that cannot beat these at a retention is not worth its complexity there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..method import Method
from ..stages import Stages
from ..stages.pre_llm.uniform import UniformBaseline


@dataclass(frozen=True)
class _Control(Method):
    retention: float = 0.25
    kind: ClassVar[str]

    def build(self) -> Stages:
        return Stages(pre_llm=UniformBaseline(retention=self.retention, kind=self.kind))


@dataclass(frozen=True)
class UniformFrames(_Control):
    """Uniform frame subsampling: the budget of ``retention`` spent on whole frames spread over the video."""

    name: ClassVar[str] = "frames"
    kind: ClassVar[str] = "frames"


@dataclass(frozen=True)
class UniformSpatial(_Control):
    """Uniform spatial subsampling: every frame keeps the same evenly strided share of its positions."""

    name: ClassVar[str] = "spatial"
    kind: ClassVar[str] = "spatial"


@dataclass(frozen=True)
class RandomTokens(_Control):
    """Random token dropping: ``retention`` of the visual tokens drawn uniformly (seeded)."""

    name: ClassVar[str] = "random"
    kind: ClassVar[str] = "random"
    seed: int = 0

    def build(self) -> Stages:
        return Stages(pre_llm=UniformBaseline(retention=self.retention, kind="random", seed=self.seed))
