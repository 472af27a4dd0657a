"""The hospital's audit log: append-only JSONL, one entry per answered message.

Each entry records what left the hospital (array names, shapes, dtypes and byte
sizes; metric names and values; the configs sent; epsilon spent) or what was
refused and why. It carries ``hash``, the SHA-256 of its own canonical JSON
(without ``hash``), and ``prev``, the hash of the entry before it: editing an entry
breaks its own hash, and removing, inserting or reordering entries breaks the
``prev`` link of the next one. :func:`verify` checks both and names the first bad
entry.

Why the head hash matters: a chain proves the entries agree with each other, not
that the newest ones are still there. Whoever can rewrite the file can drop its
last entries (or rebuild the whole chain). Recording the head hash that
``medflower audit-log verify`` prints somewhere else (a ticket, a signed e-mail)
anchors the log: a later verify must reach that hash.

Standard library only (plus :mod:`app.jsonio`), so ``medflower audit-log`` runs
without torch or Flower.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from app.jsonio import compact

AUDIT_KEY = "audit-log"  # node config: the path of the site's audit log
GENESIS = "0" * 64  # ``prev`` of the first entry
CHAIN_KEYS = ("seq", "prev", "hash")


class AuditError(RuntimeError):
    """The audit log cannot be read or extended."""


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an entry's canonical JSON without its ``hash`` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(compact(body).encode()).hexdigest()


def _last_line(handle: BinaryIO) -> bytes:
    """The file's last non-empty line, read backwards from its end."""
    handle.seek(0, os.SEEK_END)
    pos = handle.tell()
    tail = b""
    while pos > 0 and tail.rstrip(b"\n").count(b"\n") == 0:
        step = min(4096, pos)
        pos -= step
        handle.seek(pos)
        tail = handle.read(step) + tail
    return tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]


def _chain_head(handle: BinaryIO, path: Path) -> tuple[int, str]:
    """The last entry's number and hash (``0, GENESIS`` for an empty log)."""
    last = _last_line(handle)
    if not last:
        return 0, GENESIS
    try:
        entry = json.loads(last)
        return int(entry["seq"]), str(entry["hash"])
    except (ValueError, KeyError, TypeError) as err:
        raise AuditError(
            f"{path}: the last entry is unreadable ({err}); run "
            "`medflower audit-log verify` and move the damaged log aside"
        ) from None


def append_entry(path: Path, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Append one entry (``fields`` plus ``seq``, ``prev``, ``hash``) to the log.

    The file is locked while the chain's head is read and the line written, so
    two processes of one SuperNode cannot fork the chain. Returns the entry.
    """
    clash = sorted(set(fields) & set(CHAIN_KEYS))
    if clash:
        raise ValueError(f"audit fields must not set {clash}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            seq, prev = _chain_head(handle, path)
            entry = {"seq": seq + 1, **fields, "prev": prev}
            entry["hash"] = entry_hash(entry)
            handle.seek(0, os.SEEK_END)
            handle.write((compact(entry) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return entry


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify`.

    ``entries`` counts the entries that verified; ``head`` is the hash of the last
    of them; ``bad_entry`` / ``line`` / ``problem`` describe the first failure.
    """

    path: Path
    entries: int
    head: str
    bad_entry: int | None = None
    line: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.ok:
            return (
                f"{self.path}: OK, {self.entries} entries, hash chain intact; "
                f"head {self.head}"
            )
        return (
            f"{self.path}: FAILED at entry {self.bad_entry} (line {self.line}): "
            f"{self.problem}; the {self.entries} entries before it verify"
        )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise AuditError(f"{path}: cannot read the audit log ({err})") from None
    yield from enumerate(text.splitlines(), start=1)


def _problem(entry: Any, expected_seq: int, prev: str) -> str | None:
    """Why a parsed entry does not continue the chain (``None`` when it does)."""
    if not isinstance(entry, dict) or any(k not in entry for k in CHAIN_KEYS):
        return f"not an audit entry (needs {', '.join(CHAIN_KEYS)})"
    if entry["hash"] != entry_hash(entry):
        return "its content does not match its hash: the entry was edited"
    if entry["seq"] != expected_seq:
        return (
            f"it is numbered {entry['seq']} where entry {expected_seq} belongs: "
            "entries were removed, inserted or reordered"
        )
    if entry["prev"] != prev:
        return (
            "it does not link to the entry before it: entries were removed, "
            "inserted or reordered"
        )
    return None


def verify(path: Path) -> Verification:
    """Check every entry's hash and its link to the one before, in file order.

    Entries are numbered from 1 in the order they were written, so the failure
    names the entry that should stand where the chain breaks (an edited entry, or
    the first of those removed).
    """
    seq, prev = 0, GENESIS
    for line, text in _lines(path):
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        if entry is None:
            problem: str | None = "not valid JSON: the entry was edited or truncated"
        elif compact(entry) != text:  # e.g. a space added between two fields
            problem = "not in the form it was written in: the entry was edited"
        else:
            problem = _problem(entry, seq + 1, prev)
        if problem is not None:
            return Verification(path, seq, prev, seq + 1, line, problem)
        seq, prev = entry["seq"], entry["hash"]
    return Verification(path, seq, prev)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every entry of the log (unverified: call :func:`verify` for that)."""
    entries = []
    for line, text in _lines(path):
        try:
            entries.append(json.loads(text))
        except ValueError:
            raise AuditError(f"{path}: line {line} is not valid JSON") from None
    return entries
