"""DyCoke TTM on constructed tensors: counts against hand-computed values (methods.md §1.2)."""

import math

import pytest
import torch

from vidpress.errors import InvalidParameterError
from vidpress.stages.pre_llm.temporal_merge import TemporalMerge, ttm_references
from vidpress.tokens import VisualTokens


def tokens(frames, per_frame, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return VisualTokens(torch.randn(1, frames, per_frame, dim, generator=g), (1, per_frame))


def test_faithful_count_matches_reference_code():
    # 9 full frames {0,4,...,28,30} + 23 frames of int(0.3*196)=58 tokens
    assert TemporalMerge(k=0.7, mode="faithful")(tokens(32, 196)).num_kept == 9 * 196 + 23 * 58 == 3098


def test_faithful_full_frames_general_even_f():
    refs, emitted = ttm_references(16, "faithful")
    full = [f for f in emitted if f not in refs]
    assert full == [0, 4, 8, 12, 14]  # F/2 - |range(0, F-4, 4)| = 8 - 3 = 5
    assert TemporalMerge(k=0.7, mode="faithful")(tokens(16, 196)).num_kept == 5 * 196 + 11 * 58


def test_faithful_odd_f_drops_last_frame():
    plan = TemporalMerge(k=0.5, mode="faithful")(tokens(9, 10))
    assert plan.source.max().item() < 8 * 10  # nothing from frame 8
    # pass B runs over range(0, F-4, 4) = {0, 4} for F=9, so frames 2 and 6 are pruned: full {0, 4}
    assert plan.num_kept == 2 * 10 + 6 * 5


@pytest.mark.parametrize("frames", [1, 2, 3, 4])
def test_faithful_short_video_raises_and_fixed_works(frames):
    with pytest.raises(InvalidParameterError, match="at least 5 frames"):
        TemporalMerge(mode="faithful")(tokens(frames, 10))
    plan = TemporalMerge(k=0.7, mode="fixed")(tokens(frames, 10))
    assert plan.num_kept == 10 + (frames - 1) * 3


@pytest.mark.parametrize("frames", [5, 7, 32, 33])
def test_fixed_never_drops_a_frame(frames):
    plan = TemporalMerge(k=0.7, mode="fixed")(tokens(frames, 196))
    anchors = math.ceil(frames / 4)
    assert plan.num_kept == anchors * 196 + (frames - anchors) * 58
    assert set((plan.keep[0] // 196).tolist()) == set(range(frames))


def test_keeps_least_similar_positions():
    x = torch.randn(1, 4, 6, 8)
    x[0, 1] = x[0, 0]
    x[0, 1, [2, 5]] = -x[0, 0, [2, 5]]  # frame 1 differs from frame 0 only at positions 2 and 5
    plan = TemporalMerge(k=0.6, mode="fixed")(VisualTokens(x, (2, 3)))
    kept_frame1 = [i - 6 for i in plan.keep[0].tolist() if 6 <= i < 12]
    assert kept_frame1 == [2, 5]


def test_k_zero_keeps_everything_and_ratio_checked():
    assert TemporalMerge(k=0.0)(tokens(8, 5)).num_kept == 40
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidParameterError, match="k \\(DyCoke K\\)"):
            TemporalMerge(k=bad)
