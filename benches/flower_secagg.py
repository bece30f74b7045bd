#!/usr/bin/env python3
"""Flower's SecAgg+ masking and unmasking, timed on the points of Tessera's
`secagg` criterion bench, so the two can be compared side by side (issue #4).

It calls Flower's own primitives (PyPI `flwr`, `flwr.common.secure_aggregation`)
in the order Flower's client mod (`secaggplus_mod._collect_masked_vectors`) and
server workflow (`SecAggPlusWorkflow.collect_masked_vectors_stage`,
`unmask_stage`) call them, without Flower's messaging around them:

- client: `quantize` (+ weight factor), then the masking proper:
  `pseudo_rand_gen` of the private seed, and per neighbour
  `generate_shared_key` + `pseudo_rand_gen` + add/subtract, then `parameters_mod`;
- aggregator "sum": `parameters_addition` of every survivor's masked vector
  (deserialization not timed), then `parameters_mod`;
- aggregator "unmask": `combine_shares` per member, `pseudo_rand_gen` of every
  survivor's private mask, and for every dropout `generate_shared_key` +
  `pseudo_rand_gen` with each of its neighbours (as Flower does: all of
  them), `parameters_mod`; `dequantize` is timed apart, since Tessera's
  `ServerSession::finish` stops at the integer sum.

Every aggregator run checks that the unmasked integer sum equals the sum of
the survivors' quantized vectors. Output: one JSON object per line.

Usage (Flower in a venv outside the repository):
    python3 -m venv /work/venv-flwr && /work/venv-flwr/bin/pip install 'flwr==1.*'
    /work/venv-flwr/bin/python benches/flower_secagg.py            # headline points
    /work/venv-flwr/bin/python benches/flower_secagg.py --grid full
"""

import argparse
import json
import math
import os
import platform
import random
import sys
import time

try:
    import numpy as np
    import flwr
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_multiply,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )
except ImportError as e:  # Flower is optional: say so and stop.
    print(json.dumps({"skipped": f"flwr not importable: {e}"}))
    sys.exit(0)

# Flower's SecAggPlusWorkflow defaults.
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 1 << 22
MODULUS_RANGE = 1 << 32
MAX_WEIGHT = 1000.0


def ceil_log2(n):
    return max(1, math.ceil(math.log2(n)))


def neighbourhood_size(n, graph):
    """Share holders per member: Flower's `num_shares` (member + neighbours)."""
    if graph == "secagg":
        return n
    k = 2 * ceil_log2(n)  # as Tessera's bench: SecAgg+ degree 2*ceil(log2 n)
    half = (k + 1) // 2
    return n if 2 * half >= n - 1 else 2 * half + 1


