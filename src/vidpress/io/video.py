"""Video decoding with PyAV: uniform sampling of N frames or a fixed frame rate.

Frames are decoded as a stream (or by seeking, for long videos), so only the sampled frames are held in
memory: a 1-hour file never sits in memory whole. The duration sampled over is what the stream holds (its last
packet's timestamp), not what the container's header claims; a video with fewer distinct frames than asked for
gives each frame once, with a warning.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidFrameCountError, NoFramesError, NotAVideoError, NoVideoStreamError, VideoNotFoundError

# Beyond this duration (seconds) with few frames asked for, seek to each target instead of decoding all.
SEEK_AFTER_S = 120.0
# Decoded frames may take at most this share of the memory available when decoding starts.
MEMORY_SHARE = 0.5


class VideoWarning(UserWarning):
    """A video was sampled differently from what was asked (fewer distinct frames than requested, or a header
    whose duration the stream does not hold); the message says how."""


@dataclass(frozen=True)
class Video:
    """Sampled frames of one video.

    Attributes
    ----------
    frames : ndarray, shape (F, H, W, 3), uint8
        RGB frames in temporal order.
    timestamps : ndarray, shape (F,), float64
        Presentation time of each frame in seconds.
    duration_s : float
        Duration of the video stream in seconds, as its packets' timestamps show.
    path : str
    requested : int, optional
        Frames asked for, when the video held fewer distinct frames (then ``len(frames) < requested``).
    """

    frames: np.ndarray
    timestamps: np.ndarray
    duration_s: float
    path: str
    requested: int | None = None

    def __len__(self) -> int:
        return len(self.frames)


def _open(path: Path):
    import av

    if not path.exists():
        raise VideoNotFoundError(path, f"video file not found: {path}; check the path")
    if path.is_dir():
        raise NotAVideoError(path, f"{path} is a directory, not a video file; pass a video file such as an .mp4")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise NotAVideoError(
            path,
            f"{path} is not a readable video ({exc.__class__.__name__}: {exc}); "
            "re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4) or check the file",
        ) from exc
    if not container.streams.video:
        others = len(container.streams)
        container.close()
        raise NoVideoStreamError(
            path, f"{path} has no video stream (only {others} other streams); pass a file that contains video"
        )
    return container


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return math.nan


def _stream_end(path: Path, claimed: float, rate: float) -> float:
    """Seconds from the stream's start to the end of its last frame, from packet timestamps (demuxed, not
    decoded): from a little before the ``claimed`` end, then from the start when that finds nothing or the
    stream runs on past the claim. NaN when no packet carries a timestamp. Each pass opens the file afresh,
    so nothing relies on seeking back."""
    import av

    def scan(near_end: bool) -> float:
        container = _open(path)
        try:
            stream = container.streams.video[0]
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            if near_end:
                container.seek(int((claimed - 2.0 + start) / stream.time_base), stream=stream, backward=True)
            last = -math.inf
            for packet in container.demux(stream):
                if packet.pts is not None:
                    length = (
                        float(packet.duration * stream.time_base) if packet.duration else 1.0 / rate if rate else 0.0
                    )
                    last = max(last, float(packet.pts * stream.time_base) - start + length)
            return last if last > -math.inf else math.nan
        except av.error.FFmpegError:
            return math.nan
        finally:
            container.close()

    if math.isfinite(claimed) and claimed > 2.0:
        end = scan(near_end=True)
        if end < claimed + 1.0:  # the stream ends near or before the claim (NaN: nothing found there)
            return end
    return scan(near_end=False)


def _available_memory() -> int:
    """Bytes of memory available now (physical pages free and reclaimable, as the kernel reports them)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        return max(2, round(width * scale)), max(2, round(height * scale))
    return width, height


def _targets(duration: float, fps_native: float, num_frames: int | None, fps: float | None) -> np.ndarray:
    last = max(duration - 1.0 / fps_native, 0.0) if fps_native else duration
    if fps is not None:
        return np.arange(0.0, max(duration, 1e-9), 1.0 / fps)
    if num_frames is None:
        raise InvalidFrameCountError("sampling needs a frame count or a frame rate")
    return np.linspace(0.0, last, num_frames)


def _frame_time(frame, start: float) -> float:
    return float(frame.time) - start if frame.time is not None else math.nan


