"""``vidpress flops``: the costs of a method from a model config alone, no weights."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from .common import console, parse_set


def flops(
    model: str = typer.Option(
        "llava-ov-7b", "--model", help="Preset (llava-ov-0.5b/7b/72b, longva-7b) or config.json."
    ),
    frames: int = typer.Option(32, "--frames", "-f", min=1),
    method: str = typer.Option("dycoke", "--method", "-m"),
    params: list[str] = typer.Option([], "--set", help="Method hyperparameter NAME=VALUE, repeatable."),
    text_tokens: int = typer.Option(78, "--text-tokens", help="Text tokens in the prompt (DyCoke's table: ~78)."),
    retention: Optional[float] = typer.Option(None, "--retention", help="Override: fraction of visual tokens kept."),
    n_events: int = typer.Option(
        5, "--events", min=1, help="Event-aware methods (METok): equal-length events assumed in the video."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compute tokens, FLOPs and KV bytes from a config alone, without building the model."""
    from ..accounting import estimate, resolve_spec
    from ..errors import BudgetError, InvalidParameterError
    from ..method import Method
    from ..methods import get_method
    from ..report import human_bytes, human_flops
    from ..stages import Stages

    spec = resolve_spec(model)
    chosen = get_method(method, **parse_set(params))
    method_ = chosen if isinstance(chosen, Method) else None
    stages = chosen if isinstance(chosen, Stages) else chosen.build()
    rows = [
        ("uncompressed", estimate(spec, frames, None, text_tokens=text_tokens)),
        (
            method_.label if method_ is not None else "uncompressed",
            estimate(spec, frames, stages, text_tokens=text_tokens, retention=retention, events=n_events),
        ),
    ]
    ideal = method_.idealised_retention() if method_ is not None else None
    notes = []
    if method_ is not None and ideal is not None and retention is None:
        for label, variant in method_.reference_variants():
            try:  # a reference variant may not run where the chosen mode does (faithful TTM at <= 4 frames)
                rows.append((label, estimate(spec, frames, variant.build(), text_tokens=text_tokens, events=n_events)))
            except (BudgetError, InvalidParameterError) as exc:
                notes.append(f"{label}: skipped ({exc})")
        rows.append(
            (
                f"{chosen.name} idealised ({ideal:.1%}, paper)",
                estimate(spec, frames, stages, text_tokens=text_tokens, retention=ideal),
            )
        )
    if as_json:
        print(
            json.dumps(
                {
                    "model": spec.name,
                    "frames": frames,
                    "text_tokens": text_tokens,
                    "notes": notes,
                    "rows": [{"label": label, **acc.as_dict()} for label, acc in rows],
                },
                indent=2,
            )
        )
        return
    base = rows[0][1]
    table = Table(title=f"{spec.name}, {frames} frames, {text_tokens} text tokens (config only)")
    for col in (
        "method",
        "visual tokens",
        "retention",
        "prefill FLOPs",
        "ratio",
        "decode FLOPs/token",
        "KV cache",
        "visual KV read/step",
        "vision FLOPs",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    for label, acc in rows:
        table.add_row(
            label,
            str(acc.prefill_visual[0]),
            f"{acc.retention:.1%}",
            human_flops(acc.prefill_flops),
            f"{acc.prefill_flops / base.prefill_flops:.3f}",
            human_flops(acc.decode_flops_per_token),
            human_bytes(acc.kv_bytes),
            human_bytes(acc.attended_visual_kv_bytes),
            f"{human_flops(acc.vision_flops + acc.projector_flops)} "
            f"({(acc.vision_flops + acc.projector_flops) / (base.vision_flops + base.projector_flops):.2f})",
        )
    console.print(table)
    console.print(
        "vision FLOPs: encoder + projector, counted apart from the LLM; only vision-slot methods and frames never "
        "encoded change them"
    )
    for note in notes:
        console.print(f"[yellow]{note}[/]")
