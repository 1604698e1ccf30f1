"""Accuracy retained per method and retention on the trained testbed (procedural video QA, docs/evaluation.md).

    python benchmarks/accuracy.py [-n 200] [--retentions 0.5,0.25,0.15,0.1] [--methods all] [--resume]
    python benchmarks/accuracy.py --split needle -n 100 --resume   # the needle split (small details)

Every method x retention (``vidpress bench``'s matrix, same cells and skip notes) on the first ``n`` questions
of the test split (or the needle split), against the uncompressed testbed on the same questions. Each video is
rendered and tokenised once. Writes benchmarks/results/<device>/accuracy.{csv,json,md} and
accuracy_vs_flops.png (``--split needle``: needle_accuracy.* and needle_accuracy_vs_flops.png; accuracy
retained vs LLM prefill FLOPs, 95 % Wilson intervals as error bars). accuracy.csv/json are rewritten after
every cell, so an interrupted run keeps what it measured; ``--resume`` keeps those cells (same questions)
and runs only the others.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from vidpress.bench import cell_key, device_name, matrix_order, parse_retentions, plan, split_methods
from vidpress.bench_files import check_writable, resumed_notes, resumed_rows, write_rows
from vidpress.evaluate import evaluate, prepare
from vidpress.methods import METHODS, get_method
from vidpress.models.loading import load_model
from vidpress.testbed.needle import make_needle_split
from vidpress.testbed.scenes import make_split

STEMS = {"test": "accuracy", "needle": "needle_accuracy"}  #: each split's result files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--questions", type=int, default=200)
    parser.add_argument("--retentions", default="0.5,0.25,0.15,0.1")
    parser.add_argument("--methods", default="all", help="comma-separated names, or all")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--model", default="testbed", help="testbed (trained), or any --model of the CLI (smoke runs)")
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).parent / "results" / device_name())
    parser.add_argument("--resume", action="store_true", help="keep the cells already in OUT/accuracy.json")
    parser.add_argument("--split", choices=list(STEMS), default="test", help="needle: small details (300 questions)")
    args = parser.parse_args()
    stem = STEMS[args.split]
    methods = [m for m in METHODS if m != "none"] if args.methods == "all" else split_methods(args.methods)
    retentions = parse_retentions(args.retentions)
    plan(methods, retentions)  # unknown methods fail before any work
    check_writable(args.out)
    done = resumed_rows(args.out, stem) if args.resume else []
    if done and {r["questions"] for r in done} != {args.questions}:
        raise SystemExit(
            f"--resume: {args.out / (stem + '.json')} was measured on {sorted({r['questions'] for r in done})}"
            f" questions, this run asks {args.questions}; use the same -n or drop --resume"
        )
    torch.set_grad_enabled(False)
    loaded = load_model(args.model)
    cells, notes = plan(methods, retentions, depth=loaded.model.config.text_config.num_hidden_layers)
    measured = {cell_key(r) for r in done}
    if args.split == "needle" and not 0 < args.questions <= 300:
        raise SystemExit(f"the needle split has 300 questions; -n must be 1-300, got {args.questions}")
    samples = (make_needle_split(300, args.frames) if args.split == "needle" else make_split("test", 560))[
        : args.questions
    ]
    protocol = loaded.protocol
    inputs = prepare(loaded.processor, samples, frames=args.frames, protocol=protocol)
    started = time.time()
    meta = {
        "device": device_name(),
        "model": loaded.description,
        "split": args.split,
        "questions": len(samples),
        "frames": args.frames,
        "protocol": protocol,
        "merge_repeats": protocol == "describe",
        "chance": 0.25,
    }
    base = evaluate(
        loaded.model,
        loaded.processor,
        samples,
        get_method("none"),
        inputs=inputs,
        label="uncompressed",
        protocol=protocol,
    )
    # every resumed cell stays, with its skip notes (--resume --methods A,B); only the others are measured
    notes = resumed_notes(args.out, stem, notes) if done else notes
    rows = list(done)
    for name, retention, method in [("uncompressed", 1.0, None)] + cells:
        if (name, retention) in measured:
            continue
        result = (
            base
            if method is None
            else evaluate(loaded.model, loaded.processor, samples, method, inputs=inputs, label=name, protocol=protocol)
        )
        low, high = result.interval
        row = {
            "method": name,
            "target_retention": retention,
            "accuracy": result.accuracy,
            "ci_low": low,
            "ci_high": high,
            "accuracy_retained": result.accuracy / base.accuracy if base.correct else float("nan"),
            "prefill_flops_ratio": result.prefill_flops / base.prefill_flops,
            "correct": result.correct,
            "questions": result.total,
        }
        rows = sorted([*rows, row], key=matrix_order)
        write_rows(rows, notes, {**meta, "partial": True}, args.out, stem)
        print(
            f"{name:>14} {'' if retention is None else f'{retention:4.0%}'}  accuracy {result.accuracy:6.1%} "
            f"[{low:.1%}, {high:.1%}]  retained {row['accuracy_retained']:6.1%}  "
            f"prefill FLOPs {row['prefill_flops_ratio']:.3f}",
            flush=True,
        )
    meta["seconds"] = round(time.time() - started)
    if done:
        meta["resumed_cells"] = len(measured)
    if not loaded.trained:
        print("note: untrained model - accuracy is at or below chance; this run only checks the matrix runs")
    write(rows, notes, meta, args.out, stem)


def write(rows, notes, meta, out: Path, stem: str = "accuracy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_rows(rows, notes, meta, out, stem)
    lines = [
        "| method | retention | accuracy | 95 % CI | accuracy retained | LLM prefill FLOPs / uncompressed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "—" if r["target_retention"] is None else f"{r['target_retention']:.0%}"
        lines.append(
            f"| {r['method']} | {target} | {r['accuracy']:.1%} | {r['ci_low']:.1%}–{r['ci_high']:.1%} "
            f"| {r['accuracy_retained']:.1%} | {r['prefill_flops_ratio']:.3f} |"
        )
    (out / f"{stem}.md").write_text(
        f"# Accuracy retained on the testbed ({meta.get('split', 'test')} split)\n\n"
        + f"```json\n{json.dumps(meta, indent=2)}\n```\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "".join(f"- {n}\n" for n in notes)
    )
    base_acc = rows[0]["accuracy"]
    panels = 2 if base_acc else 1  # accuracy retained is undefined when the uncompressed model scores 0
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5), constrained_layout=True, squeeze=False)
    for i, name in enumerate(dict.fromkeys(r["method"] for r in rows)):
        mine = sorted((r for r in rows if r["method"] == name), key=lambda r: r["prefill_flops_ratio"])
        x = [r["prefill_flops_ratio"] for r in mine]
        err = [[r["accuracy"] - r["ci_low"] for r in mine], [r["ci_high"] - r["accuracy"] for r in mine]]
        for ax, scale in zip(axes[0], (1.0, base_acc)):
            ax.errorbar(
                x,
                [r["accuracy"] / scale for r in mine],
                yerr=[[e / scale for e in side] for side in err],
                fmt="-o",
                capsize=3,
                label=name,
                color=f"C{i}",
            )
    for ax, scale, label in zip(axes[0], (1.0, base_acc), ("accuracy", "accuracy retained (of uncompressed)")):
        ax.axhline(meta["chance"] / scale, ls=":", color="gray", label="chance")
        ax.set(
            xlabel="LLM prefill FLOPs / uncompressed",
            ylabel=label,
            xscale="log",
            title=f"testbed, {meta['questions']} {meta.get('split', 'test')} questions, {meta['frames']} frames",
        )
    axes[0][0].legend(fontsize=8)
    fig.savefig(out / f"{stem}_vs_flops.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
