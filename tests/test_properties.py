"""Invariants of every stage under property-based fuzzing (hypothesis): random frame counts, tokens per frame,
budgets and seeds. Exact counts, indices in range and unique, order as documented, keep-everything = identity."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidpress.errors import BudgetError, InvalidParameterError
from vidpress.selection import Selection
from vidpress.stages.decode.dynamic_kv import DynamicKV
from vidpress.stages.decode.layerwise_trim import LayerwiseTrim
from vidpress.stages.pre_llm.budget import visual_budget
from vidpress.stages.pre_llm.event_pooling import EventPooling
from vidpress.stages.pre_llm.fastvid import FastVID
from vidpress.stages.pre_llm.holitom import HoliTomMerge
from vidpress.stages.pre_llm.pooling import pool_grid
from vidpress.stages.pre_llm.temporal_merge import TemporalMerge
from vidpress.stages.pre_llm.uniform import UniformBaseline
from vidpress.stages.pre_llm.visionzip import VisionZip
from vidpress.stages.prefill.attention_rank import AttentionRank
from vidpress.tokens import LayerSignals, PackedTokens, StageContext, VisualTokens

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
retentions = st.floats(min_value=0.01, max_value=1.0)


def visual(frames, side, seed, dim=8, extra=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, frames, side * side, dim, generator=g)
    attention = torch.rand(1, frames, side * side, generator=g)
    return VisualTokens(
        x, (side, side), extra=torch.randn(1, 1, dim, generator=g) if extra else None, attention=attention, keys=x
    )


def check_selection(plan: Selection, n: int, count: int | None = None):
    keep = plan.keep[0]
    assert plan.n == n and (count is None or plan.num_kept == count)
    assert keep.numel() == 0 or (0 <= int(keep.min()) and int(keep.max()) < n)
    assert torch.equal(keep, keep.unique())  # sorted and unique


def check_packed(packed: PackedTokens, n: int, per_frame: int, count: int | None = None, sorted_sources: bool = True):
    source = packed.source[0, : packed.num_visual]
    assert count is None or packed.num_visual == count
    assert 0 <= int(source.min()) and int(source.max()) < n and source.unique().numel() == source.numel()
    if sorted_sources:
        assert torch.equal(source, source.sort().values)
    assert torch.equal(packed.frame_of[0, : packed.num_visual], source // per_frame)
    events = packed.events[0]
    assert torch.all(events[1:] >= events[:-1])


@FUZZ
@given(
    frames=st.integers(1, 12),
    side=st.integers(1, 5),
    retention=retentions,
    seed=st.integers(0, 99),
    kind=st.sampled_from(["frames", "spatial", "random"]),
)
def test_controls_keep_exactly_the_budget(frames, side, retention, seed, kind):
    n = frames * side * side
    plan = UniformBaseline(retention=retention, kind=kind, seed=seed)(visual(frames, side, seed))
    check_selection(plan, n, visual_budget(retention, n))
    if retention == 1.0:
        assert torch.equal(plan.keep[0], torch.arange(n))


@FUZZ
@given(frames=st.integers(1, 14), side=st.integers(1, 5), k=st.floats(0, 1), seed=st.integers(0, 99))
def test_ttm_fixed_counts_and_order(frames, side, k, seed):
    per_frame = side * side
    plan = TemporalMerge(k=k)(visual(frames, side, seed))
    anchors = math.ceil(frames / 4)
    check_selection(plan, frames * per_frame, anchors * per_frame + (frames - anchors) * int((1 - k) * per_frame))
    assert set((plan.keep[0] // per_frame).tolist()) == (
        set(range(frames)) if int((1 - k) * per_frame) else set(range(0, frames, 4))
    )
    if k == 0:
        assert torch.equal(plan.keep[0], torch.arange(frames * per_frame))


@FUZZ
@given(frames=st.integers(5, 14), side=st.integers(1, 5), k=st.floats(0, 1), seed=st.integers(0, 99))
def test_ttm_faithful_counts_sources_and_frame_order(frames, side, k, seed):
    per_frame = side * side
    packed = TemporalMerge(k=k, mode="faithful")(visual(frames, side, seed))
    emitted = 2 * (frames // 2)
    pruned = emitted // 2 + len(range(0, frames - 4, 4))  # every pair's second frame, every skip-pair's third
    check_packed(
        packed,
        frames * per_frame,
        per_frame,
        (emitted - pruned) * per_frame + pruned * int((1 - k) * per_frame),
        sorted_sources=False,
    )
    frames_in_order = packed.source[0, : packed.num_visual] // per_frame
    assert torch.all(frames_in_order[1:] >= frames_in_order[:-1])  # frame order; inside a frame, topk order


@FUZZ
@given(
    frames=st.integers(1, 10),
    side=st.integers(2, 5),
    retention=retentions,
    seed=st.integers(0, 99),
    mode=st.sampled_from(["fixed", "faithful"]),
)
def test_visionzip_counts_and_sources(frames, side, retention, seed, mode):
    n = frames * side * side
    packed = VisionZip(retention=retention, mode=mode)(visual(frames, side, seed))
    check_packed(packed, n, side * side, visual_budget(retention, n), sorted_sources=mode == "fixed")
    if retention == 1.0 and mode == "fixed":
        assert torch.equal(packed.features[0, :n], visual(frames, side, seed).features[0].flatten(0, 1))


@FUZZ
@given(
    frames=st.integers(1, 12),
    side=st.integers(2, 5),
    retention=retentions,
    seed=st.integers(0, 99),
    segments=st.integers(1, 10),
    stride=st.integers(1, 5),
)
def test_fastvid_fixed_keeps_exactly_the_budget(frames, side, retention, seed, segments, stride):
    n = frames * side * side
    packed = FastVID(retention=retention, min_segments=segments, anchor_stride=stride)(visual(frames, side, seed))
    check_packed(packed, n, side * side, visual_budget(retention, n))
    if retention == 1.0:  # every candidate is an anchor that merges only itself (0.6 a + 0.4 a: allclose)
        assert torch.allclose(packed.features[0, :n], visual(frames, side, seed).features[0].flatten(0, 1), atol=1e-6)


@FUZZ
@given(
    frames=st.integers(1, 12),
    side=st.integers(2, 5),
    retention=retentions,
    seed=st.integers(0, 99),
    segments=st.integers(1, 10),
    stride=st.integers(1, 5),
)
def test_fastvid_faithful_keeps_the_reference_count_or_refuses(frames, side, retention, seed, segments, stride):
    per_frame = side * side
    stage = FastVID(retention=retention, min_segments=segments, anchor_stride=stride, mode="faithful")
    try:
        packed = stage(visual(frames, side, seed))
    except BudgetError as exc:
        assert "c=" in str(exc) or "anchor frame" in str(exc) or "= 0 tokens per frame" in str(exc)
        return
    retain = int(per_frame * retention)
    check_packed(packed, frames * per_frame, per_frame)
    assert packed.num_visual <= frames * retain  # never more than int(T * r) a frame on average


@FUZZ
@given(
    frames=st.integers(2, 10),
    side=st.integers(2, 6),
    seed=st.integers(0, 99),
    key_events=st.integers(1, 4),
    key_frames=st.integers(1, 6),
    mode=st.sampled_from(["fixed", "faithful"]),
)
def test_event_pooling_blocks_fit_the_video(frames, side, seed, key_events, key_frames, mode):
    g = torch.Generator().manual_seed(seed)
    unpooled = torch.randn(1, frames, side, side, 8, generator=g)
    pooled = pool_grid(unpooled[0].flatten(1, 2).view(frames, side, side, 8), 2, "bilinear")
    grid = math.ceil(side / 2)
    tokens = VisualTokens(
        pooled[None],
        (grid, grid),
        unpooled=unpooled,
        extra=torch.randn(1, 1, 8, generator=g),
        text=torch.randn(1, 5, 8, generator=g),
    )
    packed = EventPooling(mode=mode, key_events=key_events, key_frames=key_frames)(tokens)
    events = packed.events[0]
    assert torch.all(events[1:] >= events[:-1]) and packed.key_events.shape[1] == int(events.max()) + 1
    assert packed.num_kept <= frames * grid * grid + 1  # fits the video's placeholders
    assert packed.key_events[0].sum() == min(key_events, packed.key_events.shape[1])


@FUZZ
@given(
    frames=st.integers(1, 12),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    retention=retentions,
    seed=st.integers(0, 99),
    pool=st.sampled_from(["bilinear", "average"]),
    mode=st.sampled_from(["fixed", "faithful"]),
)
def test_event_pooling_fixed_budget_keeps_its_declared_count(frames, h, w, retention, seed, pool, mode):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, frames, h * w, 8, generator=g)
    tokens = VisualTokens(x, (h, w), extra=torch.randn(1, 1, 8, generator=g), text=torch.randn(1, 3, 8, generator=g))
    stage = EventPooling(retention=retention, pool=pool, mode=mode)
    low = stage.budget_strides()[-1]
    per_low = (math.ceil(h / low) * math.ceil(w / low)) if pool == "bilinear" else (h // low) * (w // low)
    budget = max(1, round(retention * frames * h * w))
    if per_low == 0 or frames * per_low > budget:  # refused before any work, naming the fix
        with pytest.raises((BudgetError, InvalidParameterError), match="raise retention|use pool='bilinear'"):
            stage.kept_count(frames, h * w, (h, w))
        return
    declared = stage.kept_count(frames, h * w, (h, w))
    packed = stage(tokens)
    assert packed.num_visual == declared <= budget and packed.extra_tokens == 1
    check_packed(packed, frames * h * w, h * w, declared)
    plan = packed.info[0]
    assert sum(plan.tokens) == declared and sorted(plan.strides) == sorted(stage.allotment(frames, (h, w)))


@FUZZ
@given(
    frames=st.integers(1, 48),
    retention=st.floats(0.07, 1.0),
    first_pass=st.sampled_from(["low", "middle", "tome"]),
    preset=st.sampled_from(["llava-ov-7b", "longva-7b"]),  # 27 and 24 patches a side
)
def test_coarse_to_fine_passes_cover_the_video_and_refining_more_never_costs_less(
    frames, retention, first_pass, preset
):
    """Whatever the plan: the first pass encodes every frame (a ToMe first pass at full resolution, with its
    merges), the second encodes each frame at most once, and refine "strides" <= "full" <= "all" in vision
    FLOPs (each encodes a superset of the frames at full resolution)."""
    from vidpress.accounting import estimate, resolve_spec
    from vidpress.stages import compose
    from vidpress.stages.vision.coarse_to_fine import CoarseToFine

    spec = resolve_spec(preset)
    side = math.isqrt(spec.patches)
    events = EventPooling(retention=retention)
    try:
        events.allotment(frames, spec.grid)
    except BudgetError:  # refused before any work (tested above)
        return
    flops = []
    for refine in ("strides", "full", "all"):
        vision = CoarseToFine(events, first_pass, refine)
        planned = estimate(spec, frames, compose(vision, events))
        passes = planned.vision_passes
        assert passes[0][0] == frames and sum(n for n, *_ in passes[1:]) <= frames
        assert all(patches <= side * side for _, patches, *_ in passes)
        if first_pass == "tome":
            merge = vision.first_pass_merging
            assert passes[0] == (
                frames,
                side * side,
                merge.schedule(spec.patches, spec.vision.used_layers, spec.tokens_per_frame),
            )
        if refine == "all":
            assert passes[1] == (frames, side * side)
        flops.append(planned.vision_flops)
    assert flops[0] <= flops[1] <= flops[2]


def test_event_pooling_fixed_budget_gives_the_key_frame_of_the_key_event_its_tokens():
    """Two events (frames 0-2 and 3-5); the question points at frame 4: its event is the key event and it the key
    frame, so it alone keeps the model's 4 x 4 tokens at a budget that affords one such frame."""
    a, b = torch.zeros(16), torch.zeros(16)
    a[0], b[1] = 1.0, 1.0
    frames = torch.stack([a, a, a, b, b, b]) + 0.01 * torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    frames[4, 2] = 0.5  # frame 4 is the one most like the question
    text = torch.zeros(1, 1, 16)
    text[0, 0, 1], text[0, 0, 2] = 1.0, 1.0
    tokens = VisualTokens(frames[None, :, None].expand(1, 6, 16, 16).clone(), (4, 4), text=text)
    stage = EventPooling(retention=0.3, mode="faithful", boundaries=1, key_events=1, key_frames=1)
    # 96 tokens at 30 %: 29, and 1 token a frame at the low stride. By rank, the finest stride that leaves the later
    # frames 1 each: 16 (16 + 5 <= 29), then 4 (20 + 4 <= 29), 4 (24 + 3 <= 29), then 1, 1, 1: 27 tokens
    assert stage.kept_count(6, 16) == 27
    plan = stage(tokens).info[0]
    assert plan.events == [(0, 2), (3, 5)] and plan.key_events == [1] and 4 in plan.key_frames
    assert plan.strides[4] == 1 and sorted(plan.strides) == [1, 2, 2, 4, 4, 4]
    assert plan.tokens == [{1: 16, 2: 4, 4: 1}[s] for s in plan.strides]


