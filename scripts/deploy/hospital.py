"""A hospital's ``medflower deploy`` commands: its SuperNode key pair, the reviewers
it trusts, its SuperNode (its own data, site policy, audit log, app approval) and
its prepared-data cache.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.cache import CACHE_VAR
from data.cache import clear as clear_cache
from scripts.deploy import processes as procs
from scripts.deploy.common import flower_bin, party_dir
from scripts.deploy.pki import (
    DeployError,
    KeyPairFiles,
    check_name,
    check_private_key,
    create_hospital_keys,
    public_key_fingerprint,
)
from scripts.flower.env import flower_env
from scripts.flower.processes import free_port, port_free

READY_SUPERNODE = r"SuperNode ID: \d+"
# A hospital's prepared data (data/cache.py), under its --dir; CACHE_VAR is read
# by its ClientApps, which inherit the SuperNode's environment.
CACHE_DIR = "cache"


def cmd_hospital_keys(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    files = create_hospital_keys(party_dir(args) / "keys", name, overwrite=args.force)
    print(f"Private key (keep secret at the hospital, mode 0600): {files.private}")
    print(f"Public key (send to the coordinator to register): {files.public}")
    print(f"Public key fingerprint: {public_key_fingerprint(files.public)}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from scripts.deploy.approval import TRUSTED_ENTITIES, trust

    path = party_dir(args) / TRUSTED_ENTITIES
    for item in args.public_key:
        entity = trust(path, Path(item).expanduser())
        print(f"Trusted reviewer key {entity} ({item}) in {path}")
    return 0


def node_config(
    name: str,
    data_path: Path,
    dataset: str,
    governance: dict[str, Path] | None = None,
) -> str:
    """Build the ``--node-config`` a hospital's SuperNode passes to its ClientApp.

    ``governance`` adds the site policy and audit log (:func:`governance_paths`).
    """
    paths = {
        "data-path": str(data_path),
        **{k: str(v) for k, v in (governance or {}).items()},
    }
    for key, value in (*paths.items(), ("hospital-name", name)):
        if "'" in value or '"' in value:
            raise DeployError(f"{key} must not contain quotes: {value!r}")
    extra = "".join(f" {k}='{v}'" for k, v in paths.items() if k != "data-path")
    return f"data-path='{data_path}' dataset='{dataset}' hospital-name='{name}'{extra}"


def governance_paths(policy: str | None, audit_log: str | None) -> dict[str, Path]:
    """Check the site policy and audit log a SuperNode is started with.

    A bad policy or a log whose hash chain is broken stops the start, naming the
    file and the problem; the ClientApp gets absolute paths.
    """
    from app.governance.audit import AUDIT_KEY, AuditError, verify
    from app.governance.policy import POLICY_KEY, PolicyError, load_policy

    paths: dict[str, Path] = {}
    if policy:
        path = Path(policy).expanduser().resolve()
        try:
            load_policy(path)
        except PolicyError as err:
            raise DeployError(str(err)) from None
        paths[POLICY_KEY] = path
    if audit_log:
        path = Path(audit_log).expanduser().resolve()
        if path.exists():
            try:
                result = verify(path)
            except AuditError as err:
                raise DeployError(str(err)) from None
            if not result.ok:
                raise DeployError(
                    f"{result.summary()}. Move the damaged log aside to start anew."
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        paths[AUDIT_KEY] = path
    return paths


def check_local_data(
    name: str, data_path: Path, dataset: str, label_column: str
) -> str:
    """Load the hospital's data as its ClientApp will; return a one-line summary."""
    from app.client.hospital import load_local_hospital
    from app.config import RunConfig  # imported late: pulls in torch
    from data.spec import DataError

    cfg = RunConfig(
        dataset=dataset, data_path=str(data_path), label_column=label_column
    )
    nc = {"data-path": str(data_path), "dataset": dataset, "hospital-name": name}
    try:
        site = load_local_hospital(cfg, nc)
    except DataError as err:
        raise DeployError(f"Hospital {name}: {err}") from err
    return f"{len(site.train)} training and {len(site.val)} held-out records"


