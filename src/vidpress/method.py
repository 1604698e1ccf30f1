"""Methods: frozen dataclasses of hyperparameters that build a :class:`~vidpress.stages.Stages` composition.

``with vidpress.apply(model, method) as run:`` (:func:`vidpress.methods.apply`; or ``with method.apply(model)``)
installs the runtime's hooks on a loaded transformers model and always removes them; ``run.report`` holds
the accounting of the latest request.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, cast

from .errors import UnknownMethodError
from .stages import Stage, Stages
from .stages import compose as compose_stages

if TYPE_CHECKING:
    from .runtime.install import Run


def compose(*parts: Method | Stages | Stage) -> Stages:
    """Combine methods and stages slot by slot into one :class:`~vidpress.stages.Stages` (a method contributes
    the stages it builds; see :func:`vidpress.stages.compose`).

    Raises
    ------
    IncompatibleStagesError
        When two parts fill the same slot (never silently overridden), or a part is not a stage.
    """
    return compose_stages(*(part.build() if isinstance(part, Method) else part for part in parts))


def check_params(cls: type, label: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`UnknownMethodError`, with the closest valid name, for a key of ``params`` that is not an init
    field of the dataclass ``cls`` (``label`` names it in the message)."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in params:
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise UnknownMethodError(f"{label} has no parameter {key!r} (valid: {', '.join(names)}){suggestion}")


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

    def apply(self, model: Any) -> Run:
        """Install on ``model``: ``with method.apply(model) as run:``, the same as ``vidpress.apply(model, method)``.
        (Calling a method is reserved for stages: a single-stage method called on tokens runs its stage.)"""
        from .runtime.install import install

        return install(model, self.build(), name=self.label)

    @classmethod
    def keep_everything(cls) -> Method:
        """This method configured to keep every visual token, on an LLM of at least 4 layers: the uncompressed
        model's logits and greedy tokens, exactly (the test suite runs it on every family).

        Raises
        ------
        NotImplementedError
            A method that has not declared it (every registered method must).
        """
        raise NotImplementedError(f"{cls.__name__} declares no keep_everything configuration")

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
        check_params(cls, cls.name, params)
        return cls(**params)


class StageMethod(Method):
    """A method that is one stage (VisionZip, FastVID, the controls): the object is the stage, and
    :meth:`build` puts it in its slot. Calling it runs the stage on tensors, so install it with
    ``vidpress.apply(model, method)``. Adding such a method is one stage class plus one line in ``METHODS``."""

    def build(self) -> Stages:
        return compose_stages(cast(Stage, self))  # a StageMethod's concrete classes are stages

    @classmethod
    def keep_everything(cls) -> Method:
        """``retention=1.0`` where the stage has one (every token kept unchanged)."""
        if "retention" not in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            return super().keep_everything()
        return cls(retention=1.0)  # type: ignore[call-arg]


def parse_value(raw: str) -> Any:
    """A hyperparameter's value from text: JSON or a Python literal (numbers, true/false, lists, tuples), else
    the text itself (``"(3,10,19)"`` -> ``(3, 10, 19)``, ``"faithful"`` -> ``"faithful"``)."""
    import ast
    import json

    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
