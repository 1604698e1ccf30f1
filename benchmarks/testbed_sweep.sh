#!/usr/bin/env bash
# Train the testbed in three settings at once on one GPU, each into its own folder under OUT, one log
# (OUT/sweep.log, lines prefixed by the setting). All three use the describe protocol (--protocol describe:
# each question after the video's description, the description trained at every step), which reached 71 % on
# the CPU where answering straight after the video stalled at 25-32 %:
#   describe    run F's settings scaled up: 100 description-only steps, LoRA lr 1e-3, projector 2e-4;
#   captions    400 description-only steps first (the CPU runs' main error is a scene described twice);
#   weighted    as describe with the description's loss weighted 3x (--description-weight 3).
# Keep the best by validation accuracy, then score it on the test split: python -m testbed.card --out OUT/NAME
#
# usage: benchmarks/testbed_sweep.sh OUT SECONDS [more testbed.train flags, for all three]
set -u
out=${1:?usage: testbed_sweep.sh OUT SECONDS [flags]}; seconds=${2:?wall seconds per run, encoding included}; shift 2
mkdir -p "$out"
common=(--train-videos 3000 --val-videos 48 --batch 16 --steps 20000 --eval-every 100 --lr 2e-4 --lora-lr 1e-3
        --align-steps 600 --caption-steps 100 --protocol describe --seconds "$seconds" "$@")
export TQDM_MININTERVAL=60 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
run() {  # NAME FLAGS...: one run, its own model cache (the three start at once)
    local name=$1; shift
    VIDPRESS_CACHE="/tmp/vidpress-cache-$name" python3 -m testbed.train "${common[@]}" "$@" \
        --out "$out/$name" 2>&1 | sed -u "s/^/[$name] /" >>"$out/sweep.log" &
}
run describe
run captions --caption-steps 400
run weighted --description-weight 3
wait
grep "best validation" "$out/sweep.log"
