"""task = "vertical" through the real ServerApp/ClientApp Message path (in process)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_to_proto
from support.federation import make_run_config

from app.client_app import app as client_app
from app.server_app import TASK_RUNNERS
from app.server_app import app as server_app
from app.vertical.coordinator import VerticalProtocolError
from app.vertical.data import simulate_parties
from app.vertical.server import run_vertical
from data.lazy import load
from scripts.harness.inprocess import InProcessGrid


class WireCapture(InProcessGrid):
    """Keeps the serialised bytes of every message, in both directions."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.wire: list[bytes] = []

    def _wire(self, message, node_id, direction, message_id=""):
        self.wire.append(message_to_proto(message).SerializeToString())
        return super()._wire(message, node_id, direction, message_id)


def _leaked(wire: list[bytes], ids: set[str]) -> set[str]:
    blob = b"\n".join(wire)
    return {i for i in ids if i.encode() in blob}


def _run(tmp_path, num_hospitals, node_configs=None, **overrides):
    config = make_run_config(tmp_path, task="vertical", **overrides)
    grid = WireCapture(client_app, num_hospitals, config, node_configs=node_configs)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config
    )
    server_app(grid, context)
    history = json.loads(
        (tmp_path / "outputs" / "test-run" / "history.json").read_text()
    )
    return grid, history


def test_vertical_dispatch_is_registered():
    assert load(TASK_RUNNERS["vertical"]) is run_vertical


def test_leak_detector_finds_an_id_in_a_message(task_identity):
    msg = Message(
        RecordDict({"c": ConfigRecord({"x": ["MRN-0000001"]})}),
        dst_node_id=1,
        message_type="query.x",
    )
    assert _leaked([message_to_proto(msg).SerializeToString()], {"MRN-0000001"})


def test_three_hospitals_train_and_no_patient_id_crosses_the_wire(tmp_path):
    overrides = {
        "dataset": "wdbc",
        "num-server-rounds": 2,
        "optimizer": "adam",
        "learning-rate": 0.01,
        "vertical-overlap": 0.6,
        "seed": 3,
    }
    grid, history = _run(tmp_path, 3, **overrides)

    assert history["status"] == "completed"
    parties = simulate_parties("wdbc", 3, overlap=0.6, seed=3)
    every_id = set().union(*(p.ids for p in parties))
    shared = set(parties[0].ids) & set(parties[1].ids) & set(parties[2].ids)
    assert history["vertical"]["aligned_patients"] == len(shared)
    assert history["rounds"][-1]["server"]["accuracy"] > 0.9
    # Only PSI bytes, positions, embeddings, gradients and metrics were sent.
    kinds = {m.metadata.message_type for m in grid.delivered}
    assert kinds == {
        "query.vfl_info",
        "query.psi_setup",
        "query.psi_request",
        "query.psi_response",
        "query.psi_intersect",
        "query.vfl_init",
        "query.vfl_bottom",
        "query.vfl_top",
    }
    assert len(grid.wire) > 50
    assert _leaked(grid.wire, every_id) == set()


def _write_csvs(tmp_path, with_label=(True, False)):
    rng = np.random.default_rng(0)
    ids = [f"P{i:04d}" for i in range(120)]
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] + x[:, 2] > 0).astype(int)
    paths = []
    for k, (cols, rows) in enumerate(
        [((0, 1), range(0, 100)), ((2, 3), range(20, 120))]
    ):
        rows = list(rows)[::-1] if k else list(rows)
        frame = pd.DataFrame({"mrn": [ids[r] for r in rows]})
        for c in cols:
            frame[f"f{c}"] = x[rows, c]
        if with_label[k]:
            frame["target"] = y[rows]
        path = tmp_path / f"hospital{k}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return [{"data-path": str(p), "id-column": "mrn"} for p in paths]


def test_hospital_csvs_with_an_id_column(tmp_path):
    nodes = _write_csvs(tmp_path)
    _, history = _run(
        tmp_path,
        2,
        node_configs=nodes,
        **{
            "num-server-rounds": 3,
            "optimizer": "adam",
            "learning-rate": 0.02,
            "batch-size": 16,
        },
    )
    assert history["vertical"]["aligned_patients"] == 80  # rows 20..99
    # the label needs features of both hospitals; it is learnable only jointly
    assert history["rounds"][-1]["server"]["accuracy"] > 0.8


def test_no_label_holder_is_a_clear_error(tmp_path):
    nodes = _write_csvs(tmp_path, with_label=(False, False))
    with pytest.raises(VerticalProtocolError, match="exactly one label holder"):
        _run(tmp_path, 2, node_configs=nodes)
