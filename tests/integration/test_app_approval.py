"""App approval without Flower processes: reviewer keys, signatures that Flower's own
SuperNode check accepts, the trusted-entities file, the launcher's hook, and the
errors (each naming its file)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import types
import typing
from logging import ERROR, INFO

import pytest
from flwr.supercore.fab import Fab
from flwr.supernode import start_client_internal as flower_supernode
from flwr.supernode.cli.flower_supernode import (
    _try_obtain_trusted_entities,
    _validate_public_keys_ed25519,
)
from support.federation import REPO

from scripts.cli import main as medflower
from scripts.deploy import processes as procs
from scripts.deploy.approval import (
    Approval,
    approvals_for,
    build_fab,
    create_reviewer_keys,
    fab_digest,
    flower_verifications,
    load_reviewer_private_key,
    load_trusted,
    sign_fab,
    trust,
)
from scripts.deploy.approved_supernode import (
    HookError,
    approving,
    check_hook_points,
    install,
)
from scripts.deploy.pki import DeployError, create_hospital_keys

FAB = b"PK\x03\x04 stand-in for an app build " * 50


@pytest.fixture
def reviewer(tmp_path):
    return create_reviewer_keys(tmp_path / "reviewer", "alice")


def flower_accepts(fab: bytes, approvals: list[Approval], trusted: dict) -> bool:
    """What Flower's SuperNode decides for this build with these signatures."""
    built = Fab(fab_digest(fab), fab, flower_verifications(approvals))
    return flower_supernode._verify_fab(built, trusted)


def test_a_signed_build_passes_flowers_own_check_and_one_changed_byte_fails(
    tmp_path, reviewer
):
    trusted_file = tmp_path / "hospital" / "trusted-entities.yaml"
    trust(trusted_file, reviewer.public)
    # Flower's own reader and Ed25519 check accept the file as written.
    trusted = _try_obtain_trusted_entities(trusted_file)
    _validate_public_keys_ed25519(trusted)
    assert trusted == load_trusted(trusted_file)

    approval = sign_fab(FAB, load_reviewer_private_key(reviewer.private), "alice")
    assert flower_accepts(FAB, [approval], trusted)

    edited = bytearray(FAB)
    edited[10] ^= 0x01
    assert not flower_accepts(bytes(edited), [approval], trusted)
    # Not trusted: a second reviewer's valid signature of the same build.
    other = create_reviewer_keys(tmp_path / "other", "mallory")
    forged = sign_fab(FAB, load_reviewer_private_key(other.private), "mallory")
    assert not flower_accepts(FAB, [forged], trusted)
    # No signature at all.
    assert not flower_accepts(FAB, [], trusted)


def test_approval_files_are_found_by_the_build_digest(tmp_path, reviewer):
    approvals = tmp_path / "approvals"
    approval = sign_fab(FAB, load_reviewer_private_key(reviewer.private), "alice")
    path = approval.write(approvals)
    assert Approval.read(path) == approval
    assert approvals_for(approvals, fab_digest(FAB)) == ([approval], [])
    assert approvals_for(approvals, fab_digest(FAB + b"x")) == ([], [])
    # A corrupt file is named and skipped, never fatal.
    bad = approvals / f"{fab_digest(FAB)}.broken.json"
    bad.write_text("{not json")
    found, problems = approvals_for(approvals, fab_digest(FAB))
    assert found == [approval]
    assert len(problems) == 1 and str(bad) in problems[0]
    # A file claiming another build under this build's name approves nothing.
    (approvals / f"{fab_digest(FAB)}.moved.json").write_text(
        json.dumps({**json.loads(path.read_text()), "fab-sha256": "0" * 64})
    )
    found, problems = approvals_for(approvals, fab_digest(FAB))
    assert found == [approval] and any("moved" in p for p in problems)


def test_launcher_hook_attaches_approvals_and_logs_a_refusal(tmp_path, reviewer):
    approvals = tmp_path / "approvals"
    approvals.mkdir()
    sign_fab(FAB, load_reviewer_private_key(reviewer.private), "alice").write(approvals)
    logged = []
    served = {"good": FAB, "edited": FAB[:-1] + b"?"}

    def get_fab(fab_hash, run_id):
        # What the SuperLink sends; the claimed hash is never trusted.
        return Fab("claimed-" + fab_hash, served[fab_hash], {"valid_license": "x"})

    get = approving(get_fab, approvals, lambda level, *a: logged.append((level, a)))
    good = get("good", 7)
    assert set(good.verifications) == {
        "valid_license",
        approvals_for(approvals, fab_digest(FAB))[0][0].public_key_id,
    }
    assert logged[-1][0] == INFO and "alice" in logged[-1][1][3]
    refused = get("edited", 8)
    assert refused.verifications == {"valid_license": "Valid"}
    level, args = logged[-1]
    assert level == ERROR and "REFUSED" in args[0] and args[1] == 8
    assert args[2] == fab_digest(served["edited"])


