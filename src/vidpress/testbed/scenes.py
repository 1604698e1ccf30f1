"""Procedural video QA whose answers need the video's time structure.

A video is a list of :class:`Scene` (events): each has its own background and objects (shape, colour,
count, motion) and its own length in frames. Questions are multiple choice with 4 options, NExT-QA /
VideoMME style, and every answer is a pure function of the scene list (:func:`answer`), so it can be
re-derived and checked. Everything is seeded: the same seed gives the same scenes, frames and questions.

Question types: ``scene_count`` (how many scenes), ``color_in_scene`` (the object's colour in scene k),
``first`` / ``last`` (which object appeared first / last), ``never`` (which object never appeared),
``changed`` (what changed between scene k and k + 1), ``count_in_scene`` (how many objects in scene k).

A :class:`Needle` (a small object on a few frames) is drawn by :func:`render` and located by
:meth:`Sample.needle_masks`; the needle splits and their questions are generated in :mod:`.needle`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "white": (245, 245, 245),
    "purple": (150, 60, 190),
}
BACKGROUNDS = {
    "black": (15, 15, 15),
    "gray": (110, 110, 110),
    "teal": (20, 110, 110),
    "brown": (110, 70, 30),
    "navy": (20, 25, 80),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("static", "left-to-right", "top-to-bottom")
CHANGES = ("the background", "the object's colour", "the object's shape", "the number of objects")
ORDINALS = ("first", "second", "third", "fourth", "fifth")
TYPES = ("scene_count", "color_in_scene", "first", "last", "never", "changed", "count_in_scene")
SPLITS = ("train", "validation", "test")  #: the splits of :func:`make_split`
#: Each split's seed offset, so no two splits share a video (the needle splits' are used by :mod:`.needle`).
SPLIT_SALT = {
    "train": 0,
    "validation": 1_000_003,
    "test": 2_000_029,
    "needle": 3_000_017,
    "needle_train": 4_000_037,
    "needle_validation": 5_000_011,
}
#: The needle's radius as a fraction of the frame side (an object of the scenes has 1/10): 16 px across at 112 px,
#: a few of DINOv2's 14 px patches, part of one or two of the 16 pooled visual tokens of its frame.
NEEDLE_RADIUS = 1 / 14


@dataclass(frozen=True)
class Scene:
    """One event: ``count`` copies of one object on one background for ``frames`` frames."""

    background: str
    shape: str
    color: str
    count: int
    motion: str
    frames: int

    @property
    def object(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Question:
    """A multiple-choice question about a scene list; ``params`` say which scene(s) it asks about."""

    kind: str
    text: str
    options: tuple[str, ...]
    answer: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Needle:
    """A small object drawn on a few frames of the video only.

    Attributes
    ----------
    shape, color : str
        Its looks (a shape of :data:`SHAPES`, a colour of :data:`COLORS`).
    frames : tuple[int, ...]
        The video frames (0-based, over the whole video) it is drawn on: one or two of the frames the evaluation
        samples, all in one scene.
    x, y : float
        Its centre as fractions of the frame side, in a band above or below the scene's objects.
    """

    shape: str
    color: str
    frames: tuple[int, ...]
    x: float
    y: float

    @property
    def object(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Sample:
    video_id: str
    scenes: tuple[Scene, ...]
    question: Question
    needle: Needle | None = None

    def frames(self, size: int = 112, count: int | None = None) -> np.ndarray:
        """Rendered video (F, size, size, 3) uint8; with ``count``, that many frames sampled uniformly."""
        video = render(self.scenes, size, self.needle)
        return video if count is None else video[self.frame_indices(count)]

    def frame_indices(self, count: int) -> np.ndarray:
        """Indices of ``count`` frames sampled uniformly from the whole video (what :meth:`frames` keeps)."""
        return frame_indices(self.scenes, count)

    def needle_masks(self, count: int, size: int = 112) -> np.ndarray:
        """Where the needle is on the ``count`` uniformly sampled frames of :meth:`frames`: (count, size, size) float32,
        1 on its pixels, zeros without a needle (the evidence a needle question needs)."""
        masks = np.zeros((count, size, size), dtype=np.float32)
        if self.needle is None:
            return masks
        for i, index in enumerate(self.frame_indices(count)):
            if int(index) in self.needle.frames:
                image = Image.new("L", (size, size), 0)
                x, y, radius = self.needle.x * size, self.needle.y * size, max(2, size * NEEDLE_RADIUS)
                _draw(ImageDraw.Draw(image), self.needle.shape, "mask", x, y, radius)
                masks[i] = np.asarray(image, dtype=np.float32) / 255
        return masks

    def scene_at(self, index: int) -> tuple[Scene, int]:
        """The scene showing frame ``index`` of the video and the frame's index within that scene."""
        for scene in self.scenes:
            if index < scene.frames:
                return scene, index
            index -= scene.frames
        raise IndexError(f"frame {index} is past the video's end")


def frame_indices(scenes: tuple[Scene, ...], count: int) -> np.ndarray:
    """Indices (count,) of ``count`` frames sampled uniformly from the video of ``scenes``, in order."""
    return np.linspace(0, sum(s.frames for s in scenes) - 1, count).round().astype(int)


