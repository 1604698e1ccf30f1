"""Cases where vidpress must refuse or stay correct rather than be silently wrong: concurrent requests,
nested installation, parameters the loaded model would ignore."""

import threading
import time
from pathlib import Path

import pytest
import torch

import vidpress
from vidpress.errors import AlreadyAppliedError, BudgetError, InvalidParameterError
from vidpress.pipeline import build_inputs


def _greedy(model, inputs, steps):
    out = model.generate(
        **inputs,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences, torch.stack(out.logits)


def test_two_threads_on_one_model_match_running_alone(tiny, clip_frames):
    videos = [
        build_inputs(tiny.processor, clip_frames, "What happens?"),
        build_inputs(tiny.processor, clip_frames[::-1].copy(), "Which colour is the sky?"),
    ]
    model = tiny.model
    slow = [
        layer.register_forward_pre_hook(lambda *a: time.sleep(0.001))  # let the threads interleave
        for layer in model.model.language_model.layers
    ]
    try:
        with torch.no_grad(), vidpress.apply(model, vidpress.DyCoke(k=0.7, l=2, p=0.5)) as run:
            alone = [_greedy(model, inputs, 12) for inputs in videos]
            results, reports, barrier = [None, None], [None, None], threading.Barrier(2)

            def work(i):
                barrier.wait()
                with torch.no_grad():
                    results[i] = _greedy(model, videos[i], 12)
                reports[i] = run.report  # this thread's own request

            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        for h in slow:
            h.remove()
    for (seq, logits), (seq_alone, logits_alone) in zip(results, alone):
        assert torch.equal(seq, seq_alone)
        assert torch.allclose(logits, logits_alone, atol=1e-5)
    for report in reports:
        assert report.decode_steps == 11 and report.ttft_s == report.ttft_s  # not NaN
    assert len(run.reports) == 4


def test_nested_apply_is_refused_and_the_outer_run_still_works(tiny, inputs):
    with torch.no_grad(), vidpress.apply(tiny.model, vidpress.DyCoke()) as outer:
        with pytest.raises(AlreadyAppliedError, match="compose"):
            vidpress.apply(tiny.model, "fastv")
        tiny.model(**inputs)
        assert outer.report.accounting.prefill_visual[0] < outer.report.accounting.visual_in
    with vidpress.apply(tiny.model, "fastv"):  # removed on exit: a new method can go on
        pass


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        ("dycoke", {"l": 100}, "starts at layer 100 but the LLM has 4 layers"),
        ("dycoke", {"l": 4}, "starts at layer 4"),
        ("metok", {"layers": (3, 10, 20)}, "do not fit an LLM of 4 layers"),  # not the reference: not moved
    ],
)
def test_parameters_the_model_would_ignore_are_refused_at_apply(tiny, method, params, match):
    with pytest.raises((InvalidParameterError, BudgetError), match=match):
        vidpress.apply(tiny.model, method, **params)
    vidpress.apply(tiny.model, "dycoke", l=1).remove()  # nothing was left installed


@pytest.mark.parametrize(
    ("method", "params"),
    [("dycoke", {"k": True}), ("dycoke", {"l": True}), ("visionzip", {"retention": True}), ("dycoke", {"p": "0.5"})],
)
def test_booleans_and_strings_are_not_numbers(method, params):
    with pytest.raises((InvalidParameterError, BudgetError)):
        vidpress.get_method(method, **params)


class _Payload:
    """Pickling this object would run code (writes a marker file) when a loader unpickles arbitrary objects."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_weight_and_frame_loaders_never_unpickle_code(tmp_path):
    import json
    import pickle
    import subprocess
    import sys

    from vidpress.testbed.saved import WEIGHTS, read_saved

    marker = tmp_path / "executed"
    torch.save({"x": _Payload(marker)}, tmp_path / WEIGHTS)
    (tmp_path / "testbed.json").write_text(json.dumps({}))
    with pytest.raises(pickle.UnpicklingError):
        read_saved(tmp_path)
    assert not marker.exists()
    crafted = tmp_path / "clip.npz"
    import numpy as np

    np.savez(
        crafted, frames=np.array([_Payload(marker)], dtype=object), timestamps=np.zeros(1), duration_s=0.0, path="x"
    )
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_saved_frames.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(crafted), "--model", "random"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "allow_pickle" in proc.stderr and not marker.exists()


def test_fidelity_columns_mean_what_they_say_under_forced_decoding(tiny, clip_frames):
    import math

    from vidpress.bench import BenchRow
    from vidpress.methods import get_method
    from vidpress.pipeline import ask

    model = tiny.model
    with torch.no_grad():
        top = int(model(**build_inputs(tiny.processor, clip_frames, "q")).logits[0, -1].argmax())
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = top  # the model's favourite first token now ends the sequence
    try:
        answers = [
            ask(
                model,
                tiny.processor,
                clip_frames,
                "q",
                get_method(name, **params),
                max_new_tokens=4,
                min_new_tokens=4,
                progress=False,
            )
            for name, params in (("none", {}), ("fastv", {"k": 1}))
        ]
    finally:
        model.generation_config.eos_token_id = eos
    base = answers[0]
    assert base.tokens[0] != top  # decoding was forced past the end of sequence
    for answer in answers:
        assert int(answer.first_logits.argmax()) == answer.tokens[0]  # the distribution the token came from
        row = BenchRow("x", 0.5, answer).as_dict(base)
        assert row["first_token_top1_agree"] == float(answer.tokens[0] == base.tokens[0])
        assert math.isfinite(row["first_token_kl"]) and row["first_token_kl"] >= -1e-6


def test_an_exception_inside_apply_leaves_the_model_as_it_was(tiny, inputs):
    model = tiny.model
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    with torch.no_grad():
        base = model(**inputs).logits
        with pytest.raises(KeyboardInterrupt), vidpress.apply(model, vidpress.DyCoke()):
            model(**inputs)
            raise KeyboardInterrupt
        assert torch.equal(model(**inputs).logits, base)
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()) == hooks
    vidpress.apply(model, "dycoke", l=1).remove()  # and nothing is left marked as installed


def test_base_weights_are_named_never_searched_for(monkeypatch, tmp_path):
    from conftest import SHARED

    from vidpress.models.default import find_weights

    monkeypatch.delenv("VIDPRESS_WEIGHTS", raising=False)
    monkeypatch.setenv("VIDPRESS_CACHE", str(tmp_path / "cache"))  # `vidpress weights` has filled no cache here
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # ../shared may sit right beside this checkout
    assert find_weights() is None
    monkeypatch.setenv("VIDPRESS_WEIGHTS", str(tmp_path))  # a folder without them
    assert find_weights() is None
    if (SHARED / "weights").is_dir():
        monkeypatch.setenv("VIDPRESS_WEIGHTS", str(SHARED / "weights"))
        assert find_weights() == SHARED / "weights"
