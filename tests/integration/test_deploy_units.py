"""Deployment pieces without Flower processes: certificates and keys in the formats
Flower reads, the connection file, node config, hospital data checks, a
coordinator without data, and process control by PID."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time

import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.flower_config import parse_superlink_connection
from flwr.cli.supernode.register import try_load_public_key
from flwr.common.config import parse_config_args
from support.deploy import write_heart_file
from support.federation import make_context, make_message, make_run_config

from app.client.hospital import load_local_hospital, model_spec
from app.client_app import app as client_app
from app.config import ConfigError, RunConfig
from app.server_app import app as server_app
from data.registry import get_dataset
from data.spec import DataError
from data.tabular import HEART_FEATURES
from scripts.deploy import processes as procs
from scripts.deploy.coordinator import write_connection
from scripts.deploy.hospital import node_config
from scripts.deploy.pki import (
    CAFiles,
    DeployError,
    check_private_key,
    create_ca,
    create_hospital_keys,
    create_server_cert,
)
from scripts.flower.processes import alive, descendants
from scripts.harness.inprocess import full_run_config, run_inprocess

# --- certificates and keys ---


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_and_superlink_certificate_chain_and_names(tmp_path):
    ca = create_ca(tmp_path / "ca")
    server = create_server_cert(
        tmp_path / "superlink", ca, hosts=["link.example.org"], ips=["10.1.2.3"]
    )
    assert mode(ca.key) == 0o600 and mode(server.key) == 0o600
    assert mode(ca.cert) == 0o644 and mode(server.cert) == 0o644
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    cert = x509.load_pem_x509_certificate(server.cert.read_bytes())
    cert.verify_directly_issued_by(ca_cert)  # raises if not signed by the CA
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "link.example.org",
        "localhost",
    }
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {
        "10.1.2.3",
        "127.0.0.1",
    }
    # A second CA must not silently replace the first (hospitals trust its cert).
    with pytest.raises(DeployError, match="ca.key exists already"):
        create_ca(tmp_path / "ca")


def test_server_cert_needs_the_ca_and_valid_ips(tmp_path):
    with pytest.raises(DeployError, match="CA file not found: .*ca.key"):
        create_server_cert(
            tmp_path / "s", CAFiles.in_dir(tmp_path / "nothing"), hosts=["x"], ips=[]
        )
    ca = create_ca(tmp_path / "ca")
    with pytest.raises(DeployError, match="Invalid --ip"):
        create_server_cert(tmp_path / "s", ca, hosts=[], ips=["300.1.1.1"])


def test_hospital_keys_are_what_flower_reads(tmp_path):
    files = create_hospital_keys(tmp_path / "keys", "hospital-a")
    assert mode(files.private) == 0o600
    key = load_ssh_private_key(files.private.read_bytes(), None)  # as flower-supernode
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp384r1"
    # `flwr supernode register` loads the public key with this function.
    registered = try_load_public_key(files.public)
    assert registered and b"PUBLIC KEY" in registered
    check_private_key(files.private)


def test_private_key_readable_by_others_is_refused(tmp_path):
    files = create_hospital_keys(tmp_path / "keys", "h")
    files.private.chmod(0o644)
    with pytest.raises(DeployError, match=r"h\.key is accessible by other users"):
        check_private_key(files.private)


@pytest.mark.parametrize("name", ["", "../x", "a b", "-lead", "x" * 64])
def test_bad_hospital_names_are_refused(tmp_path, name):
    with pytest.raises(DeployError, match="Invalid hospital name"):
        create_hospital_keys(tmp_path, name)


# --- connection and node config ---


def test_connection_is_added_next_to_existing_ones(tmp_path):
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        "options.num-supernodes = 4\n"
    )
    ca = create_ca(tmp_path / "ca")
    path = write_connection(home, "medflower", "link.example.org:9093", ca.cert)
    import tomllib

    config = tomllib.loads(path.read_text())
    assert config["superlink"]["local"]["options"]["num-supernodes"] == 4
    conn = parse_superlink_connection(config["superlink"]["medflower"], "medflower")
    assert conn.address == "link.example.org:9093"
    assert conn.root_certificates == str(ca.cert.resolve())
    assert not conn.insecure
    with pytest.raises(DeployError, match="CA certificate not found"):
        write_connection(home, "x", "h:1", tmp_path / "missing.crt")


def test_node_config_round_trips_through_flowers_parser(tmp_path):
    data = tmp_path / "data folder" / "site"
    parsed = parse_config_args([node_config("st-mary", data, "heart-disease")])
    assert parsed == {
        "data-path": str(data),
        "dataset": "heart-disease",
        "hospital-name": "st-mary",
    }
    with pytest.raises(DeployError, match="quotes"):
        node_config("h", tmp_path / "it's", "csv")


# --- a hospital's own data ---


def deployed(**extra):
    return RunConfig(dataset="heart-disease", server_eval=False, **extra)


def test_hospital_folder_with_one_file_loads(tmp_path):
    write_heart_file(tmp_path / "site" / "processed.a.data", 80, seed=1)
    site = load_local_hospital(
        deployed(), {"data-path": str(tmp_path / "site"), "hospital-name": "a"}
    )
    assert site.name == "a"
    assert site.train.x.shape[1] == len(HEART_FEATURES)
    assert len(site.train) + len(site.val) == 80


@pytest.mark.parametrize(
    ("setup", "log_part", "public_part"),
    [
        ("missing", "does not exist", "data path not found"),
        ("empty", "found 0", "expected one data file"),
        ("two", "found 2", "expected one data file"),
        ("columns", "expected 14 columns", "expected 14 columns, found 3"),
        ("binary", "", "unreadable"),
        ("text", "non-numeric value", "non-numeric value"),
    ],
)
def test_broken_hospital_data_names_the_file_locally_only(
    tmp_path, setup, log_part, public_part
):
    folder = tmp_path / "secret-site"
    if setup != "missing":
        folder.mkdir()
    if setup == "two":
        write_heart_file(folder / "a.data", 30, seed=1)
        write_heart_file(folder / "b.data", 30, seed=2)
    elif setup == "columns":
        (folder / "x.data").write_text("1,2,3\n4,5,6\n")
    elif setup == "binary":
        (folder / "x.data").write_bytes(bytes(range(256)) * 8)
    elif setup == "text":
        write_heart_file(folder / "x.data", 30, seed=1)
        lines = (folder / "x.data").read_text().splitlines()
        lines[3] = "PATIENT-4711" + lines[3][lines[3].index(",") :]
        (folder / "x.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        load_local_hospital(
            deployed(), {"data-path": str(folder), "hospital-name": "h"}
        )
    err = caught.value
    assert log_part in str(err)
    assert public_part in err.public_reason
    assert "secret-site" not in err.public_reason
    assert "x.data" not in err.public_reason
    assert "PATIENT-4711" not in err.public_reason


def test_unknown_dataset_kind_in_node_config(tmp_path):
    with pytest.raises(DataError) as caught:
        load_local_hospital(deployed(), {"data-path": str(tmp_path), "dataset": "wdbc"})
    assert "cannot be read from a hospital's own files" in caught.value.public_reason


def test_csv_schema_orders_columns_and_names_missing_ones(tmp_path):
    cfg = RunConfig(
        dataset="csv", server_eval=False, feature_columns="a,b", num_classes=2
    )
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "site.csv").write_text(
        "b,target,a\n" + "".join(f"{i},{i % 2},{i % 5}\n" for i in range(40))
    )
    site = load_local_hospital(
        cfg, {"data-path": str(tmp_path / "ok"), "dataset": "csv"}
    )
    assert site.info.input_shape == (2,)
    # Column a (5 distinct values) comes first whatever the file's column order.
    assert len(set(site.train.x[:, 0].round(6))) == 5
    assert len(set(site.train.x[:, 1].round(6))) == len(site.train)
    (tmp_path / "bad.csv").write_text("b,target\n1,0\n2,1\n3,0\n4,1\n5,0\n")
    with pytest.raises(DataError) as caught:
        load_local_hospital(
            cfg, {"data-path": str(tmp_path / "bad.csv"), "dataset": "csv"}
        )
    assert "missing feature column(s) a" in caught.value.public_reason
    assert "bad.csv" in str(caught.value)


# --- a coordinator without data ---


def test_coordinator_without_data_needs_server_eval_off_and_a_known_shape():
    with pytest.raises(ConfigError, match="needs 'data-path'"):
        RunConfig(dataset="heart-disease")
    cfg = RunConfig(dataset="heart-disease", server_eval=False)
    info = get_dataset(cfg.data_spec()).info()  # no file is touched
    assert info.input_shape == (len(HEART_FEATURES),) and info.num_classes == 2
    with pytest.raises(ConfigError, match="feature-columns"):
        RunConfig(dataset="csv", server_eval=False)
    cfg = RunConfig(
        dataset="csv", server_eval=False, feature_columns="x1, x2,x3", num_classes=3
    )
    info = get_dataset(cfg.data_spec()).info()
    assert info.input_shape == (3,) and info.num_classes == 3
    assert info.feature_names == ("x1", "x2", "x3")
    with pytest.raises(ConfigError, match="num-classes"):
        RunConfig(num_classes=1)


def test_deployed_federation_in_process_with_one_broken_hospital(
    tmp_path, task_identity
):
    """The ServerApp without data and ClientApps reading their own folders: the
    broken hospital's error reaches history.json without its path."""
    folders = []
    for i in range(3):
        folders.append(tmp_path / f"site-{i}")
        write_heart_file(folders[-1] / "processed.x.data", 90, seed=i)
    broken = tmp_path / "broken-site-folder"
    broken.mkdir()
    (broken / "processed.y.data").write_text("garbage,line\n")
    node_configs = [
        {"data-path": str(f), "dataset": "heart-disease", "hospital-name": f"h{i}"}
        for i, f in enumerate([*folders, broken])
    ]
    run_config = full_run_config(
        **{
            "dataset": "heart-disease",
            "server-eval": False,
            "num-server-rounds": 2,
            "min-hospitals": 3,
            "output-dir": str(tmp_path / "out"),
            "run-name": "dep",
        }
    )
    run_inprocess(
        server_app,
        client_app,
        num_hospitals=4,
        run_config=run_config,
        node_configs=node_configs,
    )
    history = json.loads((tmp_path / "out" / "dep" / "history.json").read_text())
    assert history["status"] == "completed"
    trained = [r for r in history["rounds"] if r["round"] >= 1]
    assert [r["round"] for r in trained] == [1, 2]
    for entry in trained:
        assert "skipped" not in entry
        assert set(entry["hospitals"]) == {"h0", "h1", "h2"}
        assert all("train" in v for v in entry["hospitals"].values())
        (error,) = entry["errors"].values()
        assert "data error:" in error["reason"]
        assert str(tmp_path) not in json.dumps(entry)
        assert "broken-site-folder" not in json.dumps(entry)
    assert (tmp_path / "out" / "dep" / "final_model.pt").is_file()


