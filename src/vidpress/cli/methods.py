"""``vidpress methods``: the registered methods and their hyperparameters."""

from __future__ import annotations

import dataclasses

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
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls) if f.init)
        table.add_row(name, fields, (cls.__doc__ or "").strip().splitlines()[0])
    console.print(table)
