"""Real video-QA benchmark annotations: NExT-QA (multiple choice) and ActivityNet-QA (open ended).

The annotation files ship with vidpress's shared data (``shared/data/annotations``); the videos do not (NExT-QA's
come from VidOR on Google Drive, ActivityNet's from YouTube). Loaders work without videos; asking an item for
its video without a video folder raises :class:`~vidpress.errors.MissingVideosError` naming the folder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingVideosError

SOURCES = {
    "nextqa": "NExT-QA's videos (VidOR / YFCC100M, github.com/doc-doc/NExT-QA): a folder of NNNN/<video>.mp4",
    "activitynet_qa": "ActivityNet's videos (activity-net.org, YouTube ids): a folder of v_<id>.mp4 files",
}


@dataclass(frozen=True)
class VideoQA:
    """One benchmark question.

    Attributes
    ----------
    options : tuple[str, ...]
        The choices of a multiple-choice question (empty for open-ended ones).
    answer : int or str
        The index into ``options`` (multiple choice) or the answer text (open ended).
    video_path : Path or None
        The resolved video file, when a video folder was given.
    """

    benchmark: str
    qid: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: int | str
    type: str
    video_path: Path | None = None

    def video_file(self) -> Path:
        """The video file; raises :class:`MissingVideosError` when no video folder was given or it lacks it."""
        if self.video_path is None or not self.video_path.exists():
            where = "no video folder was given" if self.video_path is None else f"{self.video_path} does not exist"
            raise MissingVideosError(
                f"{self.benchmark} video {self.video!r}: {where}; pass video_dir= the folder of "
                f"{SOURCES[self.benchmark]}"
            )
        return self.video_path


def annotations_dir(name: str, annotations: str | Path | None = None) -> Path:
    """``annotations``, else ``$VIDPRESS_ANNOTATIONS/<name>`` (e.g. ``../shared/data/annotations``); nothing is
    searched for.

    Raises
    ------
    FileNotFoundError
        Neither names an existing folder.
    """
    import os

    root = os.environ.get("VIDPRESS_ANNOTATIONS")
    candidate = Path(annotations) if annotations else Path(root) / name if root else None
    if candidate is not None and candidate.is_dir():
        return candidate
    raise FileNotFoundError(
        f"no {name} annotations{f' at {candidate}' if candidate else ''}; pass annotations=<folder> or set "
        "VIDPRESS_ANNOTATIONS to the folder holding it (e.g. ../shared/data/annotations)"
    )


def _video_dir(video_dir: str | Path | None, benchmark: str) -> Path | None:
    if video_dir is None:
        return None
    folder = Path(video_dir)
    if not folder.is_dir():
        raise MissingVideosError(f"video folder {folder} does not exist; it should hold {SOURCES[benchmark]}")
    return folder


def load_nextqa(
    split: str = "val", annotations: str | Path | None = None, video_dir: str | Path | None = None
) -> list[VideoQA]:
    """NExT-QA multiple-choice questions (5 options; answer = option index) of ``split`` (val or test).

    ``video_dir`` holds VidOR's ``NNNN/<video>.mp4`` layout (``map_vid_vidorID.json`` maps ids to it).

    Raises
    ------
    FileNotFoundError
        No annotation folder or split file.
    MissingVideosError
        ``video_dir`` given but not a folder.
    """
    folder = annotations_dir("nextqa", annotations)
    videos = _video_dir(video_dir, "nextqa")
    mapping = json.loads((folder / "map_vid_vidorID.json").read_text()) if videos else {}
    items = []
    with open(folder / f"{split}.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            path = videos / f"{mapping.get(row['video'], row['video'])}.mp4" if videos else None
            items.append(
                VideoQA(
                    "nextqa",
                    f"{row['video']}_{row['qid']}",
                    row["video"],
                    row["question"],
                    tuple(row[f"a{i}"] for i in range(5)),
                    int(row["answer"]),
                    row["type"],
                    path,
                )
            )
    return items


def load_activitynet_qa(
    split: str = "val", annotations: str | Path | None = None, video_dir: str | Path | None = None
) -> list[VideoQA]:
    """ActivityNet-QA open-ended questions of ``split`` (val or test); answer = the reference text.

    ``video_dir`` holds ``v_<youtube id>.<ext>`` files (any extension).

    Raises
    ------
    FileNotFoundError
        No annotation folder or split file.
    MissingVideosError
        ``video_dir`` given but not a folder.
    """
    folder = annotations_dir("activitynet_qa", annotations)
    videos = _video_dir(video_dir, "activitynet_qa")
    files = {p.stem: p for p in videos.iterdir()} if videos else {}
    answers = {a["question_id"]: a for a in json.loads((folder / f"{split}_a.json").read_text())}
    items = []
    for q in json.loads((folder / f"{split}_q.json").read_text()):
        a = answers[q["question_id"]]
        path = files.get(f"v_{q['video_name']}", videos / f"v_{q['video_name']}.mp4") if videos else None
        items.append(
            VideoQA(
                "activitynet_qa",
                q["question_id"],
                q["video_name"],
                q["question"],
                (),
                a["answer"],
                str(a["type"]),
                path,
            )
        )
    return items
