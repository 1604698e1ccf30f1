"""Train the testbed VLM on the procedural video QA.

    python -m testbed.train --out src/vidpress/assets/testbed

The model is the default LLaVA-OneVision build (real DINOv2-S tower, real SmolLM2-135M-Instruct LM, both
frozen) at ``image_size`` px. Two stages:

1. alignment (:func:`align`, seconds): the projector alone learns to put each pooled visual token on the
   input embedding of words describing what it covers ("red circle 2" on the object, "gray" elsewhere), so
   the frozen LM reads a frame as words. No LM forward is needed, so it costs almost nothing.
2. question answering: projector, ``image_newline`` and a LoRA (``peft``) on the LM's linear layers train on
   the cross-entropy of the correct option's text (then the end of turn) after each prompt, the answer
   ``vidpress eval`` generates and matches to the options. ``--caption-steps`` first trains the same weights
   to describe each video's scenes (LLaVA-style caption pre-training through the LM): after 80 such steps
   the testbed describes held-out videos mostly right (examples in benchmarks/results/.../testbed_training.md).
   ``--protocol describe`` makes that description a chain of thought: each question is asked in a second turn
   after it (:mod:`.qa`), and the trained testbed is evaluated that way.

Two things make stage 2 fit a 2-core CPU: the tower is frozen, so each video's features are computed once;
and every video is asked all question kinds at once: the prompt puts the video first, so the video prefix
runs once per video (batched across videos) and its KV cache is shared by the questions' suffixes.

The best validation checkpoint is kept; the LoRA is merged into the LM's weights, so the saved testbed is a
plain ``transformers`` model once loaded (no peft needed to use it). Everything is seeded.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vidpress.evaluate import PROTOCOLS
from vidpress.testbed.needle import NEEDLE_TYPES, make_needle_split
from vidpress.testbed.saved import TESTBED_DIR, read_saved, save
from vidpress.testbed.scenes import TYPES, make_split

from .align import align
from .lora import add_lora, lora_factors, merge_lora, set_lora
from .qa import accuracy, answer_loss, described, encode

#: ``curriculum`` order: the kind a model learns first from video alone (a caption-trained canary), then the rest
CURRICULUM = ("first", "last", "color_in_scene", "count_in_scene", "never", "changed", "scene_count")


def hardware_name(model: Any) -> str:
    """The accelerator's or processor's name, for the record and the model card."""
    import platform

    if model.device.type == "cuda":
        return torch.cuda.get_device_name(model.device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def train(
    model: Any,
    processor: Any,
    *,
    steps: int,
    train_videos: int,
    val_videos: int,
    frames: int = 12,
    size: int = 112,
    lr: float = 5e-4,
    lora_lr: float = 5e-4,
    rank: int = 16,
    batch: int = 4,
    seed: int = 0,
    align_steps: int = 1500,
    eval_every: int = 50,
    caption: bool = False,
    caption_steps: int = 0,
    curriculum: int = 0,
    protocol: str = "direct",
    description_weight: float = 1.0,
    description_spans: bool = False,
    description_changes: bool = False,
    needles: float = 0.0,
    seconds: float | None = None,
    checkpoint: Path | None = None,
    init: Path | None = None,
    command: str | None = None,
    data: tuple[list[dict], list[dict]] | None = None,
    log: Callable[[str], Any] | None = print,
) -> dict[str, Any]:
    """Train in place and return the run's record.

    Stage 1 (:func:`align`, ``align_steps``) fits the projector so visual tokens read as words; stage 2 trains
    projector, newline and (``rank`` > 0) a LoRA on the answers' text, ``batch`` videos per step, each asked
    every question kind, and with ``caption`` also to describe the video (an auxiliary task). The first
    ``caption_steps`` steps train the description alone (LLaVA's caption pre-training, through the LM). With
    ``curriculum`` > 0 the kinds then join one at a time, every ``curriculum`` steps, in :data:`CURRICULUM` order.
    ``protocol="describe"`` asks each question after the video's description (:mod:`.qa`): training
    teacher-forces and trains the true description at every step (the caption steps train only it), validation
    answers after the model's own (neighbouring scenes told the same merged, as ``vidpress eval`` asks);
    ``"direct"`` asks right after the video. ``description_weight`` scales the
    description's mean loss against the answers' (describe protocol; 1: equal). ``description_spans`` trains
    descriptions that say which sampled frames show each scene ("Scene 2 (frames 4-6): ..."), so a scene told
    twice costs a wrong frame range (the describe protocol's main error). ``description_changes`` trains
    descriptions that name the one attribute that changed from the scene before ("...; changed: the
    background."), so a ``changed`` question reads its answer off the description instead of comparing two
    sentences (the LM's weak spot even from true descriptions). ``needles`` (0-1) is the share of training and
    validation videos that carry a needle (``needle_train`` / ``needle_validation`` splits, never the held-out
    ``needle`` split), asked the needle kinds besides the others; their descriptions name the needle.
    ``seconds`` caps the whole run's wall time (encoding included): after 20 steps, and after each validation,
    the step count shrinks to what the latest steps' pace fits, and the cosine schedule follows it; a step that
    ends past the cap is the last. The weights kept are the best validation accuracy's, the LoRA merged; the
    record carries its ``lora`` factors for :func:`save`, and ``checkpoint`` (a folder) gets each new best as
    it comes, so a run cut off keeps it. ``init`` (a saved testbed folder) continues from its projector,
    newline and LoRA instead of aligning afresh; its record is kept under ``"init"``, and its weights are
    validated first (step 0 of the history, no loss), so the kept checkpoint is never worse on this run's
    validation set than where it started. ``command`` (the command line) is recorded. ``data`` reuses
    :func:`encode` output (train, validation).

    Raises
    ------
    ValueError
        ``init`` holds a LoRA of another rank than ``rank``; a batch has no item of the kinds in training
        (``data`` without captions, say, when only captions train); or ``protocol`` is not one of
        :data:`PROTOCOLS`; ``description_weight`` is negative; or ``needles`` is outside [0, 1].
    """
    from tqdm.auto import tqdm

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
    if description_weight < 0:
        raise ValueError(
            f"description_weight must be >= 0 (1 weighs the description like the answers), got {description_weight}"
        )
    if not 0 <= needles <= 1:
        raise ValueError(f"needles is the share of videos with a needle, in [0, 1]; got {needles}")
    describing = protocol == "describe"
    say = log or (lambda _: None)
    torch.manual_seed(seed)
    tokenizer = processor.tokenizer
    started = time.time()
    told = {"describe_first": describing, "spans": description_spans, "changes": description_changes}

    def videos(split: str, count: int) -> list:  # ``needles`` of them with a needle, the two kinds interleaved
        hidden = round(count * needles)
        plain = make_split(split, count - hidden, seed)
        pins = make_needle_split(hidden, frames, seed, f"needle_{split}")
        return [s for pair in zip(plain, pins) for s in pair] + plain[len(pins) :] + pins[len(plain) :]

    train_data, val_data = data or (
        encode(
            model,
            processor,
            videos("train", train_videos),
            frames,
            size,
            seed,
            caption=not describing and (caption or caption_steps > 0),
            **told,
        ),
        encode(model, processor, videos("validation", val_videos), frames, size, seed, **told),
    )
    say(
        f"encoded {len(train_data)} + {len(val_data)} videos in {time.time() - started:.0f} s on {hardware_name(model)}"
    )
    for p in model.parameters():
        p.requires_grad_(False)
    if init is not None:  # stage 1 was done by the run continued from
        prior, state = read_saved(init)
        model.load_state_dict({k: v.to(model.device) for k, v in state.items() if ".lora_" not in k}, strict=False)
        align_steps, aligned = 0, {"init": prior}
        say(f"continuing from {init} ({prior['steps']} steps, validation accuracy {prior['best_val_accuracy']:.1%})")
    else:
        aligned = align(model, train_data, steps=align_steps, seed=seed, log=say) if align_steps else {}
    timing = {"train": 0.0, "steps": 0, "eval": 0.0, "evals": 0}
    if align_steps:
        clock = time.time()
        aligned["val_accuracy_after_align"] = accuracy(model, val_data, tokenizer)["all"]
        timing.update(eval=time.time() - clock, evals=1)
        say(f"validation accuracy after alignment, LM untouched: {aligned['val_accuracy_after_align']:.1%}")
    scale = add_lora(model, rank) if rank else 0.0
    if init is not None and rank:
        set_lora(model, {k: v for k, v in state.items() if ".lora_" in k})
    projector = [*model.model.multi_modal_projector.parameters(), model.model.image_newline]
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in projector + lora:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW([{"params": projector, "lr": lr}, {"params": lora, "lr": lora_lr}], weight_decay=0.0)
    total = [steps]  # shrinks to fit ``seconds``; the schedule (5 % warm-up, then cosine) follows it
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: (
            min(1.0, (s + 1) / max(1, total[0] // 20)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total[0]))))
        ),
    )
    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [rng.permutation(len(train_data)) for _ in range(math.ceil(steps * batch / len(train_data)))]
    )
    settings = {
        "seed": seed,
        "batch_videos": batch,
        "lr": lr,
        "lora_lr": lora_lr,
        "lora_rank": rank,
        "lora_scale": scale,
        "frames": frames,
        "image_size": size,
        "train_videos": train_videos,
        "val_videos": val_videos,
        "val_questions": sum(len(v["questions"]) for v in val_data),
        "caption_task": caption,
        "caption_steps": caption_steps,
        "protocol": protocol,
        "description_weight": description_weight,
        "description_spans": description_spans,
        "description_changes": description_changes,
        "needles": needles,
        "merge_repeats": describing,
        "curriculum": curriculum,
        "device": hardware_name(model),
        "command": command,
    }
    best, best_state, history = -1.0, None, []

    def record(steps_done: int, lora: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {
            **aligned,
            **settings,
            "steps": steps_done,
            "best_val_accuracy": best,
            "history": history,
            "seconds": time.time() - started,
            "lora": lora,
        }

    def validate(step: int, loss: float | None) -> None:  # keeps (and checkpoints) each new best
        nonlocal best, best_state
        clock = time.time()
        acc = accuracy(model, val_data, tokenizer)
        timing["eval"] += time.time() - clock
        timing["evals"] += 1
        history.append(
            {
                "step": step,
                "loss": loss,
                "val_accuracy": acc,
                "seconds": time.time() - started,
                "lr_factor": schedule.lr_lambdas[0](schedule.last_epoch),
            }
        )
        say(
            f"step {step}: "
            + ("" if loss is None else f"loss {loss:.3f}, ")
            + f"validation accuracy {acc['all']:.1%} "
            + " ".join(f"{k} {v:.0%}" for k, v in acc.items() if k != "all")
        )
        if acc["all"] > best:
            best, best_state = (
                acc["all"],
                {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            )
            if checkpoint is not None:
                save(model, record(step, lora_factors(model)), checkpoint)

    if init is not None:  # the run continued from is the one to beat, on this run's validation set
        validate(0, None)
    for step in (bar := tqdm(range(1, steps + 1), desc="training", disable=log is None)):
        if step > total[0]:
            break
        clock = time.time()
        asked = step - caption_steps  # questions' steps so far (<= 0: the caption phase)
        asking = CURRICULUM[: 1 + (asked - 1) // curriculum] if curriculum else TYPES + NEEDLE_TYPES
        kinds = (("caption",) if asked <= 0 else asking) + (("caption",) if caption else ())
        chunk = [
            {**v, "questions": [q for q in v["questions"] if q["kind"] in kinds]}
            for v in (train_data[i] for i in order[(step - 1) * batch : step * batch])
        ]  # epochs of shuffled videos
        chunk = described(chunk) if describing else [v for v in chunk if v["questions"]]  # a description trains
        if not chunk:
            raise ValueError(
                f"step {step}: no training item of the kinds {kinds} in the batch; give data (or "
                f"--caption / --caption-steps) with items of those kinds"
            )
        with torch.enable_grad():  # callers (the CLI) may have switched gradients off globally
            loss = answer_loss(model, chunk, description_weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        timing["train"] += time.time() - clock
        timing["steps"] += 1
        if seconds and time.time() - started > seconds:  # out of time: this step is the last
            total[0] = step
        if step % eval_every == 0 or step == total[0]:
            validate(step, loss.item())
        if seconds and (step == 20 or step % eval_every == 0):  # fit the rest of the run in what is left
            per_step = timing["train"] / timing["steps"] + timing["eval"] / max(1, timing["evals"]) / eval_every
            total[0] = min(total[0], max(step + 1, step + int((seconds - (time.time() - started)) / per_step)))
            timing.update(train=0.0, steps=0)  # the next estimate reads only the steps after this one (costs change)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in best_state:
                p.copy_(best_state[n])
    factors = merge_lora(model, scale) if rank else {}
    for p in model.parameters():
        p.requires_grad_(False)
    return record(min(steps, total[0]), factors)


def main(argv: list[str] | None = None) -> None:
    from vidpress.models.default import default_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--train-videos", type=int, default=2400)
    parser.add_argument("--val-videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=4, help="videos per step (each asked every question kind)")
    parser.add_argument("--align-steps", type=int, default=1500, help="stage 1: projector-to-word alignment steps")
    parser.add_argument("--lr", type=float, default=5e-4, help="stage 2 projector and newline learning rate")
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank on the LM's linear layers (0: projector only)")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--caption", action="store_true", help="also train each video's scene description (auxiliary)")
    parser.add_argument(
        "--caption-steps",
        type=int,
        default=0,
        metavar="STEPS",
        help="first train STEPS steps on describing the videos alone (caption pre-training)",
    )
    parser.add_argument(
        "--curriculum",
        type=int,
        default=0,
        metavar="STEPS",
        help="add the question kinds one at a time, every STEPS steps, 'first' first (0: all at once)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="direct",
        help="describe: ask each question after the model's description of the video (see qa.py)",
    )
    parser.add_argument(
        "--description-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="describe protocol: weight of the description's mean loss against the answers' (1: equal)",
    )
    parser.add_argument(
        "--description-spans",
        action="store_true",
        help="describe protocol: descriptions say which sampled frames show each scene",
    )
    parser.add_argument(
        "--description-changes",
        action="store_true",
        help="describe protocol: a scene that differs from the one before in one attribute names it",
    )
    parser.add_argument(
        "--needles",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of training and validation videos with a needle (needle_train / needle_validation splits)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="wall-time cap for the whole run; the step count and schedule shrink to fit",
    )
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue from a saved testbed folder (its projector and LoRA; no alignment)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=TESTBED_DIR)
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to train (default: cuda when available); the saved weights are device-free",
    )
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on a GPU; fp32 weights, and no change on a CPU
    loaded = default_model(image_size=args.image_size)
    loaded.model.to(args.device)
    record = train(
        loaded.model,
        loaded.processor,
        steps=args.steps,
        train_videos=args.train_videos,
        val_videos=args.val_videos,
        frames=args.frames,
        size=args.image_size,
        lr=args.lr,
        lora_lr=args.lora_lr,
        rank=args.rank,
        batch=args.batch,
        seed=args.seed,
        eval_every=args.eval_every,
        align_steps=args.align_steps,
        caption=args.caption,
        caption_steps=args.caption_steps,
        curriculum=args.curriculum,
        protocol=args.protocol,
        description_weight=args.description_weight,
        description_spans=args.description_spans,
        description_changes=args.description_changes,
        needles=args.needles,
        seconds=args.seconds,
        checkpoint=args.out,
        init=args.init,
        command="python -m testbed.train " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    print(f"saved {save(loaded.model, record, args.out)}; best validation accuracy {record['best_val_accuracy']:.1%}")


if __name__ == "__main__":
    main()
