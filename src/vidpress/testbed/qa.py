"""Question answering on encoded videos, shared by testbed training and its validation.

:func:`encode` runs the frozen tower once per video; every question of a video then continues one shared,
batched video prefix (its KV cache gathered per question), for the teacher-forced loss (:func:`answer_loss`)
and for greedy answers (:func:`greedy_answers`, :func:`accuracy`), which equal ``model.generate`` on the full
prompt (tested).
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..evaluate import ANSWER_TOKENS, choice_prompt, match_option
from ..pipeline import build_inputs, chat_prompt
from .align import project, word_targets
from .scenes import TYPES, Sample, ask, describe

CAPTION = "Describe each scene."  #: the auxiliary caption task's prompt


def video_questions(sample: Sample, seed: int = 0) -> list[Sample]:
    """``sample`` and one more question of every other kind its scenes can pose, seeded by the video id."""
    rng = np.random.default_rng([seed, zlib.crc32(sample.video_id.encode())])
    extra = [ask(kind, sample.scenes, rng) for kind in TYPES if kind != sample.question.kind]
    return [sample] + [replace(sample, question=q) for q in extra if q is not None]


def answer_target(tokenizer: Any, answer: str) -> torch.Tensor:
    """(La,) token ids of ``answer`` then the end of turn: what training teaches the LM to say."""
    return torch.tensor(tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])


def encode(model: Any, processor: Any, samples: Sequence[Sample], frames: int, size: int, seed: int = 0,
           all_kinds: bool = True, caption: bool = False) -> list[dict]:
    """Per video: the prompt prefix through the video (Lp,), the frozen tower's selected features (F, P, Dv),
    the alignment targets, and per question the prompt's token ids after the video (Ls,), the correct option's
    token ids then the end of turn (La,), the options and the answer index. With ``caption``, each video also
    gets a ``"caption"`` item: :data:`CAPTION` asked, :func:`describe`'s text as its target."""
    tokenizer = processor.tokenizer
    video_token = processor.video_token
    out = []
    with torch.no_grad():  # not inference_mode: the features feed a graph that trains the projector
        for sample in samples:
            inputs = build_inputs(processor, sample.frames(size, frames), choice_prompt(sample))
            ids = inputs["input_ids"][0]  # kept on the CPU, like everything encode returns; batches move later
            end = int((ids == model.config.video_token_id).nonzero().max()) + 1
            pixels = inputs["pixel_values_videos"][0].to(model.device)
            hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
            selected = hidden[model.config.vision_feature_layer]
            if model.config.vision_feature_select_strategy == "default":
                selected = selected[:, 1:]

            def item(prompt: str, said: str, **extra: Any) -> dict:  # ids after the video, then the target
                text = chat_prompt(processor, prompt).split(video_token)[-1]
                return {"ids": torch.tensor(tokenizer(text, add_special_tokens=False).input_ids),
                        "target": answer_target(tokenizer, said), **extra}

            questions = [item(choice_prompt(asked), asked.question.options[asked.question.answer],
                              options=asked.question.options, answer=asked.question.answer, kind=asked.question.kind)
                         for asked in (video_questions(sample, seed) if all_kinds else [sample])]
            if caption:
                questions.append(item(CAPTION, describe(sample.scenes), kind="caption"))
            if not torch.equal(questions[0]["ids"], ids[end:]):
                raise RuntimeError("the question suffix does not tokenise as in the full prompt")
            out.append({"prefix": ids[:end], "features": selected.cpu().clone(), "questions": questions,
                        "targets": word_targets(model, processor, sample, frames, size).cpu()})
    return out


