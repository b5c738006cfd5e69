"""The simulated clock: slowest client plus the server's work, and pruned models at their measured speed."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from reft import costs, data, engine, measure, models, tiers
from reft.config import RunConfig

TINY = dict(
    private_size=300, public_size=200, test_size=100, n_clients=3, rounds=1, widths=[4, 8, 16, 16], max_ratio=0.5,
    distill_epochs=2, progress=False, eval_clients=False,
)  # fmt: skip
X = torch.zeros(1, 1, 28, 28)


def test_speed_factor_by_hand() -> None:
    table = pd.read_csv(Path(costs.__file__).parent / costs.SPEEDUPS).query("model == 'cnn'")
    table = table.sort_values("flops_fraction")
    (f1, e1), (f2, e2) = table[["flops_fraction", "speedup_vs_ideal"]].iloc[2:4].to_numpy()
    assert costs.speed_factor("cnn", f1) == pytest.approx(e1)
    assert costs.speed_factor("cnn", math.sqrt(f1 * f2)) == pytest.approx((e1 + e2) / 2)  # halfway in log FLOPs
    assert costs.speed_factor("cnn", 1.0) == 1.0
    assert costs.speed_factor("cnn", 1e-9) == pytest.approx(table["speedup_vs_ideal"].iloc[0])  # flat beyond
    assert costs.speed_factor("no-such-model", 0.1) == 1.0  # unmeasured: timed by FLOPs
    with pytest.raises(ValueError, match="flops_fraction"):
        costs.speed_factor("cnn", 0.0)


def test_pruned_compute_time_uses_the_measured_speed() -> None:
    t = tiers.load_tiers()
    rate = t.loc["phone", "sustained_flops"]
    assert tiers.round_time(t, "phone", 1e12, 0, 0) == pytest.approx(1e12 / rate)
    assert tiers.round_time(t, "phone", 1e12, 0, 0, speed=0.25) == pytest.approx(4e12 / rate)


def test_a_round_is_the_slowest_client_plus_the_server_by_hand(fmnist: data.Splits, one_thread) -> None:
    res = engine.run(RunConfig(algorithm="heterofl", **TINY), fmnist)
    t, h = tiers.load_tiers(), res.history.iloc[0]
    dense = models.build("cnn", widths=TINY["widths"])
    dense_flops = measure.train_flops(dense, X)
    led = res.ledger.frame().groupby(["client", "direction"])["bytes"].sum()
    clients = []
    for _, c in res.clients.iterrows():
        m = res.client_models[c["client"]]
        flops = measure.train_flops(m, X) * c["samples"]
        speed = costs.speed_factor("cnn", measure.train_flops(m, X) / dense_flops)
        row = t.loc[c["tier"]]
        clients.append(
            flops / (row["sustained_flops"] * speed)
            + led[(c["client"], "down")] * 8 / (row["downlink_mbps"] * 1e6)
            + led[(c["client"], "up")] * 8 / (row["uplink_mbps"] * 1e6)
        )
    assert len({tuple(w) for w in res.clients["widths"]}) > 1  # pruned clients really are in the race
    server = dense_flops / 3 * TINY["public_size"] / t["sustained_flops"].max()  # static BN: one forward pass
    assert h["sim_clients_s"] == pytest.approx(max(clients))
    assert h["sim_server_s"] == pytest.approx(server) and h["server_gflops"] == pytest.approx(dense_flops / 3 * 200e-9)
    assert h["sim_round_s"] == pytest.approx(max(clients) + server) == h["cum_sim_s"]


def test_distilling_servers_pay_for_their_work(fmnist: data.Splits, one_thread) -> None:
    reft = engine.run(RunConfig(algorithm="reft", **TINY), fmnist).history.iloc[0]
    fedavg = engine.run(RunConfig(algorithm="fedavg", **TINY), fmnist).history.iloc[0]
    assert fedavg["sim_server_s"] == 0.0 and fedavg["sim_round_s"] == fedavg["sim_clients_s"]
    teachers = sum(measure.train_flops(m, X) / 3 for m in [models.build("cnn", widths=TINY["widths"])]) * 200
    assert reft["server_gflops"] * 1e9 > teachers  # at least the teachers' passes, plus distillation
    assert reft["sim_round_s"] == pytest.approx(reft["sim_clients_s"] + reft["sim_server_s"])
    with pytest.raises(ValueError, match="(?i)unknown server_tier 'mainframe'"):
        engine.run(RunConfig(algorithm="fedavg", server_tier="mainframe", **TINY), fmnist)
