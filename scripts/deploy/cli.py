"""``medflower deploy``: run the federation across hospitals with Flower's engine.

One SuperLink at the coordinator, one SuperNode per hospital, TLS and SuperNode
authentication, all started by Flower's own executables.

Each party keeps its files in its own folder (``--dir``):

* coordinator: ``ca/ca.key`` (secret), ``ca/ca.crt`` (shared with hospitals and
  with whoever submits runs), ``superlink/server.key`` (secret),
  ``superlink/server.pem``, ``superlink/state.db`` (registered hospitals, runs);
* hospital: ``keys/<name>.key`` (secret), ``keys/<name>.pub`` (sent to the
  coordinator), ``flwr-home/`` (the SuperNode's Flower state),
  ``trusted-entities.yaml`` (its reviewers' public keys) and ``approvals/`` (their
  signatures of the app builds it may run);
* reviewer: ``keys/<name>.key`` (secret, Ed25519), ``keys/<name>.pub`` (to the
  hospitals that trust the reviewer);
* both: ``run/<process>.pid`` and ``logs/<process>.log``.

See docs/deployment.md for the step-by-step guide.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import tomli_w

from data.cache import CACHE_VAR
from data.cache import clear as clear_cache
from scripts.deploy import processes as procs
from scripts.deploy.pki import (
    CAFiles,
    DeployError,
    KeyPairFiles,
    ServerCertFiles,
    cert_fingerprint,
    check_name,
    check_private_key,
    check_public_key,
    create_ca,
    create_hospital_keys,
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

DEFAULT_PORT = 9093
SUPERLINK = "superlink"
READY_SUPERNODE = r"SuperNode ID: \d+"
# A hospital's prepared data (data/cache.py), under its --dir; CACHE_VAR is read
# by its ClientApps, which inherit the SuperNode's environment.
CACHE_DIR = "cache"


def _bin(name: str) -> str:
    """Return a Flower executable from this interpreter's environment."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir).expanduser().resolve()


def _env(flwr_home: Path | None = None) -> dict[str, str]:
    return flower_env(flwr_home)


# --- certificates and keys ------------------------------------------------------


def cmd_init_ca(args: argparse.Namespace) -> int:
    files = create_ca(_dir(args) / "ca", overwrite=args.force)
    print(f"CA key (keep secret, mode 0600): {files.key}")
    print(f"CA certificate (share with hospitals and run submitters): {files.cert}")
    print(f"CA certificate SHA-256 fingerprint: {cert_fingerprint(files.cert)}")
    return 0


def cmd_superlink_cert(args: argparse.Namespace) -> int:
    root = _dir(args)
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


