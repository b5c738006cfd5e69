"""REFT on Flower: run config and wire format (fast), and real Flower runs on loopback (marked ``flower``).

The end-to-end tests start a SuperLink and SuperNodes (or Ray) in a child process inside a
loopback-only network namespace (``unshare -n``), so nothing they start can reach beyond 127.0.0.1.
They skip, saying why, when ``flwr`` is not installed or no such namespace can be made.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading

import pandas as pd
import pytest

from reft import comm, models
from reft.config import RunConfig
from reft.flower import config as fconfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

HAS_FLWR = importlib.util.find_spec("flwr") is not None
needs_flwr = pytest.mark.skipif(not HAS_FLWR, reason="flwr not installed: pip install -e '.[flower]'")
TIERS = ["laptop", "jetson_nano", "raspberry_pi_4"]


def _can_isolate() -> str | None:
    """None if a loopback-only network namespace can be made here, else why not."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare (util-linux) and ip (iproute2) for a loopback-only network namespace"
    cmd = ["unshare", "-n", "sh", "-c", "ip link set lo up"]
    if subprocess.run(cmd, capture_output=True, check=False).returncode != 0:
        return "cannot create a loopback-only network namespace (needs root or unprivileged user namespaces)"
    return None


def _tiny(**kw) -> RunConfig:
    base = dict(
        private_size=900, public_size=500, test_size=500, n_clients=3, rounds=2, local_epochs=2,
        tier_mix=TIERS, distill_epochs=2, seed=0, progress=False,
    )  # fmt: skip
    return RunConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------ no Flower needed
def test_run_config_round_trip():
    cfg = _tiny(alpha=0.5, partition="dirichlet", widths=[8, 16, 32, 32], deadline_s=None)
    user = fconfig.to_user_config(cfg, fconfig.FlowerOptions(round_timeout=7.0))
    assert all(isinstance(v, bool | int | float | str) for v in user.values())  # Flower's scalar types only
    assert user["tier-mix"] == "laptop,jetson_nano,raspberry_pi_4" and user["deadline-s"] == 0.0
    back, opts = fconfig.from_user_config(user)
    assert back == cfg.replace(widths=[8, 16, 32, 32])
    assert back.deadline_s is None and back.tier_mix == TIERS and opts.round_timeout == 7.0
    decayed = _tiny(lr_milestones=(8, 13), distill_lr_decay=True)  # a sequence of ints travels comma-joined
    assert fconfig.to_user_config(decayed)["lr-milestones"] == "8,13"
    assert fconfig.from_user_config(fconfig.to_user_config(decayed))[0] == decayed
    weighted = fconfig.from_user_config(fconfig.to_user_config(_tiny(tier_mix={"laptop": 1.0, "phone": 2.0})))[0]
    assert weighted.tier_mix == {"laptop": 1.0, "phone": 2.0}


