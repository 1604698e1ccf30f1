"""Shared by the benchmark scripts: run methods against the uncompressed model in one process, print ratios,
write JSON + Markdown under benchmarks/results/<device>/."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch

import vidpress
from vidpress.bench import device_name, median_report
from vidpress.cli import bundled_clip
from vidpress.methods import get_method
from vidpress.models.loading import load_model
from vidpress.pipeline import ask
from vidpress.report import ratios

SHARED_VIDEO = Path(__file__).resolve().parents[2] / "shared/data/videos/big_buck_bunny_first60s_640x360.mp4"
DEFAULT_VIDEO = str(SHARED_VIDEO if SHARED_VIDEO.exists() else bundled_clip())
HEADER = [
    "method",
    "visual_tokens_llm",
    "prefill_flops_ratio",
    "llm_prefill_speedup",
    "ttft_speedup",
    "decode_tok_s_ratio",
    "peak_memory_ratio",
    "kv_bytes_ratio",
    "visual_kv_bytes_ratio",
    "decode_visual_kv_read_ratio",
    "overhead_pct_of_llm_prefill",
    "overhead_pct_of_ttft",
    "ttft_s",
    "llm_prefill_s",
    "decode_tok_s",
]


def ratio_row(name: str, r, base) -> dict:
    return {
        "method": name,
        "visual_tokens_llm": r.accounting.prefill_visual[0],
        **ratios(base, r),
        "overhead_pct_of_llm_prefill": 100 * r.overhead_s / r.llm_prefill_s,
        "overhead_pct_of_ttft": 100 * r.overhead_s / r.ttft_s,
        "ttft_s": r.ttft_s,
        "llm_prefill_s": r.llm_prefill_s,
        "vision_s": r.vision_s,
        "decode_tok_s": r.decode_tokens_per_s,
        "peak_memory_bytes": r.peak_memory_bytes,
    }


def compare(configs: dict, *, video: str, frames: int, repeats: int, new_tokens: int, model: str = "default"):
    """Run ``configs`` (label -> method; the first must be uncompressed) and return (rows, meta)."""
    torch.set_grad_enabled(False)
    loaded = load_model(model)
    clip = vidpress.load_video(video, frames).frames
    question = "Describe what happens in this video."
    ask(loaded.model, loaded.processor, clip, question, get_method("none"), max_new_tokens=2, progress=False)
    reports = {}
    for name, method in configs.items():
        runs = [
            ask(
                loaded.model,
                loaded.processor,
                clip,
                question,
                method,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                progress=False,
                label=name,
            ).report
            for _ in range(repeats)
        ]
        reports[name] = median_report(runs)
    base = next(iter(reports.values()))
    rows = [ratio_row(name, r, base) for name, r in reports.items()]
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": device_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "video": video,
        "frames": frames,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "model": loaded.description,
    }
    return rows, meta


def write(stem: str, title: str, command: str, rows: list[dict], meta: dict, out: str) -> Path:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{row[h]:.3f}" if isinstance(row[h], float) else str(row[h]) for h in HEADER) + " |"
        )
    table = "\n".join(lines)
    print(table)
    folder = Path(out) / meta["device"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (folder / f"{stem}.md").write_text(
        f"# {title}\n\n```json\n{json.dumps(meta, indent=2)}\n```\n\nCommand: `{command}`\n\n{table}\n"
    )
    return folder


def parser(doc: str, frames: int):
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", nargs="?", default=DEFAULT_VIDEO)
    p.add_argument("--frames", type=int, default=frames)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--model", default="default")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return p
