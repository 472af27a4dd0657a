"""Optional MLflow tracking from the server (run-config ``mlflow = true``).

The server logs what it already knows; hospitals send nothing extra. Per run:
the run config as params; per round the server-side evaluation as
``server/<metric>``, each hospital's reported metrics as
``hospital/<name>/<phase>/<metric>`` and the epsilon spent (``epsilon`` under
central DP, ``epsilon/<hospital>`` under local DP); at the end ``report.html``,
``history.json`` and ``final_model.pt`` as artifacts and the run's status.

The store is ``mlflow-tracking-uri``, by default a local file store
``<output-dir>/mlruns`` shared by the runs of that output folder. MLflow 3
keeps its file store only on request (``MLFLOW_ALLOW_FILE_STORE=true``), which
is set here for a ``file:`` store and must be set too to read it
(``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri <uri>``).
mlflow is imported only when tracking is on.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from app.config import RunConfig
from app.server.history import RoundEntry

MLRUNS_DIR = "mlruns"
ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
# Constant per hospital: not worth a chart (as for TensorBoard).
SKIPPED_KEYS = ("num-examples",)
SKIPPED_PREFIXES = ("label-count-",)
# The end status of a medflower run -> MLflow's.
STATUSES = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
ARTIFACTS = ("report.html", "history.json", "final_model.pt", "run_config.json")
BATCH = 100  # MLflow's per-request limit on params


class MlflowUnavailable(RuntimeError):
    """``mlflow = true`` was asked for but mlflow is not installed."""


def tracking_uri(cfg: RunConfig, output_root: Path) -> str:
    """``mlflow-tracking-uri``, else the file store ``<output-dir>/mlruns``."""
    return cfg.mlflow_tracking_uri or (output_root / MLRUNS_DIR).resolve().as_uri()


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise MlflowUnavailable(
            "run-config 'mlflow = true' needs mlflow, which is not installed here: "
            "pip install 'medflower[mlflow]' (or 'mlflow-skinny'), or run with "
            "mlflow=false."
        ) from err
    if uri.startswith("file:"):
        os.environ.setdefault(ALLOW_FILE_STORE, "true")
    return MlflowClient(tracking_uri=uri)


def _name(part: str) -> str:
    """A metric-name part MLflow accepts (letters, digits, ``_-. ``)."""
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in part) or "_"


def _value(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def round_metrics(entry: RoundEntry) -> Iterator[tuple[str, float]]:
    """The (key, value) pairs logged for one round."""
    for key, value in entry.server.items():
        if (v := _value(value)) is not None:
            yield f"server/{_name(key)}", v
    for hospital, phases in (entry.hospitals or {}).items():
        for phase, metrics in phases.items():
            for key, value in (metrics or {}).items():
                if key in SKIPPED_KEYS or key.startswith(SKIPPED_PREFIXES):
                    continue
                if (v := _value(value)) is not None:
                    yield f"hospital/{_name(hospital)}/{phase}/{_name(key)}", v
    epsilon = (entry.privacy or {}).get("epsilon")
    if isinstance(epsilon, Mapping):
        for hospital, value in epsilon.items():
            if (v := _value(value)) is not None:
                yield f"epsilon/{_name(hospital)}", v
    elif (v := _value(epsilon)) is not None:
        yield "epsilon", v


class MlflowTracker:
    """One MLflow run per medflower run, written from the server only."""

    def __init__(self, cfg: RunConfig, run_dir: Path, output_root: Path) -> None:
        from mlflow.entities import Param

        self.uri = tracking_uri(cfg, output_root)
        self.client = _client(self.uri)
        experiment = self.client.get_experiment_by_name(cfg.mlflow_experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(cfg.mlflow_experiment)
        )
        run = self.client.create_run(
            experiment_id,
            run_name=run_dir.name,
            tags={"medflower.run_dir": str(run_dir)},
        )
        self.run_id = run.info.run_id
        self.run_dir = run_dir
        params = [Param(k, str(v)) for k, v in sorted(cfg.to_run_config().items())]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + BATCH])

    def log_round(self, entry: RoundEntry) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, entry.round) for k, v in round_metrics(entry)]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def finish(self, status: str) -> None:
        """Log the run's outputs as artifacts and close the MLflow run."""
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, STATUSES.get(status, "FAILED"))
