"""``python -m vidpress.integrations.vllm.demo``: the plugin end to end on tiny random checkpoints of every family.

For LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE it builds a random checkpoint of the real
architecture, then asks vLLM about the bundled clip twice: without a ``vidpress`` entry (vLLM's own count of video
placeholders) and with the chosen method (the stage's declared count), and prints both counts, the declared one and
the generated tokens. Answers are meaningless (random weights); counts and completion are what it shows.

    python -m vidpress.integrations.vllm.demo --method visionzip --retention 0.25
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="visionzip", help="a servable method (ttm, visionzip, fastvid, ...)")
    parser.add_argument("--retention", type=float, default=0.25, help="retention of methods that take one")
    parser.add_argument("--set", action="append", default=[], help="NAME=VALUE, another hyperparameter")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from vllm import LLM, SamplingParams

    import vidpress
    from vidpress.cli import bundled_clip

    from ...stages import declared_count
    from .checkpoints import FAMILIES, engine_args, random_checkpoint, save_for_vllm, video_grid, video_request
    from .serving import serving_config

    entry = {"method": args.method, **dict(_pair(s) for s in args.set)}
    if args.method not in ("ttm",) and "retention" not in entry:
        entry["retention"] = args.retention
    stage = serving_config({"vidpress": entry}).stage  # fails here, before any engine, on a bad entry
    if stage is None:
        parser.error(f"--method {args.method}: the demo compares a method with vLLM's own model; name one")
    clip = vidpress.load_video(bundled_clip(), args.frames).frames
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for family in FAMILIES:
            loaded = random_checkpoint(family)
            path = save_for_vllm(loaded, os.path.join(folder, family))
            request = video_request(family, clip, loaded.processor.image_size)
            temporal, per_frame = video_grid(family, len(clip), loaded.processor.image_size)
            newline = 1 if family == "llava_onevision" else 0
            declared = declared_count(stage, temporal, per_frame) + newline
            row: dict[str, Any] = {"family": family, "method": entry, "declared": declared}
            for label, settings in (("uncompressed", None), ("compressed", entry)):
                llm = LLM(**engine_args(path, settings))
                out = llm.generate(request, SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)[0]
                video_id = loaded.model.config.video_token_id
                row[f"{label}_placeholders"] = sum(t == video_id for t in out.prompt_token_ids)
                row[f"{label}_generated"] = list(out.outputs[0].token_ids)
                del llm
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(
                f"{r['family']}: video placeholders {r['uncompressed_placeholders']} uncompressed -> "
                f"{r['compressed_placeholders']} with {entry} (declared {r['declared']}); generated "
                f"{len(r['compressed_generated'])} tokens"
            )
    return 0 if all(r["compressed_placeholders"] == r["declared"] for r in rows) else 1


def _pair(text: str) -> tuple[str, object]:
    key, _, raw = text.partition("=")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


if __name__ == "__main__":
    sys.exit(main())
