"""``medflower simulate --ray-address``: a real simulation on an existing Ray head."""

import json

import pytest
from support.deploy import processes_mentioning
from support.federation import REPO
from support.ray_cluster import ray_head

from scripts.flower.cluster import RayClusterError, with_ray_cluster
from scripts.flower.driver import run_simulation
from scripts.flower.env import flower_env
from scripts.flower.processes import alive, free_port


def test_bad_ray_address_is_refused_before_anything_starts():
    with pytest.raises(RayClusterError, match="HOST:PORT"):
        with_ray_cluster({}, "no-port")
    with pytest.raises(RayClusterError, match="no Ray cluster answers"):
        with_ray_cluster({}, f"127.0.0.1:{free_port()}", timeout=1)


@pytest.mark.slow
def test_simulation_runs_on_an_existing_ray_cluster(tmp_path):
    outputs = tmp_path / "outputs"
    with ray_head(num_cpus=2) as head:
        outcome = run_simulation(
            app_dir=REPO,
            num_hospitals=2,
            run_config=f"num-server-rounds=1 output-dir='{outputs}' run-name='ray' "
            "report=false",
            env=flower_env(tmp_path / "flwr-home"),
            echo=False,
            timeout=300,
            ray_address=head.address,
        )
        assert outcome.ok, outcome.log[-3000:]
        # the run's driver joined this cluster: its log is in the head's session
        drivers = list(head.temp_dir.glob("session_*/logs/python-core-driver-*"))
        assert drivers, sorted(p.name for p in head.temp_dir.glob("session_*/logs/*"))
    history = json.loads((outputs / "ray" / "history.json").read_text())
    assert history["status"] == "completed"
    assert len(history["rounds"][1]["hospitals"]) == 2
    # nothing of the head survives, nor of the run
    assert not [pid for pid in head.pids if alive(pid)]
    assert not processes_mentioning(str(head.temp_dir))
