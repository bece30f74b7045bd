#!/usr/bin/env python3
"""Convert scikit-learn's breast_cancer.csv (first line: n_samples, n_features,
class names) into a plain CSV with named columns and a `diagnosis` label.

Usage: python3 convert_wdbc.py breast_cancer_sklearn.csv wdbc.csv
Standard library only; the output is byte-for-byte reproducible.
"""
import csv
import sys

BASE = ["radius", "texture", "perimeter", "area", "smoothness", "compactness",
        "concavity", "concave points", "symmetry", "fractal dimension"]
# scikit-learn's feature_names order: 10 means, 10 standard errors, 10 worst.
NAMES = [f"mean {b}" for b in BASE] + [f"{b} error" for b in BASE] + [f"worst {b}" for b in BASE]


def main(src: str, dst: str) -> None:
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    n_samples, n_features, *class_names = rows[0]
    body = rows[1:]
    assert len(body) == int(n_samples) and int(n_features) == len(NAMES)
    with open(dst, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(NAMES + ["diagnosis"])
        for r in body:
            assert len(r) == len(NAMES) + 1
            w.writerow(r[:-1] + [class_names[int(r[-1])]])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
