#!/usr/bin/env python3
"""Writes the parity fixtures under tests/fixtures/ (run only to regenerate them; CI never runs it).

Each fixture is a small MAG-SD network whose backbone is built from torchvision's own ResNet code
(`torchvision.models.resnet.ResNet._make_layer` with its `BasicBlock` / `Bottleneck`), with random
weights and random BatchNorm running statistics, plus the MAG-SD head written from the spec
(MAGSD-SPEC.md §1.2-1.3): per scale 1x1 conv (no bias) -> BN(eps 1e-3) -> ReLU, 14x14 maps
avg-pooled 2x2 and 28x28 maps 4x4, summed; BAP = mean_hw(A * f4), signed sqrt (eps 1e-12),
L2 normalisation, x100, bias-free linear.

Stored per fixture (safetensors): every weight under magsd's names, the input, and what torch
computes from it in eval mode (BN running statistics) and in train mode (batch statistics):
f3, f4, attention, logits. The metadata holds the magsd model config. A torchvision-format
`.pth` state dict of the backbone (with `fc.*` and `num_batches_tracked`) tests the importer.

Usage: python scripts/make_parity_fixture.py   (needs torch and torchvision)
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")


class SmallResNet(torchvision.models.resnet.ResNet):
    """torchvision's ResNet with configurable stem and stage widths (torchvision hard-codes 64..512)."""

    def __init__(self, block, layers, stem, widths, in_chans):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = stem, 1, 1, 64
        self.conv1 = nn.Conv2d(in_chans, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, 10)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f2 = self.layer2(self.layer1(x))
        f3 = self.layer3(f2)
        return f2, f3, self.layer4(f3)


def att_head(cin, m):
    return nn.ModuleDict({"conv": nn.Conv2d(cin, m, 1, bias=False), "bn": nn.BatchNorm2d(m, eps=1e-3)})


class MagSd(nn.Module):
    def __init__(self, block, layers, stem, widths, in_chans, maps, scales, classes):
        super().__init__()
        self.backbone = SmallResNet(block, layers, stem, widths, in_chans)
        e = block.expansion
        c2, c3, c4 = widths[1] * e, widths[2] * e, widths[3] * e
        self.scales = scales
        self.att = nn.ModuleDict({"att7": att_head(c4, maps)})
        if "14" in scales:
            self.att["att14"] = att_head(c3, maps)
        if "28" in scales:
            self.att["att28"] = att_head(c2, maps)
        self.classifier = nn.Linear(maps * c4, classes, bias=False)

    def forward(self, x):
        f2, f3, f4 = self.backbone.features(x)
        h = lambda name, f: F.relu(self.att[name]["bn"](self.att[name]["conv"](f)))
        a = h("att7", f4)
        if "att14" in self.att:
            a = a + F.avg_pool2d(h("att14", f3), 2, 2)
        if "att28" in self.att:
            a = a + F.avg_pool2d(h("att28", f2), 4, 4)
        b, c, hh, ww = f4.shape
        fm = torch.einsum("bmhw,bchw->bmc", a, f4) / float(hh * ww)
        v = fm.reshape(b, -1)
        v = torch.sign(v) * torch.sqrt(v.abs() + 1e-12)
        v = F.normalize(v, dim=-1)
        return self.classifier(v * 100.0), a, f3, f4

    def magsd_state(self):
        out = {}
        for k, v in self.backbone.state_dict().items():
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
                out[k] = v
        for k, v in self.att.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                out["attention." + k] = v
        out["classifier.weight"] = self.classifier.weight
        return out


def randomise(model, g):
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.25)
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif "bn" in name or "downsample.1" in name:
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            else:
                fan_in = max(1, t[0].numel())
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)


def write(name, block, block_name, layers, stem, widths, in_chans, maps, scales, classes, size, seed):
    g = torch.Generator().manual_seed(seed)
    m = MagSd(block, layers, stem, widths, in_chans, maps, scales, classes)
    randomise(m, g)
    x = torch.randn(2, in_chans, size, size, generator=g)
    tensors = {k: v.detach().clone().contiguous() for k, v in m.magsd_state().items()}
    tensors["input"] = x
    # The backbone as torchvision saves it (fc and num_batches_tracked included), before the
    # train-mode pass below updates the running statistics.
    torch.save(m.backbone.state_dict(), os.path.join(OUT, f"torchvision_{name}.pth"))
    m.eval()
    with torch.no_grad():
        z, a, f3, f4 = m(x)
    tensors.update({"eval.logits": z, "eval.attention": a, "eval.f3": f3, "eval.f4": f4})
    m.train()
    with torch.no_grad():
        z, a, f3, f4 = m(x)  # batch statistics (running stats updated too; not stored)
    tensors.update({"train.logits": z, "train.attention": a})
    config = {
        "backbone": name,
        "resnet": {"block": block_name, "layers": layers, "stem_width": stem, "widths": widths},
        "in_channels": in_chans,
        "num_classes": classes,
        "num_maps": maps,
        "scales": scales,
        "head": "bap",
        "image_size": size,
        "class_names": [],
    }
    meta = {"magsd.config": json.dumps(config), "torch": torch.__version__, "torchvision": torchvision.__version__}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    from safetensors.torch import save_file as save
    save(tensors, os.path.join(OUT, f"parity_{name}.safetensors"), metadata=meta)
    print(name, sum(p.numel() for p in m.parameters()), "parameters")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    from torchvision.models.resnet import BasicBlock, Bottleneck
    write("bottleneck", Bottleneck, "bottleneck", [1, 1, 1, 1], 8, [8, 16, 32, 64], 1, 4, "7+14+28", 3, 64, 1)
    write("basic", BasicBlock, "basic", [1, 2, 1, 1], 8, [8, 16, 16, 32], 3, 4, "7+14", 4, 64, 2)
