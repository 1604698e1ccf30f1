import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VIDEOS = SHARED / "videos"
# The default model's base weights are named explicitly (vidpress searches for nothing): ../shared's, when present.
if (SHARED / "weights").is_dir():
    os.environ.setdefault("VIDPRESS_WEIGHTS", str(SHARED / "weights"))


def shared_video(name: str) -> Path:
    path = VIDEOS / name
    if not path.exists():
        pytest.skip(f"{path} not available (needs ../shared/data)")
    return path


@pytest.fixture(scope="session")
def tiny():
    """A 4-layer random LLaVA-OneVision (Qwen2 LM, SigLIP tower), 4 tokens per frame, fp32, SDPA."""
    from vidpress.models.random import random_model

    torch.manual_seed(0)
    return random_model(layers=4, hidden=64, image_size=56, seed=0)


@pytest.fixture(scope="session")
def clip_frames():
    """12 frames of the bundled real clip (NASA, public domain)."""
    import vidpress
    from vidpress.cli import bundled_clip

    return vidpress.load_video(bundled_clip(), 12).frames


@pytest.fixture()
def inputs(tiny, clip_frames):
    from vidpress.pipeline import build_inputs

    return build_inputs(tiny.processor, clip_frames, "What happens in the video?")


@pytest.fixture(scope="session")
def tiny_next_video():
    """A 4-layer random LLaVA-NeXT-Video (LongVA layout: CLIP tower, average pooling, no newline), 4 tokens/frame."""
    from vidpress.models.random import random_llava_next_video

    return random_llava_next_video(layers=4, hidden=64, image_size=56, seed=0)


@pytest.fixture(scope="session")
def tiny_qwen():
    """A 4-layer random Qwen2.5-VL (windowed ViT, M-RoPE), 4 tokens per temporal patch of two frames."""
    from vidpress.models.random import random_qwen2_5_vl

    return random_qwen2_5_vl(layers=4, hidden=64, image_size=56, seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3():
    """A 4-layer random Qwen3-VL (DeepStack into LLM layers 0-2, timestamps, interleaved M-RoPE), 4 tokens per
    temporal patch of two frames."""
    from vidpress.models.random import random_qwen3_vl

    return random_qwen3_vl(layers=4, hidden=64, image_size=64, seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_moe():
    """The same as a 4-layer random Qwen3-VL-MoE (4 experts, 2 active)."""
    from vidpress.models.random import random_qwen3_vl

    return random_qwen3_vl(layers=4, hidden=64, image_size=64, seed=0, moe=True)
