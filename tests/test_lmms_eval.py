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
