"""lmms-eval's ``vllm_generate`` backend end to end with the plugin, offline: a two-question local task on the
bundled clip, a tiny LLaVA-OneVision checkpoint, the vidpress entry passed through ``hf_overrides`` as docs/vllm.md
gives it. Needs lmms-eval 0.7.3 in the vLLM environment (``.ci/run`` installs it with ``filelock<4``, whose 4.x
dropped a module lmms-eval imports, and ``decord``, the video reader its ``qwen_vl_utils`` can use on a CPU)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
pytest.importorskip("lmms_eval")
pytest.importorskip("decord")

from vidpress.cli import bundled_clip  # noqa: E402

TASK = """task: vidpress_clip
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_messages: !function utils.doc_to_messages
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
generation_kwargs:
  max_new_tokens: 2
"""

UTILS = """def doc_to_messages(doc, lmms_eval_specific_kwargs=None):
    parts = [{"type": "video", "url": doc["video"]}, {"type": "text", "text": doc["question"]}]
    return [{"role": "user", "content": parts}]


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip() == doc["answer"])}
"""


def test_lmms_evals_vllm_generate_runs_a_local_task_through_the_plugin(checkpoints, tmp_path):
    _, path = checkpoints["llava_onevision"]
    task = tmp_path / "task"
    task.mkdir()
    data = task / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"video": str(bundled_clip()), "question": q, "answer": "A"}) + "\n" for q in "AB")
    )
    (task / "vidpress_clip.yaml").write_text(TASK.format(data=data))
    (task / "utils.py").write_text(UTILS)
    entry = json.dumps({"vidpress": {"method": "visionzip", "retention": 0.25}})
    model_args = f"model={path},hf_overrides={entry},max_model_len=4096,dtype=float32,enforce_eager=True,nframes=8"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env.update(
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CPU_OMP_THREADS_BIND="nobind",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        FORCE_QWENVL_VIDEO_READER="decord",
    )
    done = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "vllm_generate", "--model_args", model_args,
         "--tasks", "vidpress_clip", "--include_path", str(task), "--batch_size", "2",
         "--output_path", str(tmp_path / "out")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = done.stdout + done.stderr
    results = list((tmp_path / "out").rglob("*_results.json"))  # lmms-eval exits 0 after a failed run too
    assert done.returncode == 0 and results, log[-4000:]
    assert "exact_match,none" in json.loads(results[0].read_text())["results"]["vidpress_clip"]
    # the plugin's own lines: 8 frames of 64 tokens and the newline, 25 % kept
    assert "vidpress visionzip: a request's video placeholders, uncompressed -> kept: 513 -> 129" in log
