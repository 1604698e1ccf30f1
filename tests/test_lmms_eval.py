"""The lmms-eval wrapper, called directly as lmms-eval's evaluator would (no lmms-eval needed)."""

import pytest

from vidpress.cli import bundled_clip
from vidpress.integrations.lmms_eval import VidpressLMM, _value


class Request:  # the part of lmms_eval.api.instance.Instance the wrapper reads
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from vidpress.models.random import random_model

    loaded, path = random_model(layers=4, hidden=64, image_size=56, seed=0), tmp_path_factory.mktemp("tiny")
    loaded.model.save_pretrained(path)
    loaded.processor.save_pretrained(path)
    return str(path)


def test_generate_until_answers_a_constructed_task_document(saved_tiny):
    model = VidpressLMM(pretrained=saved_tiny, method="dycoke", k="0.5", max_frames_num="8")
    model.task_dict = {"videoqa": {"test": {0: {"video": str(bundled_clip()), "question": "What is shown?"}}}}
    request = Request(
        "What is shown? Answer briefly.",
        {"max_new_tokens": 4, "until": ["\n\n"]},
        lambda doc: [doc["video"]],
        0,
        "videoqa",
        "test",
    )
    answers = model.generate_until([request])
    assert len(answers) == 1 and isinstance(answers[0], str)
    report = model.reports[0]
    assert report.accounting.frames == 8 and report.accounting.retention < 1  # DyCoke K=0.5 was applied
    with pytest.raises(NotImplementedError):
        model.loglikelihood([request])


def test_a_saved_qwen3_vl_answers_with_its_timestamps(tmp_path):
    from vidpress.models.random import random_qwen3_vl

    loaded = random_qwen3_vl(layers=4, hidden=64, image_size=64, seed=0, moe=True)
    loaded.model.save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)
    model = VidpressLMM(pretrained=str(tmp_path), method="visionzip", retention="0.5", max_frames_num="8")
    assert type(model.loaded.model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    model.task_dict = {"videoqa": {"test": {0: {"video": str(bundled_clip())}}}}
    seen = []
    original = model.loaded.processor.video_prompt
    model.loaded.processor.video_prompt = lambda frames, times=None: seen.append(times) or original(frames, times)
    request = Request("What is shown?", {"max_new_tokens": 3}, lambda doc: [doc["video"]], 0, "videoqa", "test")
    (answer,) = model.generate_until([request])
    assert isinstance(answer, str) and model.reports[0].accounting.retention == 0.5
    assert seen and len(seen[0]) == 8 and seen[0][1] > 0  # the decoded frames' own times


def test_model_args_strings_become_values():
    assert _value("0.7") == 0.7 and _value("(3,10,19)") == (3, 10, 19) and _value("fixed") == "fixed"


def test_entry_point_registers_vidpress_with_lmms_eval():
    pytest.importorskip("lmms_eval.models.registry_v2")
    from importlib.metadata import entry_points

    from lmms_eval.models.registry_v2 import ModelRegistryV2

    assert [ep.name for ep in entry_points(group="lmms_eval.models")].count("vidpress") == 1
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()  # what lmms-eval does at import
    assert registry.get_manifest("vidpress").simple_class_path == "vidpress.integrations.lmms_eval.VidpressLMM"


def test_model_args_tuples_survive_lmms_evals_comma_split():
    assert (
        _value("3;10;19") == (3, 10, 19)
        and _value("(3;10;19)") == (3, 10, 19)
        and _value("0.5;fixed") == (0.5, "fixed")
    )


def test_ranks_from_the_launcher_and_token_counts_of_the_compressed_prompt(saved_tiny, monkeypatch):
    import sys
    import types
    from dataclasses import dataclass

    @dataclass
    class TokenCounts:  # lmms_eval.api.instance's, as the evaluator reads them
        input_tokens: int | None = None
        output_tokens: int | None = None

    @dataclass
    class GenerationResult:
        text: str
        token_counts: TokenCounts | None = None

    instance = types.ModuleType("lmms_eval.api.instance")
    instance.TokenCounts, instance.GenerationResult = TokenCounts, GenerationResult
    for name, module in (
        ("lmms_eval", types.ModuleType("lmms_eval")),
        ("lmms_eval.api", types.ModuleType("lmms_eval.api")),
        ("lmms_eval.api.instance", instance),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    ranks = []
    for rank in (0, 1):  # two processes of `accelerate launch --num_processes 2`
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        model = VidpressLMM(pretrained=saved_tiny, method="metok", layers="1;2;3", max_frames_num="8")
        ranks.append((model.rank, model.world_size))
    assert ranks == [(0, 2), (1, 2)]  # what lmms-eval's evaluator shards the requests by
    assert model.method.layers == (1, 2, 3)
    model = VidpressLMM(pretrained=saved_tiny, method="dycoke", k="0.7", max_frames_num="8")
    model.task_dict = {"videoqa": {"test": {0: {"video": str(bundled_clip())}}}}
    request = Request("What is shown?", {"max_new_tokens": 3}, lambda doc: [doc["video"]], 0, "videoqa", "test")
    (result,) = model.generate_until([request])
    acc = model.reports[0].accounting
    assert isinstance(result, GenerationResult) and result.token_counts.output_tokens <= 3
    assert result.token_counts.input_tokens == acc.other_tokens + acc.prefill_visual[0]
    assert acc.prefill_visual[0] < acc.visual_in  # the counts are the compressed prompt's