@FUZZ
@given(
    n=st.integers(1, 300),
    keep=st.floats(0, 1),
    seed=st.integers(0, 99),
    rule=st.sampled_from(["ceil", "round", "floor_input"]),
)
def test_attention_rank_counts_by_rule(n, keep, seed, rule):
    scores = torch.rand(1, n, generator=torch.Generator().manual_seed(seed))
    plan = AttentionRank(schedule=((2, keep, keep),), query_rows="last", count_rule=rule)(
        LayerSignals(1, scores, input_count=n)
    )
    expected = {
        "ceil": 0 if keep == 0 else max(1, math.ceil(keep * n - 1e-9)),
        "round": round(n * keep),
        "floor_input": int(n * keep),
    }[rule]
    check_selection(plan, n, min(expected, n))
    assert set(plan.keep[0].tolist()) == set(scores[0].topk(plan.num_kept).indices.tolist())


@FUZZ
@given(n=st.integers(2, 200), p=st.floats(0, 1), seed=st.integers(0, 99), mode=st.sampled_from(["fixed", "faithful"]))
def test_dynamic_kv_counts(n, p, seed, mode):
    stage = DynamicKV(l=1, p=p, mode=mode)
    plan = stage(
        LayerSignals(0, torch.rand(1, n, generator=torch.Generator().manual_seed(seed))), StageContext(num_layers=2)
    )
    check_selection(plan, n, stage.budget(n))
    if mode == "faithful":
        assert n - 1 in plan.keep[0].tolist()
    if p == 0:
        assert plan.num_kept == n


