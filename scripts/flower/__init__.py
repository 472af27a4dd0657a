"""Driving Flower's own executables: their environment, their processes, a run.

- ``env``: the environment every ``flwr`` process gets (offline, project-local)
- ``processes``: free ports, process trees and the one way to stop them
- ``driver``: ``flwr run --stream`` from start to final status, owning what it starts
"""
