"""medflower ServerApp: a thin shell around the task's server path.

The paths are named here and imported when the run starts (``data.lazy``): Flower
loads this module in the simulation process under a lock that also holds back
loading the ClientApp, and Ray starts only after both. A module that imported
torch here (~1-2 s) kept every simulation's hospitals waiting for it in round 1.
"""

from __future__ import annotations

import warnings

# protobuf gencode/runtime mismatch (openmined-psi's pin): see app/client_app.py
warnings.filterwarnings("ignore", "Protobuf gencode version", UserWarning)
# ruff: noqa: E402 - the imports below come after the filter on purpose

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from app.config import RunConfig
from app.logs import route_to_flower
from data.lazy import load

__all__ = ["MODE_RUNNERS", "TASK_RUNNERS", "app", "main"]

app = ServerApp()

# ``task`` -> the ServerApp path that runs it, as "module:function" (unlisted
# tasks run horizontally).
HORIZONTAL = "app.server.federation:run_federation"
TASK_RUNNERS: dict[str, str] = {
    "tabular": HORIZONTAL,
    "imaging": HORIZONTAL,
    "vertical": "app.vertical.server:run_vertical",
}
# ``mode`` -> the ServerApp path that runs it instead (``train``: TASK_RUNNERS).
MODE_RUNNERS: dict[str, str] = {
    "stats": "app.stats.server:run_stats_mode",
}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the run's task (``TASK_RUNNERS``), or its ``MODE_RUNNERS``."""
    route_to_flower()
    cfg = RunConfig.from_run_config(context.run_config)
    target = MODE_RUNNERS.get(cfg.mode) or TASK_RUNNERS.get(cfg.task, HORIZONTAL)
    load(target)(grid, context)