@FUZZ
@given(counts=st.lists(st.integers(0, 50), min_size=1, max_size=12), first=st.integers(0, 12))
def test_layerwise_trim_never_grows_a_layer(counts, first):
    counts = sorted(counts, reverse=True)  # prefill layouts only shrink
    trimmed = LayerwiseTrim(first_layer=first).trim_counts(counts)
    assert trimmed[:first] == counts[:first] and all(t <= c for t, c in zip(trimmed, counts))
    assert all(t == min(c, counts[-1]) for t, c in list(zip(trimmed, counts))[first:])


@pytest.mark.parametrize(
    "stage",
    [
        UniformBaseline(retention=1.0),
        TemporalMerge(k=0.0),
        VisionZip(retention=1.0),
        FastVID(retention=1.0),
        EventPooling(retention=1.0),
        HoliTomMerge(retention=1.0, tau=0.0),
    ],
)
def test_keep_everything_is_the_identity(stage):
    tokens = visual(9, 3, 0)
    plan = stage(tokens)
    if isinstance(plan, Selection):
        assert torch.equal(plan.keep[0], torch.arange(81))
    else:
        assert torch.allclose(plan.features[0, :81], tokens.features[0].flatten(0, 1), atol=1e-6)
        assert torch.equal(plan.source[0, :81], torch.arange(81))


