"""``medflower audit-log``: check and read a hospital's audit log.

``verify PATH`` checks the hash chain (exit 0; exit 1 naming the first bad entry);
``show PATH`` prints one row per entry. Standard library only: no torch or Flower.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.governance.audit import AuditError, read_entries, verify

REASON_WIDTH = 70


def cmd_verify(args: argparse.Namespace) -> int:
    result = verify(args.path)
    print(result.summary())
    if result.ok and args.head and result.head != args.head:
        print(
            f"{args.path}: FAILED: the chain ends at {result.head}, not at the "
            f"recorded head {args.head}: entries were removed or the log replaced"
        )
        return 1
    return 0 if result.ok else 1


def _arrays(entry: Mapping[str, Any]) -> tuple[int, int]:
    arrays = [a for record in entry.get("arrays", {}).values() for a in record]
    return len(arrays), sum(int(a.get("bytes", 0)) for a in arrays)


def _note(entry: Mapping[str, Any]) -> str:
    """An error's code and full reason, else the metric names (shortened)."""
    if "error" in entry:
        reason = str(entry["error"].get("reason", ""))
        if reason.startswith("hospital "):  # the hospital is the log's owner
            reason = reason.split(": ", 1)[-1]
        return f"[{entry['error'].get('code')}] {reason}"
    names = [k for record in entry.get("metrics", {}).values() for k in record]
    text = f"metrics: {', '.join(names)}" if names else ""
    return text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 3] + "..."


def _row(entry: Mapping[str, Any]) -> list[str]:
    count, size = _arrays(entry)
    epsilon = entry.get("epsilon")
    return [
        str(entry.get("seq", "?")),
        str(entry.get("time", "")),
        str(entry.get("run_id", "")),
        "" if entry.get("round") is None else str(entry["round"]),
        str(entry.get("message_type", "")),
        str(entry.get("outcome", "")),
        str(count) if count else "",
        str(size) if size else "",
        "" if epsilon is None else f"{epsilon:.4g}",
        _note(entry),
    ]


HEADER = ["#", "time", "run", "round", "message", "outcome", "arrays", "bytes", "eps"]


def table(entries: Sequence[Mapping[str, Any]]) -> str:
    """The entries as a plain-text table, one row each."""
    rows = [[*HEADER, "metrics / reason"], *(_row(e) for e in entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    )


def cmd_show(args: argparse.Namespace) -> int:
    print(table(read_entries(args.path)))
    result = verify(args.path)
    print(result.summary())
    return 0 if result.ok else 1


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "verify": (
        "check the log's hash chain; exit 1 naming the first bad entry",
        cmd_verify,
    ),
    "show": ("print the log as a table (and whether its chain verifies)", cmd_show),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Check or read a hospital's audit log (audit.jsonl)."
    sub = parser.add_subparsers(dest="audit_log_command", required=True)
    for name, (help_text, _) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("path", type=Path, help="the hospital's audit log")
        if name == "verify":
            command.add_argument(
                "--head",
                default=None,
                help="the head hash recorded at an earlier verify: the chain must "
                "end there (detects entries removed from the end)",
            )


def run(args: argparse.Namespace) -> int:
    try:
        return SUBCOMMANDS[args.audit_log_command][1](args)
    except AuditError as err:
        print(f"medflower audit-log: error: {err}", file=sys.stderr)
        return 1
