"""``vidpress methods``: the registered methods and their hyperparameters."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from rich.table import Table

from .common import console


def methods() -> None:
    """List the methods and their hyperparameters."""
    from ..methods import METHODS

    table = Table(title="vidpress methods")
    table.add_column("name")
    table.add_column("hyperparameters (defaults)")
    table.add_column("summary")
    for name, cls in METHODS.items():
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cast(Any, cls)) if f.init)
        table.add_row(name, fields, summary(cls.__doc__ or ""))
    console.print(table)


def summary(doc: str) -> str:
    """A docstring's first sentence, whole: its first paragraph joined up to the first full stop that ends a
    sentence (the first line alone may stop mid-sentence)."""
    paragraph = " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())
    end = next((i + 1 for i, c in enumerate(paragraph) if c == "." and paragraph[i + 1 : i + 2] in (" ", "")), None)
    return paragraph[:end] if end else paragraph
