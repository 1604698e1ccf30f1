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
    diffs = {
        "the background": a.background != b.background,
        "the object's colour": a.color != b.color,
        "the object's shape": a.shape != b.shape,
        "the number of objects": a.count != b.count,
    }
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
    from vidpress.evaluate import evaluate, prepare
    from vidpress.methods import get_method

    samples = make_split("test", 6)
    base = evaluate(tiny.model, tiny.processor, samples, get_method("none"), frames=8, progress=False)
    same = evaluate(tiny.model, tiny.processor, samples, vidpress.DyCoke(k=0, p=0), frames=8, progress=False)
    cheaper = evaluate(tiny.model, tiny.processor, samples, vidpress.DyCoke(k=0.7), frames=8, progress=False)
    assert base.total == 6 and same.hits == base.hits and same.prefill_flops == base.prefill_flops
    assert cheaper.prefill_flops < base.prefill_flops
    prepared = prepare(tiny.processor, samples, frames=8)  # the matrix renders each video once
    again = evaluate(tiny.model, tiny.processor, samples, get_method("none"), inputs=prepared, progress=False)
    assert again.hits == base.hits and again.prefill_flops == base.prefill_flops
    kinds = base.by_kind(samples)
    assert set(kinds) == {s.question.kind for s in samples}
    assert sum(kinds[s.question.kind] for s in samples) == pytest.approx(base.correct)  # one question per kind here
    with pytest.raises(ValueError, match="prepare"):
        evaluate(tiny.model, tiny.processor, samples, get_method("none"), inputs=prepared[:2], progress=False)


