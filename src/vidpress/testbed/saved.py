"""The saved testbed: its files (trained tensors in fp16 and the run's record), and loading it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

WEIGHTS = "testbed.pt"
TESTBED_DIR = Path(__file__).resolve().parents[1] / "assets" / "testbed"


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The projector's and the newline's weights, keyed as in the model's state dict."""
    return {
        k: v
        for k, v in model.state_dict().items()
        if k.startswith(("model.multi_modal_projector.", "model.image_newline"))
    }


def save(model: Any, record: dict[str, Any], out: Path) -> Path:
    """Write the projector, newline and LoRA factors (fp16) and the run's record (``testbed.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    state = {**trainable_state(model), **record.get("lora", {})}
    torch.save({k: v.cpu().to(torch.float16) for k, v in state.items()}, out / WEIGHTS)
    (out / "testbed.json").write_text(json.dumps({k: v for k, v in record.items() if k != "lora"}, indent=2))
    return out / WEIGHTS


def testbed_available(directory: str | Path | None = None) -> bool:
    """Whether trained testbed weights and the real base weights they were trained on are both here."""
    from ..models.default import find_weights

    return (Path(directory or TESTBED_DIR) / WEIGHTS).exists() and find_weights() is not None


def read_saved(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A saved testbed's record and its trained tensors (fp32, CPU), as :func:`save` wrote them."""
    record = json.loads((Path(folder) / "testbed.json").read_text())
    tensors = torch.load(Path(folder) / WEIGHTS, map_location="cpu", weights_only=True)  # never unpickles code
    return record, {k: v.float() for k, v in tensors.items()}


def load_testbed(directory: str | Path | None = None) -> Any:
    """The trained testbed: the default build at the recorded image size, the saved projector, LoRA merged,
    and the recorded question protocol (``LoadedModel.protocol``).

    Raises
    ------
    FileNotFoundError
        No trained weights in ``directory`` (default ``vidpress/assets/testbed``): train them with
        ``python -m testbed.train``; or the real SmolLM2 / DINOv2 weights the testbed extends are
        missing (``$VIDPRESS_WEIGHTS`` names no folder holding them).
    """
    from ..models.default import LoadedModel, default_model, find_weights

    folder = Path(directory) if directory else TESTBED_DIR
    if not (folder / WEIGHTS).exists():
        raise FileNotFoundError(
            f"no trained testbed at {folder}; train it with `python -m testbed.train "
            f"--out {folder}` (see docs/evaluation.md)"
        )
    if find_weights() is None:
        raise FileNotFoundError(
            "the testbed extends the real SmolLM2-135M-Instruct and DINOv2-S weights, which were "
            "not found: point $VIDPRESS_WEIGHTS at the folder holding them (e.g. ../shared/data/weights)"
        )
    record, state = read_saved(folder)
    loaded = default_model(image_size=record["image_size"])
    loaded.model.load_state_dict({k: v for k, v in state.items() if ".lora_" not in k}, strict=False)
    apply_lora(loaded.model, {k: v for k, v in state.items() if ".lora_" in k}, record.get("lora_scale", 0.0))
    description = (
        f"vidpress testbed: DINOv2-S + SmolLM2-135M, projector + LoRA trained on procedural video QA "
        f"(seed {record['seed']}, {record['steps']} steps, validation accuracy {record['best_val_accuracy']:.1%})"
    )
    return LoadedModel(
        loaded.model, loaded.processor, description, trained=True, protocol=record.get("protocol", "direct")
    )


def apply_lora(model: Any, factors: dict[str, torch.Tensor], scale: float) -> None:
    """Add saved LoRA factors into the plain model's weights: W += scale * B @ A (Hu et al., 2021, eq. 3)."""
    with torch.no_grad():
        for key, a in factors.items():
            if key.endswith(".lora_A"):
                name = key[: -len(".lora_A")]
                weight = model.get_submodule(name).weight
                weight += (scale * factors[f"{name}.lora_B"].float() @ a.float()).to(weight.dtype)
