"""PyAV decoding on real videos, and one specific error per kind of bad input."""

import av
import numpy as np
import pytest
from conftest import shared_video
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vidpress
import vidpress.io.video
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
    with pytest.raises(vidpress.NoVideoStreamError, match="no video stream \\(only 1 other streams\\)"):
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


def _write_mkv(path, seconds=4, rate=10, size=(64, 48)):
    out = av.open(str(path), "w")
    stream = out.add_stream("mpeg4", rate=rate)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    for i in range(seconds * rate):
        image = np.full((size[1], size[0], 3), (i * 6) % 255, dtype=np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path


def _claiming(tmp_path, milliseconds):
    """A 4 s, 10 fps MKV whose header (Segment Duration) claims ``milliseconds``."""
    import struct

    data = bytearray(_write_mkv(tmp_path / "true.mkv").read_bytes())
    at = data.find(b"\x44\x89\x88")  # the Duration element, an 8-byte float
    data[at + 3 : at + 11] = struct.pack(">d", milliseconds)
    path = tmp_path / f"claims_{int(milliseconds)}.mkv"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("claimed_ms", [3_600_000.0, 400.0])
def test_header_duration_that_the_stream_does_not_hold(tmp_path, claimed_ms):
    path = _claiming(tmp_path, claimed_ms)
    assert av.open(str(path)).duration == claimed_ms * 1000  # the header lies
    with pytest.warns(vidpress.io.video.VideoWarning, match="stream holds 4.0 s"):
        video = vidpress.load_video(path, 8)
    assert video.duration_s == pytest.approx(4.0, abs=0.11)
    assert len(np.unique(video.timestamps)) == 8  # spread over the real 4 s, no repeated last frame
    assert np.allclose(video.timestamps, np.linspace(0, 3.9, 8), atol=0.06)


def test_more_frames_than_the_video_holds_are_capped_and_said(tmp_path):
    path = _write_mkv(tmp_path / "short.mkv", seconds=2)  # 20 frames
    with pytest.warns(vidpress.io.video.VideoWarning, match="20 distinct frames where 64 were asked for"):
        video = vidpress.load_video(path, 64)
    assert len(video) == 20 and video.requested == 64 and len(np.unique(video.timestamps)) == 20
    still = tmp_path / "still.png"
    with av.open(str(still), "w") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 32, 24, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((24, 32, 3), np.uint8), format="rgb24")):
            out.mux(packet)
    with pytest.warns(vidpress.io.video.VideoWarning, match="1 distinct frames where 8"):
        assert len(vidpress.load_video(still, 8)) == 1


def test_frames_that_would_not_fit_in_memory_fail_before_decoding(tmp_path, monkeypatch):
    path = _write_mkv(tmp_path / "v.mkv")
    monkeypatch.setattr(vidpress.io.video, "_available_memory", lambda: 500_000)  # 0.5 MB free
    with pytest.raises(vidpress.InvalidFrameCountError, match="41 frames of 64x48 would take"):
        vidpress.load_video(path, 100)
    with pytest.warns(vidpress.io.video.VideoWarning):
        assert len(vidpress.load_video(path, 100, max_side=16)) == 40  # 16x12: 23 kB
    assert vidpress.load_video(path, 4, max_side=32).frames.shape[1:] == (24, 32, 3)


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    mkv = _write_mkv(folder / "v.mkv", seconds=2).read_bytes()
    return {"mkv": mkv, "mp4": bundled_clip().read_bytes()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["mkv", "mp4"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=8),
    frames=st.integers(1, 12),
)
@example(kind="mkv", cut=0.40625, flips=[(0.40625, 1)], frames=1)  # a stream left without a codec context
def test_corrupted_files_raise_a_video_error_or_decode(small_videos, tmp_path, kind, cut, flips, frames):
    import warnings

    data = bytearray(small_videos[kind][: max(1, int(len(small_videos[kind]) * cut))])
    for where, mask in flips:
        data[min(len(data) - 1, int(where * len(data)))] ^= mask
    path = tmp_path / f"fuzz.{kind}"
    path.write_bytes(bytes(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            video = vidpress.load_video(path, frames)
    except vidpress.VideoError:
        return
    assert 1 <= len(video) <= frames and video.frames.dtype == np.uint8


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    """A 10-minute 64 x 64 clip at 25 fps (15,000 frames), each frame a different grey."""
    path = tmp_path_factory.mktemp("long") / "ten_minutes.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(600 * 25):
            picture = np.full((64, 64, 3), i % 256, np.uint8)
            picture[:32, :, 1] = (i // 256) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def peak_rss_mib(*args):
    """Peak resident memory of a fresh Python running ``args`` (MiB), and what it printed."""
    import subprocess
    import sys

    code = "import resource, sys; exec(sys.argv[1]); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split()
    return int(lines[-1]) / 1024, lines[:-1]


def test_decoding_holds_the_sampled_frames_not_the_decoders(ten_minutes):
    """15,000 distinct frames (176 MiB as RGB) asked for as 100,000: the peak stays within twice the frames plus what
    decoding 2 frames takes (holding the decoder's own frames until the end peaks at 5.1 GB)."""
    load = "from vidpress.io.video import load_video as f; v = f(sys.argv[2], int(sys.argv[3])); print(v.frames.nbytes)"
    base, _ = peak_rss_mib(load, str(ten_minutes), "2")
    peak, (nbytes,) = peak_rss_mib(load, str(ten_minutes), "100000")
    assert int(nbytes) == 15000 * 64 * 64 * 3
    assert peak - base < 2 * int(nbytes) / 2**20 + 64, (peak, base)


def test_a_frame_count_past_the_models_positions_is_refused_before_decoding(ten_minutes):
    import subprocess
    import sys

    code = (
        "import resource, sys\n"
        "from vidpress.cli import main\n"
        "sys.argv = ['vidpress', 'run', sys.argv[1], '--frames', '100000', '--model', 'random']\n"
        "try:\n    main()\nexcept SystemExit as exit:\n"
        "    print(exit.code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(ten_minutes)], capture_output=True, text=True, timeout=300)
    status, peak = done.stdout.split()[-2:]
    assert status == "2" and int(peak) / 2**20 < 2.0, (done.stdout, done.stderr[-1000:])
    (line,) = [line for line in done.stderr.splitlines() if line.strip()][-1:]
    assert line.startswith("error: 15001 frames take") and "at most 62 frames fit" in line
