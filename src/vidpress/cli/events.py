"""``vidpress events``: METok's event segmentation of a video, drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import MAX_SIDE_HELP, MODEL_HELP, bundled_clip, check_plots, console, load_clip, parse_set


def events(
    video: Optional[Path] = typer.Argument(None, help="Video file; default: the bundled NASA clip."),
    question: str = typer.Option("Describe what happens in this video.", "--question", "-q"),
    frames: int = typer.Option(32, "--frames", "-f", min=2),
    model: str = typer.Option("default", "--model", help=MODEL_HELP),
    params: list[str] = typer.Option([], "--set", help="METok hyperparameter NAME=VALUE, repeatable."),
    out: Path = typer.Option(Path("events.png"), "--out", "-o", help="PNG to write."),
    max_side: int = typer.Option(768, "--max-side", min=0, help=MAX_SIDE_HELP),
) -> None:
    """Show METok's events for VIDEO: similarity curve, boundaries, key events/frames and token budgets."""
    import torch

    from ..methods.metok import METok
    from ..models.loading import load_model
    from ..pipeline import build_inputs, check_question

    method = METok.from_dict(parse_set(params))
    check_question(question)
    check_plots(out)
    from ..viz.events import draw_events, events_table

    path = video or bundled_clip()
    clip, notes = load_clip(path, frames, max_side)
    for note in notes:
        console.print(f"[bold yellow]note[/]: {note}")
    with console.status("loading model", spinner="dots"):
        loaded = load_model(model)
    inputs = build_inputs(loaded.processor, clip.frames, question).to(loaded.model.device)
    from ..methods import apply
    from ..stages import Stages

    with (
        console.status("encoding and segmenting", spinner="dots"),
        torch.inference_mode(),
        apply(loaded.model, Stages(pre_llm=method.build().pre_llm)) as run,
    ):  # stage 1 is all it needs
        loaded.model(**inputs)
    plan = run.last_session.stage_info[0]
    console.print(events_table(plan, clip.timestamps))
    written = draw_events(plan, clip.frames, clip.timestamps, out, title=f"{path.name}: {question}")
    console.print(f"wrote {written}")
