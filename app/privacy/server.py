"""Server side of differential privacy.

The central-DP wrapper built from the run config, per-round privacy entries for
history.json (typed in :mod:`app.server.history`) and the final privacy log lines.
"""

from __future__ import annotations

from typing import Any, cast

from app.config import RunConfig
from app.privacy.central_dp import CentralDP, GaussianNoise
from app.server.history import CentralPrivacy, LocalPrivacy, PrivacyEntry

BUDGET_REASON = "privacy budget exhausted"
COMPOSITION = (
    "epsilon includes the Laplace cohort-statistics release (dp-stats-epsilon) by "
    "basic composition: DP-SGD accountant epsilon at delta + statistics epsilon"
)


# Where the training noise comes from, by DP mode and ``dp-secure-rng``: the final
# privacy summary says it, since an epsilon holds against an attacker who cannot
# predict the noise.
NOISE_SOURCES: dict[tuple[str, bool], str] = {
    ("local", False): "noise from generators seeded by the run's seed (reproducible; "
    "dp-secure-rng=true for a deployment)",
    ("local", True): "noise from a cryptographically secure generator (Opacus "
    "secure mode)",
    ("central", False): "noise from numpy's PCG64 seeded by the operating system "
    "(not cryptographically secure; dp-secure-rng=true for a deployment)",
    ("central", True): "noise from OpenDP's exact Gaussian sampler",
}


def with_privacy(cfg: RunConfig, strategy: Any) -> Any:
    """Wrap ``strategy`` in central DP when ``dp='central'``; else return it as is."""
    if cfg.dp != "central":
        return strategy
    return CentralDP(
        strategy,
        clip_norm=cfg.dp_update_clip_norm,
        delta=cfg.dp_delta,
        noise_multiplier=cfg.dp_noise_multiplier,
        target_epsilon=cfg.dp_target_epsilon,
        num_rounds=cfg.num_server_rounds,
        expected_sample_rate=cfg.fraction_train,
        accountant=cfg.dp_accountant,
        noise=GaussianNoise(secure=cfg.dp_secure_rng),
    )


class PrivacyReport:
    """Privacy spent per round.

    Each hospital's cumulative (epsilon, delta) under local DP-SGD, the federation's
    hospital-level epsilon under central DP.
    """

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.latest: dict[str, float] = {}  # hospital -> cumulative epsilon so far
        self.refused: set[str] = set()
        self.central: CentralPrivacy | None = None

    def round_entry(
        self, server_round: int, ledger: dict[str, Any], strategy: Any
    ) -> PrivacyEntry | None:
        """Return the ``privacy`` field of a round's history entry (None without DP)."""
        if self.cfg.dp == "none" or server_round == 0:  # round 0: initial model only
            return None
        if self.cfg.dp == "central":
            report_fn = getattr(strategy, "privacy_report", lambda _: None)
            report = cast("CentralPrivacy | None", report_fn(server_round))
            if report is not None:
                self.central = report
            return report
        trained = {}
        for name, metrics in ledger.get("train", {}).items():
            if "dp-epsilon" in metrics:
                trained[name] = float(metrics["dp-epsilon"])
        self.latest.update(trained)
        refused = sorted(
            name
            for name, err in ledger.get("errors", {}).items()
            if BUDGET_REASON in str(err.get("reason", ""))
        )
        self.refused.update(refused)
        return {
            **self._local(),
            "trained": sorted(trained),
            "refused_budget": refused,
        }

    def _local(self) -> LocalPrivacy:
        out: LocalPrivacy = {
            "mode": "local",
            # a recommender's record is a patient's whole history
            "unit": "patient" if self.cfg.task == "recommendation" else "record",
            "delta": self.cfg.dp_delta,
            "accountant": self.cfg.dp_accountant,
            "budget": self.cfg.dp_budget,
            "epsilon": dict(sorted(self.latest.items())),
        }
        if self.cfg.stats_epsilon:
            out["stats_epsilon"] = self.cfg.stats_epsilon
            out["composition"] = COMPOSITION
        return out

    @staticmethod
    def short(entry: PrivacyEntry) -> str:
        """One log line's worth of a round's privacy entry."""
        if entry["mode"] == "central":
            return f"central epsilon={entry['epsilon']:.4f} (delta={entry['delta']:g})"
        eps = " ".join(f"{n}={e:.3f}" for n, e in entry["epsilon"].items())
        refused = entry.get("refused_budget", [])
        return f"local epsilon (delta={entry['delta']:g}) {eps or '-'}" + (
            f"; refused: {', '.join(refused)}" if refused else ""
        )

    def final(self) -> PrivacyEntry | None:
        """Return the run's privacy summary for history.json."""
        if self.cfg.dp == "none":
            return None
        if self.cfg.dp == "central":
            return self.central
        return {**self._local(), "refused_budget": sorted(self.refused)}

    def lines(self) -> list[str]:
        """Human-readable lines for the final log."""
        final = self.final()
        if final is None:
            out = ["Privacy: no differential privacy on training (dp='none')."]
            if self.cfg.stats_epsilon:
                out.append(
                    "  cohort statistics: each hospital released Laplace-noised "
                    f"feature statistics at epsilon={self.cfg.stats_epsilon:g} "
                    "(record-level, pure DP)"
                )
            return out
        noise = f"  {NOISE_SOURCES[final['mode'], self.cfg.dp_secure_rng]}"
        if final["mode"] == "central":
            return [
                f"Privacy (central DP, hospital-level): epsilon={final['epsilon']:.4f} "
                f"at delta={final['delta']:g} ({final['accountant']} accountant, noise "
                f"multiplier {final['noise_multiplier']:.4g}, clip "
                f"{final['clip_norm']:.4g})",
                noise,
            ]
        out = [
            f"Privacy (local DP-SGD, record-level, per hospital) at delta="
            f"{final['delta']:g}, {final['accountant']} accountant:"
        ]
        out += [
            f"  {name}: epsilon={eps:.4f}" for name, eps in final["epsilon"].items()
        ]
        if "composition" in final:
            out.append(f"  ({final['composition']})")
        if final["refused_budget"]:
            out.append(
                "  refused rounds (budget exhausted): "
                + ", ".join(final["refused_budget"])
            )
        out.append(noise)
        return out
