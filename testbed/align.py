"""Stage 1 of testbed training: align the projector so visual tokens read as words (no LM forward).

Each pooled visual token's target is the LM input embedding of the words it shows ("red circle 2" on the
object, the background colour elsewhere); the projector is fit to them by MSE. Costs seconds, because only
the projector runs on features the frozen tower computed once.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
import torch

from vidpress.testbed.scenes import Sample, object_centres


def word_targets(model: Any, processor: Any, sample: Sample, frames: int, size: int) -> torch.Tensor:
    """(F, g*g, D) alignment targets for the pooled visual tokens: a token whose area the object covers gets
    the mean input embedding of the object's colour, shape and count ("red", "circle", "2"), any other the
    background's ("gray"); g is the pooled grid side (4 at 112 px). The frozen LM then reads a frame like words.
    """
    embed = model.model.get_input_embeddings().weight
    tokenizer = processor.tokenizer
    side = size // model.config.vision_config.patch_size
    grid = math.ceil(side / 2)  # LLaVA-OneVision's 2x bilinear pooling of the patch grid
    cell, r = size / grid, size // 10

    @functools.cache  # a video repeats a few scenes over its frames
    def words(*texts: str) -> torch.Tensor:
        ids = [
            i
            for text in texts
            for i in tokenizer(text, add_special_tokens=False).input_ids
            if tokenizer.decode([i]).strip()
        ]  # not a lone space token
        return (embed[ids].mean(0) * embed[ids].norm(dim=-1).mean() / embed[ids].mean(0).norm()).detach().cpu()

    centres = (torch.arange(grid * 8) + 0.5) * cell / 8  # an 8x8 sample grid per token, same along x and y
    out = []
    for index in sample.frame_indices(frames):
        scene, t = sample.scene_at(int(index))
        mask = torch.zeros(grid * 8, grid * 8)
        for x, y in object_centres(scene, t, size):
            mask += (((centres[None] - x) ** 2 + (centres[:, None] - y) ** 2) <= r * r).float()
        cover = mask.clamp(max=1).reshape(grid, 8, grid, 8).mean((1, 3)).flatten()  # object share of each token
        thing, ground = words(" " + scene.color, " " + scene.shape, str(scene.count)), words(" " + scene.background)
        out.append(torch.where(cover[:, None] >= 0.1, thing, ground))
    return torch.stack(out).detach()


def project(model: Any, features: torch.Tensor) -> torch.Tensor:
    """(V, F, P, Dv) tower features -> (V, F, p, D) pooled visual tokens, as LLaVA-OneVision makes them."""
    inner = model.model
    video = inner.apply_pooling(inner.multi_modal_projector(features.flatten(0, 1)))
    return video.reshape(*features.shape[:2], *video.shape[1:])


def align(
    model: Any,
    data: list[dict],
    *,
    steps: int,
    lr: float = 1e-3,
    batch: int = 8,
    seed: int = 0,
    log: Callable[[str], Any] = print,
) -> dict[str, float]:
    """Stage 1 (cheap: no LM forward): fit the projector so each pooled visual token lands on its
    :func:`word_targets` embedding (MSE). Returns the final loss and the share of tokens whose nearest
    target (cosine) among the batch's distinct targets is their own."""
    params = list(model.model.multi_modal_projector.parameters())
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        chunk = [data[i] for i in rng.choice(len(data), size=min(batch, len(data)), replace=False)]
        with torch.enable_grad():
            tokens = project(model, torch.stack([d["features"] for d in chunk]).to(model.device))
            target = torch.stack([d["targets"] for d in chunk]).to(model.device)
            loss = torch.nn.functional.mse_loss(tokens, target) / target.pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        flat, target = tokens.reshape(-1, tokens.shape[-1]), target.reshape(-1, target.shape[-1])
        distinct, which = target.unique(dim=0, return_inverse=True)
        nearest = torch.nn.functional.normalize(flat, dim=-1) @ torch.nn.functional.normalize(distinct, dim=-1).T
        hit = float((nearest.argmax(-1) == which).float().mean())
    for p in params:
        p.requires_grad_(False)
    log(f"alignment: {steps} steps, relative MSE {loss.item():.3f}, tokens nearest their own word {hit:.1%}")
    return {"align_steps": steps, "align_relative_mse": loss.item(), "align_token_accuracy": hit}
