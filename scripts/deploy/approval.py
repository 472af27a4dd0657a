"""App approval: a hospital's reviewer signs a built app (FAB); the hospital runs
only builds signed by a reviewer it trusts.

Formats are Flower's own, so that Flower's SuperNode does the verification
(``flower-supernode --trusted-entities``):

* a reviewer holds an Ed25519 key pair in OpenSSH format (the form Flower's
  ``flwr app review`` signs with);
* the signed message is Flower's: the signing time (8 bytes, big-endian) followed
  by the SHA-256 digest of the FAB's bytes;
* the hospital's trusted-entities file is Flower's YAML mapping of public key id
  to ``ssh-ed25519 ...`` public key; the key id is the key's ``SHA256:...``
  fingerprint, so reviewer and hospital derive it without agreeing on a name.

What Flower lacks offline is the way a signature reaches the SuperNode (only from
Flower Hub): here it is an approval file at the hospital (``approvals/``), which
``scripts.deploy.approved_supernode`` hands to Flower's check. See
docs/deployment.md, "App approval".

Flower is imported inside the functions that need it (``--help`` stays light).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from app.jsonio import write_json
from scripts.deploy.pki import (
    DeployError,
    KeyPairFiles,
    check_name,
    openssh_public,
    write_key_pair,
)

TRUSTED_ENTITIES = "trusted-entities.yaml"
APPROVALS = "approvals"
# Flower's SuperNode refuses every FAB whose verifications lack this entry before it
# looks at a signature ("App verification is not supported by the SuperLink").
FLOWER_LICENSE_KEY = "valid_license"


def create_reviewer_keys(
    directory: Path, name: str, *, overwrite: bool = False
) -> KeyPairFiles:
    """Create an Ed25519 key pair in OpenSSH format for signing apps."""
    check_name(name, "reviewer name")
    key = ed25519.Ed25519PrivateKey.generate()
    return write_key_pair(
        KeyPairFiles.in_dir(directory, name), key, name, overwrite=overwrite
    )


def key_id(key: ed25519.Ed25519PublicKey) -> str:
    """The key's ``SHA256:...`` fingerprint (as ``ssh-keygen -l`` prints it)."""
    blob = base64.b64decode(openssh_public(key).split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def load_reviewer_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Read a reviewer's private key; errors name the file."""
    if not path.is_file():
        raise DeployError(
            f"Reviewer key not found: {path} (run `medflower deploy reviewer-keys`)."
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
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DeployError(
            f"{path} is not an Ed25519 key (Flower verifies app signatures with "
            "Ed25519 only)."
        )
    return key


def parse_reviewer_public_key(text: str, source: str) -> ed25519.Ed25519PublicKey:
    """Parse an ``ssh-ed25519 ...`` line; errors name ``source`` (file, entry)."""
    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except (ValueError, TypeError) as err:
        raise DeployError(f"{source} is not an OpenSSH public key: {err}") from err
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise DeployError(
            f"{source} is not an Ed25519 public key (Flower verifies app signatures "
            "with Ed25519 only)."
        )
    return key


# --- the app build and its approval ----------------------------------------------


def build_fab(app_dir: Path) -> bytes:
    """Build the FAB of ``app_dir`` exactly as ``flwr run <app_dir>`` submits it.

    Flower's own builder is used: files filtered and sorted, fixed timestamps, so
    the same source always gives the same bytes.
    """
    from flwr.cli.build import build_fab_from_disk

    if not (app_dir / "pyproject.toml").is_file():
        raise DeployError(f"{app_dir} holds no pyproject.toml: not a Flower app.")
    try:
        return build_fab_from_disk(app_dir)
    except (ValueError, OSError) as err:
        raise DeployError(f"Cannot build the app in {app_dir}: {err}") from err


def fab_digest(fab: bytes) -> str:
    """SHA-256 of the FAB's bytes, hex: the hash Flower names the build by."""
    return hashlib.sha256(fab).hexdigest()


@dataclass(frozen=True)
class Approval:
    """One reviewer's signature over one app build (an ``approvals/*.json`` file).

    Attributes
    ----------
    fab_sha256
        SHA-256 (hex) of the approved FAB's bytes.
    public_key_id
        The signing key's ``SHA256:...`` fingerprint (its trusted-entities id).
    reviewer
        The reviewer's name (informational; trust is by key).
    signed_at
        Signing time, Unix seconds (part of the signed message).
    signature
        Ed25519 signature, base64url without padding (Flower's encoding).
    """

    fab_sha256: str
    public_key_id: str
    reviewer: str
    signed_at: int
    signature: str

    def file_name(self) -> str:
        return f"{self.fab_sha256}.{self.reviewer}.json"

    @classmethod
    def read(cls, path: Path) -> Approval:
        """Read an approval file; errors name the file."""
        try:
            raw = json.loads(path.read_text())
            approval = cls(
                fab_sha256=str(raw["fab-sha256"]),
                public_key_id=str(raw["public-key-id"]),
                reviewer=str(raw["reviewer"]),
                signed_at=int(raw["signed-at"]),
                signature=str(raw["signature"]),
            )
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise DeployError(f"Unreadable approval file {path}: {err!r}") from err
        return approval

    def write(self, directory: Path) -> Path:
        path = directory / self.file_name()
        write_json(path, {k.replace("_", "-"): v for k, v in asdict(self).items()})
        return path

    def flower_record(self) -> str:
        """This signature as one entry of a Flower FAB's ``verifications``."""
        return json.dumps({"signature": self.signature, "signed_at": self.signed_at})


def sign_fab(fab: bytes, key: ed25519.Ed25519PrivateKey, reviewer: str) -> Approval:
    """Sign ``fab`` with Flower's message format (signing time + FAB digest)."""
    from flwr.supercore.primitives.asymmetric_ed25519 import (
        create_message_to_sign,
        sign_message,
    )

    check_name(reviewer, "reviewer name")
    signed_at = int(time.time())
    message = create_message_to_sign(hashlib.sha256(fab).digest(), signed_at)
    signature = sign_message(key, message)
    return Approval(
        fab_sha256=fab_digest(fab),
        public_key_id=key_id(key.public_key()),
        reviewer=reviewer,
        signed_at=signed_at,
        signature=base64.urlsafe_b64encode(signature).rstrip(b"=").decode(),
    )


def approvals_for(directory: Path, digest: str) -> tuple[list[Approval], list[str]]:
    """The approvals in ``directory`` of the build with SHA-256 ``digest``.

    Returns the approvals and one problem line per unreadable or mismatched file
    (a bad file never stops the SuperNode: it just approves nothing).
    """
    found, problems = [], []
    for path in sorted(directory.glob(f"{digest}.*.json")):
        try:
            approval = Approval.read(path)
        except DeployError as err:
            problems.append(str(err))
            continue
        if approval.fab_sha256 != digest:
            problems.append(
                f"{path} approves build {approval.fab_sha256}, not {digest}"
            )
            continue
        found.append(approval)
    return found, problems


def flower_verifications(approvals: list[Approval]) -> dict[str, str]:
    """A FAB's ``verifications`` as Flower's SuperNode checks them.

    Flower expects these from Flower Hub: the licence entry, then one JSON record
    (signature, signing time) per public key id.
    """
    records = {a.public_key_id: a.flower_record() for a in approvals}
    return {FLOWER_LICENSE_KEY: "Valid", **records}


# --- the hospital's trusted entities ---------------------------------------------


def read_trusted(path: Path) -> dict[str, str]:
    """Read a trusted-entities file (key id -> ``ssh-ed25519 ...``); errors name it.

    Each entry must be an Ed25519 key filed under its own fingerprint. An empty
    file gives an empty mapping.
    """
    import yaml

    if not path.is_file():
        raise DeployError(
            f"Trusted entities file not found: {path} (add a reviewer's key with "
            "`medflower deploy trust`)."
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DeployError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise DeployError(f"{path} must map key ids to 'ssh-ed25519 ...' keys.")
    for entity, value in raw.items():
        key = parse_reviewer_public_key(str(value), f"Entry {entity!r} of {path}")
        if key_id(key) != entity:
            raise DeployError(
                f"Entry {entity!r} of {path} holds the key {key_id(key)}: an entry's "
                "id must be its key's fingerprint (re-add it with `medflower deploy "
                "trust`)."
            )
    return {str(k): str(v) for k, v in raw.items()}


def load_trusted(path: Path) -> dict[str, str]:
    """:func:`read_trusted`, refusing a file that trusts nobody.

    Flower's SuperNode skips app verification altogether when it trusts nobody.
    """
    entities = read_trusted(path)
    if not entities:
        raise DeployError(
            f"{path} trusts no reviewer: add one with `medflower deploy trust`."
        )
    return entities


def trust(path: Path, public_key: Path) -> str:
    """Add a reviewer's public key file to the trusted-entities file ``path``.

    Returns the key id. The file is created if missing; other entries are kept.
    """
    import yaml

    if not public_key.is_file():
        raise DeployError(f"Public key file not found: {public_key}")
    line = public_key.read_text().strip()
    key = parse_reviewer_public_key(line, str(public_key))
    entities = read_trusted(path) if path.exists() else {}
    entity = key_id(key)
    entities[entity] = line
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(entities, default_flow_style=False, width=1000))
    return entity
