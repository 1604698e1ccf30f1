"""Text-only control for the testbed: can the LM answer the procedural questions from a perfect description?

    python benchmarks/testbed_text_control.py zero-shot          # letter and option-likelihood scoring, no training
    python benchmarks/testbed_text_control.py lora --lr 1e-3     # LoRA on the answer letter, validation every 20 steps

Replaces the video with its ground-truth text ("Scene 1: 2 red circles on a gray background. ...") and asks
the same lettered questions as ``vidpress eval``. If the LM cannot learn them from text, no projector can make
it learn them from video: this separates the vision path from the language model as the bottleneck.
"""

import argparse
import time

import numpy as np
import torch

from vidpress.evaluate import choice_prompt, letter_token_ids
from vidpress.models.default import default_model
from vidpress.testbed.scenes import make_split
from vidpress.testbed.lora import add_lora
from vidpress.testbed.train import video_questions


def describe(sample) -> str:
    return " ".join(f"Scene {i + 1}: {s.count} {s.color} {s.shape}{'s' if s.count > 1 else ''} on a {s.background} "
                    f"background." for i, s in enumerate(sample.scenes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("zero-shot", "lora"))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16, help="questions per step")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = default_model(image_size=112)
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    letters = letter_token_ids(loaded.processor)
    lm = model.model.language_model

    def ids(sample, text: str) -> torch.Tensor:
        conversation = [{"role": "user", "content": [{"type": "text", "text": describe(sample) + "\n" + text}]}]
        prompt = loaded.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return tokenizer(prompt, return_tensors="pt").input_ids[0]

    def letter_logits(rows):
        batch = torch.nn.utils.rnn.pad_sequence([r for r, _ in rows], batch_first=True, padding_side="left")
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r, _ in rows], batch_first=True,
                                               padding_side="left")
        return model.lm_head(lm(input_ids=batch, attention_mask=mask).last_hidden_state[:, -1])[:, letters]

    val = [q for s in make_split("validation", 32) for q in video_questions(s)]
    val_rows = [(ids(q, choice_prompt(q)), q.question.answer) for q in val]

    def accuracy() -> float:
        with torch.inference_mode():
            hits = [int(row.argmax()) == a for i in range(0, len(val_rows), 32)
                    for row, (_, a) in zip(letter_logits(val_rows[i:i + 32]), val_rows[i:i + 32])]
        return float(np.mean(hits))

    if args.mode == "zero-shot":
        likelihood = []
        with torch.inference_mode():
            for q in val:  # option-likelihood: the options' text as the answer, no letters
                prompt = ids(q, f"{q.question.text} Options: {', '.join(q.question.options)}.")
                scores = []
                for option in q.question.options:
                    o = tokenizer(option, add_special_tokens=False, return_tensors="pt").input_ids[0]
                    hidden = lm(input_ids=torch.cat([prompt, o])[None]).last_hidden_state[0, len(prompt) - 1:-1]
                    scores.append(torch.log_softmax(model.lm_head(hidden), -1)[torch.arange(len(o)), o].sum())
                likelihood.append(int(torch.stack(scores).argmax()) == q.question.answer)
        print(f"{len(val)} validation questions, chance 25 %: letter {accuracy():.1%}, "
              f"option likelihood {np.mean(likelihood):.1%}")
        return
    train = [q for s in make_split("train", 400) for q in video_questions(s)]
    rows = [(ids(q, choice_prompt(q)), q.question.answer) for q in train]
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
        loss = torch.nn.functional.cross_entropy(letter_logits(chunk), torch.tensor([a for _, a in chunk]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 20 == 0:
            print(f"step {step}: loss {loss.item():.3f}, validation {accuracy():.1%}, {time.time() - started:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()
