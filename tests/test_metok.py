"""METok: the three stages, their accounting, and decoding with per-layer KV lengths."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import shared_video

import vidpress
from vidpress.accounting import PRESETS, estimate, spec_from_config
from vidpress.errors import InvalidParameterError
from vidpress.stages.pre_llm.events import adjacent_similarity, plan_events, segment
from vidpress.stages.pre_llm.pooling import pool_grid
from vidpress.stages.prefill.attention_rank import AttentionRank
from vidpress.stages.prefill.schedule import keep_count
from vidpress.tokens import LayerSignals


def test_faithful_segmentation_takes_the_four_lowest_similarities():
    # unit vectors at cumulative angles: the similarity of frames i, i+1 is cos(step i)
    steps = torch.tensor([0.1, 0.1, 1.2, 0.1, 0.1, 0.9, 0.3, 1.0, 0.1, 1.1, 0.2])
    angles = torch.cat([torch.zeros(1), steps.cumsum(0)])
    frames = torch.stack([angles.cos(), angles.sin()], 1) * torch.linspace(1, 3, 12)[:, None]
    similarity = adjacent_similarity(frames)
    assert torch.allclose(similarity, steps.cos(), atol=1e-6)
    assert segment(similarity, "faithful") == [2, 5, 7, 9]
    assert segment(similarity, "faithful", boundaries=5) == [2, 5, 6, 7, 9]
    assert segment(similarity[:2], "faithful") == [0, 1]  # fewer gaps than boundaries: every gap


def test_pooling_strides_give_196_49_16_tokens_on_a_27_grid():
    grid = torch.randn(3, 27, 27, 8)
    assert [pool_grid(grid, s, "bilinear").shape[1] for s in (2, 4, 8)] == [196, 49, 16]
    assert [pool_grid(grid, s, "average").shape[1] for s in (2, 4, 8)] == [169, 36, 9]


def test_key_events_and_key_frames_choose_strides():
    frames = torch.zeros(10, 4)
    frames[:5, 0] = 1
    frames[5:, 1] = 1
    relevance = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.0, 0.3, 0.1, 0.2, 0.0, 0.05])
    plan = plan_events(
        frames,
        relevance,
        segmentation="faithful",
        boundaries=1,
        z=1.0,
        min_event_frames=4,
        key_events=1,
        key_frames=2,
        strides=(2, 4, 4, 8),
        grid=(27, 27),
    )
    assert plan.events == [(0, 4), (5, 9)] and plan.key_events == [0]
    assert plan.key_frames == [1, 3, 5, 7]
    assert plan.strides == [4, 2, 4, 2, 4, 4, 8, 4, 8, 8]
    assert plan.tokens == [49, 196, 49, 196, 49, 49, 16, 49, 16, 16]


def _frames_of(path, count):
    clip = vidpress.load_video(path, count, max_side=360).frames
    return np.stack([np.asarray(PIL.Image.fromarray(f).resize((320, 240))) for f in clip])


def test_adaptive_segmentation_finds_the_join_of_two_real_clips(tiny):
    frames = np.concatenate(
        [
            _frames_of(shared_video("opencv_tree.avi"), 10),
            _frames_of(shared_video("mmaction2_demo_arm_wrestling.mp4"), 10),
        ]
    )
    config = tiny.model.config
    with torch.no_grad():
        out = tiny.model.model.get_video_features(
            tiny.processor.preprocess(frames)[None],
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
    per_frame = out.pooler_output[0, :-1].view(20, -1, out.pooler_output.shape[-1]).mean(1)
    bounds = segment(adjacent_similarity(per_frame), "adaptive")
    assert any(abs(b - 9) <= 1 for b in bounds), bounds
    assert len(bounds) < 20 // 4


def test_attention_rank_budgets_per_event():
    scores = torch.arange(12, dtype=torch.float)[None]
    events = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3])
    key = torch.tensor([[True, False, True]])
    stage = AttentionRank(schedule=((3, 0.76, 0.38), (10, 0.76, 0.0), (19, 0.0, 0.0)))
    plan = stage(LayerSignals(2, scores, events, key))
    # key events keep max(1, ceil(0.76 n)): 4 of 5 and 3 of 3; the non-key one max(1, ceil(0.38 * 4)) = 2
    assert plan.keep.tolist() == [[1, 2, 3, 4, 7, 8, 9, 10, 11]]
    assert AttentionRank(schedule=((3, 0.76, 0.0),))(LayerSignals(2, scores, events, key)).num_kept == 7
    assert stage(LayerSignals(18, scores, events, key)).num_kept == 0
    assert keep_count(0.5, 1) == 1 and keep_count(0.0, 10) == 0 and keep_count(1.0, 7) == 7
    with pytest.raises(InvalidParameterError):
        AttentionRank(schedule=((0, 0.5, 0.5),))
    with pytest.raises(InvalidParameterError):
        AttentionRank(schedule=((3, 1.5, 0.5),))


KEEP_ALL = dict(mode="faithful", boundaries=0, strides=(2, 2, 2, 2), schedule=((1, 1.0, 1.0), (3, 1.0, 1.0)))


def test_keep_everything_equals_uncompressed(tiny, inputs):
    with torch.no_grad():
        reference = tiny.model(**inputs).logits
        with vidpress.apply(tiny.model, vidpress.METok(**KEEP_ALL)) as run:
            out = tiny.model(**inputs).logits
    assert torch.allclose(out, reference, atol=1e-5)
    # one event: the frames plus its newline, which METok counts as a visual token (it competes in stage 2)
    assert run.report.accounting.prefill_visual == [run.report.accounting.visual_in + 1] * 4


SCHEDULE = ((1, 0.7, 0.4), (3, 0.5, 0.0))
METHOD = dict(key_events=1, key_frames=3, schedule=SCHEDULE)


def _reference_step(model, embeds, positions, generated, layouts, stored):
    """Next-token logits computed without a cache: each layer runs the prompt entries alive at its input
    (prefill layout) plus every generated token; generated tokens see only the entries its cache keeps."""
    llm = model.model.language_model
    prompt = embeds.clone()
    gen = llm.embed_tokens(torch.tensor([generated], dtype=torch.long)) if generated else embeds[:, :0]
    gen_pos = positions[:, -1:] + 1 + torch.arange(len(generated))[None]  # decoding continues after the prompt
    for index, layer in enumerate(llm.layers):
        alive, keep = layouts[index][0], set(stored[index][0].tolist())
        n = alive.numel()
        hidden = torch.cat([prompt[:, alive], gen], 1)
        pos = torch.cat([positions[:, alive], gen_pos], 1)
        total = hidden.shape[1]
        mask = torch.ones(total, total).tril().bool()
        for column, base in enumerate(alive.tolist()):
            if base not in keep:
                mask[n:, column] = False
        out = layer(
            hidden, attention_mask=mask[None, None], position_ids=pos, position_embeddings=llm.rotary_emb(hidden, pos)
        )
        out = out[0] if isinstance(out, tuple) else out
        prompt[:, alive] = out[:, :n]
        gen = out[:, n:]
    last = gen[:, -1:] if generated else prompt[:, layouts[-1][0][-1:]]
    return model.lm_head(llm.norm(last))[:, -1]


def test_generate_matches_uncached_reference_with_per_layer_kv_lengths(tiny, inputs):
    captured = []
    llm = tiny.model.model.language_model
    hook = llm.register_forward_pre_hook(
        lambda m, a, k: captured.append((k.get("inputs_embeds"), k.get("position_ids"))), with_kwargs=True
    )
    try:
        with torch.no_grad(), vidpress.apply(tiny.model, vidpress.METok(**METHOD)) as run:
            out = tiny.model.generate(
                **inputs,
                max_new_tokens=22,
                min_new_tokens=22,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            session = run.last_session
    finally:
        hook.remove()
    acc = run.report.accounting
    other = acc.other_tokens
    # stage 2 applied the schedule per event; stage 3 trimmed layers >= 1 to the last layer's survivors
    assert acc.prefill_visual[1] == acc.prefill_visual[2] < acc.prefill_visual[0]
    assert 0 < acc.prefill_visual[3] < acc.prefill_visual[1]
    assert acc.stored_visual == [acc.prefill_visual[0]] + [acc.prefill_visual[3]] * 3
    generated = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    cache = out.past_key_values
    for layer in range(4):  # the final cache: stored prompt entries + every generated token but the last
        assert cache.layers[layer].keys.shape[2] == other + acc.stored_visual[layer] + len(generated) - 1
    embeds, positions = captured[0]  # fixed mode: pooled tokens at their windows' original positions
    assert positions[0, -1] == inputs["input_ids"].shape[1] - 1  # the last prompt token keeps its position
    layouts = [session.layout(layer) for layer in range(4)]
    stored = [session.layout(layer, stored=True) for layer in range(4)]
    with torch.no_grad():
        for step in range(len(generated)):
            expected = _reference_step(tiny.model, embeds, positions, generated[:step], layouts, stored)
            assert torch.allclose(out.logits[step], expected, atol=1e-4), step
    assert len(generated) >= 20


def test_runtime_counts_follow_the_event_plan(tiny, inputs):
    with torch.no_grad(), vidpress.apply(tiny.model, vidpress.METok(**METHOD)) as run:
        tiny.model(**inputs)
    plan = run.last_session.stage_info[0]
    assert run.report.accounting.prefill_visual[0] == sum(plan.tokens) + len(plan.events)  # + a newline per event
    assert run.report.as_dict()["events"]["boundaries"] == plan.boundaries


def test_config_only_counts_by_hand():
    spec = spec_from_config(
        {
            "text_config": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            },
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "image_size": 56,
                "patch_size": 14,
                "model_type": "siglip_vision_model",
            },
        }
    )
    method = vidpress.METok(
        mode="faithful", boundaries=1, key_events=1, key_frames=2, schedule=((1, 0.5, 0.5), (2, 0.5, 0.0))
    )
    acc = estimate(spec, 10, method.build(), events=2)
    # 4x4 grid: key event 2 frames x 4 + 3 x 1 + newline = 12; non-key 2 x 1 + 3 x 1 + newline = 6
    assert acc.prefill_visual == [18, 9, 3, 3]  # 6 + 3, then 3 + 0
    assert acc.stored_visual == [18, 3, 3, 3]


def test_longva_128_frames_meets_the_paper_savings():
    spec = PRESETS["longva-7b"]
    full = estimate(spec, 128)
    for mode in ("faithful", "fixed"):
        acc = estimate(spec, 128, vidpress.METok(mode=mode).build())
        assert 1 - acc.prefill_flops / full.prefill_flops >= 0.806
        assert 1 - acc.kv_bytes / full.kv_bytes >= 0.935
        assert acc.prefill_visual[19:] == [0] * 9


def test_siglip_relevance_path_runs_through_generate(tiny, inputs, tmp_path):
    """The reference's second-SigLIP relevance, with a tiny random SigLIP saved locally (offline)."""
    from transformers import SiglipConfig, SiglipModel

    from vidpress.stages.pre_llm.relevance import SiglipRelevance

    config = SiglipConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 300,
            "max_position_embeddings": 64,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 56,
            "patch_size": 14,
        },
    )
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(tmp_path)
    tiny.processor.tokenizer.save_pretrained(tmp_path)
    relevance = SiglipRelevance(str(tmp_path), tiny.processor.tokenizer, chunk=16)
    with torch.no_grad(), vidpress.apply(tiny.model, vidpress.METok(**METHOD, relevance=relevance)) as run:
        tiny.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    plan = run.last_session.stage_info[0]
    frames = inputs["pixel_values_videos"].shape[1]
    assert len(plan.relevance) == frames and len(set(plan.relevance)) > 1  # one real score per frame


