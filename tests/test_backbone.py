import pytest
import torch
from safetensors.torch import save_file

from saganet.config import BACKBONES
from saganet.model import ResNet, SagaNet, variant_config
from saganet.model.backbone import load_torchvision_weights

# A few keys of torchvision's resnet18/resnet50 state dicts, as torchvision names them.
TV18 = ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.1.bn2.weight", "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var", "layer4.1.conv2.weight"]
TV50 = ["layer1.0.conv3.weight", "layer1.0.bn3.weight", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight"]


def test_torchvision_key_layout():
    k18 = set(ResNet(BACKBONES["resnet18"]).state_dict())
    assert set(TV18) <= k18
    r50 = ResNet(BACKBONES["resnet50"])
    assert set(TV50) <= set(r50.state_dict()) and r50.out_channels == 2048
    assert sum(p.numel() for p in ResNet(BACKBONES["resnet18"]).parameters()) == 11176512  # torchvision resnet18 minus fc


def _torchvision_like_file(tmp_path, fmt):
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
             for k, v in ResNet(BACKBONES["resnet18"]).state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    path = tmp_path / f"r18.{fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, state


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_load_torchvision_weights(tmp_path, fmt):
    path, state = _torchvision_like_file(tmp_path, fmt)
    model = SagaNet(variant_config("saganet", backbone="resnet18", num_classes=3))
    ignored = load_torchvision_weights(model.backbone, str(path))
    assert sorted(ignored) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


def test_wrong_architecture_is_named(tmp_path):
    path, _ = _torchvision_like_file(tmp_path, "pth")
    with pytest.raises(ValueError, match="missing"):
        load_torchvision_weights(ResNet(BACKBONES["resnet34"]), str(path))
    small = ResNet(BACKBONES["resnet-small"])
    with pytest.raises(ValueError, match="conv1.weight has shape"):
        load_torchvision_weights(small, str(path))
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="junk.pth"):
        load_torchvision_weights(small, str(tmp_path / "junk.pth"))


@pytest.mark.parametrize("variant", ["saganet", "baseline", "no-gate", "no-length", "no-mask"])
def test_variants_forward(variant):
    model = SagaNet(variant_config(variant, num_classes=4))
    out = model(torch.randn(2, 3, 64, 80), torch.ones(2, 1, 64, 80))
    assert out["scores"].shape == (2, 4) and torch.allclose(out["probs"].sum(1), torch.ones(2), atol=1e-5)
    if model.config.head == "length":
        assert torch.all((out["scores"] >= 0) & (out["scores"] < 1))


def test_unknown_names_rejected():
    with pytest.raises(ValueError, match="variant"):
        variant_config("nope")
    with pytest.raises(ValueError, match="backbone"):
        SagaNet(variant_config("saganet", backbone="resnet999"))


def test_loss_overrides_change_only_named_fields():
    cfg = variant_config("saganet", loss={"agreement_weight": 0.0})
    assert cfg.loss.agreement_weight == 0.0 and cfg.loss.kind == "margin" and cfg.loss.m_plus == 0.9
