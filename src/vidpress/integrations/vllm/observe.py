"""What the vLLM plugin tells an operator about each request: Prometheus counters on the API server's ``/metrics``,
a log line per request (the first at INFO, the rest at DEBUG), and a warning when images reach a compressed engine.

Counted where vLLM builds each request's prompt (the API server process), from the placeholders the prompt really
holds; vLLM's start-up profiling runs the same processor on dummy inputs, which are never counted.

=================================================  ==============================================================
metric (a counter, label ``method``)               counts
=================================================  ==============================================================
``vidpress:videos_total``                          videos compressed
``vidpress:video_tokens_in_total``                 video placeholders they would take uncompressed
``vidpress:video_tokens_kept_total``               video placeholders they take (the LLM's visual tokens)
``vidpress:video_tokens_saved_total``              the difference
``vidpress:images_uncompressed_total``             images that reached a compressed engine (passed as they are)
=================================================  ==============================================================
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ...errors import VidpressWarning

_profiling = threading.local()
_counters: dict[str, Any] = {}
_warned_images: set[str] = set()
_logged: set[str] = set()

METRICS = {
    "videos": "Videos compressed by vidpress",
    "video_tokens_in": "Video placeholders the compressed videos would take uncompressed",
    "video_tokens_kept": "Video placeholders the compressed videos take",
    "video_tokens_saved": "Video placeholders vidpress removed",
    "images_uncompressed": "Images that reached a vidpress engine, which passes them uncompressed",
}


@contextmanager
def profiling() -> Iterator[None]:
    """Mark the processor calls inside as vLLM's dummy profiling inputs (never counted nor warned about)."""
    _profiling.active = True
    try:
        yield
    finally:
        _profiling.active = False


def counter(name: str) -> Any:
    """The Prometheus counter ``vidpress:<name>`` (``name`` a key of :data:`METRICS`), labelled by method, created
    once per process in prometheus_client's default registry (which vLLM's ``/metrics`` serves)."""
    if name not in _counters:
        from prometheus_client import Counter

        _counters[name] = Counter(f"vidpress:{name}", METRICS[name], ["method"])
    return _counters[name]


class FullCounts:
    """Uncompressed placeholder counts of the videos seen, by vLLM's item hash: a video served from vLLM's
    processor cache arrives without its data, so its count is looked up here (the last ``size`` videos)."""

    def __init__(self, size: int = 65536) -> None:
        self.size = size
        self._counts: OrderedDict[str, int] = OrderedDict()

    def remember(self, key: str, count: int) -> int:
        self._counts[key] = count
        self._counts.move_to_end(key)
        while len(self._counts) > self.size:
            self._counts.popitem(last=False)
        return count

    def get(self, key: str) -> int | None:
        return self._counts.get(key)


def record(method: str, videos: Sequence[tuple[int | None, int]], images: int, log: Any = None) -> None:
    """Count one request: ``videos`` as (uncompressed placeholders or None when unknown, placeholders in the
    prompt), and ``images`` passed uncompressed. No-op while :func:`profiling`."""
    if getattr(_profiling, "active", False):
        return
    for full, kept in videos:
        counter("videos").labels(method).inc()
        counter("video_tokens_kept").labels(method).inc(kept)
        if full is not None:
            counter("video_tokens_in").labels(method).inc(full)
            counter("video_tokens_saved").labels(method).inc(full - kept)
    if videos and log is not None:
        # the first request of a method at INFO, so any run's log shows the compressed counts; the rest at DEBUG
        level = log.debug if method in _logged else log.info
        _logged.add(method)
        counts = ", ".join(f"{'?' if f is None else f} -> {k}" for f, k in videos)
        level("vidpress %s: a request's video placeholders, uncompressed -> kept: %s", method, counts)
    if images:
        counter("images_uncompressed").labels(method).inc(images)
        if method not in _warned_images:
            _warned_images.add(method)
            warnings.warn(
                f"vidpress {method} compresses videos only; images pass uncompressed. A video sent as frames "
                "(lmms-eval's `vllm` backend does) is not compressed: send it as a video (lmms-eval's "
                "`vllm_generate`)",
                VidpressWarning,
                stacklevel=2,
            )
