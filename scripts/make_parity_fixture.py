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

`parity_step.safetensors` records one whole training step of the PyTorch reference
(`../shared/reference/bench_magsd_torch.py`, imported by path; override with $MAGSD_BENCH) on the
tiny preset (magsd's `NetworkConfig::tiny(3)`: ResNet50's code with one block per stage and 1/8 of
the width, 8 maps, scales 7+14, 1 channel, 96x96). The bench's `MAGSDNet` hard-codes ResNet50
(94 MB at this size), so the network is that class with its layers swapped for the tiny ones,
built and initialised as the bench builds its own: torchvision's ResNet init (convs
Kaiming-normal fan-out, BN 1/0), then a fresh 1-channel stem, attention heads from the bench's
`_att_head` and a bias-free `nn.Linear`, all with PyTorch's default init. Its `forward` is the
bench's. The step is the bench's `train_step` written out with the draws recorded: raw forward,
`select_maps_vec` (its `torch.multinomial` indices recorded), `draw_aug_params`, `augment_vec`,
three forwards (mix-up, dimming, patching), `soft_distance_loss_vec`, backward, SGD (lr 1e-3,
momentum 0.9, weight decay 1e-6: the bench's and the paper's defaults). Stored: `w.<name>` the
weights before the step (magsd names), `input`, `labels`, `draw.maps` [B,3] int64 indices,
`draw.theta` [B,3] (u of mix-up, dimming, patching), `draw.offset` [B,2] (u_oy, u_ox),
`raw.logits`, `raw.attention`, `aug.mixup`, `aug.dimming`, `aug.patching`, `aux.logits` [3,B,K],
`loss`, `grad.<name>`, and `after.<name>` the BN running statistics after the step's four
train-mode forwards (the weights after the SGD update follow from `w.`, `grad.` and the
optimiser settings; leaving them out keeps the file under 2 MB).
The labels are chosen so that the soft-distance switch takes both branches (some rows trust
their own softmax, others use the smoothed label).

Usage: python scripts/make_parity_fixture.py [forward|step|all]   (needs torch and torchvision;
default all)
"""
import copy
import importlib.util
import json
import os
import sys

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


class Network(nn.Module):
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
    m = Network(block, layers, stem, widths, in_chans, maps, scales, classes)
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


# ------------------------------------------------------------------------------------------------
# One training step of the reference
# ------------------------------------------------------------------------------------------------
BENCH = os.environ.get(
    "MAGSD_BENCH",
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "bench_magsd_torch.py"),
)


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_magsd_torch", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def torchvision_resnet_init(module):
    """The init loop of torchvision's `ResNet.__init__` (zero_init_residual=False)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def tiny_bench_net(bench, classes, maps, in_chans):
    """The bench's MAGSDNet (its forward) with the tiny preset's layers, initialised as the bench
    initialises its own: torchvision's ResNet init, then the replaced stem, the attention heads
    and the classifier at PyTorch's defaults."""
    from torchvision.models.resnet import Bottleneck
    stem, widths = 8, [8, 16, 32, 64]
    r = SmallResNet(Bottleneck, [1, 1, 1, 1], stem, widths, 3)
    torchvision_resnet_init(r)
    if in_chans != 3:
        r.conv1 = nn.Conv2d(in_chans, stem, kernel_size=7, stride=2, padding=3, bias=False)
    net = bench.MAGSDNet.__new__(bench.MAGSDNet)
    nn.Module.__init__(net)
    net.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2)
    net.layer3, net.layer4 = r.layer3, r.layer4
    net.scales = (7, 14)
    c3, c4 = widths[2] * 4, widths[3] * 4
    net.att7 = bench._att_head(c4, maps)
    net.att14 = bench._att_head(c3, maps)
    net.att28 = None
    net.fc = nn.Linear(c4 * maps, classes, bias=False)
    net.num_maps = maps
    return net


def magsd_name(name):
    """The bench's parameter/buffer names -> magsd's (torchvision's for the backbone)."""
    stem = {"stem.0.": "conv1.", "stem.1.": "bn1.", "stem.4.": "layer1.", "stem.5.": "layer2."}
    for a, b in stem.items():
        if name.startswith(a):
            return b + name[len(a):]
    for s in ("att7", "att14", "att28"):
        if name.startswith(s + ".0."):
            return f"attention.{s}.conv." + name[len(s) + 3:]
        if name.startswith(s + ".1."):
            return f"attention.{s}.bn." + name[len(s) + 3:]
    if name.startswith("fc."):
        return "classifier." + name[3:]
    return name