def test_client_error_reply_in_deployment_has_no_path(tmp_path, task_identity):
    run_config = make_run_config(
        tmp_path, dataset="heart-disease", **{"server-eval": False}
    )
    cfg = RunConfig.from_run_config(run_config)
    model = model_spec(cfg, get_dataset(cfg.data_spec()).info()).build()
    secret = tmp_path / "hospital-secret-folder"
    secret.mkdir()
    (secret / "processed.z.data").write_bytes(b"\x00\xff" * 100)
    reply = client_app(
        make_message(model),
        make_context(
            run_config, node_config={"data-path": str(secret), "hospital-name": "z"}
        ),
    )
    assert reply.has_error()
    assert "data error:" in reply.error.reason
    assert "hospital-secret-folder" not in reply.error.reason
    assert "processed.z.data" not in reply.error.reason
    write_heart_file(tmp_path / "good" / "processed.g.data", 60, seed=3)
    reply = client_app(
        make_message(model),
        make_context(
            run_config,
            node_config={"data-path": str(tmp_path / "good"), "hospital-name": "g"},
        ),
    )
    assert not reply.has_error()
    assert reply.content["hospital"]["name"] == "g"
    assert set(reply.content["arrays"].to_torch_state_dict()) == set(model.state_dict())
    assert torch.is_tensor(
        next(iter(reply.content["arrays"].to_torch_state_dict().values()))
    )


