"""Describe, then answer: can the testbed answer from its own description of the video?

    python benchmarks/testbed_describe_then_answer.py                  # 320 videos, 80 caption steps, 4 rounds
    python benchmarks/testbed_describe_then_answer.py --rounds 8 --device cuda

Caption pre-training (``train(..., caption_steps=N)``) makes the testbed describe a held-out video mostly
right, yet training on the questions asked straight after the video stalls at 25-32 %, while the LM learns the
same questions from a true description in a few hundred examples (``testbed_text_control.py``). This script
asks each question in a second turn, after the description:

    user: <video> Describe each scene.   assistant: <description>   user: <question, options>   assistant: <option>

Training teacher-forces the true description (and keeps training the description itself); validation first
generates the model's own description (greedy), then the answer. Each round is ``--steps`` steps with a new
LoRA merged after it. Stop 11's run (this CPU, defaults): 24 / 21 / 33 / 36 / 39 % after 0-4 rounds
(``benchmarks/results/cpu-x86_64-2cores/testbed_training.md``). ``vidpress eval`` has no such protocol yet.
"""

import argparse
import time

import torch

from vidpress.evaluate import choice_prompt
from vidpress.models.default import default_model
from vidpress.testbed.align import align
from vidpress.testbed.qa import accuracy, answer_target, encode, greedy_answers, video_questions
from vidpress.testbed.scenes import describe, make_split
from vidpress.testbed.train import train

DESCRIPTION_TOKENS = 90  #: greedy description length cap (a 5-scene description is about 60 tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=320, help="training videos")
    parser.add_argument("--val-videos", type=int, default=24)
    parser.add_argument("--caption-steps", type=int, default=80, help="description-only steps (6 videos each)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="question steps (4 videos each) per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.rounds * args.steps * 4 > args.videos:
        parser.error(f"{args.rounds} rounds of {args.steps} steps use {args.rounds * args.steps * 4} videos, "
                     f"more than --videos {args.videos}: raise --videos")
    torch.manual_seed(0)
    started = time.time()
    loaded = default_model(image_size=112)
    model, processor, tokenizer = loaded.model.to(args.device), loaded.processor, loaded.processor.tokenizer
    train_samples, val_samples = make_split("train", args.videos), make_split("validation", args.val_videos)
    train_data = encode(model, processor, train_samples, 12, 112, caption=True)
    val_data = encode(model, processor, val_samples, 12, 112, caption=True)
    for p in model.parameters():
        p.requires_grad_(False)
    align(model, train_data, steps=600)
    end = torch.tensor([tokenizer.eos_token_id])

    def ids(text: str) -> torch.Tensor:
        return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)

    def second_turn(data, samples, descriptions):
        """Every question after its video's description; the description item itself kept (encode puts it last)."""
        out = []
        for video, sample, description in zip(data, samples, descriptions):
            request = video["questions"][-1]["ids"]
            questions = [{"ids": torch.cat([request, description, ids(
                              "\n<|im_start|>user\n" + choice_prompt(asked) + "<|im_end|>\n<|im_start|>assistant\n")]),
                          "target": answer_target(tokenizer, asked.question.options[asked.question.answer]),
                          "options": asked.question.options, "answer": asked.question.answer,
                          "kind": asked.question.kind} for asked in video_questions(sample)]
            out.append({**video, "questions": questions + [video["questions"][-1]]})
        return out

    def validate(label: str) -> None:
        descriptions_only = [{**v, "questions": v["questions"][-1:]} for v in val_data]
        with torch.inference_mode():
            texts = [t for i in range(0, len(val_data), 8)
                     for t in greedy_answers(model, descriptions_only[i:i + 8], tokenizer, DESCRIPTION_TOKENS)]
        right = accuracy(model, second_turn(val_data, val_samples, [torch.cat([ids(t), end]) for t in texts]),
                         tokenizer, batch=4)
        print(f"{label} ({time.time() - started:.0f} s): " + " ".join(f"{k} {v:.0%}" for k, v in right.items())
              + f"\n  first description: {texts[0]}", flush=True)

    direct_val = [{**v, "questions": v["questions"][:-1]} for v in val_data]  # train()'s own validation
    train(model, processor, steps=args.caption_steps, train_videos=args.videos, val_videos=args.val_videos,
          batch=6, lr=2e-4, lora_lr=1e-3, align_steps=0, caption_steps=args.caption_steps,
          eval_every=args.caption_steps, data=(train_data, direct_val), log=None)
    validate("after description pre-training")
    truth = second_turn(train_data, train_samples, [torch.cat([ids(describe(s.scenes)), end]) for s in train_samples])
    per_round = args.steps * 4  # each round on videos of its own
    for r in range(args.rounds):
        train(model, processor, steps=args.steps, train_videos=args.videos, val_videos=args.val_videos, batch=4,
              lr=1e-4, lora_lr=5e-4, align_steps=0, caption=True, eval_every=args.steps,
              data=(truth[r * per_round:(r + 1) * per_round], direct_val[:4]), log=None)
        validate(f"round {r + 1} ({(r + 1) * args.steps} question steps)")


if __name__ == "__main__":
    main()
