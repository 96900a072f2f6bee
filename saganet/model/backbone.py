"""ResNet-style backbone written here (no torchvision), in torchvision's state-dict layout.

Names follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`, `downsample.0`, ...) so that users who
have ImageNet ResNet-18/34/50 weights as a local file can load them with `load_torchvision_weights`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import BACKBONES, BackboneConfig





def backbone_config(name_or_dict: str | dict) -> BackboneConfig:
    if isinstance(name_or_dict, dict):
        return BackboneConfig.from_dict(name_or_dict)
    if name_or_dict not in BACKBONES:
        raise ValueError(f"unknown backbone {name_or_dict!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name_or_dict]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, width, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """Feature extractor: image (B,3,H,W) -> last feature map (B, out_channels, H/s, W/s)."""

    def __init__(self, config: BackboneConfig = BackboneConfig()):
        super().__init__()
        if len(config.layers) != len(config.widths) or not config.layers:
            raise ValueError(f"backbone layers {config.layers} and widths {config.widths} must have equal, non-zero length")
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}.get(config.block)
        if block is None:
            raise ValueError(f"unknown block {config.block!r}; use 'basic' or 'bottleneck'")
        self.config = config
        w0 = config.widths[0]
        if config.stem == "imagenet":
            self.conv1 = nn.Conv2d(3, w0, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        elif config.stem == "small":
            self.conv1 = nn.Conv2d(3, w0, 3, 2, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"unknown stem {config.stem!r}; use 'small' or 'imagenet'")
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=True)
        cin = w0
        for i, (n, width) in enumerate(zip(config.layers, config.widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(config.layers)
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: each block starts as identity, which
        # trains more stably from scratch on few images.
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


def load_torchvision_weights(model: ResNet, path: str) -> list[str]:
    """Load a torchvision ResNet state dict from a local file (.pth via weights_only, or .safetensors).

    The classifier (`fc.*`) is ignored. Returns the list of ignored keys. Shape mismatches raise a
    ValueError naming the tensor, so a wrong architecture is reported instead of half-loaded.
    """
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt file, pickle with code, ...
            raise ValueError(f"cannot read weights from {path}: {e}") from e
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    own = model.state_dict()
    ignored = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path}: {len(missing)} backbone tensors missing, e.g. {missing[:3]} (is it a {model.config}?)")
    for k, v in state.items():
        if k in own and tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the backbone expects {tuple(own[k].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return ignored
