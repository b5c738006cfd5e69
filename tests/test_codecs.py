"""The wire codecs (reft.codecs through reft.comm): fp32 unchanged, fp16 and int8 round trips within a
stated tolerance at about 1/2 and 1/4 of the bytes, tampered headers refused, and the engine's Ledger
counting the encoded bytes of the configured codec."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from reft import codecs, comm, data, engine, experiments, models, pruning
from reft.config import RunConfig
from reft.flower import config as fconfig

pytestmark = pytest.mark.usefixtures("one_thread")

# Tolerance of a decoded model's outputs on a random batch: max |logit difference| / max |original logit|.
# fp16 keeps 11 significant bits (relative rounding 2^-11 per weight); int8 keeps 8 bits per output channel.
TOLERANCE = {"fp32": 0.0, "fp16": 5e-3, "int8": 5e-2}
# Encoded size / fp32 size, dense or pruned CNN (the header and the fp32 biases, BN tensors and int8 scales
# keep the ratios a little above 1/2 and 1/4).
RATIO = {"fp16": (0.45, 0.55), "int8": (0.22, 0.30)}
TINY = dict(
    private_size=400, public_size=200, test_size=200, n_clients=4, rounds=2, widths=[4, 8, 16, 16],
    distill_epochs=2, max_ratio=0.5, progress=False,
)  # fmt: skip


def _trained_like(seed: int = 0) -> models.ReftModel:
    """The dense CNN with non-default BN statistics (so a BN buffer lost or mangled would show)."""
    torch.manual_seed(seed)
    m = models.build("cnn").train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(8, 1, 28, 28))
    return m.eval()


@pytest.fixture(scope="module")
def nets() -> dict[str, models.ReftModel]:
    dense = _trained_like()
    pruned = pruning.prune(dense, 0.5, torch.randn(2, 1, 28, 28)).model.eval()
    return {"dense": dense, "pruned": pruned}


def _split(payload: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8 : 8 + n]), payload[8 + n :]


def _join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _relative_error(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max() / ya.abs().max())


@pytest.mark.parametrize("which", ["dense", "pruned"])
def test_round_trips_stay_within_tolerance_at_a_half_and_a_quarter_of_the_bytes(nets, which) -> None:
    model = nets[which]
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    sizes = {}
    for codec in comm.CODECS:
        payload = comm.encode(model, codec=codec)
        sizes[codec] = len(payload)
        assert comm.read_codec(payload) == codec
        back = comm.decode(payload, max_bytes=len(comm.encode(model)) + 1024).eval()
        assert back.spec == model.spec
        assert all(t.dtype == torch.float32 for t in back.state_dict().values() if t.is_floating_point())
        err = _relative_error(model, back, x)
        print(f"\n{which} {codec}: {sizes[codec]} bytes, max |logit diff| / max |logit| = {err:.2e}", end="")
        assert err <= TOLERANCE[codec], (codec, err)
    print(f"\n{which}: fp32 {sizes['fp32']} B, fp16 {sizes['fp16']} B, int8 {sizes['int8']} B")
    for codec, (lo, hi) in RATIO.items():
        assert lo <= sizes[codec] / sizes["fp32"] <= hi, (codec, sizes)


def test_int8_is_symmetric_per_output_channel_and_leaves_the_rest_at_fp32(nets) -> None:
    model = nets["dense"]
    state = model.state_dict()
    header, _ = _split(comm.encode(model, codec="int8"))
    back = comm.decode(comm.encode(model, codec="int8")).state_dict()
    for k, t in state.items():
        if codecs.quantized(k, t):
            assert header[k]["dtype"] == "I8" and header[k + codecs.SCALE]["shape"] == [t.shape[0]]
            scale = t.abs().reshape(t.shape[0], -1).amax(dim=1) / 127  # per output channel
            err = (back[k] - t).abs().reshape(t.shape[0], -1).amax(dim=1)
            assert bool((err <= scale / 2 * (1 + 1e-5) + 1e-12).all()), k  # at most half a step off
        else:  # biases, BN parameters and statistics, integer buffers: exact
            assert header[k]["dtype"] == {torch.float32: "F32", torch.int64: "I64"}[t.dtype], k
            assert torch.equal(back[k], t), k
    assert any(codecs.quantized(k, t) for k, t in state.items())
    zero = models.build("cnn", widths=[4, 8, 16, 16])
    with torch.no_grad():
        zero.features[0].weight[0].zero_()  # an all-zero channel decodes to zeros
    assert torch.equal(comm.decode(comm.encode(zero, codec="int8")).features[0].weight[0], zero.features[0].weight[0])


def test_fp32_is_the_original_format_byte_for_byte(nets) -> None:
    for model in nets.values():
        payload = comm.encode(model, codec="fp32")
        assert payload == comm.encode(model)
        assert "reft.codec" not in _split(payload)[0]["__metadata__"]  # the header as before codecs
        assert comm.read_codec(payload) == "fp32"
        assert comm.encode(comm.decode(payload)) == payload  # exact


def test_unknown_or_tampered_codecs_are_clear_errors() -> None:
    model = models.build("cnn", widths=[4, 8, 16, 16])
    with pytest.raises(ValueError, match="Unknown codec 'int4'; valid codecs: fp32, fp16, int8"):
        comm.encode(model, codec="int4")
    good = comm.encode(model, codec="int8")
    header, body = _split(good)

    def tampered(**meta) -> bytes:
        h = json.loads(json.dumps(header))
        h["__metadata__"].update(meta)
        return _join(h, body)

    with pytest.raises(comm.PayloadError, match="unknown codec 'int4'; valid codecs: fp32, fp16, int8"):
        comm.decode(tampered(**{"reft.codec": "int4"}))
    with pytest.raises(comm.PayloadError, match="unknown codec"):
        comm.read_codec(tampered(**{"reft.codec": "int4"}))
    with pytest.raises(comm.PayloadError, match="tensor names differ"):  # int8 data called fp16
        comm.decode(tampered(**{"reft.codec": "fp16"}))
    h = json.loads(json.dumps(header))
    del h["__metadata__"]["reft.codec"]
    with pytest.raises(comm.PayloadError, match="tensor names differ"):  # ... or called fp32
        comm.decode(_join(h, body))
    fp16 = comm.encode(model, codec="fp16")
    h16, b16 = _split(fp16)
    h16["__metadata__"]["reft.codec"] = "fp32"
    with pytest.raises(comm.PayloadError, match="has dtype 'F16'"):
        comm.decode(_join(h16, b16))

    def poke(key: str, value: bytes) -> bytes:  # overwrite the first element of a tensor
        begin = header[key]["data_offsets"][0]
        return _join(header, body[:begin] + value + body[begin + len(value) :])

    w, s = "features.0.weight", "features.0.weight" + codecs.SCALE
    with pytest.raises(comm.PayloadError, match="holds -128"):
        comm.decode(poke(w, b"\x80"))
    with pytest.raises(comm.PayloadError, match="negative scales"):
        comm.decode(poke(s, struct.pack("<f", -1.0)))
    with pytest.raises(comm.PayloadError, match="non-finite values in features.0.weight"):
        comm.decode(poke(s, struct.pack("<f", float("nan"))))
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] = 1e6  # beyond float16's range: refused when encoding
    with pytest.raises(ValueError, match="fp16 cannot hold features.0.weight"):
        comm.encode(model, codec="fp16")


def test_config_validates_codecs_and_flower_config_carries_them() -> None:
    with pytest.raises(ValueError, match="unknown codec_up 'int4'; valid codecs: fp32, fp16, int8"):
        RunConfig(codec_up="int4")
    with pytest.raises(ValueError, match="unknown codec_down 'bf16'"):
        RunConfig(codec_down="bf16")
    cfg = RunConfig(codec_up="int8", codec_down="fp16", progress=False)
    user = fconfig.to_user_config(cfg)
    assert user["codec-up"] == "int8" and user["codec-down"] == "fp16"
    back = fconfig.from_user_config(user)[0]
    assert (back.codec_up, back.codec_down) == ("int8", "fp16")


def test_engine_ledger_counts_the_int8_uploads(fmnist: data.Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[bytes] = []  # what the server decoded (it alone passes max_bytes)
    real = comm.decode

    def spy(payload: bytes, **kw) -> models.ReftModel:
        if "max_bytes" in kw:
            received.append(payload)
        return real(payload, **kw)

    monkeypatch.setattr(comm, "decode", spy)
    results = {}
    for codec in ("fp32", "int8"):
        received.clear()
        res = engine.run(RunConfig(**{**TINY, "algorithm": "fedavg", "codec_up": codec}), fmnist)
        led = res.ledger.frame()
        assert led.loc[led.direction == "up", "bytes"].tolist() == [len(p) for p in received]  # bytes = len()
        assert len(received) == 2 * 4 and all(comm.read_codec(p) == codec for p in received)
        assert res.history["bytes_up"].sum() == res.ledger.total("up")
        assert (res.history["codec_up"] == codec).all() and (res.history["codec_down"] == "fp32").all()
        row = experiments.summary(res)
        assert (row["codec_up"], row["codec_down"]) == (codec, "fp32")
        results[codec] = res
    up32, up8 = results["fp32"].ledger.total("up"), results["int8"].ledger.total("up")
    print(f"\nfedavg tiny CNN, 2 rounds x 4 clients: up fp32 {up32} B, int8 {up8} B ({up8 / up32:.2f})")
    assert up8 < 0.5 * up32
    assert results["int8"].ledger.total("down") == results["fp32"].ledger.total("down")  # fp32 down, same shapes
    assert results["int8"].history["rejected"].sum() == 0
