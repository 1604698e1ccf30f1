"""Peers and controls: counts at a budget, keep-everything equivalence, composition."""

import math

import pytest
import torch

import vidpress
from vidpress.accounting import estimate, spec_from_config
from vidpress.errors import BudgetError
from vidpress.method import compose
from vidpress.methods import FastV, FastVID, PyramidDrop, RandomTokens, UniformFrames, UniformSpatial, VisionZip
from vidpress.stages.decode.dynamic_kv import DynamicKV
from vidpress.stages.prefill.schedule import solve_keep
from vidpress.tokens import VisualTokens

CONTROLS = (UniformFrames, UniformSpatial, RandomTokens)


def _tokens(frames=8, per_frame=16):
    return VisualTokens(torch.randn(1, frames, per_frame, 4), (4, 4))


def _scenes(frames=8, per_frame=16, cut=4):
    """Two scenes (frames [0, cut) and [cut, F)) of noisy constant features, a ranked encoder attention
    (token t of every frame receives t + 1), keys equal to the features, and one newline token."""
    torch.manual_seed(0)
    base = torch.zeros(frames, 1, 4)
    base[:cut, :, 0], base[cut:, :, 1] = 1.0, 1.0
    feats = (base + 0.05 * torch.randn(frames, per_frame, 4))[None]
    attention = torch.arange(1.0, per_frame + 1).expand(1, frames, per_frame)
    return VisualTokens(feats, (4, 4), extra=torch.full((1, 1, 4), 9.0), attention=attention, keys=feats)


def test_same_retention_means_same_visual_tokens_for_every_pre_llm_method():
    tokens = _scenes()
    for r, budget in ((0.25, 32), (0.1, 13), (0.5, 64)):
        counts = {cls.name: cls(retention=r).build().pre_llm(tokens) for cls in (*CONTROLS, VisionZip, FastVID)}
        assert {getattr(p, "num_visual", p.num_kept) for p in counts.values()} == {budget}, r


def test_visionzip_keeps_dominant_tokens_and_merges_the_rest_by_hand():
    tokens = _scenes()
    packed = VisionZip(retention=0.25).build().pre_llm(tokens)  # 4 per frame: round(4/7) = 1 contextual, 3 dominant
    assert packed.num_kept == 32 + 1 and packed.extra_tokens == 1 and packed.frame_of[0, -1] == -1
    assert torch.equal(packed.features[0, -1], tokens.extra[0, 0])
    x = tokens.features[0, 0]
    # contextual: targets strided over the 13 others (step 13 -> token 0 alone), all others join it; fixed
    # mode keeps source order, so the contextual token (source 0) precedes the three most attended
    assert packed.source[0, :4].tolist() == [0, 13, 14, 15] and packed.source[0, -1] == 128  # newline: its own
    assert torch.allclose(packed.features[0, 0], x[:13].mean(0), atol=1e-6)
    assert torch.equal(packed.features[0, 1:4], x[[13, 14, 15]])
    faithful = VisionZip(retention=0.25, mode="faithful").build().pre_llm(tokens)  # dominant, then contextual
    assert torch.equal(faithful.features[0, :3], x[[13, 14, 15]])
    assert torch.allclose(faithful.features[0, 3], x[0] + x[1:13].mean(0), atol=1e-6)
    at_10 = VisionZip(retention=0.1).build().pre_llm(tokens)  # 13 = 2 x 5 + 1 x 3: round(2/7) = 0 contextual
    assert torch.bincount(at_10.frame_of[0, :-1], minlength=8).tolist() == [2] * 5 + [1] * 3
    assert torch.equal(at_10.features[0, :2], x[[14, 15]])