def cmd_hospital_keys(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    files = create_hospital_keys(_dir(args) / "keys", name, overwrite=args.force)
    print(f"Private key (keep secret at the hospital, mode 0600): {files.private}")
    print(f"Public key (send to the coordinator to register): {files.public}")
    print(f"Public key fingerprint: {public_key_fingerprint(files.public)}")
    return 0


# --- app approval ---------------------------------------------------------------


def cmd_reviewer_keys(args: argparse.Namespace) -> int:
    from scripts.deploy.approval import (
        create_reviewer_keys,
        key_id,
        parse_reviewer_public_key,
    )

    files = create_reviewer_keys(_dir(args) / "keys", args.name, overwrite=args.force)
    key = parse_reviewer_public_key(files.public.read_text(), str(files.public))
    print(f"Signing key (keep secret, mode 0600): {files.private}")
    print(f"Public key (give to the hospitals that trust you): {files.public}")
    print(f"Key id (fingerprint): {key_id(key)}")
    return 0


def cmd_sign_app(args: argparse.Namespace) -> int:
    from scripts.deploy import approval

    key_path = Path(args.key).expanduser()
    key = approval.load_reviewer_private_key(key_path)
    if args.fab:
        fab_path = Path(args.fab).expanduser()
        if not fab_path.is_file():
            raise DeployError(f"FAB file not found: {fab_path}")
        fab, what = fab_path.read_bytes(), str(fab_path)
    else:
        app_dir = Path(args.app).expanduser().resolve()
        fab, what = approval.build_fab(app_dir), f"the app in {app_dir}"
    signed = approval.sign_fab(fab, key, args.reviewer or key_path.stem)
    path = signed.write(Path(args.out).expanduser().resolve())
    print(f"Signed {what}: build sha256 {signed.fab_sha256} ({len(fab)} bytes)")
    print(f"Approval by {signed.reviewer} ({signed.public_key_id}): {path}")
    print("A hospital runs this build once the file is in its approvals/ folder.")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from scripts.deploy.approval import TRUSTED_ENTITIES, trust

    path = _dir(args) / TRUSTED_ENTITIES
    for item in args.public_key:
        entity = trust(path, Path(item).expanduser())
        print(f"Trusted reviewer key {entity} ({item}) in {path}")
    return 0


# --- coordinator ----------------------------------------------------------------


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
        _bin("flower-superlink"),
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
    root = _dir(args)
    port = args.port or free_port(args.bind)
    if not port_free(args.bind, port):
        raise DeployError(
            f"Port {port} on {args.bind} is in use; pick another with --port."
        )
    env = _env(root / "flwr-home")
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


def _flwr_home(args: argparse.Namespace) -> Path:
    if args.flwr_home:
        return Path(args.flwr_home).expanduser().resolve()
    return Path(_env()["FLWR_HOME"]).resolve()


def cmd_connection(args: argparse.Namespace) -> int:
    path = write_connection(
        _flwr_home(args), args.name, args.address, Path(args.ca_cert).expanduser()
    )
    print(
        f"Wrote [superlink.{args.name}] to {path}; submit with "
        f"`flwr run . {args.name} --stream`."
    )
    return 0


def _flwr(
    argv: list[str], flwr_home: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess:
    env = _env(flwr_home)
    try:
        return subprocess.run(
            [_bin("flwr"), *argv],
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
    env = _env(flwr_home)
    running = {
        name: subprocess.Popen(
            [
                _bin("flwr"),
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
    for name, node_id in register(_flwr_home(args), args.connection, keys).items():
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
        flwr_home=_flwr_home(args),
        timeout=args.timeout,
    )
    print(f"medflower: run {outcome.run_id} on {args.connection}: {outcome.status}")
    return 0 if outcome.ok else 1


# --- hospital -------------------------------------------------------------------


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
        return [_bin("flower-supernode")]
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
    root = _dir(args)
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
    env = _env(root / "flwr-home")
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
    folder = _dir(args) / CACHE_DIR
    removed = clear_cache(folder) if folder.is_dir() else 0
    print(f"Removed {removed} prepared-data file(s) from {folder}.")
    return 0


# --- both -----------------------------------------------------------------------


def cmd_stop(args: argparse.Namespace) -> int:
    lines = procs.stop(_dir(args), args.name)
    print("\n".join(lines) if lines else f"Nothing started from {_dir(args)}.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    found = procs.running(_dir(args))
    for _, record in found:
        state = (
            "running"
            if procs.alive(record.pid) and procs.is_ours(record)
            else "stopped"
        )
        port = f" port {record.port}" if record.port else ""
        print(f"{record.name}: {state} (PID {record.pid}{port}) log {record.log}")
    if not found:
        print(f"Nothing started from {_dir(args)}.")
    return 0


def _add_dir(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--dir",
        default=default,
        help=f"this party's deployment folder (default ./{default})",
    )


def _add_flwr_home(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flwr-home",
        default=None,
        help="Flower config folder (default $FLWR_HOME, else <repo>/.flwr)",
    )


def _args_init_ca(p: argparse.ArgumentParser) -> None:
    _add_dir(p, "coordinator")
    p.add_argument("--force", action="store_true", help="overwrite existing files")


def _args_superlink_cert(p: argparse.ArgumentParser) -> None:
    _add_dir(p, "coordinator")
    p.add_argument(
        "--host", action="append", help="DNS name hospitals use (repeatable)"
    )
    p.add_argument(
        "--ip", action="append", help="IP address hospitals use (repeatable)"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing files")


def _args_start_superlink(p: argparse.ArgumentParser) -> None:
    _add_dir(p, "coordinator")
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        help="interface to listen on (0.0.0.0 = all; default 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"one port for Fleet, Control and Runtime APIs (default "
        f"{DEFAULT_PORT}; 0 = any free port)",
    )
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait until up")


def _args_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--name", default="medflower", help="connection name (default medflower)"
    )
    p.add_argument("--address", required=True, help="SuperLink host:port")
    p.add_argument("--ca-cert", required=True, help="the coordinator's ca.crt")
    _add_flwr_home(p)


def _args_register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--public-key",
        required=True,
        action="append",
        help="a hospital's <name>.pub (repeatable)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="hospital name for a single key (default: the key file's stem)",
    )
    p.add_argument(
        "--connection", default="medflower", help="SuperLink connection name"
    )
    _add_flwr_home(p)


def _args_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connection", default="medflower", help="SuperLink connection name"
    )
    p.add_argument("--run-config", default="", help='e.g. "num-server-rounds=3"')
    p.add_argument("--app", default=str(project_root()), help="Flower app directory")
    p.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="stop the run after this many seconds",
    )
    _add_flwr_home(p)


def _args_hospital_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="hospital name")
    _add_dir(p, "hospital")
    p.add_argument("--force", action="store_true", help="overwrite existing files")


def _args_start_supernode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="hospital name (as registered)")
    _add_dir(p, "hospital")
    p.add_argument("--superlink", required=True, help="SuperLink host:port")
    p.add_argument(
        "--ca-cert",
        default=None,
        help="the coordinator's ca.crt (omit only if the SuperLink's "
        "certificate is signed by a public CA)",
    )
    p.add_argument("--private-key", default=None, help="default <dir>/keys/<name>.key")
    p.add_argument(
        "--data-path",
        required=True,
        help="this hospital's data file, or a folder holding exactly one",
    )
    # Checked when the command runs (_check_kind): listing the kinds here would
    # import every dataset class (torch, MONAI) just to print --help.
    p.add_argument(
        "--dataset",
        default="heart-disease",
        help="format of the data: a dataset kind that reads a hospital's own file "
        "or folder, e.g. csv, heart-disease, medmnist, image-folder "
        "(default heart-disease)",
    )
    p.add_argument(
        "--label-column",
        default="target",
        help="csv label column, for the start-up data check",
    )
    p.add_argument(
        "--no-check-data",
        dest="check_data",
        action="store_false",
        help="start even if the data cannot be loaded now",
    )
    p.add_argument(
        "--policy",
        default=None,
        help="this hospital's site policy (policy.toml): the runs it accepts "
        "(docs/governance.md); default: none",
    )
    p.add_argument(
        "--audit-log",
        default=None,
        help="append an entry per answered message to this hash-chained JSONL "
        "file (`medflower audit-log verify`); default: none",
    )
    p.add_argument(
        "--runtime-port",
        type=int,
        default=0,
        help="local port for the SuperNode's runtime API (default: a free one)",
    )
    p.add_argument(
        "--max-wait-time",
        type=float,
        default=None,
        help="give up reconnecting to the SuperLink after this many seconds",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for the SuperNode to connect",
    )
    _add_approval_args(p)


def _args_reviewer_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="reviewer name")
    _add_dir(p, "reviewer")
    p.add_argument("--force", action="store_true", help="overwrite existing files")


def _args_sign_app(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, help="the reviewer's Ed25519 <name>.key")
    p.add_argument(
        "--app",
        default=str(project_root()),
        help="the reviewed app's folder: its FAB is built as `flwr run` builds it "
        "(default: this repository)",
    )
    p.add_argument("--fab", default=None, help="sign this built .fab file instead")
    p.add_argument(
        "--reviewer", default=None, help="name in the approval (default: key stem)"
    )
    p.add_argument(
        "--out",
        default="approvals",
        help="folder for the approval file, e.g. <hospital>/approvals "
        "(default ./approvals)",
    )


def _args_trust(p: argparse.ArgumentParser) -> None:
    _add_dir(p, "hospital")
    p.add_argument(
        "--public-key",
        required=True,
        action="append",
        help="a reviewer's Ed25519 <name>.pub (repeatable)",
    )


def _add_approval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trusted-entities",
        default=None,
        help="reviewers' keys (default <dir>/trusted-entities.yaml)",
    )
    p.add_argument(
        "--approvals",
        default=None,
        help="folder of approval files (default <dir>/approvals)",
    )
    p.add_argument(
        "--allow-any-app",
        action="store_true",
        help="run every app the coordinator sends, approved or not",
    )