def test_short_video_with_every_frame_kept_keeps_one_newline(tiny, inputs):
    """Several events with every frame at full resolution: a newline per event would overflow the video's
    placeholders, so only the last event keeps its newline (before, this raised BudgetError)."""
    method = vidpress.METok(
        key_events=1.0, key_frames=1.0, z=-10.0, min_event_frames=3, schedule=((1, 1.0, 1.0), (3, 1.0, 1.0))
    )
    with torch.no_grad(), vidpress.apply(tiny.model, method) as run:
        tiny.model(**inputs)
    assert len(run.last_session.stage_info[0].events) == 4  # 12 frames, at most 12 // 3 events
    assert run.report.accounting.prefill_visual[0] == 12 * 4 + 1


def test_metok_with_settings_runs_at_the_benchmark_retentions():
    """``metok`` alone is the paper's fixed point; ``metok[coarse=true]`` sweeps the retentions in its fixed-budget
    form, settings parsed as literals; a malformed entry or an unknown setting is refused before any work."""
    from vidpress.bench import plan, split_methods
    from vidpress.errors import InvalidParameterError, UnknownMethodError

    entries = split_methods("visionzip, metok[coarse=true;key_frames=4],metok")
    assert entries == ["visionzip", "metok[coarse=true;key_frames=4]", "metok"]
    cells, _ = plan(entries, [0.25, 0.1])
    assert [(name, r) for name, r, _ in cells] == [
        ("visionzip", 0.25),
        ("visionzip", 0.1),
        ("metok[coarse=true;key_frames=4]", 0.25),
        ("metok[coarse=true;key_frames=4]", 0.1),
        ("metok", None),
    ]
    method = cells[2][2]
    assert (method.retention, method.coarse, method.key_frames) == (0.25, True, 4)
    assert cells[4][2].retention is None
    with pytest.raises(InvalidParameterError, match="NAME\\[key=value"):
        plan(["metok[coarse=true"], [0.25])
    with pytest.raises(UnknownMethodError, match="coarsest"):
        plan(["metok[coarsest=true]"], [0.25])


