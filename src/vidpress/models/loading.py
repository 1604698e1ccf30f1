"""``load_model``: every model the CLI, the benchmarks and lmms-eval name, built or loaded by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..adapters.registry import family_of, random_builds, supported_models
from ..errors import UnsupportedModelError
from ..processing import CONFIG_NAME, OfflineVideoProcessor
from ..testbed.saved import load_testbed
from .default import default_model
from .random import LoadedModel


def offline_processor(directory: str | Path, config: Any) -> OfflineVideoProcessor:
    """The torchvision-free processor of a checkpoint directory: the one vidpress saved there, else the family's
    (:meth:`~vidpress.adapters.base.Adapter.offline_processor`) from the checkpoint's tokenizer, preprocessor
    settings and chat template."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    if (directory / CONFIG_NAME).exists():
        return OfflineVideoProcessor.from_pretrained(directory)
    pre = {}
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (directory / name).exists():
            pre = json.loads((directory / name).read_text())
            break
    template = None
    if (directory / "chat_template.json").exists():
        template = json.loads((directory / "chat_template.json").read_text()).get("chat_template")
    return family_of(config).offline_processor(AutoTokenizer.from_pretrained(directory), config, pre, template)


def _checkpoint_processor(name: str, model: Any) -> Any:
    """The checkpoint's own processor, or the offline one when it needs torchvision (not installable here)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(name)
    except (ImportError, AttributeError):
        from huggingface_hub import snapshot_download

        local = name if Path(name).is_dir() else snapshot_download(name)
        return offline_processor(local, model.config)


def load_model(name: str = "default", dtype: str | torch.dtype = "auto", device: str | None = None) -> LoadedModel:
    """``"default"``, ``"testbed"`` (the default build with a projector trained on the procedural video QA, once
    trained), ``"random"`` (LLaVA-OneVision), ``"random-llava-next-video"`` (LongVA's layout),
    ``"random-qwen2.5-vl"``, ``"random-qwen3-vl"``, ``"random-qwen3-vl-moe"``, ``"random:<preset>"`` (a LLaVA-OV
    preset's real architecture with random bf16 weights, e.g. ``random:llava-ov-7b``, built on the GPU when there
    is one), a local checkpoint directory, or a hub id (needs the hub or its cache).

    Raises
    ------
    UnsupportedModelError
        The checkpoint's class has no vidpress adapter.
    OSError
        A hub id that cannot be fetched (no network and not in the local cache): the message says so.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    if name == "default":
        loaded = default_model()
    elif name == "testbed":
        loaded = load_testbed()
    elif name in random_builds():
        loaded = random_builds()[name].build_random()
    elif name.startswith("random:"):  # e.g. random:llava-ov-7b, the real architecture with random weights
        from .random import random_full_size

        loaded = random_full_size(name.split(":", 1)[1], device=device)
    else:
        try:
            config = AutoConfig.from_pretrained(name)
        except OSError as exc:
            raise OSError(
                f"cannot load {name!r}: not a local checkpoint directory and the hub is unreachable or "
                f"has no such model ({exc.__class__.__name__}); pass a local path, 'default' or 'random'"
            ) from exc
        arch = (config.architectures or [type(config).__name__])[0]
        if arch not in supported_models():
            raise UnsupportedModelError(f"{name} is a {arch}; vidpress supports: {', '.join(supported_models())}")
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, device_map=device).eval()
        saved_by_vidpress = (Path(name) / CONFIG_NAME).exists()  # its own random / untrained builds
        processor = offline_processor(name, model.config) if saved_by_vidpress else _checkpoint_processor(name, model)
        trained = not saved_by_vidpress
        loaded = LoadedModel(
            model, processor, f"{name} ({arch}, {'pretrained' if trained else 'saved by vidpress'})", trained
        )
    if device:
        loaded.model.to(device)
    return loaded
