"""PyAV decoding on real videos, and one specific error per kind of bad input."""

import av
import numpy as np
import pytest

import vidpress
from conftest import shared_video
from vidpress.cli import bundled_clip


@pytest.mark.parametrize("name", ["big_buck_bunny_first60s_640x360.mp4", "opencv_vtest.avi", "opencv_tree.avi"])
def test_uniform_sampling_on_real_videos(name):
    video = vidpress.load_video(shared_video(name), 32)
    assert video.frames.shape[0] == 32 and video.frames.dtype == np.uint8 and video.frames.shape[-1] == 3
    assert video.timestamps[0] == pytest.approx(0, abs=0.2)
    assert np.all(np.diff(video.timestamps) >= 0) and video.timestamps[-1] <= video.duration_s


def test_fps_sampling_and_bundled_clip():
    video = vidpress.load_video(bundled_clip(), fps=2)
    assert len(video) == 26  # 13.0 s at 2 fps
    assert np.allclose(video.timestamps, np.arange(26) / 2, atol=0.03)


def test_missing_file():
    with pytest.raises(vidpress.VideoNotFoundError, match="not found: /no/such.mp4"):
        vidpress.load_video("/no/such.mp4")


def test_not_a_video(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video at all")
    with pytest.raises(vidpress.NotAVideoError, match="notes.mp4"):
        vidpress.load_video(bad)


def test_no_video_stream(tmp_path):
    path = tmp_path / "audio.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
    with pytest.raises(vidpress.NoVideoStreamError, match="no video stream"):
        vidpress.load_video(path)


def test_zero_decodable_frames(tmp_path):
    path = tmp_path / "empty.avi"  # an AVI header with a video stream and no frame
    out = av.open(str(path), "w")
    stream = out.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    out.start_encoding()
    out.close()
    with pytest.raises(vidpress.NoFramesError, match="no decodable frame"):
        vidpress.load_video(path)


@pytest.mark.parametrize("kwargs", [dict(num_frames=0), dict(num_frames=-3), dict(num_frames=2.5), dict(fps=0)])
def test_bad_frame_counts(kwargs):
    with pytest.raises(vidpress.InvalidFrameCountError):
        vidpress.load_video(bundled_clip(), **kwargs)