def _check_sampling(num_frames: int | None, fps: float | None) -> None:
    if fps is not None:
        if not fps > 0:
            raise InvalidFrameCountError(f"fps must be > 0, got {fps}; e.g. fps=1 samples one frame per second")
    elif num_frames is None or int(num_frames) != num_frames or num_frames < 1:
        raise InvalidFrameCountError(f"num_frames must be an integer >= 1, got {num_frames!r}; e.g. num_frames=32")


def _sampling(path: Path, container, stream, num_frames: int | None, fps: float | None) -> tuple:
    """(duration s, frame rate, start s, target times, distinct frames at most, a reopened container or None) of
    sampling ``stream``: the duration is what its packets hold (a decoding pass when none carries a timestamp, after
    which the container is reopened), with a warning when the header claims otherwise."""
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    claimed = _duration(container, stream)
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    duration, reopened = _stream_end(path, claimed, rate), None
    if math.isnan(duration):  # no packet timestamps: one decoding pass to measure it
        duration = max((_frame_time(f, start) for f in container.decode(stream)), default=math.nan)
        if math.isnan(duration):
            raise NoFramesError(path, f"{path} has a video stream but no decodable frame; the file may be corrupt")
        container.close()
        reopened = _open(path)
    if math.isfinite(claimed) and abs(claimed - duration) > max(1.0, 0.1 * duration):
        warnings.warn(
            f"{path}: the header says {claimed:.1f} s but the stream holds {duration:.1f} s; "
            "sampling what the stream holds",
            VideoWarning,
            stacklevel=3,
        )
    targets = _targets(duration, rate, num_frames, fps)
    distinct = min(len(targets), math.ceil(duration * rate) + 1) if rate else len(targets)
    return duration, rate, start, targets, distinct, reopened


def count_frames(path: str | Path, num_frames: int | None = 32, *, fps: float | None = None) -> int:
    """The frames :func:`load_video` would return at most for this request, from packet timestamps alone (nothing
    decoded): the requested count, or fewer when the stream holds fewer distinct frames. Lets a caller refuse a
    request before any frame is decoded.

    Raises
    ------
    VideoNotFoundError, NotAVideoError, NoVideoStreamError, NoFramesError, InvalidFrameCountError
        As :func:`load_video`.
    """
    _check_sampling(num_frames, fps)
    path = Path(path)
    container = _open(path)
    try:
        *_, distinct, reopened = _sampling(path, container, container.streams.video[0], num_frames, fps)
        if reopened is not None:
            reopened.close()
        return distinct
    finally:
        container.close()


