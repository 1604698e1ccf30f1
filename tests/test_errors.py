"""Bad input raises a specific error naming the value and the fix; the CLI prints one line, exit 2."""

import subprocess
import sys

import pytest

import vidpress
from vidpress.errors import IncompatibleStagesError, InvalidParameterError, UnknownMethodError


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(k=1.2), "k"), (dict(p=-0.1), "p"), (dict(tau=2), "tau"), (dict(l=0), "l"), (dict(mode="exact"), "mode")],
)
def test_dycoke_parameters_checked(kwargs, name):
    with pytest.raises(InvalidParameterError, match=name):
        vidpress.DyCoke(**kwargs)


def test_unknown_method_and_parameter():
    with pytest.raises(UnknownMethodError, match="choose one of"):
        vidpress.get_method("fastvv")
    with pytest.raises(UnknownMethodError, match="did you mean 'k'"):
        vidpress.get_method("dycoke", kk=0.5)


def test_slot_clash():
    with pytest.raises(IncompatibleStagesError, match="pre_llm"):
        vidpress.compose(vidpress.DyCoke(), vidpress.DyCoke())


def test_cli_failure_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "vidpress.cli", "run", "/no/such/video.mp4", "--model", "random"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "video file not found" in proc.stderr


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vidpress.cli", *args], capture_output=True, timeout=300)


def test_cli_bad_inputs_fail_before_work_with_one_line(tmp_path):
    cases = [
        (["run", "--model", "random", "-q", b"caf\xe9 \xff?"], b"not valid UTF-8"),  # bytes from a Latin-1 shell
        (["events", "--model", "random", "--out", str(tmp_path / "missing" / "e.png")], b"does not exist"),
        (["run", "--model", "random", "--frames", "4", "-q", "why? " * 20000], b"and 32 to generate that is past"),
        (["run", "--model", "random", "-q", " \t "], b"the question is empty"),
        (["events", "--model", "random", "--out", str(tmp_path)], b"it is a folder"),
        (["events", "--model", "random", "--out", "/proc/events.png"], b"cannot write /proc/events.png"),
    ]
    for args, message in cases:
        proc = _cli(*args)
        assert proc.returncode == 2 and b"Traceback" not in proc.stderr and message in proc.stderr, proc.stderr[-500:]
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(b"WARNING")]
        assert len(lines) == 1, lines  # one line, however long the message


def test_prompt_past_the_models_positions_is_refused_before_generating(tiny, clip_frames):
    from vidpress.errors import PromptTooLongError
    from vidpress.methods import get_method
    from vidpress.pipeline import ask

    limit = tiny.model.config.text_config.max_position_embeddings
    with pytest.raises(PromptTooLongError, match=f"past the model's {limit} positions"):
        ask(
            tiny.model,
            tiny.processor,
            clip_frames[:4],
            "why? " * limit,
            get_method("none"),
            max_new_tokens=4,
            progress=False,
        )


def test_malformed_config_and_uneven_video_batch_name_the_problem(tmp_path, tiny, clip_frames):
    from vidpress.errors import InvalidFrameCountError, UnsupportedModelError

    bad = tmp_path / "config.json"
    bad.write_text('{"text_config": {')
    proc = _cli("flops", "--model", str(bad))
    assert proc.returncode == 2 and str(bad).encode() in proc.stderr and b"not valid JSON" in proc.stderr
    with pytest.raises(UnsupportedModelError, match="not valid JSON"):
        vidpress.accounting.resolve_spec(str(bad))
    turn = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}
    prompt = tiny.processor.apply_chat_template([turn])
    with pytest.raises(InvalidFrameCountError, match=r"same number of frames, got \[12, 8\]"):
        tiny.processor(text=[prompt, prompt], videos=[clip_frames, clip_frames[:8]])


def test_top_level_exports_and_report_text(tiny, inputs):
    import torch

    assert {"FastV", "PyramidDrop", "VisionZip", "FastVID", "UniformSpatial", "DynamicKV"} <= set(vidpress.__all__)
    assert not {"replace", "field"} & set(vidpress.accounting.__all__)
    with torch.no_grad(), vidpress.apply(tiny.model, vidpress.FastV(k=1)) as run:
        tiny.model(**inputs)
    assert "visual tokens" in str(run.report)
