"""Uncompressed vs DyCoke (fixed and faithful) on the default model, 32 frames of a real video, one run.

    python benchmarks/dycoke.py [VIDEO] [--frames 32] [--repeats 3] [--new-tokens 16]

Prints ratios to the uncompressed model (prefill FLOPs, TTFT, LLM prefill time, decode tok/s, peak memory,
DyCoke's own overhead) and writes JSON + Markdown under benchmarks/results/<device>/. Timings are medians
over ``--repeats`` runs after a warm-up; decoding is forced to ``--new-tokens`` tokens (the default model's
projector is untrained, so it would otherwise stop at once).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
from pathlib import Path

import torch

import vidpress
from vidpress.cli import bundled_clip
from vidpress.methods import get_method
from vidpress.models.default import load_model
from vidpress.pipeline import ask

SHARED_VIDEO = Path(__file__).resolve().parents[2] / "shared/data/videos/big_buck_bunny_first60s_640x360.mp4"


def median_report(reports):
    """The report whose TTFT is the median, with every timing replaced by its median over repeats."""
    keys = ("ttft_s", "vision_s", "llm_prefill_s", "overhead_s", "decode_overhead_s", "decode_s", "peak_memory_bytes")
    best = sorted(reports, key=lambda r: r.ttft_s)[len(reports) // 2]
    for key in keys:
        setattr(best, key, statistics.median(getattr(r, key) for r in reports))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", default=str(SHARED_VIDEO if SHARED_VIDEO.exists() else bundled_clip()))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    loaded = load_model(args.model)
    frames = vidpress.load_video(args.video, args.frames).frames
    question = "Describe what happens in this video."
    configs = {"uncompressed": get_method("none"), "dycoke fixed (K=0.7)": vidpress.DyCoke(k=0.7),
               "dycoke faithful (K=0.7)": vidpress.DyCoke(k=0.7, mode="faithful")}
    ask(loaded.model, loaded.processor, frames, question, get_method("none"), max_new_tokens=2, progress=False)
    reports = {}
    for name, method in configs.items():
        runs = [ask(loaded.model, loaded.processor, frames, question, method, max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, progress=False, label=name).report for _ in range(args.repeats)]
        reports[name] = median_report(runs)
    base = reports["uncompressed"]
    device = (f"cpu-{platform.machine()}-{os.cpu_count()}cores" if not torch.cuda.is_available()
              else torch.cuda.get_device_name().replace(" ", "_"))
    rows = []
    for name, r in reports.items():
        rows.append({
            "method": name, "visual_tokens_llm": r.accounting.prefill_visual[0],
            "prefill_flops_ratio": r.accounting.prefill_flops / base.accounting.prefill_flops,
            "kv_bytes_ratio": r.accounting.kv_bytes / base.accounting.kv_bytes,
            "decode_visual_kv_read_ratio": r.accounting.attended_visual_kv_bytes / base.accounting.attended_visual_kv_bytes,
            "llm_prefill_speedup": base.llm_prefill_s / r.llm_prefill_s,
            "ttft_speedup": base.ttft_s / r.ttft_s,
            "decode_tok_s_ratio": r.decode_tokens_per_s / base.decode_tokens_per_s,
            "peak_memory_ratio": r.peak_memory_bytes / base.peak_memory_bytes if base.peak_memory_bytes else float("nan"),
            "overhead_pct_of_llm_prefill": 100 * r.overhead_s / r.llm_prefill_s,
            "ttft_s": r.ttft_s, "llm_prefill_s": r.llm_prefill_s, "vision_s": r.vision_s,
            "decode_tok_s": r.decode_tokens_per_s, "peak_memory_bytes": r.peak_memory_bytes,
        })
    header = ["method", "visual_tokens_llm", "prefill_flops_ratio", "llm_prefill_speedup", "ttft_speedup",
              "decode_tok_s_ratio", "peak_memory_ratio", "kv_bytes_ratio", "decode_visual_kv_read_ratio",
              "overhead_pct_of_llm_prefill", "ttft_s", "llm_prefill_s", "decode_tok_s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[h]:.3f}" if isinstance(row[h], float) else str(row[h]) for h in header) + " |")
    table = "\n".join(lines)
    print(table)
    meta = {"date": datetime.date.today().isoformat(), "device": device, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "video": args.video, "frames": args.frames,
            "new_tokens": args.new_tokens, "repeats": args.repeats, "model": loaded.description}
    out = Path(args.out) / device
    out.mkdir(parents=True, exist_ok=True)
    (out / "dycoke.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "dycoke.md").write_text(f"# DyCoke vs uncompressed\n\n{json.dumps(meta, indent=2)}\n\n"
                                   "Command: `python benchmarks/dycoke.py`\n\n" + table + "\n")


if __name__ == "__main__":
    main()
