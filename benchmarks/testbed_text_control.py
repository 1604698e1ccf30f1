"""Text-only control for the testbed: can the LM answer the procedural questions from a perfect description?

    python benchmarks/testbed_text_control.py zero-shot          # no training
    python benchmarks/testbed_text_control.py lora --lr 1e-3     # LoRA on the answer text, validation every 20 steps
    python benchmarks/testbed_text_control.py lora --kinds first --steps 40   # one question kind

Replaces the video with its ground-truth text ("Scene 1: 2 red circles on a gray background. ...") and asks
the same questions as ``vidpress eval`` (options listed, the greedy answer matched to them). If the LM cannot
learn them from text, no projector can make it learn them from video: this separates the vision path from the
language model as the bottleneck.
"""

import argparse
import time

import numpy as np
import torch

from testbed.lora import add_lora
from testbed.qa import answer_target, video_questions
from vidpress.evaluate import ANSWER_TOKENS, choice_prompt, match_option
from vidpress.models.default import default_model
from vidpress.testbed.scenes import TYPES, describe, make_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("zero-shot", "lora"))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16, help="questions per step")
    parser.add_argument("--kinds", default=",".join(TYPES), help="comma-separated question kinds (default: all)")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    if set(kinds) - set(TYPES):
        parser.error(f"unknown question kinds {sorted(set(kinds) - set(TYPES))}; choose from {', '.join(TYPES)}")
    torch.manual_seed(0)
    loaded = default_model(image_size=112)
    model, processor, tokenizer = loaded.model, loaded.processor, loaded.processor.tokenizer
    end = tokenizer.eos_token_id

    def ids(sample) -> torch.Tensor:
        text = describe(sample.scenes) + "\n" + choice_prompt(sample)
        conversation = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        return tokenizer(
            processor.apply_chat_template(conversation, add_generation_prompt=True), return_tensors="pt"
        ).input_ids[0]

    val = [q for s in make_split("validation", 32) for q in video_questions(s) if q.question.kind in kinds]
    val_ids = [ids(q) for q in val]

    def accuracy() -> float:
        hits = []
        with torch.inference_mode():
            for q, prompt in zip(val, val_ids):
                out = model.generate(
                    input_ids=prompt[None],
                    max_new_tokens=ANSWER_TOKENS,
                    do_sample=False,
                    eos_token_id=end,
                    pad_token_id=end,
                )
                text = tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
                hits.append(match_option(text, q.question.options) == q.question.answer)
        return float(np.mean(hits))

    if args.mode == "zero-shot":
        print(f"{len(val)} validation questions, chance 25 %: {accuracy():.1%}")
        return
    train = [q for s in make_split("train", 400) for q in video_questions(s) if q.question.kind in kinds]
    rows = [(ids(q), answer_target(tokenizer, q.question.options[q.question.answer])) for q in train]
    for p in model.parameters():
        p.requires_grad_(False)
    add_lora(model, 16)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=args.lr)
    rng, started = np.random.default_rng(0), time.time()
    print(f"step 0: validation {accuracy():.1%} ({len(val)} questions; {len(rows)} training questions)", flush=True)
    for step in range(1, args.steps + 1):
        chunk = [rows[i] for i in rng.choice(len(rows), args.batch, replace=False)]
        seqs = [torch.cat([prompt, target]) for prompt, target in chunk]  # right-padded; pads come after the loss
        batch = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True)
        logits = model(input_ids=batch, attention_mask=mask).logits
        rows_, cols = zip(*[(i, len(p) - 1 + j) for i, (p, t) in enumerate(chunk) for j in range(len(t))])
        loss = torch.nn.functional.cross_entropy(logits[list(rows_), list(cols)], torch.cat([t for _, t in chunk]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 20 == 0:
            print(
                f"step {step}: loss {loss.item():.3f}, validation {accuracy():.1%}, {time.time() - started:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