def describe(
    scenes: tuple[Scene, ...], frames: int | None = None, changes: bool = False, needle: Needle | None = None
) -> str:
    """The scene list as text ("Scene 1: 2 red circles on a gray background. ..."): the text control's stand-in
    for the video and the testbed's caption target. With ``frames`` (the sampled frame count), each scene also
    says which sampled frames show it, 1-based ("Scene 2 (frames 4-6): ..."), so a description has to place
    every boundary; a scene no sampled frame shows is left out, as the model cannot see it. With ``changes``, a
    scene whose looks differ from the scene before in exactly one attribute names it ("...; changed: the
    object's colour."), the answer a ``changed`` question about the pair takes. With ``needle``, the scene it
    shows in says so ("...; briefly a small yellow triangle."), what every needle question reads off."""
    starts = np.cumsum([0] + [s.frames for s in scenes])
    needle_in = None if needle is None else int(np.searchsorted(starts, needle.frames[0], side="right") - 1)

    def looks(i: int) -> str:
        changed = answer("changed", scenes, {"scene": i - 1}) if changes and i else None
        seen = f"; briefly a small {needle.object}" if needle is not None and i == needle_in else ""
        return _looks(scenes[i]) + (f"; changed: {changed}" if changed else "") + seen

    if frames is None:
        return " ".join(f"Scene {i + 1}: {looks(i)}." for i in range(len(scenes)))
    shown = np.searchsorted(starts, frame_indices(scenes, frames), side="right") - 1  # scene of each sampled frame
    parts: list[str] = []
    for i in dict.fromkeys(shown.tolist()):  # scenes in order of appearance
        first, last = np.flatnonzero(shown == i)[[0, -1]] + 1
        span = f"frame {first}" if first == last else f"frames {first}-{last}"
        parts.append(f"Scene {len(parts) + 1} ({span}): {looks(i)}.")
    return " ".join(parts)


def _looks(s: Scene) -> str:
    return f"{s.count} {s.color} {s.shape}{'s' if s.count > 1 else ''} on a {s.background} background"


def random_scene(rng: np.random.Generator) -> Scene:
    return Scene(
        str(rng.choice(list(BACKGROUNDS))),
        str(rng.choice(SHAPES)),
        str(rng.choice(list(COLORS))),
        int(rng.integers(1, 5)),
        str(rng.choice(MOTIONS)),
        int(rng.integers(4, 13)),
    )


def change(scene: Scene, what: str, rng: np.random.Generator) -> Scene:
    """``scene`` with exactly one attribute (one of :data:`CHANGES`) changed, new length."""
    frames = int(rng.integers(4, 13))
    if what == CHANGES[0]:
        return replace(
            scene, background=str(rng.choice([b for b in BACKGROUNDS if b != scene.background])), frames=frames
        )
    if what == CHANGES[1]:
        return replace(scene, color=str(rng.choice([c for c in COLORS if c != scene.color])), frames=frames)
    if what == CHANGES[2]:
        return replace(scene, shape=str(rng.choice([s for s in SHAPES if s != scene.shape])), frames=frames)
    return replace(scene, count=int(rng.choice([n for n in (1, 2, 3, 4) if n != scene.count])), frames=frames)


def random_video(rng: np.random.Generator) -> tuple[Scene, ...]:
    """3 to 5 scenes; one consecutive pair differs in exactly one attribute, the others are independent."""
    scenes = [random_scene(rng) for _ in range(int(rng.integers(3, 6)))]
    k = int(rng.integers(0, len(scenes) - 1))
    scenes[k + 1] = change(scenes[k], str(rng.choice(CHANGES)), rng)
    return tuple(scenes)


def answer(kind: str, scenes: tuple[Scene, ...], params: dict[str, Any]) -> str | None:
    """The correct option text of a question of ``kind`` about ``scenes`` (None when the question is ill-posed)."""
    objects = [s.object for s in scenes]
    if kind == "scene_count":
        return str(len(scenes))
    if kind == "color_in_scene":
        return scenes[params["scene"]].color
    if kind == "count_in_scene":
        return str(scenes[params["scene"]].count)
    if kind in ("first", "last"):
        shown = [o for o in params["choices"] if o in objects]
        order = (
            sorted(shown, key=objects.index)
            if kind == "first"
            else sorted(shown, key=lambda o: max(i for i, x in enumerate(objects) if x == o))
        )
        return order[0] if kind == "first" else order[-1]
    if kind == "never":
        return next(o for o in params["choices"] if o not in objects)
    if kind == "changed":
        a, b = scenes[params["scene"]], scenes[params["scene"] + 1]
        diffs = [a.background != b.background, a.color != b.color, a.shape != b.shape, a.count != b.count]
        return CHANGES[diffs.index(True)] if sum(diffs) == 1 else None
    raise ValueError(f"unknown question kind {kind!r}; choose one of {TYPES}")