def test_fastvid_segments_and_budgets_by_hand():
    tokens = _scenes()
    stage = FastVID(retention=0.25, min_segments=2, threshold=0.5).build().pre_llm
    packed = stage(tokens)
    # DySeg cuts at the scene change only: segments 0-3 and 4-7; 4 per frame: round(0.4 * 4) = 2 anchors, 2
    # chosen by attention; the 2 x 4 = 8 anchors of a segment go to its last frame (stride 4, counted from the end).
    assert packed.num_visual == 32 and packed.events[0, :-1].bincount().tolist() == [16, 16]
    assert torch.bincount(packed.frame_of[0, :-1], minlength=8).tolist() == [2, 2, 2, 10, 2, 2, 2, 10]
    f1 = packed.frame_of[0] == 1
    assert torch.equal(packed.features[0, f1], tokens.features[0, 1, [14, 15]])  # attention-chosen = most attended
    at_10 = stage.__class__(retention=0.1, min_segments=2, threshold=0.5)(tokens)
    # 13 = [2]*5 + [1]*3; anchors round(0.8) = 1, round(0.4) = 0, so one attention-chosen token per frame and
    # 4 + 1 anchors on frames 3 and 7
    assert torch.bincount(at_10.frame_of[0, :-1], minlength=8).tolist() == [1, 1, 1, 5, 1, 1, 1, 2]
    faithful = stage.__class__(retention=0.1, min_segments=2, threshold=0.5, mode="faithful")(tokens)
    assert faithful.num_visual == 8  # the reference keeps int(16 * 0.1) = 1 per frame, not the budget of 13
    # r = 0.25: retain 4, int(4 * 0.4) = 1 anchor, 3 by attention; the last frame of each segment takes 1 * 4 // 1
    faithful = stage.__class__(retention=0.25, min_segments=2, threshold=0.5, mode="faithful")(tokens)
    assert torch.bincount(faithful.frame_of[0, :-1], minlength=8).tolist() == [3, 3, 3, 7, 3, 3, 3, 7]
    with pytest.raises(BudgetError, match="anchor frame"):  # 3 * 8 // 1 = 24 anchors of 11 candidates
        stage.__class__(retention=0.5, min_segments=1, threshold=0.0, anchor_stride=8, mode="faithful")(tokens)
    with pytest.raises(BudgetError, match="c=9"):
        stage.__class__(min_segments=9, mode="faithful")(tokens)
    assert stage.__class__(min_segments=9)(tokens).num_visual == 32  # fixed: at most F segments


def _spec(layers=8):
    return spec_from_config(
        {
            "text_config": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": layers,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            },
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "image_size": 112,
                "patch_size": 14,
                "model_type": "siglip_vision_model",
            },
        }
    )


