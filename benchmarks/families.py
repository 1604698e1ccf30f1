"""Every method on every supported model family, uncompressed vs each method in one run per family.

    python benchmarks/families.py [VIDEO] [--frames 32] [--retention 0.25]

Each family is a small random-weight config of its real architecture (28 LLM layers like the 7B models so
every method's default schedule fits, hidden 256, 224 px frames): LLaVA-OneVision, LLaVA-NeXT-Video
(LongVA's layout), Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE (256 px: Qwen3-VL's patch is 16). Methods with a
retention knob run at ``--retention``; METok at its defaults. Writes benchmarks/results/<device>/families.{json,md}:
ratios to each family's uncompressed run.
"""

import argparse
import datetime
import json
from pathlib import Path

import torch
from common import DEFAULT_VIDEO

import vidpress
from vidpress.bench import device_name, plan, run_cells
from vidpress.bench_files import COLUMNS, markdown
from vidpress.methods import METHODS
from vidpress.models.random import random_llava_next_video, random_model, random_qwen2_5_vl, random_qwen3_vl

FAMILIES = {
    "llava-onevision": lambda: random_model(layers=28, hidden=256, image_size=224),
    "llava-next-video": lambda: random_llava_next_video(layers=28, hidden=256, image_size=224),
    "qwen2.5-vl": lambda: random_qwen2_5_vl(layers=28, hidden=256, image_size=224),
    "qwen3-vl": lambda: random_qwen3_vl(layers=28, hidden=256, image_size=256),
    "qwen3-vl-moe": lambda: random_qwen3_vl(layers=28, hidden=256, image_size=256, moe=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--retention", type=float, default=0.25)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    frames = vidpress.load_video(args.video, args.frames).frames
    cells, notes = plan(list(METHODS), [args.retention])
    sections, results = [], {}
    for family, build in FAMILIES.items():
        loaded = build()
        rows = run_cells(
            loaded.model,
            loaded.processor,
            frames,
            "Describe what happens in this video.",
            cells,
            new_tokens=16,
            notes=(family_notes := []),
        )
        notes += [f"{family}: {n}" for n in family_notes]
        results[family] = {"model": loaded.description, "rows": rows}
        sections.append(f"## {family}\n\n{loaded.description}\n\n{markdown(rows)}\n")
        print(sections[-1])
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": device_name(),
        "video": args.video,
        "frames": args.frames,
        "retention": args.retention,
        "new_tokens": 16,
        "columns": list(COLUMNS),
    }
    folder = Path(__file__).parent / "results" / device_name()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "families.json").write_text(json.dumps({"meta": meta, "families": results, "notes": notes}, indent=2))
    (folder / "families.md").write_text(
        f"# Every method on every family\n\nCommand: `python benchmarks/families.py`\n\n```json\n"
        f"{json.dumps(meta, indent=2)}\n```\n\nRandom weights: fidelity columns say how far outputs move, not "
        f"accuracy.\n\n" + "\n".join(sections) + "".join(f"- {n}\n" for n in notes)
    )


if __name__ == "__main__":
    main()
