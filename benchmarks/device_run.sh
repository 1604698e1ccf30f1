#!/usr/bin/env bash
# The lent GPU machine's run (one NVIDIA H200): train the testbed (benchmarks/testbed_sweep.sh) and time every
# method on LLaVA-OneVision-7B's real architecture (random bf16 weights), in one command.
#
# That machine gets no ../shared and takes at most 64 MiB a call, and has no PyAV, gguf, or transformers >= 5.20;
# so the base weights, three wheels and the bundled clip's decoded frames travel as one gzipped tar split in three
# parts, one per call (a warm machine keeps /tmp for 30 s between calls). Here:
#   mkdir -p /tmp/payload/whl /tmp/payload/weights && cp -r ../shared/data/weights/* /tmp/payload/weights/
#   pip download --no-deps -d /tmp/payload/whl transformers==5.24.0 gguf==0.19.0 peft==0.21.2
#   python benchmarks/bench_saved_frames.py --save src/vidpress/assets/nasa_13013_clip.mp4 32 /tmp/payload/clip.npz
#   (cd /tmp/payload && tar -cf - . | gzip -6) | split -b 49800000 -d - /tmp/part.
#   mkdir -p .stage1 .stage2 .stage3 && mv /tmp/part.00 .stage1 && mv /tmp/part.01 .stage2 && mv /tmp/part.02 .stage3
# Calls 1 and 2 (carry .stage1, then .stage2): mkdir -p /tmp/w && cp .stage*/part.* /tmp/w/
# Call 3 (carry .stage3): bash benchmarks/device_run.sh $OUT SECONDS [testbed_sweep.sh flags]
#
# BENCH_ARGS replaces the bench's '--model random:llava-ov-7b' (a rehearsal on a CPU: a smaller preset).
# Writes OUT/sweep/{describe,captions,weighted}/testbed.{pt,json}, OUT/sweep/sweep.log and OUT/bench.tgz
# (vidpress bench's outputs), 8 files: what one call brings back.
set -u
out=${1:?usage: device_run.sh OUT SECONDS [flags]}; seconds=${2:?training seconds per run}; shift 2
cp .stage*/part.* /tmp/w/ 2>/dev/null
mkdir -p /tmp/p && cat /tmp/w/part.* | tar -xzf - -C /tmp/p || { echo "payload incomplete: $(ls /tmp/w)"; exit 2; }
echo "a1231443440b107ff29f02bdb38c9d0a  /tmp/p/weights/smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf" \
    | md5sum -c - || exit 2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/p/whl/*.whl \
    || exit 2
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks VIDPRESS_WEIGHTS=/tmp/p/weights HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__,
'peft', peft.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
bash benchmarks/testbed_sweep.sh "$out/sweep" "$seconds" "$@"
if grep -q "random-weight model" "$out/sweep/sweep.log"; then echo "the base weights were not found"; exit 2; fi
timeout 180 python3 benchmarks/bench_saved_frames.py /tmp/p/clip.npz ${BENCH_ARGS:---model random:llava-ov-7b} --out /tmp/bench \
    && tar -czf "$out/bench.tgz" -C /tmp bench
