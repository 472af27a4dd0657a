"""Which data a ClientApp reads, and which model a run builds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.config import RunConfig
from data.registry import get_dataset
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
    if path := node_config.get("data-path"):
        kind = str(node_config.get("dataset", cfg.dataset))
        spec = cfg.replace(dataset=kind, data_path=str(path)).data_spec()
        return get_dataset(spec).local_hospital(str(path), hospital_name(node_config))
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise DataError(
            "node config has neither 'data-path' (deployment) nor 'partition-id' and "
            "'num-partitions' (simulation).",
            "the SuperNode was started without a data-path",
        )
    dataset = get_dataset(cfg.data_spec())
    site = dataset.hospital(int(node_config["partition-id"]), int(node_config["num-partitions"]))
    if name := node_config.get("hospital-name"):
        return HospitalData(str(name), site.train, site.val, site.info)
    return site


def model_spec(cfg: RunConfig, info: DatasetInfo) -> ModelSpec:
    """The network for this run's model name and the data's shape."""
    name = cfg.model_name
    kwargs = input_kwargs(name, info)
    for arg, field_name in MODEL_OPTIONS[name].items():
        kwargs[arg] = getattr(cfg, field_name)
    return ModelSpec(name, kwargs)
