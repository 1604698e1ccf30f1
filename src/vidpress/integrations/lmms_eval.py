"""lmms-eval plugin: any vidpress method on lmms-eval's video benchmarks, without a fork of either.

    pip install lmms-eval
    lmms-eval --model vidpress --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,method=metok \\
        --tasks videomme,mvbench,nextqa_mc_test --batch_size 1

vidpress registers ``vidpress`` in lmms-eval's entry-point group ``lmms_eval.models`` (see pyproject.toml), so
an installed vidpress is found by lmms-eval's model registry. ``model_args``: ``pretrained`` (hub id, local
checkpoint, or vidpress's ``default`` / ``random:...``), ``method`` (a name from ``vidpress methods``, default
``none``), ``max_frames_num`` (frames sampled uniformly, default 32), ``device``, ``dtype``, and every other
key is a hyperparameter of the method (``k=0.7``, ``retention=0.25``). lmms-eval splits ``model_args`` at commas,
so a tuple is written with semicolons: ``layers=3;10;19``. Supported model classes are vidpress's adapters
(LLaVA-OneVision, LLaVA-NeXT-Video, Qwen2.5-VL, Qwen3-VL and its MoE).

Under ``accelerate launch --num_processes N -m lmms_eval ...`` (or torchrun) each process reads its ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``: the model goes to ``cuda:LOCAL_RANK`` and ``rank`` / ``world_size`` tell
lmms-eval's evaluator which share of the requests this process answers. Each answer is a ``GenerationResult``
whose ``TokenCounts`` carry the prompt tokens the LLM really received (after compression) and the tokens
generated, so lmms-eval's efficiency section shows what the method saved.

The wrapper answers ``generate_until`` requests (lmms-eval's video QA tasks, multiple choice included, are
generation tasks); ``loglikelihood`` raises NotImplementedError. Without lmms-eval installed the class still
works when called directly (it then derives from ``object``), which is how it is tested offline.
"""

from __future__ import annotations

import ast
from typing import Any

try:  # the plugin base class; optional so the wrapper imports and is testable without lmms-eval
    from lmms_eval.api.model import lmms as _Base
except ImportError:  # pragma: no cover - depends on the environment
    _Base = object


def _value(text: Any) -> Any:
    """lmms-eval passes model_args as strings: '0.7' -> 0.7, '3;10;19' -> (3, 10, 19) (a tuple, since commas
    separate the arguments), '(3,10,19)' -> (3, 10, 19), 'fixed' -> 'fixed'."""
    if not isinstance(text, str):
        return text
    if ";" in text:
        return tuple(_value(part.strip()) for part in text.strip("()[] ").split(";") if part.strip())
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) as ``accelerate launch`` and ``torchrun`` set them; (0, 1, 0) alone."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


class VidpressLMM(_Base):
    """lmms-eval model ``vidpress``: a vidpress-supported model with ``method`` installed for every request.

    Raises
    ------
    UnsupportedModelError
        ``pretrained`` is not a supported model class.
    UnknownMethodError
        An unknown method or hyperparameter.
    """

    def __init__(
        self,
        pretrained: str = "default",
        method: str = "none",
        max_frames_num: int = 32,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 1,
        **method_args: Any,
    ):
        if _Base is not object:
            super().__init__()
        from ..methods import get_method
        from ..models.loading import load_model

        if int(batch_size) != 1:
            raise ValueError(f"the vidpress lmms-eval model runs one request at a time; got batch_size={batch_size}")
        import torch

        self._rank, self._world_size, local_rank = _distributed()
        if device is None and self._world_size > 1 and torch.cuda.is_available():
            device = f"cuda:{local_rank}"  # one process per GPU, each with its share of the requests
        self.loaded = load_model(pretrained, dtype=dtype, device=device)
        self.method = get_method(method, **{k: _value(v) for k, v in method_args.items()})
        self.max_frames_num = int(max_frames_num)
        self.task_dict: dict = getattr(self, "task_dict", {})
        self.reports: list = []  # vidpress's accounting of every request, for users who want the savings too

    def generate_until(self, requests: list) -> list[Any]:
        """One answer per request (a ``GenerationResult`` with token counts where lmms-eval has it, else the
        text): ``args`` = (context, gen_kwargs, doc_to_visual, doc_id, task, split), the visual being a video
        path; greedy decoding, cut at ``gen_kwargs['until']``."""
        from tqdm.auto import tqdm

        from ..io.video import load_video
        from ..pipeline import ask

        answers = []
        for request in tqdm(requests, desc="vidpress", disable=len(requests) < 2):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = [v for v in doc_to_visual(self.task_dict[task][split][doc_id]) if isinstance(v, str)]
            if not visuals:
                raise ValueError(f"{task} doc {doc_id} has no video path; the vidpress model answers video tasks")
            video = load_video(visuals[0], self.max_frames_num)
            answer = ask(
                self.loaded.model,
                self.loaded.processor,
                video.frames,
                context,
                self.method,
                max_new_tokens=int(gen_kwargs.get("max_new_tokens", 32)),
                progress=False,
                timestamps=video.timestamps,  # Qwen3-VL writes each temporal patch's time into the prompt
            )
            text = answer.text
            for stop in gen_kwargs.get("until", []) or []:
                text = text.split(stop)[0] if stop else text
            self.reports.append(answer.report)
            acc = answer.report.accounting
            answers.append(_result(text, acc.other_tokens + acc.prefill_visual[0], len(answer.tokens)))
        return answers

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def loglikelihood(self, requests: list) -> list:
        raise NotImplementedError("the vidpress lmms-eval model answers generate_until tasks only")

    def generate_until_multi_round(self, requests: list) -> list:
        raise NotImplementedError("the vidpress lmms-eval model answers single-round generate_until tasks only")


def _result(text: str, input_tokens: int, output_tokens: int) -> Any:
    """lmms-eval's ``GenerationResult`` with its ``TokenCounts`` (input = the compressed prompt the LLM received);
    the plain text where lmms-eval is too old to have them or not installed."""
    try:
        from lmms_eval.api.instance import GenerationResult, TokenCounts
    except ImportError:
        return text
    return GenerationResult(text, TokenCounts(input_tokens=input_tokens, output_tokens=output_tokens))


def manifest() -> Any:
    """The entry point lmms-eval's registry loads (group ``lmms_eval.models``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="vidpress", simple_class_path="vidpress.integrations.lmms_eval.VidpressLMM")
