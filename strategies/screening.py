"""What every medflower strategy adds to a Flower message-API strategy.

``Screened`` is a mixin placed before a Flower strategy class in the bases
(``class MedFedMedian(Screened, FedMedian)``). It

- samples hospitals with a bounded wait instead of Flower's endless one;
- screens every reply (:mod:`strategies.validation`) and records each hospital's
  outcome in a per-round ledger, then hands only sound replies, in node-id order,
  to the Flower class's own aggregation;
- skips a round whose sound replies are fewer than ``min-hospitals`` (the global
  model is kept) and notes hospitals that did not answer in time;
- writes an anomaly report (update norms, cosine to the median update) per round;
- exposes ``state_dict`` / ``load_state_dict`` for checkpoints.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError

from strategies.anomaly import anomaly_report
from strategies.arrays import decoded
from strategies.encoding import (
    ENCODINGS,
    PLAIN,
    EncodingError,
    Layout,
    decode,
    encode,
    layout_of,
)
from strategies.sampling import NodeSampler
from strategies.sparse import decode as sparse_decode
from strategies.sparse import is_sparse
from strategies.validation import Reference, match_dtypes, reference_of, reply_problem

log = logging.getLogger(__name__)

HOSPITAL_RECORD = "hospital"
# Ledger key of a round's aggregated (weighted) hospital evaluation metrics.
FEDERATED_EVALUATE = "federated"
# An error reply has no content, so a hospital names itself in the reason.
ERROR_PREFIX = "hospital {name}: "
_ERROR_NAME = re.compile(r"^hospital (\S+): ")


class RoundLedger:
    """Per-round, per-hospital record of what each hospital reported.

    Flower's ``Result`` keeps only aggregates; clinical users need to see each
    site. Values are aggregate metrics only (no records leave a hospital).
    Besides the phases (``train``, ``evaluate``), an entry's keys are fields of
    ``app.server.history.RoundEntry`` (``LEDGER_KEYS``), which copies them into
    history.json and refuses a key it does not declare.
    """

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, Any]] = {}

    def entry(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(
            server_round, {"train": {}, "evaluate": {}, "rejected": {}, "errors": {}}
        )


def note_problem(
    entry: dict[str, Any], kind: str, name: str, phase: str, reason: str
) -> None:
    """Record a hospital's error or rejected reply in a round's ledger entry.

    ``entry[kind][name]`` holds the hospital's first problem of the round (the
    root cause, e.g. the train phase); later ones (the evaluate phase of the same
    round, a secure-aggregation stage) are appended under ``"more"`` instead of
    overwriting it.
    """
    problem = {"phase": phase, "reason": reason}
    first = entry[kind].setdefault(name, problem)
    if first is not problem:
        first.setdefault("more", []).append(problem)


def named_content(name: str, records: Mapping[str, Any]) -> RecordDict:
    """A hospital's reply content: ``records`` and its name (what
    :func:`hospital_of` reads back).
    """
    return RecordDict({**records, HOSPITAL_RECORD: ConfigRecord({"name": name})})


def hospital_of(msg: Message) -> str:
    """Return the hospital name a reply carries, else its node id."""
    if msg.has_error() and (match := _ERROR_NAME.match(msg.error.reason or "")):
        return match.group(1)
    if msg.has_content():
        # config_records builds a new view on every access: read it once
        record = msg.content.config_records.get(HOSPITAL_RECORD)
        name = record.get("name") if record is not None else None
        if isinstance(name, str) and name:
            return name
    return f"node-{msg.metadata.src_node_id}"


LABEL_COUNT_PREFIX = "label-count-"


def label_count_metrics(counts: list[int]) -> dict[str, int]:
    """A hospital's training records per class as metrics ``label-count-<class>``.

    Aggregate counts only (no record); the run report draws them per hospital.
    """
    return {f"{LABEL_COUNT_PREFIX}{k}": int(c) for k, c in enumerate(counts)}


def weighted_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of each scalar metric over the replies that report it.

    Hospitals may omit a metric that is undefined for them (the AUC of a
    single-class split), so keys need not match; list-valued metrics are skipped.
    Label counts (``label-count-<class>``) are summed: the federation's totals.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for content in contents:
        metrics = next(iter(content.metric_records.values()))
        w = float(metrics[weight_key])
        for key, value in metrics.items():
            if key == weight_key or isinstance(value, list):
                continue
            if key.startswith(LABEL_COUNT_PREFIX):
                sums[key] = sums.get(key, 0.0) + float(value)
                weights[key] = 1.0
                continue
            sums[key] = sums.get(key, 0.0) + w * float(value)
            weights[key] = weights.get(key, 0.0) + w
    return MetricRecord({k: sums[k] / weights[k] for k in sums})


class Screened:
    """Mixin: bounded sampling, reply screening, ledger, skipped rounds, state.

    Parameters
    ----------
    min_hospitals : int
        Fewest hospitals a round samples and fewest sound replies it aggregates;
        a round with fewer is skipped and the global model kept.
    wait_for_hospitals : float
        Seconds to wait for ``min_hospitals`` connected hospitals before the run
        stops with :class:`~strategies.sampling.FederationStopped`.
    seed : int
        Seeds the per-round sample of hospitals.
    update_encoding : str
        How model arrays travel (:mod:`strategies.encoding`): instructions are
        encoded, train replies decoded before they are screened.
    **kwargs
        Passed to the Flower strategy class.
    """

    # Provided by the Flower strategy class this mixin is combined with.
    fraction_train: float
    fraction_evaluate: float
    arrayrecord_key: str
    configrecord_key: str
    weighted_by_key: str

    def __init__(
        self,
        *,
        min_hospitals: int = 2,
        wait_for_hospitals: float = 600.0,
        seed: int = 0,
        update_encoding: str = PLAIN,
        local_keys: Iterable[str] = (),
        fixed_keys: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        if min_hospitals < 1:
            raise ValueError(f"min-hospitals must be >= 1, got {min_hospitals}.")
        if wait_for_hospitals < 0:
            raise ValueError(
                f"wait-for-hospitals must be >= 0, got {wait_for_hospitals}."
            )
        kwargs.setdefault("min_available_nodes", min_hospitals)
        kwargs.setdefault("min_train_nodes", min_hospitals)
        kwargs.setdefault("min_evaluate_nodes", min_hospitals)
        # Our screening already checked every reply; tolerate metrics a hospital
        # could not compute (Flower's default requires identical metric keys).
        kwargs.setdefault("train_metrics_aggr_fn", weighted_metrics)
        kwargs.setdefault("evaluate_metrics_aggr_fn", weighted_metrics)
        super().__init__(**kwargs)
        self.min_hospitals = min_hospitals
        self.sampler = NodeSampler(min_hospitals, wait_for_hospitals, seed)
        self.ledger = RoundLedger()
        self._warned_anomalous: set[str] = set()  # hospitals warned about once
        self._reference: Reference = {}
        self._global: dict[str, np.ndarray] = {}
        self.update_encoding = update_encoding
        if update_encoding not in ENCODINGS:
            raise ValueError(
                f"update-encoding must be one of {', '.join(ENCODINGS)}, "
                f"got {update_encoding!r}."
            )
        self._layout: Layout = {}
        self._names: dict[int, str] = {}
        # Personalised FL (fedrep, fenda): keys that stay at the hospitals. Their
        # replies leave them out; the global values fill them back in, so every
        # aggregation leaves those keys as they are.
        self.local_keys = frozenset(local_keys)
        # Arrays no hospital trains (buffers, e.g. the statistics of `shape`):
        # a server optimizer leaves them as they are (strategies/fedopt.py).
        self.fixed_keys = frozenset(fixed_keys)

    # -- sampling ------------------------------------------------------------------

    def _before_train(self, arrays: ArrayRecord) -> None:
        """Keep the round's global arrays where a strategy needs them (FedOpt)."""

    def _configure(
        self,
        phase: str,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
    ) -> list[Message]:
        fraction = self.fraction_train if phase == "train" else self.fraction_evaluate
        if fraction == 0.0:
            return []
        node_ids = self.sampler.sample(grid, fraction, server_round, phase)
        log.info(
            "Round %d %s: sampled %d of %d connected hospitals",
            server_round,
            phase,
            len(node_ids),
            len(list(grid.get_node_ids())),
        )
        config["server-round"] = server_round
        sent = encode(arrays, self.update_encoding)
        record = RecordDict({self.arrayrecord_key: sent, self.configrecord_key: config})
        kind = MessageType.TRAIN if phase == "train" else MessageType.EVALUATE
        return list(self._construct_messages(record, node_ids, kind))  # type: ignore[attr-defined]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = reference_of(arrays)
        self._layout = layout_of(arrays)
        self._global = {k: v.numpy() for k, v in arrays.items()}
        self._before_train(arrays)
        return self._configure("train", server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._configure("evaluate", server_round, arrays, config, grid)

    def record_delivery(
        self,
        server_round: int,
        phase: str,
        requested: Iterable[int],
        replies: Iterable[Message],
        timeout: float,
    ) -> None:
        """Note the hospitals that were asked but did not answer within ``timeout``."""
        answered = {msg.metadata.src_node_id for msg in replies}
        missing = [n for n in requested if n not in answered]
        if not missing:
            return
        names = [self._names.get(n, f"node-{n}") for n in missing]
        entry = self.ledger.entry(server_round)
        entry.setdefault("no_reply", {})[phase] = names
        log.warning(
            "Round %d %s: %d of %d hospitals did not reply within %.0fs (%s); "
            "continuing with those that did.",
            server_round,
            phase,
            len(missing),
            len(missing) + len(answered),
            timeout,
            ", ".join(names),
        )

    # -- screening -----------------------------------------------------------------

    def _check_and_log_replies(
        self, replies: Iterable[Message], is_train: bool, validate: bool = True
    ) -> tuple[list[Message], list[Message]]:
        # Replies reaching the Flower class were screened already (see _screen).
        del validate
        return super()._check_and_log_replies(  # type: ignore[misc]
            replies, is_train=is_train, validate=False
        )

    def _screen(
        self, server_round: int, replies: Iterable[Message], *, is_train: bool
    ) -> list[Message]:
        """Keep sound replies, sorted by node id; record every outcome in the ledger.

        Sorting makes aggregation independent of arrival order (floating-point sums
        are order-dependent), which deterministic resume relies on.
        """
        entry = self.ledger.entry(server_round)
        phase = "train" if is_train else "evaluate"
        sound: list[Message] = []
        for msg in sorted(replies, key=lambda m: m.metadata.src_node_id):
            name = hospital_of(msg)
            if msg.has_error():
                # Unnamed error (e.g. the ClientApp crashed): the name it gave before.
                if name.startswith("node-"):
                    name = self._names.get(msg.metadata.src_node_id, name)
                else:
                    self._names[msg.metadata.src_node_id] = name
                reason = msg.error.reason
                log.warning(
                    "Round %d %s: hospital %s replied with an error: %s",
                    server_round,
                    phase,
                    name,
                    reason,
                )
                note_problem(entry, "errors", name, phase, reason)
                continue
            self._names[msg.metadata.src_node_id] = name
            problem = self._decode_reply(msg.content) if is_train else None
            if problem is None and is_train:
                problem = self._densify(msg)
            if problem is None and is_train:
                problem = self._fill_local(msg)
            if problem is None and is_train:
                problem = self._decode_once(msg)
            if problem is None:
                problem = self._reply_problem(
                    server_round, msg.content, is_train=is_train
                )
            if problem is not None:
                log.warning(
                    "Round %d %s: dropped the reply of hospital %s: %s",
                    server_round,
                    phase,
                    name,
                    problem,
                )
                note_problem(entry, "rejected", name, phase, problem)
                continue
            metrics = next(iter(msg.content.metric_records.values()))
            entry[phase][name] = dict(metrics)
            sound.append(msg)
        return sound

    def _densify(self, msg: Message) -> str | None:
        """Expand a sparse row update (:mod:`strategies.sparse`) in place.

        Returns why the sparse reply is unsound, or None (also for dense replies).
        """
        arrays = msg.content.array_records.get(self.arrayrecord_key)
        if arrays is None or not is_sparse(arrays):
            return None
        dense, problem = sparse_decode(arrays, self._global)
        if dense is not None:
            msg.content[self.arrayrecord_key] = dense
        return problem

    def _fill_local(self, msg: Message) -> str | None:
        """Complete a reply that left out exactly ``local_keys`` with the global
        values (in place); return why it is unsound, or None.
        """
        arrays = msg.content.array_records.get(self.arrayrecord_key)
        if not self.local_keys or arrays is None:
            return None
        sent = set(arrays)
        if sent & self.local_keys:
            return (
                "the reply carries arrays that stay at the hospitals: "
                f"{sorted(sent & self.local_keys)}"
            )
        # the global model's key order; any other missing or extra key stays
        # missing or extra, for screening to refuse
        full = OrderedDict(
            (k, arrays[k] if k in sent else Array(v))
            for k, v in self._global.items()
            if k in sent or k in self.local_keys
        )
        full.update((k, arrays[k]) for k in sent if k not in full)
        msg.content[self.arrayrecord_key] = ArrayRecord(full)
        return None

    def _decode_once(self, msg: Message) -> str | None:
        """Decode a train reply's arrays once (in place, :mod:`strategies.arrays`)
        for screening, the anomaly report and aggregation; return why they cannot
        be decoded, or None.
        """
        arrays = msg.content.array_records.get(self.arrayrecord_key)
        if arrays is None:
            return None
        try:
            msg.content[self.arrayrecord_key] = decoded(arrays)
        except (TypeError, ValueError, EOFError, OSError) as err:
            return f"arrays cannot be decoded ({type(err).__name__})"
        return None

    def _decode_reply(self, content: RecordDict) -> str | None:
        """Decode a train reply's arrays in place (``update-encoding``), so
        screening, the anomaly report and aggregation see plain arrays; return why
        they cannot be decoded (None when decoded, or nothing to decode).
        """
        key = self.arrayrecord_key
        if self.update_encoding == PLAIN or key not in content.array_records:
            return None
        try:
            content[key] = decode(content[key], self.update_encoding, self._layout)
        except EncodingError as err:
            return str(err)
        return None

    def _reply_problem(
        self, server_round: int, content: RecordDict, *, is_train: bool
    ) -> str | None:
        """Why one reply must not be aggregated (None when sound); a hook for
        strategies whose replies carry masked or encrypted updates.
        """
        del server_round
        return reply_problem(
            content, self._reference, self.weighted_by_key, check_arrays=is_train
        )

    def _warn_anomalous(self, server_round: int, anomaly: dict[str, Any]) -> None:
        """Warn the first time a hospital's update is flagged in this run.

        Every round's flags stay in history.json (``anomaly``) and the run's end
        counts them per hospital: in a non-IID federation a sound hospital's
        update often points away from the median late in training, and a warning
        every round drowned the log.
        """
        for name, row in anomaly["hospitals"].items():
            if not row["flagged"] or name in self._warned_anomalous:
                continue
            self._warned_anomalous.add(name)
            log.warning(
                "Round %d: hospital %s's update looks anomalous (norm %.3g, median "
                "%.3g; cosine to the median update %.2f); its later flags are "
                "counted at the end of the run.",
                server_round,
                name,
                row["update_norm"],
                anomaly["median_update_norm"],
                row["cosine_to_median"],
            )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        sound = self._screen(server_round, replies, is_train=True)
        entry = self.ledger.entry(server_round)
        if len(sound) < self.min_hospitals:
            entry["skipped"] = (
                f"{len(sound)} sound training repl{'y' if len(sound) == 1 else 'ies'}, "
                f"fewer than min-hospitals={self.min_hospitals}"
            )
            log.error(
                "Round %d skipped: %s; the global model is unchanged.",
                server_round,
                entry["skipped"],
            )
            return None, None
        # kept for a leave-one-out contribution after the last round
        names = [self._names[m.metadata.src_node_id] for m in sound]  # from _screen
        self.last_updates = [
            (
                name,
                m.content[self.arrayrecord_key],
                float(
                    next(iter(m.content.metric_records.values()))[self.weighted_by_key]
                ),
            )
            for name, m in zip(names, sound, strict=True)
        ]
        entry["anomaly"] = anomaly_report(
            self._global,
            [
                (name, m.content[self.arrayrecord_key])
                for name, m in zip(names, sound, strict=True)
            ],
        )
        self._warn_anomalous(server_round, entry["anomaly"])
        try:
            arrays, metrics = super().aggregate_train(server_round, sound)  # type: ignore[misc]
        except AggregationError as err:
            entry["skipped"] = f"aggregation failed: {err}"
            log.error("Round %d skipped: %s", server_round, entry["skipped"])
            return None, None
        if arrays is not None:
            arrays = match_dtypes(arrays, {k: v.dtype for k, v in self._global.items()})
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        sound = self._screen(server_round, replies, is_train=False)
        if not sound:
            return None
        metrics = super().aggregate_evaluate(server_round, sound)  # type: ignore[misc]
        if metrics:  # the federation's held-out metrics: history and model selection
            self.ledger.entry(server_round)[FEDERATED_EVALUATE] = {
                k: float(v)
                for k, v in metrics.items()
                if not k.startswith(LABEL_COUNT_PREFIX) and not isinstance(v, list)
            }
        return metrics

    def round_skipped(self, server_round: int) -> bool:
        """Whether training in ``server_round`` was skipped (too few sound replies)."""
        return "skipped" in self.ledger.rounds.get(server_round, {})

    # -- checkpoint state ----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Server-side state beyond the global model (see :class:`Stateful`)."""
        return {"hospital_names": {str(k): v for k, v in self._names.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._names = {
            int(k): str(v) for k, v in state.get("hospital_names", {}).items()
        }
