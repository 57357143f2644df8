"""ResNet-18 with torchvision's parameter names, so a torchvision ``resnet18`` state dict
loads into it; torchvision itself cannot be installed beside this torch build.

As in D2IM-Net the first conv is a stride-1 7x7 conv, so the first feature map keeps the
input resolution. ``width`` scales every stage (64 = torchvision's resnet18); small widths
keep CPU tests fast.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """Returns the five feature maps (full, 1/2, 1/4, 1/8, 1/16 resolution) and the
    1000-d output of ``fc`` on the pooled last map."""

    def __init__(self, width: int = 64, num_classes: int = 1000):
        super().__init__()
        w = [width, width, 2 * width, 4 * width, 8 * width]
        self.channels = w
        self.conv1 = nn.Conv2d(3, w[0], 7, 1, 3, bias=False)  # stride 1: D2IM-Net's change
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(w[0], w[1]), BasicBlock(w[1], w[1]))
        self.layer2 = nn.Sequential(BasicBlock(w[1], w[2], 2), BasicBlock(w[2], w[2]))
        self.layer3 = nn.Sequential(BasicBlock(w[2], w[3], 2), BasicBlock(w[3], w[3]))
        self.layer4 = nn.Sequential(BasicBlock(w[3], w[4], 2), BasicBlock(w[4], w[4]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[4], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4], self.fc(torch.flatten(self.avgpool(f4), 1))


def load_torchvision_weights(net: ResNet18, path: str | Path) -> list[str]:
    """Load a local torchvision resnet18 ``.pth`` into ``net``; tensors whose shape differs
    (the replaced first conv, or every tensor at a non-64 width) are skipped and named in
    the log. Returns the skipped names."""
    from cdc_aug.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--model.encoder_weights: {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or non-tensor file
        raise UserError(f"--model.encoder_weights: {path}: not a PyTorch state dict ({e})") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = net.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown and not set(state) & set(own):
        raise UserError(f"--model.encoder_weights: {path}: no torchvision resnet18 parameter names in it")
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    net.load_state_dict(take, strict=False)
    from lightning.pytorch.utilities import rank_zero_info  # shown by Lightning's own console logger

    names = f" ({', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''})" if skipped else ""
    rank_zero_info(f"encoder weights from {path}: loaded {len(take)} tensors, skipped {len(skipped)} "
                   f"with another shape{names}")
    return skipped
