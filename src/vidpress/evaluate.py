"""Multiple-choice accuracy of a method on the procedural video-QA test split, with accuracy retained.

Each question is asked with its 4 options listed; the model greedily generates its answer (at most
:data:`ANSWER_TOKENS` tokens, so any decode-stage method runs too) and the answer counts when it names the
right option (:func:`match_option`). The answer is the option's text, not a letter: small LMs do not bind
option letters to their contents (OLMES's "cloze" versus "MCF" formulations), and SmolLM2-135M, the
testbed's LM, stayed at chance on letters even when given the scenes as text. Accuracy comes with a 95 %
Wilson interval; accuracy retained is the method's accuracy over the uncompressed model's on the same
questions. Meaningful only on a model trained for the task (the testbed); an untrained model's
answers seldom name an option, so it scores at or below chance.

Two protocols (:data:`PROTOCOLS`): ``direct`` asks the question right after the video; ``describe`` first has
the model describe the video (:data:`CAPTION`, up to :data:`DESCRIPTION_TOKENS` tokens) and asks the question
in a second turn after its own description (neighbouring scenes told the same merged: :func:`merge_repeats`), a
chain of thought the testbed is trained for when its record says so. Both requests run with the method
installed; the prefill FLOPs reported are their sum.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .evidence import EvidenceSurvival
from .method import Method
from .methods import apply
from .pipeline import build_inputs
from .stages import Stages
from .testbed.scenes import Sample

ANSWER_TOKENS = 8  # the longest options ("the object's colour") are 5 SmolLM2 tokens, plus the end of turn
PROTOCOLS = ("direct", "describe")  #: ask after the video, or after the model's own description of it
CAPTION = "Describe each scene."  #: the describe protocol's first turn (and the testbed's caption task)
DESCRIPTION_TOKENS = 128  #: description length cap (5 scenes: about 60 SmolLM2 tokens, up to 102 with frame spans)


_SCENE = re.compile(r"\s*Scene \d+(?: \(frames? (\d+)(?:-(\d+))?\))?: ([^.]*)\.")  # one sentence of a description


def merge_repeats(description: str) -> str:
    """``description`` with each run of consecutive scenes that read the same merged into one scene, renumbered
    (frame spans joined: "Scene 1 (frames 1-3): X. Scene 2 (frames 4-5): X." becomes "Scene 1 (frames 1-5): X.").

    The describe protocol's tidy step: a trained testbed's main description error is a long scene told twice
    (seen in every describe-protocol training), and the procedural generator starts a new scene where the looks
    change (5 of the
    560 test videos have two neighbouring scenes that differ only in motion, which merging then undercounts).
    Scenes compare by their looks alone: a "; changed: ..." note (``describe(..., changes=True)``) stays with the
    first scene of a run, where the change is (one told on a repeat is dropped), and a needle told on a later
    scene of the run (``describe(..., needle=...)``) is added to it once. Text after the last whole scene sentence
    (a description cut at the length cap) is kept, its scene renumbered."""
    scenes: list[list[str]] = []  # [first scene number, last scene number, looks]
    at = 0
    for found in _SCENE.finditer(description):
        if found.start() != at:
            break
        first, last, looks = found.groups()
        if scenes and scenes[-1][2].split(";")[0] == looks.split(";")[0]:  # the looks, without any "; ..." note
            scenes[-1][1] = last or first
            for note in looks.split(";")[1:]:  # a needle told on a repeat stays, once; a change stays with the first
                if note.strip().startswith("briefly") and note not in scenes[-1][2].split(";")[1:]:
                    scenes[-1][2] += ";" + note
        else:
            scenes.append([first, last or first, looks])
        at = found.end()
    if not scenes:
        return description

    def sentence(i: int, first: str | None, last: str | None, looks: str) -> str:
        span = "" if first is None else f" (frame {first})" if first == last else f" (frames {first}-{last})"
        return f"Scene {i}{span}: {looks}."

    tail = re.sub(r"^\s*Scene \d+", f" Scene {len(scenes) + 1}", description[at:], count=1)
    return " ".join(sentence(i + 1, *s) for i, s in enumerate(scenes)) + tail


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


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean of ``values`` and its 95 % normal interval from their spread (clamped to [0, 1])."""
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    half = z * spread / math.sqrt(len(values))
    return mean, max(0.0, mean - half), min(1.0, mean + half)


