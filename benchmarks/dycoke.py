"""Uncompressed vs DyCoke (fixed and faithful) on the default model, 32 frames of a real video, one run.

    python benchmarks/dycoke.py [VIDEO] [--frames 32] [--repeats 3] [--new-tokens 16]

Prints ratios to the uncompressed model (prefill FLOPs, TTFT, LLM prefill time, decode tok/s, peak memory,
DyCoke's own overhead) and writes JSON + Markdown under benchmarks/results/<device>/. Timings are medians
over ``--repeats`` runs after a warm-up; decoding is forced to ``--new-tokens`` tokens (the default model's
projector is untrained, so it would otherwise stop at once).
"""

from common import compare, parser, write

import vidpress
from vidpress.methods import get_method


def main() -> None:
    args = parser(__doc__, frames=32).parse_args()
    configs = {
        "uncompressed": get_method("none"),
        "dycoke fixed (K=0.7)": vidpress.DyCoke(k=0.7),
        "dycoke faithful (K=0.7)": vidpress.DyCoke(k=0.7, mode="faithful"),
    }
    rows, meta = compare(
        configs,
        video=args.video,
        frames=args.frames,
        repeats=args.repeats,
        new_tokens=args.new_tokens,
        model=args.model,
    )
    write("dycoke", "DyCoke vs uncompressed", "python benchmarks/dycoke.py", rows, meta, args.out)


if __name__ == "__main__":
    main()
