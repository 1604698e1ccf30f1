"""The command line, run as a user would (typer's CliRunner, tiny random model)."""

import json

import pytest
import torch
from conftest import shared_video
from typer.testing import CliRunner

from vidpress.cli import app

runner = CliRunner()


def test_flops_json_and_table():
    result = runner.invoke(app, ["flops", "--model", "llava-ov-7b", "--frames", "32", "--method", "dycoke", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["label"]: r for r in json.loads(result.output)["rows"]}
    assert rows["uncompressed"]["prefill_flops"] / 1e12 == pytest.approx(41.4, rel=0.02)
    assert rows["dycoke faithful (reference code count)"]["visual_tokens_llm"] == 3098
    table = runner.invoke(app, ["flops", "--model", "longva-7b", "--method", "dycoke", "--set", "k=0.5"])
    assert table.exit_code == 0 and "longva-7b" in table.output


def test_flops_skips_a_reference_row_that_cannot_run_but_not_the_chosen_mode():
    """4 frames: faithful TTM (the reference code) crashes there; the fixed default still prints, with a note."""
    result = runner.invoke(app, ["flops", "--frames", "4", "--method", "dycoke", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert [r["label"] for r in payload["rows"]][:2] == ["uncompressed", "dycoke"]
    assert not any("faithful" in r["label"] for r in payload["rows"])
    assert (
        len(payload["notes"]) == 1 and "faithful" in payload["notes"][0] and "at least 5 frames" in payload["notes"][0]
    )
    chosen = runner.invoke(app, ["flops", "--frames", "4", "--method", "dycoke", "--set", "mode=faithful"])
    assert chosen.exit_code != 0 and "at least 5 frames" in str(chosen.exception or chosen.output)


@pytest.mark.parametrize("video", [None, "mmaction2_demo_arm_wrestling.mp4"])
def test_run_compare_json(video):
    args = (
        ["run"]
        + ([str(shared_video(video))] if video else [])
        + ["--model", "random", "--frames", "8", "--compare", "--max-new-tokens", "4", "--json"]
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    base, dycoke = payload["runs"]
    assert base["visual_tokens_llm"] == 8 * 64
    assert base["decode_visual_per_layer"] == [8 * 64] * 4 and base["decode_steps"] == 3
    assert dycoke["visual_tokens_llm"] == 2 * 64 + 6 * int(0.3 * 64)
    ratios = payload["ratios"]
    assert ratios["visual_tokens_llm_ratio"] == dycoke["visual_tokens_llm"] / base["visual_tokens_llm"]
    assert ratios["prefill_flops_ratio"] == pytest.approx(dycoke["prefill_flops"] / base["prefill_flops"])
    assert ratios["ttft_speedup"] == pytest.approx(1 / ratios["ttft_ratio"]) and payload["trained"] is False


def test_run_table_output():
    result = runner.invoke(app, ["run", "--model", "random", "--frames", "6", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert "untrained" in result.output.lower() and "TTFT" in result.output


def test_help_everywhere():
    for args in (["--help"], ["run", "--help"], ["flops", "--help"], ["methods"]):
        assert runner.invoke(app, args).exit_code == 0


def test_run_metok_compare_on_a_real_video():
    result = runner.invoke(
        app,
        [
            "run",
            str(shared_video("opencv_vtest.avi")),
            "--model",
            "random",
            "--frames",
            "12",
            "--method",
            "metok",
            "--set",
            "layers=[1,2]",
            "--set",
            "key_frames=2",  # 3 key events of 6 key frames would make every one of 12 frames a key frame: no cut
            "--compare",
            "--max-new-tokens",
            "4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    base, metok = json.loads(result.output)["runs"]
    assert metok["visual_tokens_llm"] < base["visual_tokens_llm"]
    assert metok["stored_visual_per_layer"][1:] == [0] * (len(metok["stored_visual_per_layer"]) - 1)
    assert metok["events"]["events"][0][0] == 0


def test_events_writes_a_png(tmp_path):
    out = tmp_path / "events.png"
    result = runner.invoke(
        app,
        [
            "events",
            str(shared_video("opencv_tree.avi")),
            "--model",
            "random",
            "--frames",
            "8",
            "-q",
            "Is there a tree?",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "METok events" in result.output


def test_flops_metok_longva_128_frames():
    result = runner.invoke(app, ["flops", "--model", "longva-7b", "--frames", "128", "--method", "metok", "--json"])
    assert result.exit_code == 0, result.output
    base, metok = json.loads(result.output)["rows"]
    assert metok["prefill_flops"] / base["prefill_flops"] <= 1 - 0.806
    assert metok["kv_bytes"] / base["kv_bytes"] <= 1 - 0.935


def test_bench_quick_writes_table_and_plots(tmp_path):
    result = runner.invoke(
        app,
        [
            "bench",
            str(shared_video("opencv_vtest.avi")),
            "--model",
            "random",
            "--quick",
            "--methods",
            "fastv,frames,random",
            "--retentions",
            "0.5,0.25",
            "--out",
            str(tmp_path),
            "--repeats",
            "2",
            "--evidence",
            '{"3": [[0, 0, 0.5, 0.5]], "6": [[0.5, 0.5, 1, 1]]}',
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["meta"]["repeats"] == 2
    rows = {(r["method"], r["target_retention"]): r for r in saved["rows"]}
    assert rows[("uncompressed", 1.0)]["evidence_strict"] == 1.0
    # 25 % of 16 frames keeps frames 2, 6, 10 and 14: frame 6's box, half the evidence
    assert rows[("frames", 0.25)]["evidence_strict"] == pytest.approx(0.5)
    assert rows[("fastv", 0.5)]["evidence_strict"] == 1.0  # FastV drops inside the LLM: alive says how much
    assert rows[("fastv", 0.5)]["evidence_alive"] < 1.0
    for name in ("bench.csv", "bench.json", "bench.md", "fidelity_vs_flops.png", "ttft.png"):
        assert (tmp_path / name).stat().st_size > 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["method"], r["target_retention"]) for r in rows] == [
        ("uncompressed", 1.0),
        ("fastv", 0.5),
        ("frames", 0.5),
        ("frames", 0.25),
        ("random", 0.5),
        ("random", 0.25),
    ]
    assert rows[0]["first_token_kl"] == pytest.approx(0, abs=1e-6) and rows[0]["greedy_token_agreement"] == 1
    assert {r["visual_tokens_llm"] for r in rows if r["target_retention"] == 0.25} == {
        rows[0]["visual_tokens_llm"] // 4
    }
    assert "fastv @ 25%: skipped" in result.output  # unreachable at this depth: said, never run at another budget
    for r in rows:  # TTFT's limit: this run's vision time + the uncompressed prefill scaled by the FLOPs kept
        limit = (r["vision_s"] + rows[0]["llm_prefill_s"] * r["prefill_flops_ratio"]) / rows[0]["ttft_s"]
        assert r["ttft_limit_ratio"] == pytest.approx(limit)


def test_run_on_the_llava_next_video_family():
    result = runner.invoke(
        app,
        [
            "run",
            "--model",
            "random-llava-next-video",
            "--method",
            "fastvid",
            "--set",
            "retention=0.1",
            "--frames",
            "8",
            "--max-new-tokens",
            "3",
            "--compare",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    base, fastvid = json.loads(result.output)["runs"]
    assert base["visual_tokens_llm"] == 8 * 144  # 336 px CLIP, 24x24 pooled 2x2, no newline (LongVA's layout)
    assert fastvid["visual_tokens_llm"] == round(0.1 * 8 * 144)


def test_run_on_qwen2_5_vl_counts_temporal_patches():
    result = runner.invoke(
        app,
        [
            "run",
            "--model",
            "random-qwen2.5-vl",
            "--method",
            "dycoke",
            "--frames",
            "8",
            "--max-new-tokens",
            "3",
            "--compare",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    base, dycoke = json.loads(result.output)["runs"]
    assert base["visual_tokens_llm"] == 4 * 144  # 8 frames -> 4 temporal patches of 336 px: 24x24 merged 2x2
    assert dycoke["visual_tokens_llm"] < base["visual_tokens_llm"]


def test_median_report_takes_median_timings_and_keeps_accounting():
    from types import SimpleNamespace

    from vidpress.bench import median_report, run_cells

    keys = ("vision_s", "llm_prefill_s", "overhead_s", "decode_overhead_s", "decode_s", "peak_memory_bytes")
    runs = [
        SimpleNamespace(ttft_s=t, accounting=name, **{k: t * 10 for k in keys})
        for t, name in ((3.0, "a"), (1.0, "b"), (2.0, "c"), (9.0, "d"), (0.5, "e"))
    ]
    runs[2].llm_prefill_s = 99.0  # the median-TTFT run's own prefill time is not the median: 30 of 30,10,99,90,5
    best = median_report(runs)
    assert best.accounting == "c" and best.ttft_s == 2.0
    assert best.llm_prefill_s == 30.0 and best.peak_memory_bytes == 20.0
    assert runs[2].llm_prefill_s == 99.0 and best is not runs[2]  # the repeats themselves are left as measured
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        run_cells(None, None, None, "q", [], repeats=0)


def test_bench_writes_each_cell_as_it_comes_and_resumes(tiny, clip_frames, tmp_path):
    from vidpress.bench import cell_key, run_bench
    from vidpress.bench_files import resumed_rows, write_rows

    def interrupted(rows):
        write_rows(rows, [], {}, tmp_path, "bench")
        if len(rows) == 2:
            raise KeyboardInterrupt  # stopped after the first cell

    args = (tiny.model, tiny.processor, clip_frames[:8], "q", ["frames", "random"], [0.5, 0.25])
    with torch.no_grad(), pytest.raises(KeyboardInterrupt):
        run_bench(*args, new_tokens=2, progress=False, on_row=interrupted)
    done = resumed_rows(tmp_path, "bench")
    assert [cell_key(r) for r in done] == [("frames", 0.5)]
    # a run that keeps its reference (the evidence matrix: no timings to compare) reads it back with the cells
    with_reference = resumed_rows(tmp_path, "bench", reference=True)
    assert [cell_key(r) for r in with_reference] == [("uncompressed", 1.0), ("frames", 0.5)]
    calls = []
    with torch.no_grad():
        rows, _ = run_bench(*args, new_tokens=2, progress=False, done=done, on_row=lambda rows: calls.append(len(rows)))
    assert [cell_key(r) for r in rows] == [
        ("uncompressed", 1.0),
        ("frames", 0.5),
        ("frames", 0.25),
        ("random", 0.5),
        ("random", 0.25),
    ]
    assert rows[1] == done[0]  # kept as measured, not run again
    assert calls == [2, 3, 4, 5]  # the reference, then the three cells not yet measured, each written as it came


def test_a_partial_matrix_names_the_cells_it_lacks():
    from vidpress.bench import missing_cells

    rows = [
        {"method": m, "target_retention": r}
        for m, r in [("uncompressed", 1.0), ("frames", 0.5), ("frames", 0.25), ("random", 0.5)]
    ]
    # on 30 layers PyramidDrop cannot reach 25 % (pruning starts at layer 8: at least 0.267), so that cell is
    # skipped, not missing; METok runs at its defaults
    methods = ["frames", "random", "pdrop", "metok"]
    assert missing_cells(rows, methods, [0.5, 0.25], depth=30) == ["random @ 25%", "pdrop @ 50%", "metok @ defaults"]
    assert missing_cells(rows, methods, [0.5, 0.25]) == [
        "random @ 25%",
        "pdrop @ 50%",
        "pdrop @ 25%",
        "metok @ defaults",
    ]
    assert missing_cells(rows, ["frames"], [0.5, 0.25]) == []


def test_bench_rejects_bad_retentions_methods_and_outputs_before_work(tmp_path):
    for args, message in (
        (["--retentions", "abc"], "'abc'"),
        (["--retentions", "0"], "'0'"),
        (["--methods", "fastvd"], "unknown method 'fastvd'"),
    ):
        result = runner.invoke(app, ["bench", "--model", "random", *args, "--out", str(tmp_path)])
        assert result.exit_code != 0 and message in str(result.exception or result.output)
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = runner.invoke(app, ["bench", "--model", "random", "--out", str(blocked / "sub")])
    assert result.exit_code != 0 and str(blocked) in str(result.exception or result.output)


def test_bench_refuses_bad_evidence_boxes_before_work(tmp_path):
    for text, message in (("[1]", "must be JSON"), ('{"0": [[0.5, 0, 0.2, 1]]}', "x0 < x1")):
        result = runner.invoke(app, ["bench", "--model", "random", "--evidence", text, "--out", str(tmp_path)])
        said = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and message in said, result.output


def test_run_warms_up_before_the_measured_request(monkeypatch):
    import vidpress.pipeline

    calls = []
    real = vidpress.pipeline.ask

    def recording(model, processor, frames, question, method, **kwargs):
        calls.append((method.name, kwargs.get("max_new_tokens")))
        return real(model, processor, frames, question, method, **kwargs)

    monkeypatch.setattr(vidpress.pipeline, "ask", recording)
    result = runner.invoke(
        app,
        [
            "run",
            "--model",
            "random",
            "--method",
            "metok",
            "--set",
            "layers=(1,2,3)",
            "--frames",
            "8",
            "--max-new-tokens",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert calls == [("uncompressed", 2), ("metok", 3)]  # one-time allocations land in the warm-up, not in METok's peak


def built_in_models():
    from vidpress.adapters.registry import random_builds

    return [*random_builds(), "fallback", "default", "testbed"]  # each family's random build, then the default ones


BUILT_IN = built_in_models()
# a method that cannot run on a family at all, with the reason the command gives
CANNOT = {
    ("tome", model): "not a SigLIP/CLIP/DINOv2 encoder"
    for model in ("random-qwen2.5-vl", "random-qwen3-vl", "random-qwen3-vl-moe")
}


@pytest.mark.parametrize(
    # the testbed is the default model's architecture with trained weights: every method again there is the long check
    "model",
    [pytest.param(m, marks=pytest.mark.slow) if m == "testbed" else m for m in BUILT_IN],
)
def test_every_method_runs_at_its_defaults_on_every_built_in_model(model, monkeypatch, tmp_path):
    """`vidpress run --method M` on each built-in model: METok's reference layers move into a 4-layer LLM, ToMe
    maps its tokens back onto LLaVA-NeXT-Video's grid, the random towers are deep enough for ToMe's default."""
    from conftest import SHARED

    from vidpress.methods import METHODS

    if model in ("default", "testbed") and not (SHARED / "weights").is_dir():
        pytest.skip("needs ../shared/data/weights")
    if model == "fallback":  # the default model where no weights are found
        monkeypatch.delenv("VIDPRESS_WEIGHTS", raising=False)
        monkeypatch.setenv("VIDPRESS_CACHE", str(tmp_path))
    frames = "4" if model in ("default", "testbed") else "8"
    for method in METHODS:
        args = ["run", "--model", model.replace("fallback", "default"), "--method", method, "-f", frames]
        result = runner.invoke(app, [*args, "--max-new-tokens", "2", "--json"])
        if (method, model) in CANNOT:
            assert CANNOT[method, model] in str(result.exception), (method, result.output)
            continue
        assert result.exit_code == 0, (method, result.output, result.exception)
        (run,) = json.loads(result.stdout)["runs"]
        assert run["visual_tokens_llm"] <= run["visual_tokens_in"] + 1, method  # METok's newline may count


def test_methods_lists_each_summary_whole():
    from vidpress.cli.methods import summary
    from vidpress.methods import METHODS

    for name, cls in METHODS.items():
        text = summary(cls.__doc__)
        assert text.endswith(".") and len(text) > 20, (name, text)
    assert (
        summary("One line that goes on\n    to a second. Then more.\n\nParameters")
        == "One line that goes on to a second."
    )


def test_a_bench_row_entering_with_more_than_uncompressed_says_why(tmp_path):
    """METok on 8 frames keeps every frame whole (3 key events of 6 key frames cover them) and its newline is a visual
    token of its budget: 513 of 512. The bench says so rather than leave an entry above 1 unexplained."""
    args = ["bench", "--model", "random", "--methods", "metok,pdrop", "-f", "8", "--new-tokens", "2"]
    result = runner.invoke(app, [*args, "--retentions", "0.25", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "metok: enters the LLM with 513 visual tokens, more than uncompressed" in " ".join(result.output.split())
    assert "│ pdrop" in result.output  # PyramidDrop's row is there at 25 %


def test_a_generation_that_stops_at_its_first_token_reports_no_decoding_step(tiny, clip_frames):
    from vidpress.methods import get_method
    from vidpress.pipeline import ask
    from vidpress.report import NO_STEP

    answer = ask(tiny.model, tiny.processor, clip_frames[:4], "What?", get_method("dycoke"), max_new_tokens=1)
    assert answer.report.decode_steps == 0
    rows = dict(answer.report.rows())
    assert rows["decode"] == NO_STEP and rows["mean visual KV attended per layer, decode"] == NO_STEP


def test_the_model_help_names_every_random_build():
    from vidpress.adapters.registry import random_builds
    from vidpress.cli.common import MODEL_HELP

    assert all(name in MODEL_HELP.split(" | ") for name in random_builds())
