"""Faults a federation must survive: hostile or broken uploads, clients whose training diverges, bad configs."""

from __future__ import annotations

import json
import random
import struct
import time
import tracemalloc
from collections import Counter

import pytest
import torch

from reft import comm, data, engine, models, train
from reft.config import RunConfig

TINY = dict(
    private_size=600, public_size=200, test_size=300, n_clients=6, rounds=2, widths=[4, 8, 16, 16],
    distill_epochs=2, max_ratio=0.5, progress=False,
)  # fmt: skip
NAN_CLIENTS = (0, 1)


@pytest.fixture(scope="module")
def splits(fmnist: data.Splits, one_thread: None) -> data.Splits:
    return fmnist


def _tiny_model(seed: int = 0, widths: tuple[int, ...] = (4, 8, 16, 16)) -> models.ReftModel:
    torch.manual_seed(seed)
    m = models.build("cnn", widths=list(widths)).train()
    with torch.no_grad():
        m(torch.randn(8, 1, 28, 28))  # non-default BN statistics
    return m.eval()


def _split(payload: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8 : 8 + n]), payload[8 + n :]


def _join(header: dict | str, body: bytes) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _with_spec(payload: bytes, **changes) -> bytes:
    header, body = _split(payload)
    spec = {**json.loads(header["__metadata__"]["reft.spec"]), **changes}
    header["__metadata__"]["reft.spec"] = json.dumps({k: v for k, v in spec.items() if v is not ...})
    return _join(header, body)