def ask(kind: str, scenes: tuple[Scene, ...], rng: np.random.Generator) -> Question | None:
    """A question of ``kind`` about ``scenes`` with 4 shuffled options, or None when the scenes cannot pose it
    (e.g. ``never`` needs 3 distinct objects shown)."""
    objects = list(dict.fromkeys(s.object for s in scenes))
    absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in objects]
    params: dict[str, Any] = {}
    k = int(rng.integers(0, len(scenes)))
    if kind == "scene_count":
        text, pool = "How many scenes does the video have?", [str(n) for n in range(2, 7)]
    elif kind == "color_in_scene":
        params["scene"] = k
        text, pool = f"What colour was the {scenes[k].shape} in the {ORDINALS[k]} scene?", list(COLORS)
    elif kind == "count_in_scene":
        params["scene"] = k
        text, pool = f"How many {scenes[k].object}s were in the {ORDINALS[k]} scene?", ["1", "2", "3", "4"]
    elif kind in ("first", "last"):
        if len(objects) < 2:
            return None
        anchor = scenes[0].object if kind == "first" else scenes[-1].object
        others = [o for o in objects if o != anchor] + list(rng.permutation(absent))
        params["choices"] = [anchor] + others[:3]
        text, pool = f"Which of these objects appeared {kind}?", params["choices"]
    elif kind == "never":
        if len(objects) < 3:
            return None
        params["choices"] = list(rng.permutation(objects))[:3] + [str(rng.choice(absent))]
        text, pool = "Which of these objects never appeared?", params["choices"]
    elif kind == "changed":
        pairs = [i for i in range(len(scenes) - 1) if answer("changed", scenes, {"scene": i}) is not None]
        params["scene"] = int(rng.choice(pairs))
        text = f"What changed between the {ORDINALS[params['scene']]} and the {ORDINALS[params['scene'] + 1]} scene?"
        pool = list(CHANGES)
    else:
        raise ValueError(f"unknown question kind {kind!r}; choose one of {TYPES}")
    correct = answer(kind, scenes, params)
    if correct is None:  # the callers above only ask what the scenes can answer
        raise ValueError(f"a {kind!r} question about these scenes has no single answer")
    wrong = [o for o in pool if o != correct]
    options = [correct] + [str(o) for o in rng.permutation(wrong)[:3]]
    options = [options[i] for i in rng.permutation(4)]
    return Question(kind, text, tuple(options), options.index(correct), params)


def object_centres(scene: Scene, t: int, size: int) -> list[tuple[float, float]]:
    """Centres (x, y) in px of the scene's objects in its frame ``t``; each object spans ``size // 10`` px radius."""
    shift = (t / max(1, scene.frames - 1) - 0.5) * size * 0.3
    return [
        (
            size * (i + 1) / (scene.count + 1) + (shift if scene.motion == "left-to-right" else 0),
            size / 2 + (shift if scene.motion == "top-to-bottom" else 0),
        )
        for i in range(scene.count)
    ]


def _draw(draw: ImageDraw.ImageDraw, shape: str, color: str, x: float, y: float, r: float) -> None:
    """One object; colour ``"mask"`` draws it in white (255) on a one-channel image."""
    box, fill = (x - r, y - r, x + r, y + r), 255 if color == "mask" else COLORS[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)


def render(scenes: tuple[Scene, ...], size: int = 112, needle: Needle | None = None) -> np.ndarray:
    """Frames (F, size, size, 3) uint8: each scene's background and objects, moving per its motion, and the
    ``needle`` on its frames."""
    out, r, index = [], size // 10, 0
    for scene in scenes:
        for t in range(scene.frames):
            image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
            draw = ImageDraw.Draw(image)
            for x, y in object_centres(scene, t, size):
                _draw(draw, scene.shape, scene.color, x, y, r)
            if needle is not None and index in needle.frames:
                _draw(draw, needle.shape, needle.color, needle.x * size, needle.y * size, max(2, size * NEEDLE_RADIUS))
            out.append(np.asarray(image))
            index += 1
    return np.stack(out)


def make_split(split: str, videos: int, seed: int = 0) -> list[Sample]:
    """``videos`` samples (one question each, question kinds in rotation) of ``split``: train, validation or
    test, seeded so splits never share a video seed. Same arguments, same samples.

    Raises
    ------
    ValueError
        ``split`` is not one of :data:`SPLITS` (the needle splits come from :func:`.needle.make_needle_split`).
    """
    if split not in SPLITS:
        hint = "; needle splits come from vidpress.testbed.needle.make_needle_split" if "needle" in split else ""
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}{hint}")
    rng = np.random.default_rng(seed + SPLIT_SALT[split])
    samples = []
    for i in range(videos):
        scenes = random_video(rng)
        question = None
        for kind in TYPES[i % len(TYPES) :] + TYPES[: i % len(TYPES)]:  # rotate; skip kinds the scenes cannot pose
            question = ask(kind, scenes, rng)
            if question is not None:
                break
        if question is None:  # every kind is tried; "which was shown first" always fits
            raise ValueError(f"no question kind fits video {i} of {split} (seed {seed})")
        samples.append(Sample(f"{split}-{seed}-{i:05d}", scenes, question))
    return samples
