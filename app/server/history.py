"""A run's ``history.json`` as typed records: one writer, one reader.

:class:`RunHistory` holds the run-level facts and one :class:`RoundEntry` per
round. :func:`write_history` is the only writer (through ``app.jsonio``) and
:func:`read_history` the only reader: the report, resume, ``medflower evaluate``
and the benchmarks all read through it. The field names of the records *are* the
JSON keys, declared once here; a key the reader does not know (a writer renamed
it) raises :class:`HistoryError` instead of silently reading nothing. A field that
holds no value (None) is left out of the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar, get_args

from app.jsonio import write_json

HISTORY_NAME = "history.json"

RunStatus = Literal["running", "completed", "stopped", "failed"]
# "failed": the run raised, or the run driver saw `flwr run` fail after the fact.
STATUSES: tuple[str, ...] = get_args(RunStatus)

# Metric name -> value; a NaN metric is written as JSON null.
Metrics = dict[str, float | None]
# "train" / "evaluate" -> the metrics a hospital reported in that phase.
HospitalPhases = dict[str, Metrics]


class HistoryError(ValueError):
    """``history.json`` is unreadable or holds a key or value not declared here."""


class Problem(TypedDict, total=False):
    """A hospital's first error or rejected reply in a round (later ones: ``more``)."""

    phase: str
    reason: str
    more: list[Problem]


class LocalPrivacy(TypedDict, total=False):
    """Local DP-SGD: each hospital's cumulative record-level epsilon so far."""

    mode: Literal["local"]
    unit: str
    delta: float
    accountant: str
    budget: float
    epsilon: dict[str, float]
    stats_epsilon: float
    composition: str
    trained: list[str]  # per round only
    refused_budget: list[str]


class CentralPrivacy(TypedDict):
    """Central DP: the federation's hospital-level epsilon after the round."""

    mode: Literal["central"]
    unit: str
    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    clip_norm: float
    sample_rate: float
    hospitals_clipped: int
    median_update_norm: float


PrivacyEntry = LocalPrivacy | CentralPrivacy


class RocCurve(TypedDict):
    """One ROC curve of the final model on the server's test set."""

    label: str
    fpr: list[float]
    tpr: list[float]
    auc: float
    positives: int
    negatives: int


R = TypeVar("R", bound="_Record")
_LEDGER = "ledger"


def _ledger() -> Any:
    """A RoundEntry field the strategy's ledger fills (same key in both)."""
    return field(default=None, metadata={_LEDGER: True})


def _check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Refuse keys the record does not declare and required keys that are missing."""
    declared = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(declared))
    if unknown:
        raise HistoryError(
            f"{where}: unknown key(s) {unknown}; {cls.__name__} declares {declared}."
        )
    missing = [
        f.name
        for f in fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in data
    ]
    if missing:
        raise HistoryError(f"{where}: missing key(s) {missing}.")


@dataclass
class _Record:
    """JSON object <-> dataclass: field names are the keys; None fields are left out."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value.to_json() if isinstance(value, _Record) else value
        return out

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any], where: str = "") -> R:
        _check_keys(cls, data, where or cls.__name__)
        return cls(**data)


@dataclass
class SelectedRound(_Record):
    """The round whose model ``select-best`` keeps as the final model."""

    round: int
    metric: str
    value: float


@dataclass
class DecisionEntry(_Record):
    """The decision threshold and temperature stored with the final model.

    Chosen after the last round from the hospitals' validation score histograms
    and NLL sums (:mod:`app.server.decision`); ``threshold`` applies to the
    class-1 probability after ``temperature``. ``validation`` holds the pooled
    validation sensitivity/specificity at the threshold (from the histograms),
    ``server_test`` the server's test metrics at it; ``hospitals`` those whose
    numbers were used, ``left_out`` the others and why.
    """

    rule: str
    records: int
    threshold: float | None = None
    temperature: float | None = None
    target_sensitivity: float | None = None
    hospitals: list[str] = field(default_factory=list)
    left_out: dict[str, str] | None = None
    validation: Metrics | None = None
    server_test: Metrics | None = None


