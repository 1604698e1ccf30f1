"""`faithful` modes select what the reference code selects, in its order, with its counts and positions.

Each ``reference_*`` function below re-derives one reference implementation's arithmetic from reading it at
the pinned commit (written for these tests, not copied):

- DyCoke TTM: KD-TAO/DyCoke ``llava/model/llava_arch.py`` ``dycole_ttm`` (dd74634, pass-A fix 35cc532);
  decode pruning: ``llava/model/language_model/modeling_qwen2.py`` ``PrunableDynamicCache``.
- FastV: pkunlp-icler/FastV ``src/FastV/llava-hf/transformers/.../modeling_llama.py`` (d165972), layer K.
- PyramidDrop: Cooperx521/PyramidDrop ``llava/model/modeling_llama_pdrop.py`` ``pdrop_forward`` /
  ``pdrop_rank_drop`` (6444f30).
- FastVID: LunarShen/FastVID ``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py``
  (a40a109), DySeg to the sorted ``keep_indexs``.
- VidCom2: xuyang-liu16/VidCom2 ``token_compressor/vidcom2/vidcom2.py`` (d31b156), ``vidcom2_compression`` with
  the linear index mapper.
- CDPruner: Theia-4869/CDPruner ``llava/model/llava_arch.py`` (ed9c12d), ``encode_images``: relevance, kernel and
  the greedy MAP of the DPP (re-derived here from its definition: each step takes the token whose Schur complement
  against the picked set is largest).
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import vidpress
from vidpress.errors import BudgetError
from vidpress.methods import FastV, FastVID, PyramidDrop
from vidpress.stages import PreLLMStage
from vidpress.stages.decode.dynamic_kv import DynamicKV
from vidpress.stages.pre_llm.temporal_merge import TemporalMerge, ttm_references
from vidpress.tokens import LayerSignals, StageContext, VisualTokens

# -- DyCoke TTM ---------------------------------------------------------------------------------------------


def reference_ttm(x: torch.Tensor, per_frame: int, k: float) -> list[int]:
    """Indices into the flattened (F*T, D) ``x`` that the reference emits, in its order."""
    frames = x.shape[0] // per_frame
    keep = int((1 - k) * per_frame)
    frame = [x[f * per_frame : (f + 1) * per_frame] for f in range(frames)]
    slots = []
    for i in range(0, frames - 1, 2):  # pairs: i whole, i+1 against i (normalised tokens)
        sim = F.cosine_similarity(F.normalize(frame[i], dim=1), F.normalize(frame[i + 1], dim=1), dim=1)
        slots.append(list(range(i * per_frame, (i + 1) * per_frame)))
        slots.append((sim.topk(keep, largest=False).indices + (i + 1) * per_frame).tolist())
    for i in range(0, frames - 4, 4):  # skip-pairs: slot i+2 against the original frame i (raw tokens)
        sim = F.cosine_similarity(frame[i], frame[i + 2], dim=1)
        slots[i + 2] = (sim.topk(keep, largest=False).indices + (i + 2) * per_frame).tolist()
    return [index for slot in slots for index in slot]


def _frames(frames, per_frame, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, per_frame, dim, generator=g)


@pytest.mark.parametrize("frames", [5, 7, 9, 13, 16, 30, 33])
@pytest.mark.parametrize("k", [0.7, 0.5, 0.33])
def test_ttm_faithful_emits_the_reference_order(frames, k):
    x = _frames(frames, 36)
    packed = TemporalMerge(k=k, mode="faithful")(VisualTokens(x, (6, 6)))
    expected = reference_ttm(x[0].flatten(0, 1), 36, k)
    assert packed.source[0].tolist() == expected
    assert torch.equal(packed.features[0], x[0].flatten(0, 1)[expected])
    assert TemporalMerge(k=k, mode="faithful").positions == "contiguous"


def test_ttm_faithful_reference_count_and_order_at_32_frames():
    x = _frames(32, 196, dim=8)
    packed = TemporalMerge(k=0.7, mode="faithful")(VisualTokens(x, (14, 14)))
    expected = reference_ttm(x[0].flatten(0, 1), 196, 0.7)
    assert len(expected) == packed.num_kept == 3098
    assert packed.source[0].tolist() == expected
    # inside a pruned frame the order is ascending similarity, not position
    frame1 = packed.source[0, 196 : 196 + 58]
    assert not torch.equal(frame1, frame1.sort().values)


# F -> frames whose kept set differs between the modes: the last window's third frame that the reference's
# pass bounds leave whole, or an odd F's last frame that the reference drops (fixed keeps it whole).
DOCUMENTED = {7: {6}, 9: {8}, 16: {14}, 30: set(), 32: {30}, 33: {32}}


@pytest.mark.parametrize("frames", sorted(DOCUMENTED))
def test_ttm_fixed_differs_only_by_the_documented_quirks(frames):
    x = _frames(frames, 20)
    faithful = TemporalMerge(k=0.6, mode="faithful")(VisualTokens(x, (4, 5))).source[0]
    fixed = TemporalMerge(k=0.6, mode="fixed")(VisualTokens(x, (4, 5))).keep[0]
    assert torch.equal(fixed, fixed.sort().values)  # spatial order; original positions (fixed.positions)
    assert TemporalMerge(mode="fixed").positions == "original"
    differ = {
        f for f in range(frames) if set(faithful[faithful // 20 == f].tolist()) != set(fixed[fixed // 20 == f].tolist())
    }
    assert differ == DOCUMENTED[frames]
    refs_faithful, emitted = ttm_references(frames, "faithful")
    refs_fixed, _ = ttm_references(frames, "fixed")
    assert differ == {f for f in range(frames) if f not in emitted or refs_faithful.get(f) != refs_fixed.get(f)}


def test_ttm_faithful_order_reaches_the_llm_numbered_contiguously(tiny, inputs):
    seen = {}
    stage = TemporalMerge(k=0.7, mode="faithful")

    class Recorder(PreLLMStage):  # the same stage, keeping what it was given
        needs, positions = stage.needs, stage.positions

        def __call__(self, tokens, ctx):
            seen["features"] = tokens.features
            return stage(tokens, ctx)

    llm = tiny.model.model.language_model
    handle = llm.register_forward_pre_hook(
        lambda m, a, kw: seen.update(embeds=kw["inputs_embeds"], positions=kw["position_ids"]), with_kwargs=True
    )
    try:
        with torch.no_grad(), vidpress.apply(tiny.model, vidpress.compose(Recorder())):
            tiny.model(**inputs)
    finally:
        handle.remove()
    expected = reference_ttm(seen["features"][0].flatten(0, 1), 4, 0.7)
    start = int((inputs["input_ids"][0] == tiny.model.config.video_token_id).nonzero()[0])
    block = seen["embeds"][0, start : start + len(expected)]
    assert torch.allclose(block, seen["features"][0].flatten(0, 1)[expected].to(block.dtype))
    assert seen["positions"][0].tolist() == list(range(seen["embeds"].shape[1]))


# -- DyCoke decode pruning -----------------------------------------------------------------------------------


def test_dynamic_kv_faithful_stability_ignores_the_last_visual_token():
    scores = torch.rand(1, 10, generator=torch.Generator().manual_seed(0))
    moved = scores.clone()
    moved[0, -1] = 50.0  # only the last visual token's attention changes
    for mode, stable in (("faithful", True), ("fixed", False)):
        stage, ctx = DynamicKV(l=1, p=0.5, mode=mode), StageContext(num_layers=4)
        first = stage(LayerSignals(0, scores), ctx)
        second = stage(LayerSignals(0, moved), ctx)
        # reference: cosine over the N - 1 = 9 candidates is 1 >= 0.9 -> no selection, full cache this step
        assert (second is None) == stable, mode
    assert first.num_kept == int(9 * 0.5) + 1 and 9 in first.keep[0].tolist()  # int((N-1)(1-P)) + the last token
    assert second.num_kept == 5 and 9 in second.keep[0].tolist()  # fixed: all N compared, re-selected


# -- FastV ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "r", "count"), [(3097, 0.5, 1548), (6272, 0.9, 627), (577, 0.5, 288), (3098, 0.75, 774)])
def test_fastv_keeps_the_reference_count_and_tokens(n, r, count):
    scores = torch.rand(1, n, generator=torch.Generator().manual_seed(n))
    stage = FastV(k=2, r=r).build().prefill
    plan = stage(LayerSignals(1, scores, input_count=n))
    reference = scores[0].topk(round(n * (1 - r))).indices.sort().values
    assert plan.num_kept == count == reference.numel()
    assert torch.equal(plan.keep[0], reference)
    assert stage.positions == "original"  # the reference sets position_ids = keep_indexs


# -- PyramidDrop ---------------------------------------------------------------------------------------------


def test_pdrop_counts_are_floors_of_the_input_count():
    stage = PyramidDrop(layers=(8, 16, 24), lam=0.5).build().prefill.for_depth(32)
    alive, counts = 3098, []
    for layer in (8, 16, 24):
        alive = stage(LayerSignals(layer, torch.rand(1, alive), input_count=3098)).num_kept
        counts.append(alive)
    assert counts == [1549, 774, 387]  # int(3098 * 0.5 ** s); per-stage ceil would give 1549/775/388


def reference_pdrop_logits(model, inputs, drops, lam):
    """Last-token logits of the reference's prefill: after each drop layer's input is ranked by its *own*
    attention (input norm, q, k; last prompt token; head mean), keep int(N * lam^s) visual tokens and number
    the sequence 0..n-1 again. Returns (logits, kept logical indices per drop)."""
    lm = model.model.language_model
    ids = inputs["input_ids"]
    seen = {}
    handle = lm.register_forward_pre_hook(lambda m, a, kw: seen.update(embeds=kw["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)  # the uncompressed input embeddings (video features in place)
    handle.remove()
    with torch.no_grad():
        embeds = seen["embeds"]
        is_video = ids[0] == model.config.video_token_id
        positions = torch.nonzero(is_video).flatten()
        first, n = int(positions[0]), int(is_video.sum()) - 1  # the trailing newline is not a visual token
        hidden, logical, kept_sets = embeds, torch.arange(ids.shape[1]), []
        for index, layer in enumerate(lm.layers):
            pos = torch.arange(hidden.shape[1])[None]
            cos, sin = lm.rotary_emb(hidden, pos)
            if index in drops:
                stage = drops.index(index)
                attn = layer.self_attn
                normed = layer.input_layernorm(hidden)
                shape = (1, hidden.shape[1], -1, attn.head_dim)
                q = attn.q_proj(normed).view(shape).transpose(1, 2)
                k = attn.k_proj(normed).view(shape).transpose(1, 2)
                rotary = __import__(type(attn).__module__, fromlist=["x"]).apply_rotary_pos_emb
                q, k = rotary(q, k, cos, sin)
                k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                weights = (q[:, :, -1:] @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)).softmax(-1)
                current = int(n * lam**stage)
                visual = weights.mean(1)[0, 0, first : first + current]
                top = visual.topk(int(n * lam ** (stage + 1))).indices.sort().values + first
                keep = torch.cat([torch.arange(first), top, torch.arange(first + current, hidden.shape[1])])
                hidden, logical = hidden[:, keep], logical[keep]
                kept_sets.append(logical[first : first + top.numel()].tolist())
                pos = torch.arange(hidden.shape[1])[None]
                cos, sin = lm.rotary_emb(hidden, pos)
            hidden = layer(hidden, position_embeddings=(cos, sin), position_ids=pos, attention_mask=None)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return model.lm_head(lm.norm(hidden))[0, -1], kept_sets


def test_pdrop_faithful_matches_the_reference_prefill(tiny, inputs):
    method = PyramidDrop(layers=(1, 2, 3), lam=0.5, mode="faithful")
    expected, kept_sets = reference_pdrop_logits(tiny.model, inputs, [1, 2, 3], 0.5)
    with torch.no_grad(), vidpress.apply(tiny.model, method) as run:
        logits = tiny.model(**inputs).logits[0, -1]
    session = run.last_session
    for layer, kept, count in zip((1, 2, 3), kept_sets, (24, 12, 6)):  # int(48 * 0.5 ** s)
        layout = session.layout(layer)[0]
        assert session.kept[0, layout][session.visual[0, layout]].tolist() == kept and len(kept) == count
    assert torch.allclose(logits, expected, atol=1e-4)
    assert run.report.accounting.prefill_visual == [48, 24, 12, 6]


def test_pdrop_fixed_keeps_original_positions_and_the_first_drop(tiny, inputs):
    layer = tiny.model.model.language_model.layers[1]
    seen, sets = [], {}
    for mode in ("faithful", "fixed"):
        with torch.no_grad(), vidpress.apply(tiny.model, PyramidDrop(layers=(1, 2, 3), lam=0.5, mode=mode)) as run:
            handle = layer.register_forward_pre_hook(
                lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True
            )  # after vidpress's hook: what layer 1 gets
            try:
                tiny.model(**inputs)
            finally:
                handle.remove()
        sets[mode] = run.last_session.kept[0, run.last_session.layout(1)[0]].tolist()
    assert sets["faithful"] == sets["fixed"]  # same input, same scores at the first drop
    faithful, fixed = seen
    assert faithful[0].tolist() == list(range(faithful.shape[1]))
    assert fixed[0].tolist() == sets["fixed"] and fixed[0, -1] == inputs["input_ids"].shape[1] - 1


def test_pdrop_faithful_decodes_at_shifted_positions(tiny, inputs):
    seen = []
    layers = tiny.model.model.language_model.layers
    with torch.no_grad(), vidpress.apply(tiny.model, PyramidDrop(layers=(1, 2, 3), lam=0.5, mode="faithful")):
        hooks = [
            layers[i].register_forward_pre_hook(
                lambda m, a, kw, i=i: seen.append((i, kw["position_ids"].clone())), with_kwargs=True
            )
            for i in (0, 3)
        ]
        try:
            tiny.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        finally:
            for h in hooks:
                h.remove()
    prompt = inputs["input_ids"].shape[1]
    decode = [(i, p[0, -1].item()) for i, p in seen if p.shape[1] == 1]
    # layer 0 sees every prompt token; layer 3 sees 48 - 6 = 42 fewer, numbered from 0, and decodes after them
    assert decode == [(0, prompt), (3, prompt - 42), (0, prompt + 1), (3, prompt - 41)]


# -- FastVID -------------------------------------------------------------------------------------------------


def reference_fastvid(x, attention, r, c=8, tau=0.9, d=0.4, p=4, beta=0.6):
    """(sorted kept indices into F*T, their tokens) of the reference's FastVID block on one video."""
    frames, per_frame, dim = x.shape
    g = x.mean(1)
    g = g / g.norm(dim=1, keepdim=True)
    sim = (g[:-1] * g[1:]).sum(1)
    cuts = torch.unique(torch.cat([sim.topk(c - 1, largest=False).indices, (sim < tau).nonzero().flatten()]))
    bounds = [-1] + cuts.sort().values.tolist() + [frames - 1]
    sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    retain = int(per_frame * r)
    salient = retain - int(retain * d)
    context = retain - salient
    per_frame_context = [0] * frames
    start = 0
    for size in sizes:
        for o in range(size):
            if (size - 1 - o) % p == 0:
                per_frame_context[start + o] = context * size // ((size + p - 1) // p)
        start += size
    kept, tokens = [], []
    rest = []
    for f in range(frames):
        top = attention[f].topk(salient).indices
        kept += (f * per_frame + top).tolist()
        tokens += list(x[f, top])
        mask = torch.ones(per_frame, dtype=torch.bool)
        mask[top] = False
        rest.append(mask.nonzero().flatten())
    filtered = torch.stack([x[f, rest[f]] for f in range(frames)])

    def density_score(tok):
        dist = torch.cdist(tok.float(), tok.float()) / dim**0.5
        density = (-(dist.topk(4, dim=-1, largest=False).values ** 2).mean(-1)).exp()
        denser = density[None, :] > density[:, None]
        return torch.where(denser, dist, dist.max()).min(-1).values * density

    def merge(anchors, pool):
        unit = pool / pool.norm(dim=-1, keepdim=True)
        target = anchors / anchors.norm(dim=-1, keepdim=True)
        owner = (unit @ target.T).argmax(1)
        out = []
        for a in range(anchors.shape[0]):
            members = pool[owner == a]
            weight = max(1 / (members.shape[0] + 1), beta)
            mean = members.mean(0) if members.shape[0] else torch.zeros(dim)
            out.append(weight * anchors[a] + (1 - weight) * mean)
        return out

    start = 0
    for size in sizes:
        for o in range(size):
            f, count = start + o, per_frame_context[start + o]
            if count == 0:
                continue
            chosen = density_score(filtered[f]).topk(count).indices
            pool = filtered[f] if count == context else filtered[start : start + size].flatten(0, 1)
            kept += (f * per_frame + rest[f][chosen]).tolist()
            tokens += merge(filtered[f][chosen], pool)
        start += size
    order = torch.tensor(kept).argsort()
    return torch.tensor(kept)[order], torch.stack(tokens)[order]


