"""The procedural video-QA generator: reproducible, answers derived from the scene list, renderable."""

import numpy as np
import pytest

from vidpress.testbed.scenes import BACKGROUNDS, COLORS, TYPES, answer, make_split, render


def test_same_seed_same_videos_and_questions_other_seed_differs():
    a, b = make_split("train", 20, seed=3), make_split("train", 20, seed=3)
    assert a == b
    assert np.array_equal(a[5].frames(64), b[5].frames(64))
    assert make_split("train", 20, seed=4) != a
    assert {s.video_id for s in make_split("test", 20)}.isdisjoint(s.video_id for s in make_split("train", 20))


def _check(sample):
    """Re-derive the answer from the scene list, independently of the generator's own answer()."""
    scenes, q = sample.scenes, sample.question
    objects, right = [s.object for s in scenes], q.options[q.answer]
    first = {o: objects.index(o) if o in objects else 99 for o in q.options}
    last = {o: max([i for i, x in enumerate(objects) if x == o], default=-1) for o in q.options}
    if q.kind == "scene_count":
        return right == str(len(scenes))
    if q.kind == "color_in_scene":
        return right == scenes[q.params["scene"]].color
    if q.kind == "count_in_scene":
        return right == str(scenes[q.params["scene"]].count)
    if q.kind == "first":
        return all(first[right] < first[o] for o in q.options if o != right)
    if q.kind == "last":
        return all(last[right] > last[o] for o in q.options if o != right)
    if q.kind == "never":
        return right not in objects and all(o in objects for o in q.options if o != right)
    a, b = scenes[q.params["scene"]], scenes[q.params["scene"] + 1]
    diffs = {"the background": a.background != b.background, "the object's colour": a.color != b.color,
             "the object's shape": a.shape != b.shape, "the number of objects": a.count != b.count}
    return sum(diffs.values()) == 1 and diffs[right]


def test_every_answer_is_determined_by_the_scene_list():
    samples = make_split("test", 560)
    assert len(samples) >= 500 and {s.question.kind for s in samples} == set(TYPES)
    for sample in samples:
        q = sample.question
        assert len(q.options) == 4 and len(set(q.options)) == 4  # chance is 25 %
        assert q.options[q.answer] == answer(q.kind, sample.scenes, q.params)
        assert _check(sample), (sample.scenes, q)


def test_rendered_frames_show_each_scene():
    sample = make_split("validation", 1, seed=7)[0]
    frames = render(sample.scenes, 96)
    assert frames.shape == (sum(s.frames for s in sample.scenes), 96, 96, 3) and frames.dtype == np.uint8
    start = 0
    for scene in sample.scenes:
        first = frames[start]
        assert tuple(first[0, 0]) == BACKGROUNDS[scene.background]  # corner: background
        assert (first.reshape(-1, 3) == COLORS[scene.color]).all(-1).any()  # the object's colour is drawn
        start += scene.frames


def test_unknown_split_and_kind_raise():
    with pytest.raises(ValueError, match="split"):
        make_split("dev", 1)
    with pytest.raises(ValueError, match="kind"):
        answer("colour", (), {})


def test_wilson_interval_by_hand():
    from vidpress.evaluate import wilson

    low, high = wilson(5, 10)  # p = 0.5, n = 10: 0.5 -/+ 0.263 (z = 1.96)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


def test_evaluate_keep_everything_scores_like_uncompressed(tiny):
    import vidpress
    from vidpress.evaluate import evaluate
    from vidpress.methods import get_method

    samples = make_split("test", 6)
    base = evaluate(tiny.model, tiny.processor, samples, get_method("none"), frames=8, progress=False)
    same = evaluate(tiny.model, tiny.processor, samples, vidpress.DyCoke(k=0, p=0), frames=8, progress=False)
    cheaper = evaluate(tiny.model, tiny.processor, samples, vidpress.DyCoke(k=0.7), frames=8, progress=False)
    assert base.total == 6 and same.correct == base.correct and same.prefill_flops == base.prefill_flops
    assert cheaper.prefill_flops < base.prefill_flops


def test_cli_eval_prints_accuracy_and_accuracy_retained():
    from typer.testing import CliRunner

    from vidpress.cli import app

    result = CliRunner().invoke(app, ["eval", "--model", "random", "--method", "dycoke", "--retention", "0.25",
                                      "-n", "4", "-f", "8"])
    assert result.exit_code == 0, result.output
    assert "accuracy retained" in result.output and "dycoke @ 25%" in result.output


def test_training_updates_the_projector_and_round_trips(tmp_path):
    """The testbed training loop at toy scale: the projector trains, the best checkpoint saves and reloads."""
    import torch

    from vidpress.models.random import random_model
    from vidpress.testbed.train import save, train, trainable_state

    loaded = random_model(layers=2, hidden=64, image_size=56, seed=0)
    before = {k: v.clone() for k, v in trainable_state(loaded.model).items()}
    record = train(loaded.model, loaded.processor, steps=4, train_videos=6, val_videos=4, frames=4, size=56,
                   batch=2, eval_every=2, log=lambda *_: None)
    after = trainable_state(loaded.model)
    assert set(before) == {"model.image_newline", "model.multi_modal_projector.linear_1.weight",
                           "model.multi_modal_projector.linear_1.bias", "model.multi_modal_projector.linear_2.weight",
                           "model.multi_modal_projector.linear_2.bias"}
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert len(record["history"]) == 2 and 0 <= record["best_val_accuracy"] <= 1
    assert not any(p.requires_grad for p in loaded.model.parameters())  # frozen again after training
    path = save(loaded.model, record, tmp_path)
    restored = torch.load(path)
    assert all(torch.allclose(restored[k].float(), after[k], atol=1e-2) for k in after)


def test_missing_testbed_weights_say_how_to_train(tmp_path):
    from vidpress.testbed.train import load_testbed

    with pytest.raises(FileNotFoundError, match="python -m vidpress.testbed.train"):
        load_testbed(tmp_path)
