"""medflower ClientApp: one hospital trains and evaluates on its own data.

This module only registers the handlers; :mod:`app.client.handlers` holds them and
is imported on the first message (``data.lazy``). Flower's simulation loads the
ClientApp under the lock that also loads the ServerApp, and starts Ray only after
both: a ClientApp module that imported torch (~1-2 s) held every hospital of a
simulation back in round 1. What each handler sends, and what never leaves the
hospital, is said in :mod:`app.client.handlers`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

# Flower's generated protobuf code is older than the protobuf runtime openmined-psi
# pins: harmless, but printed nine times by whatever imports flwr first. Filtered
# before the flwr imports below, for processes where this module comes first (tests,
# benchmarks); Flower's own processes import flwr earlier and get the filter from
# PYTHONWARNINGS (Makefile, scripts.flower.env).
warnings.filterwarnings("ignore", "Protobuf gencode version", UserWarning)
# ruff: noqa: E402 - the imports below come after the filter on purpose

from flwr.clientapp import ClientApp

from app.client.decision import QUERY as DECISION_QUERY
from app.client.input_stats import QUERY as INPUT_STATS_QUERY
from app.governance.mods import GOVERNANCE_MODS
from app.privacy.cohort_stats import QUERY as COHORT_STATS_QUERY
from app.secagg.client_mod import register as register_secure_aggregation
from app.secagg.client_mod import secure_train_mod
from app.stats.query import QUERY as FEDERATED_STATS_QUERY
from app.vertical.actions import register as register_vertical
from data.lazy import deferred

HANDLERS = "app.client.handlers"


class _SharedClientApp(ClientApp):
    """A ClientApp that pickles as a reference to this module's ``app``.

    Flower's simulation sends the ClientApp to a Ray actor with every message,
    pickled by value: with the handlers registered here (train, evaluate and 15
    query stages, each a closure) that is ~30 KB and ~8 ms of CPU per message in
    the simulation process (a bare app: 0.8 KB, 0.1 ms). The actor imports this
    module to run the handlers anyway; it now reads ``app`` from it.
    """

    def __reduce__(self) -> tuple[Callable[[], ClientApp], tuple[()]]:
        return _module_app, ()


def _module_app() -> ClientApp:
    return app


# Site policy and audit log around every handler (app/governance/; node config
# `policy`, `audit-log`): they must be given here to wrap the handlers below.
app = _SharedClientApp(mods=GOVERNANCE_MODS)
register_vertical(app)  # query.psi_* / query.vfl_* handlers (task = "vertical")
register_secure_aggregation(app)  # query.secagg_* / query.ckks_* protocol stages
# train's mod masks or encrypts the reply when the message asks for it
app.train(mods=[secure_train_mod])(deferred(f"{HANDLERS}:train"))
app.evaluate()(deferred(f"{HANDLERS}:evaluate"))
app.query(COHORT_STATS_QUERY)(deferred(f"{HANDLERS}:cohort_stats"))
app.query(FEDERATED_STATS_QUERY)(deferred(f"{HANDLERS}:federated_stats"))
app.query(DECISION_QUERY)(deferred(f"{HANDLERS}:decision_stats"))
app.query(INPUT_STATS_QUERY)(deferred(f"{HANDLERS}:input_stats"))
