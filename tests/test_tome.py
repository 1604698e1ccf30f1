"""ToMe inside the vision tower: the matching ToMe's released code makes (re-derived by hand on constructed
metrics), the hooked tower equal to ToMe's block computed layer by layer, r=0 equal to the uncompressed model, and
the runtime report equal to the calculator alone and composed with the later slots."""

import math

import pytest
import torch

import vidpress
from vidpress.accounting import estimate, spec_from_config
from vidpress.errors import BudgetError, IncompatibleStagesError, InvalidParameterError
from vidpress.models.random import random_model
from vidpress.pipeline import build_inputs
from vidpress.runtime.tome import TowerMerge
from vidpress.stages.vision.tome import (
    MergedBlock,
    TokenMerging,
    bipartite_soft_matching,
    merge_schedule,
    merge_weighted,
)


def _angles(degrees):
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=-1)[None]  # (1, t, 2)


# tokens 0..6: A = 0, 2, 4, 6 and B = 1, 3, 5. Edges (cosine): 0->1 1.0, 2->3 cos 8 deg = 0.990, 4->5 cos 25 deg =
# 0.906, 6->5 cos 65 deg = 0.423.
METRIC = _angles([0, 0, 90, 98, 180, 205, 270])


def test_matching_merges_the_strongest_edges_and_protects_the_cls_token():
    matching = bipartite_soft_matching(METRIC, 2, protected=True)
    # token 0 (CLS) is protected although its edge is the strongest: tokens 2 and 4 merge into 3 and 5
    assert matching.merged.tolist() == [[1, 2]] and matching.targets.tolist() == [[1, 2]]
    assert matching.unmerged.tolist() == [[0, 3]]  # sorted, so the CLS token stays first
    x = torch.arange(7, dtype=torch.float64)[None, :, None] * 10
    merged, size = merge_weighted(matching, x, None)
    # output: kept A tokens (0, 6), then B (1, 3 with 2, 5 with 4)
    assert merged[0, :, 0].tolist() == [0, 60, 10, 25, 45]
    assert size[0, :, 0].tolist() == [1, 1, 1, 2, 2]
    assert matching.groups().tolist() == [[0, 2, 3, 3, 4, 4, 1]]
    assert matching.unmerge(merged)[0, :, 0].tolist() == [0, 10, 25, 25, 45, 45, 60]


def test_matching_without_protection_merges_the_cls_edge_first_and_caps_r_at_half():
    matching = bipartite_soft_matching(METRIC, 2, protected=False)
    assert matching.merged.tolist() == [[0, 1]] and matching.targets.tolist() == [[0, 1]]
    # unprotected, the kept A tokens stay in edge-strength order (4 then 6), as ToMe leaves them
    assert matching.unmerged.tolist() == [[2, 3]]
    assert bipartite_soft_matching(METRIC, 9, protected=True).r == 3  # (7 - 1) // 2
    assert bipartite_soft_matching(METRIC, 0, protected=True) is None


def test_sizes_weight_later_merges():
    first = bipartite_soft_matching(METRIC, 2, protected=True)
    x = torch.arange(7, dtype=torch.float64)[None, :, None] * 10
    merged, size = merge_weighted(first, x, None)  # [0, 60, 10, 25, 45] with sizes [1, 1, 1, 2, 2]
    # A = positions 0, 2, 4 (0, 10, 45), B = 1, 3 (60, 25): 45 (size 2) is 5 degrees from 60 (size 1)
    second = bipartite_soft_matching(_angles([0, 100, 250, 300, 95]), 1, protected=True)
    again, size = merge_weighted(second, merged, size)
    assert again[0, :, 0].tolist() == pytest.approx([0, 10, (45 * 2 + 60 * 1) / 3, 25])
    assert size[0, :, 0].tolist() == [1, 1, 3, 2]


def test_schedule_forms():
    assert merge_schedule(256, 12, r=20) == (20,) * 11 + (18,)  # 36 left before the last layer: capped at 18
    assert merge_schedule(64, 4, r=[8, 4]) == (8, 4, 0, 0)  # ToMe's list form, padded with zeros
    keep = merge_schedule(729, 26, keep=49)
    assert sum(keep) == 729 - 49 and all(a >= b for a, b in zip(keep, keep[1:]))
    with pytest.raises(BudgetError, match="no fewer than 16 of 64"):
        merge_schedule(64, 2, keep=4)


