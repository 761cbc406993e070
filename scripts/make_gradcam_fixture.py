#!/usr/bin/env python3
"""Writes tests/fixtures/gradcam_bottleneck.safetensors: what pytorch-grad-cam computes on the
parity network (run only to regenerate it; CI never runs it).

The network is `make_parity_fixture.py`'s `Network` (torchvision's ResNet code, Bottleneck, one
block per stage, 64x64 one-channel input, scales 7+14+28, BAP head, 3 classes) with the weights
stored in `tests/fixtures/parity_bottleneck.safetensors`, in eval mode. pytorch-grad-cam's
`GradCAM` and `GradCAMPlusPlus` run on `backbone.layer4` and `backbone.layer3` for the stored
input with `ClassifierOutputTarget(k)`, k per image as stored in `targets`. Stored: `targets`
[B] int64 and, per method and layer, the library's output [B, 64, 64] (its per-layer map, ReLU,
min-max scaled and resized to the input with OpenCV, then min-max scaled again):
`gradcam.layer4`, `gradcam.layer3`, `gradcam++.layer4`, `gradcam++.layer3`.

Set-up (a virtual environment of its own, outside the repository):
    python3 -m venv ~/.cache/magsd-gradcam
    ~/.cache/magsd-gradcam/bin/pip install torch torchvision grad-cam==1.5.7 safetensors
Usage:
    ~/.cache/magsd-gradcam/bin/python scripts/make_gradcam_fixture.py
"""
import importlib.util
import json
import os

import pytorch_grad_cam
import torch
import torch.nn as nn
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")


def parity_module():
    spec = importlib.util.spec_from_file_location("make_parity_fixture", os.path.join(HERE, "make_parity_fixture.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Logits(nn.Module):
    """The network as pytorch-grad-cam expects it: input -> logits."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)[0]


def main():
    mpf = parity_module()
    path = os.path.join(FIXTURES, "parity_bottleneck.safetensors")
    with safe_open(path, "pt") as f:
        cfg = json.loads(f.metadata()["magsd.config"])
    t = load_file(path)
    r = cfg["resnet"]
    block = torchvision.models.resnet.Bottleneck if r["block"] == "bottleneck" else torchvision.models.resnet.BasicBlock
    m = mpf.Network(block, r["layers"], r["stem_width"], r["widths"], cfg["in_channels"], cfg["num_maps"], cfg["scales"], cfg["num_classes"])
    backbone = {k: v for k, v in t.items() if k in m.backbone.state_dict()}
    missing = m.backbone.load_state_dict(backbone, strict=False)
    assert all(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in missing.missing_keys), missing
    att = {k[len("attention."):]: v for k, v in t.items() if k.startswith("attention.")}
    missing = m.att.load_state_dict(att, strict=False)
    assert all(k.endswith("num_batches_tracked") for k in missing.missing_keys), missing
    with torch.no_grad():
        m.classifier.weight.copy_(t["classifier.weight"])
    m.eval()
    x = t["input"]
    with torch.no_grad():
        z = m(x)[0]
    assert torch.allclose(z, t["eval.logits"], atol=1e-5), "the rebuilt network differs from the parity fixture"
    # One image for its predicted class, the other for a class it does not predict.
    pred = z.argmax(1)
    targets = torch.tensor([int(pred[0]), int((pred[1] + 1) % cfg["num_classes"])], dtype=torch.int64)
    out = {"targets": targets}
    net = Logits(m)
    for name, cls in [("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus)]:
        for layer in ["layer4", "layer3"]:
            with cls(model=net, target_layers=[getattr(m.backbone, layer)]) as cam:
                maps = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(int(k)) for k in targets])
            out[f"{name}.{layer}"] = torch.from_numpy(maps).float().contiguous()
    meta = {"torch": torch.__version__, "grad-cam": getattr(pytorch_grad_cam, "__version__", "1.5.7"), "network": "parity_bottleneck"}
    save_file(out, os.path.join(FIXTURES, "gradcam_bottleneck.safetensors"), metadata=meta)
    print("targets", targets.tolist(), "logits", z.tolist())


if __name__ == "__main__":
    main()
