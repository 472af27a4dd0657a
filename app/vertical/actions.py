"""The ``query.*`` actions of vertical FL, registered on a ClientApp without
importing their handler (:func:`app.vertical.client.handle_vertical`: torch and the
party's data), which only a vertical run's first message loads.
"""

from __future__ import annotations

from flwr.clientapp import ClientApp

from data.lazy import deferred

PSI_ACTIONS = ("psi_setup", "psi_request", "psi_response", "psi_intersect")
VERTICAL_ACTIONS = (*PSI_ACTIONS, "vfl_info", "vfl_init", "vfl_bottom", "vfl_top")
HANDLER = "app.vertical.client:handle_vertical"


def register(app: ClientApp) -> None:
    """Register one ``@app.query(action)`` handler per vertical-FL action."""
    for action in VERTICAL_ACTIONS:
        app.query(action)(deferred(HANDLER, action))