def _video(scene_lengths, per_frame, dim=32, seed=0):
    """Scenes of noisy constant tokens (one random look per scene) and a random encoder attention."""
    g = torch.Generator().manual_seed(seed)
    looks = [torch.randn(1, per_frame, dim, generator=g).expand(n, -1, -1) for n in scene_lengths]
    x = torch.cat(looks) + 0.1 * torch.randn(sum(scene_lengths), per_frame, dim, generator=g)
    return x, torch.rand(x.shape[:2], generator=g)


@pytest.mark.parametrize(
    ("scenes", "per_frame", "r"),
    [
        ([3, 5, 8, 1, 9, 6], 49, 0.25),
        ([3, 5, 8, 1, 9, 6], 49, 0.1),
        ([12, 4, 7, 2, 5, 2], 49, 0.15),
        ([2, 6, 5, 3], 36, 0.2),
        ([1, 1, 9, 2, 3, 1, 13], 49, 0.4),
        ([4, 4, 5, 3, 11, 1, 2, 2], 196, 0.25),
    ],
)
def test_fastvid_faithful_selects_and_merges_like_the_reference(scenes, per_frame, r):
    x, attention = _video(scenes, per_frame)
    side = int(math.isqrt(per_frame))
    packed = FastVID(retention=r, mode="faithful")(
        VisualTokens(x[None], (side, side), attention=attention[None], keys=x[None])
    )
    kept, tokens = reference_fastvid(x, attention, r)
    assert packed.source[0].tolist() == kept.tolist()
    assert torch.allclose(packed.features[0], tokens, atol=1e-5)
    assert FastVID(mode="faithful").positions == "original"


