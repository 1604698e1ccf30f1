"""Shared by the tests that run vidpress inside vLLM's CPU engine (skipped where vLLM is not installed)."""

import os

import pytest
import torch

os.environ.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_ENABLE_V1_MULTIPROCESSING="0")

FRAMES = 8  # the clip fixture's frames, read by the tests beside it


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """family -> (in-memory transformers model, its saved vLLM checkpoint directory): tiny random models."""
    from vidpress.integrations.vllm.checkpoints import FAMILIES, random_checkpoint, save_for_vllm

    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        loaded = random_checkpoint(family)
        out[family] = (loaded, save_for_vllm(loaded, tmp_path_factory.mktemp(family)))
    return out


@pytest.fixture(scope="session")
def clip():
    """FRAMES frames of the bundled clip, (F, H, W, 3) uint8."""
    import vidpress
    from vidpress.cli import bundled_clip

    return vidpress.load_video(bundled_clip(), FRAMES).frames