@dataclass
class EvalResult:
    """Accuracy of one method on ``total`` questions; ``prefill_flops`` is the mean LLM prefill FLOPs;
    ``hits`` says per question whether it was right, in the samples' order."""

    method: str
    correct: int
    total: int
    prefill_flops: float
    hits: tuple[bool, ...] = ()
    evidence: tuple[EvidenceSurvival, ...] = ()  #: per question with a needle: where it went (its last request)

    def evidence_summary(self) -> dict[str, tuple[float, float, float]]:
        """Mean share of the needle (strict, merged, alive per LLM layer) over the questions, each with its 95 %
        normal interval: ``{"strict": (mean, low, high), ...}``; empty without needles."""
        if not self.evidence:
            return {}
        values = {
            "strict": [e.strict for e in self.evidence],
            "merged": [e.merged for e in self.evidence],
            "alive": [sum(e.prefill_reached) / len(e.prefill_reached) for e in self.evidence],
        }
        return {name: mean_interval(v) for name, v in values.items()}

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


def prepare(
    processor: Any, samples: Sequence[Sample], *, frames: int = 12, size: int = 112, protocol: str = "direct"
) -> list[Any]:
    """Each sample's processor inputs for its first request (``frames`` frames sampled uniformly at ``size`` px;
    the choice prompt, or :data:`CAPTION` for the describe protocol), so a matrix of methods renders and
    tokenises every video once."""
    first = {"direct": choice_prompt, "describe": lambda _: CAPTION}[_checked(protocol)]
    return [build_inputs(processor, sample.frames(size, frames), first(sample)) for sample in samples]


def _checked(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}; a trained testbed's record names its own")
    return protocol


def greedy_text(
    model: Any, processor: Any, inputs: Any, run: Any, max_new_tokens: int, evidence: Any = None
) -> tuple[str, float]:
    """Greedy text after ``inputs`` (cut at the end of turn) and the request's LLM prefill FLOPs (``run`` is
    the ``apply`` context the method is installed with; ``evidence``: masks the request traces)."""
    if evidence is not None:
        run.set_evidence(evidence)
    end = processor.tokenizer.eos_token_id
    out = model.generate(
        **inputs.to(model.device), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end, pad_token_id=end
    )
    text = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return text, run.report.accounting.prefill_flops


def evaluate(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    method: Method | Stages,
    *,
    frames: int = 12,
    size: int = 112,
    progress: bool = True,
    label: str | None = None,
    inputs: Sequence[Any] | None = None,
    protocol: str = "direct",
    merge: bool = True,
) -> EvalResult:
    """Ask every sample with ``method`` installed; ``frames`` frames sampled uniformly from each rendered video
    (``size`` px), or the ``inputs`` :func:`prepare` made for these samples (same ``protocol``, one of
    :data:`PROTOCOLS`). ``merge``: the describe protocol asks after its description through
    :func:`merge_repeats` (False: the raw text, an ablation). Returns an :class:`EvalResult`.

    Raises
    ------
    ValueError
        ``inputs`` do not match ``samples``; or ``protocol`` is unknown.
    """
    from tqdm.auto import tqdm

    if inputs is not None and len(inputs) != len(samples):
        raise ValueError(f"{len(inputs)} prepared inputs for {len(samples)} samples; prepare() the same samples")
    name = label or (method.label if isinstance(method, Method) else method.name)
    describing = _checked(protocol) == "describe"
    hits, flops, traced = [], 0.0, []
    with apply(model, method) as run, torch.inference_mode():
        for i, sample in enumerate(tqdm(samples, desc=f"eval ({name})", disable=not progress)):
            prepared = (
                inputs[i]
                if inputs is not None
                else prepare(processor, [sample], frames=frames, size=size, protocol=protocol)[0]
            )
            needle = None if sample.needle is None else torch.from_numpy(sample.needle_masks(frames, size))
            if describing:  # the description, then the question in a second turn after it
                said, cost = greedy_text(model, processor, prepared, run, DESCRIPTION_TOKENS, needle)
                said = merge_repeats(said.strip()) if merge else said.strip()
                prepared = build_inputs(
                    processor, sample.frames(size, frames), choice_prompt(sample), [(CAPTION, said)]
                )
                flops += cost
            text, cost = greedy_text(model, processor, prepared, run, ANSWER_TOKENS, needle)
            hits.append(match_option(text, sample.question.options) == sample.question.answer)
            flops += cost
            found = run.report.evidence
            if needle is not None and found is not None:
                traced.append(found)
    return EvalResult(name, sum(hits), len(samples), flops / max(1, len(samples)), tuple(hits), tuple(traced))
