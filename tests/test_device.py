"""Where a run computes: RunConfig.device, its resolution, and models and data staying on the device.

Fast and CPU-only here; the device-parametrized tests run on every device the machine has
(:func:`reft.train.available_devices`), so on a CUDA machine they check CUDA too.
"""

from __future__ import annotations

import copy
import warnings

import pandas as pd
import pytest
import torch

from reft import comm, data, distill, engine, models, strategies, train
from reft.config import RunConfig
from reft.federation import Federation
from reft.flower import config as fconfig

DEVICES = train.available_devices()
HERE = ", ".join(DEVICES)
TINY = dict(
    private_size=400, public_size=200, test_size=200, n_clients=4, rounds=2, widths=[4, 8, 16, 16],
    distill_epochs=2, max_ratio=0.5, progress=False,
)  # fmt: skip


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    return all(t.device.type == device.type for t in [*module.parameters(), *module.buffers()])


def test_unknown_or_unavailable_devices_are_clear_errors_naming_what_is_here() -> None:
    valid = "valid: auto, cpu, cuda, cuda:N, mps"
    with pytest.raises(ValueError, match=rf"unknown device 'nope'; {valid} \(available here: {HERE}\)"):
        RunConfig(device="nope")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: never there
    with pytest.raises(ValueError, match=rf"device '{missing}' is not available here; available: {HERE}\."):
        RunConfig(device=missing)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' is not available here; available: cpu\."):
            RunConfig(device="cuda")
    with pytest.raises(ValueError, match="not available here"):
        train.resolve_device(missing)


def test_auto_picks_cuda_then_mps_then_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert train.resolve_device("auto").type == expected
    assert DEVICES[0] == "cpu" and train.resolve_device("cpu") == torch.device("cpu")
    assert all(train.resolve_device(d).type == d.split(":")[0] for d in DEVICES)


@pytest.mark.skipif(train.resolve_device("auto").type != "cpu", reason="'auto' is the CPU only on a CPU machine")
def test_explicit_cpu_is_the_same_run_as_auto_here(fmnist: data.Splits, one_thread: None) -> None:
    for algorithm in ("reft", "heterofl"):
        runs = [engine.run(RunConfig(**TINY, algorithm=algorithm, device=d), fmnist) for d in ("auto", "cpu")]
        auto, cpu = (r.history.drop(columns=list(engine.TIMING_COLUMNS)) for r in runs)
        pd.testing.assert_frame_equal(auto, cpu, check_exact=True)
        assert comm.encode(runs[0].strategy.server_model) == comm.encode(runs[1].strategy.server_model)


@pytest.mark.parametrize("name", DEVICES)
def test_models_and_batches_stay_on_the_device_through_fit_predict_and_distill(name: str, one_thread: None) -> None:
    dev = train.resolve_device(name)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 28, 28, generator=gen).to(dev)
    y = torch.randint(0, 10, (48,), generator=gen).to(dev)
    model = models.build("cnn", widths=[4, 8, 16, 16])
    res = train.fit(model, x, y, epochs=1, batch_size=16, device=dev, augment=True)
    assert res.samples == 48 and _on(model, dev)
    out = train.predict(model, x, device=dev)
    assert out.device.type == dev.type and out.shape == (48, 10) and out.dtype == torch.float32
    assert 0 <= train.evaluate(model, x, y, device=dev) <= 1
    teachers = [model, copy.deepcopy(model)]
    targets = distill.teacher_outputs(teachers, x, [1.0, 3.0], device=dev)
    assert targets.device.type == dev.type
    student = models.build("cnn", widths=[4, 8, 16, 16])
    distill.distill(student, teachers, x, epochs=2, batch_size=16, device=dev)
    assert _on(student, dev)


@pytest.mark.parametrize("name", DEVICES)
def test_encode_works_wherever_the_model_is_and_decodes_on_the_cpu(name: str) -> None:
    model = models.build("cnn", widths=[4, 8, 16, 16])
    on_cpu = comm.encode(model)
    moved = comm.encode(copy.deepcopy(model).to(train.resolve_device(name)))
    assert moved == on_cpu
    assert _on(comm.decode(moved), torch.device("cpu"))


@pytest.mark.parametrize("name", DEVICES)
def test_the_federation_holds_the_run_data_on_its_device_once(name: str, small: data.Splits) -> None:
    fed = Federation(RunConfig(**TINY, device=name), small, final_test=small.test)
    dev = fed.device
    tensors = [fed.public_x, fed.test.x, fed.test.y, fed.final_test.x, *(t for c in fed.clients for t in (c.x, c.y))]
    assert all(t.device.type == dev.type for t in tensors)
    assert small.test.x.device.type == "cpu"  # the given splits stay where they were
    if dev.type == "cpu":  # nothing copied when the data are there already
        assert fed.public_x is small.public.x and fed.test.x is small.test.x


