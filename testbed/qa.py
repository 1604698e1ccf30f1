"""Question answering on encoded videos, shared by testbed training and its validation.

:func:`encode` runs the frozen tower once per video; every question of a video then continues one shared,
batched video prefix (its KV cache gathered per question), for the teacher-forced loss (:func:`answer_loss`)
and for greedy answers (:func:`greedy_answers`, :func:`accuracy`), which equal ``model.generate`` on the full
prompt (tested).

Two protocols. ``direct``: the question follows the video. ``describe``: the model first describes the video
(:data:`CAPTION`), then the question comes in a second turn after that description; training teacher-forces
the true description (and trains it), validation generates the model's own (:func:`own_descriptions`), as
``vidpress eval`` does for a testbed trained this way.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vidpress.evaluate import ANSWER_TOKENS, CAPTION, DESCRIPTION_TOKENS, choice_prompt, match_option, merge_repeats
from vidpress.pipeline import build_inputs, chat_prompt
from vidpress.testbed.needle import NEEDLE_TYPES, ask_needle
from vidpress.testbed.scenes import TYPES, Sample, ask, describe

from .align import project, word_targets

#: kinds a needle video is also asked: the object kinds (first, last, never) are left out, as their distractors
#: may be the needle's looks, which the video does show
NEEDLE_VIDEO_KINDS = ("scene_count", "color_in_scene", "changed", "count_in_scene")


def video_questions(sample: Sample, seed: int = 0) -> list[Sample]:
    """``sample`` and one more question of every other kind its scenes can pose, seeded by the video id (a needle
    video: every other needle kind and :data:`NEEDLE_VIDEO_KINDS`)."""
    rng = np.random.default_rng([seed, zlib.crc32(sample.video_id.encode())])
    if sample.needle is not None:
        extra = [ask_needle(k, sample.scenes, sample.needle, rng) for k in NEEDLE_TYPES if k != sample.question.kind]
        extra += [ask(kind, sample.scenes, rng) for kind in NEEDLE_VIDEO_KINDS]
    else:
        extra = [ask(kind, sample.scenes, rng) for kind in TYPES if kind != sample.question.kind]
    return [sample] + [replace(sample, question=q) for q in extra if q is not None]


def answer_target(tokenizer: Any, answer: str) -> torch.Tensor:
    """(La,) token ids of ``answer`` then the end of turn: what training teaches the LM to say."""
    return torch.tensor(tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])


def encode(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    frames: int,
    size: int,
    seed: int = 0,
    all_kinds: bool = True,
    caption: bool = False,
    describe_first: bool = False,
    spans: bool = False,
    changes: bool = False,
) -> list[dict]:
    """Per video: the prompt prefix through the video (Lp,), the frozen tower's selected features (F, P, Dv),
    the alignment targets, and per question the prompt's token ids after the video (Ls,), the correct option's
    token ids then the end of turn (La,), the options and the answer index. With ``caption``, each video also
    gets a ``"caption"`` item: :data:`CAPTION` asked, :func:`describe`'s text as its target. With
    ``describe_first`` (the describe protocol), each video gets its ``"request"`` (the ids after the video
    through the assistant's turn, :data:`CAPTION` asked) and true ``"description"`` (then the end of turn),
    and each question's ids are its second turn, the ids that follow the description. ``spans``: the true
    description says which sampled frames show each scene (:func:`.scenes.describe` with ``frames``);
    ``changes``: it names the one attribute that changed from the scene before, where only one did."""
    tokenizer = processor.tokenizer
    video_token = processor.video_token
    out = []
    with torch.no_grad():  # not inference_mode: the features feed a graph that trains the projector
        for sample in samples:
            truth = describe(sample.scenes, frames if spans else None, changes, sample.needle)
            history = [(CAPTION, truth)] if describe_first else []
            inputs = build_inputs(processor, sample.frames(size, frames), choice_prompt(sample), history)
            ids = inputs["input_ids"][0]  # kept on the CPU, like everything encode returns; batches move later
            end = int((ids == model.config.video_token_id).nonzero().max()) + 1
            pixels = inputs["pixel_values_videos"][0].to(model.device)
            hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
            selected = hidden[model.config.vision_feature_layer]
            if model.config.vision_feature_select_strategy == "default":
                selected = selected[:, 1:]

            def after_video(prompt: str, earlier: list, truth: str = truth) -> torch.Tensor:  # ids after the video
                text = chat_prompt(processor, prompt, earlier).split(video_token)[-1]
                if earlier:
                    text = text.split(truth + tokenizer.eos_token, 1)[1]
                return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)

            request = {"ids": after_video(CAPTION, []), "target": answer_target(tokenizer, truth)}

            def turn(asked: Sample) -> dict:
                said = asked.question.options[asked.question.answer]
                return {
                    "ids": after_video(choice_prompt(asked), history),  # noqa: B023 (called in this iteration)
                    "target": answer_target(tokenizer, said),
                    "options": asked.question.options,
                    "answer": asked.question.answer,
                    "kind": asked.question.kind,
                }

            questions = [turn(asked) for asked in (video_questions(sample, seed) if all_kinds else [sample])]
            if caption:
                questions.append({**request, "kind": "caption"})
            said = [request["ids"], request["target"]] if history else []
            if not torch.equal(torch.cat([*said, questions[0]["ids"]]), ids[end:]):
                raise RuntimeError("the question suffix does not tokenise as in the full prompt")
            extra = {"request": request["ids"], "description": request["target"]} if describe_first else {}
            out.append(
                {
                    "prefix": ids[:end],
                    "features": selected.cpu().clone(),
                    "questions": questions,
                    "targets": word_targets(model, processor, sample, frames, size).cpu(),
                    **extra,
                }
            )
    return out


def described(videos: list[dict], descriptions: Sequence[torch.Tensor] | None = None) -> list[dict]:
    """The describe protocol: each video's prefix extended by its description turn (the request, then
    ``descriptions``' ids, default the true ones, ending with the end of turn), so its questions follow it;
    ``"described"`` counts the description's tokens (the prefix's last ones)."""
    said = descriptions if descriptions is not None else [v["description"] for v in videos]
    return [
        {**v, "prefix": torch.cat([v["prefix"], v["request"], d]), "described": len(d)} for v, d in zip(videos, said)
    ]


def own_descriptions(
    model: Any, videos: list[dict], tokenizer: Any, merge: bool = True
) -> tuple[list[torch.Tensor], list[str]]:
    """The model's greedy descriptions of ``videos`` (describe protocol), through :func:`merge_repeats` as
    ``vidpress eval`` asks after them (``merge=False``: the raw text): their ids then the end of turn, as a chat
    prompt carries a past reply (:func:`answer_target`), and the texts."""
    texts = greedy_answers(
        model, [{**v, "questions": [{"ids": v["request"]}]} for v in videos], tokenizer, DESCRIPTION_TOKENS
    )
    texts = [merge_repeats(t) for t in texts] if merge else texts
    return [answer_target(tokenizer, t) for t in texts], texts


def _continue(model: Any, videos: list[dict], suffixes: Callable[[dict], torch.Tensor]) -> tuple:
    """Run each question's ``suffixes(question)`` ids on its video's cached prefix.

    The prefixes (left-padded when their lengths differ, as :func:`described` makes them) run as one batch;
    the cache is gathered per question and the right-padded suffixes continue from it. Returns the suffixes'
    last hidden states (N, Ls, D) (None without questions), their lengths (N,), the attention mask so far
    (N, Lp + Ls), the cache, the questions and the prefixes' last hidden states (V, Lp, D). Gradients reach
    the projector and any LoRA.
    """
    inner, device = model.model, model.device
    video = project(model, torch.stack([v["features"] for v in videos]).to(device)).flatten(1, 2)  # (V, F*p, D)
    video = torch.cat([video, inner.image_newline.expand(len(videos), 1, -1)], dim=1)
    lengths = torch.tensor([len(v["prefix"]) for v in videos], device=device)
    past = int(lengths.max())
    prefix = torch.stack([torch.nn.functional.pad(v["prefix"], (past - len(v["prefix"]), 0)) for v in videos]).to(
        device
    )
    held = (torch.arange(past, device=device) >= past - lengths[:, None]).long()  # 0 on the left pads
    embeds = inner.get_input_embeddings()(prefix)
    embeds = embeds.masked_scatter((prefix == model.config.video_token_id)[..., None], video.to(embeds.dtype))
    out = inner.language_model(
        inputs_embeds=embeds, attention_mask=held, position_ids=(held.cumsum(1) - 1).clamp(min=0), use_cache=True
    )
    cache, questions = out.cache, [q for v in videos for q in v["questions"]]
    if not questions:
        return None, None, None, cache, questions, out.last_hidden_state
    rows = torch.tensor([i for i, v in enumerate(videos) for _ in v["questions"]], device=device)
    cache.batch_select_indices(rows)
    ids = [suffixes(q) for q in questions]
    sizes = torch.tensor([len(i) for i in ids], device=device)
    suffix = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True).to(device)
    mask = torch.cat([held[rows], (torch.arange(suffix.shape[1], device=device) < sizes[:, None]).long()], dim=1)
    positions = lengths[rows, None] + torch.arange(suffix.shape[1], device=device)
    hidden = inner.language_model(
        input_ids=suffix, attention_mask=mask, position_ids=positions, cache=cache
    ).last_hidden_state
    return hidden, sizes, mask, cache, questions, out.last_hidden_state


def _token_losses(
    model: Any, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of ``targets`` predicted from ``hidden[rows, cols]`` (the position before each)."""
    logits = model.lm_head(hidden[rows.to(hidden.device), cols.to(hidden.device)])
    return torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device), reduction="none")


