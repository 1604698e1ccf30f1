"""Which of METok's stages costs the testbed its accuracy? Each stage alone and in turn, on the same questions.

    python benchmarks/testbed_metok_stages.py [-n 30]

METok keeps no visual token past its last pruning layer (docs/methods.md: layer 19 of the reference's 28;
METok's default layers (3, 10, 19) are kept as they are on the testbed's 30-layer LM) and trims every later
layer's visual KV to that empty set after prefill
(§2.3), so whatever the model generates afterwards reads the video only through layers 0-2. A short answer
after a question is what the method was designed for; the testbed's describe protocol (``testbed.json``
``protocol``) first generates a ~60-token description, all of it in decoding. This script evaluates, on the
first ``n`` test questions with the testbed's own protocol: METok; METok without stage 3 (no trim); stage 1
alone; and METok whose prefill keeps the key events' tokens to the last layer (the reference's last step,
which drops them all, removed). Prints a table with prefill FLOPs and the first video's description per row,
and writes benchmarks/results/<device>/testbed_metok_stages.md.
"""

import argparse
from pathlib import Path

import torch

from vidpress.bench import device_name
from vidpress.evaluate import DESCRIPTION_TOKENS, evaluate, greedy_text, prepare
from vidpress.methods import METok, apply
from vidpress.models.loading import load_model
from vidpress.stages import Stages
from vidpress.testbed.scenes import describe, make_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--questions", type=int, default=30)
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).parent / "results" / device_name())
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    loaded = load_model("testbed")
    model, processor, protocol = loaded.model, loaded.processor, loaded.protocol
    samples = make_split("test", 560)[: args.questions]
    inputs = prepare(processor, samples, protocol=protocol)
    metok = METok().build()
    depth = model.config.text_config.num_hidden_layers
    kept = METok(schedule=metok.prefill.schedule[:-1]).build()  # no last step: key events' tokens stay
    configs = {
        "uncompressed": Stages(),
        "metok (stages 1+2+3)": metok,
        "metok stages 1+2 (no KV trim)": Stages(metok.pre_llm, metok.prefill, None),
        "metok stage 1 (event pooling)": Stages(metok.pre_llm, None, None),
        f"metok, key events kept past layer {metok.prefill.schedule[-1][0]}": kept,
    }
    lines = [
        "| configuration | accuracy | LLM prefill FLOPs / uncompressed | first video's generated text |",
        "|---|---|---|---|",
    ]
    base = None
    for name, stages in configs.items():
        result = evaluate(model, processor, samples, stages, inputs=inputs, label=name, protocol=protocol)
        base = base or result
        with apply(model, stages) as run, torch.inference_mode():
            said, _ = greedy_text(model, processor, inputs[0], run, DESCRIPTION_TOKENS)
        lines.append(
            f"| {name} | {result.correct}/{result.total} ({result.accuracy:.0%}) "
            f"| {result.prefill_flops / base.prefill_flops:.3f} | {said.strip()[:110]}… |"
        )
        print(lines[-1], flush=True)
    truth = describe(samples[0].scenes)
    text = (
        f"# METok's stages on the testbed ({protocol} protocol, {len(samples)} test questions, {depth} LM layers)\n\n"
        f"Command: `python benchmarks/testbed_metok_stages.py -n {args.questions}`\n\n"
        + "\n".join(lines)
        + f"\n\nFirst video's true description: {truth}\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "testbed_metok_stages.md").write_text(text)


if __name__ == "__main__":
    main()
