#!/usr/bin/env python3
"""Run a `tessera-aggregator export` file with numpy alone, as a PyTorch user
would run it with torch.nn: the network is built from the file's metadata
and its tensors are read in PyTorch's layout (torch.nn.Linear weights
[out_features, in_features], torch.nn.Conv2d weights
[out_channels, in_channels / groups, kh, kw]).

    export_forward.py MODEL.safetensors INPUT.f32 SHAPE OUT.f32

INPUT.f32 holds little-endian f32 inputs of SHAPE (comma-separated, e.g.
4,30 for a tabular batch or 4,3,32,32 for images, already encoded as the
members encode them); OUT.f32 receives the logits, [n, classes]. Needs
numpy and safetensors; no torch. The tests (tessera-aggregator's export
tests, tests/tests/operator_tools.rs) compare these logits with the Rust
model's.
"""

import json
import re
import sys

import numpy as np
from safetensors import safe_open


def load(path):
    with safe_open(path, framework="numpy") as f:
        return {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}, f.metadata() or {}


def sequential(t, arch, x):
    """`Sequential(Linear(30, 16), ReLU(), Linear(16, 2))`: torch.nn layer i
    is `{i}.weight` / `{i}.bias`."""
    layers = re.findall(r"(Linear|ReLU)\(([^)]*)\)", arch)
    if not layers or arch.count("(") - 1 != len(layers):
        raise SystemExit(f"unknown architecture: {arch!r}")
    for i, (kind, _) in enumerate(layers):
        if kind == "Linear":
            x = x @ t[f"{i}.weight"].T + t[f"{i}.bias"]
        else:
            x = np.maximum(x, 0.0)
    return x


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def batch_norm(t, name, x, eps):
    scale = t[f"{name}.gamma"] / np.sqrt(t[f"{name}.running_var"] + eps)
    shift = t[f"{name}.beta"] - t[f"{name}.running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def same_pad(x, k, stride):
    """TensorFlow's SAME: output ceil(h / stride), the odd row and column of
    padding at the bottom and right."""
    _, _, h, w = x.shape

    def split(size):
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return total // 2, total - total // 2

    (top, bottom), (left, right) = split(h), split(w)
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def conv(t, name, x, stride=1, groups=1, padding="tf_same"):
    """torch.nn.Conv2d: TF-SAME padding for k > 1, or `padding` zeros on
    every side; the bias when the file has one."""
    w = t[f"{name}.weight"]
    c_out, c_in_g, k, _ = w.shape
    if padding == "tf_same":
        if k > 1:
            x = same_pad(x, k, stride)
    elif padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, c_in, h, width = x.shape
    oh, ow = (h - k) // stride + 1, (width - k) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :oh, :ow]
    if groups == 1:
        y = np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    elif groups == c_in == c_out and c_in_g == 1:
        y = np.einsum("nchwij,cij->nchw", win, w[:, 0], optimize=True)
    else:
        raise SystemExit(f"{name}: unsupported groups {groups}")
    bias = t.get(f"{name}.bias")
    return y if bias is None else y + bias[None, :, None, None]


def max_pool2(x):
    """torch.nn.MaxPool2d(2, 2): odd trailing rows and columns dropped."""
    n, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def adaptive_avg(x, out_h, out_w):
    """torch.nn.AdaptiveAvgPool2d: bin i spans floor(i h / out) to ceil((i + 1) h / out)."""
    _, _, h, w = x.shape
    rows = []
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -(-((i + 1) * h) // out_h)
        rows.append(
            np.stack(
                [x[:, :, r0:r1, (j * w) // out_w : -(-((j + 1) * w) // out_w)].mean(axis=(2, 3)) for j in range(out_w)],
                axis=-1,
            )
        )
    return np.stack(rows, axis=-2)


def small_cnn(t, net, x):
    for name in ("conv1", "conv2"):
        x = max_pool2(np.maximum(conv(t, name, x, padding=net["padding"]), 0.0))
    x = adaptive_avg(x, *net["adaptive_avg"]).reshape(x.shape[0], -1)
    x = np.maximum(x @ t["fc1.weight"].T + t["fc1.bias"], 0.0)
    return x @ t["fc2.weight"].T + t["fc2.bias"]


def efficientnet_lite0(t, net, x):
    eps = net["bn_eps"]
    x = relu6(batch_norm(t, "backbone.bn0", conv(t, "backbone.conv_stem", x, stride=net["stem"][3]), eps))
    b = 0
    for repeats, kernel, stride, expand, c_in, c_out in net["stages"]:
        for r in range(repeats):
            cin, s = (c_in, stride) if r == 0 else (c_out, 1)
            p = f"backbone.blocks.{b}"
            h = x
            if expand != 1:
                h = relu6(batch_norm(t, f"{p}.bn0", conv(t, f"{p}.expand_conv", h), eps))
            h = relu6(batch_norm(t, f"{p}.bn1", conv(t, f"{p}.depthwise_conv", h, stride=s, groups=h.shape[1]), eps))
            h = batch_norm(t, f"{p}.bn2", conv(t, f"{p}.project_conv", h), eps)
            x = h + x if (s == 1 and cin == c_out) else h
            b += 1
    x = relu6(batch_norm(t, "backbone.bn1", conv(t, "backbone.conv_head", x), eps))
    features = x.mean(axis=(2, 3))
    return features @ t["head.weight"].T + t["head.bias"]


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    model, inputs, shape, out = sys.argv[1:]
    t, meta = load(model)
    shape = tuple(int(s) for s in shape.split(","))
    x = np.fromfile(inputs, dtype="<f4").astype(np.float64).reshape(shape)
    if "tessera.network" in meta:
        net = json.loads(meta["tessera.network"])
        if net.get("kind") == "efficientnet_lite0" and net.get("activation") == "relu6" and net.get("padding") == "tf_same":
            logits = efficientnet_lite0(t, net, x)
        elif net.get("kind") == "small_cnn" and net.get("pool") == "max2" and net.get("activation") == "relu":
            logits = small_cnn(t, net, x)
        else:
            raise SystemExit(f"unsupported network: {net}")
    else:
        logits = sequential(t, meta.get("tessera.architecture", ""), x)
    logits.astype("<f4").tofile(out)
    print(f"logits {logits.shape} from {len(t)} tensors")


if __name__ == "__main__":
    main()
