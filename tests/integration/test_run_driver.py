"""The run driver against stand-ins for ``flwr`` and ``flower-superlink``.

The stand-ins (small Python scripts first on PATH) behave as Flower does where it
matters here: ``flwr run --stream`` prints the run id, ``flwr ls`` answers in JSON,
and the SuperLink starts a SuperExec in a session of its own. A real ``flwr run``
is in tests/e2e/test_run_driver_kill.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from app.server.history import RoundEntry, RunHistory, read_history, write_history
from scripts.flower import driver as drv
from scripts.flower.env import QUIET_WARNINGS, RAY_PRESTART, flower_env, is_noise
from scripts.flower.processes import alive, terminate
from scripts.flower.superlink import superlinks_of

RUN_ID = "7"

FAKE_FLWR = """
import json, os, subprocess, sys, time
from pathlib import Path

state = Path(os.environ["FAKE_FLWR_STATE"])
mode = os.environ.get("FAKE_FLWR_MODE", "complete")


def set_status(**fields):
    (state / "status.json").write_text(json.dumps(fields))


def status():
    fields = json.loads((state / "status.json").read_text())
    if "until" in fields and time.time() > fields["until"]:
        return fields["then"]
    return fields["status"]


def orphan(name):
    # A sleeper in a session of its own whose parent exits at once: it is no
    # descendant of anything the driver started, only its environment tells.
    sleeper = (
        f"import os, time; open({str(state / name)!r}, 'w').write(str(os.getpid()));"
        "time.sleep(300)"
    )
    spawn = (
        "import subprocess, sys;"
        f"subprocess.Popen([sys.executable, '-c', {sleeper!r}], start_new_session=True)"
    )
    subprocess.run([sys.executable, "-c", spawn], check=True)


command = sys.argv[1]
if command == "run":
    print("Loading project configuration...", flush=True)
    print("Successfully started run 7", flush=True)
    if mode == "complete":
        set_status(status="finished:completed")
        print("round 1 done", flush=True)
    elif mode == "stream-breaks":
        set_status(status="running", until=time.time() + 3, then="finished:completed")
    elif mode == "failed":
        set_status(status="finished:failed")
    elif mode == "hang":
        set_status(status="running")
        orphan("orphan.pid")
        time.sleep(300)
elif command == "ls":
    print(json.dumps({"runs": [{"run-id": 7, "status": status()}]}))
elif command == "stop":
    set_status(status="finished:stopped")
    (state / "stopped").write_text(" ".join(sys.argv[1:]))
"""

FAKE_SUPERLINK = """
import os, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

state = Path(os.environ["FAKE_FLWR_STATE"])
port = int(sys.argv[sys.argv.index("--port") + 1])
# The SuperExec stand-in: a session of its own, as Flower's SuperLink starts it.
sleeper = (
    f"import os, time; open({str(state / 'superexec.pid')!r}, 'w')"
    ".write(str(os.getpid())); time.sleep(300)"
)
subprocess.Popen([sys.executable, "-c", sleeper], start_new_session=True)


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


