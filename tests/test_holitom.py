"""HoliTom in the library: the fixed budget under fuzzing, the inner-LLM merge in the runtime, the report against
the calculator, and what is refused. Its reference conformance is in test_reference_conformance.py."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vidpress
from vidpress.accounting import estimate, spec_from_config
from vidpress.errors import IncompatibleStagesError
from vidpress.pipeline import build_inputs
from vidpress.stages import Stages
from vidpress.stages.pre_llm.budget import visual_budget
from vidpress.stages.pre_llm.holitom import HoliTomMerge
from vidpress.stages.prefill.attention_rank import AttentionRank
from vidpress.tokens import VisualTokens


def still_video(frames, side, still, seed, dim=8):
    """Frames of one look in which a share ``still`` of the positions holds still and the rest is random."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, side * side, dim, generator=g) + 0.01 * torch.randn(1, frames, side * side, dim, generator=g)
    moving = torch.rand(side * side, generator=g) >= still
    x[:, :, moving] = torch.randn(1, frames, int(moving.sum()), dim, generator=g)
    return VisualTokens(x, (side, side), attention=torch.rand(1, frames, side * side, generator=g), keys=x)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.integers(1, 12),
    side=st.integers(1, 5),
    still=st.floats(0, 1),
    retention=st.floats(0.01, 1.0),
    tau=st.floats(0, 1),
    share=st.sampled_from([0.0, 0.5]),
    seed=st.integers(0, 99),
)
def test_fixed_keeps_its_budget_frame_by_frame_with_its_members(frames, side, still, retention, tau, share, seed):
    tokens = still_video(frames, side, still, seed)
    per_frame = side * side
    stage = HoliTomMerge(retention=retention, tau=tau, contextual_share=share, knn=3)
    packed = stage(tokens)
    count = visual_budget(retention, frames * per_frame)
    assert packed.num_visual == stage.kept_count(frames, per_frame) == count
    source = packed.source[0]
    assert torch.equal(source, source.sort().values) and source.unique().numel() == count
    assert torch.bincount(source // per_frame, minlength=frames).max() <= per_frame
    members = packed.members[0]
    combined = members.combine(tokens.features[0].flatten(0, 1), count)
    assert torch.allclose(combined, packed.features[0].float(), atol=1e-5)
    # every frame token's weights sum to at most 1 over the block: nothing is counted twice
    used = torch.zeros(frames * per_frame).index_add_(0, members.source, members.weight)
    assert float(used.max()) <= 1 + 1e-5


def test_static_windows_spend_the_budget_on_what_moves():
    # half the positions hold still over 8 frames: their means take one token each, the moving half the rest
    tokens = still_video(8, 4, 0.5, 0)
    packed = HoliTomMerge(retention=0.25)(tokens)
    moving = (tokens.features[0, 1:] - tokens.features[0, :-1]).norm(dim=-1).amax(0) > 0.5
    on_moving = moving[packed.source[0] % 16]
    assert int(on_moving.sum()) > int((~on_moving).sum())
    # retention 1 splits every window again: every token, unchanged
    full = HoliTomMerge(retention=1.0)(tokens)
    assert torch.equal(full.features[0], tokens.features[0].flatten(0, 1))


def test_inner_merge_keeps_fastvs_tokens_and_changes_their_states(tiny, inputs):
    outer = HoliTomMerge(retention=0.5)
    layers = []
    for prefill in (AttentionRank(schedule=((2, 0.5, 0.5),), query_rows="last", count_rule="round"), None):
        method = vidpress.HoliTom(retention=0.5, k=2, r=0.5) if prefill is None else Stages(outer, prefill)
        seen = []
        with torch.no_grad(), vidpress.apply(tiny.model, method) as run:
            # registered after the runtime's own hook: it sees layer 2's input after the drop (and merge)
            hook = tiny.model.model.language_model.layers[2].register_forward_pre_hook(
                lambda m, a, k, seen=seen: seen.append((a[0] if a else k["hidden_states"]).clone()),
                with_kwargs=True,
            )
            try:
                tiny.model(**inputs)
            finally:
                hook.remove()
        layers.append((run.report.accounting.prefill_visual, seen[0]))
    (fastv_counts, fastv_states), (holitom_counts, holitom_states) = layers
    assert fastv_counts == holitom_counts and holitom_counts[2] == round(holitom_counts[1] * 0.5)
    assert fastv_states.shape == holitom_states.shape
    changed = (fastv_states - holitom_states).abs().amax(-1)[0] > 1e-6
    # only visual tokens that took others in change; the text before and after them is the same
    assert 0 < int(changed.sum()) <= holitom_counts[2]
    assert not changed[:5].any() and not changed[-3:].any()


def test_report_agrees_with_the_calculator(tiny, inputs):
    method = vidpress.HoliTom(retention=0.4, k=2, r=0.5)
    with torch.no_grad(), vidpress.apply(tiny.model, method) as run:
        tiny.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    measured = run.report.accounting
    spec = spec_from_config(tiny.model.config, dtype_bytes=4)
    planned = estimate(spec, 12, method.build(), text_tokens=measured.other_tokens - spec.extra_visual)
    assert planned.prefill_visual == measured.prefill_visual
    assert planned.prefill_visual[1] == visual_budget(0.4, 48) and planned.prefill_visual[2] == round(19 * 0.5)
    assert planned.prefill_flops == pytest.approx(measured.prefill_flops)
    assert planned.kv_bytes == measured.kv_bytes


def test_merging_before_deepstack_ends_is_refused(tiny_qwen3, clip_frames):
    inputs = build_inputs(tiny_qwen3.processor, clip_frames, "What happens?")
    with pytest.raises(IncompatibleStagesError, match="merge at layer 3 or later"):
        with vidpress.apply(tiny_qwen3.model, vidpress.HoliTom(retention=0.5, k=1)):
            tiny_qwen3.model(**inputs)