def test_tower_counts_are_hand_counted():
    # 4x4 patches, 2 layers up to the feature layer, a 2x2 token grid: r=(8, 4) leaves 16 - 8 - 4 = 4 per frame
    merged = TokenMerging(r=(8, 4)).tower_counts(frames=3, side=4, grid=(2, 2), layers=2)
    assert (merged.merges, merged.projected, merged.visual_per_frame, merged.passes) == ((8, 4), 4, 4, None)
    on_grid = TokenMerging(r=(8, 4), grid=True).tower_counts(frames=3, side=4, grid=(2, 2), layers=2)
    assert (on_grid.merges, on_grid.projected, on_grid.visual_per_frame) == ((8, 4), None, None)
    with pytest.raises(BudgetError, match="leaves 10 of 16"):  # r=3: 16 - 3 - 3 = 10 > the 4 placeholders
        TokenMerging(r=3).tower_counts(frames=3, side=4, grid=(2, 2), layers=2)


def test_parameters_are_checked():
    with pytest.raises(InvalidParameterError, match="exactly one"):
        TokenMerging()
    with pytest.raises(InvalidParameterError, match="exactly one"):
        TokenMerging(retention=0.25, r=4)
    with pytest.raises(InvalidParameterError, match="integers >= 0"):
        TokenMerging(r=-1)
    with pytest.raises(BudgetError, match="retention"):
        TokenMerging(retention=1.5)
    with pytest.raises(InvalidParameterError, match="grid must be true or false"):
        TokenMerging(r=4, grid="yes")
    with pytest.raises(InvalidParameterError, match="mode must be"):
        vidpress.ToMe(r=4, grid=True, mode="faithfull")


@pytest.fixture(scope="module")
def dinov2():
    return random_model(layers=2, hidden=64, image_size=112, tower="dinov2")


@pytest.fixture(scope="module")
def siglip():
    torch.manual_seed(0)
    return random_model(layers=2, hidden=64, image_size=112, seed=0)


