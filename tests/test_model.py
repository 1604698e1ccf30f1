"""DyCoke through a real transformers LLaVA-OneVision (tiny random weights) and its own generate."""

import pytest
import torch

import vidpress
from vidpress.errors import UnsupportedModelError
from vidpress.method import compose
from vidpress.stages import DecodeStage
from vidpress.stages.decode.dynamic_kv import DynamicKV
from vidpress.stages.pre_llm.temporal_merge import TemporalMerge


def greedy(model, inputs, n=24):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def test_keep_everything_matches_uncompressed(tiny, inputs):
    model = tiny.model
    with torch.no_grad():
        base = model(**inputs).logits
        reference = greedy(model, inputs)
        with vidpress.apply(model, vidpress.DyCoke(k=0, p=0)):
            assert torch.allclose(model(**inputs).logits, base, atol=1e-5)
            assert torch.equal(greedy(model, inputs), reference)
        # The reference's K=0 keeps every token but reorders each pruned frame by similarity (topk order) and
        # numbers the sequence contiguously, so faithful K=0 is not the uncompressed model.
        with vidpress.apply(model, vidpress.DyCoke(k=0, p=0, mode="faithful")):
            logits = model(**inputs).logits
        assert logits.shape == base.shape and not torch.allclose(logits, base, atol=1e-3)


def test_hooks_are_removed(tiny, inputs):
    model = tiny.model
    before = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    with torch.no_grad():
        base = model(**inputs).logits
        with vidpress.DyCoke().apply(model):
            model(**inputs)
        assert torch.equal(model(**inputs).logits, base)
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()) == before


def record_positions(model):
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True
    )
    return seen, handle


@pytest.mark.parametrize("mode", ["fixed", "faithful"])
def test_generate_positions_and_cache_consistent(tiny, inputs, mode):
    model = tiny.model
    frames, per_frame = 12, 4
    method = vidpress.DyCoke(k=0.7, l=2, p=0.5, mode=mode)
    kept = method.build().pre_llm(vidpress.tokens.VisualTokens(torch.zeros(1, frames, per_frame, 2), (2, 2))).num_kept
    seen, handle = record_positions(model)
    try:
        with vidpress.apply(model, method) as run, torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=24, min_new_tokens=24, do_sample=False, return_dict_in_generate=True
            )
    finally:
        handle.remove()
    prompt = inputs["input_ids"].shape[1]
    physical = prompt - frames * per_frame + kept
    assert out.sequences.shape[1] == prompt + 24
    assert all(layer.keys.shape[-2] == physical + 23 for layer in out.cache.layers)  # 23 decode forwards
    prefill, decode = seen[0][0], torch.cat([p[0] for p in seen[1:]])
    assert prefill.shape[0] == physical
    if mode == "fixed":  # kept tokens keep their original positions; text after the video too
        assert prefill[-1].item() == prompt - 1 and decode.tolist() == list(range(prompt, prompt + 23))
    else:  # the reference renumbers contiguously
        assert prefill.tolist() == list(range(physical))
        assert decode.tolist() == list(range(physical, physical + 23))
    report = run.report
    assert report.accounting.prefill_visual == [kept] * 4
    assert report.decode_steps == 23
    budget = method.build().decode.budget(kept)
    assert report.accounting.decode_visual[:2] == [kept, kept]
    assert all(budget <= v <= kept for v in report.accounting.decode_visual[2:])
    if mode == "fixed":
        assert report.accounting.decode_visual[2:] == [budget, budget]


class Recording(DecodeStage):
    """A decode stage that records DynamicKV's selections."""

    def __init__(self, inner):
        self.inner, self.needs, self.selections = inner, inner.needs, []

    @property
    def first_layer(self):
        return self.inner.first_layer

    def __call__(self, signals, ctx):
        plan = self.inner(signals, ctx)
        self.selections.append(None if plan is None else set(plan.keep[0].tolist()))
        return plan


def test_pruned_visual_kv_returns_during_generate(tiny, inputs):
    recorder = Recording(DynamicKV(l=2, p=0.7, tau=1.0))  # tau=1: re-select at every step
    stages = compose(TemporalMerge(k=0.0), recorder)
    with vidpress.apply(tiny.model, stages), torch.no_grad():
        tiny.model.generate(**inputs, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    picks = recorder.selections
    assert len(picks) == 23
    returned = [
        tok for t, s in enumerate(picks) for tok in picks[0] - s if any(tok in later for later in picks[t + 1 :])
    ]
    assert returned, "some visual token left out at one step is attended again at a later step"


def test_padded_batch_matches_single_requests(tiny, clip_frames):
    from vidpress.pipeline import build_inputs

    questions = ["What?", "What happens in this long video clip, please?"]
    batch = tiny.processor(
        text=[
            tiny.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}]
            )
            for q in questions
        ],
        videos=[clip_frames, clip_frames[::-1].copy()],
    )
    method = vidpress.DyCoke(k=0.7, l=2, p=0.5)
    with vidpress.apply(tiny.model, method), torch.no_grad():
        together = tiny.model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        for row, (q, frames) in enumerate(zip(questions, [clip_frames, clip_frames[::-1].copy()])):
            single = tiny.model.generate(
                **build_inputs(tiny.processor, frames, q), max_new_tokens=8, min_new_tokens=8, do_sample=False
            )
            assert together[row, -8:].tolist() == single[0, -8:].tolist()


def test_unsupported_model_lists_supported():
    with pytest.raises(UnsupportedModelError, match="LlavaOnevisionForConditionalGeneration"):
        vidpress.apply(torch.nn.Linear(2, 2), vidpress.DyCoke())


def test_text_only_request_passes_through(tiny):
    ids = tiny.processor.tokenizer("hello there", return_tensors="pt")
    with torch.no_grad():
        base = tiny.model(**ids).logits
        with vidpress.apply(tiny.model, vidpress.DyCoke()) as run:
            assert torch.equal(tiny.model(**ids).logits, base)
    with pytest.raises(LookupError):
        _ = run.report