@needs_flwr
def test_discovery_gives_first_replies_a_round_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node's first reply waits for it to load and partition its data: under load (or on a Raspberry Pi)
    that takes longer than connecting, so discovery must wait ``round_timeout``, not ``node_timeout``."""
    from types import SimpleNamespace

    from reft.flower import server_app

    waited: list[float] = []

    def no_replies(grid, messages, timeout, poll=0.2):
        waited.append(timeout)
        return {}, {}

    monkeypatch.setattr(server_app, "exchange", no_replies)
    monkeypatch.setattr(server_app, "Message", lambda content, **kw: SimpleNamespace(content=content, **kw))
    grid = SimpleNamespace(get_node_ids=lambda: [11, 12, 13])
    opts = fconfig.FlowerOptions(node_timeout=1.0, round_timeout=7.0)
    with pytest.raises(RuntimeError, match=r"No SuperNode reported partition-ids \[0, 1, 2\]"):
        server_app.discover(grid, _tiny(), opts)
    assert waited == [7.0]


def test_run_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="Unknown REFT run-config keys.*'epochs'"):
        fconfig.from_user_config({"epochs": 3})
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        fconfig.from_user_config({"rounds": 0})


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python >= 3.11")
def test_app_pyproject_is_a_valid_flower_app():
    doc = tomllib.loads(fconfig.pyproject_toml(_tiny()))
    app = doc["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "reft.flower.server_app:app", "clientapp": "reft.flower.client_app:app"}
    assert app["config"]["tier-mix"] == "laptop,jetson_nano,raspberry_pi_4" and app["config"]["rounds"] == 2
    assert fconfig.from_user_config(app["config"])[0] == _tiny()


def _handshake(cred_dir, cafile) -> str:
    """A TLS handshake with a server holding the SuperLink's certificate; "ok" or the client's error."""
    from reft.flower import security

    cred = security.load(cred_dir)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cred.server_cert, cred.server_key)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]

        def serve() -> None:
            conn, _ = srv.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        ctx = ssl.create_default_context(cafile=str(cafile))
        try:
            with (
                socket.create_connection(("127.0.0.1", port)) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return "ok"
        except ssl.SSLCertVerificationError as e:
            return e.verify_message
        finally:
            t.join(5)


@pytest.mark.skipif(importlib.util.find_spec("cryptography") is None, reason="cryptography comes with flwr")
def test_run_credentials_a_ca_its_superlink_certificate_and_supernode_keys(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    from reft.flower import security

    cred = security.create(tmp_path / "run", nodes=2, hosts=["192.168.1.10", "server.local"])
    other = security.create(tmp_path / "other")
    assert _handshake(cred.folder, cred.ca_cert) == "ok"  # the run's CA vouches for 127.0.0.1
    assert "unable to get local issuer certificate" in _handshake(cred.folder, other.ca_cert)
    key = load_ssh_private_key(cred.node_key(1).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"  # a NIST curve, as Flower asks
    assert load_ssh_public_key(cred.node_pub(1).read_bytes()).public_numbers() == key.public_key().public_numbers()
    private = [cred.ca_key, cred.server_key, cred.node_key(0), cred.node_cert(0)[1]]
    assert {oct(os.stat(p).st_mode & 0o777) for p in private} == {"0o600"}
    assert "--enable-supernode-auth" in cred.superlink_args()
    assert cred.supernode_args(0)[:4] == ["--root-certificates", str(cred.ca_cert), "--auth-supernode-private-key",
                                          str(cred.node_key(0))]  # fmt: skip
    with pytest.raises(FileExistsError, match="already holds a CA"):
        security.create(cred.folder)
    with pytest.raises(FileNotFoundError, match="python -m reft.flower certs"):
        security.load(tmp_path / "empty")


# ----------------------------------------------------------------------------------------- Flower
@pytest.mark.flower
@needs_flwr
def test_wire_carries_the_payload_byte_for_byte():
    from flwr.app import ArrayRecord

    from reft.flower import wire

    payload = comm.encode(models.build("cnn", widths=[8, 16, 32, 32]))
    record = wire.pack(payload)
    assert isinstance(record, ArrayRecord) and wire.unpack(record) == payload
    assert record["model"].data == payload  # no extra header: the Ledger's len() is what Flower carries
    with pytest.raises(ValueError, match="not a reft.comm payload"):
        wire.unpack(ArrayRecord({"model": record["model"].__class__("uint8", (1,), "numpy.ndarray", b"\x00")}))


@pytest.mark.flower
@needs_flwr
@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(signal.SIGTERM, id="SIGTERM"),  # the SuperNode leaves: Flower fails its message at once
        pytest.param(signal.SIGKILL, id="SIGKILL", marks=pytest.mark.slow),  # a crash: found by heartbeat (~60 s)
    ],
)
def test_deployment_three_supernodes_with_one_killed_mid_round(tmp_path, sig):
    """SuperLink + 3 SuperNodes on loopback, 2 REFT rounds; SuperNode 2 is killed in round 2."""
    why = _can_isolate()
    if why:
        pytest.skip(why)
    from reft.flower import launch

    cfg = _tiny()
    opts = fconfig.FlowerOptions(out_dir=str(tmp_path), threads=1)
    res = launch.run("deploy", cfg, tiers=TIERS, options=opts, kill=(2, 2), kill_signal=sig)
    h, led, log = res.history, res.ledger, res.client_log

    assert res.status["status"] == "finished" and list(h["round"]) == [1, 2]
    assert list(res.nodes["tier"]) == TIERS  # tiers as the SuperNodes reported them in their node config
    assert res.final_acc > 0.2  # chance is 0.1
    # The crash: round 1 had everyone, round 2 went on with the two survivors and reported the third.
    assert list(h["arrived"]) == [3, 2] and list(h["failed"]) == [0, 1] and res.killed == [2]
    assert res.failures[["round", "client"]].values.tolist() == [[2, 2]]
    assert "Node Unavailable" in res.failures["reason"].iloc[0]
    # Ledger = payloads actually sent: down bytes as each client received them, up bytes as each sent them.
    got = log[log.event == "received"].groupby(["round", "client_id"])["bytes"].sum()
    down = led[led.direction == "down"].set_index(["round", "client"])["bytes"]
    assert sorted(down.items()) == sorted((k, int(v)) for k, v in got.items())
    sent = log[log.event == "sent"].set_index(["round", "client_id"])["bytes"]
    up = led[led.direction == "up"].set_index(["round", "client"])["bytes"]
    assert sorted(up.items()) == sorted((k, int(v)) for k, v in sent.items())
    assert led["bytes"].sum() == h["bytes_up"].sum() + h["bytes_down"].sum()
    # Every process the run started is gone.
    assert res.leftover == []


@pytest.mark.flower
@needs_flwr
@pytest.mark.parametrize(
    "engine",
    [
        pytest.param("simulate-superlink", id="flwr-run-simulation-superlink"),
        pytest.param("simulate", id="run_simulation", marks=pytest.mark.slow),
    ],
)
def test_simulation_engines_run_the_same_app(tmp_path, engine):
    why = _can_isolate()
    if why:
        pytest.skip(why)
    from reft.flower import launch

    cfg = _tiny(rounds=1)
    res = launch.run(engine, cfg, options=fconfig.FlowerOptions(out_dir=str(tmp_path), threads=1), num_cpus=2)
    assert res.status["status"] == "finished" and len(res.history) == 1
    assert list(res.nodes["tier"]) == TIERS  # no node config in simulation: tiers come from cfg.tier_mix
    assert res.history["arrived"].iloc[0] == 3 and res.failures.empty
    assert res.ledger["bytes"].sum() == res.history["cum_bytes"].iloc[-1]
    assert res.leftover == []


@pytest.mark.flower
@needs_flwr
@pytest.mark.parametrize(
    ("algorithm", "codecs"),
    [
        # in CI: heterofl (sliced models, masked loss) here and reft in the secure test below; the rest: -m slow
        pytest.param("fedavg", {}, id="fedavg", marks=pytest.mark.slow),
        pytest.param("heterofl", {}, id="heterofl"),
        pytest.param("fedavg-weakest", {}, id="fedavg-weakest", marks=pytest.mark.slow),
        pytest.param("feddf", {}, id="feddf", marks=pytest.mark.slow),
        pytest.param("reft", {}, id="reft", marks=pytest.mark.slow),
        pytest.param("fedavg", {"codec_up": "int8", "codec_down": "fp16"}, id="fedavg-int8-up", marks=pytest.mark.slow),
    ],
)
def test_deployment_matches_the_in_process_engine(tmp_path, algorithm, codecs):
    """Same seed, same thread count: the deployment ends with the in-process engine's accuracy and Ledger."""
    why = _can_isolate()
    if why:
        pytest.skip(why)
    from reft.flower import launch

    cfg = _tiny(algorithm=algorithm, local_epochs=1, **codecs)
    table, hist = launch.compare(cfg, TIERS, engines=("in-process", "deploy"), threads=1, out_dir=tmp_path)
    ours, flower = table.set_index("engine").loc["in-process"], table.set_index("engine").loc["deploy"]
    assert flower["status"] == "finished" and flower["failures"] == 0 and flower["leftover_processes"] == 0
    assert flower["final_acc"] == ours["final_acc"] > 0.1  # chance is 0.1
    assert (flower["bytes_up"], flower["bytes_down"]) == (ours["bytes_up"], ours["bytes_down"])
    assert flower["same_acc"] and flower["same_bytes"]
    for col in ("server_acc", "bytes_up", "bytes_down"):  # every round, not only the totals
        assert list(hist["deploy"][col]) == list(hist["in-process"][col]), col
    assert set(hist["deploy"][["codec_up", "codec_down"]].itertuples(index=False)) == {(cfg.codec_up, cfg.codec_down)}