def _check_kind(dataset: str) -> None:
    from data.registry import local_kinds

    if dataset not in local_kinds():
        raise DeployError(
            f"--dataset {dataset!r} cannot be read from a hospital's own data; "
            f"use one of: {', '.join(local_kinds())}"
        )


def _supernode_launcher(root: Path, args: argparse.Namespace) -> list[str]:
    """The SuperNode's command up to its Flower options.

    With app approval (the default) it is ``scripts.deploy.approved_supernode``,
    which hands the hospital's approvals to Flower's FAB verification; with
    ``--allow-any-app`` Flower's plain ``flower-supernode``.
    """
    if args.allow_any_app:
        print("App approval is OFF: this hospital runs any app the coordinator sends.")
        return [flower_bin("flower-supernode")]
    from scripts.deploy.approval import APPROVALS, TRUSTED_ENTITIES, load_trusted

    trusted = Path(args.trusted_entities or root / TRUSTED_ENTITIES).expanduser()
    reviewers = load_trusted(trusted)
    approvals = Path(args.approvals or root / APPROVALS).expanduser().resolve()
    approvals.mkdir(parents=True, exist_ok=True)
    print(
        f"App approval is on: only builds signed by {len(reviewers)} trusted "
        f"reviewer key(s) in {trusted} run here; approvals are read from {approvals}."
    )
    return [
        sys.executable,
        "-m",
        "scripts.deploy.approved_supernode",
        "--approvals",
        str(approvals),
        "--trusted-entities",
        str(trusted.resolve()),
    ]


def cmd_start_supernode(args: argparse.Namespace) -> int:
    root = party_dir(args)
    name = check_name(args.name)
    key = (
        Path(args.private_key).expanduser()
        if args.private_key
        else (KeyPairFiles.in_dir(root / "keys", name).private)
    )
    check_private_key(key)
    ca = Path(args.ca_cert).expanduser() if args.ca_cert else None
    if ca is not None and not ca.is_file():
        raise DeployError(f"CA certificate not found: {ca}")
    launcher = _supernode_launcher(root, args)  # before the (slow) data check
    data_path = Path(args.data_path).expanduser().resolve()
    _check_kind(args.dataset)
    governance = governance_paths(args.policy, args.audit_log)
    if args.check_data:
        print(
            f"Hospital {name}: data OK, "
            f"{check_local_data(name, data_path, args.dataset, args.label_column)}."
        )
    runtime_port = args.runtime_port or free_port()
    if not port_free("127.0.0.1", runtime_port):
        raise DeployError(
            f"Runtime port {runtime_port} is in use (each SuperNode on a machine needs "
            "its own); pick another with --runtime-port."
        )
    argv = [
        *launcher,
        "--superlink",
        args.superlink,
        "--auth-supernode-private-key",
        str(key.resolve()),
        "--port",
        str(runtime_port),
        "--node-config",
        node_config(name, data_path, args.dataset, governance),
    ]
    if ca is not None:
        argv += ["--root-certificates", str(ca.resolve())]
    if args.max_wait_time:
        argv += ["--max-wait-time", str(args.max_wait_time)]
    env = flower_env(root / "flwr-home")
    env[CACHE_VAR] = str(root / CACHE_DIR)  # prepared data, kept at the hospital
    record = procs.start_background(
        root, f"supernode-{name}", argv, env, port=runtime_port, cwd=root
    )
    try:
        connected = procs.wait_ready(
            record,
            pattern=READY_SUPERNODE,
            failure=r"Exit Code: \d+",
            timeout=args.wait,
        )
    except DeployError:
        procs.stop(root, record.name)  # it is giving up: leave nothing behind
        raise
    state = "connected" if connected else "started, still connecting"
    print(
        f"SuperNode {name} {state} (PID {record.pid}, runtime port {runtime_port}) "
        f"to {args.superlink}; log {record.log}"
    )
    return 0


def cmd_clear_cache(args: argparse.Namespace) -> int:
    folder = party_dir(args) / CACHE_DIR
    removed = clear_cache(folder) if folder.is_dir() else 0
    print(f"Removed {removed} prepared-data file(s) from {folder}.")
    return 0
