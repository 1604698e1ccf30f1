"""Train the testbed VLM's projector on the procedural video QA (issue: trained testbed).

    python -m vidpress.testbed.train --steps 3000 --out src/vidpress/assets/testbed

The model is the default LLaVA-OneVision build (real DINOv2-S tower, real SmolLM2-135M-Instruct LM, both
frozen) at ``image_size`` px; only the projector and ``image_newline`` train. Vision features are computed
once per video (the tower is frozen), then every step runs projector -> pooling -> LM on a batch and takes the
cross-entropy of the answer letter after the prompt. The best validation checkpoint is saved with a model
card (data, steps, seed, accuracies). Everything is seeded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..evaluate import choice_prompt, letter_token_ids
from ..pipeline import build_inputs
from .scenes import Sample, make_split

WEIGHTS = "testbed_projector.pt"


def encode(model: Any, processor: Any, samples: Sequence[Sample], frames: int, size: int) -> list[dict]:
    """Per sample: the tokenised prompt and the frozen tower's selected features (F, P, Dv), computed once."""
    out = []
    with torch.no_grad():  # not inference_mode: the features feed a graph that trains the projector
        for sample in samples:
            inputs = build_inputs(processor, sample.frames(size, frames), choice_prompt(sample))
            hidden = model.model.vision_tower(inputs["pixel_values_videos"][0], output_hidden_states=True).hidden_states
            selected = hidden[model.config.vision_feature_layer]
            if model.config.vision_feature_select_strategy == "default":
                selected = selected[:, 1:]
            out.append({"input_ids": inputs["input_ids"][0], "features": selected.clone(),
                        "answer": sample.question.answer})
    return out


def letter_logits(model: Any, batch: list[dict], letter_ids: list[int]) -> torch.Tensor:
    """(B, 4) logits of the option letters after each prompt; gradients reach the projector only."""
    inner = model.model
    rows = []
    for item in batch:  # one at a time: prompts differ in length, and batch 1 is what fits a 2-core CPU
        video = inner.multi_modal_projector(item["features"])
        video = inner.apply_pooling(video).flatten(0, 1)
        video = torch.cat([video, inner.image_newline[None]], dim=0)
        ids = item["input_ids"]
        embeds = inner.get_input_embeddings()(ids[None]).clone()
        embeds[0, ids == model.config.video_token_id] = video.to(embeds.dtype)
        hidden = inner.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]
        rows.append(model.lm_head(hidden)[0, letter_ids])
    return torch.stack(rows)


def accuracy(model: Any, data: list[dict], letter_ids: list[int]) -> float:
    with torch.inference_mode():
        right = sum(int(letter_logits(model, [d], letter_ids)[0].argmax() == d["answer"]) for d in data)
    return right / max(1, len(data))


def train(model: Any, processor: Any, *, steps: int, train_videos: int, val_videos: int, frames: int = 12,
          size: int = 112, lr: float = 2e-3, batch: int = 8, seed: int = 0, eval_every: int = 100,
          log=print) -> dict[str, Any]:
    """Train the projector in place; returns the run's record (kept weights = best validation accuracy)."""
    torch.manual_seed(seed)
    letter_ids = letter_token_ids(processor)
    started = time.time()
    train_data = encode(model, processor, make_split("train", train_videos, seed), frames, size)
    val_data = encode(model, processor, make_split("validation", val_videos, seed), frames, size)
    log(f"encoded {len(train_data)} + {len(val_data)} videos in {time.time() - started:.0f} s")
    for p in model.parameters():
        p.requires_grad_(False)
    params = [*model.model.multi_modal_projector.parameters(), model.model.image_newline]
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    order = np.random.default_rng(seed)
    best, best_state, history = -1.0, None, []
    for step in range(1, steps + 1):
        picks = order.choice(len(train_data), size=min(batch, len(train_data)), replace=False)
        chunk = [train_data[i] for i in picks]
        with torch.enable_grad():  # callers (the CLI) may have switched gradients off globally
            logits = letter_logits(model, chunk, letter_ids)
            loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([d["answer"] for d in chunk]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % eval_every == 0 or step == steps:
            acc = accuracy(model, val_data, letter_ids)
            history.append({"step": step, "loss": loss.item(), "val_accuracy": acc, "seconds": time.time() - started})
            log(f"step {step}: loss {loss.item():.3f}, validation accuracy {acc:.1%}")
            if acc > best:
                best, best_state = acc, {k: v.detach().clone() for k, v in trainable_state(model).items()}
    model.load_state_dict(best_state, strict=False)
    for p in params:
        p.requires_grad_(False)
    return {"seed": seed, "steps": steps, "batch": batch, "lr": lr, "frames": frames, "image_size": size,
            "train_videos": train_videos, "val_videos": val_videos, "best_val_accuracy": best, "history": history}


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The projector's and the newline's weights, keyed as in the model's state dict."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(("model.multi_modal_projector.",
                                                                          "model.image_newline"))}


def save(model: Any, record: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.to(torch.float16) for k, v in trainable_state(model).items()}, out / WEIGHTS)
    (out / "testbed.json").write_text(json.dumps(record, indent=2))
    return out / WEIGHTS


def load_testbed(directory: str | Path | None = None) -> Any:
    """The trained testbed: the default build at the recorded image size with the saved projector.

    Raises
    ------
    FileNotFoundError
        No trained weights in ``directory`` (default ``vidpress/assets/testbed``): train them with
        ``python -m vidpress.testbed.train``.
    """
    from ..models.default import LoadedModel, default_model

    folder = Path(directory) if directory else Path(__file__).resolve().parents[1] / "assets" / "testbed"
    if not (folder / WEIGHTS).exists():
        raise FileNotFoundError(f"no trained testbed at {folder}; train it with `python -m vidpress.testbed.train "
                                f"--out {folder}` (about 2 h on a 2-core CPU, minutes on a GPU)")
    record = json.loads((folder / "testbed.json").read_text())
    loaded = default_model(image_size=record["image_size"])
    state = torch.load(folder / WEIGHTS, map_location="cpu")
    loaded.model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    description = (f"vidpress testbed: DINOv2-S + SmolLM2-135M with a projector trained on procedural video QA "
                   f"(seed {record['seed']}, {record['steps']} steps, validation accuracy {record['best_val_accuracy']:.1%})")
    return LoadedModel(loaded.model, loaded.processor, description, trained=True)


def main(argv: list[str] | None = None) -> None:
    from ..models.default import default_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--train-videos", type=int, default=3000)
    parser.add_argument("--val-videos", type=int, default=200)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("src/vidpress/assets/testbed"))
    args = parser.parse_args(argv)
    loaded = default_model(image_size=args.image_size)
    record = train(loaded.model, loaded.processor, steps=args.steps, train_videos=args.train_videos,
                   val_videos=args.val_videos, frames=args.frames, size=args.image_size, lr=args.lr,
                   batch=args.batch, seed=args.seed)
    print(f"saved {save(loaded.model, record, args.out)}; best validation accuracy {record['best_val_accuracy']:.1%}")


if __name__ == "__main__":
    main()
