"""``vidpress run``: a method on a video, with its report (and the uncompressed run beside it)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Optional

import typer

from .common import MAX_SIDE_HELP, MODEL_HELP, bundled_clip, console, for_model, load_clip, parse_set


def run(
    video: Optional[Path] = typer.Argument(None, help="Video file; default: the bundled NASA clip."),
    question: str = typer.Option("Describe what happens in this video.", "--question", "-q"),
    method: str = typer.Option("dycoke", "--method", "-m", help="Method name (see `vidpress methods`), or none."),
    params: list[str] = typer.Option([], "--set", help="Method hyperparameter NAME=VALUE, repeatable (e.g. k=0.7)."),
    frames: int = typer.Option(32, "--frames", "-f", min=1, help="Frames sampled uniformly."),
    model: str = typer.Option("default", "--model", help=MODEL_HELP),
    compare: bool = typer.Option(False, "--compare", help="Also run the uncompressed model and print ratios."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON only."),
    max_side: int = typer.Option(768, "--max-side", min=0, help=MAX_SIDE_HELP),
) -> None:
    """Answer QUESTION about VIDEO with METHOD applied; print the answer and what it cost."""
    from .._checks import check_context
    from ..io.video import count_frames
    from ..methods import get_method
    from ..models.loading import load_model
    from ..pipeline import ask, build_inputs, check_frames, check_question
    from ..report import compare_table, ratios

    settings = parse_set(params)
    chosen = get_method(method, **settings)
    check_question(question)
    path = video or bundled_clip()
    planned = count_frames(path, frames)  # nothing decoded yet: a request that cannot fit is refused first
    with console.status("loading model", spinner="dots") if not as_json else contextlib.nullcontext():
        loaded = load_model(model)
    check_frames(loaded.model, loaded.processor, planned, question, max_new_tokens)
    clip, notes = load_clip(path, frames, max_side, progress=not as_json)
    chosen = for_model(chosen, method, settings, loaded.model, notes)
    force = 0 if loaded.trained else max_new_tokens  # an untrained model may stop at once: measure decoding anyway

    def answer(method: Any, label: str | None = None) -> Any:
        return ask(
            loaded.model,
            loaded.processor,
            clip.frames,
            question,
            method,
            max_new_tokens=max_new_tokens,
            min_new_tokens=force,
            progress=not as_json,
            label=label,
            timestamps=clip.timestamps,
        )

    # the prompt with the tokens this run generates, before the shorter warm-up checks it with its own 2
    check_context(
        loaded.model,
        build_inputs(loaded.processor, clip.frames, question, timestamps=clip.timestamps)["input_ids"].shape[1],
        max_new_tokens,
    )
    # warm-up: one-time allocations (RSS growth, lazy initialisation) must not count against the run measured
    ask(
        loaded.model,
        loaded.processor,
        clip.frames,
        question,
        get_method("none"),
        max_new_tokens=2,
        progress=False,
        timestamps=clip.timestamps,
    )
    results = [answer(get_method("none"), "uncompressed")] if compare else []
    results.append(answer(chosen))
    if as_json:
        payload = {
            "video": str(path),
            "frames": len(clip),
            "frames_requested": frames,
            "notes": notes,
            "model": loaded.description,
            "trained": loaded.trained,
            "runs": [{"answer": r.text, **r.report.as_dict()} for r in results],
        }
        if compare:
            payload["ratios"] = ratios(results[0].report, results[1].report)
        print(json.dumps(payload, indent=2, default=float))
        return
    console.print(f"[bold]video[/]: {path} ({len(clip)} frames of {clip.duration_s:.1f} s)")
    for note in notes:
        console.print(f"[bold yellow]note[/]: {note}")
    console.print(f"[bold]model[/]: {loaded.description}")
    if not loaded.trained:
        console.print(
            "[bold yellow]note[/]: weights/projector are untrained - the answer text is not meaningful; "
            f"the costs are real. Decoding is forced to {max_new_tokens} tokens so it can be measured."
        )
    for result in results:
        console.print(f"[bold]answer ({result.report.method})[/]: {result.text!r}")
    console.print(results[-1].report.table())
    if compare:
        console.print(compare_table(results[0].report, [results[1].report]))
