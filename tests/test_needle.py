"""The needle split: a small object on one or two sampled frames, and questions only it answers. Answers are
re-derived here from the scene list and the needle's frames, independently of the generator."""

import numpy as np
import pytest
from typer.testing import CliRunner

from vidpress.cli import app
from vidpress.testbed.needle import NEEDLE_TYPES, make_needle_split, needle_answer
from vidpress.testbed.scenes import COLORS, ORDINALS, SHAPES, make_split, render

SPLIT = make_needle_split(300)


def test_the_split_is_held_out_seeded_and_balanced():
    assert len(SPLIT) == 300 and [s.video_id for s in SPLIT] == [s.video_id for s in make_needle_split(300)]
    assert {s.question.kind for s in SPLIT} == set(NEEDLE_TYPES)
    assert sum(s.question.kind == "needle_scene" for s in SPLIT) == 100
    test_videos = {s.scenes for s in make_split("test", 560)}
    assert not test_videos & {s.scenes for s in SPLIT}  # no video shared with the test split
    with pytest.raises(ValueError, match="needle splits come from vidpress.testbed.needle.make_needle_split"):
        make_split("needle", 5)  # the plain generator would draw the needle split's videos without needles


@pytest.mark.parametrize("sample", SPLIT[:60], ids=lambda s: s.video_id)
def test_every_needle_answer_follows_from_the_scene_list(sample):
    needle, question = sample.needle, sample.question
    sampled = sample.frame_indices(12).tolist()
    assert 1 <= len(needle.frames) <= 2 and all(f in sampled for f in needle.frames)
    bounds = np.cumsum([s.frames for s in sample.scenes])  # scene k holds frames [bounds[k-1], bounds[k])
    scene = [int(np.sum(bounds <= f)) for f in needle.frames]
    assert len(set(scene)) == 1  # one scene
    assert needle.object not in {s.object for s in sample.scenes}  # looks unlike anything else in the video
    expected = {
        "needle_object": f"{needle.color} {needle.shape}",
        "needle_color": needle.color,
        "needle_scene": ORDINALS[scene[0]],
    }[question.kind]
    assert question.options[question.answer] == expected
    assert len(set(question.options)) == 4 and question.options.count(expected) == 1
    if question.kind == "needle_object":  # no distractor is an object the video shows
        shown = {s.object for s in sample.scenes}
        assert not shown & (set(question.options) - {expected})


def test_the_needle_is_drawn_on_its_frames_only_and_is_small():
    for sample in SPLIT[:20]:
        with_needle, without = render(sample.scenes, 112, sample.needle), render(sample.scenes, 112)
        changed = np.flatnonzero((with_needle != without).any(axis=(1, 2, 3))).tolist()
        assert changed == list(sample.needle.frames)
        area = (with_needle[changed[0]] != without[changed[0]]).any(axis=-1).mean()
        assert 0.005 < area < 0.025  # 1-2 % of the frame, a few 14 px patches (a scene object covers about 3-4 %)
        assert sample.needle.color in COLORS and sample.needle.shape in SHAPES


def test_needle_masks_are_the_pixels_the_needle_changes():
    for sample in SPLIT[:20]:
        frames = sample.frame_indices(12)
        masks = sample.needle_masks(12)
        with_needle, without = render(sample.scenes, 112, sample.needle), render(sample.scenes, 112)
        for i, index in enumerate(frames):
            changed = (with_needle[index] != without[index]).any(axis=-1)
            # where the needle's colour equals the background nothing changes, so the mask may hold more
            assert (masks[i] >= changed).all() and masks[i].sum() <= changed.sum() * 1.2 + 1
        assert {int(frames[i]) for i in np.flatnonzero(masks.any(axis=(1, 2)))} == set(sample.needle.frames)


def test_cli_eval_on_the_needle_split_and_its_bounds():
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--split", "needle", "-n", "2", "--model", "random"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "evidence survival" in result.output
    result = runner.invoke(app, ["eval", "--split", "needle", "-n", "301", "--model", "random"])
    assert result.exit_code != 0 and "at most" in result.output
    result = runner.invoke(app, ["eval", "--split", "needles", "--model", "random"])
    assert result.exit_code != 0 and "--split must be one of" in result.output


def test_training_draws_needles_from_salts_of_its_own():
    """Testbed training's needle videos (``needle_train`` / ``needle_validation``) share no video with the held-out
    needle split, each other or the test split."""
    held = {s.scenes for s in SPLIT}
    train, validation = make_needle_split(200, split="needle_train"), make_needle_split(60, split="needle_validation")
    assert not held & {s.scenes for s in train} and not held & {s.scenes for s in validation}
    assert not {s.scenes for s in train} & {s.scenes for s in validation}
    assert train[0].video_id.startswith("needle_train-") and make_needle_split(3, split="needle_train") == train[:3]
    with pytest.raises(ValueError, match="needle split must be one of"):
        make_needle_split(3, split="test")


def test_a_needle_video_is_described_with_its_needle_in_its_scene():
    from vidpress.evaluate import merge_repeats
    from vidpress.testbed.scenes import describe

    for sample in SPLIT[:30]:
        needle, scenes = sample.needle, sample.scenes
        bounds = np.cumsum([s.frames for s in scenes])
        scene = int(np.sum(bounds <= needle.frames[0]))
        told = describe(scenes, needle=needle)
        sentences = told.split("Scene ")[1:]
        assert [f"briefly a small {needle.object}" in t for t in sentences] == [i == scene for i in range(len(scenes))]
        assert describe(scenes) == told.replace(f"; briefly a small {needle.object}", "")
    # a scene told twice with the needle on the repeat keeps the needle once it is merged
    said = "Scene 1 (frames 1-3): 2 red circles on a gray background. Scene 2 (frames 4-5): 2 red circles on a gray "
    said += "background; briefly a small blue square. Scene 3 (frames 6-12): 1 white square on a navy background."
    assert merge_repeats(said) == (
        "Scene 1 (frames 1-5): 2 red circles on a gray background; briefly a small blue square. "
        "Scene 2 (frames 6-12): 1 white square on a navy background."
    )


def test_a_needle_video_is_asked_every_needle_kind_and_no_object_kind():
    from testbed.qa import NEEDLE_VIDEO_KINDS, video_questions

    for sample in SPLIT[:9]:
        asked = video_questions(sample)
        kinds = [s.question.kind for s in asked]
        assert sorted(kinds) == sorted([*NEEDLE_TYPES, *NEEDLE_VIDEO_KINDS])  # no first/last/never: needle distractors
        for s in asked:
            if s.question.kind in NEEDLE_TYPES:
                assert s.question.options[s.question.answer] == needle_answer(s.question.kind, s.scenes, s.needle)


def test_merging_keeps_a_change_with_the_first_scene_and_drops_one_told_on_a_repeat():
    """A scene told twice with a change note on the repeat: the repeat is the model's error, so its note goes; the
    committed testbed's answers depend on it (its card's subset is re-scored exactly)."""
    from vidpress.evaluate import merge_repeats

    said = "Scene 1 (frames 1-3): 2 red circles on a gray background. Scene 2 (frames 4-5): 2 red circles on a gray "
    said += "background; changed: the background. Scene 3 (frames 6-12): 1 white square on a navy background."
    assert merge_repeats(said) == (
        "Scene 1 (frames 1-5): 2 red circles on a gray background. "
        "Scene 2 (frames 6-12): 1 white square on a navy background."
    )