def test_the_reference_layers_move_to_the_same_fractions_of_a_shallow_llms_depth():
    """METok's (3, 10, 19) were chosen for a 28-layer LLM: kept as they are where they fit (20 layers and more),
    else at the same fractions, distinct and past layer 0; stage 3 trims from the first of them."""
    from vidpress.stages.prefill.schedule import fit_layers

    assert fit_layers([3, 10, 19], 30, 28) == [3, 10, 19]
    assert fit_layers([3, 10, 19], 20, 28) == [3, 10, 19]
    assert fit_layers([3, 10, 19], 12, 28) == [1, 4, 8]  # round(1.29), round(4.29), round(8.14)
    assert fit_layers([3, 10, 19], 4, 28) == [1, 2, 3]  # 0.43 -> 1, 1.43 -> 1 -> 2 (past 1), 2.71 -> 3
    with pytest.raises(vidpress.BudgetError, match="3 pruning layers do not fit an LLM of 3 layers"):
        fit_layers([3, 10, 19], 3, 28)
    stages = vidpress.METok().build().for_depth(4)
    assert stages.prefill.layers == (1, 2, 3) and stages.decode.first_layer == 1
    deep = vidpress.METok().build().for_depth(30)
    assert deep.prefill.layers == (3, 10, 19) and deep.decode.first_layer == 3
    with pytest.raises(vidpress.BudgetError, match="do not fit an LLM of 4 layers"):
        vidpress.METok(layers=(3, 10, 20)).build().for_depth(4)  # a user's own layers are taken as given
