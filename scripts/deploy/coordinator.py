"""The coordinator's ``medflower deploy`` commands: its CA and TLS certificate, the
SuperLink (TLS, SuperNode authentication), Flower connections, hospital
registration and run submission.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

from scripts.deploy import processes as procs
from scripts.deploy.common import flower_bin, flwr_home_of, party_dir
from scripts.deploy.pki import (
    CAFiles,
    DeployError,
    ServerCertFiles,
    cert_fingerprint,
    check_name,
    check_public_key,
    create_ca,
    create_server_cert,
    public_key_fingerprint,
)
from scripts.flower.driver import run_deployed
from scripts.flower.env import flower_env, project_root
from scripts.flower.processes import free_port, port_free
from scripts.flower.run_config import (
    check_run_config,
    flower_run_config,
    is_medflower,
    read_run_config,
)

SUPERLINK = "superlink"


def cmd_init_ca(args: argparse.Namespace) -> int:
    files = create_ca(party_dir(args) / "ca", overwrite=args.force)
    print(f"CA key (keep secret, mode 0600): {files.key}")
    print(f"CA certificate (share with hospitals and run submitters): {files.cert}")
    print(f"CA certificate SHA-256 fingerprint: {cert_fingerprint(files.cert)}")
    return 0


def cmd_superlink_cert(args: argparse.Namespace) -> int:
    root = party_dir(args)
    if not args.host and not args.ip:
        raise DeployError("Give the SuperLink's name(s) with --host and/or --ip.")
    files = create_server_cert(
        root / SUPERLINK,
        CAFiles.in_dir(root / "ca"),
        hosts=args.host or [],
        ips=args.ip or [],
        overwrite=args.force,
    )
    names = ", ".join(
        dict.fromkeys([*(args.host or []), *(args.ip or []), "localhost", "127.0.0.1"])
    )
    print(f"SuperLink certificate for {names}: {files.cert}")
    print(f"SuperLink TLS key (keep secret, mode 0600): {files.key}")
    return 0


def superlink_argv(root: Path, bind: str, port: int) -> list[str]:
    """``flower-superlink`` with TLS, SuperNode authentication and a state file."""
    ca, cert = CAFiles.in_dir(root / "ca"), ServerCertFiles.in_dir(root / SUPERLINK)
    for path in (ca.cert, cert.cert, cert.key):
        if not path.is_file():
            raise DeployError(
                f"{path} not found: run `medflower deploy init-ca` and "
                "`medflower deploy superlink-cert` first."
            )
    return [
        flower_bin("flower-superlink"),
        "--ssl-ca-certfile",
        str(ca.cert),
        "--ssl-certfile",
        str(cert.cert),
        "--ssl-keyfile",
        str(cert.key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database",
        str(root / SUPERLINK / "state.db"),
        "--host",
        bind,
        "--port",
        str(port),
    ]


def cmd_start_superlink(args: argparse.Namespace) -> int:
    root = party_dir(args)
    port = args.port or free_port(args.bind)
    if not port_free(args.bind, port):
        raise DeployError(
            f"Port {port} on {args.bind} is in use; pick another with --port."
        )
    env = flower_env(root / "flwr-home")
    # A relative `output-dir` of a run lands under the coordinator's folder.
    env["MEDFLOWER_HOME"] = str(root)
    record = procs.start_background(
        root, SUPERLINK, superlink_argv(root, args.bind, port), env, port=port, cwd=root
    )
    probe = "127.0.0.1" if args.bind in ("0.0.0.0", "") else args.bind
    try:
        ready = procs.wait_ready(record, port=(probe, port), timeout=args.wait)
    except DeployError:
        procs.stop(root, record.name)
        raise
    if not ready:
        procs.stop(root, record.name)
        raise DeployError(
            f"SuperLink did not listen on port {port} within {args.wait:.0f}s (stopped "
            f"it); see {record.log}."
        )
    print(
        f"SuperLink running (PID {record.pid}) on {args.bind}:{port} with TLS and "
        f"SuperNode authentication; log {record.log}"
    )
    return 0


def write_connection(flwr_home: Path, name: str, address: str, ca_cert: Path) -> Path:
    """Add or replace ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml``."""
    check_name(name, "connection name")
    if not ca_cert.is_file():
        raise DeployError(f"CA certificate not found: {ca_cert}")
    if ":" not in address:
        raise DeployError(f"--address must be host:port, got {address!r}.")
    path = flwr_home / "config.toml"
    config: dict = {}
    if path.exists():
        try:
            config = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise DeployError(f"{path} is not valid TOML: {err}") from err
    links = config.setdefault("superlink", {})
    links.setdefault("default", "local")
    links.setdefault("local", {"address": ":local:"})
    links[name] = {"address": address, "root-certificates": str(ca_cert.resolve())}
    flwr_home.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path


def cmd_connection(args: argparse.Namespace) -> int:
    path = write_connection(
        flwr_home_of(args), args.name, args.address, Path(args.ca_cert).expanduser()
    )
    print(
        f"Wrote [superlink.{args.name}] to {path}; submit with "
        f"`flwr run . {args.name} --stream`."
    )
    return 0


def _flwr(
    argv: list[str], flwr_home: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess:
    env = flower_env(flwr_home)
    try:
        return subprocess.run(
            [flower_bin("flwr"), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=project_root(),
        )
    except subprocess.TimeoutExpired as err:
        raise DeployError(
            f"`flwr {' '.join(argv)}` did not answer in {timeout}s."
        ) from err


def _json_tail(text: str) -> dict:
    """Return the JSON object ``flwr ... --format json`` printed (after any banner)."""
    start = text.find("{")
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return {}


def register(flwr_home: Path, connection: str, keys: dict[str, Path]) -> dict[str, int]:
    """Register hospitals' public keys (name -> key file) with the SuperLink.

    Each key is registered by ``flwr supernode register``, the keys concurrently;
    returns name -> SuperNode id. Every failure is reported, naming its file.
    """
    for name, key in keys.items():
        check_name(name)
        check_public_key(key)
    env = flower_env(flwr_home)
    running = {
        name: subprocess.Popen(
            [
                flower_bin("flwr"),
                "supernode",
                "register",
                str(key),
                connection,
                "--name",
                name,
                "--format",
                "json",
            ],
            env=env,
            cwd=project_root(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, key in keys.items()
    }
    node_ids: dict[str, int] = {}
    errors = []
    for name, proc in running.items():
        try:
            stdout, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        reply = _json_tail(stdout)
        if proc.returncode == 0 and reply.get("success"):
            node_ids[name] = int(reply["node-id"])
            continue
        detail = str(reply.get("error-message") or (stdout + stderr)).strip()
        errors.append(f"{keys[name]}: {procs.clean(detail)}")
    if errors:
        raise DeployError(
            f"Registering with SuperLink connection {connection!r} failed:\n"
            + "\n".join(errors)
        )
    return node_ids


def cmd_register(args: argparse.Namespace) -> int:
    keys = {}
    for item in args.public_key:
        key = Path(item).expanduser()
        keys[key.stem if len(args.public_key) > 1 or not args.name else args.name] = key
    for name, node_id in register(flwr_home_of(args), args.connection, keys).items():
        print(
            f"Registered hospital {name} ({keys[name]}, "
            f"{public_key_fingerprint(keys[name])}) as SuperNode {node_id}."
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:  # refused here, before the deployment's SuperLink starts a run
        values = read_run_config(args.run_config)
        if is_medflower(Path(args.app).resolve()):
            check_run_config(values)
    except ValueError as err:  # ConfigError included
        print(f"medflower deploy run: {err}", file=sys.stderr)
        return 2
    outcome = run_deployed(
        app_dir=Path(args.app).resolve(),
        connection=args.connection,
        run_config=flower_run_config(values),
        flwr_home=flwr_home_of(args),
        timeout=args.timeout,
    )
    print(f"medflower: run {outcome.run_id} on {args.connection}: {outcome.status}")
    return 0 if outcome.ok else 1