def answer_loss(model: Any, videos: list[dict], description_weight: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of every question's correct option text and end of turn, teacher-forced; plus the
    caption items' own mean when :func:`encode` added them, and the descriptions' own mean for videos
    :func:`described` (so long descriptions do not drown the answers), times ``description_weight`` (most of a
    description's tokens are template words the model gets right; the few that name a scene's attributes or
    end it carry the loss, and a mean dilutes them)."""
    hidden, _, _, _, questions, prefix = _continue(model, videos, lambda q: torch.cat([q["ids"], q["target"]]))
    parts = []
    if questions:
        rows = torch.cat([torch.full((len(q["target"]),), i) for i, q in enumerate(questions)])
        cols = torch.cat([len(q["ids"]) - 1 + torch.arange(len(q["target"])) for q in questions])
        losses = _token_losses(model, hidden, rows, cols, torch.cat([q["target"] for q in questions]))
        captions = torch.cat([torch.full((len(q["target"]),), q["kind"] == "caption") for q in questions])
        parts += [losses[part.to(losses.device)] for part in (~captions, captions) if part.any()]
    if "described" in videos[0]:  # the description is the prefix's last tokens
        past = prefix.shape[1]
        rows = torch.cat([torch.full((v["described"],), i) for i, v in enumerate(videos)])
        cols = torch.cat([past - 1 - v["described"] + torch.arange(v["described"]) for v in videos])
        said = _token_losses(model, prefix, rows, cols, torch.cat([v["prefix"][-v["described"] :] for v in videos]))
        parts.append(said * description_weight)
    return sum(part.mean() for part in parts)


def greedy_answers(model: Any, videos: list[dict], tokenizer: Any, max_new_tokens: int = ANSWER_TOKENS) -> list[str]:
    """Every question's greedy answer text (up to ``max_new_tokens``, cut at the end of turn), in order."""
    hidden, lengths, mask, cache, questions, _ = _continue(model, videos, lambda q: q["ids"])
    rows = torch.arange(len(questions), device=hidden.device)
    token = model.lm_head(hidden[rows, lengths - 1]).argmax(-1)
    out, end = [token], tokenizer.eos_token_id
    for _ in range(max_new_tokens - 1):  # each row continues right after its own suffix; pads stay masked
        if bool((torch.stack(out, 1) == end).any(1).all()):  # every row has ended its turn
            break
        mask = torch.cat([mask, torch.ones(len(questions), 1, dtype=torch.long, device=mask.device)], dim=1)
        hidden = model.model.language_model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=(mask.shape[1] - 1 - (mask == 0).sum(1))[:, None],
            cache=cache,
        ).last_hidden_state
        token = model.lm_head(hidden[:, -1]).argmax(-1)
        out.append(token)
    ids = torch.stack(out, 1).tolist()
    return [tokenizer.decode(row[: row.index(end)] if end in row else row, skip_special_tokens=True) for row in ids]


def accuracy(model: Any, data: list[dict], tokenizer: Any, batch: int = 8) -> dict[str, float]:
    """Accuracy over every question of ``data`` (greedy answer matched to the options), overall (``"all"``)
    and per question kind; for the describe protocol (``data`` from ``encode(..., describe_first=True)``), each
    video's questions follow the model's own description of it (unless ``data`` is already :func:`described`)."""
    right: dict[str, list[int]] = {}
    with torch.inference_mode():
        for start in range(0, len(data), batch):
            videos = data[start : start + batch]
            if "request" in videos[0] and "described" not in videos[0]:
                videos = described(videos, own_descriptions(model, videos, tokenizer)[0])
            questions = [q for v in videos for q in v["questions"]]
            for q, text in zip(questions, greedy_answers(model, videos, tokenizer)):
                if q["kind"] == "caption":
                    continue
                hit = match_option(text, q["options"]) == q["answer"]
                right.setdefault(q["kind"], []).append(hit)
                right.setdefault("all", []).append(hit)
    return {k: float(np.mean(v)) for k, v in sorted(right.items())}
