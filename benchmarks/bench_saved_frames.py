"""``vidpress bench`` on frames decoded elsewhere: for a machine without PyAV (the lent GPU machine has none and
cannot install packages), decode here and carry the frames as a plain NumPy archive (no pickled objects).

    python benchmarks/bench_saved_frames.py --save clip.mp4 32 clip.npz                               # here
    python benchmarks/bench_saved_frames.py clip.npz --model random:llava-ov-7b --out DIR              # there

Every other argument goes to ``vidpress bench`` unchanged; ``--frames`` is the saved clip's frame count.
"""

import sys

import numpy as np

import vidpress.io.video
from vidpress.cli import main


def save(video: str, frames: int, out: str) -> None:
    clip = vidpress.io.video.load_video(video, frames)
    np.savez(out, frames=clip.frames, timestamps=clip.timestamps, duration_s=clip.duration_s, path=clip.path)


def load(path: str) -> vidpress.io.video.Video:
    """The saved clip; ``allow_pickle=False``, so a crafted file cannot run code."""
    with np.load(path, allow_pickle=False) as data:
        return vidpress.io.video.Video(data["frames"], data["timestamps"], float(data["duration_s"]), str(data["path"]))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--save":
        save(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    saved = sys.argv[1]
    clip = load(saved)
    vidpress.io.video.load_video = lambda path, frames: clip  # bench reads its frames through this
    sys.argv = ["vidpress", "bench", saved, "--frames", str(len(clip.frames)), *sys.argv[2:]]
    main()
