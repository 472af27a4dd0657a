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

The commands live with their party (:mod:`scripts.deploy.coordinator`,
:mod:`scripts.deploy.hospital`, :mod:`scripts.deploy.reviewer`); this module holds
their arguments and the subcommand table. See docs/deployment.md for the
step-by-step guide.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from scripts.deploy import processes as procs
from scripts.deploy.common import party_dir
from scripts.deploy.coordinator import (
    cmd_connection,
    cmd_init_ca,
    cmd_register,
    cmd_run,
    cmd_start_superlink,
    cmd_superlink_cert,
)
from scripts.deploy.hospital import (
    cmd_clear_cache,
    cmd_hospital_keys,
    cmd_start_supernode,
    cmd_trust,
)
from scripts.deploy.pki import DeployError
from scripts.deploy.reviewer import cmd_reviewer_keys, cmd_sign_app
from scripts.flower.env import project_root

DEFAULT_PORT = 9093


def cmd_stop(args: argparse.Namespace) -> int:
    lines = procs.stop(party_dir(args), args.name)
    print("\n".join(lines) if lines else f"Nothing started from {party_dir(args)}.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    found = procs.running(party_dir(args))
    for _, record in found:
        state = (
            "running"
            if procs.alive(record.pid) and procs.is_ours(record)
            else "stopped"
        )
        port = f" port {record.port}" if record.port else ""
        print(f"{record.name}: {state} (PID {record.pid}{port}) log {record.log}")
    if not found:
        print(f"Nothing started from {party_dir(args)}.")
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
