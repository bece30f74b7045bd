#!/usr/bin/env python3
"""Writes the committed Fashion-MNIST subset: a class-stratified sample of
TRAIN_PER_CLASS training and TEST_PER_CLASS test images, in the original IDX
format, gzip-compressed with a zero timestamp so reruns are byte-identical.

Source: Debian package `dataset-fashion-mnist` (IDX files under
/usr/share/datasets/fashion-mnist/). Standard library only.

    python3 make_subset.py [SOURCE_DIR]
"""
import gzip
import hashlib
import os
import random
import struct
import sys

SOURCE_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 100
SEED = 20240611


def read_checked(src, name):
    raw = open(os.path.join(src, name), "rb").read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256[name]:
        sys.exit(f"{name}: sha256 {digest} does not match the published one")
    return gzip.decompress(raw)


def parse(data, rank):
    magic = struct.unpack(">I", data[:4])[0]
    assert magic == 0x0800 + rank, f"bad magic {magic:#x}"
    dims = struct.unpack(">" + "I" * rank, data[4 : 4 + 4 * rank])
    return dims, data[4 + 4 * rank :]


def write_idx(path, dims, body):
    header = struct.pack(">I", 0x0800 + len(dims)) + struct.pack(">" + "I" * len(dims), *dims)
    with open(path, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as g:
            g.write(header + body)


def subset(src, prefix, per_class, rng):
    (n, rows, cols), pixels = parse(read_checked(src, f"{prefix}-images-idx3-ubyte.gz"), 3)
    (n_labels,), labels = parse(read_checked(src, f"{prefix}-labels-idx1-ubyte.gz"), 1)
    assert n == n_labels
    by_class = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    keep = sorted(i for c in sorted(by_class) for i in rng.sample(by_class[c], per_class))
    size = rows * cols
    write_idx(f"{prefix}-images-idx3-ubyte.gz", (len(keep), rows, cols), b"".join(pixels[i * size : (i + 1) * size] for i in keep))
    write_idx(f"{prefix}-labels-idx1-ubyte.gz", (len(keep),), bytes(labels[i] for i in keep))
    print(f"{prefix}: {len(keep)} of {n} images")


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    rng = random.Random(SEED)
    subset(src, "train", TRAIN_PER_CLASS, rng)
    subset(src, "t10k", TEST_PER_CLASS, rng)
    for name in sorted(SOURCE_SHA256):
        print(hashlib.sha256(open(name, "rb").read()).hexdigest(), name)


if __name__ == "__main__":
    main()
