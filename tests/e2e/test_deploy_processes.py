"""Real Flower deployment on 127.0.0.1: one SuperLink with TLS and SuperNode
authentication, one SuperNode per hospital folder, driven by ``medflower deploy``.
Each hospital trusts one reviewer and runs only the app build that reviewer signed.

Every process is started with a pid file and stopped by PID in the fixture's
``finally`` (also when a test fails); the last check is that none survived.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from support.deploy import (
    HEART_SITES,
    app_with_one_byte_changed,
    hospital_folders,
    processes_mentioning,
)
from support.federation import REPO

from app.governance.audit import read_entries, verify
from models.checkpoint import load_model
from scripts.cli import main as medflower
from scripts.deploy import processes as procs
from scripts.deploy.hospital import READY_SUPERNODE
from scripts.flower.processes import free_port

pytestmark = pytest.mark.slow

ROUNDS = 2


class Federation:
    """Folders, ports and the CLI calls of one test deployment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.coordinator = root / "coordinator"
        self.flwr_home = root / "submitter-flwr-home"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ca_cert = self.coordinator / "ca" / "ca.crt"
        self.reviewer = root / "reviewer" / "keys"
        self.approved = root / "approved"  # the reviewer's signature of the app
        self.dirs: list[Path] = [self.coordinator]

    def cli(self, *argv: str) -> int:
        return medflower(["deploy", *argv])

    def hospital_dir(self, name: str) -> Path:
        path = self.root / f"hospital-{name}"
        if path not in self.dirs:
            self.dirs.append(path)
        return path

    def keys(self, name: str) -> Path:
        assert (
            self.cli(
                "hospital-keys", "--dir", str(self.hospital_dir(name)), "--name", name
            )
            == 0
        )
        self.approve(name)
        return self.hospital_dir(name) / "keys" / f"{name}.pub"

    def approve(self, name: str) -> None:
        """The hospital trusts the reviewer and holds the signed build's approval."""
        hospital = self.hospital_dir(name)
        public = self.reviewer / "reviewer.pub"
        assert (
            self.cli("trust", "--dir", str(hospital), "--public-key", str(public)) == 0
        )
        shutil.copytree(self.approved, hospital / "approvals")

    def start_supernode(self, name: str, data: Path, *extra: str) -> int:
        return self.cli(
            "start-supernode",
            "--dir",
            str(self.hospital_dir(name)),
            "--name",
            name,
            "--superlink",
            self.address,
            "--data-path",
            str(data),
            "--dataset",
            "heart-disease",
            *extra,
        )

    def stop_all(self) -> None:
        for path in self.dirs:
            if (path / procs.RUN_DIR).is_dir():
                procs.stop(path)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("deploy"))
    try:
        assert fed.cli("init-ca", "--dir", str(fed.coordinator)) == 0
        assert (
            fed.cli(
                "superlink-cert",
                "--dir",
                str(fed.coordinator),
                "--host",
                "localhost",
                "--ip",
                "127.0.0.1",
            )
            == 0
        )
        assert (
            fed.cli(
                "start-superlink",
                "--dir",
                str(fed.coordinator),
                "--port",
                str(fed.port),
                "--wait",
                "120",
            )
            == 0
        )
        assert (
            fed.cli(
                "connection",
                "--name",
                "testfed",
                "--address",
                fed.address,
                "--ca-cert",
                str(fed.ca_cert),
                "--flwr-home",
                str(fed.flwr_home),
            )
            == 0
        )
        assert (
            fed.cli(
                "reviewer-keys", "--dir", str(fed.reviewer.parent), "--name", "reviewer"
            )
            == 0
        )
        assert (
            fed.cli(
                "sign-app",
                "--key",
                str(fed.reviewer / "reviewer.key"),
                "--app",
                str(REPO),
                "--out",
                str(fed.approved),
            )
            == 0
        )
        yield fed
    finally:
        fed.stop_all()
        leftovers = processes_mentioning(str(fed.root))
        assert not leftovers, f"processes outlived the test: {leftovers}"