def test_fastvid_fixed_differs_only_in_budget_and_merging():
    from vidpress.stages.pre_llm.budget import frame_budgets

    x, attention = _video([3, 5, 8, 1, 9, 6], 49)
    tokens = VisualTokens(x[None], (7, 7), attention=attention[None], keys=x[None])
    faithful, fixed = (FastVID(retention=0.25, mode=m)(tokens) for m in ("faithful", "fixed"))
    assert fixed.num_visual == round(0.25 * 32 * 49) and faithful.num_visual < fixed.num_visual
    # both take the most attended tokens of each frame: the reference 12 - int(12 * 0.4) = 8, fixed its
    # frame budget less round(0.4 * budget) anchors (13 -> 8, 12 -> 7)
    for f, budget in enumerate(frame_budgets(392, 32)):
        for packed, count in ((faithful, 8), (fixed, budget - round(0.4 * budget))):
            top = set((f * 49 + attention[f].topk(count).indices).tolist())
            assert top <= set(packed.source[0].tolist())
    assert FastVID(mode="fixed").positions == "original"


def test_fastvid_faithful_limits_and_fixed_beyond_them():
    x, attention = _video([4, 4, 4, 4, 4, 4, 4, 4], 196)  # 4-frame segments
    tokens = VisualTokens(x[None], (14, 14), attention=attention[None], keys=x[None])
    assert FastVID(retention=0.4, mode="faithful")(tokens).num_visual == 32 * 47 + 8 * 124  # where it runs
    with pytest.raises(BudgetError, match="156 anchors but has 137"):  # r = 0.5: int(98 * 0.4) * 4 > 196 - 59
        FastVID(retention=0.5, mode="faithful")(tokens)
    assert FastVID(retention=0.5)(tokens).num_visual == round(0.5 * 32 * 196)
    short = VisualTokens(x[None, :6], (14, 14), attention=attention[None, :6], keys=x[None, :6])
    with pytest.raises(BudgetError, match="c=8"):
        FastVID(mode="faithful")(short)
    assert FastVID()(short).num_visual == round(0.25 * 6 * 196)


