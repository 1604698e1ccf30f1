"""The side-by-side benchmark behind ``vidpress bench``: methods x retention on one video and one model, in
one process, as ratios to the uncompressed run plus a fidelity proxy against it.

Fidelity proxy (no labels needed): KL divergence of the first generated token's distribution
(uncompressed || method), top-1 agreement of that token, and the fraction of the greedy tokens that equal
the uncompressed model's at the same position. The first token's distribution is the one it was chosen from:
with decoding forced (``min_new_tokens``, for models that would stop at once) the end of sequence is excluded
from it, so top-1 agreement is exactly whether the first generated tokens agree.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from typing import Any, Callable, Sequence, cast

import torch

from .bench_files import RATIOS
from .errors import BudgetError, IncompatibleStagesError, InvalidParameterError, UnknownMethodError, VidpressError
from .method import Method
from .methods import METHODS, get_method
from .pipeline import Answer, ask
from .report import ratios

RETENTIONS = (0.5, 0.25, 0.15, 0.1)
#: Methods run once at their own defaults (no retention knob); their measured retention is reported.
FIXED_POINT = ("metok",)


def _evidence_columns(report: Any) -> dict[str, float]:
    """The evidence survival of a request that traced it (``vidpress bench --evidence``), else nothing."""
    found = report.evidence
    if found is None:
        return {}
    return {
        "evidence_strict": found.strict,
        "evidence_merged": found.merged,
        "evidence_alive": sum(found.prefill_reached) / len(found.prefill_reached),
        "evidence_decode": sum(found.decode_reached) / len(found.decode_reached),
    }


@dataclass
class BenchRow:
    method: str
    target_retention: float | None
    answer: Answer

    def as_dict(self, base: Answer) -> dict[str, Any]:
        a, b = self.answer.report, base.report
        if base.first_logits is None or self.answer.first_logits is None:
            raise VidpressError("the benchmark compares first-token scores; ask() returns them with the answer")
        p = torch.log_softmax(base.first_logits, -1)
        q = torch.log_softmax(self.answer.first_logits, -1)
        allowed = torch.isfinite(p) & torch.isfinite(q)  # tokens the forced decoding excluded in both count 0
        n = min(len(self.answer.tokens), len(base.tokens))
        agree = sum(x == y for x, y in zip(self.answer.tokens[:n], base.tokens[:n])) / n if n else float("nan")
        acc = a.accounting
        r = ratios(b, a)
        return {
            "method": self.method,
            "target_retention": self.target_retention,
            "retention": acc.retention,
            "visual_tokens_llm": acc.prefill_visual[0],
            "mean_alive_retention": sum(acc.prefill_visual) / len(acc.prefill_visual) / acc.visual_in,
            **{key: r[key] for key in RATIOS},
            "first_token_kl": float((p.exp() * (p - q))[allowed].sum()),
            "first_token_top1_agree": float(base.first_logits.argmax() == self.answer.first_logits.argmax()),
            "greedy_token_agreement": agree,
            **_evidence_columns(a),
            "ttft_s": a.ttft_s,
            "llm_prefill_s": a.llm_prefill_s,
            "vision_s": a.vision_s,
        }


def device_name() -> str:
    """``cpu-<arch>-<N>cores`` or the CUDA device name: the folder name results are filed under."""
    import os
    import platform

    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "_")
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def _skipped(name: str, retention: float | None, exc: Exception) -> str:
    return f"{name}{'' if retention is None else f' @ {retention:.0%}'}: skipped ({exc})"


def split_methods(text: str) -> list[str]:
    """``"visionzip,metok[coarse=true;key_frames=4]"`` -> the entries, split at commas outside brackets."""
    entries, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    return [e.strip() for e in [*entries, current] if e.strip()]


def _entry(entry: str) -> tuple[str, dict[str, Any]]:
    """``"metok[coarse=true;key_frames=4]"`` -> ("metok", {"coarse": True, "key_frames": 4}); values are JSON or
    Python literals. Raises InvalidParameterError for a malformed entry."""
    from .method import parse_value

    name, _, rest = entry.partition("[")
    if rest and not rest.endswith("]") or not name:
        raise InvalidParameterError(f"a benchmark method is NAME or NAME[key=value;...], got {entry!r}")
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest[:-1].split(";"))):
        key, eq, raw = item.partition("=")
        if not eq:
            raise InvalidParameterError(f"{entry!r}: settings are key=value, got {item!r}")
        settings[key.strip()] = parse_value(raw)
    return name.strip(), settings


def plan(
    methods: Sequence[str], retentions: Sequence[float], depth: int | None = None
) -> tuple[list[tuple[str, float | None, Method]], list[str]]:
    """The matrix: (method, retention, configured method) cells, and notes for cells that cannot be built
    (with ``depth``, the LLM's layer count, also in-LLM cells that cannot be resolved for that model). A method
    is a name or ``name[key=value;...]`` (e.g. ``metok[coarse=true]``): its settings, then each retention; a
    fixed-point method with settings runs at the retentions too when it has a retention knob."""
    cells: list[tuple[str, float | None, Method]] = []
    notes: list[str] = []
    for entry in methods:
        name, settings = _entry(entry)
        if name not in METHODS:
            raise UnknownMethodError(f"unknown method {name!r} for the benchmark; choose from {', '.join(METHODS)}")
        if name in FIXED_POINT and not settings:
            cells.append((name, None, METHODS[name]()))
            continue
        for r in retentions:
            try:
                base = METHODS[name].at_retention(r)
                cells.append((entry, r, dataclasses.replace(cast(Any, base), **settings) if settings else base))
            except BudgetError as exc:
                notes.append(_skipped(entry, r, exc))
            except TypeError as exc:
                raise UnknownMethodError(f"{entry!r}: {exc}") from None
    if depth is None:
        return cells, notes
    kept = []
    for cell in cells:  # drop in-LLM cells this model cannot resolve before running anything
        try:
            cell[2].build().for_depth(depth)
            kept.append(cell)
        except BudgetError as exc:
            notes.append(_skipped(cell[0], cell[1], exc))
    return kept, notes


def parse_retentions(text: str) -> list[float]:
    """``"0.5,0.25"`` -> [0.5, 0.25]. Raises InvalidParameterError naming the entry unless each is in (0, 1]."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:
            raise InvalidParameterError(
                f"retentions must be comma-separated fractions in (0, 1], got {part!r} in {text!r}; e.g. 0.5,0.25,0.1"
            )
        values.append(value)
    return values


def cell_key(row: dict[str, Any]) -> tuple[str, float | None]:
    """The matrix cell a result row belongs to: (method, target retention)."""
    return row["method"], row["target_retention"]


def missing_cells(
    rows: Sequence[dict[str, Any]], methods: Sequence[str], retentions: Sequence[float], depth: int | None = None
) -> list[str]:
    """The cells of the matrix ``methods`` x ``retentions`` (:func:`plan`'s, skipped cells left out) that ``rows``
    lack, as ``"method @ 25%"``: what a partial or resumed results file does not hold yet."""
    have = {cell_key(row) for row in rows}
    cells, _ = plan(methods, retentions, depth)
    return [f"{name} @ {'defaults' if r is None else f'{r:.0%}'}" for name, r, _ in cells if (name, r) not in have]


def matrix_order(row: dict[str, Any]) -> tuple[int, float]:
    """Sort key of a result row: uncompressed first, then the registry's method order, higher retentions first
    (a method's fixed point last)."""
    rank = ["uncompressed", *METHODS]
    retention = row["target_retention"]
    return rank.index(row["method"]) if row["method"] in rank else len(rank), -1.0 if retention is None else -retention


def run_bench(
    model: Any,
    processor: Any,
    frames: Any,
    question: str,
    methods: Sequence[str],
    retentions: Sequence[float] = RETENTIONS,
    *,
    new_tokens: int = 32,
    progress: bool = True,
    depth: int | None = None,
    repeats: int = 1,
    done: Sequence[dict[str, Any]] = (),
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
    evidence: Any = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the matrix; returns (rows as dicts, notes). The uncompressed run is the reference for every ratio.
    ``evidence``: masks (F, H, W) of the frames whose survival every request traces (``evidence_*`` columns).

    Cells whose retention a method cannot reach (e.g. DyCoke below 25 %, FastV below K / layers) are skipped
    with a note, never silently run at another budget. ``repeats``: see :func:`run_cells`. ``done``: rows of
    cells measured earlier (:func:`resumed_rows`), kept as they are and not run again; ``on_row`` receives the
    rows so far, in matrix order, after every cell (to write them as they come).
    """
    cells, notes = plan(methods, retentions, depth)
    measured = {cell_key(row) for row in done}
    order = {(name, r): i for i, (name, r, _) in enumerate(cells)}
    kept = [row for row in done if cell_key(row) in order]

    def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda row: -1 if row["method"] == "uncompressed" else order[cell_key(row)])

    def report(rows: list[dict[str, Any]]) -> None:
        if on_row is not None:
            on_row(ordered(kept + rows))

    rows = run_cells(
        model,
        processor,
        frames,
        question,
        [c for c in cells if (c[0], c[1]) not in measured],
        new_tokens=new_tokens,
        progress=progress,
        repeats=repeats,
        on_row=report,
        notes=notes,
        evidence=evidence,
    )
    return ordered(kept + rows), notes


def median_report(reports: Sequence[Any]) -> Any:
    """A copy of the report whose TTFT is the median, with every timing (seconds) and the peak memory (bytes)
    replaced by its median over ``reports`` (repeats of one run: the accounting is identical across them). The
    reports themselves are left as they were."""
    import copy
    import statistics

    keys = ("ttft_s", "vision_s", "llm_prefill_s", "overhead_s", "decode_overhead_s", "decode_s", "peak_memory_bytes")
    best = copy.copy(sorted(reports, key=lambda r: r.ttft_s)[len(reports) // 2])
    for key in keys:
        setattr(best, key, statistics.median(getattr(r, key) for r in reports))
    return best


def run_cells(
    model: Any,
    processor: Any,
    frames: Any,
    question: str,
    cells: Sequence[tuple[str, float | None, Any]],
    *,
    new_tokens: int = 32,
    progress: bool = True,
    repeats: int = 1,
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
    notes: list[str] | None = None,
    evidence: Any = None,
) -> list[dict[str, Any]]:
    """Warm up, run the uncompressed reference, then each (label, target retention, method) cell; one row each.
    A cell the model refuses at ``apply`` (a budget its layers cannot meet, a tower a vision stage does not run on)
    is skipped with a line in ``notes``, when given; without ``notes`` the error propagates.
    With ``repeats`` > 1 every run (the reference too) is repeated and its timings are the medians
    (:func:`median_report`); the answer, tokens and accounting are the first repeat's (greedy: all alike).
    Every row carries ``run``, when this process started, since ratios are to that run's uncompressed row;
    ``on_row`` receives the rows so far after each one.

    Raises
    ------
    ValueError
        ``repeats`` < 1.
    """
    from tqdm.auto import tqdm

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (runs per cell, timings are their median), got {repeats}")

    def run(method: Any, label: str) -> Answer:
        answers = [
            ask(
                model,
                processor,
                frames,
                question,
                method,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                progress=False,
                label=label,
                evidence=evidence,
            )
            for _ in range(repeats)
        ]
        if repeats > 1:
            answers[0].report = median_report([a.report for a in answers])
        return answers[0]

    started = datetime.datetime.now().isoformat(timespec="seconds")
    none = get_method("none")
    ask(model, processor, frames, question, none, max_new_tokens=2, progress=False)  # warm-up
    base = run(none, "uncompressed")
    rows: list[dict[str, Any]] = []

    def add(name: str, r: float | None, answer: Answer) -> None:
        rows.append({**BenchRow(name, r, answer).as_dict(base), "run": started})
        row = rows[-1]
        if notes is not None and row["retention"] > 1:  # METok on a short clip: every frame whole, its newline
            notes.append(
                f"{name}: enters the LLM with {row['visual_tokens_llm']} visual tokens, more than uncompressed, as it "
                "kept every frame whole here and its own newlines count as visual tokens (they take part of its "
                f"budget); its saving is inside the LLM: {row['mean_alive_retention']:.1%} of the visual tokens "
                "alive per layer"
            )
        if on_row is not None:
            on_row(rows)

    add("uncompressed", 1.0, base)
    for name, r, method in tqdm(cells, desc="benchmark", unit="run", disable=not progress):
        try:
            answer = run(method, name)
        except (BudgetError, IncompatibleStagesError) as exc:  # refused at apply, before any encoding
            if notes is None:
                raise
            notes.append(_skipped(name, r, exc))
            continue
        add(name, r, answer)
    return rows
