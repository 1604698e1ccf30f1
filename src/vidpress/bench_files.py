"""A benchmark's result files: the table's columns, its CSV/JSON rows (written cell by cell and read back to
resume), its markdown and its figures (``vidpress bench``, ``benchmarks/``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .errors import InvalidParameterError

# The ratios (vidpress.report.ratios) a bench row carries, in its table's order.
RATIOS = (
    "prefill_flops_ratio",
    "kv_bytes_ratio",
    "ttft_ratio",
    "ttft_limit_ratio",
    "llm_prefill_speedup",
    "decode_tok_s_ratio",
    "peak_memory_ratio",
)


COLUMNS = (
    "method",
    "target_retention",
    "retention",
    "mean_alive_retention",
    "visual_tokens_llm",
    *RATIOS,
    "first_token_kl",
    "first_token_top1_agree",
    "greedy_token_agreement",
)


def best_by_retention(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target retention: the method with the lowest first-token KL, next to every peer's."""
    lines = []
    for r in sorted(
        {row["target_retention"] for row in rows if row["target_retention"] not in (None, 1.0)}, reverse=True
    ):
        cell = sorted((row for row in rows if row["target_retention"] == r), key=lambda row: row["first_token_kl"])
        peers = ", ".join(
            f"{row['method']} KL {row['first_token_kl']:.3f} top-1 {row['first_token_top1_agree']:.0f} "
            f"greedy {row['greedy_token_agreement']:.2f}"
            for row in cell
        )
        lines.append(f"{r:.0%}: best {cell[0]['method']} ({peers})")
    return lines


def markdown(rows: list[dict[str, Any]]) -> str:
    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in COLUMNS) + " |" for row in rows]  # resumed rows may lack one
    return "\n".join(lines)


def write_rows(rows: list[dict[str, Any]], notes: list[str], meta: dict[str, Any], out: Path, stem: str) -> None:
    """``<stem>.csv`` (one line per row) and ``<stem>.json`` (meta, rows, notes) under ``out``, created if needed."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), restval="")
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows, "notes": notes}, indent=2))


def write_outputs(rows: list[dict[str, Any]], notes: list[str], meta: dict[str, Any], out: Path) -> list[Path]:
    """bench.csv, bench.json, bench.md, fidelity_vs_flops.png, ttft.png under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_rows(rows, notes, meta, out, "bench")
    runs = sorted({row.get("run", "") for row in rows if row["method"] != "uncompressed"})
    if len(runs) > 1:
        notes = [
            f"cells measured by {len(runs)} runs ({', '.join(runs)}; column run of bench.json): each row's "
            "ratios are against its own run's uncompressed reference",
            *notes,
        ]
    note_text = "".join(f"- {n}\n" for n in best_by_retention(rows) + notes)
    (out / "bench.md").write_text(
        f"# vidpress bench\n\n```json\n{json.dumps(meta, indent=2)}\n```\n\n{markdown(rows)}\n\n{note_text}"
    )
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for name in methods:
        mine = sorted((r for r in rows if r["method"] == name), key=lambda r: r["prefill_flops_ratio"])
        x = [r["prefill_flops_ratio"] for r in mine]
        axes[0].plot(x, [r["first_token_kl"] for r in mine], "-o", label=name)
        axes[1].plot(x, [r["greedy_token_agreement"] for r in mine], "-o", label=name)
    axes[0].set(xlabel="LLM prefill FLOPs / uncompressed", ylabel="first-token KL (lower is better)", xscale="log")
    axes[1].set(xlabel="LLM prefill FLOPs / uncompressed", ylabel="greedy-token agreement", xscale="log")
    axes[0].legend(fontsize=8)
    fig.savefig(out / "fidelity_vs_flops.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.35), 4.5), constrained_layout=True)
    labels = [
        r["method"] + ("" if r["target_retention"] in (None, 1.0) else f" {r['target_retention']:.0%}") for r in rows
    ]
    ax.bar(range(len(rows)), [r["ttft_s"] for r in rows], color=[f"C{methods.index(r['method'])}" for r in rows])
    ax.set_xticks(range(len(rows)), labels, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel(f"TTFT (s), {meta.get('device', '')}")
    fig.savefig(out / "ttft.png", dpi=110)
    plt.close(fig)
    return [out / name for name in ("bench.csv", "bench.json", "bench.md", "fidelity_vs_flops.png", "ttft.png")]


def check_writable(out: Path) -> None:
    """Create ``out`` and check a file can be written there, before any work. Raises OSError naming it."""
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".vidpress-write-check"
    try:
        probe.write_text("")
    except OSError as exc:
        raise OSError(f"cannot write results to {out}: {exc.strerror or exc}; choose another --out folder") from exc
    probe.unlink()


def resumed_rows(out: Path, stem: str, reference: bool = False) -> list[dict[str, Any]]:
    """Rows already measured in ``out/<stem>.json`` (written cell by cell by an earlier, possibly interrupted,
    run), its uncompressed rows left out unless ``reference``: a run that compares against its own timings measures
    its own reference. [] when there is none.

    Raises
    ------
    InvalidParameterError
        The file exists but is not a results file.
    """
    path = out / f"{stem}.json"
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())["rows"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidParameterError(
            f"{path} is not a vidpress results file ({exc}); move it away or drop --resume"
        ) from exc
    return [row for row in rows if reference or row["method"] != "uncompressed"]


def resumed_notes(out: Path, stem: str, notes: list[str]) -> list[str]:
    """The skip notes already in ``out/<stem>.json`` followed by ``notes``, each once ([] of its own without one)."""
    path = out / f"{stem}.json"
    earlier = json.loads(path.read_text()).get("notes", []) if path.exists() else []
    return list(dict.fromkeys([*earlier, *notes]))
