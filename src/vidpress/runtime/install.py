"""Install and remove every hook for (model, adapter, stages): every hook is registered from here (the model's
request hooks; through :mod:`.capture` the timers and captures, :mod:`.tome` ToMe's merging, :mod:`.layers` the
decoder-layer surgery) into one list of handles, and removed together.

Nothing on the model is replaced or mutated: the attention implementation, the classes and the cache type
stay as they are; every hook is removed by :meth:`Run.remove` (or on leaving the ``with`` block). The one
wrapper: when a vision or pre-LLM stage is installed, the family's video encoder entry point is wrapped on the
instance (:mod:`.encoder`: frame skipping, ToMe, deferred encoding); removing the method deletes the wrapper.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

import torch
from torch import Tensor

from ..adapters.registry import adapter_for
from ..errors import AlreadyAppliedError, VidpressError
from ..report import Report
from ..stages import Stages
from .capture import ThreadState, register_captures, register_llm_timer, register_vision_timer, sync
from .compat import check_stages
from .encoder import VideoEncoder
from .kv import trim_cache
from .layers import register_layer_hooks
from .memory import PeakMemory
from .prefill import decode_inputs, start_request
from .session import Captures, Session
from .tome import register

_INSTALLED: weakref.WeakSet = weakref.WeakSet()  # models with a Run installed


class Run:
    """Handle of a method installed on a model; a context manager that removes it on exit.

    Requests may run concurrently from several threads on one model: each thread's request keeps its own
    state, and :attr:`report` / :attr:`last_session` are the calling thread's latest. Peak memory on CPU is
    the process's, so it overlaps between concurrent requests.

    Attributes
    ----------
    reports : list[Report]
        One report per request (prefill with a video) since installation, oldest first, all threads.

    Raises
    ------
    AlreadyAppliedError
        The model already has a method installed (nested ``apply``); compose the stages into one method.
    """

    def __init__(self, model: Any, stages: Stages, name: str):
        if model in _INSTALLED:
            raise AlreadyAppliedError(
                f"vidpress is already applied to this {type(model).__name__}; remove it first (leave its `with` "
                "block or call run.remove()), or put every stage into one method with vidpress.compose(...)"
            )
        self.model, self.name = model, name
        self.adapter = adapter_for(model)
        self.stages = stages.for_depth(len(self.adapter.decoder_layers()))
        self._handles: list[Any] = []
        self._wrapped: tuple[Any, str] | None = None
        self._local = threading.local()
        self._sessions: list[Session] = []
        try:
            self._install()
        except Exception:  # e.g. an adapter refusing a stage: leave the model exactly as it was
            self.remove()
            raise
        _INSTALLED.add(model)

    @property
    def _t(self) -> ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = ThreadState()
        return state

    # -- hooks -------------------------------------------------------------------------------------
    def session_of(self, cache: Any) -> Session | None:
        cache = getattr(cache, "_cache", cache)
        if cache is None or self._t.active is None or self._t.active[0]() is not cache:
            return None
        return self._t.active[1]

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _model_pre(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            kwargs = {"input_ids": args[0], **kwargs}
            args = ()
        if "past_key_values" in kwargs:
            kwargs["cache"] = kwargs.pop("past_key_values")
            if self._sessions and kwargs["cache"] is not None and kwargs["cache"].get_seq_length() > 0:
                raise VidpressError(
                    f"decoding with vidpress installed needs transformers>=5.20 (its decoder takes `cache`); this "
                    f"environment has {transformers_version()} (e.g. vLLM's pin): a single forward (prefill) works, "
                    "generate does not; install transformers>=5.20 in another environment"
                )
        cache = kwargs.get("cache")
        if self.adapter.has_video(kwargs) and (cache is None or cache.get_seq_length() == 0):
            if self._t.memory is None:  # generate encodes the video before this call; the meter may be running
                self._t.memory = PeakMemory(self._device())
            started = time.perf_counter()
            self.adapter.restore_inputs(kwargs, self._t.vision_kwargs)
            captures = self._t.captures  # what encoding this request left, and leaves inside start_request
            if self._wrapped is not None and kwargs.get("pixel_values_videos") is not None:
                captures.encoded = None  # a direct forward: the wrapper runs inside start_request and sets it
            vision_before = self._t.vision_s  # encoding inside start_request is timed from ``started``
            self._t.requesting = True
            try:
                session = start_request(self.model, self.adapter, self.stages, kwargs, captures, self._t.evidence)
            finally:
                self._t.requesting = False
                self._t.captures = Captures()  # the next request starts with an empty record
                self._t.evidence = None
            session.timings.overhead_s += self._t.encoder_s
            self._t.encoder_s = 0.0
            session.started = started
            session.timings.vision_before_s = vision_before
            self._t.active = (weakref.ref(kwargs["cache"]), session)
            self._t.sessions.append(session)
            self._sessions.append(session)
        elif (decoding := self.session_of(cache)) is not None:
            decode_inputs(decoding, kwargs)
            sync(self._device())
            decoding.timings.step_start = time.perf_counter()
        return args, kwargs

    def _model_post(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        session = self.session_of(kwargs.get("cache"))
        if session is None:
            return
        sync(self._device())
        now = time.perf_counter()
        if session.ctx.step == 0 and self.stages.decode is not None and self.stages.decode.needs.trim_after_prefill:
            started = time.perf_counter()
            trim_cache(session, kwargs["cache"], self.stages.decode.first_layer)
            session.timed(started)
        if session.ctx.step == 0:
            # Vision encoding that ran before this call (generate pre-encodes the video) is part of TTFT.
            session.timings.ttft_s = now - session.started + session.timings.vision_before_s
            session.timings.vision_s = self._t.vision_s
            self._t.vision_s = 0.0
        else:
            session.timings.decode_s += now - session.timings.step_start
            session.decode_steps += 1
        if self._t.memory is not None:
            session.peak_memory_bytes = max(session.peak_memory_bytes, self._t.memory.peak)

    def _new_request(self) -> None:
        """At each vision call: outside a request being started, with no request active or the active one past
        its prefill, the call begins a new request, so the previous request's memory meter stops."""
        if not self._t.requesting and (self._t.active is None or self._t.active[1].ctx.step > 0):
            self._finish()
            self._t.active = None
            self._t.memory = PeakMemory(self._device())

    def _install(self) -> None:
        check_stages(self.adapter, self.stages)
        add = self._handles.append
        if self.stages.vision is not None or self.stages.pre_llm is not None:
            owner, name = self.adapter.video_encoder()
            original = getattr(owner, name)
            setattr(owner, name, VideoEncoder(self.adapter, self.stages, lambda: self._t).wrap(original))
            self._wrapped = (owner, name)
        add(self.model.register_forward_pre_hook(self._model_pre, with_kwargs=True, prepend=True))
        add(self.model.register_forward_hook(self._model_post, with_kwargs=True))
        register_vision_timer(self.adapter, lambda: self._t, self._device, self._new_request, add)
        vision = self.stages.vision
        if vision is not None and (vision.merges or vision.first_pass_merging is not None):
            tower = self.adapter.vision_modules()[0]
            register(self.adapter.tower_blocks(), tower, lambda: self._t.merging, add)
        register_captures(self.adapter, self.stages, lambda: self._t, self._device, add)
        register_llm_timer(self.adapter.language_model(), self.session_of, self._device, add)
        register_layer_hooks(self.adapter, self.stages, self.session_of, add)

    # -- public ------------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self._t.memory is not None:
            self._t.memory.stop()
            self._t.memory = None

    def _latest(self) -> Session:
        sessions = self._t.sessions or self._sessions
        if not sessions:
            raise LookupError("no video request has run through the model since the method was installed")
        return sessions[-1]

    def set_evidence(self, masks: Tensor) -> None:
        """Track where the evidence of this thread's next request goes: ``masks`` (F, H, W) in [0, 1], one per frame
        given to the processor (1: a pixel the question needs; :func:`vidpress.evidence.boxes_to_masks` makes them
        from boxes). That request's report then carries ``evidence`` (:class:`~vidpress.evidence.EvidenceSurvival`).

        Raises
        ------
        InvalidParameterError
            ``masks`` not (F, H, W) in [0, 1] (checked here); at the request, a frame count that does not match
            the video's.
        """
        from ..evidence import token_evidence

        token_evidence(masks, (1, 1))  # the shape and range, before any request
        self._t.evidence = masks

    @property
    def last_session(self) -> Session:
        """The calling thread's latest request's session (layouts per layer, events, stage plans), for inspection
        and tests; the latest of any thread when this one ran none."""
        return self._latest()

    @property
    def reports(self) -> list[Report]:
        return [Report.from_session(self.model, s, self.name) for s in self._sessions]

    @property
    def report(self) -> Report:
        """The report of the calling thread's latest request (of any thread's when this one ran none).

        Raises
        ------
        LookupError
            No request with a video went through the model since installation.
        """
        return Report.from_session(self.model, self._latest(), self.name)

    def remove(self) -> None:
        """Remove every hook; the model behaves exactly as before installation."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._wrapped is not None:
            owner, name = self._wrapped
            owner.__dict__.pop(name, None)
            self._wrapped = None
        self._finish()
        self._t.active = None
        self._t.captures = Captures()
        _INSTALLED.discard(self.model)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def install(model: Any, stages: Stages, name: str) -> Run:
    return Run(model, stages, name)


def transformers_version() -> str:
    import transformers

    return transformers.__version__