def _continue(model: Any, videos: list[dict], suffixes: Callable[[dict], torch.Tensor]) -> tuple:
    """Run each question's ``suffixes(question)`` ids on its video's cached prefix.

    The prefixes (equal length: same frames, same template) run as one batch; the cache is gathered per
    question and the right-padded suffixes continue from it. Returns the suffixes' last hidden states
    (N, Ls, D), their lengths (N,), the attention mask so far (N, Lp + Ls), the cache and the questions.
    Gradients reach the projector and any LoRA.
    """
    inner, device = model.model, model.device
    video = project(model, torch.stack([v["features"] for v in videos]).to(device)).flatten(1, 2)  # (V, F*p, D)
    video = torch.cat([video, inner.image_newline.expand(len(videos), 1, -1)], dim=1)
    prefix = torch.stack([v["prefix"] for v in videos]).to(device)
    embeds = inner.get_input_embeddings()(prefix)
    embeds = embeds.masked_scatter((prefix == model.config.video_token_id)[..., None], video.to(embeds.dtype))
    cache = inner.language_model(inputs_embeds=embeds, use_cache=True).cache
    questions = [q for v in videos for q in v["questions"]]
    cache.batch_select_indices(torch.tensor([i for i, v in enumerate(videos) for _ in v["questions"]], device=device))
    ids = [suffixes(q) for q in questions]
    lengths = torch.tensor([len(i) for i in ids], device=device)
    suffix = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True).to(device)
    past = prefix.shape[1]
    mask = torch.cat([torch.ones(len(ids), past, dtype=torch.long, device=device),
                      (torch.arange(suffix.shape[1], device=device) < lengths[:, None]).long()], dim=1)
    positions = (past + torch.arange(suffix.shape[1], device=device)).expand(len(ids), -1)
    hidden = inner.language_model(input_ids=suffix, attention_mask=mask, position_ids=positions,
                                  cache=cache).last_hidden_state
    return hidden, lengths, mask, cache, questions


def answer_loss(model: Any, videos: list[dict]) -> torch.Tensor:
    """Mean cross-entropy of every question's correct option text and end of turn, teacher-forced; plus the
    caption items' own mean when :func:`encode` added them (so their long targets do not drown the answers)."""
    hidden, _, _, _, questions = _continue(model, videos, lambda q: torch.cat([q["ids"], q["target"]]))
    rows = torch.cat([torch.full((len(q["target"]),), i) for i, q in enumerate(questions)])
    cols = torch.cat([len(q["ids"]) - 1 + torch.arange(len(q["target"])) for q in questions])
    logits = model.lm_head(hidden[rows.to(hidden.device), cols.to(hidden.device)])
    losses = torch.nn.functional.cross_entropy(logits.float(), torch.cat([q["target"] for q in questions]).to(logits.device),
                                               reduction="none")
    captions = torch.cat([torch.full((len(q["target"]),), q["kind"] == "caption") for q in questions]).to(losses.device)
    return sum(losses[part].mean() for part in (~captions, captions) if part.any())  # only the parts present


def greedy_answers(model: Any, videos: list[dict], tokenizer: Any, max_new_tokens: int = ANSWER_TOKENS) -> list[str]:
    """Every question's greedy answer text (up to ``max_new_tokens``, cut at the end of turn), in order."""
    hidden, lengths, mask, cache, questions = _continue(model, videos, lambda q: q["ids"])
    rows = torch.arange(len(questions), device=hidden.device)
    token = model.lm_head(hidden[rows, lengths - 1]).argmax(-1)
    out = [token]
    for step in range(max_new_tokens - 1):  # each row continues right after its own suffix; pads stay masked
        mask = torch.cat([mask, torch.ones(len(questions), 1, dtype=torch.long, device=mask.device)], dim=1)
        hidden = model.model.language_model(input_ids=token[:, None], attention_mask=mask,
                                            position_ids=(mask.shape[1] - 1 - (mask == 0).sum(1))[:, None],
                                            cache=cache).last_hidden_state
        token = model.lm_head(hidden[:, -1]).argmax(-1)
        out.append(token)
    ids = torch.stack(out, 1).tolist()
    end = tokenizer.eos_token_id
    return [tokenizer.decode(row[:row.index(end)] if end in row else row, skip_special_tokens=True) for row in ids]


def accuracy(model: Any, data: list[dict], tokenizer: Any, batch: int = 8) -> dict[str, float]:
    """Accuracy over every question of ``data`` (greedy answer matched to the options), overall (``"all"``)
    and per question kind."""
    right: dict[str, list[int]] = {}
    with torch.inference_mode():
        for start in range(0, len(data), batch):
            videos = data[start:start + batch]
            questions = [q for v in videos for q in v["questions"]]
            for q, text in zip(questions, greedy_answers(model, videos, tokenizer)):
                if q["kind"] == "caption":
                    continue
                hit = match_option(text, q["options"]) == q["answer"]
                right.setdefault(q["kind"], []).append(hit)
                right.setdefault("all", []).append(hit)
    return {k: float(np.mean(v)) for k, v in sorted(right.items())}
