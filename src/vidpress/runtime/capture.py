"""Per-thread request state and the hooks that only record: the vision and LLM-prefill timers, and the captures
pre-LLM stages read (the unpooled grid, the pixels, the encoder's attention signals). None of them changes a
tensor; :mod:`.install` registers them beside the hooks that do.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..stages.vision.tome import unmerge
from .memory import PeakMemory
from .session import Captures, Session
from .tome import TowerMerge

if TYPE_CHECKING:
    from ..adapters.base import Adapter
    from ..stages import Stages

Add = Callable[[Any], None]  # keeps a hook handle for removal


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a timer reads the work done, not the work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class ThreadState:
    """One thread's request state. Requests from different threads on one model stay apart: generate runs
    every hook of a request in its calling thread, so each thread sees only its own captures and session."""

    active: tuple[weakref.ref, Session] | None = None
    memory: PeakMemory | None = None
    vision_s: float = 0.0
    vision_start: float = 0.0
    captures: Captures = field(default_factory=Captures)  # for the request being encoded; one per request
    encoder_s: float = 0.0
    vision_kwargs: dict = field(default_factory=dict)
    sessions: list[Session] = field(default_factory=list)
    requesting: bool = False  # inside start_request: tower calls there belong to the request being started
    merging: TowerMerge | None = None  # a merging vision stage's state during its tower call
    evidence: Tensor | None = None  # evidence masks (F, H, W) of this thread's next request


def register_vision_timer(
    adapter: Adapter,
    state: Callable[[], ThreadState],
    device: Callable[[], torch.device],
    on_call: Callable[[], None],
    add: Add,
) -> None:
    """Time every vision module's call into the thread's ``vision_s`` (seconds); ``on_call`` runs first (the
    runtime's new-request check). The tower's own kwargs (e.g. Qwen's ``grid_thw``, which generate does not
    pass on to the forward) are kept for the request."""
    tower = adapter.vision_modules()[0]

    def pre(module: Any, args: tuple, kwargs: dict) -> None:
        if module is tower:
            state().vision_kwargs = kwargs
        on_call()
        sync(device())
        state().vision_start = time.perf_counter()

    def post(module: Any, args: tuple, output: Any) -> None:
        sync(device())
        state().vision_s += time.perf_counter() - state().vision_start

    for module in adapter.vision_modules():
        add(module.register_forward_pre_hook(pre, with_kwargs=True))
        add(module.register_forward_hook(post))


def register_captures(
    adapter: Adapter,
    stages: Stages,
    state: Callable[[], ThreadState],
    device: Callable[[], torch.device],
    add: Add,
) -> None:
    """Capture what the pre-LLM stage declares it needs into the thread's :class:`Captures`: the projected grid
    before the family's pooling, the pixels (B*F, 3, H, W) (generate consumes ``pixel_values_videos`` early),
    and the encoder attention signals. Signal capture is method overhead: its seconds move from ``vision_s``
    to ``encoder_s``."""
    pre = stages.pre_llm
    if pre is None:
        return

    def projected(module: Any, args: tuple, output: Any) -> None:
        state().captures.projected = output

    capture = adapter.unpooled_capture() if pre.needs.unpooled else None
    if capture is not None:
        module, where = capture
        if where == "input":
            add(module.register_forward_pre_hook(lambda m, args: projected(m, args, args[0])))
        else:
            add(module.register_forward_hook(projected))

    def encoder(module: Any, args: tuple, kwargs: dict) -> None:
        started = time.perf_counter()
        t = state()
        received, keys = adapter.encoder_signals(module, args, kwargs, t.vision_kwargs)
        merging = t.merging
        if merging is not None and merging.groups:  # ToMe with grid: each patch takes its merged token's signals
            received, keys = unmerge(received[..., None], merging.groups[-1])[..., 0], unmerge(keys, merging.groups[-1])
        t.captures.encoder = received, keys
        sync(device())
        elapsed = time.perf_counter() - started
        t.encoder_s += elapsed
        t.vision_s -= elapsed

    if pre.needs.encoder_attention:
        add(adapter.encoder_attention().register_forward_pre_hook(encoder, with_kwargs=True))

    def pixels(module: Any, args: tuple) -> None:
        state().captures.pixels = args[0] if args else None

    if pre.needs.pixels:
        add(adapter.vision_modules()[0].register_forward_pre_hook(pixels))


def register_llm_timer(
    llm: Any, session_of: Callable[[Any], Session | None], device: Callable[[], torch.device], add: Add
) -> None:
    """Time the language model's prefill call into the session's ``llm_prefill_s`` (seconds)."""

    def pre(module: Any, args: tuple, kwargs: dict) -> None:
        session = session_of(kwargs.get("cache"))
        if session is not None and session.ctx.step == 0:
            sync(device())
            session.timings.llm_start = time.perf_counter()

    def post(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        session = session_of(kwargs.get("cache"))
        if session is not None and session.ctx.step == 0:
            sync(device())
            session.timings.llm_prefill_s = time.perf_counter() - session.timings.llm_start

    add(llm.register_forward_pre_hook(pre, with_kwargs=True))
    add(llm.register_forward_hook(post, with_kwargs=True))