def state(net, prefix):
    return {prefix + magsd_name(k): v.detach().clone().contiguous()
            for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def write_step(seed=4, batch=4, classes=3, maps=8, size=96, in_chans=1):
    bench = load_bench()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = tiny_bench_net(bench, classes, maps, in_chans)
    net.train()
    x = torch.randn(batch, in_chans, size, size, generator=g)
    # Labels: the raw prediction for the first half (where it is confident enough, the
    # soft-distance target is the raw softmax), a wrong class for the rest (smoothed label).
    with torch.no_grad():
        z = copy.deepcopy(net)(x)[0]
    p = F.softmax(z, 1)
    pred = p.argmax(1)
    y = torch.where(torch.arange(batch) < batch // 2, pred, (pred + 1) % classes)
    trusted = (pred == y) & (p.max(1).values >= 0.7)
    if not (trusted.any() and not trusted.all()):
        raise SystemExit(f"seed {seed}: the switch takes only one branch ({trusted.tolist()}); pick another seed")

    t = state(net, "w.")
    t.update({"input": x, "labels": y})
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-6, nesterov=False)
    # The bench's train_step, with its draws recorded.
    opt.zero_grad(set_to_none=True)
    z0, att = net(x)
    recorded = {}
    multinomial = torch.multinomial

    def recording_multinomial(*a, **k):
        recorded["idx"] = multinomial(*a, **k)
        return recorded["idx"]

    torch.multinomial = recording_multinomial
    try:
        sel = bench.select_maps_vec(att, 3)
    finally:
        torch.multinomial = multinomial
    with torch.no_grad():
        before = g.get_state()
        pr = bench.draw_aug_params(batch, "cpu", g)
        # The uniforms behind those parameters: the same draw from the same generator state.
        u = torch.rand(5, batch, dtype=torch.float64, generator=torch.Generator().set_state(before))
        assert torch.equal(0.4 + 0.2 * u[0], pr["theta_mix"]) and torch.equal(u[4], pr["u_ox"])
        mix, dim, pat = bench.augment_vec(x.float(), sel, pr)
    zs = [net(im)[0] for im in (mix, dim, pat)]
    loss = bench.soft_distance_loss_vec(z0, zs, y)
    loss.backward()
    grads = {"grad." + magsd_name(n): q.grad.detach().clone() for n, q in net.named_parameters()}
    opt.step()

    t.update({
        "draw.maps": recorded["idx"],
        "draw.theta": u[0:3].T.contiguous(),
        "draw.offset": u[3:5].T.contiguous(),
        "raw.logits": z0.detach(), "raw.attention": att.detach(),
        "aug.mixup": mix, "aug.dimming": dim, "aug.patching": pat,
        "aux.logits": torch.stack([z.detach() for z in zs]),
        "loss": loss.detach().reshape(1),
    })
    t.update(grads)
    t.update({k: v for k, v in state(net, "after.").items() if k.endswith(("running_mean", "running_var"))})
    config = {
        "backbone": "tiny",
        "resnet": {"block": "bottleneck", "layers": [1, 1, 1, 1], "stem_width": 8, "widths": [8, 16, 32, 64]},
        "in_channels": in_chans, "num_classes": classes, "num_maps": maps, "scales": "7+14",
        "head": "bap", "image_size": size, "class_names": [],
    }
    meta = {"magsd.config": json.dumps(config), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "seed": str(seed),
            "trusted_rows": json.dumps(trusted.tolist())}
    from safetensors.torch import save_file as save
    path = os.path.join(OUT, "parity_step.safetensors")
    save({k: v.contiguous() for k, v in t.items()}, path, metadata=meta)
    print("step", f"loss {loss.item():.6f}", f"trusted rows {trusted.tolist()}", os.path.getsize(path), "bytes")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("forward", "all"):
        from torchvision.models.resnet import BasicBlock, Bottleneck
        write("bottleneck", Bottleneck, "bottleneck", [1, 1, 1, 1], 8, [8, 16, 32, 64], 1, 4, "7+14+28", 3, 64, 1)
        write("basic", BasicBlock, "basic", [1, 2, 1, 1], 8, [8, 16, 16, 32], 3, 4, "7+14", 4, 64, 2)
    if what in ("step", "all"):
        write_step()