def reference_tower(tower, pixels, schedule, protected):
    """ToMe's block, layer by layer, from the tower's own modules: attention with log(size) added to its logits,
    the residual, the matching on the head-averaged keys, the size-weighted merge, then the MLP branch."""
    inner = getattr(tower, "vision_model", tower)
    x = inner.embeddings(pixels)
    if hasattr(inner, "pre_layrnorm"):  # CLIP
        x = inner.pre_layrnorm(x)
    layers = inner.encoder.layers if hasattr(inner.encoder, "layers") else inner.encoder.layer
    size = None
    for layer, r in zip(layers, schedule):
        attention = getattr(layer, "self_attn", None) or layer.attention
        norm1 = getattr(layer, "layer_norm1", None) or layer.norm1
        norm2 = getattr(layer, "layer_norm2", None) or layer.norm2
        h = norm1(x)
        n, t, _ = h.shape
        heads = attention.config.num_attention_heads
        q, k, v = (
            p(h).view(n, t, heads, -1).transpose(1, 2) for p in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        scale = getattr(attention, "scale", None) or attention.scaling
        logits = q @ k.transpose(-1, -2) * scale
        if size is not None:
            logits = logits + size.log()[:, None, None, :, 0]
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(n, t, -1)
        out = (getattr(attention, "out_proj", None) or attention.o_proj)(out)
        x = x + (layer.layer_scale1(out) if hasattr(layer, "layer_scale1") else out)
        matching = bipartite_soft_matching(k.mean(1), r, protected)
        if matching is not None:
            x, size = merge_weighted(matching, x, size)
        branch = layer.mlp(norm2(x))
        x = x + (layer.layer_scale2(branch) if hasattr(layer, "layer_scale2") else branch)
    return x


@pytest.mark.parametrize("family", ["siglip", "dinov2", "tiny_next_video"])
def test_hooked_tower_computes_tomes_block(family, request, clip_frames):
    loaded = request.getfixturevalue(family)
    model = loaded.model
    adapter = vidpress.adapters.registry.adapter_for(model)
    side, depth, cls = adapter.patch_side(), adapter.feature_depth(), adapter.tower_has_cls()
    schedule = (max(1, side * side // 6),) * depth
    tower = adapter.vision_modules()[0]
    pixels = build_inputs(loaded.processor, clip_frames[:4], "What happens?")["pixel_values_videos"].flatten(0, 1)
    with torch.no_grad(), vidpress.apply(model, TokenMerging(r=schedule, grid=True)) as run:
        state = TowerMerge(schedule, cls)  # the state the runtime gives one merging tower call
        run._t.merging = state
        try:
            hooked = tower(pixels, output_hidden_states=True).hidden_states[depth]
        finally:
            run._t.merging = None
        expected = reference_tower(tower, pixels, schedule, cls)
    assert hooked.shape == expected.shape == (4, side * side + cls - sum(schedule), expected.shape[-1])
    torch.testing.assert_close(hooked, expected, atol=1e-5, rtol=1e-4)
    assert state.done[:depth] == list(schedule)


@pytest.mark.parametrize("family", ["siglip", "dinov2", "tiny_next_video"])
def test_r0_is_the_uncompressed_model(family, request, clip_frames):
    loaded = request.getfixturevalue(family)
    inputs = build_inputs(loaded.processor, clip_frames[:4], "What happens?")
    with torch.no_grad():
        base = loaded.model(**inputs).logits
        with vidpress.apply(loaded.model, vidpress.ToMe(r=0, grid=True)) as run:
            same = loaded.model(**inputs).logits
    assert torch.equal(base, same)
    assert (
        run.report.accounting.vision_merges
        == (0,) * vidpress.adapters.registry.adapter_for(loaded.model).feature_depth()
    )


def _report_and_estimate(loaded, method, frames, clip_frames, generate=False):
    inputs = build_inputs(loaded.processor, clip_frames[:frames], "What happens?")
    with torch.no_grad(), vidpress.apply(loaded.model, method) as run:
        if generate:
            loaded.model.generate(**inputs, max_new_tokens=3, do_sample=False)
        else:
            loaded.model(**inputs)
    report = run.report.accounting
    spec = spec_from_config(loaded.model.config, tokens_per_frame=report.spec.tokens_per_frame)
    stages = method.build() if hasattr(method, "build") else method
    planned = estimate(spec, frames, stages, text_tokens=report.other_tokens - spec.extra_visual)
    return report, planned


def test_merged_block_counts_are_hand_counted(siglip, dinov2, clip_frames):
    # SigLIP 8x8 patches, 2 layers, 16 tokens per frame: retention 1 leaves 16 = 64 - 32 - 16
    report, planned = _report_and_estimate(siglip, vidpress.ToMe(retention=1.0), 8, clip_frames)
    assert report.vision_merges == planned.vision_merges == (32, 16)
    assert report.prefill_visual[0] == planned.prefill_visual[0] == 8 * 16
    # DINOv2 (CLS protected), 3 layers: retention 0.5 leaves 8 of 64 (geometric 64 -> 32 -> 16 -> 8)
    report, planned = _report_and_estimate(dinov2, vidpress.ToMe(retention=0.5), 4, clip_frames)
    assert report.vision_merges == planned.vision_merges == (32, 16, 8)
    assert report.prefill_visual[0] == planned.prefill_visual[0] == 4 * 8
    assert report.projector_flops == pytest.approx(planned.projector_flops)
    assert report.projector_flops == pytest.approx(estimate(planned.spec, 4).projector_flops * 8 / 64)
    assert report.vision_flops == pytest.approx(planned.vision_flops)
    # per frame: patch embedding of 65 tokens; attention on 65, 33, 17 tokens, the MLP on 33, 17, 9 (d 32, m 64)
    d, m = 32, 64
    layers = sum(4 * n * d * d + 2 * n * n * d + 2 * left * d * m for n, left in ((65, 33), (33, 17), (17, 9)))
    assert report.vision_flops == 4 * (65 * 3 * 14 * 14 * d + layers)


def test_merged_block_orders_and_places_tokens_by_their_first_patch(dinov2, clip_frames):
    """fixed: in order of each merged token's first patch, at the model's token over it; faithful: ToMe's order,
    numbered contiguously. Both hold the same tokens."""
    inputs = build_inputs(dinov2.processor, clip_frames[:2], "What happens?")
    blocks = {}
    for mode in ("fixed", "faithful"):
        with torch.no_grad(), vidpress.apply(dinov2.model, vidpress.ToMe(retention=0.5, mode=mode)) as run:
            dinov2.model(**inputs)
        blocks[mode] = run.last_session
    assert blocks["fixed"].kept.shape == blocks["faithful"].kept.shape
    assert vidpress.ToMe(retention=0.5, mode="faithful").build().pre_llm.positions == "contiguous"
    groups = torch.tensor([[[0, 1, 2, 2], [1, 0, 2, 2]]])  # 2 frames of 2x2 patches on a 1x1 model grid
    merged = torch.arange(2 * 3 * 2, dtype=torch.float32).view(1, 2, 3, 2)[:, :, :3]
    from vidpress.tokens import VisualTokens

    tokens = VisualTokens(
        torch.zeros(1, 2, 1, 2), (1, 1), extra=torch.zeros(1, 0, 2), merged=merged[:, :, :3], merged_groups=groups
    )
    packed = MergedBlock()(tokens)
    # frame 1: token 1 holds patch 0, token 0 patch 1, token 2 patches 2-3 -> order 1, 0, 2
    assert packed.features[0, :, 0].tolist() == [0.0, 2.0, 4.0, 8.0, 6.0, 10.0]
    assert packed.source[0].tolist() == [0, 0, 0, 1, 1, 1]  # every token sits at its frame's one model token


@pytest.mark.parametrize(
    "method",
    [
        "grid",
        "grid+visionzip",
        "grid+dycoke",
        "grid+frames",
        "merged+fastv",
    ],
)
def test_compositions_keep_the_report_equal_to_the_calculator(method, siglip, clip_frames):
    parts = {
        "grid": vidpress.ToMe(r=(20, 10), grid=True),
        "merged": vidpress.ToMe(retention=1.0),
        "visionzip": vidpress.VisionZip(retention=0.25),
        "dycoke": vidpress.DyCoke(l=1),
        "frames": vidpress.UniformFrames(retention=0.25),
        "fastv": vidpress.FastV(k=1, retention=0.5),
    }
    composed = vidpress.compose(*(parts[p] for p in method.split("+")))
    report, planned = _report_and_estimate(siglip, composed, 8, clip_frames, generate=True)
    assert report.prefill_visual == planned.prefill_visual
    assert report.vision_flops == pytest.approx(planned.vision_flops)
    assert report.projector_flops == pytest.approx(planned.projector_flops)
    assert report.prefill_flops == pytest.approx(planned.prefill_flops)
    if "frames" in method:
        assert report.encoded_frames == 2


def test_refusals(siglip, tiny_next_video, tiny_qwen):
    with pytest.raises(IncompatibleStagesError, match="SigLIP/CLIP/DINOv2"):
        vidpress.apply(tiny_qwen.model, vidpress.ToMe(r=2, grid=True))
    with pytest.raises(IncompatibleStagesError, match="grid=True"):
        vidpress.apply(tiny_next_video.model, vidpress.ToMe(r=(8,)))
    with pytest.raises(BudgetError, match="leaves 64 of 64"):
        vidpress.apply(siglip.model, vidpress.ToMe(r=0))
    with pytest.raises(BudgetError, match="no fewer than 16 of 64"):
        vidpress.apply(siglip.model, vidpress.ToMe(retention=0.5))
    with pytest.raises(IncompatibleStagesError, match="no \\(F, T\\) layout for VisionZip"):
        vidpress.apply(siglip.model, vidpress.compose(TokenMerging(retention=1.0), vidpress.VisionZip()))
    with pytest.raises(IncompatibleStagesError, match="no merged block"):
        vidpress.apply(siglip.model, vidpress.compose(TokenMerging(r=4, grid=True), MergedBlock()))
    eager = random_model(layers=2, hidden=64, image_size=112, attn_implementation="eager")
    with vidpress.apply(eager.model, vidpress.ToMe(r=4, grid=True)):
        pass


def test_bench_skips_a_cell_the_model_refuses_with_a_note(tiny, clip_frames):
    """The tiny model's 2-layer tower cannot merge 16 patches down to 1 (at most half per layer): the benchmark
    notes the cell and goes on, instead of stopping the matrix."""
    from vidpress.bench import run_cells

    notes = []
    cells = [("tome", 0.25, vidpress.ToMe.at_retention(0.25)), ("frames", 0.25, vidpress.UniformFrames(retention=0.25))]
    rows = run_cells(
        tiny.model, tiny.processor, clip_frames[:4], "What?", cells, new_tokens=1, progress=False, notes=notes
    )
    assert [r["method"] for r in rows] == ["uncompressed", "frames"]
    assert len(notes) == 1 and notes[0].startswith("tome @ 25%: skipped") and "no fewer than 4 of 16" in notes[0]
    with pytest.raises(BudgetError):
        run_cells(tiny.model, tiny.processor, clip_frames[:4], "What?", cells[:1], new_tokens=1, progress=False)
