#!/usr/bin/env python3
"""Writes two tiny, deliberately broken EfficientNet-Lite0 checkpoints in
PyTorch's legacy (non-zip) format, for tessera-vision's loader error tests:

- lite0-missing-tensors.pth: only `_conv_stem.weight` (right shape), so the
  loader must report a missing tensor;
- lite0-misshaped-stem.pth: every key of the real layout is absent except
  `_conv_stem.weight`, whose shape is [32, 3, 5, 5] instead of [32, 3, 3, 3].

Needs torch (Debian `python3-torch` works). Values are zeros: size, not
content, matters here.
"""
import torch

torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, "lite0-missing-tensors.pth",
           _use_new_zipfile_serialization=False)
torch.save({"_conv_stem.weight": torch.zeros(32, 3, 5, 5)}, "lite0-misshaped-stem.pth",
           _use_new_zipfile_serialization=False)
