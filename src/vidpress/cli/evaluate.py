"""``vidpress eval``: multiple-choice accuracy of a method on a split, with intervals."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from .common import MODEL_HELP, console, parse_set


def eval_(
    method: str = typer.Option("none", "--method", "-m", help="Method name (see `vidpress methods`), or none."),
    params: list[str] = typer.Option([], "--set", help="Method hyperparameter NAME=VALUE, repeatable."),
    retention: Optional[float] = typer.Option(None, "--retention", help="Configure the method for this retention."),
    questions: int = typer.Option(
        100, "--questions", "-n", min=1, help="From the split (test: 560 questions, needle: 300)."
    ),
    split: str = typer.Option(
        "test",
        "--split",
        help="test: the procedural QA test split; needle: questions only a brief small object answers.",
    ),
    frames: int = typer.Option(
        12, "--frames", "-f", min=1, help="Frames sampled uniformly per video (the testbed was trained on 12)."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="Default: testbed once trained, else default. " + MODEL_HELP
    ),
) -> None:
    """Multiple-choice accuracy on the procedural video-QA test split (or the needle split), with accuracy retained
    vs uncompressed."""
    import torch

    from ..evaluate import evaluate
    from ..methods import METHODS, get_method
    from ..models.loading import load_model
    from ..testbed.needle import make_needle_split
    from ..testbed.saved import testbed_available
    from ..testbed.scenes import make_split

    sizes = {"test": 560, "needle": 300}
    if split not in sizes:
        raise typer.BadParameter(f"--split must be one of {', '.join(sizes)}, got {split!r}")
    if questions > sizes[split]:
        raise typer.BadParameter(f"the {split} split has {sizes[split]} questions; ask for at most that many (-n)")
    if retention is not None and (params or method not in METHODS):
        raise typer.BadParameter("--retention configures a named method by itself; drop --set or pick a method")
    chosen = (
        METHODS[method].at_retention(retention) if retention is not None else get_method(method, **parse_set(params))
    )
    model = model or ("testbed" if testbed_available() else "default")
    with console.status("loading model", spinner="dots"):
        loaded = load_model(model)
    torch.set_grad_enabled(False)
    # the needle sits on frames of the sampled video, so the split is built for the frame count evaluated
    samples = make_needle_split(300, frames)[:questions] if split == "needle" else make_split("test", 560)[:questions]
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
    if results[0].evidence:
        survival = Table(title="the needle's pixels: share reaching the LLM (evidence survival), 95 % CI")
        for column in ("method", "own tokens", "inside merged tokens", "alive per LLM layer"):
            survival.add_column(column, justify="left" if column == "method" else "right")
        for r in results:
            found = r.evidence_summary()
            survival.add_row(r.method, *(f"{m:.3f} ({lo:.3f} - {hi:.3f})" for m, lo, hi in found.values()))
        console.print(survival)
        console.print("evidence survival says whether the needle reaches the LLM, not whether the LLM uses it")
    if not loaded.trained:
        console.print(
            "[bold yellow]note[/]: untrained model - its answers seldom name an option, so accuracy is at or "
            "below chance; a trained testbed is needed"
        )
