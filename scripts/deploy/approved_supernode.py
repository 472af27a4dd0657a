"""A hospital's SuperNode that runs only app builds its trusted reviewers signed.

``python -m scripts.deploy.approved_supernode --approvals DIR <flower-supernode
options> --trusted-entities FILE`` runs Flower's own ``flower-supernode`` in this
process, with one addition: each app build (FAB) the SuperLink sends is given the
signatures the hospital holds for it (``DIR/<fab sha256>.<reviewer>.json``) as
its ``verifications``. Flower's SuperNode then checks them against
``--trusted-entities`` as it checks Flower Hub's, and refuses a build without a
valid signature by a trusted key: it logs the refusal and answers the server
with an error ("The FAB could not be verified."), before any ``flwr-clientapp``
process starts, so none of the app's code runs here.

Why a launcher: Flower 1.41 attaches signatures to a FAB only when the SuperLink
fetched it from Flower Hub (online); a FAB submitted with ``flwr run <dir>``
carries none, so a SuperNode with trusted entities refuses every such app. Only
the delivery of the signature is replaced: the check is Flower's.

The hook is placed on a private part of Flower (the SuperNode's connection);
if that part changed shape, the launcher refuses to start (fails closed).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

from scripts.deploy.approval import approvals_for, flower_verifications

GET_FAB_INDEX = 4  # position of ``get_fab`` in what ``_init_connection`` yields


class HookError(RuntimeError):
    """This Flower's SuperNode cannot be given the hospital's approvals."""


def approving(
    get_fab: Callable[[str, int], Any], approvals: Path, log: Callable[..., None]
) -> Callable[[str, int], Any]:
    """Wrap Flower's ``get_fab(fab_hash, run_id)``: attach the hospital's approvals.

    The digest is computed from the bytes received, never taken from the SuperLink.
    """

    def get_fab_with_approvals(fab_hash: str, run_id: int) -> Any:
        fab = get_fab(fab_hash, run_id)
        digest = hashlib.sha256(fab.content).hexdigest()
        found, problems = approvals_for(approvals, digest)
        for problem in problems:
            log(WARNING, "App approval: ignored %s", problem)
        fab.verifications = flower_verifications(found)
        if found:
            log(
                INFO,
                "App approval: run %s, app build sha256 %s, signed by %s; checking "
                "the signatures against the trusted entities.",
                run_id,
                digest,
                ", ".join(f"{a.reviewer} ({a.public_key_id})" for a in found),
            )
        else:
            log(
                ERROR,
                "App approval: REFUSED run %s: app build sha256 %s has no approval "
                "in %s; it will not run on this hospital.",
                run_id,
                digest,
                approvals,
            )
        return fab

    return get_fab_with_approvals


def check_hook_points(module: Any) -> None:
    """Fail closed unless Flower's SuperNode has the shape this launcher hooks."""
    from flwr.supercore.fab import Fab

    connect = getattr(module, "_init_connection", None)
    pull = getattr(module, "_pull_and_store_message", None)
    if connect is None or pull is None or not hasattr(module, "_verify_fab"):
        raise HookError("flwr.supernode.start_client_internal lacks its FAB check")
    hints = typing.get_type_hints(connect)
    (conn,) = typing.get_args(hints.get("return", Iterator[None]))
    parts = typing.get_args(conn)
    if len(parts) <= GET_FAB_INDEX or typing.get_args(parts[GET_FAB_INDEX])[-1:] != (
        Fab,
    ):
        raise HookError("the SuperNode's connection no longer yields get_fab")
    params = typing.get_type_hints(pull)
    if "get_fab" not in params or "trusted_entities" not in params:
        raise HookError("the SuperNode no longer verifies FABs with trusted entities")


def install(approvals: Path) -> None:
    """Give every FAB this process's SuperNode receives the hospital's approvals."""
    from flwr.supercore import log
    from flwr.supernode import start_client_internal as supernode

    check_hook_points(supernode)
    connect = supernode._init_connection

    @contextmanager
    def connection_with_approvals(*args: Any, **kwargs: Any) -> Iterator[tuple]:
        with connect(*args, **kwargs) as conn:
            parts = list(conn)
            parts[GET_FAB_INDEX] = approving(parts[GET_FAB_INDEX], approvals, log)
            yield tuple(parts)

    supernode._init_connection = connection_with_approvals


def parse(argv: Sequence[str]) -> tuple[Path, list[str]]:
    """Split ``--approvals DIR`` from the options passed on to Flower."""
    parser = argparse.ArgumentParser(
        prog="approved_supernode", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--approvals", required=True, help="the approvals folder")
    args, rest = parser.parse_known_args(list(argv))
    if "--trusted-entities" not in rest:
        parser.error("--trusted-entities is required: whom does this hospital trust?")
    return Path(args.approvals).resolve(), rest


def main(argv: Sequence[str] | None = None) -> None:
    approvals, flower_args = parse(sys.argv[1:] if argv is None else argv)
    try:
        install(approvals)
    except HookError as err:
        sys.exit(
            f"App approval cannot be enforced with this Flower version ({err}); "
            "the SuperNode was not started. Exit Code: 1"
        )
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
