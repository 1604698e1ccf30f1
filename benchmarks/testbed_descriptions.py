"""Where a describe-protocol testbed loses: its own descriptions, or answering from a description?

    python benchmarks/testbed_descriptions.py [FOLDER] [-n 24] [--seed S]

Loads a saved testbed (default: the committed one) trained with ``--protocol describe`` and, on the first ``n``
validation videos (every question kind each allows), prints: how many of the model's own greedy descriptions,
and of their scenes, match the truth exactly; three examples; and the accuracy per kind when each question
follows the model's own description raw, the same merged (:func:`vidpress.evaluate.merge_repeats`: what validation
and ``vidpress eval`` score), or the true one (what answering alone would give with perfect reading).
"""

import argparse
import re
from pathlib import Path

import torch

from testbed.qa import accuracy, answer_target, described, encode, own_descriptions
from vidpress.evaluate import merge_repeats
from vidpress.testbed.saved import TESTBED_DIR, load_testbed, read_saved
from vidpress.testbed.scenes import describe, make_split

SCENE = re.compile(r"Scene \d+(?: \([^)]*\))?: [^.]*\.")  # with or without its frame span


def judged(truths: list[str], texts: list[str]) -> str:
    """How many ``texts`` equal their truth, how many scenes are right in place, how many count the scenes right."""
    scenes = [(SCENE.findall(t), SCENE.findall(s)) for t, s in zip(truths, texts)]
    right = sum(a == b for truth, said in scenes for a, b in zip(truth, said))
    total = sum(len(truth) for truth, _ in scenes)
    return (
        f"{sum(t == s.strip() for t, s in zip(truths, texts))}/{len(texts)} exact; scenes right in place "
        f"{right}/{total} ({right / total:.1%}); "
        f"scene count right {sum(len(a) == len(b) for a, b in scenes)}/{len(scenes)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=TESTBED_DIR)
    parser.add_argument("-n", "--videos", type=int, default=24)
    parser.add_argument("--seed", type=int, default=None, help="validation split seed (default: the run's own)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    record, _ = read_saved(args.folder)
    if record.get("protocol") != "describe":
        parser.error(f"{args.folder} was trained to answer directly; this check is for --protocol describe")
    loaded = load_testbed(args.folder)
    model, processor, tokenizer = loaded.model, loaded.processor, loaded.processor.tokenizer
    samples = make_split("validation", args.videos, record["seed"] if args.seed is None else args.seed)
    spans = record.get("description_spans", False)  # trained to name each scene's frames: judged with them
    changes = record.get("description_changes", False)  # likewise the attribute that changed
    data = encode(
        model,
        processor,
        samples,
        record["frames"],
        record["image_size"],
        describe_first=True,
        spans=spans,
        changes=changes,
    )
    own, texts = [], []
    for start in range(0, len(data), 8):
        ids, said = own_descriptions(model, data[start : start + 8], tokenizer, merge=False)
        own, texts = own + ids, texts + said
    truths = [describe(s.scenes, record["frames"] if spans else None, changes) for s in samples]
    print(f"own descriptions: {judged(truths, texts)}")
    for truth, said in list(zip(truths, texts))[:3]:
        print(f"  truth: {truth}\n  said:  {said}")
    merged = [merge_repeats(t) for t in texts]  # what vidpress eval asks after
    print(f"merged (neighbouring scenes told the same joined): {judged(truths, merged)}")
    joined = [answer_target(tokenizer, m) for m in merged]
    for label, said in (("own", own), ("own, merged", joined), ("true", None)):
        right = accuracy(model, described(data, said), tokenizer, batch=4)
        print(f"answers after the {label} description: " + " ".join(f"{k} {v:.0%}" for k, v in right.items()))


if __name__ == "__main__":
    main()
