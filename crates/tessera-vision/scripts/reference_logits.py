#!/usr/bin/env python3
"""Reference logits of EfficientNet-Lite0 for a fixed input, from the
PyTorch port (PyPI `efficientnet-lite-pytorch==0.1.0`), for the Rust test
`tests/efficientnet_reference.rs`.

Run once, needs torch (Debian `python3-torch` works) and the weights from
scripts/fetch-weights.sh:

    pip download efficientnet-lite-pytorch==0.1.0 --no-deps -d /tmp/eflite
    PYTHONPATH=<unzipped wheel> python3 reference_logits.py WEIGHTS OUT.json

The input is `x[i] = ((i * 7919) % 1000) / 500 - 1` over the flat index of a
1x3x96x96 tensor: exact in f32, so the Rust side rebuilds it bit for bit.
"""
import json
import sys

import torch
from efficientnet_lite_pytorch import EfficientNet

SIZE = 96


def main(weights, out):
    torch.set_num_threads(2)
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    n = 3 * SIZE * SIZE
    x = torch.tensor([((i * 7919) % 1000) / 500.0 - 1.0 for i in range(n)], dtype=torch.float32)
    x = x.reshape(1, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.extract_features(x).mean(dim=(2, 3))
        logits = model(x)
    json.dump(
        {
            "model": "efficientnet-lite0",
            "source": "efficientnet-lite-pytorch==0.1.0, torch " + torch.__version__,
            "input": "x[i] = ((i * 7919) % 1000) / 500 - 1, shape [1, 3, 96, 96]",
            "features_first_32": [round(float(v), 7) for v in feats[0, :32]],
            "logits": [float(v) for v in logits[0]],
        },
        open(out, "w"),
        indent=None,
    )
    print("top-5 classes:", torch.topk(logits[0], 5).indices.tolist())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
