"""A simulation on an existing Ray cluster (`medflower simulate --ray-address`).

Flower 1.41's simulation backend calls ``ray.init()`` with only the federation
config's ``init-args`` (``num-cpus``, ``num-gpus``, ``logging-level``,
``log-to-driver``): no cluster address. ``ray.init()`` then takes the address from
the ``RAY_ADDRESS`` environment variable, which the local SuperLink passes on to the
``flwr-simulation`` process it starts. So the setting is that one variable, checked
here (its form, and that a Ray head answers there) before anything starts.
"""

from __future__ import annotations

import socket

RAY_ADDRESS_VAR = "RAY_ADDRESS"


class RayClusterError(ValueError):
    """The ``--ray-address`` is malformed or no Ray head answers there."""


def parse_ray_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` of a Ray head's GCS, as ``ray start --head`` prints it."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayClusterError(
            f"--ray-address must be HOST:PORT, the address `ray start --head` "
            f"printed (e.g. 10.0.0.5:6379); got {address!r}."
        )
    return host, int(port)


def with_ray_cluster(
    env: dict[str, str], address: str, timeout: float = 5.0
) -> dict[str, str]:
    """``env`` for a simulation whose Ray actors run on the cluster at ``address``.

    Raises RayClusterError when ``address`` is malformed or nothing answers there.
    """
    host, port = parse_ray_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise RayClusterError(
            f"no Ray cluster answers at {host}:{port} ({err.strerror or err}); "
            "start its head with `ray start --head --port PORT` or check the address."
        ) from None
    return {**env, RAY_ADDRESS_VAR: f"{host}:{port}"}
