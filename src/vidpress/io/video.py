"""Video decoding with PyAV: uniform sampling of N frames or a fixed frame rate.

Frames are decoded as a stream (or by seeking, for long videos), so only the sampled frames are held in
memory: a 1-hour file never sits in memory whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidFrameCountError, NoFramesError, NotAVideoError, NoVideoStreamError, VideoNotFoundError

# Beyond this duration (seconds) with few frames asked for, seek to each target instead of decoding all.
SEEK_AFTER_S = 120.0


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
        Duration of the video stream in seconds.
    path : str
    """

    frames: np.ndarray
    timestamps: np.ndarray
    duration_s: float
    path: str

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
        raise NotAVideoError(path, f"{path} is not a readable video ({exc.__class__.__name__}: {exc}); "
                                   "re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4) or check the file") from exc
    if not container.streams.video:
        container.close()
        raise NoVideoStreamError(path, f"{path} has no video stream (only {len(container.streams)} other streams); "
                                       "pass a file that contains video")
    return container


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return math.nan


def _targets(duration: float, fps_native: float, num_frames: int | None, fps: float | None) -> np.ndarray:
    last = max(duration - 1.0 / fps_native, 0.0) if fps_native else duration
    if fps is not None:
        return np.arange(0.0, max(duration, 1e-9), 1.0 / fps)
    return np.linspace(0.0, last, num_frames)


def _frame_time(frame, start: float) -> float:
    return float(frame.time) - start if frame.time is not None else math.nan


def load_video(path: str | Path, num_frames: int | None = 32, *, fps: float | None = None,
               max_side: int | None = None, progress: bool = False) -> Video:
    """Decode ``num_frames`` uniformly spaced frames (first and last included), or frames at ``fps``.

    Parameters
    ----------
    path : str or Path
    num_frames : int, optional
        Number of frames, >= 1 (default 32). Ignored when ``fps`` is given.
    fps : float, optional
        Sample at this rate (frames per second, > 0) instead of a fixed count.
    max_side : int, optional
        Downscale so the longer side is at most this many pixels (saves memory on long, large videos).
    progress : bool
        Show a progress bar over the sampled frames.

    Returns
    -------
    Video
        ``frames`` (F, H, W, 3) uint8 and ``timestamps`` (F,) seconds from the start of the stream.

    Raises
    ------
    VideoNotFoundError, NotAVideoError, NoVideoStreamError, NoFramesError
        Missing file; not a media file or corrupt; no video stream; no decodable frame.
    InvalidFrameCountError
        ``num_frames < 1`` or ``fps <= 0``.
    """
    import av

    if fps is not None:
        if not fps > 0:
            raise InvalidFrameCountError(f"fps must be > 0, got {fps}; e.g. fps=1 samples one frame per second")
    elif num_frames is None or int(num_frames) != num_frames or num_frames < 1:
        raise InvalidFrameCountError(f"num_frames must be an integer >= 1, got {num_frames!r}; e.g. num_frames=32")
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        duration = _duration(container, stream)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if math.isnan(duration):  # unknown duration: one streaming pass to measure it
            duration = max((_frame_time(f, start) for f in container.decode(stream)), default=math.nan)
            container.seek(0)
        if math.isnan(duration):
            raise NoFramesError(path, f"{path} has a video stream but no decodable frame; the file may be corrupt")
        targets = _targets(duration, rate, num_frames, fps)
        seek = duration > SEEK_AFTER_S and rate and len(targets) < 0.05 * duration * rate
        from tqdm.auto import tqdm

        with tqdm(total=len(targets), desc="decoding frames", unit="frame", disable=not progress, leave=False) as bar:
            pick = _seek_frames if seek else _stream_frames
            picked = pick(container, stream, targets, start, bar.update)
    except av.error.FFmpegError as exc:
        raise NotAVideoError(path, f"decoding {path} failed ({exc}); the file is corrupt or truncated: re-encode it") from exc
    finally:
        container.close()
    if not picked:
        raise NoFramesError(path, f"{path} has a video stream but no decodable frame; the file may be corrupt")
    frames = np.stack([_to_rgb(frame, max_side) for frame, _ in picked])
    return Video(frames, np.array([t for _, t in picked]), duration, str(path))


def _to_rgb(frame, max_side: int | None) -> np.ndarray:
    if max_side and max(frame.width, frame.height) > max_side:
        scale = max_side / max(frame.width, frame.height)
        frame = frame.reformat(width=max(2, round(frame.width * scale)), height=max(2, round(frame.height * scale)))
    return frame.to_ndarray(format="rgb24")


def _stream_frames(container, stream, targets: np.ndarray, start: float, tick=lambda n: None) -> list:
    """One decoding pass; for each target keep the decoded frame nearest in time."""
    picked, previous, j = [], None, 0
    for frame in container.decode(stream):
        t = _frame_time(frame, start)
        while j < len(targets) and t >= targets[j]:
            if previous is not None and abs(previous[1] - targets[j]) < abs(t - targets[j]):
                picked.append(previous)
            else:
                picked.append((frame, t))
            j += 1
            tick(1)
        if j == len(targets):
            break
        previous = (frame, t)
    while previous is not None and j < len(targets):  # targets past the last frame time: the last frame
        picked.append(previous)
        j += 1
    return picked


def _seek_frames(container, stream, targets: np.ndarray, start: float, tick=lambda n: None) -> list:
    """Seek to the keyframe before each target and decode forward to it."""
    picked = []
    for target in targets:
        container.seek(int((target + start) / stream.time_base), stream=stream, backward=True)
        previous = None
        for frame in container.decode(stream):
            t = _frame_time(frame, start)
            if t >= target:
                near = previous if previous is not None and abs(previous[1] - target) < abs(t - target) else (frame, t)
                picked.append(near)
                tick(1)
                break
            previous = (frame, t)
        else:
            if previous is not None:
                picked.append(previous)
    return picked
