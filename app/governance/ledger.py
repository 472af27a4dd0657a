"""The site's lifetime epsilon: what each run has spent here, kept across runs.

The hospital's own DP accountant (:mod:`app.privacy.local_dp`) reports a run's
cumulative epsilon with every reply (``dp-epsilon``); the ledger keeps the latest
report per run, so the site's lifetime spend is the sum over runs. Nothing is
re-accounted here. The file is written atomically (:func:`app.jsonio.write_json`)
and never leaves the hospital.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.jsonio import write_json


class LedgerError(ValueError):
    """The ledger file is unreadable or malformed."""


@dataclass(frozen=True)
class EpsilonLedger:
    """Epsilon spent per run id at this site (``runs``: run id -> epsilon)."""

    path: Path
    runs: Mapping[str, float]

    @classmethod
    def load(cls, path: Path) -> EpsilonLedger:
        """Read the ledger; a missing file is an empty ledger."""
        if not path.exists():
            return cls(path, {})
        try:
            data = json.loads(path.read_text())
            runs = {str(k): float(v["epsilon"]) for k, v in data["runs"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise LedgerError(f"{path}: unreadable epsilon ledger ({err})") from None
        return cls(path, runs)

    def spent(self) -> float:
        """Epsilon spent at this site over every run."""
        return sum(self.runs.values())

    def spent_elsewhere(self, run_id: int | str) -> float:
        """Epsilon spent by runs other than ``run_id``."""
        return sum(eps for run, eps in self.runs.items() if run != str(run_id))

    def charge(self, run_id: int | str, epsilon: float) -> EpsilonLedger:
        """Record that run ``run_id`` has now spent ``epsilon`` in all (cumulative).

        The accountant's report only grows within a run; a smaller one (a reply
        replayed out of order) never lowers what is recorded.
        """
        run = str(run_id)
        runs = dict(self.runs)
        runs[run] = max(runs.get(run, 0.0), float(epsilon))
        ledger = EpsilonLedger(self.path, runs)
        ledger.save()
        return ledger

    def save(self) -> None:
        payload: dict[str, Any] = {
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "spent": self.spent(),
            "runs": {run: {"epsilon": eps} for run, eps in self.runs.items()},
        }
        write_json(self.path, payload)