def test_fastvid_faithful_runs_on_mrope(tiny_qwen, clip_frames):
    from vidpress.pipeline import build_inputs

    inputs = build_inputs(tiny_qwen.processor, clip_frames, "q")
    with (
        torch.no_grad(),
        vidpress.apply(tiny_qwen.model, FastVID(retention=0.5, min_segments=2, mode="faithful")) as run,
    ):
        tiny_qwen.model(**inputs)
    assert run.report.accounting.prefill_visual[0] < run.report.accounting.visual_in


# -- VidCom2 ------------------------------------------------------------------------------------------------


def reference_vidcom2(flat: torch.Tensor, per_frame: int, base_scale: float) -> list[int]:
    """Indices into the flattened (F*T, D) tokens the reference keeps, in its order (frame by frame, each frame's
    sorted)."""
    dim = flat.shape[1]
    variance = ((flat - flat.mean(0)) ** 2).mean(0)  # population variance per channel
    low = torch.topk(variance, int(dim * 0.5), largest=False).indices
    tokens = flat[:, low]
    frames = tokens.shape[0] // per_frame
    normed = torch.stack([F.normalize(tokens[f * per_frame : (f + 1) * per_frame], dim=-1) for f in range(frames)])
    video_mean = normed.reshape(-1, normed.shape[-1]).mean(0)
    widths = [2.0**k for k in range(-3, 2)]
    kept = []
    video_sim, frame_sim = [], []
    for f in range(frames):
        frame_mean = normed[f].mean(0)
        d_video = ((normed[f] - video_mean) ** 2).sum(-1)
        d_frame = ((normed[f] - frame_mean) ** 2).sum(-1)
        video_sim.append(sum(torch.exp(-d_video / (2 * a)) for a in widths))
        frame_sim.append(sum(torch.exp(-d_frame / (2 * a)) for a in widths))
    scores = torch.stack([-v.mean() for v in video_sim])
    probs = torch.exp((scores - scores.max()) / 0.01)
    probs = probs / probs.sum()
    for f in range(frames):
        scale = min(base_scale * (1 + probs[f] - probs.mean()), 1.0)
        k = max(1, int(torch.round(torch.as_tensor(scale * per_frame))))
        order = torch.topk(video_sim[f] + frame_sim[f], k, largest=False).indices
        kept += sorted(int(i) + f * per_frame for i in order)
    return kept


