"""Certificates and keys for a deployment, made with ``cryptography`` only.

A CA, the SuperLink's TLS certificate and each hospital's SuperNode
authentication key pair.

TLS: the coordinator's CA signs the SuperLink certificate; hospitals and ``flwr``
users verify the SuperLink with the CA certificate. Node authentication: each
hospital holds an ECDSA (NIST P-384) private key in OpenSSH format, the form
``flower-supernode --auth-supernode-private-key`` reads, and shares the OpenSSH
public key, the form ``flwr supernode register`` reads.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SECRET_MODE = 0o600
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class DeployError(RuntimeError):
    """A deployment step cannot proceed; the message names the file or setting."""


def check_name(name: str, what: str = "hospital name") -> str:
    """Check a name used in file names and Flower config: letters, digits, ``_.-``."""
    if not NAME_PATTERN.match(name):
        raise DeployError(
            f"Invalid {what} {name!r}: use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit."
        )
    return name


def write_secret(path: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` readable by its owner only.

    The file is created with mode 0600, so it is never readable by others, not
    even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise DeployError(f"{path} exists already; refusing to overwrite a secret key.")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, SECRET_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, SECRET_MODE)  # O_CREAT's mode is ignored for an existing file
    return path


def write_public(path: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write a shareable file (certificate, public key), mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise DeployError(f"{path} exists already; remove it or pass --force.")
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class CAFiles:
    """The coordinator's certificate authority: ``key`` is secret, ``cert`` shared."""

    key: Path
    cert: Path

    @classmethod
    def in_dir(cls, directory: Path) -> CAFiles:
        return cls(directory / "ca.key", directory / "ca.crt")


def create_ca(
    directory: Path,
    *,
    common_name: str = "medflower CA",
    days: int = 3650,
    overwrite: bool = False,
) -> CAFiles:
    """Create a self-signed CA (EC P-384) in ``directory``."""
    files = CAFiles.in_dir(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    write_secret(files.key, _pem_key(key), overwrite=overwrite)
    write_public(
        files.cert, cert.public_bytes(serialization.Encoding.PEM), overwrite=overwrite
    )
    return files


def load_ca(files: CAFiles) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Read the CA key and certificate, naming the missing or unreadable file."""
    for path in (files.key, files.cert):
        if not path.is_file():
            raise DeployError(
                f"CA file not found: {path} (run `medflower deploy init-ca`)."
            )
    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except ValueError as err:
        raise DeployError(
            f"Unreadable CA key or certificate in {files.key.parent}: {err}"
        ) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeployError(f"{files.key} is not an EC private key.")
    return key, cert


@dataclass(frozen=True)
class ServerCertFiles:
    """The SuperLink's TLS key (secret) and certificate (signed by the CA)."""

    key: Path
    cert: Path

    @classmethod
    def in_dir(cls, directory: Path) -> ServerCertFiles:
        return cls(directory / "server.key", directory / "server.pem")


def create_server_cert(
    directory: Path,
    ca: CAFiles,
    *,
    hosts: list[str],
    ips: list[str],
    days: int = 825,
    overwrite: bool = False,
) -> ServerCertFiles:
    """Issue the SuperLink certificate for the given DNS names and IP addresses.

    ``localhost`` and ``127.0.0.1`` are always included: the SuperLink's own
    ServerApp process reaches it over the loopback interface with the same
    certificate.
    """
    ca_key, ca_cert = load_ca(ca)
    dns = list(dict.fromkeys([*hosts, "localhost"]))
    try:
        addresses = [
            ipaddress.ip_address(ip) for ip in dict.fromkeys([*ips, "127.0.0.1"])
        ]
    except ValueError as err:
        raise DeployError(f"Invalid --ip value: {err}") from err
    files = ServerCertFiles.in_dir(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    cn = hosts[0] if hosts else (ips[0] if ips else "localhost")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(d) for d in dns] + [x509.IPAddress(a) for a in addresses]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    write_secret(files.key, _pem_key(key), overwrite=overwrite)
    write_public(
        files.cert, cert.public_bytes(serialization.Encoding.PEM), overwrite=overwrite
    )
    return files


@dataclass(frozen=True)
class KeyPairFiles:
    """An OpenSSH key pair on disk: ``private`` stays with its owner (a hospital's
    SuperNode key, a reviewer's signing key), ``public`` is handed out.
    """

    private: Path
    public: Path

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> KeyPairFiles:
        return cls(directory / f"{name}.key", directory / f"{name}.pub")


def openssh_public(key: Any, comment: str = "") -> bytes:
    """The OpenSSH public-key line of ``key`` (with ``comment``), newline-ended."""
    line = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return line + (f" {comment}" if comment else "").encode() + b"\n"


def write_key_pair(
    files: KeyPairFiles, key: Any, comment: str, *, overwrite: bool = False
) -> KeyPairFiles:
    """Write ``key`` (private, OpenSSH PEM, owner-only) and its public line."""
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    write_secret(files.private, private, overwrite=overwrite)
    write_public(
        files.public, openssh_public(key.public_key(), comment), overwrite=overwrite
    )
    return files


def create_hospital_keys(
    directory: Path, name: str, *, overwrite: bool = False
) -> KeyPairFiles:
    """Create an ECDSA P-384 key pair in OpenSSH format for SuperNode authentication."""
    check_name(name)
    key = ec.generate_private_key(ec.SECP384R1())
    return write_key_pair(
        KeyPairFiles.in_dir(directory, name), key, name, overwrite=overwrite
    )


def check_public_key(path: Path) -> None:
    """Fail early, naming the file, unless ``path`` is an OpenSSH EC public key."""
    if not path.is_file():
        raise DeployError(f"Public key file not found: {path}")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, TypeError) as err:
        raise DeployError(f"{path} is not an OpenSSH public key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeployError(f"{path} is not an ECDSA public key (Flower needs NIST EC).")


def check_private_key(path: Path) -> None:
    """Fail early, naming the file, unless ``path`` is a usable private key.

    It must be an OpenSSH EC private key readable only by its owner.
    """
    if not path.is_file():
        raise DeployError(
            f"Private key file not found: {path} "
            "(run `medflower deploy hospital-keys`)."
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise DeployError(
            f"{path} is accessible by other users (mode {mode:o}); "
            f"run `chmod 600 {path}`."
        )
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, TypeError) as err:
        raise DeployError(f"{path} is not an OpenSSH private key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeployError(f"{path} is not an ECDSA private key (Flower needs NIST EC).")


def cert_fingerprint(path: Path) -> str:
    """Return the SHA-256 fingerprint of a PEM certificate.

    Compare it over a second channel (e.g. by phone) before trusting a CA
    certificate received by e-mail.
    """
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def public_key_fingerprint(path: Path) -> str:
    """Return the ``SHA256:...`` fingerprint of an OpenSSH key, as ``ssh-keygen -l``."""
    blob = base64.b64decode(path.read_text().split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
