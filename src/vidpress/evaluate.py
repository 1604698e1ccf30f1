"""Multiple-choice accuracy of a method on the procedural video-QA test split, with accuracy retained.

Each question is asked with its 4 options listed; the model greedily generates its answer (at most
:data:`ANSWER_TOKENS` tokens, so any decode-stage method runs too) and the answer counts when it names the
right option (:func:`match_option`). The answer is the option's text, not a letter: small LMs do not bind
option letters to their contents (OLMES's "cloze" versus "MCF" formulations), and SmolLM2-135M, the
testbed's LM, stayed at chance on letters even when given the scenes as text. Accuracy comes with a 95 %
Wilson interval; accuracy retained is the method's accuracy over the uncompressed model's on the same
questions. Meaningful only on a model trained for the task (see the testbed issue); an untrained model's
answers seldom name an option, so it scores at or below chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .method import Method, Stages, apply
from .pipeline import build_inputs
from .testbed.scenes import Sample

ANSWER_TOKENS = 8  # the longest options ("the object's colour") are 5 SmolLM2 tokens, plus the end of turn


def choice_prompt(sample: Sample) -> str:
    """The question, its options and the answer instruction."""
    return f"{sample.question.text}\nOptions: {', '.join(sample.question.options)}.\nAnswer with one of the options."


def match_option(text: str, options: Sequence[str]) -> int | None:
    """Index of the option a generated answer names: the one it equals (case, surrounding spaces and a final
    full stop ignored), else the one it mentions first; None when it names none."""
    said = text.strip().lower().rstrip(".").strip()
    lowered = [o.lower() for o in options]
    if said in lowered:
        return lowered.index(said)
    found = [(said.find(o), i) for i, o in enumerate(lowered) if o in said]
    return min(found)[1] if found else None


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (both ends in [0, 1])."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


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
    """Each sample's processor inputs (``frames`` frames sampled uniformly at ``size`` px, choice prompt), so a
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
        ``inputs`` do not match ``samples``.
    """
    from tqdm.auto import tqdm

    if inputs is not None and len(inputs) != len(samples):
        raise ValueError(f"{len(inputs)} prepared inputs for {len(samples)} samples; prepare() the same samples")
    name = label or (method.label if isinstance(method, Method) else method.name)
    hits, flops, end = [], 0.0, processor.tokenizer.eos_token_id
    with apply(model, method) as run, torch.inference_mode():
        for i, sample in enumerate(tqdm(samples, desc=f"eval ({name})", disable=not progress)):
            prepared = inputs[i] if inputs is not None else prepare(processor, [sample], frames=frames, size=size)[0]
            prompt = prepared["input_ids"].shape[1]
            out = model.generate(**prepared.to(model.device), max_new_tokens=ANSWER_TOKENS, do_sample=False,
                                 eos_token_id=end, pad_token_id=end)
            text = processor.tokenizer.decode(out[0, prompt:], skip_special_tokens=True)
            hits.append(match_option(text, sample.question.options) == sample.question.answer)
            flops += run.report.accounting.prefill_flops
    return EvalResult(name, sum(hits), len(samples), flops / max(1, len(samples)), tuple(hits))
