"""The needle split: a small object on one or two sampled frames, and questions only it answers. Answers are
re-derived here from the scene list and the needle's frames, independently of the generator."""

import numpy as np
import pytest
from typer.testing import CliRunner

from vidpress.cli import app
from vidpress.testbed.scenes import (
    COLORS,
    NEEDLE_TYPES,
    ORDINALS,
    SHAPES,
    make_needle_split,
    make_split,
    render,
)

SPLIT = make_needle_split(300)


def test_the_split_is_held_out_seeded_and_balanced():
    assert len(SPLIT) == 300 and [s.video_id for s in SPLIT] == [s.video_id for s in make_needle_split(300)]
    assert {s.question.kind for s in SPLIT} == set(NEEDLE_TYPES)
    assert sum(s.question.kind == "needle_scene" for s in SPLIT) == 100
    test_videos = {s.scenes for s in make_split("test", 560)}
    assert not test_videos & {s.scenes for s in SPLIT}  # no video shared with the test split
    assert make_split("needle", 5) == make_needle_split(5)


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
        assert 0.003 < area < 0.02  # about a hundredth of the frame (a scene object covers about 3 %)
        assert sample.needle.color in COLORS and sample.needle.shape in SHAPES


def test_cli_eval_on_the_needle_split_and_its_bounds():
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--split", "needle", "-n", "2", "--model", "random"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    result = runner.invoke(app, ["eval", "--split", "needle", "-n", "301", "--model", "random"])
    assert result.exit_code != 0 and "at most" in result.output
    result = runner.invoke(app, ["eval", "--split", "needles", "--model", "random"])
    assert result.exit_code != 0 and "--split must be one of" in result.output