# --- processes by PID ---


def test_background_process_tree_is_stopped_by_pid(tmp_path):
    # A leader that spawns a child in its own session, as Flower's SuperLink does
    # with its SuperExec: stopping the leader must stop both.
    script = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " start_new_session=True); time.sleep(120)"
    )
    argv = [sys.executable, "-c", script]
    record = procs.start_background(tmp_path, "worker", argv, env={}, port=None)
    try:
        time.sleep(1.0)
        tree = descendants(record.pid)
        assert len(tree) == 1
        with pytest.raises(DeployError, match="already running"):
            procs.start_background(tmp_path, "worker", argv, env={})
        lines = procs.stop(tmp_path)
        assert lines == [f"stopped worker (PID {record.pid})"]
        assert not alive(record.pid)
        assert not any(alive(p) for p in tree)
        assert not procs.pid_file(tmp_path, "worker").exists()
    finally:
        subprocess.run(
            ["kill", "-9", str(record.pid), *map(str, descendants(record.pid))],
            capture_output=True,
            check=False,
        )


def test_stop_never_signals_a_reused_pid(tmp_path):
    # A pid file whose PID now runs something else (here: this test process).
    import os

    pidf = procs.pid_file(tmp_path, "superlink")
    pidf.parent.mkdir(parents=True)
    pidf.write_text(
        json.dumps(
            {
                "name": "superlink",
                "pid": os.getpid(),
                "argv": ["/x/flower-superlink"],
                "log": str(tmp_path / "l.log"),
                "port": 1,
            }
        )
    )
    assert procs.stop(tmp_path) == [f"superlink (PID {os.getpid()}) was not running"]
    assert alive(os.getpid())


def test_start_supernode_refuses_a_dataset_kind_without_local_data():
    from scripts.deploy.hospital import DeployError, _check_kind

    _check_kind("csv")
    with pytest.raises(DeployError, match="'wdbc'.*heart-disease"):
        _check_kind("wdbc")