@pytest.mark.parametrize("name", DEVICES)
def test_averaging_works_across_devices_and_returns_cpu_tensors(name: str) -> None:
    dev = train.resolve_device(name)
    a, b = (models.build("cnn", widths=[4, 8, 16, 16]).state_dict() for _ in range(2))
    expected = strategies.average([a, b], [1.0, 3.0])
    on_dev = {k: v.to(dev) for k, v in b.items()}
    mixed = strategies.average_overlapping({k: v.to(dev) for k, v in a.items()}, [a, on_dev], [1.0, 3.0])
    assert all(v.device.type == "cpu" and torch.equal(v, expected[k]) for k, v in mixed.items())


def _fit_bytes(small: data.Splits, amp: bool, widths: list[int] | None = None) -> bytes:
    torch.manual_seed(0)
    m = models.build("cnn", widths=widths or [8, 16, 32, 32])
    train.fit(m, small.test.x[:64], small.test.y[:64], batch_size=32, device="cpu", amp=amp)
    assert all(p.dtype == torch.float32 for p in m.parameters())  # fp32 master weights either way
    return comm.encode(m)


@pytest.mark.parametrize(
    ("text", "native"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512vl\n", False),  # bf16 only emulated
        ("processor\t: 0\nflags\t\t: fpu amx_bf16 amx_tile\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm (e.g. Graviton 3, Apple M2+ on Linux)
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n", False),  # e.g. Raspberry Pi 4
    ],
)
def test_native_bf16_is_read_off_the_cpu_flags(tmp_path, text: str, native: bool) -> None:
    (info := tmp_path / "cpuinfo").write_text(text)
    assert train.cpu_has_bf16(str(info)) is native
    assert train.cpu_has_bf16(str(tmp_path / "missing")) is False


@pytest.mark.skipif(not train.cpu_has_bf16(), reason="this CPU has no native bf16")
def test_amp_runs_bf16_on_a_cpu_that_has_it_and_keeps_the_wire_fp32(small: data.Splits) -> None:
    assert train.amp_device(torch.device("cpu"))
    fp32, bf16 = _fit_bytes(small, amp=False), _fit_bytes(small, amp=True)
    assert bf16 != fp32 and len(bf16) == len(fp32)  # bf16 arithmetic took effect; the payload's size did not change
    with train.autocast(torch.device("cpu"), True):
        assert torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.bfloat16
    # a model with convs under 8 channels stays fp32 on the CPU (bf16 is no faster there), bit for bit
    assert _fit_bytes(small, amp=True, widths=[3, 6, 12, 12]) == _fit_bytes(small, amp=False, widths=[3, 6, 12, 12])
    cfg = RunConfig(amp=True, device="cpu", n_clients=2, rounds=1, private_size=200, public_size=100, test_size=100,
                    progress=False, eval_clients=False, final_test=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no effect" warning where bf16 runs
        res = engine.run(cfg, small)
    assert 0.0 <= res.history["server_acc"].iloc[-1] <= 1.0


def test_amp_is_a_no_op_without_native_bf16_and_says_so(small: data.Splits, monkeypatch) -> None:
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    assert not train.amp_device(torch.device("cpu"))
    assert _fit_bytes(small, amp=False) == _fit_bytes(small, amp=True)
    with pytest.warns(UserWarning, match="amp has no effect: this CPU has no native bf16"):
        engine.warn_amp(RunConfig(amp=True, device="cpu"), torch.device("cpu"))


def test_flower_config_carries_device_amp_and_optional_augment_and_a_node_picks_its_own_device() -> None:
    for augment in (None, True, False):
        cfg = RunConfig(device="cpu", amp=True, augment=augment, progress=False)
        user = fconfig.to_user_config(cfg)
        assert user["augment"] == {None: "", True: "true", False: "false"}[augment]
        assert fconfig.from_user_config(user)[0] == cfg
    user = fconfig.to_user_config(RunConfig(device="cpu", progress=False))
    assert fconfig.for_node(user, {"partition-id": 0})[0].device == "auto"  # the node's default, not the server's
    assert fconfig.for_node(user, {"device": "cpu"})[0].device == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        fconfig.for_node(user, {"device": "tpu"})
