"""A run's folder: run_config.json, history.json, final_model.pt, outputs/latest."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from app.config import RunConfig
from app.jsonio import write_json
from app.server.history import (
    Resume,
    RoundEntry,
    RunHistory,
    RunStatus,
    history_path,
    read_history,
    write_history,
)

OUTPUT_ROOT_ENV = "MEDFLOWER_HOME"


def resolve_output_root(output_dir: str) -> Path:
    """An absolute ``output-dir`` is used as is; a relative one is taken under
    ``$MEDFLOWER_HOME`` (the Makefile sets it to the repository) or else the
    working directory of the process running the ServerApp.
    """
    path = Path(output_dir).expanduser()
    if path.is_absolute():
        return path
    base = os.environ.get(OUTPUT_ROOT_ENV) or os.getcwd()
    return Path(base) / path


class RunRecorder:
    """Creates ``<output-dir>/<run-name>/`` and keeps its history up to date.

    ``history`` is the run's :class:`~app.server.history.RunHistory`; every change
    goes through a method here, which rewrites ``history.json`` at once.
    """

    def __init__(
        self, cfg: RunConfig, run_id: int, run_dir: Path | None = None
    ) -> None:
        if run_dir is None:
            root = resolve_output_root(cfg.output_dir)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            name = cfg.run_name or f"{stamp}-{cfg.dataset}-{cfg.strategy}-{run_id}"
            run_dir = root / name
        self.root = run_dir.parent
        self.dir = run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.history = RunHistory(
            run_name=run_dir.name,
            flower_run_id=run_id,
            task=cfg.task,
            dataset=cfg.dataset,
            strategy=cfg.strategy,
            model=cfg.model_name,
            num_rounds=cfg.num_server_rounds,
        )
        write_json(self.dir / "run_config.json", cfg.to_run_config())

    @classmethod
    def resume(
        cls, cfg: RunConfig, run_id: int, run_dir: Path, after_round: int
    ) -> RunRecorder:
        """Continue the history of the stopped run in ``run_dir`` after ``after_round``.

        Rounds recorded after the checkpoint (the run died between writing history
        and its checkpoint) are dropped; they will be run again.
        """
        path = history_path(run_dir)
        previous = read_history(path) if path.is_file() else None
        recorder = cls(cfg, run_id, run_dir=run_dir)
        if previous is not None:
            recorder.history = _continued(recorder.history, previous, after_round)
        recorder.history.resumed = [
            *(recorder.history.resumed or []),
            Resume(
                after_round=after_round,
                flower_run_id=run_id,
                previous_status=previous.status if previous else "unknown",
            ),
        ]
        recorder.history.stop_reason = None
        recorder.save()
        return recorder

    @property
    def history_path(self) -> Path:
        return history_path(self.dir)

    @property
    def model_path(self) -> Path:
        return self.dir / "final_model.pt"

    def save(self, *, final: bool = False) -> None:
        """Rewrite history.json from ``history`` (indented when ``final``)."""
        write_history(self.history_path, self.history, final=final)

    def record_round(self, entry: RoundEntry) -> None:
        """Append (or replace) one round's entry and rewrite history.json."""
        self.history.record_round(entry)
        self.save()

    def note(self, **fields: Any) -> None:
        """Set run-level fields (the selected round) and rewrite history.json."""
        self.history.update(**fields)
        self.save()

    def finish(self, status: RunStatus, **fields: Any) -> None:
        """Set the final ``status`` and run-level ``fields``; point ``latest`` here."""
        self.history.update(status=status, **fields)
        self.save(final=True)
        self.point_latest()

    def point_latest(self) -> None:
        """Make ``<output-dir>/latest`` a relative symlink to this run."""
        latest = self.root / "latest"
        tmp = self.root / f".latest-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(self.dir.name)
        tmp.replace(latest)


# Set by this run, not taken over from the history it resumes.
_OWN_FIELDS = ("rounds", "status", "flower_run_id", "num_rounds", "run_name")


def _continued(fresh: RunHistory, previous: RunHistory, after_round: int) -> RunHistory:
    """``fresh`` with what the stopped run had recorded up to ``after_round``.

    Run-level fields this run has not set yet (class names, the selection, ...)
    come from ``previous``; its rounds after ``after_round`` are dropped.
    """
    taken = {
        f.name: getattr(previous, f.name)
        for f in dataclasses.fields(RunHistory)
        if f.name not in _OWN_FIELDS and getattr(fresh, f.name) is None
    }
    return dataclasses.replace(
        fresh,
        **taken,
        run_name=previous.run_name,
        rounds=[r for r in previous.rounds if r.round <= after_round],
    )