@dataclass
class Resume(_Record):
    """One ``resume-from`` of the run: where it continued and how it had ended."""

    after_round: int
    flower_run_id: int
    previous_status: str


@dataclass
class RoundEntry(_Record):
    """One round (round 0: the initial model; vertical runs: one epoch).

    The fields marked ``_ledger()`` are copied from the strategy's ledger
    (:class:`strategies.screening.RoundLedger`) when set.
    """

    round: int
    train_loss: float | None = None  # vertical: the label holder's epoch loss
    server: Metrics = field(default_factory=dict)
    hospitals: dict[str, HospitalPhases] | None = None
    federated: Metrics | None = _ledger()  # hospitals' weighted held-out metrics
    rejected: dict[str, Problem] | None = _ledger()
    errors: dict[str, Problem] | None = _ledger()
    no_reply: dict[str, list[str]] | None = _ledger()  # phase -> hospitals
    skipped: str | None = _ledger()  # why training was skipped (model kept)
    anomaly: dict[str, Any] | None = _ledger()
    secure_aggregation: dict[str, Any] | None = _ledger()
    elapsed_s: float | None = None
    privacy: PrivacyEntry | None = None

    @classmethod
    def from_ledger(
        cls, server_round: int, ledger: Mapping[str, Any], **extra: Any
    ) -> RoundEntry:
        """A round's entry from the strategy's ledger entry (plus ``extra`` fields).

        The ledger's phases become ``hospitals``; its other keys must be fields of
        this record (a renamed ledger key raises :class:`HistoryError`).
        """
        unknown = sorted(set(ledger) - {*PHASES, *LEDGER_KEYS})
        if unknown:
            raise HistoryError(
                f"round {server_round}: ledger key(s) {unknown} are not fields of "
                f"RoundEntry ({', '.join(LEDGER_KEYS)})."
            )
        copied = {k: ledger[k] for k in LEDGER_KEYS if ledger.get(k)}
        hospitals: dict[str, HospitalPhases] | None = None
        if ledger:
            hospitals = {}
            for phase in PHASES:
                for name, metrics in ledger.get(phase, {}).items():
                    hospitals.setdefault(name, {})[phase] = metrics
        return cls(round=server_round, hospitals=hospitals, **copied, **extra)

    def dropped(self) -> set[str]:
        """Hospitals left out of the round: rejected, failed or silent."""
        silent = (n for names in (self.no_reply or {}).values() for n in names)
        return {*(self.rejected or {}), *(self.errors or {}), *silent}


# The ledger's per-hospital phases, and the ledger keys copied into a RoundEntry.
PHASES = ("train", "evaluate")
LEDGER_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(RoundEntry) if f.metadata.get(_LEDGER)
)