@FUZZ
@given(
    frames=st.integers(5, 12),
    side=st.integers(2, 5),
    retention=retentions,
    k=st.floats(0, 1),
    seed=st.integers(0, 99),
    mode=st.sampled_from(["fixed", "faithful"]),
)
def test_declared_counts_equal_what_the_stages_keep(frames, side, retention, k, seed, mode):
    tokens = visual(frames, side, seed)
    for stage in (
        UniformBaseline(retention=retention),
        VisionZip(retention=retention, mode=mode),
        TemporalMerge(k=k, mode=mode),
        FastVID(retention=retention),
        HoliTomMerge(retention=retention),
    ):
        plan = stage(tokens)
        kept = plan.num_kept if isinstance(plan, Selection) else plan.num_visual
        assert stage.kept_count(frames, side * side) == kept, stage
    assert FastVID(mode="faithful").kept_count(frames, side * side) is None  # the segments decide


def test_compose_refuses_what_is_not_a_stage():
    import vidpress
    from vidpress.errors import IncompatibleStagesError

    class Lookalike:  # has the attributes but declares no slot
        needs, first_layer = None, 1

        def __call__(self, signals, ctx):
            return None

    with pytest.raises(IncompatibleStagesError, match="subclass vidpress.stages"):
        vidpress.compose(Lookalike())
