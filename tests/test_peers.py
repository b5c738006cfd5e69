"""FedDF and HeteroFL: hand-checked aggregation, and their reductions to FedAvg."""

from __future__ import annotations

import pytest
import torch

from reft import data, engine, models, strategies
from reft.config import RunConfig
from reft.strategies import heterofl

TINY = dict(
    private_size=300, public_size=200, test_size=200, n_clients=3, rounds=2, widths=[4, 8, 16, 16],
    distill_epochs=2, progress=False, eval_clients=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def splits(fmnist: data.Splits, one_thread: None) -> data.Splits:
    return fmnist


def test_per_entry_averaging_by_hand() -> None:
    g = {"w": torch.full((3, 2), 9.0)}
    a = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}  # full width, weight 1
    b = {"w": torch.tensor([[10.0], [20.0]])}  # leading 2x1 slice, weight 3
    out = strategies.average_overlapping(g, [a, b], [1.0, 3.0])["w"]
    expected = torch.tensor(
        [
            [(1 + 3 * 10) / 4, 2.0],  # both hold [0,0]; only a holds column 1
            [(3 + 3 * 20) / 4, 4.0],
            [5.0, 6.0],  # only a holds row 2
        ]
    )
    assert torch.equal(out, expected)
    only_b = strategies.average_overlapping(g, [b], [1.0])["w"]
    assert torch.equal(only_b[2], torch.full((2,), 9.0)) and torch.equal(only_b[:, 1], torch.full((3,), 9.0))


def test_leading_slice_builds_a_working_sub_model() -> None:
    big = models.build("resnet18", 10, 3, widths=[8, 16, 16, 16] + [8] * 8)
    small = models.build("resnet18", 10, 3, widths=[4, 8, 8, 8] + [4] * 8)
    small.load_state_dict(heterofl.leading_slice(big.state_dict(), small.state_dict()))
    assert torch.equal(small.stem[0].weight, big.stem[0].weight[:4, :3])
    assert small.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="does not fit"):
        heterofl.leading_slice(small.state_dict(), big.state_dict())


def _same_history(a: engine.RunResult, b: engine.RunResult) -> None:
    cols = ["server_acc", "bytes_up", "bytes_down"]
    assert a.history[cols].equals(b.history[cols])
    sa, sb = a.strategy.server_model.state_dict(), b.strategy.server_model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_heterofl_at_full_width_is_fedavg(splits: data.Splits) -> None:
    cfg = RunConfig(algorithm="fedavg", max_ratio=0.0, **TINY)
    fedavg = engine.run(cfg, splits)
    _same_history(fedavg, engine.run(cfg, splits, strategy=strategies.HeteroFL(bn="averaged")))
    # static BN (the default) changes only the BN running statistics, never what is learned
    static = engine.run(cfg.replace(algorithm="heterofl"), splits).strategy.server_model
    ref = fedavg.strategy.server_model
    assert all(torch.equal(a, b) for a, b in zip(static.parameters(), ref.parameters(), strict=True))
    means = [[m.running_mean for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)] for net in (static, ref)]
    assert not all(torch.equal(a, b) for a, b in zip(*means, strict=True))


def test_heterofl_static_bn_statistics_are_the_public_sets(splits: data.Splits) -> None:
    cfg = RunConfig(algorithm="heterofl", max_ratio=0.5, **TINY)
    fed_result = engine.run(cfg, splits)
    model = fed_result.strategy.server_model
    public_x = engine.prepare(cfg, splits).public.x
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():  # update_bn's cumulative average: every batch of the public set counts once
        batch_means = [first_conv(xb).mean(dim=(0, 2, 3)) for xb in public_x.split(cfg.distill_batch_size)]
    gap = (first_bn.running_mean - torch.stack(batch_means).mean(0)).abs().max()
    assert gap < 5e-5  # (the plain mean over all samples differs by ~1e-3 here: 200 = 128 + 72)
    with pytest.raises(ValueError, match="Valid modes: public, averaged"):
        strategies.HeteroFL(bn="nope")


def test_feddf_one_group_without_distillation_is_fedavg(splits: data.Splits) -> None:
    cfg = RunConfig(algorithm="fedavg", max_ratio=0.0, **TINY)
    feddf = engine.run(cfg, splits, strategy=strategies.FedDF(distill=False))
    assert len(feddf.strategy.groups) == 1
    _same_history(engine.run(cfg, splits), feddf)


def test_heterofl_and_feddf_with_heterogeneous_tiers(splits: data.Splits) -> None:
    small = {**TINY, "private_size": 1500, "rounds": 3, "widths": [8, 16, 32, 32]}
    cfg = RunConfig(algorithm="heterofl", max_ratio=0.5, **small)
    het = engine.run(cfg, splits)
    widths = {tuple(w) for w in het.strategy.tier_widths.values()}
    assert len(widths) > 1  # clients really got different sub-models
    full = models.build(**het.strategy.server_model.spec)
    assert het.strategy.server_model.widths == full.widths  # the global model stays dense
    df = engine.run(cfg.replace(algorithm="feddf"), splits)
    assert len(df.strategy.groups) == len(widths)
    # FedDF broadcasts every round: down bytes every round, like FedAvg
    assert (df.history["bytes_down"] > 0).all() and (het.history["bytes_down"] > 0).all()
    assert df.history["server_acc"].max() > 0.25 and het.history["server_acc"].max() > 0.25  # chance: 0.1