@pytest.mark.flower
@needs_flwr
def test_secure_deployment_refuses_strangers_and_matches_the_in_process_engine(tmp_path):
    """One secure deployment (run CA, TLS, registered SuperNode keys), REFT for 2 rounds. Before the
    SuperNodes start, two strangers claim partition 0: one signs with an unregistered key, one has a
    registered key but does not trust the run's CA. Both are refused and gone before the run is submitted,
    and the run equals the in-process engine's (accuracy, Ledger totals)."""
    why = _can_isolate()
    if why:
        pytest.skip(why)
    from reft.flower import launch

    cfg = _tiny(algorithm="reft", local_epochs=1)
    opts = fconfig.FlowerOptions(out_dir=str(tmp_path / "deploy"), threads=1)
    res = launch.run("deploy", cfg, tiers=TIERS, options=opts, probe=True)
    ref_table, ref_hist = launch.compare(cfg, TIERS, engines=("in-process",), threads=1, out_dir=tmp_path)
    ours, flower = ref_table.iloc[0], launch.summary(res.history, res.ledger)
    parity = pd.DataFrame([{"engine": "in-process", **{k: ours[k] for k in flower}}, {"engine": "deploy (TLS + auth)",
                          **flower}])  # fmt: skip
    print("\n" + parity[["engine", "rounds", "final_acc", "bytes_up", "bytes_down"]].to_string(index=False))

    assert res.status["status"] == "finished" and res.status["secure"] and res.failures.empty
    assert flower["final_acc"] == ours["final_acc"] > 0.1 and flower["rounds"] == 2  # chance is 0.1
    assert (flower["bytes_up"], flower["bytes_down"]) == (ours["bytes_up"], ours["bytes_down"])
    assert list(res.history["bytes_up"]) == list(ref_hist["in-process"]["bytes_up"])
    # The strangers: refused with Flower's reasons, exited before the run was submitted.
    refused = {r["probe"]: r for r in res.refusals}
    assert set(refused) == {"unlisted-key", "untrusted-ca"} and all(r["refused"] for r in refused.values())
    assert refused["unlisted-key"]["reason"].startswith("[code: 2004] Failed to activate SuperNode")
    assert "CERTIFICATE_VERIFY_FAILED" in refused["untrusted-ca"]["reason"]
    # Only the registered SuperNodes took part: the ServerApp's nodes are exactly the registered node ids.
    registered = {int(k): v for k, v in res.status["registered"].items()}
    assert dict(zip(res.nodes["client"], res.nodes["node_id"], strict=True)) == registered
    assert list(res.nodes["tier"]) == TIERS and res.leftover == []
    superlink_log = (tmp_path / "deploy" / "deploy" / "logs" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log  # what the SuperLink logs


@pytest.mark.flower
@needs_flwr
def test_insecure_deployment_stays_available_and_says_what_it_gives_up(tmp_path):
    why = _can_isolate()
    if why:
        pytest.skip(why)
    from reft.flower import processes
    from reft.flower.deployment import Deployment, InsecureDeploymentWarning

    if not processes.loopback_only():
        pytest.skip("starts a SuperLink in this process: run the tests through scripts/loopback.sh")
    with Deployment(tmp_path, secure=False) as dep:
        with pytest.warns(InsecureDeploymentWarning, match="no TLS.*any process that reaches"):
            dep.start_superlink()
        assert "insecure = true" in (dep.home / "config.toml").read_text() and dep.credentials is None
        with pytest.raises(RuntimeError, match="secure SuperLink"):
            dep.probe()
    assert dep.owned() == []


def test_flwr_json_answers_parse_with_ansi_styles_and_styles_are_switched_off() -> None:
    from reft.flower import processes

    styled = (
        '\x1b[1m{\x1b[0m\n  \x1b[94m"success"\x1b[0m: \x1b[3;92mtrue\x1b[0m,\n'
        '  "node-id": 11437928231550795945\n\x1b[1m}\x1b[0m\n'
    )
    assert processes.json_answer("preamble\n" + styled) == {"success": True, "node-id": 11437928231550795945}
    assert processes.json_answer("no answer") == {} and processes.json_answer("{broken") == {}
    env = processes.plain_env({"FORCE_COLOR": "1", "CLICOLOR_FORCE": "1", "PATH": "/bin"})
    assert env == {"PATH": "/bin", "NO_COLOR": "1", "TERM": "dumb"}