def _args_stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", required=True, help="the party's deployment folder")
    p.add_argument(
        "--name",
        default=None,
        help="only this process (superlink, supernode-<hospital>)",
    )


def _args_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", required=True, help="the party's deployment folder")


SUBCOMMANDS: dict[
    str,
    tuple[
        str,
        Callable[[argparse.ArgumentParser], None],
        Callable[[argparse.Namespace], int],
    ],
] = {
    "init-ca": (
        "coordinator: create the CA (ca/ca.key secret, ca/ca.crt shared)",
        _args_init_ca,
        cmd_init_ca,
    ),
    "superlink-cert": (
        "coordinator: issue the SuperLink's TLS certificate",
        _args_superlink_cert,
        cmd_superlink_cert,
    ),
    "start-superlink": (
        "coordinator: start the SuperLink (TLS, node auth) in the background",
        _args_start_superlink,
        cmd_start_superlink,
    ),
    "connection": (
        "write [superlink.<name>] into $FLWR_HOME/config.toml",
        _args_connection,
        cmd_connection,
    ),
    "register": (
        "coordinator: register a hospital's public key with the SuperLink",
        _args_register,
        cmd_register,
    ),
    "run": (
        "submit a run with `flwr run --stream` and check its final status",
        _args_run,
        cmd_run,
    ),
    "hospital-keys": (
        "hospital: create its SuperNode key pair",
        _args_hospital_keys,
        cmd_hospital_keys,
    ),
    "reviewer-keys": (
        "reviewer: create an Ed25519 key pair for signing app builds",
        _args_reviewer_keys,
        cmd_reviewer_keys,
    ),
    "sign-app": (
        "reviewer: sign the app build (FAB) a hospital may run",
        _args_sign_app,
        cmd_sign_app,
    ),
    "trust": (
        "hospital: trust a reviewer's public key (trusted-entities.yaml)",
        _args_trust,
        cmd_trust,
    ),
    "start-supernode": (
        "hospital: start its SuperNode in the background",
        _args_start_supernode,
        cmd_start_supernode,
    ),
    "clear-cache": (
        "hospital: remove its prepared-data cache (<dir>/cache)",
        _args_status,
        cmd_clear_cache,
    ),
    "stop": (
        "stop every process started from --dir (or only --name) by PID",
        _args_stop,
        cmd_stop,
    ),
    "status": ("list the processes started from --dir", _args_status, cmd_status),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    sub = parser.add_subparsers(dest="deploy_command", required=True)
    for name, (help_text, add, _) in SUBCOMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
    try:
        return SUBCOMMANDS[args.deploy_command][2](args)
    except DeployError as err:
        print(f"medflower deploy {args.deploy_command}: error: {err}", file=sys.stderr)
        return 1
