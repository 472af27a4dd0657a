"""A run's folder: run_config.json, history.json, final_model.pt, outputs/latest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from app.config import RunConfig
from app.jsonio import write_json

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
    """Creates ``<output-dir>/<run-name>/`` and keeps its history up to date."""

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
        name = run_dir.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.history: dict[str, Any] = {
            "run_name": name,
            "flower_run_id": run_id,
            "task": cfg.task,
            "dataset": cfg.dataset,
            "strategy": cfg.strategy,
            "model": cfg.model_name,
            "num_rounds": cfg.num_server_rounds,
            "status": "running",
            "rounds": [],
        }
        write_json(self.dir / "run_config.json", cfg.to_run_config())

    @classmethod
    def resume(
        cls, cfg: RunConfig, run_id: int, run_dir: Path, after_round: int
    ) -> RunRecorder:
        """Continue the history of the stopped run in ``run_dir`` after ``after_round``.

        Rounds recorded after the checkpoint (the run died between writing history
        and its checkpoint) are dropped; they will be run again.
        """
        previous: dict[str, Any] = {}
        path = run_dir / "history.json"
        if path.is_file():
            previous = json.loads(path.read_text())
        recorder = cls(cfg, run_id, run_dir=run_dir)
        history = recorder.history
        for key, value in previous.items():
            if key not in ("rounds", "status", "flower_run_id", "num_rounds"):
                history.setdefault(key, value)
        history["run_name"] = previous.get("run_name", history["run_name"])
        history["rounds"] = [
            r for r in previous.get("rounds", []) if r["round"] <= after_round
        ]
        history["resumed"] = [
            *previous.get("resumed", []),
            {
                "after_round": after_round,
                "flower_run_id": run_id,
                "previous_status": previous.get("status", "unknown"),
            },
        ]
        history.pop("stop_reason", None)
        write_json(recorder.history_path, history)
        return recorder

    @property
    def history_path(self) -> Path:
        return self.dir / "history.json"

    @property
    def model_path(self) -> Path:
        return self.dir / "final_model.pt"

    def record_round(self, entry: dict[str, Any]) -> None:
        """Append (or replace) one round's entry and rewrite history.json."""
        rounds = [r for r in self.history["rounds"] if r["round"] != entry["round"]]
        rounds.append(entry)
        self.history["rounds"] = sorted(rounds, key=lambda r: r["round"])
        write_json(self.history_path, self.history)

    def note(self, **extra: Any) -> None:
        """Add run-level entries (the selected round) and rewrite history.json."""
        self.history.update(extra)
        write_json(self.history_path, self.history)

    def finish(self, status: str, **extra: Any) -> None:
        self.history["status"] = status
        self.history.update(extra)
        write_json(self.history_path, self.history)
        self.point_latest()

    def point_latest(self) -> None:
        """Make ``<output-dir>/latest`` a relative symlink to this run."""
        latest = self.root / "latest"
        tmp = self.root / f".latest-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(self.dir.name)
        tmp.replace(latest)