def _vidcom2_video(frames, per_frame, dim=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, per_frame, dim, generator=generator)
    x[frames // 3 : frames // 2] += 1.5 * torch.randn(1, 1, dim, generator=generator)  # frames unlike the rest
    return x


@pytest.mark.parametrize(
    "frames,per_frame,r", [(8, 16, 0.25), (7, 25, 0.3), (5, 9, 0.5), (13, 36, 0.15), (3, 49, 0.9), (9, 16, 1.0)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vidcom2_faithful_keeps_the_reference_tokens(frames, per_frame, r, seed):
    x = _vidcom2_video(frames, per_frame, seed=seed)
    plan = vidpress.VidCom2(retention=r, mode="faithful")(VisualTokens(x[None], (1, per_frame)))
    assert plan.keep[0].tolist() == reference_vidcom2(x.flatten(0, 1), per_frame, r)


@pytest.mark.parametrize("frames,per_frame,r", [(8, 16, 0.25), (7, 25, 0.3), (13, 36, 0.15), (5, 9, 0.77)])
def test_vidcom2_fixed_keeps_the_budget_and_the_reference_ranking(frames, per_frame, r):
    x = _vidcom2_video(frames, per_frame)
    tokens = VisualTokens(x[None], (1, per_frame))
    fixed = vidpress.VidCom2(retention=r)(tokens).keep[0]
    reference = reference_vidcom2(x.flatten(0, 1), per_frame, r)
    budget = max(1, round(r * frames * per_frame))
    assert len(fixed) == budget and len(set(fixed.tolist())) == budget
    counts = torch.bincount(fixed // per_frame, minlength=frames)
    ref_counts = torch.bincount(torch.tensor(reference) // per_frame, minlength=frames)
    assert (counts >= 1).all() and ((counts - ref_counts).abs() <= 2).all()  # the reference's split, to the budget
    for f in range(frames):  # within a frame, the same ranking: the smaller set is inside the larger
        mine = set(fixed[counts[:f].sum() : counts[: f + 1].sum()].tolist())
        theirs = {i for i in reference if i // per_frame == f}
        assert mine <= theirs or theirs <= mine


def test_vidcom2_keep_everything_only_in_fixed_mode():
    x = _vidcom2_video(6, 16)
    tokens = VisualTokens(x[None], (1, 16))
    assert vidpress.VidCom2(retention=1.0)(tokens).keep[0].tolist() == list(range(96))
    faithful = vidpress.VidCom2(retention=1.0, mode="faithful")(tokens).keep[0]
    assert len(faithful) < 96  # frames below the mean probability lose tokens even at base_scale 1
    assert vidpress.VidCom2(mode="faithful").kept_count(6, 16) is None


def test_vidcom2_refuses_what_the_reference_cannot_compute():
    from vidpress.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="leaves none"):
        vidpress.VidCom2(channel_share=0.4)(VisualTokens(torch.randn(1, 2, 4, 2), (2, 2)))
    with pytest.raises(InvalidParameterError, match="temperature"):
        vidpress.VidCom2(temperature=0)
    with pytest.raises(BudgetError, match="retention"):
        vidpress.VidCom2(retention=1.5)


# -- CDPruner -----------------------------------------------------------------------------------------------


def reference_cdpruner(features: torch.Tensor, text: torch.Tensor, count: int) -> list[int]:
    """The tokens the reference keeps (sorted): greedy MAP of the DPP with kernel r_i cos(x_i, x_j) r_j, r the
    min-max normalised negated mean cosine to the text, each step maximising the gain
    L_jj - L_jS L_SS^-1 L_Sj."""
    x = features.double()
    unit = x / x.norm(dim=-1, keepdim=True)
    t = text.double() / text.double().norm(dim=-1, keepdim=True)
    r = -(unit @ t.T).mean(-1)
    r = (r - r.min() + 1e-6) / (r.max() - r.min())
    kernel = r[:, None] * (unit @ unit.T) * r[None, :]
    chosen: list[int] = []
    for _ in range(count):
        if chosen:
            inner = kernel[chosen][:, chosen]
            cross = kernel[chosen]  # (|S|, N)
            gain = torch.diagonal(kernel) - (cross * torch.linalg.solve(inner, cross)).sum(0)
        else:
            gain = torch.diagonal(kernel).clone()
        gain[chosen] = -float("inf")
        chosen.append(int(gain.argmax()))
    return sorted(chosen)


def _cdpruner_inputs(frames, per_frame, dim=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, per_frame, dim, generator=generator)
    text = torch.randn(5, dim, generator=generator) + x.flatten(0, 1)[:5]  # a question close to a few tokens
    return x, text


@pytest.mark.parametrize("frames,per_frame,r", [(3, 9, 0.3), (5, 4, 0.45), (2, 16, 0.77), (7, 3, 0.25)])
@pytest.mark.parametrize("seed", [0, 1])
def test_cdpruner_faithful_keeps_the_reference_tokens(frames, per_frame, r, seed):
    x, text = _cdpruner_inputs(frames, per_frame, seed=seed)
    tokens = VisualTokens(x[None], (1, per_frame), text=text[None])
    plan = vidpress.CDPruner(retention=r, mode="faithful")(tokens)
    count = max(1, round(r * frames * per_frame))
    assert plan.keep[0].tolist() == reference_cdpruner(x.flatten(0, 1), text, count)


@pytest.mark.parametrize("frames,per_frame,r", [(3, 9, 0.3), (5, 16, 0.45)])
def test_cdpruner_fixed_runs_the_reference_per_frame_at_even_budgets(frames, per_frame, r):
    x, text = _cdpruner_inputs(frames, per_frame)
    plan = vidpress.CDPruner(retention=r)(VisualTokens(x[None], (1, per_frame), text=text[None]))
    budget = max(1, round(r * frames * per_frame))
    shares = [budget // frames + (f < budget % frames) for f in range(frames)]
    expected = [i + f * per_frame for f, k in enumerate(shares) for i in reference_cdpruner(x[f], text, k)]
    assert plan.keep[0].tolist() == expected


def test_cdpruner_follows_the_question_and_keeps_everything_at_retention_one():
    x, text = _cdpruner_inputs(4, 9)
    tokens = lambda t: VisualTokens(x[None], (1, 9), text=t[None])  # noqa: E731
    assert vidpress.CDPruner(retention=1.0)(tokens(text)).keep[0].tolist() == list(range(36))
    other = torch.randn(5, 48, generator=torch.Generator().manual_seed(9))
    a = vidpress.CDPruner(retention=0.25, mode="faithful")(tokens(text)).keep[0]
    b = vidpress.CDPruner(retention=0.25, mode="faithful")(tokens(other)).keep[0]
    assert not torch.equal(a, b)  # another question, another set
    no_text = vidpress.CDPruner(retention=0.25, mode="faithful")(VisualTokens(x[None], (1, 9))).keep[0]
    assert len(no_text) == 9  # diversity alone without a question


def test_cdpruner_refuses_more_tokens_than_its_kernel_can_diversify():
    x = torch.randn(1, 2, 16, 4)  # 32 tokens of width 4: the similarity kernel has rank 4
    with pytest.raises(BudgetError, match="span"):
        vidpress.CDPruner(retention=0.5, mode="faithful")(VisualTokens(x, (4, 4), text=torch.randn(1, 3, 4)))


def test_cdpruner_survives_zero_tokens_and_equal_relevance_where_the_reference_divides_by_zero():
    from vidpress.stages.pre_llm.cdpruner import dpp_kernel, relevance

    x = torch.randn(6, 8)
    text = torch.cat([torch.randn(2, 8), torch.zeros(1, 8)])  # a padding token's zero embedding
    assert torch.isfinite(relevance(x, text)).all()
    assert relevance(x, x[:1] * 0 + 1)[0] > 0 and torch.isfinite(dpp_kernel(torch.zeros(3, 8), torch.ones(3))).all()
    assert torch.equal(relevance(torch.ones(4, 8), text), torch.ones(4))  # every token equally relevant


# -- HoliTom ------------------------------------------------------------------------------------------------


def _reference_dpc_knn(x: torch.Tensor, count: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``cluster_dpc_knn`` on one row, with one draw of its noise below 1e-6: the draw that puts the
    lower index first among exactly equal densities (mutual nearest neighbours tie whenever k = 2)."""
    dist = torch.cdist(x.float(), x.float()) / (x.shape[-1] ** 0.5)
    density = (-(dist.topk(k, dim=-1, largest=False).values ** 2).mean(-1)).exp()
    density = density + 1e-6 * (len(x) - torch.arange(len(x))) / (len(x) + 1)
    higher = (density[None, :] > density[:, None]).float()
    parent = (dist * higher + dist.max() * (1 - higher)).min(-1).values
    return (parent * density).topk(count).indices.sort().values, dist


def _reference_cluster(x, centres, dist, beta):
    """The reference's ``merge_tokens_by_clustering`` with its default beta branch."""
    others = [i for i in range(len(x)) if i not in centres.tolist()]
    owner = dist[others][:, centres].argmin(-1)
    tokens = []
    for c, centre in enumerate(centres.tolist()):
        joined = x[others][owner == c]
        tokens.append(beta * x[centre] + (1 - beta) * joined.mean(0) if len(joined) else x[centre])
    return tokens


def reference_holitom(x, attention, r, tau=0.8, beta=0.6, d=0.0, knn=7, max_window=1024):
    """(frame-token index whose position each token takes, tokens) of the reference's outer-LLM block on one video
    ``x`` (F, T, D) in its order ("one_token" newline mode: windows in order; static tokens, then each frame's
    dominant and contextual tokens)."""
    frames, per_frame, _ = x.shape
    unit = F.normalize(x, dim=-1)
    sim = F.cosine_similarity(unit[:-1], unit[1:], dim=-1)
    run = torch.ones(frames, frames, per_frame)
    for s in range(frames - 1):
        cum = torch.cumprod(sim[s:] > tau, dim=0)
        run[s, s + 1 : s + 1 + len(cum)] = cum
    span = (torch.arange(frames)[None] - torch.arange(frames)[:, None]).clamp(min=0)
    pruned = (run.sum(-1) * span).float()
    dp, prev = torch.zeros(frames), [0] * frames
    for i in range(frames):
        best, start = (dp[i - 1] if i > 0 else 0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            value = (dp[j] if j >= 0 else 0) + pruned[j + 1, i]
            if value > best:
                best, start = value, j + 1
        dp[i], prev[i] = best, start
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((prev[i], i))
        i = prev[i] - 1
    total = frames * per_frame
    ratio = min(r / ((total - dp[-1].item()) / total), 1)
    sources, tokens = [], []
    for s, e in windows[::-1]:
        static = (sim[s:e] > tau).all(0) if e > s else torch.zeros(per_frame, dtype=torch.bool)
        positions = torch.arange(per_frame)
        if e > s:
            means = x[s : e + 1, static].mean(0)
            count = round(len(means) * ratio)
            if count > 0:
                centres, dist = _reference_dpc_knn(means, count, min(knn, count))
                sources += (s * per_frame + positions[static][centres]).tolist()
                tokens += _reference_cluster(means, centres, dist, beta)
        dynamic = positions[~static]
        keep = math.ceil(len(dynamic) * ratio)
        dominant = round(keep * (1 - d))
        for f in range(s, e + 1):
            top = attention[f, dynamic].topk(dominant).indices.sort().values
            sources += (f * per_frame + dynamic[top]).tolist()
            tokens += list(x[f, dynamic][top])
            if keep - dominant > 0:
                rest = torch.tensor([i for i in range(len(dynamic)) if i not in top.tolist()])
                feats = x[f, dynamic][rest]
                centres, dist = _reference_dpc_knn(feats, keep - dominant, min(knn, keep - dominant))
                sources += (f * per_frame + dynamic[rest][centres]).tolist()
                tokens += _reference_cluster(feats, centres, dist, beta)
    return sources, torch.stack(tokens)


def _holitom_video(scene_lengths, per_frame, dim=24, static_share=0.5, seed=0):
    """Scenes in which a share of the positions holds still (tiny noise) and the rest moves, with a random encoder
    attention."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for n in scene_lengths:
        look = torch.randn(1, per_frame, dim, generator=g)
        moving = torch.rand(per_frame, generator=g) > static_share
        frames = look + 0.02 * torch.randn(n, per_frame, dim, generator=g)
        frames[:, moving] = torch.randn(n, int(moving.sum()), dim, generator=g)
        parts.append(frames)
    x = torch.cat(parts)
    return x, torch.rand(x.shape[:2], generator=g)


@pytest.mark.parametrize(
    ("scenes", "per_frame", "r", "d", "knn"),
    [
        ([3, 1, 4], 16, 0.25, 0.0, 7),
        ([2, 5, 2], 25, 0.15, 0.0, 7),
        ([1, 1, 1, 4, 6], 36, 0.1, 0.0, 7),
        ([4, 3], 16, 0.3, 0.4, 3),
        ([5, 2, 1, 1], 49, 0.15, 0.5, 7),
        ([9], 9, 0.45, 0.3, 2),
    ],
)
def test_holitom_faithful_segments_selects_and_merges_like_the_reference(scenes, per_frame, r, d, knn):
    x, attention = _holitom_video(scenes, per_frame)
    side = math.isqrt(per_frame)
    stage = vidpress.methods.holitom.HoliTomMerge(retention=r, contextual_share=d, knn=knn, mode="faithful")
    packed = stage(VisualTokens(x[None], (side, side), attention=attention[None], keys=x[None]))
    sources, tokens = reference_holitom(x, attention, r, d=d, knn=knn)
    assert packed.source[0].tolist() == sources
    assert torch.allclose(packed.features[0], tokens, atol=1e-5)
    assert stage.positions == "contiguous"


def test_holitom_segmentation_is_the_reference_dynamic_programme():
    from vidpress.stages.pre_llm.holitom import frame_similarity, static_windows

    x, _ = _holitom_video([3, 1, 4, 2], 16)
    windows, saved = static_windows(frame_similarity(x), 0.8, 1024)
    assert windows == [(0, 2), (3, 3), (4, 7), (8, 9)]
    statics = [int((frame_similarity(x)[s:e] > 0.8).all(0).sum()) for s, e in windows]
    assert saved == sum((e - s) * n for (s, e), n in zip(windows, statics))
    # ties: the reference replaces its best only when a window saves strictly more, so the earlier split stays
    # (2 tokens still over frames 0-1, 2 others over frames 1-2: [0, 1] + [2] and [0] + [1, 2] both save 2)
    tie = torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9]])
    assert static_windows(tie, 0.8, 1024) == ([(0, 1), (2, 2)], 2)
    # a window may not be longer than max_window frames: the 4-frame scene splits
    assert all(e - s < 2 for s, e in static_windows(frame_similarity(x), 0.8, 2)[0])


def reference_holitom_inner(hidden, attention, r):
    """(kept indices ascending, their hidden states) of the reference's inner-LLM merge at layer K."""
    count = round(len(attention) * (1 - r))
    top = attention.topk(count).indices
    others = torch.tensor([i for i in range(len(attention)) if i not in top.tolist()])
    a, b = hidden[others], hidden[top]
    sim = (a @ b.T) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True).T)
    out = hidden.clone()
    for i, j in zip(others.tolist(), sim.argmax(-1).tolist()):
        out[top[j]] = (out[top[j]] + out[i]) / 2
    kept = top.sort().values
    return kept, out[kept]


@pytest.mark.parametrize(("n", "r"), [(37, 0.5), (50, 0.3), (9, 0.77), (64, 0.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_holitom_inner_merge_is_the_reference_running_average(n, r, seed):
    from vidpress.stages.prefill.similarity_merge import SimilarityMerge

    g = torch.Generator().manual_seed(seed)
    hidden, attention = torch.randn(n, 16, generator=g), torch.rand(n, generator=g)
    stage = SimilarityMerge(schedule=((2, 1 - r, 1 - r),), query_rows="last", count_rule="round", mode="faithful")
    plan = stage(LayerSignals(1, attention[None], hidden=hidden[None]))
    kept, states = reference_holitom_inner(hidden, attention, r)
    assert plan.keep[0].tolist() == kept.tolist()
    assert torch.allclose(plan.features[0], states, atol=1e-5)
    # fixed: the same kept set, each a plain mean of itself and what joined it
    fixed = dataclasses.replace(stage, mode="fixed")(LayerSignals(1, attention[None], hidden=hidden[None]))
    assert torch.equal(fixed.keep, plan.keep)
    weights = fixed.weights[0]
    assert torch.allclose(weights.sum(-1), torch.ones(len(kept)))
    assert torch.equal((weights > 0).sum(0), torch.ones(n, dtype=torch.long))  # every token in exactly one
    assert torch.allclose(fixed.features[0], weights @ hidden, atol=1e-5)


def test_holitom_refuses_what_the_reference_cannot_compute():
    from vidpress.errors import InvalidParameterError
    from vidpress.stages.prefill.similarity_merge import SimilarityMerge

    with pytest.raises(InvalidParameterError, match="r < 1"):
        vidpress.HoliTom(r=1.0)
    # round(3 * 0.1) = 0 kept: the reference's max over no kept token fails
    stage = SimilarityMerge(schedule=((2, 0.1, 0.1),), query_rows="last", count_rule="round")
    with pytest.raises(BudgetError, match="lower HoliTom's R"):
        stage(LayerSignals(1, torch.rand(1, 3), hidden=torch.randn(1, 3, 4)))
    with pytest.raises(InvalidParameterError, match="tau"):
        vidpress.HoliTom(tau=1.5)
    with pytest.raises(InvalidParameterError, match="HoliTom's K"):
        vidpress.HoliTom(knn=0)
