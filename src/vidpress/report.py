"""`Report`: what one request cost — tokens per layer, FLOPs, KV bytes and measured timings.

Timings (seconds): ``ttft_s`` from the model call that starts the request to its first logits (vision
encoder, projector, pre-LLM stage and LLM prefill); ``vision_s`` the vision tower + projector + pooling;
``llm_prefill_s`` the LLM's prefill alone; ``overhead_s`` / ``decode_overhead_s`` vidpress's own work
(similarities, scoring, selection) during prefill / summed over decoding; ``decode_s`` the sum of decoding
forwards. When ``generate`` encodes the video before the first forward, that encoding is added to TTFT. Peak
memory is in bytes above the start of the
request (see :mod:`vidpress.runtime.memory`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.table import Table

from .accounting import Accounting, spec_from_config
from .evidence import EvidenceSurvival

if TYPE_CHECKING:
    from .runtime.session import Session


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def human_flops(n: float) -> str:
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} FLOPs"


#: What the decode rows say when generation stopped at its first token (nothing was decoded to measure).
NO_STEP = "no decoding step: generation stopped at its first token (min_new_tokens makes it decode)"


def _events_of(session: Any) -> dict[str, Any] | None:
    info = session.stage_info
    first = info[0] if isinstance(info, list) and info else None
    return first.as_dict() if first is not None and hasattr(first, "as_dict") else None


def _evidence_of(session: Any, tracked: bool) -> EvidenceSurvival | None:
    """Where the session's evidence went; decode shares are the stored ones when no hook watched decoding."""
    found = session.evidence
    if found is None:
        return None
    strict, merged, weight = found.pre_llm
    steps = session.decode_steps
    stored = [found.shares(session.layout(layer, stored=True))[1] for layer in range(session.num_layers)]
    decode = [s / steps for s in found.decode_sum] if steps and tracked else stored
    return EvidenceSurvival(
        strict, merged, weight, [p[0] for p in found.prefill], [p[1] for p in found.prefill], decode
    )


@dataclass
class Report:
    """Accounting plus measurements of one request."""

    method: str
    accounting: Accounting
    decode_steps: int
    ttft_s: float
    vision_s: float
    llm_prefill_s: float
    overhead_s: float
    decode_overhead_s: float
    decode_s: float
    peak_memory_bytes: int
    device: str
    events: dict[str, Any] | None = None  # METok stage 1's plan of the first video (EventPlan.as_dict())
    evidence: EvidenceSurvival | None = None  # where the evidence went, when the request traced it

    @property
    def decode_tokens_per_s(self) -> float:
        """Decoding forwards per second (the first token comes from prefill and is not counted)."""
        return self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")

    @classmethod
    def from_session(cls, model: Any, session: Session, method: str) -> Report:
        dtype_bytes = next(model.parameters()).element_size()
        spec = spec_from_config(
            model.config,
            name=getattr(model.config, "_name_or_path", None) or "model",
            dtype_bytes=dtype_bytes,
            tokens_per_frame=session.tokens_per_frame,
        )
        spec = type(spec)(**{**spec.__dict__, "tokens_per_frame": session.tokens_per_frame})
        layers = range(session.num_layers)
        prefill = [session.visual_count(layer) for layer in layers]
        steps = session.decode_steps
        tracked = session.stages.decode is not None or session.stages.prefill is not None  # attention hooks count
        decode = [
            session.decode_visual_sum[layer] / steps if steps and tracked else float(prefill[layer]) for layer in layers
        ]
        stored = [session.visual_count(layer, stored=True) for layer in layers]
        encoded = session.encoded_frames if session.encoded_frames != session.frames else None
        accounting = Accounting(
            spec,
            session.frames,
            prefill,
            decode,
            stored,
            session.other_tokens,
            encoded,
            session.vision_passes,
            session.vision_merges,
            session.projected_tokens,
        )
        t = session.timings
        return cls(
            method,
            accounting,
            steps,
            t.ttft_s,
            t.vision_s,
            t.llm_prefill_s,
            t.overhead_s,
            t.decode_overhead_s,
            t.decode_s,
            session.peak_memory_bytes,
            str(next(model.parameters()).device),
            _events_of(session),
            _evidence_of(session, tracked),
        )

    def as_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "device": self.device, **self.accounting.as_dict()}
        out.update(
            decode_steps=self.decode_steps,
            ttft_s=self.ttft_s,
            vision_s=self.vision_s,
            llm_prefill_s=self.llm_prefill_s,
            overhead_s=self.overhead_s,
            decode_overhead_s=self.decode_overhead_s,
            decode_s=self.decode_s,
            decode_tokens_per_s=self.decode_tokens_per_s,
            peak_memory_bytes=self.peak_memory_bytes,
        )
        if self.events is not None:
            out["events"] = self.events
        if self.evidence is not None:
            out["evidence"] = self.evidence.as_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def rows(self) -> list[tuple[str, str]]:
        a, steps = self.accounting, self.decode_steps
        layers = len(a.prefill_visual)
        return [
            ("visual tokens in", f"{a.visual_in} ({a.frames} frames x {a.spec.tokens_per_frame})"),
            ("visual tokens entering the LLM", f"{a.prefill_visual[0]} ({a.retention:.1%})"),
            ("mean visual tokens alive per layer, prefill", f"{sum(a.prefill_visual) / layers:.1f}"),
            ("mean visual KV attended per layer, decode", f"{sum(a.decode_visual) / layers:.1f}" if steps else NO_STEP),
            ("LLM prefill FLOPs", human_flops(a.prefill_flops)),
            ("vision encoder + projector FLOPs", human_flops(a.vision_flops + a.projector_flops)),
            ("decode FLOPs per token", human_flops(a.decode_flops_per_token)),
            ("KV cache after prefill", f"{human_bytes(a.kv_bytes)} (visual {human_bytes(a.visual_kv_bytes)})"),
            ("visual KV read per decode step", human_bytes(a.attended_visual_kv_bytes)),
            ("TTFT", f"{self.ttft_s * 1e3:.1f} ms"),
            ("  vision encoder", f"{self.vision_s * 1e3:.1f} ms"),
            ("  LLM prefill", f"{self.llm_prefill_s * 1e3:.1f} ms"),
            ("  vidpress overhead (prefill)", f"{self.overhead_s * 1e3:.1f} ms"),
            ("decode", f"{self.decode_tokens_per_s:.1f} tok/s over {steps} steps" if steps else NO_STEP),
            ("  vidpress overhead (decode, total)", f"{self.decode_overhead_s * 1e3:.1f} ms"),
            ("peak memory", human_bytes(self.peak_memory_bytes)),
        ]

    def table(self) -> Table:
        table = Table(title=f"vidpress report: {self.method} on {self.device}")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for name, value in self.rows():
            table.add_row(name, value)
        return table

    def __str__(self) -> str:
        console = Console(width=100, record=True, file=io.StringIO())
        console.print(self.table())
        return console.export_text()