class Fakes:
    """A stand-in ``flwr`` and ``flower-superlink`` and the state they share."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.state = root / "state"
        self.home = root / "flwr-home"
        self.outputs = root / "outputs"
        for folder in (self.bin, self.state, self.outputs):
            folder.mkdir(parents=True)
        for name, source in (("flwr", FAKE_FLWR), ("flower-superlink", FAKE_SUPERLINK)):
            path = self.bin / name
            path.write_text(f"#!{sys.executable}\n{source}")
            path.chmod(0o755)

    def env(self, mode: str) -> dict[str, str]:
        env = flower_env(self.home)
        env["PATH"] = f"{self.bin}{os.pathsep}{env['PATH']}"
        env["FAKE_FLWR_STATE"] = str(self.state)
        env["FAKE_FLWR_MODE"] = mode
        return env

    def pid(self, name: str, timeout: float = 30.0) -> int:
        """The PID a stand-in wrote to ``name`` (waits for it)."""
        path = self.state / name
        deadline = time.monotonic() + timeout
        while not (path.is_file() and path.read_text()):
            assert time.monotonic() < deadline, f"{name} never written"
            time.sleep(0.1)
        return int(path.read_text())

    def history(self, status: str = "running") -> Path:
        """A run folder as the ServerApp leaves it mid-run."""
        run_dir = self.outputs / "run-a"
        run_dir.mkdir()
        history = RunHistory(
            run_name="run-a",
            flower_run_id=int(RUN_ID),
            task="tabular",
            dataset="wdbc",
            strategy="fedavg",
            model="logreg",
            num_rounds=2,
            status=status,
        )
        for server_round in (0, 1):
            history.record_round(RoundEntry(round=server_round))
        write_history(run_dir / "history.json", history)
        return run_dir


@pytest.fixture
def fakes(tmp_path):
    fakes = Fakes(tmp_path)
    yield fakes
    for name in ("orphan.pid", "superexec.pid"):  # never leave a sleeper behind
        path = fakes.state / name
        if path.is_file() and path.read_text() and alive(int(path.read_text())):
            os.kill(int(path.read_text()), signal.SIGKILL)


def deployed(fakes: Fakes, mode: str, **kwargs: object) -> drv.RunOutcome:
    return drv.run_deployed(
        app_dir=fakes.state,
        connection="fake",
        env=fakes.env(mode),
        echo=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_completed_run_reports_completed_and_leaves_its_history_alone(fakes):
    run_dir = fakes.history(status="completed")
    outcome = deployed(fakes, "complete", output_dir=fakes.outputs)
    assert outcome.ok, outcome
    assert outcome.run_id == RUN_ID
    assert "round 1 done" in outcome.log
    assert json.loads((run_dir / "history.json").read_text())["status"] == "completed"
    assert not (fakes.state / "stopped").exists()


def test_a_run_still_running_when_its_stream_ends_is_waited_for(fakes):
    start = time.monotonic()
    outcome = deployed(fakes, "stream-breaks", timeout=60)
    # `flwr ls` says "running" for 3 s after the stream ended: not a failure.
    assert outcome.status == "finished:completed"
    assert time.monotonic() - start >= 3


def test_a_run_without_a_sign_of_life_after_its_stream_is_stopped(fakes, monkeypatch):
    monkeypatch.setattr(drv, "SETTLE_S", 1.0)
    outcome = deployed(fakes, "stream-breaks")  # no timeout: nothing shows it alive
    assert outcome.status == "unfinished (running; stopped)"
    assert (fakes.state / "stopped").is_file()


def test_a_failed_run_marks_its_history_failed_and_keeps_the_other_keys(fakes):
    run_dir = fakes.history()
    outcome = deployed(fakes, "failed", output_dir=fakes.outputs)
    assert not outcome.ok and outcome.status == "finished:failed"
    history = read_history(run_dir)
    assert history.status == "failed"  # the rest as the ServerApp left it
    assert history.flower_run_id == 7 and [r.round for r in history.rounds] == [0, 1]


def test_a_timed_out_run_is_stopped_with_everything_it_started(fakes):
    run_dir = fakes.history()
    outcome = deployed(fakes, "hang", timeout=3, output_dir=fakes.outputs)
    assert outcome.status.startswith("timed-out after 3s (running)"), outcome
    assert (fakes.state / "stopped").read_text() == f"stop {RUN_ID} fake"
    orphan = fakes.pid("orphan.pid")
    assert orphan in outcome.processes  # found by the marker, not by parentage
    assert not alive(orphan)
    assert not any(alive(pid) for pid in outcome.processes)
    assert json.loads((run_dir / "history.json").read_text())["status"] == "failed"


def test_a_dead_local_superlink_fails_the_run_and_nothing_outlives_it(fakes):
    run_dir = fakes.history()

    def kill_superlink() -> None:
        fakes.pid("orphan.pid")  # the run is under way
        (superlink,) = superlinks_of(fakes.home)
        os.kill(superlink, signal.SIGKILL)

    killer = threading.Thread(target=kill_superlink)
    killer.start()
    outcome = drv.run_simulation(
        app_dir=fakes.state,
        num_hospitals=2,
        env=fakes.env("hang"),
        echo=False,
        output_dir=fakes.outputs,
        timeout=120,
    )
    killer.join()
    assert not outcome.ok
    assert outcome.status == "failed (the local SuperLink exited with code -9)"
    superexec = fakes.pid("superexec.pid")  # re-parented to init, own session
    assert superexec in outcome.processes
    assert not any(alive(pid) for pid in outcome.processes)
    assert not superlinks_of(fakes.home)
    assert json.loads((run_dir / "history.json").read_text())["status"] == "failed"


def test_sigint_stops_the_run_then_reaches_the_caller(fakes):
    # Python's own SIGINT handler, whatever earlier code of this process installed
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt() -> None:
        fakes.pid("orphan.pid")
        os.kill(os.getpid(), signal.SIGINT)

    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            deployed(fakes, "hang", timeout=120)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
    assert not alive(fakes.pid("orphan.pid"))
    assert (fakes.state / "stopped").is_file()  # the deployment was asked to stop


def test_a_run_that_never_started_says_so(fakes):
    env = fakes.env("complete")
    (fakes.bin / "flwr").write_text(f"#!{sys.executable}\nimport sys; sys.exit(2)\n")
    outcome = drv.run_deployed(
        app_dir=fakes.state, connection="fake", env=env, echo=False
    )
    assert outcome.run_id is None
    assert outcome.status == "not-started (flwr exit 2)"


def test_terminate_kills_what_ignores_sigterm():
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "print('ready', flush=True); time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    survivors = terminate([psutil.Process(stubborn.pid)], timeout=0.5)
    assert survivors == []
    assert not alive(stubborn.pid)  # SIGTERM was ignored: SIGKILL ended it


def test_flower_processes_drop_only_the_protobuf_warning_and_rays_tip(tmp_path):
    code = (
        "import warnings;"
        "warnings.warn('Protobuf gencode version 5.29.0 is older', UserWarning);"
        "warnings.warn_explicit('Tip: In future versions of Ray, Ray will no longer',"
        " FutureWarning, 'worker.py', 2051, module='ray._private.worker');"
        "warnings.warn_explicit('Tip: from another library', FutureWarning,"
        " 'other.py', 1, module='other');"
        "warnings.warn('a warning that matters', UserWarning)"
    )
    env = flower_env(tmp_path, base={"PATH": os.environ["PATH"]})
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert "Protobuf gencode" not in out.stderr
    assert "future versions of Ray" not in out.stderr
    assert "Tip: from another library" in out.stderr
    assert "a warning that matters" in out.stderr


def test_flower_processes_start_no_idle_ray_workers_unless_the_user_says_so(tmp_path):
    assert flower_env(tmp_path, base={})[RAY_PRESTART] == "0"
    assert flower_env(tmp_path, base={RAY_PRESTART: "1"})[RAY_PRESTART] == "1"


def test_flowers_sizing_hints_and_shutdown_notice_are_left_out_of_what_is_shown():
    hints = [
        "⚠️ Warning: `options.` fields in the SuperLink connection configuration "
        "are deprecated. Use `--federation-config` with `flwr run` instead.",
        "⚠️ Warning: `--federation-config` was provided, so deprecated `options.` "
        "entries from the SuperLink connection in your Flower configuration will "
        "be ignored.",
        "WARNING :   Since flwr 1.32, default simulated SuperNodes changed "
        "from 10 to 2.",
        "INFO :      To change federation size, use the following command:",
        "INFO :      \tflwr federation simulation-config @none/default <superlink> "
        "--num-supernodes <N>",
        "(ClientAppActor pid=6011) WARNING :   Manually terminating ClientAppActor",
    ]
    kept = [
        "INFO :      Federation `@none/default` (4 simulated SuperNodes)",
        "INFO :      [round 1/5] elapsed 14.2s eta 56.8s | hospitals trained 4",
        "WARNING :   Round 2: hospital-3 sent no reply within round-timeout=60s",
    ]
    assert all(is_noise(line) for line in hints)
    assert not any(is_noise(line) for line in kept)


def test_the_makefile_exports_the_same_warning_filters_as_the_driver():
    # written twice (make cannot import Python): kept equal here
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    exported = next(
        line.split(":=", 1)[1].strip()
        for line in makefile.splitlines()
        if line.startswith("export PYTHONWARNINGS")
    )
    assert exported.split(",") == list(QUIET_WARNINGS)
