"""Evidence survival: token shares by hand, the runtime's trace against hand-computed kept sets, and the needle
split's statistics (docs/evaluation.md)."""

import math

import pytest
import torch

import vidpress
from vidpress.errors import InvalidParameterError
from vidpress.evidence import boxes_to_masks, token_evidence, trace
from vidpress.pipeline import build_inputs
from vidpress.selection import Selection
from vidpress.stages import PreLLMStage
from vidpress.stages.pre_llm.uniform import RandomTokens, UniformFrames
from vidpress.testbed.needle import make_needle_split
from vidpress.tokens import Members, PackedTokens, VisualTokens


def test_token_shares_by_hand():
    # frame 1: a box over the top-left quarter of a 2 x 2 grid, and half of the top-right cell
    masks = boxes_to_masks({1: [(0, 0, 0.5, 0.5), (0.5, 0, 0.75, 0.5)]}, 2, size=8)
    shares = token_evidence(masks, (2, 2))
    assert torch.allclose(shares, torch.tensor([[0, 0, 0, 0], [2 / 3, 1 / 3, 0, 0]]))
    # Qwen's temporal patches: frames 0-1 are one token's frames; 3 frames give 2 patches
    both = boxes_to_masks({0: [(0, 0, 0.5, 0.5)], 1: [(0, 0, 0.5, 0.5)], 2: [(0.5, 0.5, 1, 1)]}, 3, size=8)
    assert torch.allclose(token_evidence(both, (2, 2), 2), torch.tensor([[2 / 3, 0, 0, 0], [0, 0, 0, 1 / 3]]))
    assert token_evidence(torch.zeros(2, 8, 8), (2, 2)).sum() == 0
    with pytest.raises(InvalidParameterError, match="x0 < x1"):
        boxes_to_masks({0: [(0.5, 0, 0.2, 1)]}, 1)
    with pytest.raises(InvalidParameterError, match="2 frames"):
        boxes_to_masks({2: [(0, 0, 1, 1)]}, 2)
    with pytest.raises(InvalidParameterError, match="in \\[0, 1\\]"):
        token_evidence(torch.full((1, 4, 4), 2.0), (2, 2))


def test_merged_members_carry_evidence_at_their_weight():
    evidence = torch.tensor([[0.5, 0.25, 0.25, 0.0]])
    # token 0 is frame token 0 unchanged; token 1 merges frame tokens 1 and 3 (weights 0.5 each); 2 is dropped
    members = Members(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 3]), torch.tensor([1.0, 0.5, 0.5]))
    packed = PackedTokens(
        torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool),
        torch.zeros(1, 2, dtype=torch.long), source=torch.tensor([[0, 1]]), members=(members,),
    )  # fmt: skip
    found = trace(packed, evidence, torch.tensor([[3, 4]]), 6)
    assert found.pre_llm == pytest.approx((0.5, 0.25, 0.125))  # strict, merged, its weight in the merge
    found = trace(Selection(torch.tensor([[0, 2]]), 4), evidence, torch.tensor([[3, 4]]), 6)
    assert found.pre_llm == pytest.approx((0.75, 0.0, 0.0))


def _run(model, processor, frames, method, masks, new_tokens=3):
    inputs = build_inputs(processor, frames, "What happens in the video?")
    with torch.no_grad(), vidpress.apply(model, method) as run:
        run.set_evidence(masks)
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return run


@pytest.fixture(scope="module")
def masks():
    # the tiny model's 56 px frames make a 2 x 2 token grid: frame 0's top-left token, frame 6's bottom-right
    return boxes_to_masks({0: [(0, 0, 0.5, 0.5)], 6: [(0.5, 0.5, 1, 1)]}, 12, size=56)


def test_uncompressed_keeps_all_the_evidence(tiny, clip_frames, masks):
    survival = _run(tiny.model, tiny.processor, clip_frames, vidpress.Stages(), masks).report.evidence
    assert (survival.strict, survival.merged, survival.dropped) == (1.0, 0.0, 0.0)
    assert survival.prefill_reached == survival.decode_reached == [1.0] * 4


def test_frame_sampling_keeps_the_evidence_of_the_frames_it_keeps(tiny, clip_frames, masks):
    # 25 % of 12 frames: 3 frames, spread over the bins (i + 0.5) * 4, i.e. frames 2, 6, 10: frame 6's half survives
    method = UniformFrames(retention=0.25)
    assert method.encoded_frames(12, 4) == [2, 6, 10]
    survival = _run(tiny.model, tiny.processor, clip_frames, method, masks).report.evidence
    assert survival.strict == pytest.approx(0.5) and survival.dropped == pytest.approx(0.5)


