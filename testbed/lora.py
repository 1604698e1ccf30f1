"""The testbed's LoRA on the LM (peft, for training), merged into plain weights for saving (the library's
:func:`vidpress.testbed.saved.apply_lora` adds saved factors back when loading)."""

from __future__ import annotations

from typing import Any

import torch

from vidpress.testbed.saved import apply_lora

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model: Any, rank: int) -> float:
    """Inject a rank-``rank`` LoRA (peft) into the LM's linear layers; returns its scale alpha / r."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
    inject_adapter_in_model(config, model.model.language_model)
    return config.lora_alpha / config.r


def _lora_modules(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of every layer the LoRA was injected into."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if hasattr(module, "base_layer") and hasattr(module, "lora_A")
    ]


def lora_factors(model: Any) -> dict[str, torch.Tensor]:
    """Copies of the injected LoRA's factors, keyed ``<module>.lora_A`` / ``.lora_B`` (what ``save`` stores)."""
    return {
        f"{name}.{part}": getattr(module, part)["default"].weight.detach().clone()
        for name, module in _lora_modules(model)
        for part in ("lora_A", "lora_B")
    }


def set_lora(model: Any, factors: dict[str, torch.Tensor]) -> None:
    """Load saved :func:`lora_factors` into the injected LoRA, to continue training it.

    Raises
    ------
    ValueError
        A factor is missing or has another shape (another rank): train with the saved run's ``--rank``.
    """
    with torch.no_grad():
        for name, module in _lora_modules(model):
            for part in ("lora_A", "lora_B"):
                target, saved = getattr(module, part)["default"].weight, factors.get(f"{name}.{part}")
                if saved is None or saved.shape != target.shape:
                    raise ValueError(
                        f"the saved LoRA has no factor {name}.{part} of shape {tuple(target.shape)} (found "
                        f"{None if saved is None else tuple(saved.shape)}); use the saved run's --rank"
                    )
                target.copy_(saved)


def merge_lora(model: Any, scale: float) -> dict[str, torch.Tensor]:
    """Fold the injected LoRA into the base weights (W += scale * B @ A), put the plain ``nn.Linear`` back,
    and return its factors (:func:`lora_factors`)."""
    factors = lora_factors(model)
    for name, module in _lora_modules(model):
        parent, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), child, module.base_layer)
    apply_lora(model, factors, scale)
    return factors
