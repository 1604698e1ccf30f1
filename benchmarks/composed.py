"""Composed methods vs their parts on the default model (32 frames of a real video), fidelity and cost.

    python benchmarks/composed.py [VIDEO]

Writes benchmarks/results/<device>/composed.{json,md}. Used to pick the composed preset documented in the
README.
"""

import argparse
import json
from pathlib import Path

import torch
from common import DEFAULT_VIDEO

import vidpress
from vidpress.bench import device_name, run_cells
from vidpress.bench_files import markdown
from vidpress.method import compose
from vidpress.methods import FastV
from vidpress.models.loading import load_model
from vidpress.stages.decode.dynamic_kv import DynamicKV
from vidpress.stages.pre_llm.event_pooling import EventPooling
from vidpress.stages.pre_llm.fastvid import FastVID
from vidpress.stages.pre_llm.temporal_merge import TemporalMerge
from vidpress.stages.prefill.attention_rank import AttentionRank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", default=DEFAULT_VIDEO)
    video = parser.parse_args().video
    torch.set_grad_enabled(False)
    loaded = load_model("default")
    frames = vidpress.load_video(video, 32).frames
    question = "Describe what happens in this video."
    configs = {
        "fastv r=0.75": FastV(k=2, r=0.75),
        "metok": vidpress.METok(),
        "ttm k=0.7 + fastv r=0.5 + dynamic-kv": compose(TemporalMerge(k=0.7), FastV(k=2, r=0.5), DynamicKV(l=3, p=0.5)),
        "metok stage 1 + fastv r=0.5": compose(EventPooling(), FastV(k=2, r=0.5)),
        "metok stage 1 + fastv r=0.5 + dynamic-kv": compose(EventPooling(), FastV(k=2, r=0.5), DynamicKV(l=3, p=0.5)),
        # a three-paper composition: FastVID's pre-LLM stage (its segments act as METok's events), METok's
        # per-event prefill pruning at two of its layers, DyCoke's decode pruning after the last drop
        "fastvid 50% + metok prefill (3, 10) + dynamic-kv": compose(
            FastVID(retention=0.5),
            AttentionRank(schedule=((3, 0.76, 0.38), (10, 0.76, 0.0))),
            DynamicKV(l=11, p=0.5),
        ),
        "fastvid 50% + fastv r=0.5 + dynamic-kv": compose(
            FastVID(retention=0.5), FastV(k=2, r=0.5), DynamicKV(l=3, p=0.5)
        ),
    }
    cells = [(name, None, method) for name, method in configs.items()]
    rows = run_cells(loaded.model, loaded.processor, frames, question, cells, new_tokens=32)
    table = markdown(rows)
    print(table)
    folder = Path(__file__).parent / "results" / device_name()
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"video": video, "frames": 32, "new_tokens": 32, "model": loaded.description, "device": device_name()}
    (folder / "composed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (folder / "composed.md").write_text(
        f"# Composed methods\n\nCommand: `python benchmarks/composed.py`\n\n"
        f"```json\n{json.dumps(meta, indent=2)}\n```\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