def threshold(m):
    """Tessera's default: ceil(2m/3), at least a strict majority and 2."""
    return max(-(-2 * m // 3), m // 2 + 1, 2)


def size_label(d):
    return f"d{d // 1_000_000}M" if d % 1_000_000 == 0 else f"d{d // 1000}k"


class Cohort:
    """Keys, ring layout and neighbour sets, as Flower's setup stage builds them."""

    def __init__(self, n, graph, seed):
        rng = random.Random(seed)
        self.n = n
        self.m = neighbourhood_size(n, graph)
        self.t = threshold(self.m)
        ids = list(range(n))
        rng.shuffle(ids)
        half = self.m >> 1
        self.neighbours = {
            nid: {ids[(i + off) % n] for off in range(-half, half + 1)} - {nid} for i, nid in enumerate(ids)
        }
        if self.m == n:  # complete graph
            self.neighbours = {nid: set(range(n)) - {nid} for nid in range(n)}
        self.sk1, self.pk1 = {}, {}
        for nid in range(n):
            sk, pk = generate_key_pairs()
            self.sk1[nid], self.pk1[nid] = private_key_to_bytes(sk), public_key_to_bytes(pk)

    def choose_dropouts(self, count, seed):
        """Greedy, as Tessera's bench: every neighbourhood keeps >= t survivors.
        If none is found with the default t, t drops to a strict majority (as there)."""
        for t in (self.t, self.m // 2 + 1):
            self.t = max(t, 2)
            found = self._choose(count, seed)
            if found is not None:
                return found
        raise RuntimeError(f"no dropout set of {count} keeps every neighbourhood at {self.t}")

    def _choose(self, count, seed):
        for attempt in range(64):
            order = list(range(self.n))
            random.Random(seed + attempt).shuffle(order)
            alive = {u: len(self.neighbours[u]) + 1 for u in range(self.n)}
            dropped = set()
            for v in order:
                if len(dropped) == count:
                    break
                hood = self.neighbours[v] | {v}
                if self.n - len(dropped) > self.t and all(alive[u] > self.t for u in hood):
                    for u in hood:
                        alive[u] -= 1
                    dropped.add(v)
            if len(dropped) == count:
                return dropped
        return None


def client_quantize(params, num_examples):
    """Flower client, before masking: weight factor, quantize, prepend the factor."""
    ratio = num_examples / MAX_WEIGHT
    q_ratio = round(ratio * QUANTIZATION_RANGE)
    dq_ratio = q_ratio / QUANTIZATION_RANGE
    params = parameters_multiply(params, dq_ratio)
    quantized = quantize(params, CLIPPING_RANGE, QUANTIZATION_RANGE)
    return factor_combine(q_ratio, quantized)


def client_mask(cohort, nid, rd_seed, quantized):
    """Flower client's masking proper (secaggplus_mod._collect_masked_vectors)."""
    dims = [a.shape for a in quantized]
    private_mask = pseudo_rand_gen(rd_seed, MODULUS_RANGE, dims)
    quantized = parameters_addition(quantized, private_mask)
    sk1 = bytes_to_private_key(cohort.sk1[nid])
    for other in cohort.neighbours[nid]:
        shared_key = generate_shared_key(sk1, bytes_to_public_key(cohort.pk1[other]))
        pairwise_mask = pseudo_rand_gen(shared_key, MODULUS_RANGE, dims)
        if nid > other:
            quantized = parameters_addition(quantized, pairwise_mask)
        else:
            quantized = parameters_subtraction(quantized, pairwise_mask)
    return parameters_mod(quantized, MODULUS_RANGE)


def update(d, rng):
    return [rng.uniform(-1.0, 1.0, size=d).astype(np.float32)]


def bench_client(n, d, graph, repeats):
    cohort = Cohort(n, graph, seed=1)
    rng = np.random.default_rng(5)
    params = update(d, rng)
    rd_seed = os.urandom(32)
    q_times, m_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        quantized = client_quantize(params, 100)
        t1 = time.perf_counter()
        client_mask(cohort, 0, rd_seed, quantized)
        t2 = time.perf_counter()
        q_times.append(t1 - t0)
        m_times.append(t2 - t1)
    return {
        "kind": "client_mask",
        "point": f"{graph}/n{n}/{size_label(d)}",
        "neighbours": len(cohort.neighbours[0]),
        "mask_s": min(m_times),
        "quantize_s": min(q_times),
        "mask_runs_s": m_times,
        "repeats": repeats,
    }


def bench_aggregator(n, d, graph, dropout_pct, repeats):
    cohort = Cohort(n, graph, seed=1)
    dropped = cohort.choose_dropouts((n * dropout_pct + 50) // 100, seed=3)
    survivors = [u for u in range(n) if u not in dropped]
    rng = np.random.default_rng(7)
    rd_seed = {u: os.urandom(32) for u in range(n)}
    # Shares each member dealt to its neighbourhood (untimed): the survivors'
    # self-mask seeds and the dropouts' secret keys are what unmasking needs.
    holders = {u: sorted(cohort.neighbours[u] | {u}) for u in range(n)}
    shares = {}
    for u in range(n):
        secret = cohort.sk1[u] if u in dropped else rd_seed[u]
        dealt = create_shares(secret, cohort.t, len(holders[u]))
        alive = [i for i, h in enumerate(holders[u]) if h not in dropped]
        shares[u] = [dealt[i] for i in alive]
    best = None
    for _ in range(repeats):
        t_sum = 0.0
        masked_sum = None
        expected = None
        for u in survivors:
            quantized = client_quantize(update(d, rng), 100)
            wide = [a.astype(np.int64) for a in quantized]
            expected = wide if expected is None else parameters_addition(expected, wide)
            vec = client_mask(cohort, u, rd_seed[u], quantized)
            t0 = time.perf_counter()
            masked_sum = vec if masked_sum is None else parameters_addition(masked_sum, vec)
            t_sum += time.perf_counter() - t0
        t0 = time.perf_counter()
        masked_sum = parameters_mod(masked_sum, MODULUS_RANGE)
        t_sum += time.perf_counter() - t0

        # Flower's unmask_stage, from "Remove masks for every active client".
        t0 = time.perf_counter()
        masked_vector = masked_sum
        t_combine = 0.0
        for nid in range(n):
            share_list = shares[nid][: cohort.t]
            t1 = time.perf_counter()
            secret = combine_shares(share_list)
            t_combine += time.perf_counter() - t1
            if nid not in dropped:
                private_mask = pseudo_rand_gen(secret, MODULUS_RANGE, get_parameters_shape(masked_vector))
                masked_vector = parameters_subtraction(masked_vector, private_mask)
            else:
                for neighbor_nid in cohort.neighbours[nid]:
                    shared_key = generate_shared_key(
                        bytes_to_private_key(secret), bytes_to_public_key(cohort.pk1[neighbor_nid])
                    )
                    pairwise_mask = pseudo_rand_gen(shared_key, MODULUS_RANGE, get_parameters_shape(masked_vector))
                    if nid > neighbor_nid:
                        masked_vector = parameters_addition(masked_vector, pairwise_mask)
                    else:
                        masked_vector = parameters_subtraction(masked_vector, pairwise_mask)
        recon = parameters_mod(masked_vector, MODULUS_RANGE)
        t_unmask = time.perf_counter() - t0

        t0 = time.perf_counter()
        q_total_ratio, recon_parameters = factor_extract(recon)
        inv_dq_total_ratio = QUANTIZATION_RANGE / q_total_ratio
        aggregated = dequantize(recon_parameters, CLIPPING_RANGE, QUANTIZATION_RANGE)
        offset = -(len(survivors) - 1) * CLIPPING_RANGE
        for vec in aggregated:
            vec += offset
            vec *= inv_dq_total_ratio
        t_dequantize = time.perf_counter() - t0

        want = parameters_mod(expected, MODULUS_RANGE)
        if not all(np.array_equal(a, b) for a, b in zip(recon, want)):
            raise RuntimeError("Flower unmasking did not recover the survivors' sum")
        run = {"sum_s": t_sum, "unmask_s": t_unmask, "of_which_combine_shares_s": t_combine,
               "dequantize_s": t_dequantize}
        if best is None or run["sum_s"] + run["unmask_s"] < best["sum_s"] + best["unmask_s"]:
            best = run
    return {
        "kind": "aggregator",
        "point": f"{graph}/n{n}/{size_label(d)}/drop{dropout_pct}",
        "survivors": len(survivors),
        "threshold": cohort.t,
        "total_s": best["sum_s"] + best["unmask_s"],
        **best,
        "repeats": repeats,
    }


HEADLINE_CLIENT = [(100, 1_000_000, "secagg+"), (100, 1_000_000, "secagg"), (1000, 1_000_000, "secagg+"),
                   (10, 1_000_000, "secagg")]
HEADLINE_AGGREGATOR = [(100, 1_000_000, "secagg+", 10), (100, 1_000_000, "secagg+", 0),
                       (100, 1_000_000, "secagg+", 30), (100, 1_000_000, "secagg", 10), (10, 1_000_000, "secagg", 10)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", choices=["headline", "full"], default="headline")
    ap.add_argument("--only", help="substring filter on the point label, e.g. 'n100/d1M'")
    ap.add_argument("--kind", choices=["client", "aggregator"], help="only this kind of point")
    ap.add_argument("--repeats", type=int, default=3, help="client repeats (aggregator: 1 + repeats // 3)")
    args = ap.parse_args()
    print(json.dumps({"flwr": flwr.__version__, "numpy": np.__version__, "python": platform.python_version(),
                      "grid": args.grid}), flush=True)
    if args.grid == "full":
        sizes, cohorts = [100_000, 1_000_000], [10, 100, 1000]
        clients = [(n, d, g) for n in cohorts for d in sizes for g in ("secagg", "secagg+")
                   if not (g == "secagg" and n >= 1000)]
        aggs = [(n, d, g, p) for n in cohorts for d in sizes for g in ("secagg", "secagg+") for p in (0, 10, 30)
                if not (g == "secagg" and n >= 1000)]
    else:
        clients, aggs = HEADLINE_CLIENT, HEADLINE_AGGREGATOR
    if args.kind == "aggregator":
        clients = []
    if args.kind == "client":
        aggs = []
    for n, d, g in clients:
        if args.only and args.only not in f"{g}/n{n}/{size_label(d)}":
            continue
        print(json.dumps(bench_client(n, d, g, args.repeats)), flush=True)
    for n, d, g, p in aggs:
        if args.only and args.only not in f"{g}/n{n}/{size_label(d)}/drop{p}":
            continue
        print(json.dumps(bench_aggregator(n, d, g, p, 1 + args.repeats // 3)), flush=True)


if __name__ == "__main__":
    main()