@dataclass(frozen=True)
class Figure:
    """One figure a comparison reports: ``key`` names its ratio (``<key>_ratio``), ``label`` its table row."""

    key: str
    label: str
    get: Callable[[Report], float]


# What every comparison (vidpress run --compare, vidpress bench, the benchmark scripts) reports, in one place.
FIGURES = (
    Figure("visual_tokens_llm", "visual tokens entering the LLM", lambda r: r.accounting.prefill_visual[0]),
    Figure("prefill_flops", "LLM prefill FLOPs", lambda r: r.accounting.prefill_flops),
    Figure("kv_bytes", "KV cache after prefill (bytes)", lambda r: r.accounting.kv_bytes),
    Figure("visual_kv_bytes", "visual KV after prefill (bytes)", lambda r: r.accounting.visual_kv_bytes),
    Figure(
        "decode_visual_kv_read",
        "visual KV read per decode step (bytes)",
        lambda r: r.accounting.attended_visual_kv_bytes,
    ),
    Figure("ttft", "TTFT (s)", lambda r: r.ttft_s),
    Figure("llm_prefill", "LLM prefill time (s)", lambda r: r.llm_prefill_s),
    Figure("decode_tok_s", "decode tok/s", lambda r: r.decode_tokens_per_s),
    Figure("peak_memory", "peak memory (bytes)", lambda r: r.peak_memory_bytes),
)


def _ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")


def ratios(baseline: Report, other: Report) -> dict[str, float]:
    """``other`` against ``baseline`` (the uncompressed run of the same request): ``<key>_ratio`` = other /
    baseline for every figure in :data:`FIGURES` (nan where the baseline is 0), the speedups ``ttft_speedup`` and
    ``llm_prefill_speedup`` (baseline / other), and ``ttft_limit_ratio``: the TTFT reachable if only the LLM
    prefill shrank, ``other``'s vision time plus the uncompressed prefill time scaled by the prefill FLOPs kept,
    over the uncompressed TTFT."""
    out = {f"{f.key}_ratio": _ratio(f.get(other), f.get(baseline)) for f in FIGURES}
    out["ttft_speedup"] = _ratio(baseline.ttft_s, other.ttft_s)
    out["llm_prefill_speedup"] = _ratio(baseline.llm_prefill_s, other.llm_prefill_s)
    ideal_prefill = baseline.llm_prefill_s * out["prefill_flops_ratio"]
    out["ttft_limit_ratio"] = _ratio(other.vision_s + ideal_prefill, baseline.ttft_s)
    return out


def compare_table(baseline: Report, others: list[Report]) -> Table:
    table = Table(title="compressed / uncompressed")
    table.add_column("figure")
    table.add_column(baseline.method, justify="right")
    for report in others:
        table.add_column(report.method, justify="right")
        table.add_column("ratio", justify="right")
    for figure in FIGURES:
        row = [figure.label, f"{figure.get(baseline):.4g}"]
        for report in others:
            value, base = figure.get(report), figure.get(baseline)
            row += [f"{value:.4g}", f"{value / base:.3f}" if base else "n/a"]
        table.add_row(*row)
    return table