def _nan_into(payload: bytes, rng: random.Random, value: float) -> bytes:
    """``value`` written over one float32 element of a random floating tensor."""
    header, body = _split(payload)
    floats = [e for k, e in header.items() if k != "__metadata__" and e["dtype"] == "F32"]
    begin, end = rng.choice(floats)["data_offsets"]
    at = begin + 4 * rng.randrange((end - begin) // 4)
    start = len(payload) - len(body)
    return payload[: start + at] + struct.pack("<f", value) + payload[start + at + 4 :]


_BAD_VALUES = [-1, 0, 10**6, 2**64, 1.5, "4", None, True, [4], {"a": 1}, "", 10**40]


def _mutate(payload: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded random corruption of a valid payload, and its kind."""
    header, body = _split(payload)
    names = [k for k in header if k != "__metadata__"]
    kind = rng.choice(["bitflip", "truncate", "extend", "header_len", "spec", "shape", "dtype", "offsets",
                       "entries", "nonfinite", "junk_header"])  # fmt: skip
    if kind == "bitflip":
        out = bytearray(payload)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return kind, bytes(out)
    if kind == "truncate":
        return kind, payload[: rng.randrange(len(payload))]
    if kind == "extend":
        return kind, payload + rng.randbytes(rng.randint(1, 64))
    if kind == "header_len":
        (n,) = struct.unpack("<Q", payload[:8])
        new = rng.choice([0, 1, n - 8, n + 8, n + rng.randint(1, 1000), len(payload), 2**31, 2**63, 2**64 - 1])
        return kind, struct.pack("<Q", max(0, new)) + payload[8:]
    if kind == "spec":
        field = rng.choice(["name", "num_classes", "in_channels", "widths", "extra", "missing"])
        if field == "name":
            return kind, _with_spec(payload, name=rng.choice(["vgg11", "resnet18", "mlp", "", 3, None, "cnn "]))
        if field == "widths":
            w = [4, 8, 16, 16]
            choice = rng.randrange(5)
            if choice == 0:  # one width too large (the dense cnn has [32, 64, 128, 128])
                w[rng.randrange(4)] = rng.choice([129, 10**6, 10**12])
            elif choice == 1:
                w[rng.randrange(4)] = rng.choice([0, -1, -(10**6)])
            elif choice == 2:
                w = w[: rng.randrange(4)] + [8] * rng.choice([0, 2])
            elif choice == 3:
                w[rng.randrange(4)] = rng.choice(_BAD_VALUES)
            else:
                w = rng.choice(["4,8,16,16", None, 4, {"0": 4}])
            return kind, _with_spec(payload, widths=w)
        if field in ("num_classes", "in_channels"):
            return kind, _with_spec(payload, **{field: rng.choice(_BAD_VALUES)})
        if field == "extra":
            return kind, _with_spec(payload, extra=1)
        return kind, _with_spec(payload, **{rng.choice(["name", "widths", "num_classes"]): ...})
    if kind in ("shape", "dtype", "offsets"):
        entry = header[rng.choice(names)]
        if kind == "shape":
            shape = entry["shape"]
            entry["shape"] = rng.choice([[], [10**12], [4, 10**9, 10**9], [-1], shape[::-1] + [1],
                                         [s + 1 for s in shape], "4", [1.0] * len(shape)])  # fmt: skip
        elif kind == "dtype":
            entry["dtype"] = rng.choice(["F16", "F64", "BF16", "I64", "I32", "U8", "BOOL", "F8_E4M3", "f32", 1, None])
        else:
            b, e = entry["data_offsets"]
            entry["data_offsets"] = rng.choice([[b, e + 4], [b + 4, e + 4], [e, b], [-8, e - b - 8], [0, 2**62],
                                                [b, 2**64 + 5], [b], [b, e, e], "0,8", [b * 1.0, e]])  # fmt: skip
        return kind, _join(header, body)
    if kind == "entries":
        choice = rng.randrange(4)
        if choice == 0:
            del header[rng.choice(names)]
        elif choice == 1:
            header["extra.weight"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(body), len(body) + 4]}
            body += b"\0" * 4
        elif choice == 2:
            header[rng.choice(names)]["extra"] = 1
        else:
            header["__metadata__"] = rng.choice([None, [], {"reft.spec": 5}, {"reft.spec": "{"}, {"x": "y"}])
        return kind, _join(header, body)
    if kind == "nonfinite":
        return kind, _nan_into(payload, rng, rng.choice([float("nan"), float("inf"), float("-inf")]))
    junk = rng.choice(["[" * 100_000 + "]" * 100_000, "[]", "null", "1e999", '"x"', '{"a": 1, "a": 2}',
                       '{"__metadata__": {"reft.spec": "{}"}}', "{" + '"a":{' * 5000 + "}" * 5001])  # fmt: skip
    return kind, _join(junk, body)


def test_fuzzed_payloads_decode_or_raise_payload_error(monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    """1,200 seeded corruptions of two valid tiny-CNN payloads. Each either decodes to a model whose
    re-encoding decodes again (with equal weights), or raises PayloadError; nothing else.

    The allocation bound checked: every large allocation decode can make goes through
    ``safetensors.torch.load`` (tensors) or ``models.build`` (the model). Both are spied on: ``load`` is
    only ever called on a payload within ``max_bytes`` whose tensors total no more bytes than the payload,
    and ``build`` only with widths within the dense CNN's. Python-side allocations (header parsing) are
    bounded by tracemalloc's peak, under 16 MiB for the whole loop (torch's own allocator is invisible to
    tracemalloc, hence the spies)."""
    bases = [comm.encode(_tiny_model(0)), comm.encode(_tiny_model(1, (3, 5, 7, 9)))]
    max_bytes = max(map(len, bases)) + 1024
    dense = models.default_widths("cnn")
    real_load, real_build = comm.st_load, models.build
    loaded_bytes: list[int] = []

    def load_spy(payload: bytes) -> dict[str, torch.Tensor]:
        assert len(payload) <= max_bytes
        tensors = real_load(payload)
        loaded_bytes.append(sum(t.numel() * t.element_size() for t in tensors.values()))
        assert loaded_bytes[-1] <= len(payload)
        return tensors

    def build_spy(name: str, num_classes: int = 10, in_channels: int = 1, widths=None) -> models.ReftModel:
        assert name == "cnn" and num_classes <= 100_000 and in_channels <= 64
        assert widths is None or all(w <= d for w, d in zip(widths, dense, strict=True))
        return real_build(name, num_classes, in_channels, widths)

    monkeypatch.setattr(comm, "st_load", load_spy)
    monkeypatch.setattr(models, "build", build_spy)
    outcomes: Counter[tuple[str, str]] = Counter()
    rng = random.Random(14)
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        for _ in range(1200):
            kind, bad = _mutate(rng.choice(bases), rng)
            try:
                model = comm.decode(bad, max_bytes=max_bytes)
            except comm.PayloadError as e:
                assert str(e)
                outcomes[kind, "PayloadError"] += 1
                continue
            again = comm.decode(comm.encode(model), max_bytes=max_bytes)
            assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
            outcomes[kind, "decoded"] += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - t0
    print(f"\nfuzz: {sum(outcomes.values())} mutations, {seconds:.1f} s, Python peak {peak / 2**20:.1f} MiB")
    for (kind, outcome), n in sorted(outcomes.items()):
        print(f"  {kind:12s} {outcome:13s} {n}")
    assert sum(outcomes.values()) == 1200 and seconds < 60
    assert peak < 16 * 2**20
    kinds = {k for k, _ in outcomes}
    assert len(kinds) == 11 and all(outcomes[k, "PayloadError"] > 0 for k in kinds)
    assert outcomes["bitflip", "decoded"] > 0  # flips inside finite weights are valid payloads


def test_hand_made_bad_payloads_are_refused_with_a_reason() -> None:
    model = _tiny_model()
    good = comm.encode(model)
    back = comm.decode(good, max_bytes=len(good))
    assert comm.encode(back) == good  # a valid payload round-trips to the same bytes
    assert comm.read_spec(good) == model.spec
    with pytest.raises(comm.PayloadError, match="non-finite values in"):
        comm.decode(_nan_into(good, random.Random(0), float("nan")))
    with pytest.raises(comm.PayloadError, match="header length .* exceeds the payload"):
        comm.decode(struct.pack("<Q", len(good)) + good[8:])
    with pytest.raises(comm.PayloadError, match=r"width 2 must be an int in 1\.\.128 \(the dense model's\)"):
        comm.decode(_with_spec(good, widths=[4, 8, 129, 16]))
    with pytest.raises(comm.PayloadError, match=f"{len(good)} bytes exceeds the limit of {len(good) - 1}"):
        comm.decode(good, max_bytes=len(good) - 1)
    with pytest.raises(comm.PayloadError, match="no reft spec"):
        comm.read_spec(_join({"__metadata__": {}}, b""))
    # a header claiming a 4 TB tensor is refused from the header alone: nothing is loaded or built
    header, body = _split(good)
    header["fc.weight"].update(shape=[10**6, 10**6], data_offsets=[0, 4 * 10**12])
    with pytest.raises(comm.PayloadError, match=r"fc.weight has shape \[1000000, 1000000\]"):
        comm.decode(_join(header, body))


def _run(splits: data.Splits, **kw) -> engine.RunResult:
    return engine.run(RunConfig(**{**TINY, **kw}), splits)


def _poison(monkeypatch: pytest.MonkeyPatch, clients: tuple[int, ...], how: str) -> None:
    """Clients ``clients`` train as usual, then: ``nan``: their weights become NaN; ``flag``: their
    weights stay as trained but their training reports that it diverged."""
    real = engine.client_update

    def update(cfg, model, x, y, rnd, cid, *args, **kw) -> train.FitResult:
        res = real(cfg, model, x, y, rnd, cid, *args, **kw)
        if cid in clients and how == "nan":
            with torch.no_grad():
                for p in model.state_dict().values():
                    if p.is_floating_point():
                        p.fill_(float("nan"))
        if cid in clients and how == "flag":
            res.diverged = True
        return res

    monkeypatch.setattr(engine, "client_update", update)


@pytest.mark.parametrize("algorithm", ["fedavg", "heterofl", "feddf", "reft"])
def test_nan_uploads_are_rejected_and_change_nothing(splits, monkeypatch, algorithm) -> None:
    """Clients 0 and 1 of 6 upload NaN weights every round. The run finishes, both are rejected every
    round, the server weights stay finite, and every server accuracy is *exactly* that of the same run in
    which clients 0 and 1 upload finite weights but are rejected as diverged: the NaN uploads have no
    influence at all. Against the clean run (all 6 clients counted) only a loose check: these tiny runs
    sit between chance (0.1) and about 0.45, so the final accuracies only need to lie within 0.15 of
    each other (the larger comparison is a one-off table, not a test)."""
    _poison(monkeypatch, NAN_CLIENTS, "nan")
    res = _run(splits, algorithm=algorithm)
    h = res.history
    assert (h["rejected"] == 2).all()
    for reasons in h["rejected_reasons"]:
        assert reasons.startswith("client 0: ") and "; client 1: " in reasons
    assert "non-finite values in" in h["rejected_reasons"].iloc[0]
    assert all(torch.isfinite(v).all() for v in res.strategy.server_model.state_dict().values())
    up = res.ledger.frame().query("direction == 'up'")
    assert len(up) == 6 * 2  # rejected uploads were still sent and counted

    _poison(monkeypatch, NAN_CLIENTS, "flag")
    without = _run(splits, algorithm=algorithm).history
    assert all(r.count(engine.DIVERGED) == 2 for r in without["rejected_reasons"])
    assert h["server_acc"].tolist() == without["server_acc"].tolist()
    monkeypatch.undo()
    clean = _run(splits, algorithm=algorithm).history
    assert (clean["rejected"] == 0).all() and (clean["rejected_reasons"] == "").all()
    assert abs(h["server_acc"].iloc[-1] - clean["server_acc"].iloc[-1]) <= 0.15


def test_round_with_every_upload_rejected_keeps_the_server_model(splits, monkeypatch) -> None:
    _poison(monkeypatch, tuple(range(6)), "nan")
    aggregated = []
    monkeypatch.setattr("reft.strategies.FedAvg.aggregate", lambda *a: aggregated.append(a) or {})
    cfg = RunConfig(**{**TINY, "algorithm": "fedavg"})
    res = engine.run(cfg, splits)
    assert not aggregated and (res.history["rejected"] == 6).all() and res.history["server_acc"].notna().all()
    initial = engine.Federation(cfg, engine.prepare(cfg, splits)).dense_model().state_dict()
    assert all(torch.equal(initial[k], v) for k, v in res.strategy.server_model.state_dict().items())


def test_a_diverging_client_is_reported_and_rejected(splits, monkeypatch) -> None:
    x, y = splits.private_train.x[:200], splits.private_train.y[:200]
    model = _tiny_model()
    res = train.fit(model, x, y, lr=1e6, epochs=3)
    assert res.diverged and not torch.isfinite(torch.tensor(res.losses[-1])) and res.samples < 3 * len(x)
    assert not train.fit(_tiny_model(), x, y, epochs=1).diverged

    real = engine.client_update
    results: dict[tuple[int, int], train.FitResult] = {}

    def update(cfg, model, x, y, rnd, cid, *args, **kw) -> train.FitResult:
        if cid == 3:  # one infinite pixel: the batch that holds it has a NaN loss
            x = x.clone()
            x[0, 0, 0, 0] = float("inf")
        res = real(cfg, model, x, y, rnd, cid, *args, **kw)
        results[rnd, cid] = res
        return res

    monkeypatch.setattr(engine, "client_update", update)
    h = _run(splits, algorithm="fedavg").history
    assert all(results[r, 3].diverged for r in (1, 2)) and not any(results[r, 0].diverged for r in (1, 2))
    assert (h["rejected"] == 1).all()
    assert (h["rejected_reasons"] == f"client 3: {engine.DIVERGED}").all()


# field -> (a value of the wrong type, a well-typed value out of range or None when any value of the type is fine)
BAD_CONFIG = {
    "algorithm": (1, "fedprox"), "dataset": (None, "mnist"), "private_size": ("1k", 0), "public_size": (1.5, -1),
    "test_size": ([1], -1), "n_clients": (2.5, 0), "partition": (0, "random"), "alpha": ("0.5", 0.0),
    "model": (["cnn"], "mlp"), "widths": ("4,8", [4, 8, 16, 1000]), "tiers_path": (3, None), "tier_mix": (5, None),
    "policy": (None, "fastest"), "max_ratio": ("0.5", 1.0), "deadline_s": ("1", -1.0), "importance": (2, "l3"),
    "rounds": ("3", 0), "local_epochs": (1.0, 0), "lr": (None, 0.0), "batch_size": (True, 0), "dropout": ("0", 1.0),
    "temperature": ([1], 0.0), "ensemble": (1, "mean"), "weighting": (1, "equal"), "distill_epochs": (None, 0),
    "distill_lr": ("x", -1.0), "distill_batch_size": (1.0, 0), "val_fraction": (None, 1.0), "patience": ("2", -1),
    "refresh_every": (0.5, -1), "eval_clients": ("yes", None), "seed": (None, -1), "save_as": (1, None),
    "profile": (None, None), "progress": (1, None), "server_tier": (1, None), "checkpoint_every": ("1", -1),
    "final_test": (1, None),
    "resume": ("no", None), "keep_checkpoints": (0, None), "device": (0, "nope"), "amp": ("yes", None),
    "augment": ("on", None), "diagnostics_every": ("1", -1),
    "codec_up": (8, "int4"), "codec_down": (None, "bf16"),
    "momentum": ("0.9", 1.0), "weight_decay": ("x", -1.0), "shards_per_client": (2.5, 0), "min_size": ("1", 0),
    "max_share": ("half", 1.5), "lr_milestones": (5, [0]), "lr_gamma": ("0.1", 0.0),
    "distill_lr_decay": ("yes", None),
}  # fmt: skip


def test_every_config_field_is_checked_and_all_problems_are_reported_at_once() -> None:
    from dataclasses import fields

    assert set(BAD_CONFIG) == {f.name for f in fields(RunConfig)}
    for name, (wrong_type, _) in BAD_CONFIG.items():
        with pytest.raises(ValueError, match=rf"Invalid RunConfig: {name} must be .*; got .*\("):
            RunConfig(**{name: wrong_type})
    with pytest.raises(ValueError) as err:
        RunConfig(**{name: wrong for name, (wrong, _) in BAD_CONFIG.items()})
    assert all(f"{name} must be" in str(err.value) for name in BAD_CONFIG)

    out_of_range = {name: bad for name, (_, bad) in BAD_CONFIG.items() if bad is not None}
    out_of_range["partition"] = "dirichlet"  # with alpha 0: both are reported
    del out_of_range["model"]  # an unknown model leaves its widths unchecked; checked alone below
    with pytest.raises(ValueError) as err:
        RunConfig(**out_of_range)
    message = str(err.value)
    assert message.startswith("Invalid RunConfig: ") and message.count("Invalid RunConfig") == 1
    for name in out_of_range:
        assert name in message, name
    assert "needs alpha > 0" in message
    with pytest.raises(ValueError, match="unknown model 'mlp'; valid models: cnn"):
        RunConfig(model="mlp", widths=[1] * 99)
