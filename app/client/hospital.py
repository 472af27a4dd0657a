"""Which data a ClientApp reads, and which model a run builds."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.config import RunConfig
from data.base import FederatedDataset
from data.cache import prepared
from data.registry import dataset_class, get_dataset, local_kinds
from data.spec import DataError, DatasetInfo, DataSpec, HospitalData, SiteRecords
from models import MODELS, ModelSpec, input_kwargs

if TYPE_CHECKING:  # imports torch: loaded where a hospital trains, not to name one
    from models.training import TrainSettings


def hospital_name(node_config: Mapping[str, Any]) -> str:
    """Name a hospital: ``hospital-name`` in deployment, else its partition."""
    if name := node_config.get("hospital-name"):
        return str(name)
    if "partition-id" in node_config:
        return f"hospital-{node_config['partition-id']}"
    return "hospital"


def load_site_records(cfg: RunConfig, node_config: Mapping[str, Any]) -> SiteRecords:
    """Every record this node holds, for federated statistics (:mod:`app.stats`).

    Found as :func:`load_hospital` finds the data (same node-config keys, same
    errors), read by the dataset's ``hospital_records`` / ``local_records``.
    """
    return load_hospital(cfg, node_config, view="records")  # type: ignore[return-value]


# How a node's data are read: (simulation method, deployment method) of the dataset.
DATA_VIEWS = {
    "training": ("hospital", "local_hospital"),
    "records": ("hospital_records", "local_records"),
}


def load_hospital(
    cfg: RunConfig,
    node_config: Mapping[str, Any],
    view: str = "training",
    datasets: Callable[[DataSpec], FederatedDataset] = get_dataset,
) -> HospitalData:
    """Load this node's data (``view``: one of ``DATA_VIEWS``).

    Simulation injects ``partition-id`` / ``num-partitions``; a deployed SuperNode
    names its own data with ``--node-config "data-path='...'"`` (and optionally
    ``dataset`` and ``hospital-name``), which takes precedence. ``datasets`` makes
    the simulation's dataset from its spec (a per-process cache passes its own).
    """
    simulated, deployed = DATA_VIEWS[view]
    if "data-path" in node_config:
        return load_local_hospital(cfg, node_config, deployed)
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise DataError(
            "node config has neither 'data-path' (deployment) nor 'partition-id' and "
            "'num-partitions' (simulation).",
            "the SuperNode was started without a data-path",
        )
    if dataset_class(cfg.dataset).needs_path and not cfg.data_path:
        raise DataError(
            f"dataset '{cfg.dataset}' needs the run-config key 'data-path' in "
            "simulation (in deployment, each SuperNode's node config names its data).",
            "no data-path in the run config",
        )
    dataset = datasets(cfg.data_spec())
    site = getattr(dataset, simulated)(
        int(node_config["partition-id"]), int(node_config["num-partitions"])
    )
    if name := node_config.get("hospital-name"):
        if not isinstance(site, HospitalData):  # records, interactions
            return dataclasses.replace(site, name=str(name))  # type: ignore[return-value]
        return HospitalData(str(name), site.train, site.val, site.info)
    return site


def load_local_hospital(
    cfg: RunConfig, node_config: Mapping[str, Any], method: str = "local_hospital"
) -> HospitalData:
    """Load a deployed hospital's own data, named by its node config.

    Every failure becomes a DataError whose message (for the hospital's own log)
    names the file and whose ``public_reason`` (the only part sent to the server)
    names neither the path nor any record.
    """
    raw_path = node_config.get("data-path")
    kind = str(node_config.get("dataset") or cfg.dataset)
    name = hospital_name(node_config)
    if not isinstance(raw_path, str) or not raw_path.strip():
        raise DataError(
            f"Hospital {name}: node config 'data-path' must be a non-empty string, "
            f"got {raw_path!r}.",
            "the SuperNode's data-path is empty",
        )
    if kind not in local_kinds():
        raise DataError(
            f"Hospital {name}: node config dataset={kind!r} cannot be read from a "
            f"hospital's own files; use one of {', '.join(local_kinds())}.",
            f"dataset kind {kind!r} cannot be read from a hospital's own files",
        )
    path = Path(raw_path).expanduser()
    try:
        spec = cfg.replace(dataset=kind, data_path=str(path)).data_spec()

        def read() -> Any:
            return getattr(get_dataset(spec), method)(str(path), name)

        if method != "local_hospital":  # statistics read the raw table: not cached
            return read()
        # from the hospital's own cache when MEDFLOWER_CACHE is set
        return prepared(spec, path, name, read)
    except DataError:
        raise
    except (OSError, ValueError, KeyError, IndexError, UnicodeError) as err:
        # pandas and numpy errors quote file names and cell values: keep them local.
        raise DataError(
            f"Hospital {name}: cannot read {kind} data at {path}: "
            f"{type(err).__name__}: {err}",
            f"the hospital's {kind} data could not be read",
        ) from err


def model_spec(cfg: RunConfig, info: DatasetInfo) -> ModelSpec:
    """The network for this run's model name and the data's shape."""
    name = cfg.model_name
    kwargs = input_kwargs(name, info)
    for arg, field_name in MODELS[name].options.items():
        kwargs[arg] = getattr(cfg, field_name)
    return ModelSpec(name, kwargs)


def train_settings(cfg: RunConfig, **overrides: Any) -> TrainSettings:
    """The hospitals' local training settings of this run, with ``overrides``.

    The one place that maps run-config keys (``local-epochs``, ``local-steps``,
    ``batch-size``, optimiser, ``label-smoothing``, ``seed``) to
    :class:`~models.training.TrainSettings`; callers override what their
    training differs in (a round's scheduled rate, a whole-run epoch count).
    """
    from models.training import TrainSettings

    settings = TrainSettings(
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        optimizer=cfg.optimizer,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
        seed=cfg.seed,
        max_steps=cfg.local_steps,
    )
    return dataclasses.replace(settings, **overrides)


def hospital_seed(seed: int, server_round: int, node_config: Mapping[str, Any]) -> int:
    """A training seed fixed by the run seed, the round and the hospital.

    The hospital is its ``partition-id`` in simulation, else a stable hash of its
    name, so a re-run (or a resumed run) of round ``r`` draws the same batches.
    """
    if "partition-id" in node_config:
        ident = int(node_config["partition-id"])
    else:
        ident = zlib.crc32(hospital_name(node_config).encode())
    return int(np.random.SeedSequence([seed, server_round, ident]).generate_state(1)[0])


def task_contract(info: DatasetInfo) -> dict[str, Any]:
    """What the server's model expects, sent to hospitals with every instruction."""
    return {"num-classes": info.num_classes, "input-shape": list(info.input_shape)}


def check_contract(site: HospitalData, config: Mapping[str, Any]) -> DatasetInfo:
    """Refuse local data that does not fit the federation's model, saying what differs.

    Returns the site's DatasetInfo with the federation's class count, so the model a
    hospital builds matches the server's even if its own labels miss a class.
    """
    if "num-classes" not in config or "input-shape" not in config:
        return site.info
    classes = int(config["num-classes"])
    shape = tuple(int(d) for d in config["input-shape"])
    local = tuple(site.info.input_shape)
    if local != shape:
        raise DataError(
            f"Hospital {site.name}: its data have input shape {local} but the "
            f"federation's model expects {shape} (features, or channels x size).",
            f"input shape {local} does not match the model's {shape}",
        )
    for split_name, split in (("training", site.train), ("held-out", site.val)):
        if not len(split):
            continue
        y = np.asarray(split.y)
        outside = y[(y < 0) | (y >= classes)]
        if outside.size:
            raise DataError(
                f"Hospital {site.name}: label {int(outside[0])} in its {split_name} "
                f"split is outside the federation's classes 0..{classes - 1}.",
                f"label {int(outside[0])} is outside the classes 0..{classes - 1}",
            )
    return dataclasses.replace(site.info, num_classes=classes)
