"""The ServerApp's ``mode = "stats"``: ask the hospitals, write the statistics.

No model is built or trained: hospitals answer only the aggregate query. The
run folder holds ``stats.json``, ``stats.png``, ``stats.html``, the run config
and a ``history.json`` whose status says how the run ended.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid

from app.config import RunConfig
from app.server.outputs import RunRecorder
from app.server.queries import ask_hospitals
from app.stats.output import render_text, write_outputs
from app.stats.protocol import Answers, Ask, decode, run_statistics, stats_plan
from app.stats.query import QUERY, REPLY_KEY, QueryError, StatsQuery
from app.stats.summary import StatsReport
from data.registry import get_dataset
from strategies.sampling import FederationStopped

log = logging.getLogger(__name__)


def grid_asker(grid: Grid, cfg: RunConfig, num_features: int) -> Ask:
    """Send each query to every connected hospital over ``grid``."""

    def ask(query: StatsQuery) -> Answers:
        asked = ask_hospitals(
            grid, cfg, f"query.{QUERY}", query.to_config(), f"stats-{query.stage}"
        )
        releases, failed = asked.parsed(  # ReleaseError is a ValueError
            lambda content: decode(
                content.config_records.get(REPLY_KEY), query, num_features
            ),
            malformed="malformed statistics",
            label=f"Statistics ({query.stage})",
        )
        return Answers(releases=releases, failed=failed)

    return ask


def run_stats_mode(grid: Grid, context: Context) -> StatsReport | None:
    """Run federated statistics for ``context.run_config`` (``mode = "stats"``)."""
    cfg = RunConfig.from_run_config(context.run_config)
    info = get_dataset(cfg.data_spec()).info()
    plan = stats_plan(cfg, info)
    recorder = RunRecorder(cfg, context.run_id)
    try:
        report = run_statistics(plan, grid_asker(grid, cfg, len(plan.feature_names)))
    except (FederationStopped, QueryError, ValueError) as err:
        recorder.finish("stopped", stop_reason=str(err), last_round=0)
        log.error("Federated statistics stopped: %s", err)
        return None
    files = write_outputs(report, recorder.dir)
    recorder.finish("completed")
    log.info("%s", render_text(report))
    log.info("Statistics: %s (and %s, %s)", files.html, files.json.name, files.png.name)
    return report