def test_fastv_survival_per_layer_is_its_kept_set(tiny, clip_frames):
    # evidence on every token of frame 3, equal shares; FastV keeps half the visual tokens from layer 2
    masks = boxes_to_masks({3: [(0, 0, 1, 1)]}, 12, size=56)
    run = _run(tiny.model, tiny.processor, clip_frames, vidpress.FastV(k=2, r=0.5), masks)
    session, survival = run.last_session, run.report.evidence
    frame3 = session.layout(0)[0, session.visual[0]][12:16]  # base entries of frame 3's 4 tokens
    kept = set(session.layout(2)[0].tolist())
    by_hand = sum(e in kept for e in frame3.tolist()) / 4
    assert survival.prefill_reached == pytest.approx([1.0, 1.0, by_hand, by_hand])
    assert survival.decode_reached == pytest.approx([1.0, 1.0, by_hand, by_hand])


def test_a_composition_traces_each_of_its_stages(tiny, clip_frames):
    """Frame sampling, then FastV, then DyCoke's decode pruning: each stage's share is taken from what the one
    before left (frame 6's half on entry; of it, FastV's kept set from layer 2; the KV attended while decoding at
    most that at layer 3)."""
    masks = boxes_to_masks({0: [(0, 0, 1, 1)], 6: [(0, 0, 1, 1)]}, 12, size=56)
    method = vidpress.compose(UniformFrames(retention=0.25), vidpress.FastV(k=2, r=0.5), vidpress.DynamicKV(l=3, p=0.5))
    run = _run(tiny.model, tiny.processor, clip_frames, method, masks)
    session, survival = run.last_session, run.report.evidence
    assert survival.strict == pytest.approx(0.5) and survival.dropped == pytest.approx(0.5)
    frame6 = session.layout(0)[0, session.visual[0]][4:8]  # frames 2, 6, 10 kept: frame 6's 4 tokens are 2nd
    by_hand = 0.5 * sum(e in set(session.layout(2)[0].tolist()) for e in frame6.tolist()) / 4
    assert by_hand < 0.5  # FastV dropped some of it here, so the layers below tell the stages apart
    assert survival.prefill_reached == pytest.approx([0.5, 0.5, by_hand, by_hand])
    assert survival.decode_reached[:3] == pytest.approx([0.5, 0.5, by_hand])
    assert survival.decode_reached[3] <= by_hand + 1e-6


def test_a_stage_that_keeps_only_the_evidence_keeps_all_of_it_at_a_tiny_budget(tiny, clip_frames, masks):
    class KeepTokens(PreLLMStage):
        needs = vidpress.stages.Needs()

        def __call__(self, tokens, ctx=None):
            return Selection(torch.tensor([[0, 6 * 4 + 3]]), tokens.features.shape[1] * tokens.features.shape[2])

    run = _run(tiny.model, tiny.processor, clip_frames, KeepTokens(), masks)
    survival = run.report.evidence
    assert run.report.accounting.visual_in == 48 and run.report.accounting.prefill_visual[0] == 2
    assert survival.strict == 1.0 and survival.prefill_reached == [1.0] * 4


def test_masks_for_another_frame_count_are_refused(tiny, clip_frames):
    with pytest.raises(InvalidParameterError, match="one mask per frame"):
        _run(tiny.model, tiny.processor, clip_frames, vidpress.Stages(), torch.zeros(5, 56, 56))


@pytest.mark.parametrize("retention", [0.5, 0.25])
def test_random_pruning_keeps_its_retention_of_the_needle_within_the_interval(needle_evidence, retention):
    """On the 300 needle videos (the testbed's 4 x 4 token grid), random pruning as the runtime calls it (default
    seed, each video its own features) keeps its retention of the needle strictly, within a 95 % interval. One draw
    shared by all videos failed this at 50 % (0.444, interval 0.398-0.490): the needles sit in the top and bottom
    rows."""
    shares = []
    for i, evidence in enumerate(needle_evidence):
        features = torch.randn(1, 12, 16, 4, generator=torch.Generator().manual_seed(i))
        plan = RandomTokens(retention=retention)(VisualTokens(features, (4, 4)))
        shares.append(trace(plan, evidence, torch.arange(plan.num_kept)[None], plan.num_kept).pre_llm[0])
    mean = sum(shares) / len(shares)
    sd = math.sqrt(sum((s - mean) ** 2 for s in shares) / (len(shares) - 1))
    half = 1.96 * sd / math.sqrt(len(shares))
    assert mean - half <= retention <= mean + half
    assert half < 0.06


