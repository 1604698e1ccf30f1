"""Needle questions, the ``needle`` split (:func:`make_needle_split`) and testbed training's two.

A small object (:class:`~.scenes.Needle`, about a tenth of the frame's side) shows in one or two of the frames the
evaluation samples, in one scene, away from the scene's objects; only it answers ``needle_object`` (which small
object appeared briefly), ``needle_color`` (its colour) and ``needle_scene`` (in which scene it appeared). The rest
of the video is as redundant as ever, so a method that keeps tokens evenly or by what dominates the frame loses it.
"""

from __future__ import annotations

import numpy as np

from .scenes import COLORS, ORDINALS, SHAPES, SPLIT_SALT, Needle, Question, Sample, Scene, frame_indices, random_video

NEEDLE_TYPES = ("needle_object", "needle_color", "needle_scene")
NEEDLE_SPLITS = ("needle", "needle_train", "needle_validation")  #: the held-out needle split and training's two


def place_needle(scenes: tuple[Scene, ...], frames: int, rng: np.random.Generator) -> tuple[Needle, int]:
    """A needle on one or two consecutive frames, among the ``frames`` sampled uniformly, of one scene, and that
    scene's index. Its looks differ from every object of the video; it sits in a band above or below the objects
    (their centres stay within the middle 40 % of the height). Sampled frames that share a video frame are
    never used, so each shown frame is one frame of the sampled video."""
    sampled = frame_indices(scenes, frames)
    starts = np.cumsum([0] + [s.frames for s in scenes])
    scene_of = np.searchsorted(starts, sampled, side="right") - 1

    def runs_of(span: int) -> list[int]:
        return [
            i
            for i in range(frames - span + 1)
            if len(set(scene_of[i : i + span].tolist())) == 1 and len(set(sampled[i : i + span].tolist())) == span
        ]

    span = int(rng.integers(1, 3))
    runs = runs_of(span)
    if not runs:  # few sampled frames: no scene shows two in a row
        span, runs = 1, runs_of(1)
    first = int(rng.choice(runs))
    shown = tuple(int(f) for f in sampled[first : first + span])
    objects = {s.object for s in scenes}
    looks = [(sh, c) for c in COLORS for sh in SHAPES if f"{c} {sh}" not in objects]
    shape, color = looks[int(rng.integers(len(looks)))]
    y = float(rng.choice([rng.uniform(0.08, 0.18), rng.uniform(0.82, 0.92)]))
    return Needle(shape, color, shown, float(rng.uniform(0.1, 0.9)), y), int(scene_of[first])


def needle_answer(kind: str, scenes: tuple[Scene, ...], needle: Needle) -> str:
    """The correct option text of a needle question, from the scene list and the needle alone."""
    if kind == "needle_object":
        return needle.object
    if kind == "needle_color":
        return needle.color
    if kind == "needle_scene":
        starts = np.cumsum([0] + [s.frames for s in scenes])
        return ORDINALS[int(np.searchsorted(starts, needle.frames[0], side="right") - 1)]
    raise ValueError(f"unknown needle question kind {kind!r}; choose one of {NEEDLE_TYPES}")


def ask_needle(kind: str, scenes: tuple[Scene, ...], needle: Needle, rng: np.random.Generator) -> Question:
    """A needle question of ``kind`` with 4 shuffled options (distractors: other small objects never shown,
    other colours, other scenes)."""
    correct = needle_answer(kind, scenes, needle)
    if kind == "needle_object":
        text = "Which small object appeared briefly in the video?"
        shown = {s.object for s in scenes} | {needle.object}
        pool = [f"{c} {sh}" for c in COLORS for sh in SHAPES if f"{c} {sh}" not in shown]
    elif kind == "needle_color":
        text = f"What colour was the small {needle.shape} that appeared briefly?"
        pool = [c for c in COLORS if c != needle.color]
    else:
        text = f"In which scene did the small {needle.object} appear?"
        pool = [o for o in ORDINALS[: max(4, len(scenes))] if o != correct]
    options = [correct] + [str(o) for o in rng.permutation(pool)[:3]]
    options = [options[i] for i in rng.permutation(4)]
    return Question(kind, text, tuple(options), options.index(correct), {"needle": True})


def make_needle_split(videos: int = 300, frames: int = 12, seed: int = 0, split: str = "needle") -> list[Sample]:
    """The needle split: ``videos`` samples of the test split's kind of video, each with a needle on one or two of
    its ``frames`` uniformly sampled frames and one needle question (kinds in rotation). Held out: its own seed
    salt; ``split`` ``"needle_train"`` / ``"needle_validation"`` draw testbed training's needle videos from salts
    of their own. Same arguments, same samples.

    Raises
    ------
    ValueError
        ``split`` is not one of :data:`NEEDLE_SPLITS`.
    """
    if split not in NEEDLE_SPLITS:
        raise ValueError(f"needle split must be one of {NEEDLE_SPLITS}, got {split!r}")
    rng = np.random.default_rng(seed + SPLIT_SALT[split])
    samples = []
    for i in range(videos):
        scenes = random_video(rng)
        needle, _ = place_needle(scenes, frames, rng)
        question = ask_needle(NEEDLE_TYPES[i % len(NEEDLE_TYPES)], scenes, needle, rng)
        samples.append(Sample(f"{split}-{seed}-{i:05d}", scenes, question, needle))
    return samples
