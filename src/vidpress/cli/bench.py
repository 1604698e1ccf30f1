"""``vidpress bench``: methods x retention on one video, in one process, as ratios to uncompressed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import MAX_SIDE_HELP, MODEL_HELP, bundled_clip, check_plots, console, load_clip


def bench(
    video: Optional[Path] = typer.Argument(None, help="Video file; default: the bundled NASA clip."),
    question: str = typer.Option("Describe what happens in this video.", "--question", "-q"),
    methods_: str = typer.Option(
        "all", "--methods", help="Comma-separated method names, or all; NAME[key=value;...] sets hyperparameters."
    ),
    retentions: str = typer.Option("0.5,0.25,0.15,0.1", "--retentions", help="Comma-separated retentions."),
    frames: Optional[int] = typer.Option(None, "--frames", "-f", min=1, help="Default 32 (16 with --quick)."),
    new_tokens: Optional[int] = typer.Option(None, "--new-tokens", min=1, help="Default 32 (8 with --quick)."),
    model: str = typer.Option("default", "--model", help=MODEL_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder; default bench-results/<device>."),
    quick: bool = typer.Option(False, "--quick", help="16 frames, 8 tokens, retentions 25 % and 10 %."),
    repeats: int = typer.Option(
        1,
        "--repeats",
        min=1,
        help="Runs per cell; timings are their median (use 3-5 on a GPU, where one run is noisy).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Keep the cells already in OUT/bench.json (written cell by "
        "cell) and run only the others; ratios stay against each row's own run.",
    ),
    max_side: int = typer.Option(768, "--max-side", min=0, help=MAX_SIDE_HELP),
    evidence: Optional[str] = typer.Option(
        None,
        "--evidence",
        help='Evidence boxes per sampled frame, JSON {"frame": [[x0, y0, x1, y1], ...]} in fractions of the frame '
        "(0-based among --frames): adds where each method leaves them (evidence_* columns).",
    ),
) -> None:
    """Methods x retention on one video, in one process: costs as ratios, fidelity against uncompressed.

    Results are written to OUT cell by cell as they complete; ``--resume`` continues an interrupted run."""
    import datetime

    import torch

    from ..bench import device_name, parse_retentions, plan, run_bench, split_methods
    from ..bench_files import best_by_retention, check_writable, resumed_rows, write_outputs, write_rows
    from ..models.loading import load_model
    from ..pipeline import check_question

    frames = frames or (16 if quick else 32)
    new_tokens = new_tokens or (8 if quick else 32)
    from ..methods import METHODS

    chosen = list(METHODS) if methods_ == "all" else split_methods(methods_)
    levels = [0.25, 0.1] if quick and retentions == "0.5,0.25,0.15,0.1" else parse_retentions(retentions)
    plan(chosen, levels)  # unknown methods fail here, before any work
    check_question(question)
    folder = out or Path("bench-results") / device_name()
    check_writable(folder)
    check_plots(folder / "ttft.png")
    done = resumed_rows(folder, "bench") if resume else []
    path = video or bundled_clip()
    clip, video_notes = load_clip(path, frames, max_side)
    masks = None if evidence is None else evidence_masks(evidence, frames)
    with console.status("loading model", spinner="dots"):
        loaded = load_model(model)
    torch.set_grad_enabled(False)
    depth = loaded.model.config.text_config.num_hidden_layers
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": device_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "video": str(path),
        "frames": frames,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "model": loaded.description,
        "question": question,
    }
    rows, notes = run_bench(
        loaded.model,
        loaded.processor,
        clip.frames,
        question,
        chosen,
        levels,
        new_tokens=new_tokens,
        depth=depth,
        repeats=repeats,
        done=done,
        on_row=lambda so_far: write_rows(so_far, [], {**meta, "partial": True}, folder, "bench"),
        evidence=masks,
    )
    notes = video_notes + notes
    written = write_outputs(rows, notes, meta, folder)
    table = Table(title=f"vidpress bench: {path.name}, {frames} frames, ratios to uncompressed")
    shown = (
        ("method", "method"),
        ("target", "target_retention"),
        ("entry", "retention"),
        ("alive", "mean_alive_retention"),
        ("FLOPs", "prefill_flops_ratio"),
        ("KV", "kv_bytes_ratio"),
        ("TTFT", "ttft_ratio"),
        ("limit", "ttft_limit_ratio"),
        ("prefill x", "llm_prefill_speedup"),
        ("tok/s", "decode_tok_s_ratio"),
        ("mem", "peak_memory_ratio"),
        ("KL", "first_token_kl"),
        ("top-1", "first_token_top1_agree"),
        ("greedy", "greedy_token_agreement"),
    ) + ((("evidence", "evidence_strict"), ("ev. alive", "evidence_alive")) if masks is not None else ())
    for title, _ in shown:
        table.add_column(title, justify="left" if title == "method" else "right")
    for row in rows:
        table.add_row(
            *[
                str(row[k]) if isinstance(row.get(k), str) else "—" if row.get(k) is None else f"{row[k]:.3f}"
                for _, k in shown
            ]
        )
    console.print(table)
    console.print(
        "entry: visual tokens entering the LLM / uncompressed; alive: mean over layers; limit: TTFT if only the "
        "LLM prefill shrank (vision time + uncompressed prefill x FLOPs kept); KL, top-1, greedy: first-token KL "
        "divergence, top-1 and greedy-token agreement with the uncompressed run"
        + (
            "; evidence: share of the --evidence boxes reaching the LLM as their own tokens, ev. alive: held by the "
            "tokens alive per layer (merged ones too)"
            if masks is not None
            else ""
        )
    )
    if not loaded.trained:
        console.print("[bold yellow]note[/]: untrained model - fidelity says how much the output moves, not accuracy")
    for line in best_by_retention(rows):
        console.print(line)
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    console.print("wrote " + ", ".join(str(p) for p in written))


def evidence_masks(text: str, frames: int):
    """Masks (frames, 112, 112) from ``--evidence``'s JSON; a bad entry is a BadParameter naming it."""
    import json

    from ..errors import InvalidParameterError
    from ..evidence import boxes_to_masks

    try:
        boxes = {int(frame): [tuple(box) for box in found] for frame, found in json.loads(text).items()}
        return boxes_to_masks(boxes, frames)
    except (ValueError, TypeError, AttributeError, InvalidParameterError) as exc:
        raise typer.BadParameter(
            f'--evidence must be JSON {{"frame": [[x0, y0, x1, y1], ...]}} in fractions of the frame ({exc})'
        ) from None