def test_controls_keep_hand_computed_tokens():
    keep = {cls: {r: cls(retention=r).build().pre_llm(_tokens()).keep[0] for r in (0.25, 0.1)} for cls in CONTROLS}
    # 8 frames x 16 tokens: 25 % -> 32 tokens, 10 % -> round(12.8) = 13, for every control alike
    assert {k.numel() for c in keep.values() for k in c.values()} == {32, 13}
    frames = keep[UniformFrames]
    assert (frames[0.25] // 16).unique().tolist() == [2, 6]  # two whole frames, evenly spread
    assert (frames[0.1] // 16).unique().tolist() == [4] and frames[0.1].numel() == 13
    spatial = keep[UniformSpatial]
    assert torch.bincount(spatial[0.25] // 16, minlength=8).tolist() == [4] * 8
    assert torch.bincount(spatial[0.1] // 16, minlength=8).tolist() == [2] * 5 + [1] * 3
    with pytest.raises(BudgetError):
        UniformFrames(retention=1.5)


def test_fastv_and_pdrop_counts_by_hand():
    spec = _spec(layers=8)
    n = 4 * 8 * 8 // 4 * 4  # 4x4 tokens per frame (112 px, patch 14 -> 8x8 -> pooled 4x4), 32 frames
    assert spec.tokens_per_frame == 16
    frames = 32
    n = frames * 16
    fastv = estimate(spec, frames, FastV(k=2, r=0.5).build())
    assert fastv.prefill_visual == [n, n] + [n // 2] * 6
    # retention 0.5 over 8 layers with K = 2: (2 + 6 lambda) / 8 = 0.5 -> lambda = 1/3
    assert solve_keep(0.5, [2], 8) == pytest.approx(1 / 3)
    at_half = estimate(spec, frames, FastV(k=2, retention=0.5).build())
    assert at_half.prefill_visual == [n, n] + [math.ceil(n / 3)] * 6
    pdrop = estimate(spec, frames, PyramidDrop().build())  # fractions of depth -> layers 2, 4, 6
    assert pdrop.prefill_visual == [n, n, n // 2, n // 2, n // 4, n // 4, n // 8, n // 8]
    with pytest.raises(BudgetError, match="unreachable"):
        estimate(spec, frames, FastV(k=2, retention=0.1).build())


@pytest.mark.parametrize(
    "method",
    [FastV(k=1, r=0.0), PyramidDrop(layers=(1, 2, 3), lam=1.0)]
    + [cls(retention=1.0) for cls in (*CONTROLS, VisionZip, FastVID)],
    ids=lambda m: m.label,
)
def test_keep_everything_equals_uncompressed(tiny, inputs, method):
    with torch.no_grad():
        reference = tiny.model(**inputs).logits
        with vidpress.apply(tiny.model, method):
            out = tiny.model(**inputs).logits
    assert torch.allclose(out, reference, atol=1e-5)


def test_composed_counts_are_the_composition_of_the_parts(tiny, inputs):
    composed = compose(UniformSpatial(retention=0.5), FastV(k=1, r=0.5), DynamicKV(l=3, p=0.5))
    with torch.no_grad(), vidpress.apply(tiny.model, composed) as run:
        tiny.model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    acc = run.report.accounting
    n = acc.visual_in
    entering = n // 2  # the pre-LLM part alone
    after = math.ceil(entering * 0.5)  # then FastV at layer 1
    assert acc.prefill_visual == [entering] + [after] * 3
    assert acc.decode_visual[3] == after - int(0.5 * after)  # DynamicKV leaves out P of layer 3's view
    spec = spec_from_config(tiny.model.config)
    assert estimate(spec, acc.frames, composed, text_tokens=acc.other_tokens - 1).prefill_visual == acc.prefill_visual


def test_fastv_generate_stays_consistent(tiny, inputs):
    with torch.no_grad(), vidpress.apply(tiny.model, FastV(k=2, r=0.75)) as run:
        out = tiny.model.generate(
            **inputs, max_new_tokens=20, min_new_tokens=20, do_sample=False, return_dict_in_generate=True
        )
    acc = run.report.accounting
    for layer in range(4):
        assert out.past_key_values.layers[layer].keys.shape[2] == acc.other_tokens + acc.stored_visual[layer] + 19
    assert acc.stored_visual[2] == math.ceil(acc.visual_in * 0.25)


def test_decode_stage_before_a_prefill_drop_is_refused(tiny, inputs):
    from vidpress.errors import IncompatibleStagesError

    composed = compose(FastV(k=2, r=0.5), DynamicKV(l=1, p=0.5))  # DyCoke selects at layer 0, FastV drops at 2
    with torch.no_grad(), vidpress.apply(tiny.model, composed), pytest.raises(IncompatibleStagesError, match="layer 2"):
        tiny.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)


def test_encoder_attention_matches_the_eager_attention_weights(tiny, inputs):
    from vidpress.adapters.encoder_attention import encoder_signals
    from vidpress.adapters.llava_onevision import LlavaOnevisionAdapter

    ADAPTER = LlavaOnevisionAdapter(tiny.model)

    tower = tiny.model.model.vision_tower
    pixels = inputs["pixel_values_videos"].flatten(0, 1)
    seen = {}
    handle = ADAPTER.encoder_attention().register_forward_pre_hook(
        lambda m, a, k: seen.update(hidden=a[0] if a else k["hidden_states"]), with_kwargs=True
    )
    tower.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            weights = tower(pixels, output_attentions=True).attentions[-1]  # (n, H, P, P)
    finally:
        tower.config._attn_implementation = "sdpa"
        handle.remove()
    received, keys = encoder_signals(ADAPTER.encoder_attention(), seen["hidden"], cls_row=False, chunk=5)
    assert torch.allclose(received, weights.mean((1, 2)), atol=1e-6)
    assert keys.shape == (pixels.shape[0], weights.shape[-1], 16)


@pytest.mark.parametrize(
    "method", [VisionZip(retention=0.25), FastVID(retention=0.25, min_segments=3)], ids=lambda m: m.name
)
def test_merging_peers_generate_and_match_the_calculator(tiny, inputs, method):
    with torch.no_grad(), vidpress.apply(tiny.model, compose(method, DynamicKV(l=2, p=0.5))) as run:
        out = tiny.model.generate(
            **inputs, max_new_tokens=20, min_new_tokens=20, do_sample=False, return_dict_in_generate=True
        )
    acc = run.report.accounting
    other = inputs["input_ids"].shape[1] - 48  # text and the newline stay; 48 = 12 frames x 4 tokens
    assert acc.prefill_visual == [12] * 4 and acc.other_tokens == other  # 25 % of 48
    for layer in range(4):
        assert out.past_key_values.layers[layer].keys.shape[2] == other + 12 + 19
    spec = spec_from_config(tiny.model.config)
    assert (
        estimate(
            spec, acc.frames, compose(method, DynamicKV(l=2, p=0.5)), text_tokens=acc.other_tokens - 1
        ).prefill_visual
        == acc.prefill_visual
    )


@pytest.mark.parametrize(
    "method", [VisionZip(retention=0.25), FastVID(retention=0.25, min_segments=3)], ids=lambda m: m.name
)
def test_merging_peers_put_tokens_at_their_sources_positions(tiny, inputs, method):
    seen = []
    hook = tiny.model.model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["position_ids"]), with_kwargs=True
    )
    try:
        with torch.no_grad(), vidpress.apply(tiny.model, method) as run:
            tiny.model(**inputs)
    finally:
        hook.remove()
    video = (inputs["input_ids"][0] == tiny.model.config.video_token_id).nonzero().flatten()
    session, positions = run.last_session, seen[0][0]
    block = session.visual[0].nonzero().flatten()
    assert len(block) == 12 and method.build().pre_llm.positions == "original"
    # each token sits at its source placeholder's position: frame placeholders only, increasing (source order)
    assert positions[block].tolist() == sorted(set(positions[block].tolist()))
    assert set(positions[block].tolist()) <= set(video[:48].tolist()) and positions[block].max() > video[11]
    text = session.kept[0] > video.max()
    assert torch.equal(positions[text], session.kept[0][text])  # text after the video: uncompressed positions