def test_unregistered_key_and_missing_ca_certificate_are_refused(federation, capsys):
    fed = federation
    data = hospital_folders(fed.root / "refused-data")["cleveland"]
    fed.keys("intruder")  # a key pair the coordinator never registered
    assert (
        fed.start_supernode(
            "intruder", data, "--ca-cert", str(fed.ca_cert), "--wait", "120"
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "Failed to activate SuperNode" in err
    assert "supernode-intruder.log" in err

    # No CA certificate: the SuperLink's certificate is not trusted, so the TLS
    # handshake fails before the key is even looked at.
    fed.keys("no-ca")
    assert fed.start_supernode("no-ca", data, "--wait", "120") == 1
    err = capsys.readouterr().err
    assert "CERTIFICATE_VERIFY_FAILED" in err
    # Both gave up and were stopped: no pid file, no process left.
    for name in ("intruder", "no-ca"):
        assert not procs.pid_file(fed.hospital_dir(name), f"supernode-{name}").exists()
        assert not processes_mentioning(str(fed.hospital_dir(name)))


def test_corrupt_hospital_data_is_refused_at_start(federation, capsys):
    fed = federation
    broken = fed.root / "broken-data"
    broken.mkdir()
    (broken / "processed.broken.data").write_text("not,a,heart,file\n")
    fed.keys("broken-check")
    assert (
        fed.start_supernode("broken-check", broken, "--ca-cert", str(fed.ca_cert)) == 1
    )
    err = capsys.readouterr().err
    assert "expected 14 columns" in err and "processed.broken.data" in err
    assert not (fed.hospital_dir("broken-check") / procs.RUN_DIR).exists()


def test_three_hospitals_train_over_tls_while_a_broken_one_reports_its_error(
    federation, capsys
):
    fed = federation
    folders = hospital_folders(fed.root / "data")
    broken = fed.root / "st-broken-secret-folder"
    broken.mkdir()
    (broken / "processed.broken.data").write_text("garbage\x00\x01,line\n")
    names = [*HEART_SITES, "broken"]
    keys = [str(fed.keys(name)) for name in names]
    register = [
        "register",
        "--connection",
        "testfed",
        "--flwr-home",
        str(fed.flwr_home),
    ]
    for key in keys:
        register += ["--public-key", key]
    assert fed.cli(*register) == 0
    out = capsys.readouterr().out
    assert all(f"Registered hospital {n} " in out for n in names)

    # The first site runs under a site policy the run complies with, and keeps an
    # audit log (docs/governance.md): checked in its real flwr-clientapp processes.
    governed = fed.hospital_dir(HEART_SITES[0])
    (governed / "policy.toml").write_text(
        'tasks = ["tabular"]\ndatasets = ["heart-disease"]\nmax-rounds = 5\n'
    )
    governance = ["--policy", str(governed / "policy.toml")]
    governance += ["--audit-log", str(governed / "audit.jsonl")]
    for i, name in enumerate(HEART_SITES):
        extra = governance if i == 0 else []
        assert (
            fed.start_supernode(
                name,
                folders[name],
                "--ca-cert",
                str(fed.ca_cert),
                "--wait",
                "0",
                *extra,
            )
            == 0
        )
    # The broken hospital starts anyway (--no-check-data): its ClientApp must report.
    assert (
        fed.start_supernode(
            "broken",
            broken,
            "--ca-cert",
            str(fed.ca_cert),
            "--no-check-data",
            "--wait",
            "0",
        )
        == 0
    )
    # All four connected before the run, so every round samples all four.
    for name in names:
        pidf = procs.pid_file(fed.hospital_dir(name), f"supernode-{name}")
        record = procs.ProcessRecord.read(pidf)
        assert procs.wait_ready(record, pattern=READY_SUPERNODE, timeout=180, offset=0)

    outputs = fed.root / "outputs"
    # Every message starts a fresh flwr-clientapp process (torch, sklearn imports):
    # federated evaluation is left to the in-process test to halve this one's cost.
    # min-hospitals=3: three sound replies aggregate a round; all four are sampled.
    run_config = (
        f"num-server-rounds={ROUNDS} dataset='heart-disease' server-eval=false "
        f"fraction-evaluate=0.0 min-hospitals=3 output-dir='{outputs}' "
        "run-name='deployed'"
    )
    code = fed.cli(
        "run",
        "--connection",
        "testfed",
        "--run-config",
        run_config,
        "--app",
        str(REPO),
        "--flwr-home",
        str(fed.flwr_home),
        "--timeout",
        "420",
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "finished:completed" in out  # read back with `flwr ls --run-id`

    history = json.loads((outputs / "deployed" / "history.json").read_text())
    assert history["status"] == "completed"
    trained = [r for r in history["rounds"] if r["round"] >= 1]
    assert [r["round"] for r in trained] == list(range(1, ROUNDS + 1))
    for entry in trained:
        assert "skipped" not in entry
        assert set(entry["hospitals"]) == set(HEART_SITES)
        for site in HEART_SITES:
            assert entry["hospitals"][site]["train"]["num-examples"] > 0
        (error,) = entry["errors"].values()
        assert "data error:" in error["reason"]
        text = json.dumps(entry)
        assert "st-broken-secret-folder" not in text and "processed.broken" not in text
    entries = read_entries(governed / "audit.jsonl")
    # every round's update, then the decision-threshold counts (threshold-rule auto)
    assert [(e["message_type"], e["outcome"]) for e in entries] == [
        ("train", "sent")
    ] * ROUNDS + [("query.decision_stats", "sent")]
    assert all(e["arrays"]["arrays"] for e in entries[:ROUNDS])
    assert not entries[-1]["arrays"]  # counts only, no model arrays
    assert verify(governed / "audit.jsonl").ok
    model, payload = load_model(outputs / "deployed" / "final_model.pt")
    assert payload["data"]["input_shape"] == [13]
    # The hospital's own log holds the full detail (its folder), the server's does not.
    local_log = (
        fed.hospital_dir("broken") / "logs" / "supernode-broken.log"
    ).read_text()
    assert "st-broken-secret-folder" in local_log
    server_log = (fed.coordinator / "logs" / "superlink.log").read_text()
    assert "st-broken-secret-folder" not in server_log

    for name in HEART_SITES:  # each hospital checked the build's signature
        log = fed.hospital_dir(name) / "logs" / f"supernode-{name}.log"
        assert "signed by reviewer (SHA256:" in log.read_text()

    refused_run_is_recorded_as_hospital_errors(fed, names, outputs, capsys)

    status_lines = []
    for name in names:
        assert fed.cli("status", "--dir", str(fed.hospital_dir(name))) == 0
        status_lines.append(capsys.readouterr().out)
    assert all("running" in line for line in status_lines)
    assert fed.cli("status", "--dir", str(fed.coordinator)) == 0
    assert "superlink: running" in capsys.readouterr().out


def refused_run_is_recorded_as_hospital_errors(fed, names, outputs, capsys):
    """An app with one byte changed (unsigned) goes to the same federation: every
    hospital refuses it before a ClientApp starts; the server records the errors
    and stops the run; nothing crashes."""
    edited = app_with_one_byte_changed(REPO, fed.root / "edited-app")
    logs = {n: fed.hospital_dir(n) / "logs" / f"supernode-{n}.log" for n in names}
    offsets = {n: logs[n].stat().st_size for n in names}
    run_config = (
        "num-server-rounds=1 dataset='heart-disease' server-eval=false "
        "fraction-evaluate=0.0 min-hospitals=3 wait-for-hospitals=0 "
        f"output-dir='{outputs}' run-name='edited'"
    )
    fed.cli(
        "run",
        "--connection",
        "testfed",
        "--run-config",
        run_config,
        "--app",
        str(edited),
        "--flwr-home",
        str(fed.flwr_home),
        "--timeout",
        "240",
    )
    out = capsys.readouterr().out
    run_id = re.search(r"medflower: run (\d+) on testfed", out).group(1)

    history = json.loads((outputs / "edited" / "history.json").read_text())
    assert history["status"] == "stopped", out[-3000:]
    (entry,) = [r for r in history["rounds"] if r["round"] == 1]
    assert "skipped" in entry and not entry["hospitals"]
    reasons = [e["reason"] for e in entry["errors"].values()]
    assert reasons == ["The FAB could not be verified."] * len(names)
    for name in names:
        text = logs[name].read_bytes()[offsets[name] :].decode(errors="replace")
        assert f"App approval: REFUSED run {run_id}: app build sha256 " in text
        assert "FAB verification failed" in text
        assert "flwr-clientapp" not in text  # no ClientApp process was started