def test_install_hooks_the_fab_that_flowers_supernode_verifies(
    tmp_path, reviewer, monkeypatch
):
    """install() wraps the get_fab of Flower's SuperNode connection."""
    approvals = tmp_path / "approvals"
    sign_fab(FAB, load_reviewer_private_key(reviewer.private), "alice").write(approvals)
    original = flower_supernode._init_connection

    @contextlib.contextmanager
    def connection(*args, **kwargs):
        get_fab = lambda fab_hash, run_id: Fab(fab_hash, FAB, {})  # noqa: E731
        yield (1, None, None, None, get_fab, None, None, None)

    connection.__annotations__ = typing.get_type_hints(original)
    monkeypatch.setattr(flower_supernode, "_init_connection", connection)
    install(approvals)
    with flower_supernode._init_connection("127.0.0.1:1", True) as conn:
        fab = conn[4]("any", 3)
    trust(tmp_path / "t.yaml", reviewer.public)
    trusted = load_trusted(tmp_path / "t.yaml")
    assert flower_supernode._verify_fab(fab, trusted)


def test_launcher_fails_closed_when_flowers_supernode_changed_shape():
    check_hook_points(flower_supernode)  # the installed Flower has the hook points
    changed = types.SimpleNamespace(
        _init_connection=flower_supernode._init_connection,
        _pull_and_store_message=lambda state: None,
        _verify_fab=flower_supernode._verify_fab,
    )
    with pytest.raises(HookError, match="trusted entities"):
        check_hook_points(changed)
    with pytest.raises(HookError, match="FAB check"):
        check_hook_points(types.SimpleNamespace())


def test_trust_file_keeps_entries_and_names_bad_keys_and_files(tmp_path, reviewer):
    path = tmp_path / "trusted-entities.yaml"
    first = trust(path, reviewer.public)
    assert trust(path, reviewer.public) == first  # idempotent
    second = create_reviewer_keys(tmp_path / "bob", "bob")
    trust(path, second.public)
    assert len(load_trusted(path)) == 2 and first in load_trusted(path)

    hospital = create_hospital_keys(tmp_path / "keys", "cleveland")  # ECDSA
    with pytest.raises(DeployError, match="not an Ed25519") as err:
        trust(path, hospital.public)
    assert str(hospital.public) in str(err.value)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("ssh-ed25519 not-base64")
    with pytest.raises(DeployError, match="garbage.pub"):
        trust(path, garbage)
    with pytest.raises(DeployError, match="missing.pub"):
        trust(path, tmp_path / "missing.pub")

    for text, message in [
        ("a: [unclosed", "not valid YAML"),
        ("- a list", "must map key ids"),
        ("", "trusts no reviewer"),
        (f"SHA256:wrong: '{reviewer.public.read_text().strip()}'", "fingerprint"),
    ]:
        path.write_text(text)
        with pytest.raises(DeployError, match=message) as err:
            load_trusted(path)
        assert str(path) in str(err.value)
    with pytest.raises(DeployError, match="not found"):
        load_trusted(tmp_path / "nowhere.yaml")


def test_signing_key_errors_name_the_file(tmp_path, reviewer):
    hospital = create_hospital_keys(tmp_path / "keys", "cleveland")
    with pytest.raises(DeployError, match="not an Ed25519") as err:
        load_reviewer_private_key(hospital.private)
    assert str(hospital.private) in str(err.value)
    reviewer.private.chmod(0o644)
    with pytest.raises(DeployError, match="accessible by other users"):
        load_reviewer_private_key(reviewer.private)
    with pytest.raises(DeployError, match="not found"):
        load_reviewer_private_key(tmp_path / "none.key")


def test_cli_signs_the_build_flwr_run_submits_and_hospital_needs_a_reviewer(
    tmp_path, reviewer, capsys
):
    approvals = tmp_path / "hospital" / "approvals"
    code = medflower(
        [
            "deploy", "sign-app", "--key", str(reviewer.private),
            "--app", str(REPO), "--out", str(approvals),
        ]
    )  # fmt: skip
    assert code == 0
    digest = fab_digest(build_fab(REPO))  # the same bytes `flwr run` builds
    assert f"build sha256 {digest}" in capsys.readouterr().out
    (found,), _ = approvals_for(approvals, digest)
    assert found.reviewer == "alice"

    # No reviewer trusted: the hospital's SuperNode is not started.
    hospital = tmp_path / "hospital"
    create_hospital_keys(hospital / "keys", "cleveland")
    code = medflower(
        [
            "deploy", "start-supernode", "--dir", str(hospital), "--name",
            "cleveland", "--superlink", "127.0.0.1:1", "--data-path",
            str(tmp_path), "--no-check-data",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert str(hospital / "trusted-entities.yaml") in err and "trust" in err
    assert not (hospital / "run").exists()
    assert (
        medflower(
            [
                "deploy",
                "trust",
                "--dir",
                str(hospital),
                "--public-key",
                str(reviewer.public),
            ]
        )
        == 0
    )
    assert "Trusted reviewer key SHA256:" in capsys.readouterr().out


def test_a_supernode_started_as_a_python_module_is_stopped_by_pid(tmp_path):
    """The approving SuperNode runs as ``python -m ...``: the pid file check must
    tell it from any other Python process that could reuse its PID."""
    argv = [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"]
    record = procs.start_background(tmp_path, "module", argv, dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        while not procs.is_ours(record) and time.monotonic() < deadline:
            time.sleep(0.1)  # until the interpreter has set its command line
        assert procs.is_ours(record)
        other = dataclasses.replace(record, argv=[sys.executable, "-m", "other"])
        assert not procs.is_ours(other)
    finally:
        assert procs.stop(tmp_path) == [f"stopped module (PID {record.pid})"]
    assert not procs.alive(record.pid)
