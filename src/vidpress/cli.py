"""The ``vidpress`` command line: run a method on a video, or compute its costs from a config alone."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Training-free visual-token compression for video LLMs, with exact accounting.",
)
console = Console(width=max(120, Console().width))
err = Console(stderr=True, width=max(120, Console().width))


MODEL_HELP = (
    "default | testbed | random | random-llava-next-video | random-qwen2.5-vl | random:<preset> | "
    "local checkpoint dir | hub id."
)


def bundled_clip() -> Path:
    """The short real clip shipped with vidpress (NASA footage, public domain)."""
    return Path(str(resources.files("vidpress") / "assets" / "nasa_13013_clip.mp4"))


MAX_SIDE_HELP = "Decode frames with the longer side at most this many pixels (bounds memory; 0: full resolution)."


def _load_clip(path: Path, frames: int, max_side: int, progress: bool = False) -> tuple[Any, list[str]]:
    """The sampled video, and what :func:`~vidpress.io.video.load_video` warned about it, as notes to print."""
    import warnings

    from .io.video import VideoWarning, load_video

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VideoWarning)
        clip = load_video(path, frames, max_side=max_side or None, progress=progress)
    for w in caught:
        if not issubclass(w.category, VideoWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return clip, [str(w.message) for w in caught if issubclass(w.category, VideoWarning)]


def _check_plots(out: Path) -> None:
    """Fail before any work when a PNG cannot be written to ``out``: matplotlib missing, or no such folder."""
    import importlib.util

    from .errors import VidpressError

    if importlib.util.find_spec("matplotlib") is None:
        raise VidpressError("drawing needs matplotlib: pip install 'vidpress[plots]'")
    if not out.parent.is_dir():
        raise OSError(f"cannot write {out}: the folder {out.parent} does not exist; create it or choose another --out")


def _parse_set(values: list[str]) -> dict[str, Any]:
    """``["k=0.7", "mode=faithful", "layers=(3,10,19)"]`` -> ``{"k": 0.7, "mode": "faithful", "layers": (3, 10, 19)}``:
    JSON or Python literals (numbers, true/false, lists, tuples) are parsed, anything else stays a string."""
    import ast

    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise typer.BadParameter(f"--set takes NAME=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            try:
                out[key.strip()] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                out[key.strip()] = raw
    return out


@app.command()
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
    from .methods import get_method
    from .models.loading import load_model
    from .pipeline import ask, check_question
    from .report import compare_table, ratios

    chosen = get_method(method, **_parse_set(params))
    check_question(question)
    path = video or bundled_clip()
    clip, notes = _load_clip(path, frames, max_side, progress=not as_json)
    with console.status("loading model", spinner="dots") if not as_json else contextlib.nullcontext():
        loaded = load_model(model)
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
        )

    # warm-up: one-time allocations (RSS growth, lazy initialisation) must not count against the run measured
    ask(loaded.model, loaded.processor, clip.frames, question, get_method("none"), max_new_tokens=2, progress=False)
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


@app.command()
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
    from .accounting import estimate, resolve_spec
    from .errors import BudgetError, InvalidParameterError
    from .method import Method
    from .methods import get_method
    from .report import human_bytes, human_flops

    spec = resolve_spec(model)
    chosen = get_method(method, **_parse_set(params))
    method_ = chosen if isinstance(chosen, Method) else None
    stages = chosen.build() if method_ is not None else chosen
    rows = [
        ("uncompressed", estimate(spec, frames, None, text_tokens=text_tokens)),
        (
            chosen.label if method_ is not None else "uncompressed",
            estimate(spec, frames, stages, text_tokens=text_tokens, retention=retention, events=n_events),
        ),
    ]
    ideal = method_.idealised_retention() if method_ is not None else None
    notes = []
    if ideal is not None and retention is None:
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
        )
    console.print(table)
    console.print(
        f"vision encoder + projector: {human_flops(base.vision_flops + base.projector_flops)} "
        "(unchanged by pre-LLM methods; counted apart from the LLM)"
    )
    for note in notes:
        console.print(f"[yellow]{note}[/]")


@app.command()
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

    from .methods.metok import METok
    from .models.loading import load_model
    from .pipeline import build_inputs, check_question

    method = METok.from_dict(_parse_set(params))
    check_question(question)
    _check_plots(out)
    from .viz.events import draw_events, events_table

    path = video or bundled_clip()
    clip, notes = _load_clip(path, frames, max_side)
    for note in notes:
        console.print(f"[bold yellow]note[/]: {note}")
    with console.status("loading model", spinner="dots"):
        loaded = load_model(model)
    inputs = build_inputs(loaded.processor, clip.frames, question).to(loaded.model.device)
    from .methods import apply
    from .stages import Stages

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


@app.command()
def bench(
    video: Optional[Path] = typer.Argument(None, help="Video file; default: the bundled NASA clip."),
    question: str = typer.Option("Describe what happens in this video.", "--question", "-q"),
    methods_: str = typer.Option("all", "--methods", help="Comma-separated method names, or all."),
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
) -> None:
    """Methods x retention on one video, in one process: costs as ratios, fidelity against uncompressed.

    Results are written to OUT cell by cell as they complete; ``--resume`` continues an interrupted run."""
    import datetime

    import torch

    from .bench import (
        best_by_retention,
        check_writable,
        device_name,
        parse_retentions,
        plan,
        resumed_rows,
        run_bench,
        write_outputs,
        write_rows,
    )
    from .models.loading import load_model
    from .pipeline import check_question

    frames = frames or (16 if quick else 32)
    new_tokens = new_tokens or (8 if quick else 32)
    from .methods import METHODS

    chosen = list(METHODS) if methods_ == "all" else [m.strip() for m in methods_.split(",") if m.strip()]
    levels = [0.25, 0.1] if quick and retentions == "0.5,0.25,0.15,0.1" else parse_retentions(retentions)
    plan(chosen, levels)  # unknown methods fail here, before any work
    check_question(question)
    folder = out or Path("bench-results") / device_name()
    check_writable(folder)
    _check_plots(folder / "ttft.png")
    done = resumed_rows(folder, "bench") if resume else []
    path = video or bundled_clip()
    clip, video_notes = _load_clip(path, frames, max_side)
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
    )
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
    )
    if not loaded.trained:
        console.print("[bold yellow]note[/]: untrained model - fidelity says how much the output moves, not accuracy")
    for line in best_by_retention(rows):
        console.print(line)
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    console.print("wrote " + ", ".join(str(p) for p in written))


@app.command(name="eval")
def eval_(
    method: str = typer.Option("none", "--method", "-m", help="Method name (see `vidpress methods`), or none."),
    params: list[str] = typer.Option([], "--set", help="Method hyperparameter NAME=VALUE, repeatable."),
    retention: Optional[float] = typer.Option(None, "--retention", help="Configure the method for this retention."),
    questions: int = typer.Option(100, "--questions", "-n", min=1, max=560, help="From the 560-question test split."),
    frames: int = typer.Option(
        12, "--frames", "-f", min=1, help="Frames sampled uniformly per video (the testbed was trained on 12)."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="Default: testbed once trained, else default. " + MODEL_HELP
    ),
) -> None:
    """Multiple-choice accuracy on the procedural video-QA test split, with accuracy retained vs uncompressed."""
    import torch

    from .evaluate import evaluate
    from .methods import METHODS, get_method
    from .models.loading import load_model
    from .testbed.saved import testbed_available
    from .testbed.scenes import make_split

    if retention is not None and (params or method not in METHODS):
        raise typer.BadParameter("--retention configures a named method by itself; drop --set or pick a method")
    chosen = (
        METHODS[method].at_retention(retention) if retention is not None else get_method(method, **_parse_set(params))
    )
    model = model or ("testbed" if testbed_available() else "default")
    with console.status("loading model", spinner="dots"):
        loaded = load_model(model)
    torch.set_grad_enabled(False)
    samples = make_split("test", 560)[:questions]
    results = [
        evaluate(
            loaded.model,
            loaded.processor,
            samples,
            get_method("none"),
            frames=frames,
            label="uncompressed",
            protocol=loaded.protocol,
        )
    ]
    if method not in ("none", "uncompressed"):
        label = f"{method} @ {retention:.0%}" if retention is not None else None
        results.append(
            evaluate(
                loaded.model, loaded.processor, samples, chosen, frames=frames, label=label, protocol=loaded.protocol
            )
        )
    asked = " (each after the model's own description, repeated scenes merged)" if loaded.protocol == "describe" else ""
    table = Table(title=f"procedural video QA, {questions} test questions{asked}, {frames} frames, chance 25 %")
    for column in ("method", "accuracy", "95 % CI", "LLM prefill FLOPs", "accuracy retained"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in results:
        low, high = r.interval
        table.add_row(
            r.method,
            f"{r.accuracy:.1%}",
            f"{low:.1%} - {high:.1%}",
            f"{r.prefill_flops:.3g}",
            f"{r.accuracy / results[0].accuracy:.1%}" if results[0].correct else "—",
        )
    console.print(table)
    kinds = Table(title="accuracy per question kind")
    kinds.add_column("method")
    by_kind = [r.by_kind(samples) for r in results]
    counts = {kind: sum(s.question.kind == kind for s in samples) for kind in by_kind[0]}
    for kind, n in counts.items():
        kinds.add_column(f"{kind} ({n})", justify="right")
    for r, acc in zip(results, by_kind):
        kinds.add_row(r.method, *(f"{acc[kind]:.0%}" for kind in counts))
    console.print(kinds)
    if not loaded.trained:
        console.print(
            "[bold yellow]note[/]: untrained model - its answers seldom name an option, so accuracy is at or "
            "below chance; a trained testbed is needed"
        )


@app.command()
def methods() -> None:
    """List the methods and their hyperparameters."""
    from .methods import METHODS

    table = Table(title="vidpress methods")
    table.add_column("name")
    table.add_column("hyperparameters (defaults)")
    table.add_column("summary")
    for name, cls in METHODS.items():
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls) if f.init)
        table.add_row(name, fields, (cls.__doc__ or "").strip().splitlines()[0])
    console.print(table)


def main() -> None:
    """Entry point: every expected failure prints one line and exits non-zero, without a traceback."""
    from .errors import VidpressError

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
            err.print(f"[bold red]error[/]: {exc}", highlight=False)
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
