"""Tiny CNNs built in code: a ResNet-style classifier and a YOLO-style net with concat."""

from __future__ import annotations

import torch
from torch import nn


class ConvBNAct(nn.Module):
    """YOLO's Conv: conv → batch norm → activation."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, act: type = nn.SiLU):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = act()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Basic(nn.Module):
    """ResNet basic block; a 1×1 projection shortcut where stride or width changes."""

    def __init__(self, c1: int, c2: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c1, c2, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c2, c2, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.shortcut = None
        if stride != 1 or c1 != c2:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c1, c2, 1, stride, bias=False), nn.BatchNorm2d(c2)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(out + skip)


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = ConvBNAct(3, 8, 3, 1, nn.ReLU)
        self.layer1 = nn.Sequential(Basic(8, 8), Basic(8, 8))
        self.layer2 = nn.Sequential(Basic(8, 16, 2), Basic(16, 16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 1)
        self.cv2 = ConvBNAct(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C3(nn.Module):
    """CSP bottleneck with 3 convs: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, c1: int, c2: int):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = ConvBNAct(c1, c_, 1)
        self.cv2 = ConvBNAct(c1, c_, 1)
        self.m = nn.Sequential(Bottleneck(c_))
        self.cv3 = ConvBNAct(2 * c_, c2, 1)

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = ConvBNAct(c1, c_, 1)
        self.cv2 = ConvBNAct(4 * c_, c2, 1)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class TinyYolo(nn.Module):
    """Backbone (C3, SPPF), an upsample + concat neck and a 1×1 detection head."""

    def __init__(self, outputs: int = 8):
        super().__init__()
        self.stem = ConvBNAct(3, 8, 3, 1)
        self.down = ConvBNAct(8, 16, 3, 2)
        self.c3 = C3(16, 16)
        self.sppf = SPPF(16, 16)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.neck = C3(24, 16)
        self.head = nn.Conv2d(16, outputs, 1)

    def forward(self, x):
        p1 = self.stem(x)
        p2 = self.sppf(self.c3(self.down(p1)))
        return self.head(self.neck(torch.cat((self.up(p2), p1), 1)))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def tiny_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(TinyResNet(), seed)


def tiny_yolo(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(TinyYolo(), seed)


def image_batch(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
