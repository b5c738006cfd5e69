"""The credentials of a secure Flower deployment: a CA, the SuperLink's TLS certificate, one key pair per SuperNode.

Flower 1.41 secures a deployment in two layers, and :class:`Credentials` makes what both need, with the
``cryptography`` package (a dependency of flwr):

* **TLS** on every connection. The SuperLink serves its one HTTPS port (Fleet, Control and Runtime APIs)
  with ``superlink.crt``/``superlink.key``, issued by the run's own CA (``ca.crt``); SuperNodes
  (``--root-certificates ca.crt``) and the ``flwr`` CLI (``root-certificates`` in the connection) verify
  it, so a party that does not trust this CA cannot connect. The certificate names ``localhost``,
  ``127.0.0.1`` and ``::1`` (the SuperLink's own helpers connect there) plus every ``hosts`` entry (the
  name or IP address the devices dial). Each SuperNode's local Runtime API (its ClientApps connect to it)
  gets its own certificate for 127.0.0.1, ``supernode-<i>-local.crt``.
* **SuperNode authentication** (``flower-superlink --enable-supernode-auth``): each SuperNode holds a
  private key (``supernode-<i>.key``, OpenSSH format, ECDSA P-384) and signs every request with it;
  the SuperLink accepts only the public keys registered with ``flwr supernode register
  supernode-<i>.pub`` (Flower 1.41 replaced ``--auth-list-public-keys`` with that command). A SuperNode
  whose key is not registered is refused before it is given any work.

Private keys are written with mode 0600. ``python -m reft.flower certs DIR --nodes N --host NAME`` writes
the same folder for a deployment by hand (see ``docs/devices.md``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["INSECURE_NOTE", "LOCAL_HOSTS", "Credentials", "create", "load", "write_auth_key"]

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # where the SuperLink's and SuperNodes' own helpers connect
INSECURE_NOTE = (
    "insecure Flower deployment (--insecure): no TLS, so models, updates and run configs cross the network "
    "in clear text and nobody can tell the real SuperLink from an impostor; no SuperNode authentication, so "
    "any process that reaches the SuperLink's port joins the federation, receives models and uploads what it "
    "likes (uploads are still validated). Use it only on a network you trust, such as this machine's loopback."
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "REFT companion"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])  # fmt: skip


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):  # unique, in order
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey, days: int, hosts: Sequence[str] = (),
) -> x509.Certificate:  # fmt: skip
    """A CA certificate (``issuer=None``: self-signed) or a TLS server certificate for ``hosts``."""
    now = dt.datetime.now(dt.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock differences between machines
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
    else:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        b = (
            b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(_san(hosts), critical=False)
        )
    return b.sign(issuer_key, hashes.SHA256())


def write_auth_key(private: Path, public: Path | None = None, comment: str = "") -> Path:
    """A new SuperNode authentication key pair: ECDSA P-384 (Flower takes NIST EC keys), OpenSSH format."""
    key = ec.generate_private_key(ec.SECP384R1())
    ssh = serialization.PrivateFormat.OpenSSH
    _write(private, key.private_bytes(serialization.Encoding.PEM, ssh, serialization.NoEncryption()), True)
    if public is not None:
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(public, pub + (f" {comment}" if comment else "").encode() + b"\n")
    return private


@dataclass(frozen=True)
class Credentials:
    """A folder of credentials for one deployment (see the module docstring for what each file is)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "superlink.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "superlink.key"

    def node_key(self, i: int | str) -> Path:
        """SuperNode ``i``'s authentication private key (OpenSSH format); it never leaves that device."""
        return self.folder / f"supernode-{i}.key"

    def node_pub(self, i: int | str) -> Path:
        """SuperNode ``i``'s public key (OpenSSH format), the one registered at the SuperLink."""
        return self.folder / f"supernode-{i}.pub"

    def node_cert(self, i: int | str) -> tuple[Path, Path]:
        """SuperNode ``i``'s certificate and key for its local Runtime API (127.0.0.1)."""
        return self.folder / f"supernode-{i}-local.crt", self.folder / f"supernode-{i}-local.key"

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def add_supernode(self, i: int | str, days: int = 365) -> Credentials:
        """Write SuperNode ``i``'s key pair and local certificate (no-op when its key already exists)."""
        if self.node_key(i).exists():
            return self
        write_auth_key(self.node_key(i), self.node_pub(i), f"supernode-{i}")
        ca, ca_key = self._ca()
        local_key = ec.generate_private_key(ec.SECP256R1())
        crt, k = self.node_cert(i)
        _write(crt, _cert(f"supernode-{i} local", local_key, ca, ca_key, days, LOCAL_HOSTS).public_bytes(
            serialization.Encoding.PEM))  # fmt: skip
        _write(k, _pem_key(local_key), True)
        return self

    def superlink_args(self) -> list[str]:
        """``flower-superlink`` flags: TLS with these certificates, and only registered SuperNodes."""
        return ["--ssl-ca-certfile", str(self.ca_cert), "--ssl-certfile", str(self.server_cert),
                "--ssl-keyfile", str(self.server_key), "--enable-supernode-auth"]  # fmt: skip

    def supernode_args(self, i: int | str) -> list[str]:
        """``flower-supernode`` flags for SuperNode ``i``: trust the CA, sign with its key, TLS locally too."""
        crt, key = self.node_cert(i)
        ca = str(self.ca_cert)
        return ["--root-certificates", ca, "--auth-supernode-private-key", str(self.node_key(i)),
                "--ssl-certfile", str(crt), "--ssl-keyfile", str(key), "--ssl-ca-certfile", ca]  # fmt: skip


def create(folder: str | Path, nodes: int = 0, hosts: Sequence[str] = (), days: int = 365) -> Credentials:
    """A new CA in ``folder``, the SuperLink's certificate for ``hosts`` (plus :data:`LOCAL_HOSTS`), and
    ``nodes`` SuperNode key pairs (more later with :meth:`Credentials.add_supernode`). Refuses to overwrite."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cred = Credentials(folder)
    if cred.ca_key.exists():
        raise FileExistsError(f"{folder} already holds a CA (ca.key); use reft.flower.security.load, or a new folder.")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("REFT run CA", ca_key, None, ca_key, days)
    _write(cred.ca_key, _pem_key(ca_key), True)
    _write(cred.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("REFT SuperLink", key, ca, ca_key, days, [*LOCAL_HOSTS, *hosts])
    _write(cred.server_key, _pem_key(key), True)
    _write(cred.server_cert, server.public_bytes(serialization.Encoding.PEM))
    for i in range(nodes):
        cred.add_supernode(i, days)
    return cred


def load(folder: str | Path) -> Credentials:
    """The credentials :func:`create` wrote in ``folder`` (checked: the CA and the SuperLink's files exist)."""
    cred = Credentials(Path(folder))
    missing = [p.name for p in (cred.ca_cert, cred.server_cert, cred.server_key) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}; make it with python -m reft.flower certs.")
    return cred
