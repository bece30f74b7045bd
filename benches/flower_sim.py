#!/usr/bin/env python3
"""Flower's simulation on Tessera's WDBC workload, for the client-rounds/s
comparison with `benches/benches/sim.rs` (issue #7, docs/benchmarks.md).

Same data and split: the member row numbers come from
`tessera-sim partition simulations/hospitals-wdbc.toml --indices FILE`
(5 members, stratified 75/25 train/test per member). Same model and local
training: MLP 30-16-2 (ReLU), softmax cross-entropy, plain SGD, learning
rate 0.1, batch 16, 3 local epochs, features standardized with each
member's own training statistics; FedAvg weighted by training examples,
10 rounds, every member in every round, evaluation on every member's test
split each round. The model is NumPy (torch is not installed here).

Flower runs through its Simulation Runtime (`flwr.simulation.run_simulation`,
Ray backend, one CPU per virtual client), with the Message API workflows:
`DefaultWorkflow` (plaintext FedAvg) or `DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))` plus the client mod `secaggplus_mod` (secure
aggregation). Printed: one JSON object per setting, with the wall time of
`run_simulation` (Ray start included) and of the ServerApp's rounds alone.

Usage:
    /work/venv-flwr/bin/pip install 'flwr[simulation]==1.42.*'
    target/debug/tessera-sim partition simulations/hospitals-wdbc.toml --indices /tmp/wdbc-idx.json
    /work/venv-flwr/bin/python benches/flower_sim.py --indices /tmp/wdbc-idx.json
"""

import argparse
import csv
import json
import math
import os
import time

import numpy as np

ROUNDS = 10
EPOCHS = 3
BATCH = 16
LR = 0.1
HIDDEN = 16

HERE = os.path.dirname(os.path.abspath(__file__))
TIMES = {}


def load_wdbc(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    li = header.index("diagnosis")
    x = np.array([[float(v) for j, v in enumerate(r) if j != li] for r in body], dtype=np.float32)
    y = np.array([1 if r[li] == "malignant" else 0 for r in body], dtype=np.int64)
    return x, y


def init_params(seed=7):
    rng = np.random.default_rng(seed)
    w1 = rng.uniform(-1, 1, (30, HIDDEN)).astype(np.float32) / math.sqrt(30)
    w2 = rng.uniform(-1, 1, (HIDDEN, 2)).astype(np.float32) / math.sqrt(HIDDEN)
    return [w1, np.zeros(HIDDEN, np.float32), w2, np.zeros(2, np.float32)]


def forward(p, x):
    h = np.maximum(x @ p[0] + p[1], 0.0)
    z = h @ p[2] + p[3]
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return h, e / e.sum(axis=1, keepdims=True)


def train(p, x, y, seed):
    p = [a.copy() for a in p]
    rng = np.random.default_rng(seed)
    for _ in range(EPOCHS):
        order = rng.permutation(len(y))
        for s in range(0, len(y), BATCH):
            b = order[s : s + BATCH]
            xb, yb = x[b], y[b]
            h, prob = forward(p, xb)
            g = prob.copy()
            g[np.arange(len(b)), yb] -= 1.0
            g /= len(b)
            gw2, gb2 = h.T @ g, g.sum(0)
            gh = (g @ p[2].T) * (h > 0)
            gw1, gb1 = xb.T @ gh, gh.sum(0)
            for a, d in zip(p, (gw1, gb1, gw2, gb2)):
                a -= LR * d
    return p


def evaluate(p, x, y):
    _, prob = forward(p, x)
    loss = float(-np.log(prob[np.arange(len(y)), y] + 1e-12).mean())
    acc = float((prob.argmax(1) == y).mean())
    return loss, acc


def build_apps(members, secure):
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    n = len(members)

    class Member(NumPyClient):
        def __init__(self, k):
            self.k = k
            self.x, self.y, self.xt, self.yt = members[k]

        def fit(self, parameters, config):
            seed = int(config.get("server_round", 0)) * 1000 + self.k
            return train(parameters, self.x, self.y, seed), len(self.y), {}

        def evaluate(self, parameters, config):
            loss, acc = evaluate(parameters, self.xt, self.yt)
            return loss, len(self.yt), {"accuracy": acc}

    def client_fn(context: Context):
        return Member(int(context.node_config["partition-id"])).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secure else [])

    def weighted(metrics):
        total = sum(k for k, _ in metrics)
        return {"accuracy": sum(k * m["accuracy"] for k, m in metrics) / total}

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        t0 = time.perf_counter()
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=n,
            min_evaluate_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(init_params()),
            on_fit_config_fn=lambda r: {"server_round": r},
            evaluate_metrics_aggregation_fn=weighted,
        )
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=ROUNDS), strategy=strategy)
        fit = SecAggPlusWorkflow(num_shares=n, reconstruction_threshold=math.ceil(2 * n / 3)) if secure else None
        DefaultWorkflow(fit_workflow=fit)(grid, ctx)
        TIMES["rounds_s"] = time.perf_counter() - t0
        hist = ctx.history.metrics_distributed.get("accuracy", [])
        TIMES["final_accuracy"] = hist[-1][1] if hist else None

    return server_app, client_app


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--indices", required=True, help="tessera-sim partition --indices output")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "examples", "data", "wdbc.csv"))
    ap.add_argument("--settings", default="plaintext,secure")
    args = ap.parse_args()
    x, y = load_wdbc(args.data)
    members = []
    for m in json.load(open(args.indices)):
        tr, te = np.array(m["train"]), np.array(m["test"])
        mu, sd = x[tr].mean(0), x[tr].std(0)
        sd[sd == 0] = 1.0
        members.append(((x[tr] - mu) / sd, y[tr], (x[te] - mu) / sd, y[te]))
    from flwr.simulation import run_simulation

    for setting in args.settings.split(","):
        server_app, client_app = build_apps(members, setting == "secure")
        t0 = time.perf_counter()
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(members),
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )
        wall = time.perf_counter() - t0
        cr = len(members) * ROUNDS
        print(
            json.dumps(
                {
                    "framework": "flower",
                    "setting": setting,
                    "members": len(members),
                    "rounds": ROUNDS,
                    "wall_s": round(wall, 3),
                    "rounds_s": round(TIMES.get("rounds_s", float("nan")), 3),
                    "client_rounds_per_s_wall": round(cr / wall, 2),
                    "client_rounds_per_s_rounds": round(cr / TIMES.get("rounds_s", float("nan")), 2),
                    "final_accuracy": TIMES.get("final_accuracy"),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
