"""Every merging pre-LLM stage says what each of its tokens combines (``PackedTokens.members``): the members'
weighted sum of the frame tokens is the token itself, on seeded inputs at odd frame counts and several budgets."""

import pytest
import torch

from vidpress.stages.pre_llm.event_pooling import EventPooling
from vidpress.stages.pre_llm.fastvid import FastVID
from vidpress.stages.pre_llm.temporal_merge import TemporalMerge
from vidpress.stages.pre_llm.visionzip import VisionZip
from vidpress.tokens import Members, VisualTokens

FRAMES, SIDE, DIM = 9, 4, 16


def _tokens(seed: int, unpooled: bool = False) -> VisualTokens:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, FRAMES, SIDE * SIDE, DIM, generator=generator)
    x[:, 3:6] += 2 * torch.randn(1, 1, 1, DIM, generator=generator)  # a second scene, for the segmenters
    return VisualTokens(
        x,
        (SIDE, SIDE),
        attention=torch.rand(2, FRAMES, SIDE * SIDE, generator=generator),
        keys=torch.randn(2, FRAMES, SIDE * SIDE, 8, generator=generator),
        text=torch.randn(2, 5, DIM, generator=generator),
        unpooled=x.view(2, FRAMES, SIDE, SIDE, DIM) if unpooled else None,
    )


def _check(plan, tokens: VisualTokens, merged_expected: bool) -> None:
    assert plan.members is not None
    flat = tokens.features.flatten(1, 2)
    merged = False
    for b, members in enumerate(plan.members):
        combined = members.combine(flat[b], plan.num_visual)
        assert torch.allclose(combined, plan.features[b, : plan.num_visual].float(), atol=1e-5)
        assert members.source.max() < flat.shape[1] and members.token.max() < plan.num_visual
        pairs = (members.token * flat.shape[1] + members.source)[members.weight > 0].unique()
        merged |= bool((torch.bincount(pairs // flat.shape[1]) > 1).any())  # a token of several frame tokens
    assert merged == merged_expected


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode", ["fixed", "faithful"])
@pytest.mark.parametrize("retention", [0.3, 0.55, 1.0])
def test_visionzip_members_rebuild_its_tokens(seed, mode, retention):
    tokens = _tokens(seed)
    _check(VisionZip(retention=retention, mode=mode)(tokens), tokens, merged_expected=retention < 1)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode,retention", [("fixed", 0.3), ("fixed", 0.55), ("fixed", 1.0), ("faithful", 0.25)])
def test_fastvid_members_rebuild_its_tokens(seed, mode, retention):
    tokens = _tokens(seed)
    plan = FastVID(retention=retention, mode=mode, min_segments=3)(tokens)
    _check(plan, tokens, merged_expected=retention < 1)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pool", ["bilinear", "average"])
def test_metok_pooling_members_rebuild_its_tokens(seed, pool):
    tokens = _tokens(seed)
    plan = EventPooling(retention=0.3, pool=pool, strides=(1, 2, 2, 4), key_events=1, key_frames=2)(tokens)
    _check(plan, tokens, merged_expected=True)
    own = _tokens(seed, unpooled=True)  # METok's own plan, on a grid that is the tokens' own (Qwen's merged grid)
    own = VisualTokens(own.features[:1], own.grid, unpooled=own.unpooled[:1], text=own.text[:1])  # sized by content
    _check(EventPooling(pool=pool, strides=(1, 2, 2, 4), key_events=1, key_frames=2)(own), own, merged_expected=True)


def test_members_follow_a_reordered_block():
    members = Members.of_kept(torch.tensor([7, 3, 5]))
    values = torch.arange(10.0)[:, None]
    order = torch.tensor([2, 0, 1])  # new token i = old token order[i]
    assert members.reorder(order).combine(values, 3)[:, 0].tolist() == [5.0, 7.0, 3.0]


def test_a_selection_stage_packed_without_merging_needs_no_members():
    tokens = _tokens(0)
    plan = TemporalMerge(k=0.5, mode="faithful")(tokens)
    assert plan.members is None  # every token is its source: the runtime checks exactly that where it matters
    flat = tokens.features.flatten(1, 2)
    assert torch.equal(plan.features[:, : plan.num_visual], flat.gather(1, plan.source[..., None].expand(-1, -1, DIM)))
