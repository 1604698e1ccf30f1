"""The ``vidpress`` command line: run a method on a video, or compute its costs from a config alone. One module
per command; the table below is the whole command set."""

from __future__ import annotations

import logging
import os
import sys

import typer

from . import bench, evaluate, events, flops, methods, run, weights
from .common import bundled_clip, err

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Training-free visual-token compression for video LLMs, with exact accounting.",
)
for name, command in (
    ("run", run.run),
    ("flops", flops.flops),
    ("events", events.events),
    ("bench", bench.bench),
    ("eval", evaluate.eval_),
    ("methods", methods.methods),
    ("weights", weights.weights),
):
    app.command(name=name)(command)


def main() -> None:
    """Entry point: every expected failure prints one line and exits non-zero, without a traceback."""
    from ..errors import VidpressError

    if os.environ.get("VIDPRESS_OFFLINE", "1") == "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = app(standalone_mode=False)
    except Exception as exc:  # typer vendors click, so its exceptions are told apart by name and attributes
        if type(exc).__name__ == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if type(exc).__name__ == "Abort":
            err.print("aborted")
            sys.exit(130)
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # a usage error
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, (VidpressError, OSError, ValueError, LookupError)):
            err.print(f"[bold red]error[/]: {exc}", highlight=False, soft_wrap=True)  # one line, however long
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "bundled_clip", "main"]
