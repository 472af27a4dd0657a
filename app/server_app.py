"""medflower ServerApp: a thin shell around the task's server path."""

from __future__ import annotations

import warnings

# protobuf gencode/runtime mismatch (openmined-psi's pin): see app/client_app.py
warnings.filterwarnings("ignore", "Protobuf gencode version", UserWarning)
# ruff: noqa: E402 - the imports below come after the filter on purpose

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from app.config import RunConfig
from app.logs import route_to_flower
from app.server.federation import PREPROCESSING, RoundReporter, run_federation
from app.stats.server import run_stats_mode
from app.vertical.server import run_vertical

__all__ = [
    "MODE_RUNNERS",
    "PREPROCESSING",
    "TASK_RUNNERS",
    "RoundReporter",
    "app",
    "main",
]

app = ServerApp()

# ``task`` -> the ServerApp path that runs it (unlisted tasks run horizontally).
TASK_RUNNERS: dict[str, Callable[[Grid, Context], object]] = {
    "tabular": run_federation,
    "imaging": run_federation,
    "vertical": run_vertical,
}
# ``mode`` -> the ServerApp path that runs it instead (``train``: TASK_RUNNERS).
MODE_RUNNERS: dict[str, Callable[[Grid, Context], object]] = {
    "stats": run_stats_mode,
}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the run's task (``TASK_RUNNERS``), or its ``MODE_RUNNERS``."""
    route_to_flower()
    cfg = RunConfig.from_run_config(context.run_config)
    runner = MODE_RUNNERS.get(cfg.mode) or TASK_RUNNERS.get(cfg.task, run_federation)
    runner(grid, context)