def test_cli_eval_prints_accuracy_and_accuracy_retained():
    from typer.testing import CliRunner

    from vidpress.cli import app

    result = CliRunner().invoke(
        app, ["eval", "--model", "random", "--method", "dycoke", "--retention", "0.25", "-n", "4", "-f", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "accuracy retained" in result.output and "dycoke @ 25%" in result.output
    assert "accuracy per question kind" in result.output and "scene_count (1)" in result.output  # 4 kinds, 1 each


def test_shared_prefix_answers_equal_the_full_model(tiny):
    """Training asks every question of a video off one cached prefix: each question's teacher-forced loss and
    greedy answer must be what the full model gives on its own prompt."""
    import torch

    from testbed.qa import answer_loss, encode, greedy_answers, video_questions
    from vidpress.evaluate import ANSWER_TOKENS, choice_prompt
    from vidpress.pipeline import build_inputs

    model, processor = tiny.model, tiny.processor
    tokenizer = processor.tokenizer
    samples = make_split("train", 2, seed=5)
    data = encode(model, processor, samples, frames=4, size=56)
    asked = [q for s in samples for q in video_questions(s)]
    questions = [q for v in data for q in v["questions"]]
    assert [q["kind"] for q in questions] == [a.question.kind for a in asked]
    with torch.inference_mode():
        answers = greedy_answers(model, data, tokenizer)
        total, tokens = 0.0, 0
        for sample, question, text in zip(asked, questions, answers):
            inputs = build_inputs(processor, sample.frames(56, 4), choice_prompt(sample))
            prompt = inputs["input_ids"].shape[1]
            out = model.generate(
                **inputs,
                max_new_tokens=ANSWER_TOKENS,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.eos_token_id,
            )
            assert text == tokenizer.decode(out[0, prompt:], skip_special_tokens=True)
            ids = torch.cat([inputs["input_ids"], question["target"][None]], dim=1)
            logits = model(input_ids=ids, pixel_values_videos=inputs["pixel_values_videos"]).logits[0]
            total += torch.nn.functional.cross_entropy(
                logits[prompt - 1 : -1], question["target"], reduction="sum"
            ).item()
            tokens += len(question["target"])
        assert abs(answer_loss(model, data).item() - total / tokens) < 1e-4


def test_video_questions_ask_every_kind_the_scenes_allow():
    from testbed.qa import video_questions

    sample = make_split("train", 1, seed=2)[0]
    asked = video_questions(sample)
    assert asked[0] == sample and asked == video_questions(sample)  # seeded by the video id
    kinds = [q.question.kind for q in asked]
    assert len(set(kinds)) == len(kinds) and set(kinds) <= set(TYPES) and len(kinds) >= 5
    for q in asked:
        assert q.question.options[q.question.answer] == answer(q.question.kind, q.scenes, q.question.params)


def test_lora_merge_keeps_the_outputs(tiny):
    """merge_lora folds W += s B A into the plain layers: same logits, no peft modules left; apply_lora redoes it."""
    import copy

    import torch

    from testbed.lora import add_lora, merge_lora
    from vidpress.testbed.saved import apply_lora

    model = copy.deepcopy(tiny.model)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    scale = add_lora(model, rank=4)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    with torch.no_grad():
        before = model.model.language_model(input_ids=ids).last_hidden_state
        factors = merge_lora(model, scale)
        after = model.model.language_model(input_ids=ids).last_hidden_state
    assert factors and not any("lora" in n for n, _ in model.named_parameters())
    assert not torch.allclose(before, tiny.model.model.language_model(input_ids=ids).last_hidden_state, atol=1e-3)
    assert torch.allclose(before, after, atol=1e-5)
    fresh = copy.deepcopy(tiny.model)
    apply_lora(fresh, factors, scale)
    assert all(torch.allclose(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_training_updates_projector_and_lora_and_round_trips(tmp_path):
    """The testbed training loop at toy scale: projector and LoRA train, the best checkpoint saves, merged."""
    import torch

    from testbed.train import train
    from vidpress.models.random import random_model
    from vidpress.testbed.saved import WEIGHTS, save, trainable_state

    loaded = random_model(layers=2, hidden=64, image_size=56, seed=0)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    record = train(
        loaded.model,
        loaded.processor,
        steps=4,
        train_videos=6,
        val_videos=3,
        frames=4,
        size=56,
        batch=2,
        rank=4,
        eval_every=2,
        log=None,
    )
    after = loaded.model.state_dict()
    assert set(after) == set(before)  # LoRA merged: the plain architecture again
    assert set(trainable_state(loaded.model)) == {
        "model.image_newline",
        "model.multi_modal_projector.linear_1.weight",
        "model.multi_modal_projector.linear_1.bias",
        "model.multi_modal_projector.linear_2.weight",
        "model.multi_modal_projector.linear_2.bias",
    }
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.multi_modal_projector") for k in changed)
    assert any(k.endswith("self_attn.q_proj.weight") for k in changed)  # the merged LoRA
    assert not any(k.startswith("model.vision_tower") for k in changed)
    assert len(record["history"]) == 2 and 0 <= record["best_val_accuracy"] <= 1 and record["lora"]
    assert not any(p.requires_grad for p in loaded.model.parameters())  # frozen again after training
    path = save(loaded.model, record, tmp_path)
    assert path.name == WEIGHTS
    restored = torch.load(path)
    assert set(restored) == set(trainable_state(loaded.model)) | set(record["lora"])


def test_curriculum_adds_kinds_and_seconds_cap_the_run(tmp_path, monkeypatch):
    """--caption-steps trains descriptions alone first; --curriculum then trains 'first' alone and adds kinds
    in CURRICULUM order; --seconds shrinks the run to
    fit; each new best is checkpointed as it comes (a loadable record and weights)."""
    import json

    from testbed import train as training
    from vidpress.models.random import random_model
    from vidpress.testbed.saved import WEIGHTS

    seen = []
    real_loss = training.answer_loss
    monkeypatch.setattr(
        training,
        "answer_loss",
        lambda model, videos, *weight: (
            seen.append({q["kind"] for v in videos for q in v["questions"]}),
            real_loss(model, videos, *weight),
        )[1],
    )
    loaded = random_model(layers=2, hidden=64, image_size=56, seed=0)
    record = training.train(
        loaded.model,
        loaded.processor,
        steps=8,
        train_videos=6,
        val_videos=2,
        frames=4,
        size=56,
        batch=3,
        rank=4,
        eval_every=2,
        align_steps=0,
        caption_steps=2,
        curriculum=2,
        log=None,
    )
    assert seen[0] == seen[1] == {"caption"}  # caption pre-training first
    assert seen[2] == seen[3] == {"first"}
    assert seen[4] | seen[5] <= {"first", "last"} and "last" in seen[4] | seen[5]
    assert record["steps"] == 8 and record["curriculum"] == 2 and record["caption_steps"] == 2
    assert sorted(training.CURRICULUM) == sorted(TYPES)  # every kind joins, once

    loaded = random_model(layers=2, hidden=64, image_size=56, seed=0)
    record = training.train(
        loaded.model,
        loaded.processor,
        steps=6,
        train_videos=6,
        val_videos=2,
        frames=4,
        size=56,
        batch=3,
        rank=4,
        eval_every=2,
        align_steps=0,
        seconds=1e-3,
        checkpoint=tmp_path,
        log=None,
    )
    assert record["steps"] == 1 and [h["step"] for h in record["history"]] == [1]  # out of time after step 1
    assert record["history"][-1]["lr_factor"] == pytest.approx(0.0, abs=1e-9)  # the cosine ends with the run
    saved = json.loads((tmp_path / "testbed.json").read_text())
    assert (tmp_path / WEIGHTS).exists() and saved["steps"] == 1 and "lora" not in saved


def test_missing_testbed_weights_say_how_to_train(tmp_path):
    from vidpress.testbed.saved import load_testbed

    with pytest.raises(FileNotFoundError, match="python -m testbed.train"):
        load_testbed(tmp_path)


def test_word_targets_put_object_words_on_the_tokens_the_object_covers(tiny):
    """A static object at the centre of a 112 px frame (radius 11 px) covers the 4 central tokens of the 4x4
    pooled grid (each about 12 % of its area): they get "red circle 1", the other 12 the background "gray"."""
    import torch

    from testbed.align import word_targets
    from vidpress.testbed.scenes import Question, Sample, Scene

    scene = Scene("gray", "circle", "red", 1, "static", 4)
    sample = Sample("v", (scene,), Question("scene_count", "?", ("1", "2", "3", "4"), 0))
    targets = word_targets(tiny.model, tiny.processor, sample, frames=2, size=112)
    assert targets.shape == (2, 16, tiny.model.config.text_config.hidden_size)
    centre = {5, 6, 9, 10}
    thing, ground = targets[0, 5], targets[0, 0]
    assert not torch.allclose(thing, ground)
    for i in range(16):
        assert torch.equal(targets[0, i], thing if i in centre else ground)
    assert torch.equal(targets[0], targets[1])  # static: every frame alike


def test_model_card_states_data_training_and_held_out_accuracy(tmp_path):
    from testbed.card import write_card

    record = {
        "seed": 0,
        "steps": 180,
        "batch_videos": 4,
        "lr": 2e-4,
        "lora_lr": 1e-3,
        "lora_rank": 16,
        "lora_scale": 2.0,
        "frames": 12,
        "image_size": 112,
        "train_videos": 700,
        "val_videos": 32,
        "val_questions": 218,
        "best_val_accuracy": 0.8,
        "seconds": 3600.0,
        "history": [{"step": 30, "loss": 1.2, "val_accuracy": {"all": 0.5}}],
        "test_questions": 560,
        "test_correct": 448,
        "test_accuracy": 0.8,
        "test_interval": [0.765, 0.831],
        "test_by_kind": {"first": 0.9},
        "test_subset": 50,
        "test_subset_correct": 41,
    }
    text = write_card(tmp_path, record).read_text()
    for fact in (
        "**80.0%** on 560 test questions",
        "76.5%-83.1%",
        "41 right",
        "rank-16 LoRA",
        "700 videos",
        "| 30 | 1.200 | 50.0% |",
        "| first | 90.0% |",
        "--steps 180",
        "seed 0",
    ):
        assert fact in text, fact

    first = {
        **record,
        "command": "python -m testbed.train --steps 90 --out /tmp/a",
        "align_steps": 600,
        "align_token_accuracy": 0.95,
        "best_val_accuracy": 0.4,
    }
    text = write_card(
        tmp_path, {**record, "init": first, "command": "python -m testbed.train --init /tmp/a"}
    ).read_text()
    assert "--steps 90 --out /tmp/a\npython -m testbed.train --init /tmp/a\n" in text  # both runs, in order
    assert "600 steps putting" in text and "validation accuracy 40.0%" in text and "from 700 videos" in text
    second = {
        **record,
        "command": "python -m testbed.train --init /tmp/a --out /tmp/b",
        "init": first,
        "best_val_accuracy": 0.6,
        "train_videos": 500,
    }
    start = {"step": 0, "loss": None, "val_accuracy": {"all": 0.6}}  # a continued run validates its start first
    text = write_card(
        tmp_path,
        {
            **record,
            "init": second,
            "command": "python -m testbed.train --init /tmp/b",
            "history": [start, *record["history"]],
        },
    ).read_text()
    assert "| 0 | — | 60.0% |\n| 30 | 1.200 | 50.0% |" in text
    assert "(80.0%). Wall time" in text and "the 3 runs together 180 min" in text  # 3 x 3600 s; no step reached 80 %
    assert (
        "--steps 90 --out /tmp/a\npython -m testbed.train --init /tmp/a --out /tmp/b\n"
        "python -m testbed.train --init /tmp/b\n"
    ) in text  # a chain of three runs, in order
    assert "600 steps putting" in text and "95.0% of tokens" in text  # the first run's alignment
    assert "`init.init` in `testbed.json` (180 steps of 4 videos from 700 videos" in text
    assert (
        "`init` in `testbed.json` (180 steps of 4 videos from 500 videos of the train split, seed 0; "
        "validation accuracy 60.0%) with the settings below." in text
    )
    text = write_card(
        tmp_path,
        {
            **record,
            "protocol": "describe",
            "description_weight": 4.0,
            "history": [{"step": 30, "loss": 1.2, "val_accuracy": {"all": 0.8}}],
        },
    ).read_text()
    assert "its own mean loss, weighted 4x)" in text and "(80.0%, step 30)" in text
    text = write_card(tmp_path, {**record, "caption_steps": 400, "caption_task": True}).read_text()
    assert "the first 400 steps trained only the description" in text and "kept training beside" in text
    assert "asked right after the video" in text and "below the 75% bar" not in text
    text = write_card(tmp_path, {**record, "protocol": "describe", "test_accuracy": 0.684}).read_text()
    assert "**68.4%** on 560" in text and "below the 75% bar" in text
    assert "after the model's own description" in text and "the true description (its own mean loss)" in text


def test_training_refuses_a_batch_without_the_kinds_in_training():
    from testbed.qa import encode
    from testbed.train import train
    from vidpress.models.random import random_model

    loaded = random_model(layers=2, hidden=64, image_size=56, seed=0)
    data = encode(loaded.model, loaded.processor, make_split("train", 2), 4, 56)  # no caption items
    with pytest.raises(ValueError, match="no training item of the kinds \\('caption',\\)"):
        train(
            loaded.model,
            loaded.processor,
            steps=1,
            train_videos=2,
            val_videos=2,
            frames=4,
            size=56,
            rank=0,
            align_steps=0,
            caption_steps=1,
            data=(data, data),
            log=None,
        )


def test_training_continues_from_a_saved_testbed(tmp_path):
    """--init loads the saved projector and LoRA into the next run (no alignment) and validates them first;
    another rank is refused."""
    import torch

    from testbed.train import train
    from vidpress.models.random import random_model

    settings = dict(train_videos=4, val_videos=2, frames=4, size=56, batch=2, eval_every=1, log=None)
    first = random_model(layers=2, hidden=64, image_size=56, seed=0)
    train(first.model, first.processor, steps=2, rank=4, checkpoint=tmp_path, lr=1e-2, lora_lr=1e-2, **settings)
    then = random_model(layers=2, hidden=64, image_size=56, seed=0)
    record = train(then.model, then.processor, steps=1, rank=4, init=tmp_path, lr=0.0, lora_lr=0.0, **settings)
    assert record["init"]["steps"] >= 1 and "align_steps" not in record  # continued, not re-aligned
    assert [(h["step"], h["loss"]) for h in record["history"]][0] == (0, None)  # the starting point, validated
    saved, now = first.model.state_dict(), then.model.state_dict()
    for key in ("model.multi_modal_projector.linear_1.weight", "model.language_model.layers.0.self_attn.q_proj.weight"):
        assert not torch.equal(
            saved[key], random_model(layers=2, hidden=64, image_size=56, seed=0).model.state_dict()[key]
        )
        torch.testing.assert_close(now[key], saved[key], atol=2e-3, rtol=0)  # the fp16 checkpoint of the best step
    with pytest.raises(ValueError, match="--rank"):
        other = random_model(layers=2, hidden=64, image_size=56, seed=0)
        train(other.model, other.processor, steps=1, rank=2, init=tmp_path, **settings)


@pytest.mark.slow
def test_committed_testbed_matches_its_model_card():
    """The committed testbed re-scores the card's fixed 50-question test subset exactly (greedy, fp32, CPU)."""
    import json

    from testbed.card import SUBSET
    from vidpress.evaluate import evaluate
    from vidpress.methods import get_method
    from vidpress.testbed.saved import TESTBED_DIR, load_testbed, testbed_available

    if not testbed_available():
        pytest.skip("needs the committed testbed weights and the real base weights in ../shared/data/weights")
    record = json.loads((TESTBED_DIR / "testbed.json").read_text())
    loaded = load_testbed()
    samples = make_split("test", 560)[:SUBSET]
    result = evaluate(
        loaded.model,
        loaded.processor,
        samples,
        get_method("none"),
        frames=record["frames"],
        size=record["image_size"],
        progress=False,
        protocol=loaded.protocol,
    )
    assert result.correct == record["test_subset_correct"]
    assert (
        record["test_questions"] >= 500 and record["test_accuracy"] == record["test_correct"] / record["test_questions"]
    )


def test_match_option_exact_then_first_mentioned():
    from vidpress.evaluate import match_option

    options = ("red circle", "blue square", "red", "the background")
    assert match_option(" Blue square.", options) == 1
    assert match_option("red", options) == 2  # exact beats the longer option that contains it
    assert match_option("It was the background, not the red circle", options) == 3  # mentioned first
    assert match_option("a green triangle", options) is None


def test_merge_repeats_joins_neighbouring_scenes_told_the_same():
    """Run F's own description (testbed_training.md) merges into the truth; frame spans join; a scene told again
    later is a new scene; text past the last whole sentence keeps, renumbered; other text is left alone."""
    from vidpress.evaluate import merge_repeats
    from vidpress.testbed.scenes import Scene, describe

    a, b, c = (
        Scene("brown", "circle", "yellow", 4, "static", 5),
        Scene("brown", "circle", "purple", 4, "static", 5),
        Scene("navy", "square", "white", 1, "static", 5),
    )
    said = describe((a, a, b, c, c))  # "Scene 1: 4 yellow circles ... Scene 5: 1 white square on a navy background."
    assert merge_repeats(said) == describe((a, b, c))
    assert merge_repeats(describe((a, b, a))) == describe((a, b, a))
    assert merge_repeats(describe((a, b, c), frames=12)) == describe((a, b, c), frames=12)  # spans 1-4, 5-8, 9-12
    spans = "Scene 1 (frames 1-3): X. Scene 2 (frame 4): X. Scene 3 (frames 5-12): Y."
    assert merge_repeats(spans) == "Scene 1 (frames 1-4): X. Scene 2 (frames 5-12): Y."
    assert merge_repeats("Scene 1: X. Scene 2: X. Scene 3: 2 red") == "Scene 1: X. Scene 2: 2 red"
    assert merge_repeats("Four circles, then a square.") == "Four circles, then a square."
    noted = "Scene 1: X. Scene 2: Y; changed: the background. Scene 3: Y. Scene 4: Y; changed: the background."
    assert merge_repeats(noted) == "Scene 1: X. Scene 2: Y; changed: the background."  # --description-changes


def test_caption_item_describes_the_scenes(tiny):
    import torch

    from testbed.qa import encode
    from vidpress.testbed.scenes import describe

    sample = make_split("train", 1, seed=3)[0]
    (plain,) = encode(tiny.model, tiny.processor, [sample], frames=4, size=56)
    (captioned,) = encode(tiny.model, tiny.processor, [sample], frames=4, size=56, caption=True)
    *questions, item = captioned["questions"]
    assert [q["kind"] for q in questions] == [q["kind"] for q in plain["questions"]] and item["kind"] == "caption"
    assert all(torch.equal(a["ids"], b["ids"]) for a, b in zip(questions, plain["questions"], strict=True))
    text = tiny.processor.tokenizer.decode(item["target"][:-1])
    assert text == describe(sample.scenes) and describe(sample.scenes).startswith("Scene 1: ")


def test_describe_protocol_continues_the_description_like_the_full_model(tiny):
    """The describe protocol's training path (left-padded prefixes ending in each video's description, then
    every question's second turn) gives the full model's greedy answers and teacher-forced losses on the
    two-turn prompt; validation's own descriptions are the full model's greedy description."""
    import torch

    from testbed.qa import answer_loss, described, encode, greedy_answers, own_descriptions
    from vidpress.evaluate import ANSWER_TOKENS, CAPTION, DESCRIPTION_TOKENS, choice_prompt
    from vidpress.pipeline import build_inputs
    from vidpress.testbed.scenes import describe

    model, processor = tiny.model, tiny.processor
    tokenizer, end = processor.tokenizer, processor.tokenizer.eos_token_id
    samples = make_split("train", 2, seed=1)
    data = encode(model, processor, samples, frames=4, size=56, all_kinds=False, describe_first=True)
    assert len({len(v["description"]) for v in data}) == 2  # different lengths: the prefixes are left-padded
    answers, descriptions, seconds = [], [], []
    with torch.inference_mode():
        for sample, video in zip(samples, data):
            inputs = build_inputs(
                processor, sample.frames(56, 4), choice_prompt(sample), [(CAPTION, describe(sample.scenes))]
            )
            prompt = inputs["input_ids"].shape[1]
            out = model.generate(
                **inputs, max_new_tokens=ANSWER_TOKENS, do_sample=False, eos_token_id=end, pad_token_id=end
            )
            answers.append(tokenizer.decode(out[0, prompt:], skip_special_tokens=True))
            target = video["questions"][0]["target"]
            logits = (
                model(
                    input_ids=torch.cat([inputs["input_ids"], target[None]], 1),
                    pixel_values_videos=inputs["pixel_values_videos"],
                )
                .logits[0]
                .float()
            )
            start = len(video["prefix"]) + len(video["request"])  # where the description's tokens begin
            said = inputs["input_ids"][0, start : start + len(video["description"])]
            assert torch.equal(said, video["description"])
            descriptions.append(
                torch.nn.functional.cross_entropy(logits[start - 1 : start - 1 + len(said)], said, reduction="none")
            )
            seconds.append(torch.nn.functional.cross_entropy(logits[prompt - 1 : -1], target, reduction="none"))
            request = build_inputs(processor, sample.frames(56, 4), CAPTION)
            out = model.generate(
                **request, max_new_tokens=DESCRIPTION_TOKENS, do_sample=False, eos_token_id=end, pad_token_id=end
            )
            own = tokenizer.decode(out[0, request["input_ids"].shape[1] :], skip_special_tokens=True)
            assert own_descriptions(model, [video], tokenizer)[1] == [own]
        assert greedy_answers(model, described(data), tokenizer) == answers
        expected = torch.cat(seconds).mean() + torch.cat(descriptions).mean()
        assert abs(answer_loss(model, described(data)).item() - expected.item()) < 1e-4
        weighted = torch.cat(seconds).mean() + 3 * torch.cat(descriptions).mean()  # --description-weight 3
        assert abs(answer_loss(model, described(data), 3.0).item() - weighted.item()) < 1e-4


def test_evaluate_describe_protocol_asks_after_the_models_description(tiny):
    """Two requests per question, both with the method on: the description, then the question after it; the
    prefill FLOPs are both requests' (the second one's prompt holds the generated description)."""
    import torch

    import vidpress
    from vidpress.evaluate import CAPTION, DESCRIPTION_TOKENS, choice_prompt, evaluate, prepare
    from vidpress.methods import get_method
    from vidpress.pipeline import build_inputs

    model, processor = tiny.model, tiny.processor
    end = processor.tokenizer.eos_token_id
    samples = make_split("test", 2)
    result = evaluate(
        model, processor, samples, get_method("none"), frames=4, size=56, progress=False, protocol="describe"
    )
    expected = 0.0
    with vidpress.apply(model, get_method("none")) as run, torch.inference_mode():
        for sample in samples:
            request = build_inputs(processor, sample.frames(56, 4), CAPTION)
            out = model.generate(
                **request, max_new_tokens=DESCRIPTION_TOKENS, do_sample=False, eos_token_id=end, pad_token_id=end
            )
            expected += run.report.accounting.prefill_flops
            said = processor.tokenizer.decode(out[0, request["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            model.generate(
                **build_inputs(processor, sample.frames(56, 4), choice_prompt(sample), [(CAPTION, said)]),
                max_new_tokens=1,
                do_sample=False,
                eos_token_id=end,
                pad_token_id=end,
            )
            expected += run.report.accounting.prefill_flops
    assert result.total == 2 and result.prefill_flops == pytest.approx(expected / 2)
    direct = evaluate(model, processor, samples, get_method("none"), frames=4, size=56, progress=False)
    assert result.prefill_flops > 2 * direct.prefill_flops  # the video is read twice, and the description too
    prepared = prepare(processor, samples, frames=4, size=56, protocol="describe")
    again = evaluate(
        model,
        processor,
        samples,
        get_method("none"),
        inputs=prepared,
        progress=False,
        protocol="describe",
        frames=4,
        size=56,
    )
    assert again.hits == result.hits and again.prefill_flops == result.prefill_flops
    with pytest.raises(ValueError, match="'chain'"):
        evaluate(model, processor, samples, get_method("none"), progress=False, protocol="chain")


def test_training_with_the_describe_protocol_records_it(monkeypatch):
    """--protocol describe: caption steps train the description alone (no questions in the batch), then
    questions after it; the record (and so the loaded testbed) carries the protocol."""
    from testbed import train as training
    from vidpress.models.random import random_model

    seen = []
    real_loss = training.answer_loss
    monkeypatch.setattr(
        training,
        "answer_loss",
        lambda model, videos, weight: (
            seen.append(
                ([q["kind"] for v in videos for q in v["questions"]], all("described" in v for v in videos), weight)
            ),
            real_loss(model, videos, weight),
        )[1],
    )
    loaded = random_model(layers=2, hidden=64, image_size=56, seed=0)
    record = training.train(
        loaded.model,
        loaded.processor,
        steps=3,
        train_videos=4,
        val_videos=2,
        frames=4,
        size=56,
        batch=2,
        rank=4,
        eval_every=3,
        align_steps=0,
        caption_steps=1,
        protocol="describe",
        description_weight=3.0,
        description_changes=True,
        log=None,
    )
    assert seen[0] == ([], True, 3.0) and seen[1][1] and set(seen[1][0]) <= set(TYPES) and len(seen[1][0]) >= 10
    assert record["protocol"] == "describe" and record["description_weight"] == 3.0 and len(record["history"]) == 1
    assert record["description_changes"] and record["merge_repeats"] and not record["description_spans"]
    with pytest.raises(ValueError, match="protocol"):
        training.train(loaded.model, loaded.processor, steps=1, train_videos=2, val_videos=1, protocol="cot", log=None)
    with pytest.raises(ValueError, match="needles is the share.*1.5"):
        training.train(loaded.model, loaded.processor, steps=1, train_videos=2, val_videos=1, needles=1.5, log=None)
    with pytest.raises(ValueError, match="description_weight must be >= 0.*-1"):
        training.train(
            loaded.model,
            loaded.processor,
            steps=1,
            train_videos=2,
            val_videos=1,
            protocol="describe",
            description_weight=-1.0,
            log=None,
        )


def test_training_with_needles_mixes_needle_videos_in_and_validates_on_them(monkeypatch):
    """--needles 0.5: half the training and validation videos carry a needle (the needle_* salts), their
    descriptions name it, the needle kinds train and validate beside the others."""
    from testbed import qa
    from testbed import train as training
    from vidpress.models.random import random_model
    from vidpress.testbed.needle import NEEDLE_TYPES

    encoded, seen = [], []
    real_encode, real_loss = training.encode, training.answer_loss
    monkeypatch.setattr(
        training,
        "encode",
        lambda m, p, samples, *a, **k: encoded.append(samples) or real_encode(m, p, samples, *a, **k),
    )
    monkeypatch.setattr(
        training,
        "answer_loss",
        lambda model, videos, weight: (
            seen.append([q["kind"] for v in videos for q in v["questions"]]) or real_loss(model, videos, weight)
        ),
    )
    loaded = random_model(layers=2, hidden=64, image_size=56, seed=0)
    record = training.train(
        loaded.model,
        loaded.processor,
        steps=2,
        train_videos=4,
        val_videos=2,
        frames=4,
        size=56,
        batch=4,
        rank=4,
        eval_every=2,
        align_steps=0,
        protocol="describe",
        needles=0.5,
        log=None,
    )
    train_set, val_set = encoded
    assert [s.needle is not None for s in train_set] == [False, True, False, True]
    assert [s.video_id.split("-")[0] for s in val_set] == ["validation", "needle_validation"]
    assert set(NEEDLE_TYPES) <= set(seen[0]) and record["needles"] == 0.5
    assert set(NEEDLE_TYPES) <= set(record["history"][-1]["val_accuracy"])
    truth = qa.encode(loaded.model, loaded.processor, train_set[1:2], 4, 56, describe_first=True)[0]["description"]
    assert "briefly a small" in loaded.processor.tokenizer.decode(truth)


def test_description_spans_name_the_sampled_frames_of_each_scene(tiny):
    """``describe(scenes, frames)``: spans hand-computed from frame_indices; an unseen scene is left out; the
    default text is unchanged; encode(spans=True) trains that text (the describe protocol's target), with
    ``changes`` too."""
    from testbed.qa import encode
    from vidpress.testbed.scenes import Sample, Scene, describe

    def scene(frames, color):
        return Scene("gray", "circle", color, 2, "static", frames)

    scenes = tuple(scene(n, c) for n, c in zip((4, 11, 9, 7, 11), ("red", "blue", "green", "red", "blue")))
    # 42 frames; 12 sampled at 0 4 7 11 | 15 19 22 | 26 30 | 34 37 41; scenes start at 0 4 15 24 31
    assert Sample("", scenes, None).frame_indices(12).tolist() == [0, 4, 7, 11, 15, 19, 22, 26, 30, 34, 37, 41]
    spans = describe(scenes, 12)
    assert [part.split(":")[0] for part in spans.split(". ")] == [
        "Scene 1 (frame 1)",
        "Scene 2 (frames 2-4)",
        "Scene 3 (frames 5-7)",
        "Scene 4 (frames 8-9)",
        "Scene 5 (frames 10-12)",
    ]
    assert describe(scenes) == " ".join(
        f"Scene {i}: 2 {c} circles on a gray background."
        for i, c in enumerate(("red", "blue", "green", "red", "blue"), 1)
    )
    unseen = (scene(12, "red"), scene(4, "blue"), scene(12, "green"))  # 2 frames sampled: 0 and 27
    assert describe(unseen, 2) == (
        "Scene 1 (frame 1): 2 red circles on a gray background. "
        "Scene 2 (frame 2): 2 green circles on a gray background."
    )
    sample = make_split("train", 1, seed=3)[0]
    (video,) = encode(
        tiny.model,
        tiny.processor,
        [sample],
        frames=4,
        size=56,
        all_kinds=False,
        describe_first=True,
        spans=True,
        changes=True,
    )
    text = tiny.processor.tokenizer.decode(video["description"], skip_special_tokens=True)
    assert text == describe(sample.scenes, 4, changes=True) and "(frame" in text and "; changed: " in text


def test_description_changes_name_the_one_attribute_that_changed():
    """``describe(scenes, changes=True)``: a scene one attribute away from the scene before names it, with the
    text of the ``changed`` question's answer; two attributes or none changed: no mark; spans keep the mark."""
    from vidpress.testbed.scenes import CHANGES, Scene, answer, describe

    red = Scene("gray", "circle", "red", 2, "static", 5)
    blue = Scene("gray", "circle", "blue", 2, "left-to-right", 5)  # colour (motion does not count)
    squares = Scene("teal", "square", "blue", 2, "static", 5)  # background and shape
    fewer = Scene("teal", "square", "blue", 1, "static", 5)  # count
    told = describe((red, blue, squares, fewer), changes=True)
    assert told == (
        "Scene 1: 2 red circles on a gray background. "
        "Scene 2: 2 blue circles on a gray background; changed: the object's colour. "
        "Scene 3: 2 blue squares on a teal background. "
        "Scene 4: 1 blue square on a teal background; changed: the number of objects."
    )
    assert [answer("changed", (red, blue, squares, fewer), {"scene": k}) for k in range(3)] == [
        CHANGES[1],
        None,
        CHANGES[3],
    ]
    assert describe((red, red), 12, changes=True) == (
        "Scene 1 (frames 1-6): 2 red circles on a gray background. "
        "Scene 2 (frames 7-12): 2 red circles on a gray background."
    )
    assert describe((red, blue), changes=False) == describe((red, blue))
