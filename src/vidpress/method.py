"""Methods: frozen dataclasses of hyperparameters that build a :class:`Stages` composition.

``with method(model) as run:`` (or ``with vidpress.apply(model, method):``) installs the runtime's hooks on a
loaded transformers model and always removes them; ``run.report`` holds the accounting of the latest
request.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from .errors import IncompatibleStagesError, InvalidParameterError, UnknownMethodError
from .stages import DecodeStage, PrefillStage, PreLLMStage, Stage

if TYPE_CHECKING:
    from .runtime.install import Run


@dataclass(frozen=True)
class Stages:
    """One stage per slot; None leaves that part of the model untouched."""

    pre_llm: PreLLMStage | None = None
    prefill: PrefillStage | None = None
    decode: DecodeStage | None = None

    def for_depth(self, num_layers: int) -> Stages:
        """Resolve stages whose layers depend on the LLM's depth (e.g. PyramidDrop's fractions, FastV's
        retention target) for an LLM of ``num_layers`` layers.

        Raises
        ------
        BudgetError
            A prefill layer beyond the model's depth, or an unreachable retention.
        InvalidParameterError
            A decode stage starting at or beyond the last layer (it would never act).
        """
        decode = self.decode
        if decode is not None and not 0 <= decode.first_layer < num_layers:
            raise InvalidParameterError(
                f"{type(decode).__name__} starts at layer {decode.first_layer} but the LLM has {num_layers} layers "
                f"(0..{num_layers - 1}): it would never act; choose a first layer (DyCoke's L) below {num_layers}"
            )
        return Stages(*(None if s is None else s.for_depth(num_layers) for s in (self.pre_llm, self.prefill, decode)))

    @property
    def name(self) -> str:
        parts = [type(s).__name__ for s in (self.pre_llm, self.prefill, self.decode) if s is not None]
        return "+".join(parts) or "uncompressed"


def _slot_of(stage: object) -> str:
    """The slot a bare stage fills, as its base class declares."""
    if not isinstance(stage, Stage):
        raise IncompatibleStagesError(
            f"{stage!r} is not a stage: subclass vidpress.stages.PreLLMStage, PrefillStage or DecodeStage"
        )
    return stage.slot


def compose(*parts: Method | Stages | PreLLMStage | PrefillStage | DecodeStage) -> Stages:
    """Combine methods and stages slot by slot into one :class:`Stages`.

    Raises
    ------
    IncompatibleStagesError
        When two parts fill the same slot (never silently overridden).
    """
    slots: dict[str, Any] = {}
    for part in parts:
        stages = part.build() if isinstance(part, Method) else part
        if isinstance(stages, Stages):
            pairs = [(f.name, getattr(stages, f.name)) for f in dataclasses.fields(Stages)]
        else:
            pairs = [(_slot_of(stages), stages)]
        for slot, stage in pairs:
            if stage is None:
                continue
            if slot in slots:
                raise IncompatibleStagesError(
                    f"two stages fill the {slot!r} slot: {slots[slot]!r} and {stage!r}; drop one of them"
                )
            slots[slot] = stage
    return Stages(**slots)


class Method:
    """Base class of every method; subclasses are frozen dataclasses and implement :meth:`build`."""

    name: ClassVar[str]

    def __post_init__(self) -> None:
        """Runs after a subclass's dataclass ``__init__``: lists (from the CLI or JSON) become tuples, as the
        frozen hyperparameters expect, and :meth:`build` validates every parameter now, not at the first forward."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(tuple(v) if isinstance(v, list) else v for v in value))
        self.build()

    def build(self) -> Stages:
        raise NotImplementedError

    def idealised_retention(self) -> float | None:
        """The paper's idealised retention where it differs from the code's count (DyCoke), else None."""
        return None

    def reference_variants(self) -> list[tuple[str, Method]]:
        """Other configurations a table should show beside this one (the other mode), as (label, method)."""
        return []

    def __call__(self, model: Any) -> Run:
        """Install on ``model``; use as ``with method(model) as run:``."""
        from .runtime.install import install

        return install(model, self.build(), name=self.label)

    @classmethod
    def at_retention(cls, retention: float) -> Method:
        """This method configured for ``retention``, the common knob (fraction of visual tokens entering the
        LLM for pre-LLM methods, mean fraction alive per layer for in-LLM ones).

        Raises
        ------
        BudgetError
            The method has no retention knob, or cannot reach ``retention``.
        """
        from .errors import BudgetError

        if "retention" not in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            raise BudgetError(f"{cls.name} has no retention knob; set its own hyperparameters instead")
        return cls(retention=retention)  # type: ignore[call-arg]

    @property
    def label(self) -> str:
        """Short human-readable name with the non-default hyperparameters."""
        changed = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.init and getattr(self, f.name) != f.default
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> Method:
        """Build from a mapping; unknown keys raise :class:`UnknownMethodError` with a suggestion."""
        names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
        for key in params:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise UnknownMethodError(f"{cls.name} has no parameter {key!r} (valid: {', '.join(names)}){suggestion}")
        return cls(**params)  # type: ignore[call-arg]


def apply(model: Any, method: Method | Stages | str, **params: Any) -> Run:
    """Install ``method`` on ``model`` and return the :class:`~vidpress.runtime.install.Run` handle.

    Use as a context manager (``with vidpress.apply(model, DyCoke()):``) or keep it and call
    ``run.remove()``. ``method`` may be a name from ``vidpress.METHODS`` with ``params`` as hyperparameters.

    Raises
    ------
    UnsupportedModelError
        The model class has no adapter; the message lists the supported classes.
    UnknownMethodError
        An unknown method name or parameter.
    """
    from .methods import get_method
    from .runtime.install import install

    if isinstance(method, str):
        method = get_method(method, **params)
    elif params:
        raise TypeError("hyperparameters go into the method object when a Method or Stages is given")
    if isinstance(method, Method):
        return install(model, method.build(), name=method.label)
    return install(model, method, name=method.name)
