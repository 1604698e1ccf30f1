"""Real benchmark annotation loaders (NExT-QA, ActivityNet-QA); the videos are not available offline."""

import json

import pytest
from conftest import SHARED

from vidpress.datasets import load_activitynet_qa, load_nextqa
from vidpress.errors import MissingVideosError

NEXTQA, ANETQA = SHARED / "annotations" / "nextqa", SHARED / "annotations" / "activitynet_qa"


@pytest.fixture(autouse=True)
def _needs_annotations():
    if not NEXTQA.exists():
        pytest.skip("needs ../shared/data/annotations")


def test_nextqa_multiple_choice_rows():
    items = load_nextqa("val", NEXTQA)
    assert len(items) == 4996
    first = items[0]  # val.csv row 1: "how do the two man play the instrument", answer 0
    assert (first.video, first.question, first.answer, first.type) == (
        "4010069381",
        "how do the two man play the instrument",
        0,
        "CH",
    )
    assert first.options[0] == "roll the handle" and all(len(i.options) == 5 and 0 <= i.answer < 5 for i in items)
    with pytest.raises(MissingVideosError, match="video_dir"):
        first.video_file()


def test_nextqa_resolves_videos_through_the_vidor_map(tmp_path):
    vidor = json.loads((NEXTQA / "map_vid_vidorID.json").read_text())["4010069381"]
    (tmp_path / vidor).parent.mkdir(parents=True)
    (tmp_path / f"{vidor}.mp4").write_bytes(b"")
    items = load_nextqa("val", NEXTQA, video_dir=tmp_path)
    assert items[0].video_file() == tmp_path / f"{vidor}.mp4"
    with pytest.raises(MissingVideosError, match="does not exist"):
        items[1].video_file()
    with pytest.raises(MissingVideosError, match=str(tmp_path / "nowhere")):
        load_nextqa("val", NEXTQA, video_dir=tmp_path / "nowhere")


def test_activitynet_qa_open_ended_rows(tmp_path):
    items = load_activitynet_qa("val", ANETQA)
    assert len(items) == len(json.loads((ANETQA / "val_q.json").read_text()))
    first = items[0]
    assert (first.video, first.answer, first.options) == ("TIEzvhv6xaI", "yes", ())
    (tmp_path / "v_TIEzvhv6xaI.mkv").write_bytes(b"")  # any extension
    assert load_activitynet_qa("val", ANETQA, video_dir=tmp_path)[0].video_file().name == "v_TIEzvhv6xaI.mkv"


def test_annotations_are_named_never_searched_for(monkeypatch, tmp_path):
    from vidpress.datasets import annotations_dir

    monkeypatch.delenv("VIDPRESS_ANNOTATIONS", raising=False)
    monkeypatch.chdir(SHARED.parent.parent if SHARED.is_dir() else tmp_path)  # shared/ right below the cwd
    with pytest.raises(FileNotFoundError, match="VIDPRESS_ANNOTATIONS"):
        annotations_dir("nextqa")
    (tmp_path / "nextqa").mkdir()
    monkeypatch.setenv("VIDPRESS_ANNOTATIONS", str(tmp_path))
    assert annotations_dir("nextqa") == tmp_path / "nextqa"
