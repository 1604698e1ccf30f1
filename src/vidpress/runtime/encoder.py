"""The runtime's one wrapper: the family's video encoder entry point (``get_video_features``, which ``generate``
and ``forward`` both call), wrapped on the instance so the tower encodes only what the vision slot needs.

Per call, by the stages' declarations: the frames the plan can use (frame skipping); the tower merging tokens
(ToMe, :mod:`.tome`); or nothing yet, when a deferring stage leaves the encoding to the request, which knows the
question (:mod:`.vision`). What a call leaves for the request goes on the calling thread's
:class:`~.session.Captures`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import TYPE_CHECKING, Any, Callable, Iterator, cast

from ..stages import TowerMerging
from .session import DeferredCall, TowerOutput
from .tome import TowerMerge

if TYPE_CHECKING:
    from ..adapters.base import Adapter
    from ..stages import Stages
    from .capture import ThreadState


class VideoEncoder:
    """Encodes videos for ``stages`` on ``adapter``'s model; ``state`` returns the calling thread's state, which
    the runtime owns: its ``captures`` (what the call leaves for the request) and ``merging`` (the tower
    merging's state during a call)."""

    def __init__(self, adapter: Adapter, stages: Stages, state: Callable[[], ThreadState]):
        self.adapter, self.stages, self._state = adapter, stages, state

    def wrap(self, original: Any) -> Any:
        """``original`` (the video encoder entry point) encoding only what the stages need."""
        signature = inspect.signature(original)
        vision = self.stages.vision

        @functools.wraps(original)  # generate reads the encoder's parameters from its signature
        def encode(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            arguments = {
                **{k: v for k, v in bound.arguments.items() if k != "kwargs"},
                **bound.arguments.get("kwargs", {}),
            }
            frames, per_frame = self.adapter.frame_grid(arguments)
            if vision is not None and vision.merges:
                return self.merge_in_tower(original, arguments, frames, per_frame)
            if vision is not None and vision.deferred:  # the request encodes, knowing the question
                merge = vision.first_pass_merging
                merged = None if merge is None else functools.partial(self.merged_call, merge, per_frame)
                captures = self._state().captures
                captures.deferred, captures.encoded = DeferredCall(original, arguments, merged), None
                return self.adapter.unencoded_output(arguments)
            return self.encode_frames(original, arguments, frames, per_frame)

        return encode

    def encode_frames(self, original: Any, arguments: dict[str, Any], frames: int, per_frame: int) -> Any:
        """``original`` on the frames the stages can use (all when they declare none), laid back on all frames."""
        keep = self.stages.encoded_frames(frames, per_frame)
        self._state().captures.encoded = keep
        if keep is None:
            return original(**arguments)
        output = original(**self.adapter.select_frames(arguments, keep))
        return self.adapter.expand_frames(output, keep, frames, per_frame)

    @contextlib.contextmanager
    def merging(self, merge: Any, per_frame: int) -> Iterator[TowerMerge]:
        """The tower merges tokens under ``merge`` (a TokenMerging) in this thread's calls inside."""
        side, depth = self.adapter.patch_side(), self.adapter.feature_depth()
        schedule = merge.schedule(side * side, depth, per_frame)
        state = self._state()
        state.merging = TowerMerge(schedule, self.adapter.tower_has_cls(), merge.proportional, merge.grid)
        try:
            yield state.merging
        finally:
            state.merging = None

    def merged_call(self, merge: Any, per_frame: int, call: Callable[[], Any]) -> tuple[Any, tuple[int, ...]]:
        """``call()`` with the tower merging under ``merge``: its output and the tokens merged per layer."""
        with self.merging(merge, per_frame) as merged:
            output = call()
        return output, tuple(merged.done[: self.adapter.feature_depth()])

    def merge_in_tower(self, original: Any, arguments: dict[str, Any], frames: int, per_frame: int) -> Any:
        """Encode with the tower merging tokens (ToMe): with ``grid`` the model's own encoder runs (its hidden
        states mapped back onto the patches by the hooks); without, the feature layer's merged tokens go through
        the projector alone and wait for the pre-LLM slot's :class:`~vidpress.stages.vision.tome.MergedBlock`."""
        vision, adapter = cast(TowerMerging, self.stages.vision), self.adapter  # a stage that declares ``merges``
        depth = adapter.feature_depth()
        with self.merging(vision, per_frame) as merged:
            if vision.grid:
                output = self.encode_frames(original, arguments, frames, per_frame)
            else:
                pixels = arguments["pixel_values_videos"]
                hidden = adapter.tower_features(pixels.flatten(0, 1))
                groups = merged.groups[depth]
                if adapter.tower_has_cls():
                    hidden, groups = hidden[:, 1:], groups[:, 1:] - 1
                tokens = adapter.project_merged(hidden)
                output = adapter.unencoded_output(arguments)
        merges = tuple(merged.done[:depth])
        if vision.grid:
            left = TowerOutput(merges)
        else:
            shape = pixels.shape[:2]
            left = TowerOutput(
                merges, tokens.view(*shape, *tokens.shape[1:]), groups.reshape(*shape, -1), tokens.shape[1]
            )
        self._state().captures.merged = left
        return output
