"""FedDF and HeteroFL: hand-checked aggregation, and their reductions to FedAvg."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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


def test_classifier_rows_average_over_the_clients_holding_the_class() -> None:
    het = strategies.HeteroFL()
    het.server_model = models.build("cnn", widths=[4, 8, 16, 16])
    g = {"classifier.weight": torch.zeros(10, 2), "classifier.bias": torch.full((10,), 7.0)}
    a = {"classifier.weight": torch.ones(10, 2), "classifier.bias": torch.ones(10)}  # holds classes 0, 1
    b = {"classifier.weight": torch.full((10, 2), 5.0), "classifier.bias": torch.full((10,), 5.0)}  # holds 1, 2
    masks = [het.row_masks([0, 1]), het.row_masks([1, 2])]
    out = strategies.average_overlapping(g, [a, b], [1.0, 1.0], masks)
    assert out["classifier.weight"][:, 0].tolist() == [1.0, 3.0, 5.0] + [0.0] * 7  # rows nobody holds keep g
    assert out["classifier.bias"].tolist() == [1.0, 3.0, 5.0] + [7.0] * 7


def test_heterofl_aggregate_averages_a_class_row_only_over_clients_holding_it(splits: data.Splits) -> None:
    cfg = RunConfig(algorithm="heterofl", partition="dirichlet", alpha=0.05, tier_mix=["laptop"], **TINY)
    fed = engine.Federation(cfg, engine.prepare(cfg, splits))
    het = strategies.HeteroFL(bn="averaged")
    het.setup(fed)
    held = [set(c.labels) for c in fed.clients]
    missing = next(k for k in range(10) if any(k not in h for h in held) and any(k in h for h in held))
    uploads = {}
    for c in fed.clients:  # every upload's classifier bias is its client id
        m = het.send(fed, 1, c)
        m.classifier.bias.data.fill_(float(c.id))
        uploads[c.id] = m
    het.aggregate(fed, 1, uploads)
    holders = [c.id for c in fed.clients if missing in held[c.id]]
    assert het.server_model.classifier.bias[missing].item() == pytest.approx(sum(holders) / len(holders))
    het_all = strategies.HeteroFL(bn="averaged", label_rows=False)
    het_all.setup(fed)
    het_all.aggregate(fed, 1, uploads)
    assert het_all.server_model.classifier.bias[missing].item() == pytest.approx(sum(range(3)) / 3)


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
    # same weighting for both (HeteroFL's own is uniform, FedAvg's by samples); the Scaler is the identity
    # at full width; masking off (masked cross-entropy is HeteroFL's, not FedAvg's)
    cfg = RunConfig(algorithm="fedavg", max_ratio=0.0, weighting="samples", **TINY)
    fedavg = engine.run(cfg, splits)
    plain = strategies.HeteroFL(bn="averaged", masked_ce=False, label_rows=False)
    _same_history(fedavg, engine.run(cfg, splits, strategy=plain))
    # static BN (the default) changes only the BN running statistics, never what is learned
    static = engine.run(cfg, splits, strategy=strategies.HeteroFL(masked_ce=False)).strategy.server_model
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
    cfg = RunConfig(algorithm="fedavg", max_ratio=0.0, weighting="samples", **TINY)
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


def test_scaler_divides_the_input_of_narrow_norms_by_the_rate_in_training_only() -> None:
    torch.manual_seed(0)
    full = models.build("cnn", widths=[4, 8, 16, 16])
    sub = models.build("cnn", widths=[2, 8, 16, 4])  # conv1 at rate 2/4, hidden layer at rate 4/16
    bn1, bn2, norm = sub.features[1], sub.features[5], sub.fc_norm
    seen: dict[str, torch.Tensor] = {}
    x, h, x2 = torch.randn(3, 2, 14, 14), torch.randn(3, 4), torch.randn(3, 8, 7, 7)
    with heterofl.scaler(sub, full):
        for name, m in {"bn1": bn1, "bn2": bn2, "norm": norm}.items():  # registered after the Scaler: see its output
            m.register_forward_pre_hook(lambda _m, i, n=name: seen.update({n: i[0]}))
        sub.train()
        bn1(x), bn2(x2), norm(h)
        assert torch.equal(seen["bn1"], x / 0.5) and torch.equal(seen["norm"], h / 0.25)
        assert torch.equal(seen["bn2"], x2)  # full width: rate 1, untouched
        sub.eval()
        bn1(x), norm(h)
        assert torch.equal(seen["bn1"], x) and torch.equal(seen["norm"], h)  # eval: identity
    for m in (bn1, bn2, norm):
        m._forward_pre_hooks.clear()  # this test's own hooks
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in sub.modules())  # the Scaler's are removed


def test_masked_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0, 5.0, 0.5]])
    y = torch.tensor([0])
    loss = heterofl.masked_cross_entropy(torch.tensor([0, 1, 1]), num_classes=4)  # the client holds 0 and 1
    # classes 2 and 3 are absent: their logits become 0 (not -inf), as in the published code
    want = -(2.0 - torch.log(torch.exp(torch.tensor([2.0, -1.0, 0.0, 0.0])).sum()))
    assert torch.allclose(loss(logits, y), want)
    z = logits.clone().requires_grad_()
    loss(z, y).backward()
    assert torch.equal(z.grad[0, 2:], torch.zeros(2)) and (z.grad[0, :2] != 0).all()  # absent classes: no gradient
    every = heterofl.masked_cross_entropy(torch.arange(4), num_classes=4)
    assert torch.equal(every(logits, y), F.cross_entropy(logits, y))


def test_heterofl_trains_with_scaler_and_mask_and_leaves_no_hooks(splits: data.Splits) -> None:
    cfg = RunConfig(algorithm="heterofl", max_ratio=0.5, partition="shards", **TINY)
    runs = {
        (s, m): engine.run(cfg, splits, strategy=strategies.HeteroFL(scaler=s, masked_ce=m))
        for s, m in [(True, True), (False, True), (True, False)]
    }
    weights = {k: r.strategy.server_model.state_dict()["fc.weight"] for k, r in runs.items()}
    assert not torch.equal(weights[(True, True)], weights[(False, True)])  # the Scaler changed training
    assert not torch.equal(weights[(True, True)], weights[(True, False)])  # so did the mask (2 classes per shard)
    for r in runs.values():
        for m in r.client_models.values():
            assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())
    opts = runs[(True, True)].strategy.local_options(None, None)
    assert opts == {"scaler_widths": [4, 8, 16, 16], "masked_ce": True}
