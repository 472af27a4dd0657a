"""Driving Flower's own executables: their environment, their processes, a run.

- ``env``: the environment every ``flwr`` process gets (offline, project-local)
- ``processes``: free ports, process trees, the one way to stop them, and the
  tree and signal handling of one run
- ``superlink``: the private local SuperLink a simulation runs on
- ``driver``: ``flwr run --stream`` from start to final status, owning what it starts
"""