@pytest.fixture(scope="module")
def needle_evidence():
    return [
        token_evidence(torch.from_numpy(s.needle_masks(12)), (4, 4)).flatten()[None] for s in make_needle_split(300, 12)
    ]


def test_random_pruning_draws_per_video_whatever_the_batch():
    """Each video its own draw, the same one alone or batched with another, and again on the next call."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 6, 16, 8, generator=g), torch.randn(1, 6, 16, 8, generator=g)
    stage = RandomTokens(retention=0.25)
    alone_a, alone_b = stage(VisualTokens(a, (4, 4))).keep, stage(VisualTokens(b, (4, 4))).keep
    batched = stage(VisualTokens(torch.cat([a, b]), (4, 4))).keep
    assert torch.equal(batched[0], alone_a[0]) and torch.equal(batched[1], alone_b[0])
    assert not torch.equal(alone_a, alone_b)
    assert torch.equal(stage(VisualTokens(a, (4, 4))).keep, alone_a)
    assert not torch.equal(RandomTokens(retention=0.25, seed=1)(VisualTokens(a, (4, 4))).keep, alone_a)


def test_metok_pooling_a_finer_grid_carries_evidence_by_area():
    """METok on LLaVA-OV pools the grid before the model's own pooling: its tokens declare what they cover of the
    frame tokens' cells. On an 8 x 8 grid whose tokens are its 2 x 2 means: stride 2 is the frame's own tokens
    (strict), stride 4 a quarter of four of them, stride 8 a sixteenth of all."""
    from vidpress.stages.pre_llm.event_pooling import EventPooling

    g = torch.Generator().manual_seed(0)
    unpooled = torch.randn(1, 12, 8, 8, 8, generator=g)
    tokens = torch.nn.functional.avg_pool2d(unpooled[0].permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    visual = VisualTokens(
        tokens.reshape(1, 12, 16, 8), (4, 4), unpooled=unpooled, text=torch.randn(1, 5, 8), project=lambda t: t
    )
    packed = EventPooling(strides=(2, 4, 4, 8), pool="average")(visual)
    assert packed.members is None and packed.areas is not None
    expected = {2: (1.0, 0.0, 0.0), 4: (0.0, 1.0, 0.25), 8: (0.0, 1.0, 1 / 16)}
    for frame, stride in enumerate(packed.info[0].strides):
        evidence = torch.zeros(1, 192)
        evidence[0, frame * 16 + 5] = 1
        found = trace(packed, evidence, torch.arange(packed.num_kept)[None], packed.num_kept)
        assert found.pre_llm == pytest.approx(expected[stride]), (frame, stride)


def test_tome_merged_tokens_carry_evidence_by_the_patches_they_hold():
    """A token ToMe merged in the tower is the mean of its patches: it holds the model's token cells those patches
    cover, at their share of it."""
    from vidpress.stages.vision.tome import MergedBlock

    groups = torch.ones(16, dtype=torch.long)  # 4 x 4 patches on a 2 x 2 token grid
    groups[[0, 1, 4, 5]] = 0  # token 0: exactly the top-left cell; token 1: the other three cells
    tokens = VisualTokens(
        torch.zeros(1, 1, 4, 2), (2, 2), merged=torch.randn(1, 1, 2, 2), merged_groups=groups.view(1, 1, 16)
    )
    packed = MergedBlock()(tokens)
    for cell, expected in ((0, (1.0, 0.0, 0.0)), (1, (0.0, 1.0, 1 / 3)), (3, (0.0, 1.0, 1 / 3))):
        evidence = torch.zeros(1, 4)
        evidence[0, cell] = 1
        assert trace(packed, evidence, torch.arange(2)[None], 2).pre_llm == pytest.approx(expected)


def test_fastv_on_a_constructed_attention_pattern_keeps_the_evidence_of_its_top_tokens():
    from vidpress.tokens import LayerSignals

    stage = vidpress.FastV(k=2, r=0.5).build().prefill
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.7, 0.05]])  # round(6 * 0.5) = 3 kept: tokens 0, 2 and 4
    plan = stage(LayerSignals(1, scores))
    assert plan.keep.tolist() == [[0, 2, 4]]
    evidence = torch.tensor([[0.0, 0.5, 0.3, 0.0, 0.0, 0.2]])
    found = trace(Selection.identity(1, 6), evidence, torch.arange(6)[None], 6)
    assert found.shares(torch.arange(6)[None])[:2] == pytest.approx((1.0, 1.0))
    assert found.shares(plan.keep)[:2] == pytest.approx((0.3, 0.3))  # only token 2's share survives layer 2
