"""medflower ServerApp: a thin shell around :func:`app.federation.run_federation`."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from app.federation import PREPROCESSING, RoundReporter, run_federation
from app.logs import route_to_flower

__all__ = ["PREPROCESSING", "RoundReporter", "app", "main"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) ``num-server-rounds`` of federated training."""
    route_to_flower()
    run_federation(grid, context)
