"""Evidence survival per method and retention on the needle split (docs/evaluation.md).

    python benchmarks/evidence.py [--model testbed] [-n 300] [--retentions 0.5,0.25,0.15,0.1] [--methods all]
                                  [--resume]

Every method x retention (``vidpress bench``'s matrix, same cells and skip notes) on the first ``n`` needle videos
(12 frames): each video's needle is the evidence (``Sample.needle_masks``), each request runs the prefill and
``--new-tokens`` decoding steps, and the report's trace says where the needle went. Per cell: the mean share of
the needle reaching the LLM as its own tokens (strict) and inside merged tokens, each with a 95 % interval over
the videos (normal, from their spread), the share alive at the LLM's last layer, and the share in the KV each
layer attends to while decoding (mean over layers). Writes benchmarks/results/<device>/evidence_<model>.{csv,json,
md} and evidence_<model>_vs_retention.png, the CSV/JSON after every cell (``--resume`` keeps those cells).
Attention-based methods (FastV, PyramidDrop, METok's prefill and decode stages, DyCoke's decode stage, VisionZip,
FastVID and HoliTom by encoder attention) depend on the model: compare the testbed and the default model.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from vidpress.bench import (
    RETENTIONS,
    cell_key,
    device_name,
    matrix_order,
    missing_cells,
    parse_retentions,
    plan,
    split_methods,
)
from vidpress.bench_files import check_writable, resumed_notes, resumed_rows, write_rows
from vidpress.evaluate import mean_interval, prepare
from vidpress.methods import METHODS, apply, get_method
from vidpress.models.loading import load_model
from vidpress.testbed.needle import make_needle_split


def measure(model, processor, method, samples, inputs, new_tokens: int, label: str) -> dict:
    """One cell: the per-video traces of ``method`` on ``samples`` summarised."""
    from tqdm.auto import tqdm

    strict, merged, weight, alive, last, decode, kept, kept_alive = [], [], [], [], [], [], [], []
    end = processor.tokenizer.eos_token_id
    with apply(model, method) as run, torch.inference_mode():
        for sample, prepared in zip(tqdm(samples, desc=f"evidence ({label})"), inputs):
            run.set_evidence(torch.from_numpy(sample.needle_masks(12)))
            model.generate(
                **prepared,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=end,
            )
            report = run.report
            found = report.evidence
            strict.append(found.strict)
            merged.append(found.merged)
            weight.append(found.merged_weight)
            alive.append(sum(found.prefill_reached) / len(found.prefill_reached))
            last.append(found.prefill_reached[-1])
            decode.append(sum(found.decode_reached) / len(found.decode_reached))
            accounting = report.accounting
            kept.append(accounting.prefill_visual[0] / accounting.visual_in)
            kept_alive.append(sum(accounting.prefill_visual) / len(accounting.prefill_visual) / accounting.visual_in)
    row = {"videos": len(samples), "retention": sum(kept) / len(kept), "alive_retention": sum(kept_alive) / len(kept)}
    values_of = (("strict", strict), ("merged", merged), ("alive", alive), ("last_layer", last), ("decode", decode))
    for name, values in values_of:
        mean, low, high = mean_interval(values)
        row.update({name: mean, f"{name}_low": low, f"{name}_high": high})
    row["merged_weight"] = sum(weight) / len(weight)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--videos", type=int, default=300)
    parser.add_argument("--retentions", default=",".join(f"{r:g}" for r in RETENTIONS))
    parser.add_argument("--methods", default="all", help="comma-separated names, or all")
    parser.add_argument("--model", default="testbed", help="testbed (trained), default, or any --model of the CLI")
    parser.add_argument("--new-tokens", type=int, default=3, help="decoding steps per request (decode stages act)")
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).parent / "results" / device_name())
    parser.add_argument("--resume", action="store_true", help="keep the cells already in the results file")
    args = parser.parse_args()
    if not 0 < args.videos <= 300:
        raise SystemExit(f"the needle split has 300 videos; -n must be 1-300, got {args.videos}")
    stem = f"evidence_{args.model.replace(':', '_').replace('/', '_')}"
    every_method = [m for m in METHODS if m != "none"]
    methods = every_method if args.methods == "all" else split_methods(args.methods)
    retentions = parse_retentions(args.retentions)
    plan(methods, retentions)  # unknown methods fail before any work
    check_writable(args.out)
    # the uncompressed cell is kept too: it has no ratio to refresh, and 300 requests to spare
    done = resumed_rows(args.out, stem, reference=True) if args.resume else []
    if done and {r["videos"] for r in done} != {args.videos}:
        raise SystemExit(f"--resume: {stem}.json was measured on other video counts; use the same -n")
    torch.set_grad_enabled(False)
    loaded = load_model(args.model)
    depth = loaded.model.config.text_config.num_hidden_layers
    cells, notes = plan(methods, retentions, depth=depth)
    samples = make_needle_split(300, 12)[: args.videos]
    inputs = prepare(loaded.processor, samples, frames=12, protocol="direct")
    meta = {
        "device": device_name(),
        "model": loaded.description,
        "split": "needle",
        "videos": len(samples),
        "frames": 12,
        "new_tokens": args.new_tokens,
        "command": command(args, args.retentions),
    }
    started = time.time()
    rows = sorted(done, key=matrix_order)  # resumed cells stay (with their skip notes); only the others are measured
    notes = resumed_notes(args.out, stem, notes) if done else notes
    measured = {cell_key(r) for r in rows}

    for name, retention, method in [("uncompressed", 1.0, get_method("none"))] + cells:
        if (name, retention) in measured:
            continue
        found = measure(loaded.model, loaded.processor, method, samples, inputs, args.new_tokens, name)
        rows = sorted([*rows, {"method": name, "target_retention": retention, **found}], key=matrix_order)
        write_rows(rows, notes, {**meta, "partial": True}, args.out, stem)
        print(
            f"{name:>14} {'' if retention is None else f'{retention:4.0%}'}  strict {found['strict']:.3f} "
            f"[{found['strict_low']:.3f}, {found['strict_high']:.3f}]  merged {found['merged']:.3f}  "
            f"alive {found['alive']:.3f} [{found['alive_low']:.3f}, {found['alive_high']:.3f}]  "
            f"decode {found['decode']:.3f}",
            flush=True,
        )
    meta["seconds"] = round(time.time() - started)
    if done:  # the files describe the whole matrix, measured over several runs
        meta["resumed_cells"] = sum(r["method"] != "uncompressed" for r in done)  # "seconds" is this run's
        # the grid is the default one plus any retention measured beside it, so a column never measured still shows
        targets = sorted(({r["target_retention"] for r in rows} - {None, 1.0}) | set(RETENTIONS), reverse=True)
        names = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "uncompressed"))
        every = set(names) >= set(every_method)
        retentions = ",".join(f"{t:g}" for t in targets)
        meta["command"] = command(args, retentions, "all" if every else ",".join(names)) + " (resumed)"
        grid = every_method if every else names
        notes = list(dict.fromkeys([*notes, *plan(grid, targets, depth=depth)[1]]))  # the grid's skips, said once
        missing = missing_cells(rows, grid, targets, depth=depth)
        if missing:  # the command above completes them
            meta["missing"] = missing
    write(rows, notes, meta, args.out, stem)


def command(args: argparse.Namespace, retentions: str, methods: str | None = None) -> str:
    """The command line that measures this matrix at ``retentions`` for ``methods`` (default: the run's own)."""
    return (
        f"python benchmarks/evidence.py --model {args.model} -n {args.videos} --retentions {retentions} "
        f"--methods {methods or args.methods}"
    )


def beyond_random(rows: list[dict]) -> dict[tuple, str]:
    """Per cell, how the interval of its evidence alive (mean over the LLM's layers) lies against random pruning's
    at the same retention."""
    random = {r["target_retention"]: r for r in rows if r["method"] == "random"}
    verdicts = {}
    for r in rows:
        other = random.get(r["target_retention"])
        if other is None or r["method"] == "random":
            continue
        if r["alive_low"] > other["alive_high"]:
            verdicts[cell_key(r)] = "above random"
        elif r["alive_high"] < other["alive_low"]:
            verdicts[cell_key(r)] = "below random"
        else:
            verdicts[cell_key(r)] = "as random"
    return verdicts


def write(rows, notes, meta, out: Path, stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_rows(rows, notes, meta, out, stem)
    verdicts = beyond_random(rows)
    lines = [
        "| method | retention | tokens in | tokens alive | strict (95 % CI) | merged | merged weight "
        "| alive (95 % CI) | last layer | decode KV | vs random |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "—" if r["target_retention"] is None else f"{r['target_retention']:.0%}"
        lines.append(
            f"| {r['method']} | {target} | {r['retention']:.3f} | {r['alive_retention']:.3f} | {r['strict']:.3f} "
            f"({r['strict_low']:.3f}–{r['strict_high']:.3f}) | {r['merged']:.3f} | {r['merged_weight']:.3f} "
            f"| {r['alive']:.3f} ({r['alive_low']:.3f}–{r['alive_high']:.3f}) | {r['last_layer']:.3f} "
            f"| {r['decode']:.3f} | {verdicts.get(cell_key(r), '')} |"
        )
    (out / f"{stem}.md").write_text(
        "# Evidence survival on the needle split\n\n"
        + f"```json\n{json.dumps(meta, indent=2)}\n```\n\n"
        + "Shares of the needle's pixels (token shares by receptive area): strict = reaching the LLM as its own "
        "tokens, merged = only inside merged tokens (merged weight: its weight there), alive = held by the tokens "
        "alive at each LLM layer during prefill (mean over layers; merges inside the LLM count), last layer = at "
        "the LLM's last layer, decode KV = held by the KV entries attended while decoding (mean over layers and "
        "steps). Tokens in / alive: visual tokens entering the LLM and alive per layer, over uncompressed. vs "
        "random: the alive interval above, below or overlapping random pruning's at the same retention.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "".join(f"- {n}\n" for n in notes)
    )
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for i, name in enumerate(dict.fromkeys(r["method"] for r in rows if r["target_retention"] is not None)):
        mine = sorted(
            (r for r in rows if r["method"] == name and r["target_retention"]), key=lambda r: r["alive_retention"]
        )
        ax.errorbar(
            [r["alive_retention"] for r in mine],
            [r["alive"] for r in mine],
            yerr=[
                [max(0.0, r["alive"] - r["alive_low"]) for r in mine],
                [max(0.0, r["alive_high"] - r["alive"]) for r in mine],
            ],
            fmt="o",
            capsize=3,
            label=name,
            color=f"C{i % 10}",
            ls="-" if i < 10 else "--",
        )
    ax.plot([0, 1], [0, 1], ls=":", color="gray", label="survival = retention")
    ax.set(
        xlabel="visual tokens alive per LLM layer / uncompressed",
        ylabel="share of the needle alive per LLM layer",
        title=f"evidence survival, {meta['videos']} needle videos ({meta['model'].split(':')[0]})",
    )
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(out / f"{stem}_vs_retention.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
