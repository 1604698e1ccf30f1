"""Ask a question about a video with a method applied: the code path behind ``vidpress run`` and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from ._checks import check_context
from .errors import InvalidParameterError, PromptTooLongError
from .method import Method
from .methods import apply
from .report import Report
from .stages import Stages


class ProgressStreamer(BaseStreamer):
    """A tqdm bar over generated tokens (``generate``'s streamer hook)."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="tok", disable=not enabled, leave=False)
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        self.bar.update(1)

    def end(self) -> None:
        self.bar.close()


@dataclass
class Answer:
    """A generated answer: text, its report, the generated token ids, and the scores (V,) the first token was
    chosen from: the logits after generation's processors, so a token that ``min_new_tokens`` forbade (the
    end of sequence) is -inf there, as it was for the choice."""

    text: str
    report: Report
    tokens: list[int]
    first_logits: torch.Tensor | None = None


def chat_prompt(processor: Any, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt text for one video then ``question``, as the processor's own chat template writes it.
    ``history`` holds earlier (user text, assistant reply) turns; the video opens the first user turn."""
    conversation: list[dict] = []
    for asked, said in history:
        conversation += [
            {"role": "user", "content": [{"type": "text", "text": asked}]},
            {"role": "assistant", "content": [{"type": "text", "text": said}]},
        ]
    conversation.append({"role": "user", "content": [{"type": "text", "text": question}]})
    conversation[0]["content"].insert(0, {"type": "video"})
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def check_question(question: str) -> str:
    """``question`` if it is encodable text with something to ask. Raises InvalidParameterError naming the first bad
    character (e.g. undecodable bytes from the command line), or an empty or blank question, before any model
    work."""
    if not question.strip():
        raise InvalidParameterError(f"the question is empty ({question!r}); ask something about the video")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParameterError(
            f"the question is not valid UTF-8 text ({question[exc.start]!r} at position {exc.start}); pass UTF-8 text"
        ) from None
    return question


def check_frames(model: Any, processor: Any, frames: int, question: str, new_tokens: int) -> None:
    """Refuse, before any frame is decoded, ``frames`` frames whose video placeholders, with the prompt around
    ``question`` and ``new_tokens`` to generate, exceed the LLM's positions. Only processors that count a video's
    placeholders from its frame count (vidpress's offline ones: ``tokens_per_video``) are checked here; the
    others are checked once the prompt is built.

    Raises
    ------
    PromptTooLongError
        The prompt would not fit; the message says how many frames would.
    """
    count = getattr(processor, "tokens_per_video", None)
    config = getattr(model.config, "text_config", model.config)
    limit = getattr(config, "max_position_embeddings", None)
    if count is None or limit is None:
        return
    ids = processor.tokenizer(chat_prompt(processor, check_question(question)))["input_ids"]
    text = len(ids) - sum(1 for t in ids if t == processor.tokenizer.convert_tokens_to_ids(processor.video_token))
    if text + count(frames) + new_tokens > limit:
        fit = max((f for f in range(1, frames) if text + count(f) + new_tokens <= limit), default=0)
        raise PromptTooLongError(
            f"{frames} frames take {count(frames)} visual placeholders; with the {text} tokens of the prompt and "
            f"{new_tokens} to generate that is past the model's {limit} positions: at most {fit} frames fit"
        )


def build_inputs(
    processor: Any,
    frames: np.ndarray,
    question: str,
    history: Sequence[tuple[str, str]] = (),
    timestamps: Sequence[float] | np.ndarray | None = None,
) -> Any:
    """Chat-formatted prompt with one video (then ``history``'s turns, see :func:`chat_prompt`), tokenised with
    the video's frames by the processor. ``timestamps``: each frame's time in seconds (``Video.timestamps``), for
    vidpress's processors that write times into the prompt (Qwen3-VL's); other processors never receive them.

    Raises
    ------
    InvalidParameterError
        ``question`` is not encodable text.
    """
    text = chat_prompt(processor, check_question(question), history)
    if timestamps is None or not hasattr(processor, "patch_times"):
        return processor(text=text, videos=[frames], return_tensors="pt")
    return processor(text=text, videos=[frames], return_tensors="pt", timestamps=[list(timestamps)])


def ask(
    model: Any,
    processor: Any,
    frames: np.ndarray,
    question: str,
    method: Method | Stages,
    *,
    max_new_tokens: int = 32,
    min_new_tokens: int = 0,
    progress: bool = True,
    label: str | None = None,
    timestamps: Sequence[float] | np.ndarray | None = None,
    evidence: Any = None,
) -> Answer:
    """Greedy-generate an answer with ``method`` installed and return it with the request's report
    (``timestamps``: see :func:`build_inputs`; ``evidence``: masks (F, H, W) whose survival the report traces,
    :meth:`~vidpress.runtime.install.Run.set_evidence`).

    ``min_new_tokens`` forces decoding to run (an untrained model may stop at once, leaving nothing to measure).

    Raises
    ------
    PromptTooLongError
        The prompt plus ``max_new_tokens`` exceed the model's positions (checked before generating).
    """
    inputs = build_inputs(processor, frames, question, timestamps=timestamps).to(model.device)
    check_context(model, inputs["input_ids"].shape[1], max_new_tokens)
    name = label or (method.label if isinstance(method, Method) else method.name)
    streamer = ProgressStreamer(max_new_tokens, f"generating ({name})", progress)
    with apply(model, method) as run, torch.inference_mode():
        if evidence is not None:
            run.set_evidence(evidence)
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            streamer=streamer,
            min_new_tokens=min_new_tokens,
            output_scores=True,
            return_dict_in_generate=True,
        )
    new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    text = processor.batch_decode([new], skip_special_tokens=True)[0].strip()
    report = run.report
    report.method = name
    return Answer(text, report, new, out.scores[0][0].float().cpu())
