#!/usr/bin/env bash
# Train the testbed in three settings at once on one GPU, each into its own folder under OUT, one log
# (OUT/sweep.log, lines prefixed by the setting). All three first pre-train on describing the videos
# (--caption-steps 400; on the CPU 80 such steps made the testbed describe held-out videos mostly right) and
# keep describing them beside the questions (--caption), since training on the questions alone undid it:
#   mix         then every question kind at once (LoRA lr 1e-3, projector 2e-4);
#   curriculum  then the kinds one at a time, every 100 steps, 'first' first;
#   gentle      as mix with learning rates 3x lower (LoRA 3e-4, projector 1e-4).
# Keep the best by validation accuracy, then score it on the test split: python -m vidpress.testbed.card --out OUT/NAME
#
# usage: benchmarks/testbed_sweep.sh OUT SECONDS [more vidpress.testbed.train flags, for all three]
set -u
out=${1:?usage: testbed_sweep.sh OUT SECONDS [flags]}; seconds=${2:?wall seconds per run, encoding included}; shift 2
mkdir -p "$out"
common=(--train-videos 6000 --val-videos 48 --batch 16 --steps 20000 --eval-every 100 --lr 2e-4 --lora-lr 1e-3
        --align-steps 600 --caption-steps 400 --caption --seconds "$seconds" "$@")
export TQDM_MININTERVAL=60 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
run() {  # NAME FLAGS...: one run, its own model cache (the three start at once)
    local name=$1; shift
    VIDPRESS_CACHE="/tmp/vidpress-cache-$name" python3 -m vidpress.testbed.train "${common[@]}" "$@" \
        --out "$out/$name" 2>&1 | sed -u "s/^/[$name] /" >>"$out/sweep.log" &
}
run mix
run curriculum --curriculum 100
run gentle --lr 1e-4 --lora-lr 3e-4
wait
grep "best validation" "$out/sweep.log"