@dataclass
class RunHistory(_Record):
    """The whole ``history.json``: what ran, how it ended, and every round."""

    run_name: str
    flower_run_id: int
    task: str
    dataset: str
    strategy: str
    model: str
    num_rounds: int
    status: RunStatus = "running"
    rounds: list[RoundEntry] = field(default_factory=list)
    resumed: list[Resume] | None = None
    class_names: list[str] | None = None
    normalisation: dict[str, Any] | None = None  # a global normalisation's record
    # a model's pooled input standardisation (shape descriptors, app/server/input_stats)
    input_statistics: dict[str, Any] | None = None
    selected_round: SelectedRound | None = None
    decision: DecisionEntry | None = None
    stop_reason: str | None = None
    last_round: int | None = None
    final_server_metrics: Metrics | None = None
    privacy: PrivacyEntry | None = None
    roc: list[RocCurve] | None = None
    vertical: dict[str, Any] | None = None  # PSI alignment and traffic
    # contribution = true: {"metric": name, "sites": {hospital: influence}}
    contributions: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise HistoryError(
                f"status must be one of {', '.join(STATUSES)}, got {self.status!r}."
            )

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["rounds"] = [r.to_json() for r in self.rounds]
        if self.resumed is not None:
            out["resumed"] = [r.to_json() for r in self.resumed]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "") -> RunHistory:
        where = where or HISTORY_NAME
        _check_keys(cls, data, where)
        values = dict(data)
        values["rounds"] = [
            RoundEntry.from_json(r, f"{where}: round {r.get('round', i)}")
            for i, r in enumerate(data.get("rounds", []))
        ]
        if data.get("resumed") is not None:
            values["resumed"] = [
                Resume.from_json(r, f"{where}: resumed") for r in data["resumed"]
            ]
        if data.get("selected_round") is not None:
            values["selected_round"] = SelectedRound.from_json(
                data["selected_round"], f"{where}: selected_round"
            )
        if data.get("decision") is not None:
            values["decision"] = DecisionEntry.from_json(
                data["decision"], f"{where}: decision"
            )
        return cls(**values)

    def update(self, **changes: Any) -> None:
        """Set run-level fields by name (an unknown name raises TypeError)."""
        for name, value in vars(replace(self, **changes)).items():
            setattr(self, name, value)

    def record_round(self, entry: RoundEntry) -> None:
        """Append ``entry``, replacing an earlier entry of the same round."""
        rounds = [r for r in self.rounds if r.round != entry.round]
        self.rounds = sorted([*rounds, entry], key=lambda r: r.round)

    def round(self, server_round: int) -> RoundEntry | None:
        """The entry of ``server_round`` (None when not recorded)."""
        return next((r for r in self.rounds if r.round == server_round), None)

    def hospitals(self) -> set[str]:
        """Every hospital the run heard from or about (reported, rejected, failed)."""
        names: set[str] = set()
        for entry in self.rounds:
            names.update(entry.hospitals or {})
            names.update(entry.errors or {})
            names.update(entry.rejected or {})
        return names

    def skipped_rounds(self) -> list[RoundEntry]:
        """Rounds whose training was skipped (the global model was kept)."""
        return [r for r in self.rounds if r.skipped is not None]

    def screened_rounds(self) -> int:
        """Rounds whose updates were screened for anomalies (trained rounds)."""
        return sum(1 for r in self.rounds if r.anomaly)

    def flagged_rounds(self) -> dict[str, int]:
        """Rounds in which each hospital's update was flagged as anomalous (only
        hospitals flagged at least once), most often flagged first.
        """
        counts: dict[str, int] = {}
        for entry in self.rounds:
            for name, row in ((entry.anomaly or {}).get("hospitals") or {}).items():
                if row.get("flagged"):
                    counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def history_path(run_dir: Path) -> Path:
    """Where the run in ``run_dir`` keeps its history."""
    return run_dir / HISTORY_NAME


def write_history(path: Path, history: RunHistory, *, final: bool = True) -> None:
    """Write ``history`` to ``path`` (a ``history.json``) atomically.

    ``final=False`` (the rewrites after every round) writes one compact line: the
    indented form is written by pure Python and its cost grows with rounds x
    hospitals (~0.6 s a round at 100 hospitals after 4 rounds). The same content;
    the run's last write is indented.
    """
    write_json(path, history.to_json(), indent=2 if final else None)


def read_history(path: Path) -> RunHistory:
    """Read a ``history.json`` (or the one in run folder ``path``).

    Raises
    ------
    HistoryError
        The file is missing, not JSON, or holds keys this code does not declare.
    """
    path = Path(path)
    if path.is_dir():
        path = history_path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HistoryError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise HistoryError(f"{path} does not hold a JSON object.")
    return RunHistory.from_json(data, where=str(path))


def set_status(path: Path, status: RunStatus, **changes: Any) -> RunHistory:
    """Rewrite the ``status`` (and other run-level fields) of a written history.

    For a run driver that learns after the fact that a run failed.
    """
    history = read_history(path)
    history.update(status=status, **changes)
    write_history(path if not Path(path).is_dir() else history_path(path), history)
    return history