def load_video(
    path: str | Path,
    num_frames: int | None = 32,
    *,
    fps: float | None = None,
    max_side: int | None = None,
    progress: bool = False,
) -> Video:
    """Decode ``num_frames`` uniformly spaced frames (first and last included), or frames at ``fps``.

    Parameters
    ----------
    path : str or Path
    num_frames : int, optional
        Number of frames, >= 1 (default 32). Ignored when ``fps`` is given.
    fps : float, optional
        Sample at this rate (frames per second, > 0) instead of a fixed count.
    max_side : int, optional
        Downscale so the longer side is at most this many pixels while decoding (bounds memory on large videos).
    progress : bool
        Show a progress bar over the sampled frames.

    Returns
    -------
    Video
        ``frames`` (F, H, W, 3) uint8 and ``timestamps`` (F,) seconds from the start of the stream. Sampling
        spans what the stream holds (packet timestamps), whatever its header claims. When the stream holds fewer
        distinct frames than asked for (a still image, ``num_frames`` above the frame count), each frame comes
        once, ``F < num_frames``, ``requested`` records the request and a :class:`VideoWarning` says so.

    Raises
    ------
    VideoNotFoundError, NotAVideoError, NoVideoStreamError, NoFramesError
        Missing file; not a media file or corrupt; no video stream; no decodable frame.
    InvalidFrameCountError
        ``num_frames < 1`` or ``fps <= 0``; or the decoded frames would take more than half of the memory
        available (checked before decoding; lower the count or pass ``max_side``).
    """
    import av

    _check_sampling(num_frames, fps)
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration, rate, start, targets, distinct, reopened = _sampling(path, container, stream, num_frames, fps)
        if reopened is not None:  # the duration took a decoding pass: decode again from the start
            container = reopened
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
        codec = stream.codec_context
        if codec is None:  # a damaged header can leave the stream without a decoder
            raise NotAVideoError(
                path, f"{path}: its video stream has no decodable codec; the file is corrupt: re-encode it"
            )
        width, height = _output_size(codec.width or 1, codec.height or 1, max_side)
        needed, available = distinct * width * height * 3, _available_memory()
        if needed > MEMORY_SHARE * available:
            raise InvalidFrameCountError(
                f"{distinct} frames of {width}x{height} would take {needed / 2**30:.1f} GiB, more than half of the "
                f"{available / 2**30:.1f} GiB available; sample fewer frames or decode smaller (max_side / --max-side)"
            )
        seek = duration > SEEK_AFTER_S and rate and len(targets) < 0.05 * duration * rate
        from tqdm.auto import tqdm

        def rgb(frame):
            return _to_rgb(frame, max_side)

        with tqdm(total=len(targets), desc="decoding frames", unit="frame", disable=not progress, leave=False) as bar:
            pick = _seek_frames if seek else _stream_frames
            picked = pick(container, stream, targets, start, rgb, bar.update)
    except av.error.FFmpegError as exc:
        raise NotAVideoError(
            path, f"decoding {path} failed ({exc}); the file is corrupt or truncated: re-encode it"
        ) from exc
    finally:
        container.close()
    if not picked:
        raise NoFramesError(path, f"{path} has a video stream but no decodable frame; the file may be corrupt")
    unique = list({t: (frame, t) for frame, t in picked}.values())  # a frame picked for several targets once
    requested = None
    if len(unique) < len(targets):
        requested = len(targets)
        warnings.warn(
            f"{path} holds {len(unique)} distinct frames where {len(targets)} were asked for; each is "
            f"used once ({len(unique)} frames)",
            VideoWarning,
            stacklevel=2,
        )
    frames = np.stack([frame for frame, _ in unique])
    return Video(frames, np.array([t for _, t in unique]), duration, str(path), requested)


def _to_rgb(frame, max_side: int | None) -> np.ndarray:
    width, height = _output_size(frame.width, frame.height, max_side)
    if (width, height) != (frame.width, frame.height):
        frame = frame.reformat(width=width, height=height)
    return frame.to_ndarray(format="rgb24")


def _stream_frames(container, stream, targets: np.ndarray, start: float, rgb, tick=lambda n: None) -> list:
    """One decoding pass; for each target keep the decoded frame nearest in time, as ``rgb`` makes it the moment it is
    picked (so only RGB arrays are held, not the decoder's frames)."""
    picked, previous, j = [], None, 0  # previous: [frame, time, its RGB array once picked]
    for frame in container.decode(stream):
        current = [frame, _frame_time(frame, start), None]
        while j < len(targets) and current[1] >= targets[j]:
            near = (
                previous
                if previous is not None and abs(previous[1] - targets[j]) < abs(current[1] - targets[j])
                else current
            )
            picked.append(_held(near, rgb))
            j += 1
            tick(1)
        if j == len(targets):
            break
        previous = current
    while previous is not None and j < len(targets):  # targets past the last frame time: the last frame
        picked.append(_held(previous, rgb))
        j += 1
    return picked


def _held(entry: list, rgb) -> tuple:
    """(RGB array, time) of a decoded ``[frame, time, rgb or None]``, converted once."""
    if entry[2] is None:
        entry[2] = rgb(entry[0])
    return entry[2], entry[1]


def _seek_frames(container, stream, targets: np.ndarray, start: float, rgb, tick=lambda n: None) -> list:
    """Seek to the keyframe before each target and decode forward to it; the picked frame as ``rgb`` makes it."""
    picked = []
    for target in targets:
        container.seek(int((target + start) / stream.time_base), stream=stream, backward=True)
        previous = None
        for frame in container.decode(stream):
            current = [frame, _frame_time(frame, start), None]
            if current[1] >= target:
                near = (
                    previous
                    if previous is not None and abs(previous[1] - target) < abs(current[1] - target)
                    else current
                )
                picked.append(_held(near, rgb))
                tick(1)
                break
            previous = current
        else:
            if previous is not None:
                picked.append(_held(previous, rgb))
    return picked
