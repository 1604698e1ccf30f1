"""Uncompressed vs DyCoke vs METok (fixed and faithful) on the default model, 64 frames of a real 60-second
video, in one run.

    python benchmarks/metok.py [VIDEO] [--frames 64] [--repeats 3] [--new-tokens 16]

Ratios to the uncompressed model: prefill FLOPs, KV bytes (stored visual KV after prefill, what METok's
stage 3 trims), TTFT, LLM prefill time, decode tok/s, peak memory, and vidpress's own overhead (METok: event
segmentation, relevance and pooling, stage-2 scoring, the trim) as a share of TTFT. Results go to
benchmarks/results/<device>/metok.{json,md}. The default model has 30 LLM layers; METok's reference
schedule (3, 10, 19) is used unchanged.
"""

from common import compare, parser, write

import vidpress
from vidpress.methods import get_method


def main() -> None:
    args = parser(__doc__, frames=64).parse_args()
    configs = {
        "uncompressed": get_method("none"),
        "dycoke fixed (K=0.7)": vidpress.DyCoke(k=0.7),
        "metok fixed": vidpress.METok(),
        "metok faithful": vidpress.METok(mode="faithful"),
    }
    rows, meta = compare(
        configs,
        video=args.video,
        frames=args.frames,
        repeats=args.repeats,
        new_tokens=args.new_tokens,
        model=args.model,
    )
    write("metok", "METok vs DyCoke vs uncompressed", "python benchmarks/metok.py", rows, meta, args.out)


if __name__ == "__main__":
    main()
