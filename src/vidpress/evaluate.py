"""Multiple-choice accuracy of a method on the procedural video-QA test split, with accuracy retained.

Each question is asked with its options lettered A-D; the model's answer is the letter whose token gets the
highest next-token logit after the prompt (one prefill per question, no sampling). Accuracy comes with a
95 % Wilson interval; accuracy retained is the method's accuracy over the uncompressed model's on the same
questions. Meaningful only on a model trained for the task (see the testbed issue); on an untrained model
it measures chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .method import Method, Stages, apply
from .pipeline import build_inputs
from .testbed.scenes import Sample

LETTERS = "ABCD"


def choice_prompt(sample: Sample) -> str:
    """The question, its lettered options and the answer instruction."""
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, sample.question.options))
    return f"{sample.question.text}\n{options}\nAnswer with the option's letter."


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (both ends in [0, 1])."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def letter_token_ids(processor: Any) -> list[int]:
    """Token ids of the option letters A-D.

    Raises
    ------
    ValueError
        The tokenizer has no single token for each letter.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = [tokenizer.convert_tokens_to_ids(letter) for letter in LETTERS]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("the tokenizer needs one token per option letter A-D to score multiple choice")
    return ids


@dataclass
class EvalResult:
    """Accuracy of one method on ``total`` questions; ``prefill_flops`` is the mean LLM prefill FLOPs;
    ``hits`` says per question whether it was right, in the samples' order."""

    method: str
    correct: int
    total: int
    prefill_flops: float
    hits: tuple[bool, ...] = ()

    def by_kind(self, samples: Sequence[Sample]) -> dict[str, float]:
        """Accuracy per question kind of ``samples`` (the ones evaluated, same order)."""
        kinds: dict[str, list[bool]] = {}
        for sample, hit in zip(samples, self.hits, strict=True):
            kinds.setdefault(sample.question.kind, []).append(hit)
        return {kind: sum(v) / len(v) for kind, v in sorted(kinds.items())}

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.correct, self.total)


def prepare(processor: Any, samples: Sequence[Sample], *, frames: int = 12, size: int = 112) -> list[Any]:
    """Each sample's processor inputs (``frames`` frames sampled uniformly at ``size`` px, lettered prompt), so a
    matrix of methods renders and tokenises every video once."""
    return [build_inputs(processor, sample.frames(size, frames), choice_prompt(sample)) for sample in samples]


def evaluate(model: Any, processor: Any, samples: Sequence[Sample], method: Method | Stages, *, frames: int = 12,
             size: int = 112, progress: bool = True, label: str | None = None,
             inputs: Sequence[Any] | None = None) -> EvalResult:
    """Ask every sample with ``method`` installed; ``frames`` frames sampled uniformly from each rendered video
    (``size`` px), or the ``inputs`` :func:`prepare` made for these samples. Returns an :class:`EvalResult`.

    Raises
    ------
    ValueError
        The tokenizer has no single token for each option letter, or ``inputs`` do not match ``samples``.
    """
    from tqdm.auto import tqdm

    letter_ids = letter_token_ids(processor)
    if inputs is not None and len(inputs) != len(samples):
        raise ValueError(f"{len(inputs)} prepared inputs for {len(samples)} samples; prepare() the same samples")
    name = label or (method.label if isinstance(method, Method) else method.name)
    hits, flops = [], 0.0
    with apply(model, method) as run, torch.inference_mode():
        for i, sample in enumerate(tqdm(samples, desc=f"eval ({name})", disable=not progress)):
            prepared = inputs[i] if inputs is not None else prepare(processor, [sample], frames=frames, size=size)[0]
            logits = model(**prepared.to(model.device)).logits[0, -1]
            hits.append(int(logits[letter_ids].argmax()) == sample.question.answer)
            flops += run.report.accounting.prefill_flops
    return EvalResult(name, sum(hits), len(samples), flops / max(1, len(samples)), tuple(hits))
