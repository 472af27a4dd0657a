"""Per-round server checkpoints in ``outputs/<run>/checkpoints/`` and ``resume-from``.

A checkpoint holds everything the server needs to continue as if it had never
stopped: the global arrays, the strategy's state (FedOpt moments, a DP wrapper's
accountant, ...), the round, the Python/NumPy/torch RNG states and the run config.
Files are written atomically (temp file, fsync, rename) and only the last
``checkpoint-keep`` are kept.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

if TYPE_CHECKING:
    from app.config import RunConfig

FORMAT = "medflower-checkpoint/1"
DIRNAME = "checkpoints"
_NAME = re.compile(r"round-(\d+)\.pt$")
_NDARRAY = "__ndarray__"

# Keys a resumed run may change; every other key must equal the checkpoint's,
# because hospitals read their settings from the run config, not the checkpoint.
RESUMABLE_KEYS = frozenset(
    {
        "num-server-rounds",
        "round-timeout",
        "wait-for-hospitals",
        "checkpoint-keep",
        "resume-from",
        "torch-threads",
        "device",
        "run-name",
        "output-dir",
    }
)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not belong to this run config."""


def _to_storable(value: Any) -> Any:
    """Tag numpy arrays as tensors, so ``weights_only`` loading works."""
    if isinstance(value, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, Mapping):
        return {str(k): _to_storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_storable(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_storable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_NDARRAY}:
            return value[_NDARRAY].numpy()
        return {k: _from_storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_from_storable(v) for v in value)
    return value


def rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global) and torch RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@runtime_checkable
class Stateful(Protocol):
    """Server-side state saved in every checkpoint and restored on ``resume-from``.

    Strategies implement it (FedOpt moments); a wrapper (e.g. a central-DP wrapper
    with a privacy accountant) implements it by nesting its inner strategy's state
    under a key of its own. Values may be plain Python scalars, lists, dicts,
    numpy arrays or torch tensors.
    """

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the last round ended."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...


@dataclass(frozen=True)
class Checkpoint:
    """One loaded checkpoint."""

    path: Path
    server_round: int
    arrays: ArrayRecord
    strategy_state: dict[str, Any]
    rng: dict[str, Any]
    run_config: dict[str, Any]
    averaging_state: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The run folder this checkpoint belongs to."""
        return self.path.parent.parent


def save_checkpoint(
    run_dir: Path,
    *,
    server_round: int,
    arrays: ArrayRecord,
    strategy_state: Mapping[str, Any],
    run_config: Mapping[str, Any],
    keep: int,
    averaging_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<run_dir>/checkpoints/round-NNNN.pt`` atomically; keep the last N."""
    directory = run_dir / DIRNAME
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "round": server_round,
        "arrays": {k: torch.from_numpy(a.numpy().copy()) for k, a in arrays.items()},
        "strategy": _to_storable(strategy_state),
        "averaging": _to_storable(dict(averaging_state or {})),
        "rng": _to_storable(rng_state()),
        "run_config": dict(run_config),
    }
    path = directory / f"round-{server_round:04d}.pt"
    tmp = directory / f".{path.name}.tmp"
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest round first."""
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """``path`` is a checkpoint file, a checkpoints folder or a run folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"resume-from: {path} does not exist.")
    directory = path if path.name == DIRNAME else path / DIRNAME
    found = list_checkpoints(directory)
    if not found:
        raise CheckpointError(f"resume-from: no round-*.pt checkpoint in {directory}.")
    return found[-1]


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load the checkpoint ``path`` names (see :func:`find_checkpoint`)."""
    file = find_checkpoint(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types here
        raise CheckpointError(f"resume-from: {file} is not readable ({err}).") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"resume-from: {file} is not a medflower checkpoint ({FORMAT})."
        )
    arrays = ArrayRecord({k: Array(t.numpy()) for k, t in payload["arrays"].items()})
    return Checkpoint(
        path=file,
        server_round=int(payload["round"]),
        arrays=arrays,
        strategy_state=_from_storable(payload["strategy"]),
        rng=_from_storable(payload["rng"]),
        averaging_state=_from_storable(payload.get("averaging", {})),
        run_config=dict(payload["run_config"]),
    )


def check_resumable(run_config: Mapping[str, Any], checkpoint: Checkpoint) -> None:
    """Refuse to resume with settings other than the checkpoint's (bar a few)."""
    differ = sorted(
        key
        for key in set(run_config) | set(checkpoint.run_config)
        if key not in RESUMABLE_KEYS
        and run_config.get(key) != checkpoint.run_config.get(key)
    )
    if differ:
        detail = "; ".join(
            f"'{k}' is {run_config.get(k)!r}, the checkpoint has "
            f"{checkpoint.run_config.get(k)!r}"
            for k in differ
        )
        raise CheckpointError(
            f"resume-from {checkpoint.path}: the run config differs from the stopped "
            f"run's ({detail}). Pass the original settings with resume-from; only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change."
        )
    if int(run_config["num-server-rounds"]) < checkpoint.server_round:
        raise CheckpointError(
            f"resume-from {checkpoint.path}: the checkpoint is at round "
            f"{checkpoint.server_round}, beyond num-server-rounds="
            f"{run_config['num-server-rounds']}."
        )


def load_resume(cfg: RunConfig) -> Checkpoint | None:
    """The checkpoint ``resume-from`` names, checked against the run config (None
    when the run does not resume).
    """
    if not cfg.resume_from:
        return None
    resume = load_checkpoint(cfg.resume_from)
    check_resumable(cfg.to_run_config(), resume)
    return resume
