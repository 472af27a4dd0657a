"""Per-process caches of a ClientApp: what does not change within a run.

Why: in simulation one Ray actor process serves many hospitals, message after
message, and each message used to parse the run config, reload the dataset,
re-split it and rebuild the model: at 100 hospitals that was most of a round.

What keeps it safe:

- **One run at a time.** A cache holds the entries of one Flower run only; the
  first message of another run empties it, so nothing crosses runs.
- **Keyed by everything that shapes the value.** A hospital's data are keyed by
  its node config (partition, name, data path), every data setting of the run
  (:class:`~data.spec.DataSpec`: dataset, path, split, seed, ...) and the size and
  modification time of the data file, so two hospitals of one process never share
  an entry and an edited file is read again.
- **Bounded.** Least recently used entries go first, past an entry count and a
  byte budget.
- **Never modified.** Callers get the cached data read-only by convention (every
  transform builds new arrays) and a network of their own (a copy of the run's
  skeleton or a fresh build, whichever is faster).

A deployed SuperNode starts a fresh process per message, where the caches are
simply empty.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from app.client.hospital import load_hospital
from app.config import RunConfig
from data.base import FederatedDataset
from data.registry import get_dataset
from data.spec import DataSpec, HospitalData, Split
from models import ModelSpec

V = TypeVar("V")

# A process holds at most this much hospital data (one actor may serve 1,000
# tabular hospitals: ~1 MB in all; a few imaging hospitals: hundreds of MB).
HOSPITAL_CACHE_BYTES = 1 << 30
HOSPITAL_CACHE_ENTRIES = 4096


class RunCache(Generic[V]):
    """A least-recently-used cache holding the entries of one run.

    Parameters
    ----------
    max_entries
        Entries kept at most.
    max_bytes
        Bytes kept at most, as ``size(value)`` counts them (the newest entry is
        always kept).
    size
        How many bytes a value holds (default: 0, so only entries count).
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int = 0,
        size: Callable[[V], int] | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size = size or (lambda _value: 0)
        self._run_id: int | None = None
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, run_id: int, key: Hashable, make: Callable[[], V]) -> V:
        """The value of ``key`` in run ``run_id``, made (and kept) when absent.

        A failure of ``make`` propagates and nothing is kept.
        """
        if run_id != self._run_id:
            self.clear()
            self._run_id = run_id
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key][0]
        self.misses += 1
        value = make()
        size = self._size(value)
        self._entries[key] = (value, size)
        self._bytes += size
        self._evict()
        return value

    def _evict(self) -> None:
        over_bytes = self.max_bytes and self._bytes > self.max_bytes
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries or over_bytes
        ):
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size
            over_bytes = self.max_bytes and self._bytes > self.max_bytes

    def clear(self) -> None:
        """Forget every entry (and the run they belonged to)."""
        self._entries.clear()
        self._bytes = 0
        self._run_id = None

    def __len__(self) -> int:
        return len(self._entries)


def _nbytes(value: Any) -> int:
    """Bytes of the arrays inside ``value`` (splits, tuples, dicts of them)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Split):
        return _nbytes(value.x) + _nbytes(value.y)
    if isinstance(value, HospitalData):
        return _nbytes(value.train) + _nbytes(value.val) + _nbytes(value.extras)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # other sites' records (a recommender's interactions) by their fields
        return sum(_nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _timed(make: Callable[[], V]) -> tuple[V, float]:
    # CPU seconds, not wall: on a busy machine a preempted build or copy would
    # otherwise decide the choice for the whole run (a deepcopy picked that was
    # 3x slower than building a logistic regression).
    start = time.process_time()
    value = make()
    return value, time.process_time() - start


@dataclass(frozen=True)
class Skeleton:
    """A run's network, built once, and the cheaper way to get another one.

    Copying a MONAI DenseNet is much faster than building it (weight init);
    building a logistic regression is faster than copying any module.
    """

    spec: ModelSpec
    network: torch.nn.Module
    copy_is_faster: bool

    @classmethod
    def measure(cls, spec: ModelSpec) -> Skeleton:
        """Build the network and time a build against a copy in CPU seconds
        (best of three of each where a build is cheap, so that a busy moment does
        not decide).
        """
        network, built = _timed(spec.build)
        if built < 0.05:
            built = min(built, *(_timed(spec.build)[1] for _ in range(2)))
        copied = min(_timed(lambda: copy.deepcopy(network))[1] for _ in range(3))
        return cls(spec, network, copied < built)

    def new(self) -> torch.nn.Module:
        """A network of the spec that shares nothing with earlier ones."""
        return copy.deepcopy(self.network) if self.copy_is_faster else self.spec.build()


RUN_CONFIGS: RunCache[RunConfig] = RunCache(max_entries=8)
HOSPITALS: RunCache[HospitalData] = RunCache(
    HOSPITAL_CACHE_ENTRIES, HOSPITAL_CACHE_BYTES, _nbytes
)
MODELS: RunCache[Skeleton] = RunCache(max_entries=8)
# The whole table (or image file) a simulation splits: read once per process, not
# once per hospital.
DATASETS: RunCache[FederatedDataset] = RunCache(max_entries=2)


def run_config(run_id: int, raw: Mapping[str, Any]) -> RunConfig:
    """``RunConfig.from_run_config(raw)``, parsed once per run and config.

    Keyed by the config's items as a set (its values are scalars): ~15 us a
    message for a 110-key config, where a sorted tuple cost ~45 us.
    """
    key = frozenset(raw.items())
    return RUN_CONFIGS.get(run_id, key, lambda: RunConfig.from_run_config(raw))


def _file_stamp(path: object) -> tuple[int, int] | None:
    """Size and modification time of a data file or folder (None when absent)."""
    if not isinstance(path, str) or not path:
        return None
    try:
        stat = os.stat(os.path.expanduser(path))
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def hospital(
    run_id: int, cfg: RunConfig, node_config: Mapping[str, Any]
) -> HospitalData:
    """This node's data (see ``load_hospital``), loaded once per run and hospital.

    The returned arrays are shared with later messages: never modify them in
    place.
    """
    node = tuple(sorted((str(k), v) for k, v in node_config.items()))
    stamps = (_file_stamp(cfg.data_path), _file_stamp(node_config.get("data-path")))
    key = (node, cfg.data_spec(), stamps)

    def dataset(spec: DataSpec) -> FederatedDataset:
        return DATASETS.get(run_id, (spec, stamps[0]), lambda: get_dataset(spec))

    return HOSPITALS.get(
        run_id, key, lambda: load_hospital(cfg, node_config, datasets=dataset)
    )


def model(run_id: int, spec: ModelSpec) -> torch.nn.Module:
    """A new network of ``spec``: a copy of the run's skeleton, or a fresh build
    where that is faster. Its initial weights are arbitrary: callers load the
    global ones.
    """
    key = (spec.name, repr(sorted(spec.kwargs.items())))
    return MODELS.get(run_id, key, lambda: Skeleton.measure(spec)).new()
