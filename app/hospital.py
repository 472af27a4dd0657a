"""Which data a ClientApp reads, and which model a run builds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.config import RunConfig
from data.registry import DATASETS, get_dataset, local_kinds
from data.spec import DataError, DatasetInfo, HospitalData
from models import MODEL_OPTIONS, ModelSpec, input_kwargs


def hospital_name(node_config: Mapping[str, Any]) -> str:
    """A hospital's display name: ``hospital-name`` in deployment, else its partition."""
    if name := node_config.get("hospital-name"):
        return str(name)
    if "partition-id" in node_config:
        return f"hospital-{node_config['partition-id']}"
    return "hospital"


def load_hospital(cfg: RunConfig, node_config: Mapping[str, Any]) -> HospitalData:
    """Load this node's data.

    Simulation injects ``partition-id`` / ``num-partitions``; a deployed SuperNode
    names its own data with ``--node-config "data-path='...'"`` (and optionally
    ``dataset`` and ``hospital-name``), which takes precedence.
    """
    if "data-path" in node_config:
        return load_local_hospital(cfg, node_config)
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise DataError(
            "node config has neither 'data-path' (deployment) nor 'partition-id' and "
            "'num-partitions' (simulation).",
            "the SuperNode was started without a data-path",
        )
    if DATASETS[cfg.dataset].needs_path and not cfg.data_path:
        raise DataError(
            f"dataset '{cfg.dataset}' needs the run-config key 'data-path' in "
            "simulation (in deployment, each SuperNode's node config names its data).",
            "no data-path in the run config",
        )
    dataset = get_dataset(cfg.data_spec())
    site = dataset.hospital(int(node_config["partition-id"]), int(node_config["num-partitions"]))
    if name := node_config.get("hospital-name"):
        return HospitalData(str(name), site.train, site.val, site.info)
    return site


def load_local_hospital(cfg: RunConfig, node_config: Mapping[str, Any]) -> HospitalData:
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
        return get_dataset(spec).local_hospital(str(path), name)
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
    for arg, field_name in MODEL_OPTIONS[name].items():
        kwargs[arg] = getattr(cfg, field_name)
    return ModelSpec(name, kwargs)
