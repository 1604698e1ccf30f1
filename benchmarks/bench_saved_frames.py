"""``vidpress bench`` on frames decoded elsewhere: for a machine without PyAV (the lent GPU machine has none and
cannot install packages), decode here and carry the frames.

    python -c "import torch, vidpress; torch.save(vidpress.load_video('clip.mp4', 32), 'clip.pt')"   # here
    python benchmarks/bench_saved_frames.py clip.pt --model random:llava-ov-7b --out DIR                # there

Every other argument goes to ``vidpress bench`` unchanged; ``--frames`` is the saved clip's frame count.
"""

import sys

import torch

import vidpress.io.video
from vidpress.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    saved = sys.argv[1]
    clip = torch.load(saved, weights_only=False)  # a vidpress Video written by this project, not untrusted input
    vidpress.io.video.load_video = lambda path, frames: clip  # bench reads its frames through this
    sys.argv = ["vidpress", "bench", saved, "--frames", str(len(clip.frames)), *sys.argv[2:]]
    main()
